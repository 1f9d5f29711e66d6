"""Hard negatives mined from other leaves of the hierarchy, for the query↔document level of the HEAL loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from heal_rag._validation import check_int
from heal_rag.evaluation.retrieval import top_k_of_scores

#: Similarity entries scored at once (a block of queries against every document): 64 M floats, 256 MiB.
BLOCK_ENTRIES = 2**26


def mine_other_leaf_negatives(
    query_vectors: np.ndarray,
    document_vectors: np.ndarray,
    query_paths: np.ndarray,
    document_paths: np.ndarray,
    num_negatives: int,
    *,
    query_keys: Sequence[int] | None = None,
    document_keys: Sequence[int] | None = None,
) -> np.ndarray:
    """Each query's nearest documents from other leaves of the hierarchy.

    The hierarchy says which near documents are safe negatives: a document of another leaf is another topic, while
    a near document of the query's own leaf may answer it too (the false negatives of mining by similarity alone).
    A document is a candidate for a query when its leaf is labelled and it differs from the query at the deepest
    level labelled for the query (its leaf, or the level above where the leaf is masked), and its key (e.g. its
    text's) is not the query's own. The rule is this package's; the ``negative_1 ... negative_k`` columns
    :func:`negative_columns` makes are those of sentence-transformers' ``mine_hard_negatives``.

    Args:
        query_vectors: ``(Q, D)`` L2-normalised query embeddings (the base model's).
        document_vectors: ``(N, D)`` L2-normalised document embeddings.
        query_paths: ``(Q, L)`` label ids of each query's path (its document's), most general first; -1: no label.
        document_paths: ``(N, L)`` label ids of each document's path, as ``query_paths``.
        num_negatives: ``k >= 1``, negatives per query.
        query_keys: ``(Q,)`` optional keys; a document with the query's key is never its negative.
        document_keys: ``(N,)`` keys of the documents (with ``query_keys``).

    Returns:
        ``(Q, k)`` indices into ``document_vectors``, most similar first.

    Raises:
        ValueError: When ``num_negatives < 1``, the shapes disagree, or a query has fewer than ``k`` candidates
            (the message says how many it has).
    """
    check_int("num_negatives", num_negatives, minimum=1)
    query_paths, document_paths = np.asarray(query_paths), np.asarray(document_paths)
    if (
        query_paths.ndim != 2
        or query_paths.shape != (len(query_vectors), document_paths.shape[-1])
        or document_paths.shape != (len(document_vectors), query_paths.shape[1])
        or (query_keys is None) != (document_keys is None)
        or (query_keys is not None and (len(query_keys) != len(query_vectors)))
        or (document_keys is not None and (len(document_keys) != len(document_vectors)))
    ):
        raise ValueError(
            f"Got {len(query_vectors)} query vectors with paths of shape {query_paths.shape} and "
            f"{len(document_vectors)} document vectors with paths of shape {document_paths.shape}: give one path of "
            "the same depth per vector (and query_keys with document_keys, one per vector, or neither)."
        )
    deepest = np.where(query_paths >= 0, np.arange(query_paths.shape[1]), -1).max(axis=1)  # (Q,), -1: unlabelled
    query_ids = np.take_along_axis(query_paths, np.maximum(deepest, 0)[:, None], axis=1)[:, 0]
    labelled_leaf = document_paths[:, -1] >= 0
    mined = np.empty((len(query_vectors), num_negatives), dtype=np.int64)
    block_size = max(1, BLOCK_ENTRIES // max(1, len(document_vectors)))
    for start in range(0, len(query_vectors), block_size):
        block = slice(start, start + block_size)
        allowed = labelled_leaf[None, :] & (
            document_paths[:, np.maximum(deepest[block], 0)].T != query_ids[block, None]
        )
        allowed &= (deepest[block] >= 0)[:, None]
        if query_keys is not None:
            allowed &= np.asarray(query_keys)[block, None] != np.asarray(document_keys)[None, :]
        fewest = int(allowed.sum(axis=1).min(initial=num_negatives))
        if fewest < num_negatives:
            raise ValueError(
                f"A query has {fewest} documents outside its leaf, fewer than the {num_negatives} negatives asked "
                "for; ask for fewer, or give documents from more leaves."
            )
        scores = np.where(allowed, query_vectors[block] @ document_vectors.T, -np.inf)
        mined[block] = top_k_of_scores(scores, num_negatives)
    return mined


def negative_columns(texts: Sequence[str], mined: np.ndarray) -> dict[str, list[Any]]:
    """``{"negative_1": [...], ..., "negative_k": [...]}``: the texts of ``mined`` (``(Q, k)`` indices), by rank."""
    return {f"negative_{j + 1}": [texts[i] for i in mined[:, j]] for j in range(mined.shape[1])}
