"""Queries for joint query/document training: user queries tied to documents, and an offline pseudo-query generator.

A query inherits the label path of its source document. When a corpus has no queries, a *query generator* makes
them. Any callable with the :class:`QueryGenerator` signature can be plugged in (for example one that prompts an
LLM); the default, :class:`KeySentenceQueryGenerator`, needs no model at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9$\\(\"'])")


@dataclass(frozen=True)
class Query:
    """A training query and the id of the document that answers it."""

    text: str
    document_id: str


@runtime_checkable
class QueryGenerator(Protocol):
    """Makes one pseudo-query per document.

    Args:
        documents: Document texts.
        titles: A title per document, or ``None`` where there is none.

    Returns:
        One query string per document (an empty string means "no query for this document").
    """

    def __call__(self, documents: Sequence[str], titles: Sequence[str | None]) -> list[str]:  # noqa: D102
        ...


class KeySentenceQueryGenerator:
    """Offline pseudo-queries: a document's title when it has one, otherwise its key sentence, shortened.

    The key sentence is the sentence whose TF-IDF vector is closest to the whole document's (the sentence that
    best summarises it); it is cut to ``max_words`` words, which reads like a short search query.

    Args:
        use_titles: Use the title when one is given.
        max_words: Longest query, in words.

    Example:
        ```python
        generator = KeySentenceQueryGenerator()
        generator(["Qubits decohere. We protect qubits with a new error-correcting code."], [None])
        ```
    """

    def __init__(self, use_titles: bool = True, max_words: int = 16) -> None:
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}.")
        self.use_titles = use_titles
        self.max_words = max_words

    def __call__(self, documents: Sequence[str], titles: Sequence[str | None]) -> list[str]:
        """Make one query per document (see the class docstring)."""
        if len(titles) != len(documents):
            raise ValueError(f"Got {len(documents)} documents but {len(titles)} titles.")
        queries: list[str | None] = [
            title.strip() if self.use_titles and title and title.strip() else None for title in titles
        ]
        missing = [i for i, q in enumerate(queries) if q is None]
        if missing:
            for index, sentence in zip(missing, self._key_sentences([documents[i] for i in missing]), strict=True):
                queries[index] = sentence
        return [q or "" for q in queries]

    def _key_sentences(self, documents: Sequence[str]) -> list[str]:
        from sklearn.feature_extraction.text import TfidfVectorizer

        sentences_per_doc = [split_sentences(doc) or [doc] for doc in documents]
        vectorizer = TfidfVectorizer(stop_words="english", sublinear_tf=True)
        try:
            vectorizer.fit(documents)
        except ValueError:  # every document is empty or stop words only
            return [self._shorten(s[0]) for s in sentences_per_doc]
        out = []
        for document, sentences in zip(documents, sentences_per_doc, strict=True):
            if len(sentences) == 1:
                out.append(self._shorten(sentences[0]))
                continue
            doc_vec = vectorizer.transform([document])
            sent_vecs = vectorizer.transform(sentences)
            scores = np.asarray((sent_vecs @ doc_vec.T).todense()).ravel()
            out.append(self._shorten(sentences[int(np.argmax(scores))]))
        return out

    def _shorten(self, sentence: str) -> str:
        words = sentence.split()
        text = " ".join(words[: self.max_words])
        return text.rstrip(".,;:")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences on ``. ! ?`` followed by whitespace and a capital, digit or quote."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text.strip()) if s.strip()]


#: Fewest words a document keeps after :func:`remove_key_sentence`; below it the document is left whole.
MIN_WORDS_LEFT = 8


def remove_key_sentence(document: str, query: str) -> str | None:
    """The document without the sentence a key-sentence query was cut from (for the inverse cloze task).

    A generated query is the start of one of the document's own sentences (:class:`KeySentenceQueryGenerator`), so
    a model trained on the pair can match it by copying words. The inverse cloze task (Lee et al., 2019, *Latent
    Retrieval for Weakly Supervised Open Domain Question Answering*, §5) pairs the sentence with the rest of its
    context instead, so the model learns what the passage is about.

    Args:
        document: The document text.
        query: The generated query: the sentence's first words, whitespace normalised, end punctuation stripped.

    Returns:
        The document with that whole sentence cut out, or ``None`` when the query is not the start of a sentence
        of the document, or when fewer than :data:`MIN_WORDS_LEFT` words would remain.
    """
    words = query.split()
    if not words:
        return None
    pattern = r"\s+".join(re.escape(word) for word in words)
    if words[-1][-1] not in ".!?":  # a cut sentence (or one whose end was stripped): take it to its end
        pattern += r"[^.!?]*[.!?]*"
    match = re.search(pattern, document)
    if match is None:
        return None
    rest = (document[: match.start()].rstrip() + " " + document[match.end() :].lstrip()).strip()
    return rest if len(rest.split()) >= MIN_WORDS_LEFT else None
