"""Training questions written by an LLM: any LangChain chat model or LlamaIndex LLM the user passes.

``LLMQuestionGenerator`` asks the model for ``n_questions`` questions per chunk with a prompt the user can change,
parses the answer robustly (a JSON list, a numbered or bulleted list, or one question per line), caches every answer
in a JSONL file keyed by the prompt and the chunk's content (a re-run never asks twice), shows progress, and never
lets a failure on one chunk stop the run: such chunks are counted, reported, and left to the offline generator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from heal_rag._validation import check_int
from heal_rag.queries import Query

logger = logging.getLogger(__name__)

#: The default prompt; ``{n}`` is the number of questions, ``{text}`` the chunk.
DEFAULT_QUESTION_PROMPT = (
    "Below is a passage from a document collection. Write {n} different questions that a user of this collection "
    "could ask and that this passage answers. Each question must make sense on its own, without the passage. "
    "Answer with the questions only, one per line.\n\nPassage:\n{text}\n\nQuestions:"
)
_LIST_MARKER = re.compile(
    r"^\s*(?:[-*•]+|\(?\d+[.):]|\(?[a-zA-Z][.)]|Q\d*[.:)]?|Question\s*\d*[.:)])\s*", re.IGNORECASE
)


def parse_questions(answer: str, n_questions: int) -> list[str]:
    r"""Questions from an LLM's answer: a JSON list, or lines with or without numbering or bullets.

    Lines shorter than three words, repeated questions and preambles ending in a colon are dropped; at most
    ``n_questions`` are returned.

    Example:
        ```python
        parse_questions("Here are two questions:\n1. How do pumps fail?\n2) What is priming?", 2)
        # ['How do pumps fail?', 'What is priming?']
        ```
    """
    text = answer.strip()
    candidates: list[str] = []
    fenced = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
    if fenced.startswith("["):
        try:
            loaded = json.loads(fenced)
        except json.JSONDecodeError:
            loaded = None
        if isinstance(loaded, list):
            candidates = [str(item) for item in loaded if isinstance(item, (str, int, float))]
    if not candidates:
        candidates = [_LIST_MARKER.sub("", line).strip().strip('"').strip() for line in text.splitlines()]
    out: list[str] = []
    seen: set[str] = set()
    for question in candidates:
        question = " ".join(question.split())
        if len(question.split()) < 3 or question.endswith(":") or question.lower() in seen:
            continue
        seen.add(question.lower())
        out.append(question)
        if len(out) == n_questions:
            break
    return out


class LLMQuestionGenerator:
    r"""Training questions for chunks, written by an LLM.

    Args:
        llm: A LangChain chat model or LLM (anything with ``invoke``), a LlamaIndex LLM (anything with
            ``complete``), or a plain callable ``prompt -> str``.
        n_questions: Questions asked per chunk.
        prompt: The prompt template, with ``{n}`` and ``{text}``.
        cache_path: JSONL file of answers, keyed by the prompt and the chunk's content. Answers are appended as they
            come, so an interrupted run keeps what it got and a re-run asks only for what is missing.
        show_progress: Progress bar over chunks.

    Example:
        ```python
        from langchain_core.language_models import FakeListChatModel   # stands in for ChatOpenAI, ChatOllama, ...
        from heal_rag.question_generation import LLMQuestionGenerator

        chat_model = FakeListChatModel(responses=["1. How do pumps fail?\n2. What is priming?"])
        generator = LLMQuestionGenerator(chat_model, n_questions=2, cache_path="questions.jsonl")
        queries = generator.generate(chunk_texts, chunk_ids)   # [Query(text, document_id), ...]
        ```
    """

    def __init__(
        self,
        llm: Any,
        *,
        n_questions: int = 2,
        prompt: str = DEFAULT_QUESTION_PROMPT,
        cache_path: str | os.PathLike[str] | None = None,
        show_progress: bool = True,
    ) -> None:
        check_int("n_questions", n_questions, minimum=1, maximum=20)
        if "{text}" not in prompt:
            raise ValueError("The prompt must contain {text}, where the chunk goes (and may contain {n}).")
        self.llm = llm
        self.n_questions = n_questions
        self.prompt = prompt
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.show_progress = show_progress
        self.failures: list[tuple[str, str]] = []
        self.asked = 0
        self._cache: dict[str, list[str]] = self._read_cache()

    def _read_cache(self) -> dict[str, list[str]]:
        cache: dict[str, list[str]] = {}
        if self.cache_path is None or not self.cache_path.is_file():
            return cache
        for number, line in enumerate(self.cache_path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                record = json.loads(line)
                cache[str(record["key"])] = [str(q) for q in record["questions"]]
            except (json.JSONDecodeError, KeyError, TypeError):
                logger.warning("%s:%d is not a question-cache record; ignored.", self.cache_path, number)
        return cache

    def key(self, text: str) -> str:
        """Cache key of a chunk: SHA-256 of the prompt template, the number of questions and the chunk's text."""
        return hashlib.sha256(f"{self.prompt}\x00{self.n_questions}\x00{text}".encode()).hexdigest()

    def _ask(self, text: str) -> str:
        prompt = self.prompt.format(n=self.n_questions, text=text)
        llm = self.llm
        if hasattr(llm, "complete") and not hasattr(llm, "invoke"):  # LlamaIndex LLM
            return str(getattr(llm.complete(prompt), "text", ""))
        if hasattr(llm, "invoke"):  # LangChain chat model or LLM
            answer = llm.invoke(prompt)
            content = getattr(answer, "content", answer)
            if isinstance(content, list):  # content blocks
                content = " ".join(str(b.get("text", "")) if isinstance(b, dict) else str(b) for b in content)
            return str(content)
        if callable(llm):
            return str(llm(prompt))
        raise TypeError(f"llm must be a LangChain or LlamaIndex model or a callable, got {type(llm).__name__}.")

    def questions_for(self, texts: Sequence[str]) -> list[list[str]]:
        """Questions for each text (an empty list where the LLM failed or gave none)."""
        out: list[list[str]] = []
        cache_file = None
        if self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_file = self.cache_path.open("a", encoding="utf-8")
        try:
            for text in tqdm(texts, desc="LLM questions", unit="chunk", disable=not self.show_progress):
                key = self.key(text)
                if key in self._cache:
                    out.append(self._cache[key])
                    continue
                try:
                    self.asked += 1
                    questions = parse_questions(self._ask(text), self.n_questions)
                except Exception as exc:  # noqa: BLE001 - one failing chunk never stops the run
                    self.failures.append((text[:80], f"{type(exc).__name__}: {exc}"))
                    out.append([])
                    continue
                if not questions:
                    self.failures.append((text[:80], "no question in the answer"))
                self._cache[key] = questions
                if cache_file is not None and questions:
                    cache_file.write(json.dumps({"key": key, "questions": questions}, ensure_ascii=False) + "\n")
                    cache_file.flush()
                out.append(questions)
        finally:
            if cache_file is not None:
                cache_file.close()
        if self.failures:
            logger.warning(
                "The LLM gave no usable questions for %d of %d chunks (first: %s); they get offline queries instead.",
                len(self.failures),
                len(texts),
                self.failures[0][1],
            )
        return out

    def generate(self, texts: Sequence[str], ids: Sequence[str]) -> list[Query]:
        """One :class:`~heal_rag.queries.Query` per question, tied to the id of the chunk it came from."""
        if len(texts) != len(ids):
            raise ValueError(f"Got {len(texts)} texts but {len(ids)} ids.")
        questions = self.questions_for(texts)
        return [Query(question, str(i)) for i, found in zip(ids, questions, strict=True) for question in found]
