"""HNMFk: discover a label hierarchy from raw text by recursive NMF with automatic choice of k.

At each node, NMFk (:func:`heal_rag.hierarchy.nmfk.select_k`) picks the number of topics on the node's documents;
every document goes to its strongest topic and each child is split again, with k at most its parent's, until a
node is too small, a single topic dominates, or the depth limit is reached.

Terms are weighted per node: term frequencies (sublinear) times an IDF computed on the node's own documents, with
terms found in more than ``max_df`` of them dropped. At the root this is ordinary TF-IDF; below it, the words every
document of the node shares (its parent topic) stop dominating, so the children split on what tells them apart.
Documents keep their soft information: their share of the assigned topic at every level (a membership weight
the HEAL loss can use) and, optionally, every topic above a threshold.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from heal_rag._validation import check_int, check_real
from heal_rag.hierarchy.nmfk import KScore, select_k
from heal_rag.labels import LabelPaths

logger = logging.getLogger(__name__)

ROOT_ID = "root"
_TOKEN_PATTERN = r"(?u)\b[^\W\d_][^\W\d_]+\b"  # words of two or more letters


@dataclass
class HierarchyNode:
    """One node of a discovered hierarchy.

    Attributes:
        node_id: ``"root"``, or the path of child indices: ``"0"``, ``"0.3"``, ``"0.3.1"``.
        depth: 0 for the root, 1 for its children, ...
        size: Training documents in the node.
        top_terms: The node's most characteristic terms (from its parent's topic), most important first.
        k: Number of children (0 for a leaf).
        stop_reason: Why a leaf was not split (``"depth"``, ``"small"``, ``"no stable k"``, ``"dominant topic"``,
            ``"rank"``).
        k_scores: Stability of every candidate k tried at this node.
        k_passed: Whether the chosen k passed the silhouette threshold (``False``: the best one was used).
        children: Child nodes, largest first.
        topics: ``(k, n_terms)`` topic matrix used to route documents to the children.
        term_weights: The node's IDF weights (0 for dropped terms), applied before projecting onto ``topics``.
    """

    node_id: str
    depth: int
    size: int
    top_terms: list[str] = field(default_factory=list)
    k: int = 0
    stop_reason: str | None = None
    k_scores: list[KScore] = field(default_factory=list)
    k_passed: bool | None = None
    children: list[HierarchyNode] = field(default_factory=list)
    topics: np.ndarray | None = field(default=None, repr=False)
    term_weights: np.ndarray | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """A readable name: the top three terms, e.g. ``"quantum · qubit · entanglement"``."""
        return " · ".join(self.top_terms[:3]) if self.top_terms else self.node_id

    @property
    def is_leaf(self) -> bool:
        """Whether the node has no children."""
        return not self.children

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view of the node and its subtree (topic matrices left out)."""
        return {
            "id": self.node_id,
            "name": self.name,
            "depth": self.depth,
            "size": self.size,
            "top_terms": self.top_terms,
            "k": self.k,
            "stop_reason": self.stop_reason,
            "k_passed": self.k_passed,
            "k_scores": [
                {
                    "k": s.k,
                    "topic_silhouette": round(s.topic_silhouette, 4),
                    "document_silhouette": round(s.document_silhouette, 4),
                    "relative_error": round(s.relative_error, 4),
                }
                for s in self.k_scores
            ],
            "children": [child.to_dict() for child in self.children],
        }


def node_idf(term_frequencies: sp.csr_matrix, max_df: float) -> np.ndarray:
    """Smoothed IDF of each term over a node's documents; 0 for terms in more than ``max_df`` of them."""
    n_docs = term_frequencies.shape[0]
    document_frequency = np.bincount(term_frequencies.indices, minlength=term_frequencies.shape[1])
    idf = np.log((1.0 + n_docs) / (1.0 + document_frequency)) + 1.0
    idf[document_frequency > max_df * n_docs] = 0.0
    return idf.astype(np.float32)


def weight_terms(term_frequencies: sp.csr_matrix, term_weights: np.ndarray) -> sp.csr_matrix:
    """Rows of ``term_frequencies`` times ``term_weights``, L2-normalised (all-zero rows stay zero)."""
    return normalize(sp.csr_matrix(term_frequencies.multiply(term_weights[None, :])), norm="l2")


def project(matrix: sp.spmatrix | np.ndarray, topics: np.ndarray, n_iter: int = 100) -> np.ndarray:
    """Non-negative coefficients of each row on fixed ``topics`` (multiplicative updates, fixed iterations).

    Each row is solved independently and deterministically, so a document gets the same coefficients whether it is
    projected alone, in a batch, during ``fit`` or in ``transform``.
    """
    topics = np.asarray(topics, dtype=np.float64)
    x_topics = np.asarray(matrix @ topics.T, dtype=np.float64)  # (n, k)
    gram = topics @ topics.T  # (k, k)
    coefficients = x_topics / np.maximum(np.diag(gram), 1e-12)
    for _ in range(n_iter):
        coefficients *= x_topics / np.maximum(coefficients @ gram, 1e-12)
    return coefficients


class HNMFk(BaseEstimator):
    """Hierarchical NMF with automatic model selection, in scikit-learn style.

    Args:
        max_depth: Levels of the hierarchy to build (1: flat topics).
        k_range: ``(min_k, max_k)`` tried at the root; a child tries ``min_k`` up to its parent's k.
        n_perturbations: Perturbed factorisations per candidate k.
        epsilon: Perturbation size (each TF-IDF entry scaled by ``U(1-ε, 1+ε)``).
        silhouette_threshold: Worst-cluster silhouette a k must reach (topics and documents) to count as stable.
        min_node_size: Nodes with fewer documents are not split.
        dominant_fraction: A split whose largest topic takes at least this share of the node's documents is
            undone (one dominant topic).
        max_selection_docs: Model selection runs on at most this many documents of a node (a seeded sample); the
            final factorisation uses them all.
        max_features: Vocabulary size of the TF-IDF.
        min_df: Minimum document frequency of a term (int: count, float: share).
        max_df: Maximum document frequency of a term (share), in the corpus and again inside every node.
        n_top_terms: Terms kept to name each node.
        membership_threshold: When set, :attr:`multi_memberships_` lists every topic whose share reaches it.
        split_unstable_nodes: Below the root, a node where no k reaches ``silhouette_threshold`` stays a leaf
            (k = 1) by default; with ``True`` it is split at its most stable k anyway. The root always falls back
            to its most stable k, with a logged warning.
        random_state: Seed; results are deterministic for a given seed.
        n_jobs: Parallel jobs for the perturbation runs (joblib; ``-1``: all cores).
        show_progress: Show a progress bar over nodes.

    Attributes:
        tree_: The root :class:`HierarchyNode`.
        vectorizer_: The fitted ``TfidfVectorizer`` (sublinear term frequencies; IDF is per node).
        labels_: Label paths of the training documents (node ids, with membership weights).

    Example:
        ```python
        from heal_rag.hierarchy import HNMFk

        hnmfk = HNMFk(max_depth=2, random_state=0)
        labels = hnmfk.fit_transform(texts)       # LabelPaths like [["0", "0.2"], ["3", "3.0"], ...]
        print(hnmfk.format_tree())                # 0  quantum · qubit · entanglement  (812 docs) ...
        new_labels = hnmfk.transform(new_texts)   # projection onto the fitted topics, no refit
        ```
    """

    def __init__(
        self,
        max_depth: int = 2,
        k_range: tuple[int, int] = (2, 10),
        n_perturbations: int = 8,
        epsilon: float = 0.015,
        silhouette_threshold: float = 0.8,
        min_node_size: int = 30,
        dominant_fraction: float = 0.9,
        max_selection_docs: int = 2000,
        max_features: int = 20000,
        min_df: int | float = 2,
        max_df: float = 0.5,
        n_top_terms: int = 8,
        membership_threshold: float | None = None,
        split_unstable_nodes: bool = False,
        random_state: int = 0,
        n_jobs: int | None = None,
        show_progress: bool = False,
    ) -> None:
        self.max_depth = max_depth
        self.k_range = k_range
        self.n_perturbations = n_perturbations
        self.epsilon = epsilon
        self.silhouette_threshold = silhouette_threshold
        self.min_node_size = min_node_size
        self.dominant_fraction = dominant_fraction
        self.max_selection_docs = max_selection_docs
        self.max_features = max_features
        self.min_df = min_df
        self.max_df = max_df
        self.n_top_terms = n_top_terms
        self.membership_threshold = membership_threshold
        self.split_unstable_nodes = split_unstable_nodes
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.show_progress = show_progress

    # ------------------------------------------------------------------ fitting
    def fit(self, texts: Sequence[str], y: Any = None) -> HNMFk:
        """Build the hierarchy from ``texts``."""
        self._check_params()
        texts = self._check_texts(texts)
        needed = self.min_node_size * 2 ** (self.max_depth - 1)
        if len(texts) < needed:
            raise ValueError(
                f"{len(texts)} documents are too few for max_depth={self.max_depth} with "
                f"min_node_size={self.min_node_size}: need at least {needed}. Lower max_depth or min_node_size."
            )
        self.vectorizer_ = TfidfVectorizer(  # term frequencies only; IDF is computed per node
            stop_words="english",
            sublinear_tf=True,
            use_idf=False,
            norm=None,
            token_pattern=_TOKEN_PATTERN,
            max_features=self.max_features,
            min_df=self.min_df,
            max_df=self.max_df,
            dtype=np.float32,
        )
        try:
            matrix = self.vectorizer_.fit_transform(texts).tocsr()
        except ValueError as exc:
            raise ValueError(
                f"Could not build a vocabulary ({exc}). The texts may be empty, stop words only, or too few for "
                f"min_df={self.min_df} / max_df={self.max_df}."
            ) from None
        self.terms_ = self.vectorizer_.get_feature_names_out()
        self.tree_ = HierarchyNode(node_id=ROOT_ID, depth=0, size=len(texts))
        n_docs = len(texts)
        self._paths: list[list[str]] = [[] for _ in range(n_docs)]
        self._weights: list[list[float]] = [[] for _ in range(n_docs)]
        self._multi: list[list[list[tuple[str, float]]]] = [[] for _ in range(n_docs)]

        from tqdm.auto import tqdm

        progress = tqdm(desc="HNMFk nodes", unit="node", disable=not self.show_progress)
        queue: list[tuple[HierarchyNode, np.ndarray, int]] = [(self.tree_, np.arange(n_docs), self.k_range[1])]
        while queue:
            node, rows, max_k = queue.pop(0)
            progress.set_postfix_str(f"{node.node_id} ({len(rows)} docs)")
            for child, child_rows in self._split(node, matrix, rows, max_k):
                queue.append((child, child_rows, node.k))
            progress.update(1)
        progress.close()
        self.labels_ = LabelPaths(self._paths, weights=self._weights, ragged="pad")
        self.multi_memberships_ = self._multi if self.membership_threshold is not None else None
        del self._paths, self._weights, self._multi  # accumulators of this fit only
        return self

    def fit_transform(self, texts: Sequence[str], y: Any = None) -> LabelPaths:
        """Fit and return the training documents' label paths (with membership weights)."""
        return self.fit(texts).labels_

    def _split(
        self, node: HierarchyNode, matrix: sp.csr_matrix, rows: np.ndarray, max_k: int
    ) -> list[tuple[HierarchyNode, np.ndarray]]:
        if node.depth >= self.max_depth:
            node.stop_reason = "depth"
            return []
        if len(rows) < self.min_node_size:
            node.stop_reason = "small"
            return []
        term_frequencies = matrix[rows]
        term_weights = node_idf(term_frequencies, self.max_df)
        node_matrix = weight_terms(term_frequencies, term_weights)
        k_values = list(range(self.k_range[0], min(self.k_range[1], max_k) + 1))
        k_values = [k for k in k_values if k <= min(node_matrix.shape) - 1]
        if not k_values:
            node.stop_reason = "rank"
            return []
        seed = (self.random_state * 1_000_003 + zlib.crc32(node.node_id.encode())) % 2**31
        sample = rows
        if len(rows) > self.max_selection_docs:
            sample = np.sort(np.random.default_rng(seed).choice(rows, self.max_selection_docs, replace=False))
        selection = select_k(
            weight_terms(matrix[sample], term_weights),
            k_values,
            n_perturbations=self.n_perturbations,
            epsilon=self.epsilon,
            silhouette_threshold=self.silhouette_threshold,
            random_state=seed,
            n_jobs=self.n_jobs,
            where=node.node_id,
        )
        node.k_scores, node.k_passed = list(selection.scores), selection.passed
        if not selection.passed and node.node_id != ROOT_ID and not self.split_unstable_nodes:
            node.stop_reason = "no stable k"  # k = 1: no split of this node is reproducible
            return []
        final = NMF(n_components=selection.k, init="nndsvda", random_state=seed, max_iter=400, tol=1e-4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # 400 iterations are plenty for routing topics
            final.fit(node_matrix)
        topics = final.components_
        coefficients = project(node_matrix, topics)
        assignment = coefficients.argmax(axis=1)
        sizes = np.bincount(assignment, minlength=selection.k)
        if sizes.max() >= self.dominant_fraction * len(rows):
            node.stop_reason = "dominant topic"
            return []
        # Children largest first; topics that attracted no document are dropped.
        order = [c for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]
        topics = topics[order]
        coefficients = coefficients[:, order]
        assignment = coefficients.argmax(axis=1)
        shares = coefficients / np.maximum(coefficients.sum(axis=1, keepdims=True), 1e-12)
        node.topics, node.term_weights = topics, term_weights
        node.k = len(order)
        children = []
        for index in range(len(order)):
            child_id = str(index) if node.node_id == ROOT_ID else f"{node.node_id}.{index}"
            members = rows[assignment == index]
            top = np.argsort(-topics[index], kind="stable")[: self.n_top_terms]
            child = HierarchyNode(
                node_id=child_id, depth=node.depth + 1, size=len(members), top_terms=[str(t) for t in self.terms_[top]]
            )
            node.children.append(child)
            children.append((child, members))
        for position, doc in enumerate(rows):
            chosen = int(assignment[position])
            self._paths[doc].append(node.children[chosen].node_id)
            self._weights[doc].append(float(shares[position, chosen]))
            if self.membership_threshold is not None:
                self._multi[doc].append(
                    [
                        (node.children[c].node_id, float(shares[position, c]))
                        for c in np.flatnonzero(shares[position] >= self.membership_threshold)
                    ]
                )
        return children

    # ------------------------------------------------------------------ applying
    def transform(self, texts: Sequence[str]) -> LabelPaths:
        """Label paths for new texts by projecting onto the fitted topics, node by node (no refit)."""
        self._check_fitted()
        texts = self._check_texts(texts)
        matrix = self.vectorizer_.transform(texts).tocsr()
        paths: list[list[str]] = [[] for _ in texts]
        weights: list[list[float]] = [[] for _ in texts]
        queue = [(self.tree_, np.arange(len(texts)))]
        while queue:
            node, rows = queue.pop(0)
            if node.is_leaf or len(rows) == 0:
                continue
            coefficients = project(weight_terms(matrix[rows], node.term_weights), node.topics)
            assignment = coefficients.argmax(axis=1)
            shares = coefficients / np.maximum(coefficients.sum(axis=1, keepdims=True), 1e-12)
            for position, doc in enumerate(rows):
                chosen = int(assignment[position])
                paths[doc].append(node.children[chosen].node_id)
                weights[doc].append(float(shares[position, chosen]))
            for index, child in enumerate(node.children):
                queue.append((child, rows[assignment == index]))
        if any(not p for p in paths):  # only possible when the root was never split
            raise ValueError("The fitted hierarchy has no levels (the root was not split).")
        return LabelPaths(paths, weights=weights, ragged="pad")

    # ------------------------------------------------------------------ inspection
    def nodes(self) -> list[HierarchyNode]:
        """Every node, breadth first."""
        self._check_fitted()
        out, queue = [], [self.tree_]
        while queue:
            node = queue.pop(0)
            out.append(node)
            queue.extend(node.children)
        return out

    def node(self, node_id: str) -> HierarchyNode:
        """The node with id ``node_id`` (e.g. ``"0.3"``)."""
        for candidate in self.nodes():
            if candidate.node_id == node_id:
                return candidate
        raise KeyError(f"No node {node_id!r} in the fitted hierarchy.")

    def node_names(self) -> dict[str, str]:
        """``{node_id: readable name}`` for every node but the root."""
        return {n.node_id: n.name for n in self.nodes() if n.node_id != ROOT_ID}

    def to_dict(self) -> dict[str, Any]:
        """The hierarchy and the settings that built it, ready for JSON."""
        self._check_fitted()
        return {"params": self.get_params(), "n_terms": int(len(self.terms_)), "tree": self.tree_.to_dict()}

    def format_tree(self, max_children: int | None = None) -> str:
        """The hierarchy as a readable text tree, one node per line with its size and top terms."""
        self._check_fitted()
        lines = [f"root  ({self.tree_.size} docs, k={self.tree_.k})"]

        def walk(node: HierarchyNode, prefix: str) -> None:
            children = node.children if max_children is None else node.children[:max_children]
            for index, child in enumerate(children):
                last = index == len(children) - 1
                lines.append(
                    f"{prefix}{'└── ' if last else '├── '}{child.node_id}  {child.name}  ({child.size} docs"
                    + (f", k={child.k})" if child.k else ")")
                )
                walk(child, prefix + ("    " if last else "│   "))

        walk(self.tree_, "")
        return "\n".join(lines)

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        """Validate every setting (finite, in range) before any work; errors name the setting."""
        check_int("max_depth", self.max_depth, minimum=1)
        try:
            low, high = self.k_range
        except (TypeError, ValueError):
            raise ValueError(f"k_range must be (min_k, max_k), got {self.k_range!r}.") from None
        check_int("k_range[0] (min_k)", low, minimum=2)
        check_int("k_range[1] (max_k)", high, minimum=2)
        if low > high:
            raise ValueError(f"k_range must be (min_k, max_k) with 2 <= min_k <= max_k, got {self.k_range}.")
        check_int("n_perturbations", self.n_perturbations, minimum=2)
        check_real("epsilon", self.epsilon, minimum=0, maximum=1, max_open=True)
        check_real("silhouette_threshold", self.silhouette_threshold, minimum=-1, maximum=1)
        check_int("min_node_size", self.min_node_size, minimum=2)
        check_real("dominant_fraction", self.dominant_fraction, minimum=0, maximum=1, min_open=True)
        check_int("max_selection_docs", self.max_selection_docs, minimum=2)
        check_int("max_features", self.max_features, minimum=1)
        if isinstance(self.min_df, float):
            check_real("min_df", self.min_df, minimum=0, maximum=1)
        else:
            check_int("min_df", self.min_df, minimum=1)
        check_real("max_df", self.max_df, minimum=0, maximum=1, min_open=True)
        check_int("n_top_terms", self.n_top_terms, minimum=1)
        check_real("membership_threshold", self.membership_threshold, minimum=0, maximum=1, allow_none=True)
        check_int("random_state", self.random_state, minimum=0)
        if self.n_jobs is not None:
            check_int("n_jobs", self.n_jobs, minimum=-1)
            if self.n_jobs == 0:
                raise ValueError("n_jobs must be a positive number of jobs, or -1 for all cores; got 0.")

    @staticmethod
    def _check_texts(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not a single string.")
        texts = list(texts)
        if not texts:
            raise ValueError("The corpus is empty: give at least one text.")
        if any(not isinstance(t, str) for t in texts):
            raise ValueError("Every text must be a string.")
        if all(not t.strip() for t in texts):
            raise ValueError("All texts are empty.")
        return texts

    def _check_fitted(self) -> None:
        if not hasattr(self, "tree_"):
            raise RuntimeError("This HNMFk is not fitted yet: call fit(texts) first.")
