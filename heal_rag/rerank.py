"""Hierarchy-aware reranking (heal-method §6): one scoring core behind the LangChain and LlamaIndex rerankers.

For a query, the probability of every label at every level comes from a softmax over its similarity to the label
centroids in the tuned space, and the query's *certainty* at a level is one minus the normalised entropy of that
distribution (1: one label takes it all; 0: every label equally likely), with certainties under
``confidence_floor`` counted as 0. Each candidate is rescored as

    score = similarity + margin · Σ_l w_l · certainty_l · p_l(label_l(doc) | query) / Σ_l w_l

The hierarchy term lies in ``[0, margin]``: it can only break near-ties, so a candidate more than ``margin`` ahead on
similarity is never overtaken, and it vanishes where the query's branch is uncertain, so an uncertain query keeps
the retriever's order. ``margin`` (with the temperature and the floor) is chosen per model on held-out queries by
:func:`heal_rag.training.fine_tune` and stored in ``heal_rag.json``; a model without that record gets conservative
defaults (:data:`DEFAULT_SETTINGS`). The score is the cosine similarity plus at most ``margin``; higher is better.

Documents carry their label path in metadata (:data:`~heal_rag.metadata.PATH_KEY` as ``"A > B"`` or a list, or flat
``heal_l0``, ``heal_l1``, ... keys); when it is missing the path is predicted from the document's embedding.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from heal_rag._validation import check_int, check_real
from heal_rag._warning import HEALWarning
from heal_rag.encoder import HEALEncoder
from heal_rag.labels import PATH_SEPARATOR
from heal_rag.metadata import LEVEL_KEY_PREFIX, LEVEL_MATCH_KEY, PATH_KEY, path_from_metadata, path_metadata

#: Settings for a model without a reranker record in its heal_rag.json: small enough to reorder near-ties only.
DEFAULT_SETTINGS: dict[str, float] = {"margin": 0.01, "temperature": 0.05, "confidence_floor": 0.5}

__all__ = [
    "DEFAULT_SETTINGS",
    "LEVEL_KEY_PREFIX",
    "LEVEL_MATCH_KEY",
    "PATH_KEY",
    "HierarchyScorer",
    "RerankResult",
    "certainty",
    "hierarchy_bonus",
    "path_from_metadata",
    "path_metadata",
]


def certainty(probabilities: np.ndarray, confidence_floor: float = 0.0) -> np.ndarray:
    """How sure a query is of its label at a level: 1 − normalised entropy, floored.

    Args:
        probabilities: ``(..., K)`` label distributions (rows sum to 1).
        confidence_floor: Certainties under this count as 0; the rest are rescaled to ``[0, 1]``.

    Returns:
        ``(...)`` certainties in ``[0, 1]`` (0 for a level with a single label: it tells nothing).
    """
    n_labels = probabilities.shape[-1]
    if n_labels < 2:
        return np.zeros(probabilities.shape[:-1])
    entropy = -(probabilities * np.log(np.maximum(probabilities, 1e-12))).sum(axis=-1)
    raw = 1.0 - entropy / np.log(n_labels)
    return np.clip((raw - confidence_floor) / (1.0 - confidence_floor), 0.0, 1.0)


def hierarchy_bonus(
    query_probabilities: Sequence[np.ndarray],
    label_ids: np.ndarray,
    margin: float,
    level_weights: np.ndarray,
    confidence_floor: float,
) -> np.ndarray:
    """The reranker's hierarchy term for each candidate of one query, in ``[0, margin]``.

    ``margin · Σ_l w_l · certainty_l · p_l(label_l(doc) | query) / Σ_l w_l``: the query's certainty at a level times
    the probability it gives the candidate's label there, averaged over levels with weights ``w_l``.

    Args:
        query_probabilities: Per level, the query's ``(K_l,)`` label distribution.
        label_ids: ``(n, L)`` label id of each candidate at each level (``-1``: unknown, no bonus at that level).
        margin: The most the term adds (similarity units).
        level_weights: ``(L,)`` non-negative weights.
        confidence_floor: See :func:`certainty`.

    Returns:
        ``(n,)`` bonuses.
    """
    total = np.zeros(len(label_ids))
    for level, probabilities in enumerate(query_probabilities):
        ids = label_ids[:, level]
        agreement = np.where(ids >= 0, probabilities[np.maximum(ids, 0)], 0.0)
        total += level_weights[level] * certainty(probabilities, confidence_floor) * agreement
    return margin * total / level_weights.sum()


@dataclass(frozen=True)
class RerankResult:
    """One reranked candidate.

    Attributes:
        index: Position of the candidate in the input.
        score: Final score: ``similarity + hierarchy_score`` (higher is better).
        similarity: Cosine similarity between query and document.
        hierarchy_score: The hierarchy term, in ``[0, margin]`` (see :func:`hierarchy_bonus`).
        level_matches: Whether the document's label equals the query's most likely label, per level.
        path: The document's label path (from metadata, or predicted).
    """

    index: int
    score: float
    similarity: float
    hierarchy_score: float
    level_matches: tuple[bool, ...]
    path: tuple[str, ...]

    @property
    def matched_levels(self) -> int:
        """Levels, from the top, at which the document's label is the query's most likely one."""
        matched = 0
        for match in self.level_matches:
            if not match:
                break
            matched += 1
        return matched


class HierarchyScorer:
    """The scoring core of the hierarchy-aware rerankers (see the module docstring for the score).

    Args:
        encoder: A :class:`~heal_rag.encoder.HEALEncoder` of a HEAL model (it needs the label tree).
        margin: The most the hierarchy term adds to a similarity, in ``[0, 1]`` (0: the retriever's order).
            ``None``: the value chosen for this model on held-out queries (``heal_rag.json``,
            ``training.reranker``), else :data:`DEFAULT_SETTINGS`.
        temperature: Softmax temperature over label-centroid similarities (``None``: as ``margin``).
        confidence_floor: Certainties under this count as 0, in ``[0, 1)`` (``None``: as ``margin``).
        level_weights: Weight per level (default 1 at every level).

    Example:
        ```python
        scorer = HierarchyScorer(HEALEncoder.load("models/heal-minilm"))
        results = scorer.rerank("superconducting qubits", texts, paths=paths, top_n=3)
        ```
    """

    def __init__(
        self,
        encoder: HEALEncoder,
        margin: float | None = None,
        temperature: float | None = None,
        confidence_floor: float | None = None,
        level_weights: Sequence[float] | None = None,
    ) -> None:
        tree = encoder.label_tree
        if tree is None:
            raise ValueError(
                "The hierarchy-aware reranker needs a HEAL model directory (with heal_rag.json); "
                f"{encoder.model_path!r} has none."
            )
        chosen = {**DEFAULT_SETTINGS, **self.recorded_settings(encoder)}
        self.margin = check_real("margin", chosen["margin"] if margin is None else margin, minimum=0, maximum=1)
        self.temperature = check_real(
            "temperature", chosen["temperature"] if temperature is None else temperature, minimum=0, min_open=True
        )
        self.confidence_floor = check_real(
            "confidence_floor",
            chosen["confidence_floor"] if confidence_floor is None else confidence_floor,
            minimum=0,
            maximum=1,
            max_open=True,
        )
        weights = [1.0] * tree.depth if level_weights is None else list(level_weights)
        for level, weight in enumerate(weights):
            check_real(f"level_weights[{level}]", weight, minimum=0)
        if not any(weights):
            raise ValueError("level_weights are all 0; to turn the hierarchy term off, set margin=0.")
        if len(weights) != tree.depth:
            raise ValueError(f"level_weights needs {tree.depth} values (one per level), got {len(weights)}.")
        self.encoder = encoder
        self.tree = tree
        self._warned_unknown_paths = False
        self.level_weights = np.asarray(weights, dtype=np.float64)

    @staticmethod
    def recorded_settings(encoder: HEALEncoder) -> dict[str, float]:
        """The reranker settings chosen for this model at training time (``{}`` when it has none)."""
        record = ((encoder.metadata or {}).get("training") or {}).get("reranker") or {}
        return {key: float(record[key]) for key in DEFAULT_SETTINGS if isinstance(record.get(key), (int, float))}

    def rerank(
        self,
        query: str,
        texts: Sequence[str],
        *,
        paths: Sequence[Sequence[str] | None] | None = None,
        similarities: Sequence[float | None] | None = None,
        top_n: int | None = None,
        query_embedding: np.ndarray | None = None,
    ) -> list[RerankResult]:
        """Rescore candidates for ``query``; best first.

        Only what is missing is computed: the query is embedded unless ``query_embedding`` is given (or cached by
        the encoder), and a candidate is embedded only when its similarity or its path is unknown.

        Args:
            query: The query.
            texts: Candidate texts (embedded only where a similarity or a path is missing).
            paths: Label path per candidate, ``None`` where unknown (then predicted).
            similarities: Retrieval cosine similarity per candidate, ``None`` where unknown (then computed).
            top_n: Keep the best ``top_n`` (default: all).
            query_embedding: The query's embedding, when the caller already has it (not embedded again).
        """
        check_int("top_n", top_n, minimum=1, allow_none=True)
        n = len(texts)
        if n == 0:
            return []
        paths = list(paths) if paths is not None else [None] * n
        similarities = list(similarities) if similarities is not None else [None] * n
        if len(paths) != n or len(similarities) != n:
            raise ValueError(f"Got {n} texts, {len(paths)} paths and {len(similarities)} similarities.")

        if query_embedding is None:
            query_embedding = self.encoder.embed_query(query)
        query_embedding = np.asarray(query_embedding, dtype=np.float32)
        query_probabilities = [p[0] for p in self.encoder.level_probabilities(query_embedding[None], self.temperature)]
        label_ids = np.array([self.tree.ids_for_path(p) if p else [-1] * self.tree.depth for p in paths])
        known = (label_ids >= 0).all(axis=1)  # a given path the tree does not hold is predicted, like a missing one
        self._warn_unknown_paths(paths, known)
        sims = np.array([np.nan if s is None else float(s) for s in similarities])
        needs_embedding = np.isnan(sims) | (label_ids < 0).any(axis=1)
        if needs_embedding.any():
            rows = np.flatnonzero(needs_embedding)
            doc_embeddings = self.encoder.embed_documents([texts[i] for i in rows])
            sims[rows] = np.where(np.isnan(sims[rows]), doc_embeddings @ query_embedding, sims[rows])
            unknown = (label_ids[rows] < 0).any(axis=1)
            if unknown.any():
                label_ids[rows[unknown]] = self.encoder.predict_level_ids(doc_embeddings[unknown], self.temperature)[0]

        bonus = hierarchy_bonus(query_probabilities, label_ids, self.margin, self.level_weights, self.confidence_floor)
        scores = sims + bonus
        best_labels = np.asarray([int(p.argmax()) for p in query_probabilities])
        matches = label_ids == best_labels[None, :]
        order = sorted(range(n), key=lambda i: (-scores[i], i))
        results = [
            RerankResult(
                index=i,
                score=float(scores[i]),
                similarity=float(sims[i]),
                hierarchy_score=float(bonus[i]),
                level_matches=tuple(bool(m) for m in matches[i]),
                path=tuple(paths[i]) if known[i] else self.tree.leaf_path(int(label_ids[i, -1])),
            )
            for i in order
        ]
        return results if top_n is None else results[:top_n]

    def _warn_unknown_paths(self, paths: Sequence[Sequence[str] | None], known: np.ndarray) -> None:
        """Warn, once per scorer, that given paths outside the model's label tree are being predicted."""
        unknown = [tuple(p) for p, ok in zip(paths, known, strict=True) if p and not ok]
        if not unknown or self._warned_unknown_paths:
            return
        self._warned_unknown_paths = True
        example = PATH_SEPARATOR.join(self.tree.leaf_path(0))
        warnings.warn(
            f"{len(unknown)} of {len(paths)} documents have a label path the model's label tree does not hold "
            f"(first: {PATH_SEPARATOR.join(unknown[0])!r}: a folder or category added since training, or another way "
            f"of writing paths than the model's, such as {example!r}); their paths are predicted instead. Retrain to "
            "learn new branches.",
            HEALWarning,
            stacklevel=3,
        )

    def config(self) -> dict[str, Any]:
        """Settings, for serialisation."""
        return {
            "margin": self.margin,
            "temperature": self.temperature,
            "confidence_floor": self.confidence_floor,
            "level_weights": self.level_weights.tolist(),
        }


#: The settings :func:`choose_settings` tries (every margin with every temperature and floor; margin 0 once).
SETTINGS_GRID: dict[str, tuple[float, ...]] = {
    "margin": (0.0, 0.005, 0.01, 0.02, 0.03, 0.05),
    "temperature": (0.05, 0.1),
    "confidence_floor": (0.0, 0.5),
}


def _rerank_order(
    similarities: np.ndarray, candidate_ids: np.ndarray, query_probabilities: list[np.ndarray], settings: dict
) -> np.ndarray:
    """Each query's candidates (indices into its row) best first under ``settings``; ``(Q, C)``."""
    weights = np.ones(len(query_probabilities))
    orders = np.empty(similarities.shape, dtype=np.int64)
    for row in range(len(similarities)):
        probabilities = [p[row] for p in query_probabilities]
        bonus = hierarchy_bonus(probabilities, candidate_ids[row], settings["margin"], weights,
                                settings["confidence_floor"])  # fmt: skip
        orders[row] = np.lexsort((np.arange(similarities.shape[1]), -(similarities[row] + bonus)))
    return orders


def _quality(ranked: np.ndarray, gold: np.ndarray, gains: np.ndarray, leaf_match: np.ndarray) -> dict[str, float]:
    """MRR@10, nDCG@10, context-miss@5 and off-topic@5 of document rankings (numpy; no evaluation extra)."""
    hits = ranked[:, :10] == gold[:, None]
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), -1)
    mrr = np.where(first >= 0, 1.0 / (np.maximum(first, 0) + 1), 0.0).mean()
    discounts = 1.0 / np.log2(np.arange(2, 12))
    dcg = (np.take_along_axis(gains, ranked[:, :10], axis=1) * discounts).sum(axis=1)
    ideal = (-np.sort(-gains, axis=1)[:, :10] * discounts).sum(axis=1)
    return {
        "MRR@10": float(mrr),
        "nDCG@10": float((dcg / np.maximum(ideal, 1e-12)).mean()),
        "context-miss@5": float(1.0 - (ranked[:, :5] == gold[:, None]).any(axis=1).mean()),
        "off-topic@5": float(1.0 - np.take_along_axis(leaf_match, ranked[:, :5], axis=1).mean()),
    }


def choose_settings(
    query_embeddings: np.ndarray,
    document_embeddings: np.ndarray,
    gold: Sequence[int],
    document_level_ids: np.ndarray,
    centroids: Sequence[np.ndarray],
    candidates: int = 20,
    grid: dict[str, tuple[float, ...]] | None = None,
) -> dict[str, Any]:
    """Choose the reranker's margin, temperature and floor for a model on held-out queries.

    Each query's ``candidates`` nearest documents are reranked under every setting of ``grid``; the setting kept
    maximises the gain in nDCG@10 plus the drop in off-topic@5, among those under which neither MRR@10 nor
    context-miss@5 gets worse than the retriever's alone (margin 0, which always qualifies; ties go to the smaller
    margin). Queries' labels are their gold documents'.

    Args:
        query_embeddings: ``(Q, D)`` normalised query vectors.
        document_embeddings: ``(N, D)`` normalised document vectors.
        gold: For each query, its document's index.
        document_level_ids: ``(N, L)`` label ids of the documents.
        centroids: Per level, the ``(K_l, D)`` label centroids of the model.
        candidates: Retrieval depth reranked.
        grid: Settings tried (default :data:`SETTINGS_GRID`).

    Returns:
        ``{"margin", "temperature", "confidence_floor", "validation": {...}}``: the settings, and the held-out scores
        of the retriever alone and of the chosen setting, for ``heal_rag.json``.
    """
    from heal_rag.evaluation.retrieval import graded_gains, top_k_indices

    grid = grid or SETTINGS_GRID
    gold = np.asarray(gold)
    query_level_ids = document_level_ids[gold]
    candidate_docs = top_k_indices(query_embeddings, document_embeddings, min(candidates, len(document_embeddings)))
    similarities = np.einsum("qd,qcd->qc", query_embeddings, document_embeddings[candidate_docs])
    candidate_ids = document_level_ids[candidate_docs]
    gains = graded_gains(query_level_ids, document_level_ids, gold)
    leaf_match = document_level_ids[None, :, -1] == query_level_ids[:, None, -1]
    baseline = _quality(candidate_docs, gold, gains, leaf_match)
    best = ({"margin": 0.0, "temperature": grid["temperature"][0], "confidence_floor": grid["confidence_floor"][0]},
            baseline, 0.0)  # fmt: skip
    for temperature in grid["temperature"]:
        query_probabilities = []
        for level_centroids in centroids:
            logits = query_embeddings.astype(np.float64) @ level_centroids.T.astype(np.float64) / temperature
            logits -= logits.max(axis=1, keepdims=True)
            weights = np.exp(logits)
            query_probabilities.append(weights / weights.sum(axis=1, keepdims=True))
        for floor in grid["confidence_floor"]:
            for margin in sorted(m for m in grid["margin"] if m > 0):
                settings = {"margin": margin, "temperature": temperature, "confidence_floor": floor}
                order = _rerank_order(similarities, candidate_ids, query_probabilities, settings)
                scores = _quality(np.take_along_axis(candidate_docs, order, axis=1), gold, gains, leaf_match)
                safe = (
                    scores["MRR@10"] >= baseline["MRR@10"] - 1e-9
                    and scores["context-miss@5"] <= baseline["context-miss@5"] + 1e-9
                )
                gain = (scores["nDCG@10"] - baseline["nDCG@10"]) - (scores["off-topic@5"] - baseline["off-topic@5"])
                if safe and gain > best[2] + 1e-9:
                    best = (settings, scores, gain)
    settings, scores, _ = best
    return {
        **settings,
        "validation": {
            "queries": int(len(gold)),
            "candidates": int(candidate_docs.shape[1]),
            "retriever": {k: round(v, 6) for k, v in baseline.items()},
            "reranked": {k: round(v, 6) for k, v in scores.items()},
        },
    }
