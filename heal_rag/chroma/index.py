"""Chroma collections with a HEAL model: checked inputs, idempotent upserts, refusal of a different model."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
from chromadb.config import Settings
from tqdm.auto import tqdm

from heal_rag._validation import check_int
from heal_rag.chroma.embedding_function import FINGERPRINT_KEY, HEALEmbeddingFunction, StaleModelError
from heal_rag.data import Corpus
from heal_rag.encoder import HEALEncoder, TruncationWarning
from heal_rag.metadata import record_metadata
from heal_rag.outputs import OutputPathError, check_writable
from heal_rag.stale import short_fingerprint, stale_model_error

logger = logging.getLogger(__name__)

#: The file that marks a directory as a Chroma database.
DATABASE_FILE = "chroma.sqlite3"
#: Record metadata key holding :func:`content_hash`, which lets a re-run skip documents already stored unchanged.
CONTENT_KEY = "heal_content_sha"
# Chroma 1.x's own rule for collection names (its Rust validator is not exposed to Python).
_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")
_IPV4 = re.compile(r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$")
# Chroma reads telemetry settings from the environment; keep them off unless the user says otherwise, so nothing
# leaves the machine and every client in the process (ours, LangChain's, LlamaIndex's) gets the same settings.
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def check_collection_name(name: str) -> str:
    """Check a collection name against Chroma's rule before anything is created.

    Raises:
        ValueError: Naming the rule: 3–512 characters of ``[a-zA-Z0-9._-]``, starting and ending with a letter or
            digit, no ``..``, not an IPv4 address.
    """
    if not isinstance(name, str) or not _NAME_PATTERN.match(name) or ".." in name or _IPV4.match(name):
        raise ValueError(
            f"Invalid collection name {name!r}: Chroma needs 3-512 characters of [a-zA-Z0-9._-], starting and ending "
            "with a letter or digit, with no '..' and not an IPv4 address (e.g. 'papers' or 'team-docs_v2')."
        )
    return name


def open_client(db_path: str | os.PathLike[str], *, create: bool = True) -> Any:
    """A persistent Chroma client at ``db_path``, shared with any client already open on that folder.

    Chroma allows one configuration per database folder and process: a second client with other settings fails
    ("An instance of Chroma already exists ... with different settings"). So when a client (ours, or one LangChain's
    or LlamaIndex's Chroma store opened) already serves this folder, its settings are reused; otherwise Chroma's
    default settings are used, with telemetry off unless the environment says otherwise.

    Args:
        db_path: The database folder.
        create: Create the database when there is none; with ``False`` a missing database is an error and nothing
            is created.

    Raises:
        FileNotFoundError: With ``create=False``, when ``db_path`` holds no Chroma database.
        heal_rag.outputs.OutputPathError: When a new database would go into a non-empty folder that is not one, or
            an unwritable location.
    """
    folder = Path(db_path).expanduser()
    is_database = (folder / DATABASE_FILE).is_file()
    if not is_database:
        if not create:
            raise FileNotFoundError(
                f"No Chroma database at {str(db_path)!r} (no {DATABASE_FILE}); build one first with "
                "heal_rag.chroma.build_index or `heal-rag index`."
            )
        if folder.is_dir() and any(folder.iterdir()):
            raise OutputPathError(
                f"{str(db_path)!r} is not empty and is not a Chroma database; heal_rag will not create one among "
                "other files. Choose a new or empty folder for --db."
            )
        if folder.exists() and not folder.is_dir():
            raise OutputPathError(f"{str(db_path)!r} is a file; give a folder for the Chroma database.")
        check_writable(folder)
    path_text, settings = _shared_settings(folder)
    return chromadb.PersistentClient(path=path_text, settings=settings)


def _shared_settings(folder: Path) -> tuple[str, Settings]:
    """The path string and settings of a client already open on ``folder`` in this process, else defaults."""
    from chromadb.api.shared_system_client import SharedSystemClient

    resolved = folder.resolve()
    for system in list(SharedSystemClient._identifier_to_system.values()):
        settings = system.settings
        if settings.is_persistent and settings.persist_directory:
            if Path(settings.persist_directory).expanduser().resolve() == resolved:
                return settings.persist_directory, settings
    return str(resolved), Settings()  # absolute: Chroma keys its shared clients by this string


def connect(
    host: str = "localhost", port: int = 8000, *, ssl: bool = False, headers: dict[str, str] | None = None
) -> Any:
    """A client of a Chroma server (``chroma run --path DIR --port 8000``), checked to answer before it is returned.

    Pass it as ``client=`` to :func:`build_index`, :func:`open_collection` and the LangChain / LlamaIndex store
    helpers: several app instances then share one index. The collection records the model path and fingerprint, so
    each instance needs the same model at the same path (the stale-model check runs on the client side, where the
    model is). Telemetry stays off unless the environment says otherwise.

    Args:
        host: The server's host name; ``"host:port"`` and ``"http(s)://host[:port]"`` work too (their port and
            scheme win over ``port`` and ``ssl``).
        port: Its port, 1–65535 (a string of digits is accepted).
        ssl: Use HTTPS.
        headers: Extra HTTP headers (e.g. an authentication token).

    Raises:
        ValueError: For a port outside 1–65535.
        ConnectionError: When no Chroma server answers at ``host:port``, with the command that starts one.
    """
    host, port, ssl = server_address(host, port, ssl)
    try:
        client = chromadb.HttpClient(host=host, port=port, ssl=ssl, headers=headers, settings=Settings())
        client.heartbeat()
    except Exception as exc:  # chromadb raises several transport errors (httpx, ValueError) for a dead server
        raise ConnectionError(
            f"No Chroma server answers at {host}:{port} ({type(exc).__name__}: {exc}). Start one with "
            f"`chroma run --path chroma_db --port {port}`, or use a local database folder instead."
        ) from exc
    return client


def server_address(host: str, port: int | str, ssl: bool) -> tuple[str, int, bool]:
    """``(host, port, ssl)`` from a host that may carry a scheme and a port (``http://db:8001``, ``db:8001``)."""
    from urllib.parse import urlsplit

    text = str(host).strip()
    if "://" in text or (text.count(":") == 1 and text.rsplit(":", 1)[1].isdigit()):
        parts = urlsplit(text if "://" in text else f"//{text}")
        ssl = ssl or parts.scheme == "https"
        port = parts.port or port
        text = parts.hostname or text
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port)
    check_int("port", port, minimum=1, maximum=65535)
    return text, int(port), ssl


def _client(db_path: str | os.PathLike[str] | None, client: Any, create: bool) -> Any:
    """``client`` when given (a server's, or one the caller opened), else the shared client of ``db_path``."""
    if client is not None:
        if db_path is not None:
            raise ValueError("Give a database folder (db_path) or a Chroma client (client=), not both.")
        return client
    if db_path is None:
        raise ValueError(
            "Give a database folder (db_path) or a Chroma client (client=, e.g. heal_rag.chroma.connect(host, port))."
        )
    return open_client(db_path, create=create)


def _where(db_path: str | os.PathLike[str] | None) -> str:
    return repr(str(db_path)) if db_path is not None else "the Chroma server"


def open_collection(
    db_path: str | os.PathLike[str] | None,
    collection_name: str,
    model: str | os.PathLike[str] | HEALEncoder | None = None,
    *,
    client: Any = None,
) -> Any:
    """Reopen a collection built by :func:`build_index`, refusing a model other than the one that built it.

    The embedding function is rebuilt from the collection's stored configuration; if the model at its path has
    changed since (even a same-width fine-tune or a retrain in place), :class:`StaleModelError` is raised here,
    before any query. Nothing is created: a missing database or collection is an error.

    Args:
        db_path: The Chroma database folder (``None`` with ``client``).
        collection_name: The collection.
        model: Optionally the model you mean to query with (a directory or a loaded encoder): it must be the one
            that built the collection.
        client: A Chroma client instead of a folder, e.g. :func:`connect` for a server.

    Raises:
        FileNotFoundError: When there is no database at ``db_path``.
        ValueError: When the collection does not exist (the message lists those that do).
        StaleModelError: When the model differs from the one that built the collection.
    """
    client = _client(db_path, client, create=False)
    names = sorted(c.name for c in client.list_collections())
    if collection_name not in names:
        raise ValueError(
            f"No collection {collection_name!r} in {_where(db_path)}; it holds {names or 'no collections'}."
        )
    stored = client.get_collection(collection_name, embedding_function=None)
    ef_config = (stored.configuration_json or {}).get("embedding_function") or {}
    if ef_config.get("name") != HEALEmbeddingFunction.name():
        raise ValueError(
            f"Collection {collection_name!r} was not built by heal_rag (its embedding function is "
            f"{ef_config.get('name')!r}); open it with chromadb directly."
        )
    function = HEALEmbeddingFunction.build_from_config(ef_config["config"])  # raises StaleModelError
    if model is not None:
        check_collection(stored, model)
    return client.get_collection(collection_name, embedding_function=function)


def check_collection(collection: Any, model: Any) -> None:
    """Refuse to use ``collection`` with a model other than the one that built it.

    Works for any Chroma collection object, including the one behind LangChain's ``Chroma`` store
    (``store._collection``) or a LlamaIndex ``ChromaVectorStore`` (``store._collection``).

    Args:
        collection: A Chroma collection built by :func:`build_index` (its metadata holds the model fingerprint).
        model: A model directory, a :class:`~heal_rag.encoder.HEALEncoder`, or any heal_rag adapter (embedding
            function, LangChain embeddings, LlamaIndex embedding).

    Raises:
        StaleModelError: When the fingerprints differ, or the collection records none.
    """
    expected = (collection.metadata or {}).get(FINGERPRINT_KEY)
    actual = _encoder_of(model).fingerprint
    if expected is None:
        raise StaleModelError(
            f"Collection {collection.name!r} records no heal_rag model fingerprint, so its vectors cannot be "
            "checked against this model; build it with heal_rag.chroma.build_index."
        )
    if expected != actual:
        raise stale_model_error(
            f"Collection {collection.name!r} was built by another model or backend",
            expected,
            f"this encoder is {short_fingerprint(actual)}",
            "query with the model and backend that built it, or rebuild the collection.",
        )


def _encoder_of(model: Any) -> HEALEncoder:
    if isinstance(model, HEALEncoder):
        return model
    for attribute in ("encoder", "heal_encoder"):
        candidate = getattr(model, attribute, None)
        if isinstance(candidate, HEALEncoder):
            return candidate
    if model is None or isinstance(model, (str, os.PathLike)):
        return HEALEncoder.load(model)
    raise TypeError(f"Expected a model directory, a HEALEncoder or a heal_rag adapter, got {type(model).__name__}.")


def prepare_collection_for(client: Any, collection_name: str, encoder: HEALEncoder) -> Any:
    """The collection ``collection_name`` for use with ``encoder`` by another framework's store.

    An existing collection must have been built by this model (:func:`check_collection`); a missing one is created
    in cosine space, recording the model, with no embedding function attached (the framework embeds).
    """
    if collection_name in {c.name for c in client.list_collections()}:
        collection = client.get_collection(collection_name, embedding_function=None)
        check_collection(collection, encoder)
        return collection
    return client.create_collection(
        collection_name,
        embedding_function=None,
        configuration={"hnsw": {"space": "cosine"}},
        metadata={FINGERPRINT_KEY: encoder.fingerprint, "heal_model_path": str(encoder.model_path)},
    )


def _prepare_collection(client: Any, name: str, function: HEALEmbeddingFunction, db_path: Any, rebuild: bool) -> Any:
    """Get or create the collection, refusing one built by another model; ``rebuild`` drops only our own."""
    existing = {c.name for c in client.list_collections()}
    if name in existing:
        stored = client.get_collection(name, embedding_function=None).metadata or {}
        if FINGERPRINT_KEY not in stored:
            raise StaleModelError(
                f"Collection {name!r} in {_where(db_path)} was not built by heal_rag; heal_rag neither adds to it nor "
                "drops it. Index into another collection name."
            )
        if rebuild:
            client.delete_collection(name)
        elif stored[FINGERPRINT_KEY] != function.fingerprint:
            raise stale_model_error(
                f"Collection {name!r} in {_where(db_path)} was built by a different model or backend",
                stored[FINGERPRINT_KEY],
                f"{function.model_path!r} is {short_fingerprint(function.fingerprint)}",
                "index into a new collection, or rebuild this one (--rebuild / rebuild=True).",
            )
    return client.get_or_create_collection(
        name,
        embedding_function=function,
        metadata={FINGERPRINT_KEY: function.fingerprint, "heal_model_path": str(function.model_path)},
    )


def build_index(
    model: str | os.PathLike[str] | HEALEncoder | None,
    corpus: Corpus | Iterable[Corpus],
    db_path: str | os.PathLike[str] | None,
    collection_name: str = "heal_rag",
    batch_size: int = 256,
    rebuild: bool = False,
    show_progress: bool = True,
    client: Any = None,
    embeddings: Any = None,
    backend: str = "torch",
    processes: int = 1,
    delete_missing: bool = False,
) -> Any:
    """Embed ``corpus`` with a HEAL model and upsert it into a persistent Chroma collection.

    Everything is checked before the database is touched: the collection name, the batch size, the ids (unique,
    see :class:`~heal_rag.data.Corpus`), the database folder and the model files. Upserts go by document id in
    batches, so re-running is idempotent; a re-run (after an interruption, or on a grown corpus) does not embed again
    a document already stored with the same content (text, title, label path and metadata, compared by the hash kept
    in ``heal_content_sha``). Each record's metadata holds the document's own metadata (flattened where a vector
    store would refuse it, see :func:`heal_rag.metadata.flatten_metadata`), the title, and the label path
    (``heal_path`` as ``"A > B"`` and flat ``heal_l0``, ``heal_l1``, ...; predicted by the model when the corpus has
    no labels). The collection records the model fingerprint; a collection built by a different model is refused
    with :class:`~heal_rag.chroma.StaleModelError` unless ``rebuild=True``, which drops it first (only a collection
    heal_rag built is ever dropped).

    Args:
        model: Model directory or loaded encoder.
        corpus: Documents to index: a :class:`~heal_rag.data.Corpus`, or batches of them (e.g.
            :func:`heal_rag.data.iter_corpus`), so a corpus larger than memory streams through; only the ids are
            kept across batches (to refuse duplicates).
        db_path: Chroma persistence directory (new, empty, or an existing Chroma database); ``None`` with ``client``.
        collection_name: 3–512 characters of ``[a-zA-Z0-9._-]``.
        batch_size: Documents per upsert (≥ 1).
        rebuild: Drop an existing heal_rag collection of that name first.
        show_progress: Progress bar.
        client: A Chroma client instead of ``db_path`` (``None`` then): a server's (:func:`connect`), or one shared
            with LangChain.
        embeddings: The corpus's document vectors, already computed with this model (``(len(corpus), dimension)``,
            normalised), e.g. by an evaluation; they are stored as given instead of being computed again. Only with
            a single ``Corpus``.
        backend: The backend a model directory is loaded with (see :mod:`heal_rag.backends`).
        processes: Encoder processes (torch backend; see :meth:`~heal_rag.encoder.HEALEncoder.multi_process`).
        delete_missing: Once every document is stored, delete the collection's records whose ids are not in
            ``corpus``: the chunks of documents removed since the last build, or the last chunks of a document that
            got shorter (LangChain's indexing API calls this ``cleanup="full"``). Nothing is deleted when the build
            stops early. Give the whole corpus: records of documents left out are deleted too.

    Returns:
        The Chroma collection. How many documents were embedded, how many were already stored and how many were
        deleted is logged (logger ``heal_rag.chroma.index``, level INFO) and shown on the progress bar.

    Raises:
        ValueError: For a bad name or batch size, or duplicate ids (also across batches).
        heal_rag.outputs.OutputPathError: When ``db_path`` is not a database and not empty, or not writable.
        StaleModelError: When the collection was built by another model, or not by heal_rag.
    """
    check_collection_name(collection_name)
    check_int("batch_size", batch_size, minimum=1)
    check_int("processes", processes, minimum=1)
    if processes > 1 and backend != "torch":
        raise ValueError(f"processes={processes} applies to the torch backend; {backend} already uses every core.")
    single = isinstance(corpus, Corpus)
    if embeddings is not None and (not single or len(embeddings) != len(corpus)):
        raise ValueError(
            f"Got {len(embeddings)} embeddings for {len(corpus) if single else 'a stream of'} documents; "
            "embeddings= needs one vector per document of a single Corpus."
        )
    encoder = model if isinstance(model, HEALEncoder) else HEALEncoder.load(model, backend=backend)
    function = HEALEmbeddingFunction(encoder=encoder)
    client = _client(db_path, client, create=True)
    collection = _prepare_collection(client, collection_name, function, db_path, rebuild)

    truncated_before = encoder.truncated_texts
    counts = {"embedded": 0, "already stored": 0}
    seen: set[str] = set()
    progress = tqdm(total=len(corpus) if single else None, desc="indexing", unit="doc", disable=not show_progress)
    with encoder.multi_process(processes):
        for part in [corpus] if single else corpus:
            _check_new_ids(part.ids, seen)
            for start in range(0, len(part), batch_size):
                stop = min(start + batch_size, len(part))
                vectors = None if embeddings is None else np.asarray(embeddings[start:stop], dtype=np.float32)
                embedded = _upsert_batch(collection, function, encoder, part, start, stop, vectors)
                counts["embedded"] += embedded
                counts["already stored"] += stop - start - embedded
                progress.update(stop - start)
                progress.set_postfix(counts, refresh=False)
    progress.close()
    total = counts["embedded"] + counts["already stored"]
    logger.info(
        "%s: %d documents embedded, %d already stored with the same content",
        collection_name,
        counts["embedded"],
        counts["already stored"],
    )
    if delete_missing:
        deleted = _delete_missing(collection, seen, batch_size)
        logger.info("%s: %d records deleted (their ids are not in this build's documents)", collection_name, deleted)
    truncated = encoder.truncated_texts - truncated_before
    if truncated:
        warnings.warn(
            f"{truncated} of {total} documents were longer than the model's max_seq_length "
            f"({encoder.max_seq_length} tokens) and were embedded from their beginning only. Split long documents "
            "into chunks (heal_rag.documents, or `heal-rag index --data DIR`, which chunks for you).",
            TruncationWarning,
            stacklevel=2,
        )
    return collection


def _delete_missing(collection: Any, keep: set[str], batch_size: int) -> int:
    """Delete the records of ``collection`` whose ids are not in ``keep``; returns how many were deleted."""
    stored: list[str] = []
    offset = 0
    while True:  # ids only, a page at a time
        page = collection.get(include=[], limit=max(batch_size, 1024), offset=offset)["ids"]
        stored.extend(page)
        offset += len(page)
        if not page:
            break
    missing = [record_id for record_id in stored if record_id not in keep]
    for start in range(0, len(missing), batch_size):
        collection.delete(ids=missing[start : start + batch_size])
    return len(missing)


def _check_new_ids(ids: Sequence[str], seen: set[str]) -> None:
    """Refuse an id seen in an earlier batch of the same build (within a batch, Corpus already checks)."""
    repeated = next((doc_id for doc_id in ids if doc_id in seen), None)
    if repeated is not None:
        raise ValueError(f"Duplicate document id {repeated!r} across corpus batches; ids must be unique.")
    seen.update(ids)


def content_hash(text: str, title: str | None, path: Sequence[str] | None, metadata: dict[str, Any] | None) -> str:
    """A short hash of what a record stores besides its vector (16 hex digits of SHA-256)."""
    payload = json.dumps([text, title, list(path) if path else None, metadata or {}], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _record_fields(corpus: Corpus, start: int, stop: int) -> tuple[list[str], list[Any], list[Any], list[Any]]:
    """Texts, titles, label paths (``None`` when unlabelled) and user metadata of ``corpus[start:stop]``."""
    n = stop - start
    paths = list(corpus.labels.paths[start:stop]) if corpus.labels is not None else [None] * n
    extras = corpus.metadata[start:stop] if corpus.metadata else [None] * n
    return list(corpus.texts[start:stop]), list(corpus.titles[start:stop]), paths, list(extras)


def content_hashes(corpus: Corpus) -> list[str]:
    """:func:`content_hash` of every record of ``corpus``, as :func:`build_index` stores them (one per document)."""
    fields = _record_fields(corpus, 0, len(corpus.ids))
    return [content_hash(*record) for record in zip(*fields, strict=True)]


def _upsert_batch(
    collection: Any,
    function: HEALEmbeddingFunction,
    encoder: HEALEncoder,
    corpus: Corpus,
    start: int,
    stop: int,
    vectors: np.ndarray | None,
) -> int:
    """Embed and upsert ``corpus[start:stop]``, skipping records stored with the same content.

    Returns:
        How many documents were embedded (the rest were already stored unchanged).
    """
    ids = corpus.ids[start:stop]
    texts, titles, paths, extras = _record_fields(corpus, start, stop)
    hashes = [content_hash(*fields) for fields in zip(texts, titles, paths, extras, strict=True)]
    stored = collection.get(ids=ids, include=["metadatas"])
    known = {i: (m or {}).get(CONTENT_KEY) for i, m in zip(stored["ids"], stored["metadatas"], strict=True)}
    todo = [row for row, (doc_id, digest) in enumerate(zip(ids, hashes, strict=True)) if known.get(doc_id) != digest]
    if not todo:
        return 0
    texts = [texts[row] for row in todo]
    if vectors is not None:
        vectors = vectors[todo]
    else:
        with warnings.catch_warnings():  # one warning with the total, at the end, instead of the encoder's
            warnings.simplefilter("ignore", TruncationWarning)
            vectors = function.embed_as_array(texts)
    batch_paths = [paths[row] for row in todo]
    if encoder.label_tree is not None and any(p is None for p in batch_paths):
        level_ids, _ = encoder.predict_level_ids(vectors)
        tree = encoder.label_tree
        batch_paths = [
            p if p is not None else tree.leaf_path(int(row[-1])) for p, row in zip(batch_paths, level_ids, strict=True)
        ]
    metadatas = [
        {**record_metadata(extras[row], path, titles[row]), CONTENT_KEY: hashes[row]}
        for path, row in zip(batch_paths, todo, strict=True)
    ]
    collection.upsert(ids=[ids[row] for row in todo], documents=texts, embeddings=vectors, metadatas=metadatas)
    return len(todo)
