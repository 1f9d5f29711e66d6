"""Splitting documents into chunks that fit the model's window, counted with the model's own tokenizer.

The splitting itself is LangChain's ``RecursiveCharacterTextSplitter`` (``langchain-text-splitters``, extra
``documents``): paragraphs first, then lines, then words, with overlap between neighbouring chunks. heal_rag adds the
token count of the model that will embed the chunks, keeps each chunk's place (source document, heading, page,
position) and gives every chunk a stable id, ``"<document id>#<n>"``, so the chunks a model is tuned on and the chunks
an index holds are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tqdm.auto import tqdm

from heal_rag._validation import check_int
from heal_rag.data import Corpus
from heal_rag.labels import PATH_SEPARATOR, LabelPaths
from heal_rag.sources.document import SourceDocument

#: Chunk size (tokens) for models without a token limit.
FALLBACK_CHUNK_SIZE = 256
#: Metadata keys every chunk gets.
DOCUMENT_ID_KEY = "document_id"
CHUNK_INDEX_KEY = "chunk_index"
HEADING_KEY = "heading"


@dataclass(frozen=True)
class ChunkingConfig:
    """How documents are cut into chunks.

    Attributes:
        chunk_size: Tokens per chunk at most (the model's tokenizer counts); ``None``: as many as the model reads
            (its ``max_seq_length`` minus its special tokens and document prompt).
        chunk_overlap: Tokens shared by neighbouring chunks; ``None``: an eighth of the chunk size.
    """

    chunk_size: int | None = None
    chunk_overlap: int | None = None

    def __post_init__(self) -> None:
        check_int("chunk_size", self.chunk_size, minimum=16, allow_none=True)
        check_int("chunk_overlap", self.chunk_overlap, minimum=0, allow_none=True)
        if self.chunk_size is not None and self.chunk_overlap is not None and self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})."
            )

    def resolved(self, model: Any) -> ChunkingConfig:
        """The settings with ``None`` replaced by the values for ``model``.

        Raises:
            ValueError: When ``chunk_size`` is larger than ``model`` reads: the end of every long chunk would be cut
                off when it is embedded, and never found.
        """
        window = model_chunk_size(model)
        if self.chunk_size is not None and self.chunk_size > window:
            raise ValueError(
                f"chunk_size {self.chunk_size} is more tokens than the model reads ({window}: its max_seq_length less "
                f"special tokens and prompt), so the end of each long chunk would never be embedded. Use a chunk_size "
                f"of at most {window}, or leave it unset to fill the model's window."
            )
        size = self.chunk_size or window
        overlap = self.chunk_overlap if self.chunk_overlap is not None else size // 8
        return ChunkingConfig(size, min(overlap, size - 1))

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON view (kept in ``heal_rag.json`` so an index cuts the same chunks)."""
        return asdict(self)


def token_counter(model: Any) -> Callable[[str], int]:
    """A function counting the tokens ``model``'s tokenizer makes of a text (no special tokens).

    Works with a ``SentenceTransformer``, a :class:`~heal_rag.encoder.HEALEncoder`, a Hugging Face tokenizer or a
    ``tokenizers.Tokenizer``; anything else counts whitespace-separated words.
    """
    tokenizer = getattr(getattr(model, "model", model), "tokenizer", model)
    if callable(tokenizer) and hasattr(tokenizer, "convert_ids_to_tokens"):  # a Hugging Face tokenizer
        return lambda text: len(
            tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        )
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "get_vocab_size"):  # tokenizers.Tokenizer
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)
    return lambda text: len(text.split())


def model_chunk_size(model: Any) -> int:
    """The most tokens of text a chunk may hold for ``model``: its window minus special tokens and document prompt."""
    st_model = getattr(model, "model", model)
    limit = getattr(st_model, "max_seq_length", None)
    if not isinstance(limit, int) or limit <= 0:
        return FALLBACK_CHUNK_SIZE
    tokenizer = getattr(st_model, "tokenizer", None)
    special = tokenizer.num_special_tokens_to_add() if hasattr(tokenizer, "num_special_tokens_to_add") else 2
    prompts = getattr(st_model, "prompts", None) or {}
    prompt = next((prompts[name] for name in ("document", "passage", "corpus") if prompts.get(name)), "")
    return max(16, limit - special - (token_counter(st_model)(prompt) if prompt else 0))


def chunk_documents(
    documents: Sequence[SourceDocument],
    model: Any,
    *,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    show_progress: bool = True,
) -> Corpus:
    """Cut documents into chunks that fit ``model``'s window; each chunk keeps its document's path and metadata.

    Each section (the text under one heading trail, or one PDF page) is split on its own, so no chunk spans two
    headings. A chunk's title is the heading above it when it is the first chunk of its section (a heading is what
    a reader asks about; the default query generator turns titles into training queries), else ``None``; in a
    document without headings (a JSONL record, plain text, an HTML page with only a ``<title>``) the document's
    title, if any, is its first chunk's.

    Args:
        documents: Documents from :mod:`heal_rag.sources`.
        model: The model (or tokenizer) whose tokens are counted.
        chunk_size: Tokens per chunk at most (``None``: the model's window).
        chunk_overlap: Tokens shared by neighbouring chunks (``None``: an eighth of the chunk size).
        show_progress: Progress bar over documents.

    Returns:
        A :class:`~heal_rag.data.Corpus` of chunks: ids ``"<document id>#<n>"``, the documents' label paths (or
        ``None`` when no document has one), and metadata: the document's own, plus ``document_id``,
        ``chunk_index``, ``start_index`` (characters into the section), ``heading`` (``"A > B"``) and ``page``.

    Raises:
        ValueError: For bad settings, or documents of which some have a label path and some do not.
    """
    try:
        from langchain_text_splitters import RecursiveCharacterTextSplitter
    except ImportError as exc:
        raise ImportError("Chunking needs langchain-text-splitters: pip install 'heal_rag[documents]'") from exc
    config = ChunkingConfig(chunk_size, chunk_overlap).resolved(model)
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=config.chunk_size,
        chunk_overlap=config.chunk_overlap,
        length_function=token_counter(model),
    )
    with_paths = [d.path is not None for d in documents]
    if any(with_paths) and not all(with_paths):
        first = documents[with_paths.index(False)].id
        raise ValueError(f"{with_paths.count(False)} documents have no label path (first: {first!r}), others do.")
    ids: list[str] = []
    texts: list[str] = []
    titles: list[str | None] = []
    paths: list[tuple[str, ...]] = []
    metadata: list[dict[str, Any]] = []
    for document in tqdm(documents, desc="chunking", unit="doc", disable=not show_progress):
        index = 0
        # a document without headings (a JSONL record's title, an HTML <title>) asks its title of its first chunk
        untitled = None if any(s.headings for s in document.sections) else document.title
        for section in document.sections:
            start = -1
            for position, piece in enumerate(splitter.split_text(section.text)):
                # chunks are substrings of the section in order (overlapping ones start after the previous start)
                found = section.text.find(piece, start + 1)
                start = found if found >= 0 else max(start, 0)
                record = {**document.metadata, DOCUMENT_ID_KEY: document.id, CHUNK_INDEX_KEY: index}
                record["start_index"] = start
                if section.headings:
                    record[HEADING_KEY] = PATH_SEPARATOR.join(section.headings)
                if section.page is not None:
                    record["page"] = section.page
                if document.title:
                    record.setdefault("title", document.title)
                ids.append(f"{document.id}#{index}")
                texts.append(piece)
                titles.append(section.headings[-1] if section.headings and position == 0 else None)
                if index == 0 and untitled and untitled.strip():
                    titles[-1] = untitled
                if document.path is not None:
                    paths.append(document.path)
                metadata.append(record)
                index += 1
    if not ids:
        raise ValueError("The documents hold no text to chunk.")
    labels = LabelPaths(paths) if paths else None
    return Corpus(ids=ids, texts=texts, titles=titles, labels=labels, metadata=metadata)
