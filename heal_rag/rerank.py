"""Hierarchy-aware reranking (heal-method §6): one scoring core behind the LangChain and LlamaIndex rerankers.

For a query, the probability of every label at every level comes from a softmax over its similarity to the label
centroids in the tuned space. Each candidate is rescored as

    score = similarity(query, doc) + β · Σ_l λ_l · log p_l(label_l(doc) | query)

so documents from the part of the hierarchy the query belongs to move up. The hierarchy term is ≤ 0, so the score
is at most the cosine similarity (≤ 1); higher is better. In ``"route"`` mode the query is first routed down the
tree (the ``route_width`` most likely labels at each level, children of the kept parents only) and candidates in
the routed subtrees rank before all others.

Documents carry their label path in metadata (:data:`~heal_rag.metadata.PATH_KEY` as ``"A > B"`` or a list, or flat
``heal_l0``, ``heal_l1``, ... keys); when it is missing the path is predicted from the document's embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from heal_rag._validation import check_choice, check_int, check_real
from heal_rag.encoder import HEALEncoder
from heal_rag.metadata import LEVEL_KEY_PREFIX, LEVEL_MATCH_KEY, PATH_KEY, path_from_metadata, path_metadata

RerankMode = Literal["rescore", "route"]

__all__ = [
    "LEVEL_KEY_PREFIX",
    "LEVEL_MATCH_KEY",
    "PATH_KEY",
    "HierarchyScorer",
    "RerankMode",
    "RerankResult",
    "path_from_metadata",
    "path_metadata",
]


@dataclass(frozen=True)
class RerankResult:
    """One reranked candidate.

    Attributes:
        index: Position of the candidate in the input.
        score: Final score (higher is better; at most ``similarity``).
        similarity: Cosine similarity between query and document.
        hierarchy_score: ``Σ_l λ_l · log p_l(label_l(doc) | query)`` (≤ 0).
        level_matches: Whether the document's label equals the query's most likely label, per level.
        path: The document's label path (from metadata, or predicted).
        routed: Whether the document lies in the query's routed subtrees (``"route"`` mode; else ``True``).
    """

    @property
    def matched_levels(self) -> int:
        """Levels, from the top, at which the document's label is the query's most likely one."""
        matched = 0
        for match in self.level_matches:
            if not match:
                break
            matched += 1
        return matched

    index: int
    score: float
    similarity: float
    hierarchy_score: float
    level_matches: tuple[bool, ...]
    path: tuple[str, ...]
    routed: bool = True


class HierarchyScorer:
    """The scoring core of the hierarchy-aware rerankers.

    Args:
        encoder: A :class:`~heal_rag.encoder.HEALEncoder` of a HEAL model (it needs the label tree).
        beta: Weight of the hierarchy term. The defaults (β=0.01, temperature 0.05) won the grid in
            ``benchmarks/rerank_quality.py``: nDCG@10 and off-topic@5 improve over the retriever alone, at some cost
            in exact-match MRR; larger β trades more exact-match recall for topical precision.
        temperature: Softmax temperature over label-centroid similarities.
        level_weights: λ per level (default 1 at every level).
        mode: ``"rescore"`` or ``"route"`` (see the module docstring).
        route_width: Labels kept per level when routing (an int for every level, or one per level).

    Example:
        ```python
        scorer = HierarchyScorer(HEALEncoder.load("models/heal-minilm"))
        results = scorer.rerank("superconducting qubits", texts, paths=paths, top_n=3)
        ```
    """

    def __init__(
        self,
        encoder: HEALEncoder,
        beta: float = 0.01,
        temperature: float = 0.05,
        level_weights: Sequence[float] | None = None,
        mode: RerankMode = "rescore",
        route_width: int | Sequence[int] = 2,
    ) -> None:
        check_real("beta", beta, minimum=0)
        check_real("temperature", temperature, minimum=0, min_open=True)
        check_choice("mode", mode, ("rescore", "route"))
        tree = encoder.label_tree
        if tree is None:
            raise ValueError(
                "The hierarchy-aware reranker needs a HEAL model directory (with heal_rag.json); "
                f"{encoder.model_path!r} has none."
            )
        self.encoder = encoder
        self.tree = tree
        self.beta = float(beta)
        self.temperature = float(temperature)
        weights = [1.0] * tree.depth if level_weights is None else list(level_weights)
        for level, weight in enumerate(weights):
            check_real(f"level_weights[{level}]", weight, minimum=0)
        if not any(weights):
            raise ValueError("level_weights are all 0; to turn the hierarchy term off, set beta=0.")
        if len(weights) != tree.depth:
            raise ValueError(f"level_weights needs {tree.depth} values (one per level), got {len(weights)}.")
        self.level_weights = np.asarray(weights, dtype=np.float64)
        self.mode = mode
        widths = [route_width] * tree.depth if isinstance(route_width, int) else list(route_width)
        for level, width in enumerate(widths):
            check_int(f"route_width[{level}]", width, minimum=1)
        if len(widths) != tree.depth:
            raise ValueError(f"route_width must be >= 1 for each of the {tree.depth} levels, got {route_width}.")
        self.route_width = widths

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
        sims = np.array([np.nan if s is None else float(s) for s in similarities])
        needs_embedding = np.isnan(sims) | (label_ids < 0).any(axis=1)
        if needs_embedding.any():
            rows = np.flatnonzero(needs_embedding)
            doc_embeddings = self.encoder.embed_documents([texts[i] for i in rows])
            sims[rows] = np.where(np.isnan(sims[rows]), doc_embeddings @ query_embedding, sims[rows])
            unknown = (label_ids[rows] < 0).any(axis=1)
            if unknown.any():
                label_ids[rows[unknown]] = self.encoder.predict_level_ids(doc_embeddings[unknown], self.temperature)[0]

        log_probabilities = np.stack(
            [
                np.log(np.maximum(query_probabilities[level][label_ids[:, level]], 1e-12))
                for level in range(self.tree.depth)
            ],
            axis=1,
        )
        hierarchy_scores = log_probabilities @ self.level_weights
        scores = sims + self.beta * hierarchy_scores
        best_labels = [int(p.argmax()) for p in query_probabilities]
        matches = label_ids == np.asarray(best_labels)[None, :]
        routed = self._routed(query_probabilities, label_ids) if self.mode == "route" else np.ones(n, dtype=bool)

        order = sorted(range(n), key=lambda i: (not routed[i], -scores[i]))
        results = [
            RerankResult(
                index=i,
                score=float(scores[i]),
                similarity=float(sims[i]),
                hierarchy_score=float(hierarchy_scores[i]),
                level_matches=tuple(bool(m) for m in matches[i]),
                path=tuple(paths[i]) if paths[i] else self.tree.leaf_path(int(label_ids[i, -1])),
                routed=bool(routed[i]),
            )
            for i in order
        ]
        return results if top_n is None else results[:top_n]

    def _routed(self, query_probabilities: list[np.ndarray], label_ids: np.ndarray) -> np.ndarray:
        """Whether each candidate's labels stay inside the query's routed subtrees at every level."""
        kept: set[int] = set()
        inside = np.ones(len(label_ids), dtype=bool)
        for level in range(self.tree.depth):
            probabilities = query_probabilities[level].copy()
            parents = self.tree.parents(level)
            if parents is not None:
                probabilities[~np.isin(parents, list(kept))] = -1.0
            kept = {int(i) for i in np.argsort(-probabilities)[: self.route_width[level]] if probabilities[i] >= 0}
            inside &= np.isin(label_ids[:, level], list(kept))
        return inside

    def config(self) -> dict[str, Any]:
        """Settings, for serialisation."""
        return {
            "beta": self.beta,
            "temperature": self.temperature,
            "level_weights": self.level_weights.tolist(),
            "mode": self.mode,
            "route_width": self.route_width,
        }
