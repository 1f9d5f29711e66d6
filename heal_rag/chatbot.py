"""A chatbot over a heal_rag Chroma collection: retrieve, rerank by hierarchy, answer, cite each source's path.

Answers come from any LangChain chat model or runnable passed as ``generator``; without one, from
:func:`extractive_generator`, which needs no LLM: it answers with the source sentences closest to the question. Needs
the ``langchain`` and ``chroma`` extras.

Example:
    ```python
    from heal_rag.chatbot import Chatbot, citations
    from heal_rag.chroma import open_collection
    from heal_rag.encoder import HEALEncoder

    encoder = HEALEncoder.load("runs/demo/model")
    bot = Chatbot(encoder, open_collection("runs/demo/chroma", "heal-demo"))   # what `make demo` builds
    answer, sources = bot.ask("How do I export a decision tree?")
    print(answer)
    print(citations(sources))
    ```
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda

from heal_rag.encoder import HEALEncoder
from heal_rag.langchain.reranker import HierarchyReranker
from heal_rag.metadata import path_from_metadata
from heal_rag.queries import split_sentences

#: The prompt: numbered sources with their hierarchy path, then the question.
PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer the question using only the numbered sources. Cite sources like [1]. Be brief."),
        ("human", "Sources:\n{context}\n\nQuestion: {question}"),
    ]
)


def source_path(document: Document) -> str:
    """A document's label path as ``A > B > C`` (``"(no label)"`` when it has none)."""
    path = path_from_metadata(document.metadata)
    return " > ".join(path) if path else "(no label)"


def format_sources(documents: list[Document]) -> str:
    """Numbered sources with their hierarchy path, as the prompt's context."""
    return "\n".join(f"[{i}] ({source_path(d)}) {d.page_content}" for i, d in enumerate(documents, start=1))


def citations(documents: list[Document]) -> str:
    """One line per source: number, hierarchy path, source (or title, or opening words) and score."""
    lines = []
    for i, doc in enumerate(documents, start=1):
        label = doc.metadata.get("source") or doc.metadata.get("title") or doc.page_content[:60] + "…"
        score = doc.metadata.get("relevance_score", doc.metadata.get("score"))
        lines.append(f"[{i}] {source_path(doc)} | {label}" + (f" | score {score:.3f}" if score is not None else ""))
    return "\n".join(lines)


def extractive_generator(encoder: HEALEncoder, n_sentences: int = 2) -> Runnable:
    """A no-LLM "chat model": the source sentences most similar to the question, with their citation numbers."""

    def answer(prompt_value: Any) -> AIMessage:
        text = prompt_value.to_string()
        context, _, question = text.rpartition("Question:")
        question = question.strip()
        candidates = []
        for number, body in re.findall(r"^\[(\d+)\] \([^)]*\) (.*?)(?=^\[\d+\] \(|\Z)", context, flags=re.M | re.S):
            candidates.extend((int(number), s) for s in split_sentences(" ".join(body.split())))
        if not candidates:
            return AIMessage(content="I found no sources for this question.")
        scores = encoder.embed_documents([s for _, s in candidates]) @ encoder.embed_query(question)
        best = sorted(np.argsort(-scores)[:n_sentences])
        return AIMessage(content=" ".join(f"{candidates[i][1]} [{candidates[i][0]}]" for i in best))

    return RunnableLambda(answer)


class Chatbot:
    """Retrieve from Chroma, rerank by hierarchy, answer with a generator (any LangChain chat model or runnable).

    Args:
        encoder: The HEAL encoder (the collection's model).
        collection: A Chroma collection built with that model (:func:`heal_rag.chroma.build_index`).
        generator: Chat model or runnable taking the prompt value (default: :func:`extractive_generator`).
        k: Passages retrieved per question.
        top_n: Passages kept after reranking (and cited).

    Raises:
        heal_rag.chroma.StaleModelError: When ``collection`` was built by another model (its vectors would not be
            comparable with the questions'), or not by heal_rag.
    """

    def __init__(
        self, encoder: HEALEncoder, collection: Any, generator: Runnable | None = None, k: int = 10, top_n: int = 3
    ) -> None:
        from heal_rag.chroma import check_collection

        check_collection(collection, encoder)  # it queries with its own vectors: the collection must be the model's
        self.encoder = encoder
        self.collection = collection
        self.reranker = HierarchyReranker(encoder=encoder, top_n=top_n)
        self.chain = PROMPT | (generator or extractive_generator(encoder)) | StrOutputParser()
        self.k = k

    def retrieve(self, question: str) -> list[Document]:
        """Top ``k`` passages from Chroma with cosine similarity in ``metadata['score']``."""
        result = self.collection.query(
            query_embeddings=[self.encoder.embed_query(question)],
            n_results=self.k,
            include=["documents", "metadatas", "distances"],
        )
        return [
            Document(page_content=text, metadata={**(metadata or {}), "score": 1.0 - distance}, id=doc_id)
            for doc_id, text, metadata, distance in zip(
                result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0], strict=True
            )
        ]

    def ask(self, question: str) -> tuple[str, list[Document]]:
        """Answer ``question``; returns the answer and its (reranked) sources."""
        sources = list(self.reranker.compress_documents(self.retrieve(question), question))
        answer = self.chain.invoke({"context": format_sources(sources), "question": question})
        return answer, sources
