"""The HEAL loss: supervised contrastive learning at every level of a label hierarchy, weighted by depth."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heal_rag._validation import check_choice, check_real

LevelSchedule = Literal["uniform", "deeper", "coarser"]
LevelWeights = LevelSchedule | Sequence[float]
PairLoss = Literal["supcon", "ranking"]
HierarchyViews = Literal["both", "documents"]
PairNegatives = Literal["all", "other_leaves"]

_EPS = 1e-12


class TrainingDivergedError(ValueError):
    """Training diverged (non-finite loss or weights, or collapsed embeddings); nothing is saved."""


class NonFiniteLossError(TrainingDivergedError):
    """The loss (or the trained weights) became NaN or infinite; training stops and nothing is saved."""


def level_weight_schedule(n_levels: int, schedule: LevelWeights = "deeper", alpha: float = 1.0) -> list[float]:
    """Depth weights ``λ_l`` for ``n_levels`` hierarchy levels.

    Named schedules are scaled to mean 1, so the overall loss scale does not depend on the schedule:

    - ``"uniform"``: every level weighs 1.
    - ``"deeper"``: ``λ_l ∝ exp(alpha · l)``; finer levels weigh more.
    - ``"coarser"``: ``λ_l ∝ exp(-alpha · l)``; coarser levels weigh more.

    An explicit sequence is returned as given (it must have one non-negative value per level).

    Args:
        n_levels: Number of hierarchy levels.
        schedule: A schedule name or an explicit weight per level.
        alpha: Growth rate of the exponential schedules.

    Returns:
        One weight per level, most general level first.

    Example:
        ```python
        level_weight_schedule(3, "deeper", alpha=1.0)  # [0.27, 0.73, 2.0]
        ```
    """
    if n_levels < 1:
        raise ValueError(f"n_levels must be >= 1, got {n_levels}.")
    if isinstance(schedule, str):
        if schedule == "uniform":
            raw = [1.0] * n_levels
        elif schedule == "deeper":
            raw = [math.exp(alpha * level) for level in range(n_levels)]
        elif schedule == "coarser":
            raw = [math.exp(-alpha * level) for level in range(n_levels)]
        else:
            raise ValueError(
                f"Unknown level-weight schedule {schedule!r}: use 'uniform', 'deeper', 'coarser' or a list."
            )
        mean = sum(raw) / n_levels
        return [w / mean for w in raw]
    weights = [float(w) for w in schedule]
    if len(weights) != n_levels:
        raise ValueError(
            f"level_weights has {len(weights)} values but the labels have {n_levels} hierarchy levels: "
            "give one weight per level, or a schedule name."
        )
    if any(w < 0 or not math.isfinite(w) for w in weights):
        raise ValueError(f"level_weights must be finite and non-negative, got {weights}.")
    return weights


class HEALLoss(nn.Module):
    """Hierarchical Embedding Alignment Loss (HEAL).

    For a batch of L2-normalised embeddings ``z`` and ``s_ij = z_i·z_j / τ``, the positives of anchor ``i`` at level
    ``l`` are the other samples with the same level-``l`` label (the same path prefix), and

    ``L_{i,l} = -1/|P_l(i)| Σ_{p∈P_l(i)} log( exp(s_ip) / Σ_{a≠i} exp(s_ia) )``.

    The loss is ``Σ_l λ_l · mean_i L_{i,l}``: the mean runs over anchors that have a positive at that level (others
    are skipped, never NaN), and is weighted by soft memberships when the labels carry them. Everything comes from
    one ``N×N`` similarity matrix and masks.

    With two text columns ``(query, document)``, queries and documents are embedded in separate forward passes
    (no padding of short queries to document length), queries inherit their document's path, and a
    *query↔document level* pairs each query with its source document, weighted by ``query_document_weight``.
    That level is what makes HEAL a retrieval objective and not only a clustering one. It comes in two forms:

    - ``pair_loss="ranking"`` (default): each query picks its document among the batch's documents (cross-entropy
      over query→document similarities, as in MultipleNegativesRankingLoss). Because the hierarchical sampler fills
      a batch with sibling documents, these in-batch negatives are hard ones.
    - ``pair_loss="supcon"``: an extra finest SupCon level over the joint pool of queries and documents, whose label
      is the source document.

    With more text columns ``(query, document, negative_1, ..., negative_k)`` (ranking form only), the negatives are
    hard negatives (``heal_rag.fine_tune(hard_negatives=k)`` mines them from other leaves, see
    :func:`heal_rag.negatives.mine_other_leaf_negatives`): every query of the batch ranks its document among the
    batch's documents and every negative, as in MultipleNegativesRankingLoss with negative columns. Each label row
    carries its negatives' ids after its own, so a negative counts as the document it is: another query's own
    document is that query's target, ``pair_level_discount`` grades it by shared path, and
    ``pair_negatives="other_leaves"`` leaves it out of the softmax of a query of its leaf. Negatives take part in
    the query↔document level only, not in the hierarchy levels.

    ``hierarchy_views`` chooses who takes part in the hierarchy levels: ``"both"`` (default: queries and documents
    in one pool of ``2B``, so a query is pulled towards its topic's documents and the other queries of that topic
    too) or ``"documents"``.

    An optional hierarchy-consistency hinge (after HiMulCon) asks that, for every anchor, positives sharing a deeper
    prefix are on average at least ``consistency_margin`` more similar (cosine) than those sharing only a shallower
    one.

    Args:
        model: The SentenceTransformer model to train.
        temperature: τ, the softmax temperature.
        level_weights: λ per hierarchy level, or a schedule name (see :func:`level_weight_schedule`).
        schedule_alpha: Growth rate of the ``"deeper"``/``"coarser"`` schedules.
        query_document_weight: Weight of the query↔document level (two-column input only).
        pair_loss: Form of the query↔document level: ``"ranking"`` or ``"supcon"`` (see above).
        pair_temperature: τ of the query↔document level (``None``: ``temperature``).
        hierarchy_views: ``"both"`` or ``"documents"``: which columns take part in the hierarchy levels (the SupCon
            form needs ``"both"``).
        pair_level_discount: ``γ`` in ``[0, 1)``, ranking form only: besides its own document, a query's target
            distribution over the batch's documents gives a document that shares its path down to ``d`` levels
            short of the leaf the weight ``γ^(d+1)`` (the same leaf ``γ``, a sibling leaf ``γ²``, ...). 0 is the
            plain ranking loss; a small ``γ`` keeps the own document first while no longer pushing same-topic
            documents away as hard as unrelated ones.
        symmetric_pairs: Ranking form only: also let each document pick its query among the batch's queries and
            average both directions (MultipleNegativesRankingLoss with
            ``directions=("query_to_doc", "doc_to_query")``, ``partition_mode="per_direction"``).
        pair_negatives: Ranking form only: ``"all"`` batch documents are a query's negatives, or only those of
            ``"other_leaves"``: the other documents of the query's own leaf are left out of its softmax, so the
            query↔document level never pushes apart what the leaf level pulls together.
        query_hierarchy_weight: Ranking form with ``hierarchy_views="both"``: weight in ``[0, 1]`` of the queries as
            anchors and positives of the hierarchy levels (they stay in every softmax denominator); 1 treats them
            like documents.
        consistency_weight: Weight of the consistency hinge; 0 turns it off.
        consistency_margin: Margin of the consistency hinge, in cosine similarity.
        gather_across_devices: In a multi-process run (``torchrun``), gather every rank's embeddings and labels
            (with gradients, as sentence-transformers' ``gather_across_devices`` does for its in-batch-negative
            losses), so each rank's anchors find positives and negatives in the whole global batch; each rank's loss
            still averages over its own anchors. Batches of different lengths are padded and the padding is masked.
            No effect in a single process. On by default (unlike sentence-transformers' losses): with two ranks it
            raised nDCG@10 and leaf precision on both datasets measured, at level MRR (``benchmarks/distributed.py``).

    References:
        M. Bhattarai et al., "HEAL: Hierarchical Embedding Alignment Loss for Improved Retrieval and Representation
        Learning", arXiv:2412.04661 (2024).

    Requirements:
        1. Label paths for every text (see :class:`heal_rag.LabelPaths`).
        2. Batches holding several samples per leaf, e.g. :class:`heal_rag.HierarchicalBatchSampler`.

    Inputs:
        +-------------------------+----------------------------------------------------------------------------+
        | Texts                   | Labels (``(B, C)`` rows from :meth:`heal_rag.LabelPaths.to_label_rows`)    |
        +=========================+============================================================================+
        | (document)              | level ids (``C = L``), or ids then weights as floats (``C = 2L``)          |
        +-------------------------+----------------------------------------------------------------------------+
        | (query, document)       | level ids plus the source-document key as last id (``C = L + 1``), or ids |
        |                         | then weights as floats (``C = 2(L + 1)``)                                  |
        +-------------------------+----------------------------------------------------------------------------+
        | (query, document,       | as for (query, document), then each negative's ids (its document's level   |
        | negative_1, ...)        | ids and key): ``C = (L + 1)(1 + k)``, or ``(L + 1)(2 + k)`` as floats       |
        +-------------------------+----------------------------------------------------------------------------+

        An id of -1 means "no label at this level" (masked).

    Example:
        ```python
        from datasets import Dataset
        from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
        from heal_rag import HEALLoss, LabelPaths

        model = SentenceTransformer("models/heal-minilm")   # any sentence-transformers model directory
        labels = LabelPaths([["Physics", "Optics"], ["Physics", "Optics"], ["Physics", "Plasma"], ["Maths", "Logic"]])
        dataset = Dataset.from_dict({"text": ["...", "...", "...", "..."], "label": labels.to_label_rows()})
        trainer = SentenceTransformerTrainer(model=model, train_dataset=dataset, loss=HEALLoss(model))
        trainer.train()
        ```
    """

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.1,
        level_weights: LevelWeights = "deeper",
        schedule_alpha: float = 1.0,
        query_document_weight: float = 3.0,
        consistency_weight: float = 0.0,
        consistency_margin: float = 0.0,
        pair_loss: PairLoss = "ranking",
        pair_temperature: float | None = None,
        hierarchy_views: HierarchyViews = "both",
        pair_level_discount: float = 0.0,
        symmetric_pairs: bool = False,
        pair_negatives: PairNegatives = "all",
        query_hierarchy_weight: float = 1.0,
        gather_across_devices: bool = True,
    ) -> None:
        super().__init__()
        check_real("temperature", temperature, minimum=0, min_open=True)
        check_real("pair_temperature", pair_temperature, minimum=0, min_open=True, allow_none=True)
        check_real("schedule_alpha", schedule_alpha)
        check_real("query_document_weight", query_document_weight, minimum=0)
        check_real("consistency_weight", consistency_weight, minimum=0)
        check_real("consistency_margin", consistency_margin, minimum=-2, maximum=2)
        check_choice("pair_loss", pair_loss, ("ranking", "supcon"))
        check_choice("hierarchy_views", hierarchy_views, ("both", "documents"))
        check_choice("pair_negatives", pair_negatives, ("all", "other_leaves"))
        check_real("pair_level_discount", pair_level_discount, minimum=0, maximum=1, max_open=True)
        check_real("query_hierarchy_weight", query_hierarchy_weight, minimum=0, maximum=1)
        if pair_loss == "supcon" and (symmetric_pairs or pair_negatives != "all" or query_hierarchy_weight != 1.0):
            raise ValueError(
                "symmetric_pairs, pair_negatives and query_hierarchy_weight go with the ranking form of the "
                "query↔document level; use them with pair_loss='ranking'."
            )
        if hierarchy_views == "documents" and query_hierarchy_weight != 1:
            raise ValueError(
                f"query_hierarchy_weight must be 1 with hierarchy_views='documents', got {query_hierarchy_weight}."
            )
        if pair_loss == "supcon" and hierarchy_views != "both":
            raise ValueError(
                "pair_loss='supcon' pairs queries with documents inside the joint pool, so it needs "
                "hierarchy_views='both'; use pair_loss='ranking' to keep queries out of the hierarchy levels."
            )
        if isinstance(level_weights, str):
            level_weight_schedule(1, level_weights)  # validates the name early
        else:
            for level, weight in enumerate(level_weights):
                check_real(f"level_weights[{level}]", weight, minimum=0)
        self.model = model
        self.temperature = float(temperature)
        self.level_weights: LevelWeights = level_weights if isinstance(level_weights, str) else list(level_weights)
        self.schedule_alpha = float(schedule_alpha)
        self.query_document_weight = float(query_document_weight)
        self.consistency_weight = float(consistency_weight)
        self.consistency_margin = float(consistency_margin)
        self.pair_loss: PairLoss = pair_loss
        self.pair_temperature = float(pair_temperature) if pair_temperature is not None else None
        self.hierarchy_views: HierarchyViews = hierarchy_views
        self.pair_level_discount = float(pair_level_discount)
        self.symmetric_pairs = bool(symmetric_pairs)
        self.pair_negatives: PairNegatives = pair_negatives
        self.query_hierarchy_weight = float(query_hierarchy_weight)
        self.gather_across_devices = bool(gather_across_devices)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> dict[str, Tensor]:
        """Embed each text column in its own forward pass and compute the loss components.

        Raises:
            NonFiniteLossError: When a component is NaN or infinite (e.g. the weights diverged), so training stops
                at the first bad step instead of saving a broken model.
        """
        embeddings = [self.model(features)["sentence_embedding"] for features in sentence_features]
        if self.gather_across_devices and _world_size() > 1:
            embeddings, labels, anchors, present = _gather_batch(embeddings, labels)
            components = self.compute_loss_from_embeddings(embeddings, labels, anchors=anchors, present=present)
        else:
            components = self.compute_loss_from_embeddings(embeddings, labels)
        total = sum(components.values())
        if not bool(torch.isfinite(total)):
            values = ", ".join(f"{name}={float(value.detach()):.4g}" for name, value in components.items())
            raise NonFiniteLossError(
                f"The HEAL loss is not finite ({values}); training stops and nothing is saved. Lower the learning "
                "rate, check the temperatures, and check that the base model's weights are finite."
            )
        return components

    def compute_loss_from_embeddings(
        self,
        embeddings: list[Tensor],
        labels: Tensor,
        anchors: Tensor | None = None,
        present: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Compute the weighted loss components from embeddings.

        Args:
            embeddings: One ``(B, D)`` tensor (documents), two (queries, documents), or more (queries, documents,
                then ``k`` columns of hard negatives; ranking form only).
            labels: ``(B, C)`` label rows as described in the class docstring.
            anchors: ``(B,)`` boolean, the rows whose losses are averaged (default: all); the others only serve as
                positives and negatives (another rank's rows, see ``gather_across_devices``).
            present: ``(B,)`` boolean, the rows that exist (default: all); the others are padding and take no part.

        Returns:
            ``{"level_0": ..., "level_{L-1}": ..., ["query_document": ...], ["consistency": ...]}``; each value is
            already weighted, so their sum is the loss (as :class:`SentenceTransformerTrainer` computes it).

        Raises:
            ValueError: For no embeddings, negative columns with ``pair_loss="supcon"``, or label rows of the wrong
                shape (the message says which).
        """
        if not embeddings:
            raise ValueError("HEALLoss takes one text column (documents), two (query, document) or more (negatives).")
        if len(embeddings) > 2 and self.pair_loss != "ranking":
            raise ValueError(
                f"Got {len(embeddings)} text columns: hard-negative columns after (query, document) go with "
                "pair_loss='ranking'; use it, or give one text column (documents) or two (query, document)."
            )
        paired = len(embeddings) >= 2
        negatives = embeddings[2:]
        negative_ids = None
        if negatives:
            labels, negative_ids = _split_negative_labels(labels, len(negatives))
        ids, weights = _split_labels(labels, n_rows=embeddings[0].shape[0])
        n_hierarchy = ids.shape[1] - (1 if paired else 0)
        if n_hierarchy < 1:
            raise ValueError("Labels must hold at least one hierarchy level (plus the document key when paired).")
        lambdas = level_weight_schedule(n_hierarchy, self.level_weights, self.schedule_alpha)
        pair_in_pool = paired and self.pair_loss == "supcon"
        if pair_in_pool:
            lambdas = [*lambdas, self.query_document_weight]
        pool_levels = ids.shape[1] if pair_in_pool else n_hierarchy
        n_rows = ids.shape[0]
        anchors = torch.ones(n_rows, dtype=torch.bool, device=ids.device) if anchors is None else anchors
        present = torch.ones(n_rows, dtype=torch.bool, device=ids.device) if present is None else present
        if paired and self.hierarchy_views == "both":
            pool = torch.cat(embeddings[:2], dim=0)
            pool_ids = torch.cat([ids, ids], dim=0)[:, :pool_levels]
            pool_weights = torch.cat([weights * self.query_hierarchy_weight, weights], dim=0)[:, :pool_levels]
            pool_anchors, pool_present = anchors.repeat(2), present.repeat(2)
        else:
            pool = embeddings[1] if paired else embeddings[0]
            pool_ids, pool_weights = ids[:, :pool_levels], weights[:, :pool_levels]
            pool_anchors, pool_present = anchors, present

        z = F.normalize(pool, dim=-1)
        cosine = z @ z.T
        eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
        # padding rows are never candidates; a row is never its own
        blocked = eye | ~pool_present[None, :]
        same = _same_label_masks(pool_ids, eye)
        per_level = _supcon_per_level(cosine / self.temperature, same, pool_weights, blocked, pool_anchors)
        per_level = per_level * pool.new_tensor(lambdas)

        components = {f"level_{level}": per_level[level] for level in range(n_hierarchy)}
        if pair_in_pool:
            components["query_document"] = per_level[-1]
        elif paired:
            components["query_document"] = self.query_document_weight * self._pair_ranking(
                embeddings[0], embeddings[1], negatives, ids, negative_ids, anchors, present, n_hierarchy
            )
        if self.consistency_weight > 0:
            components["consistency"] = self.consistency_weight * _consistency_hinge(
                cosine, same[:n_hierarchy], self.consistency_margin, pool_anchors
            )
        return components

    def _pair_ranking(
        self,
        queries: Tensor,
        documents: Tensor,
        negatives: list[Tensor],
        ids: Tensor,
        negative_ids: Tensor | None,
        anchors: Tensor,
        present: Tensor,
        n_hierarchy: int,
    ) -> Tensor:
        """The ranking form of the query↔document level: each anchor's query ranks the batch's documents and negatives.

        ``negative_ids`` is ``(k, B, C)``: the negatives' level ids and keys, in the order of ``negatives``.
        """
        n_rows = ids.shape[0]
        candidates, candidate_ids = documents, ids
        if negatives and negative_ids is not None:
            candidates = torch.cat([documents, *negatives], dim=0)
            candidate_ids = torch.cat([ids, negative_ids.reshape(-1, ids.shape[1])], dim=0)
        excluded = ~present.repeat(len(negatives) + 1)[None, :].expand(n_rows, -1)  # padding is never a candidate
        if self.pair_negatives == "other_leaves":  # the query's leaf (_ranking_loss keeps its own document)
            leaf = n_hierarchy - 1
            excluded = excluded | ((ids[:, leaf, None] == candidate_ids[None, :, leaf]) & (ids[:, leaf, None] >= 0))
        rows = anchors.nonzero().squeeze(1)  # each anchor picks among every row of the (gathered) batch
        temperature, discount = self.pair_temperature or self.temperature, self.pair_level_discount
        ranking = _ranking_loss(
            queries[rows], candidates, ids[rows], candidate_ids, temperature, discount, excluded[rows]
        )
        if self.symmetric_pairs:  # each document ranks the batch's queries (the negatives have none)
            backward = _ranking_loss(
                documents[rows], queries, ids[rows], ids, temperature, discount, excluded[rows, :n_rows]
            )
            ranking = (ranking + backward) / 2
        return ranking

    def get_config_dict(self) -> dict[str, Any]:
        """Settings shown in the model card."""
        return {
            "temperature": self.temperature,
            "level_weights": self.level_weights,
            "schedule_alpha": self.schedule_alpha,
            "query_document_weight": self.query_document_weight,
            "consistency_weight": self.consistency_weight,
            "consistency_margin": self.consistency_margin,
            "pair_loss": self.pair_loss,
            "pair_temperature": self.pair_temperature,
            "hierarchy_views": self.hierarchy_views,
            "pair_level_discount": self.pair_level_discount,
            "symmetric_pairs": self.symmetric_pairs,
            "pair_negatives": self.pair_negatives,
            "query_hierarchy_weight": self.query_hierarchy_weight,
            "gather_across_devices": self.gather_across_devices,
        }

    @property
    def citation(self) -> str:
        """BibTeX entry added to the model card."""
        return """
@article{bhattarai2024heal,
    title={HEAL: Hierarchical Embedding Alignment Loss for Improved Retrieval and Representation Learning},
    author={Bhattarai, Manish and others},
    journal={arXiv preprint arXiv:2412.04661},
    year={2024}
}
"""


def _split_negative_labels(labels: Tensor, n_negatives: int) -> tuple[Tensor, Tensor]:
    """A row's own label columns, and its ``k`` negatives' ids as ``(k, B, C)`` (stored after its own)."""
    if labels is None or labels.dim() != 2:
        raise ValueError(
            "With negative columns, labels must be (batch, width) rows: each row's own label ids (and weights), then "
            "each negative's ids; see HEALLoss."
        )
    width = labels.shape[1]
    parts = n_negatives + (2 if labels.is_floating_point() else 1)
    if width % parts:
        raise ValueError(
            f"With {n_negatives} negative column(s), a label row holds its own ids"
            f"{' and weights' if labels.is_floating_point() else ''} then each negative's ids, {parts} blocks of one "
            f"width; got width {width}. heal_rag.fine_tune(hard_negatives=k) builds such rows."
        )
    n_ids = width // parts
    negative_ids = labels[:, width - n_negatives * n_ids :].round().long()
    return labels[:, : width - n_negatives * n_ids], negative_ids.reshape(-1, n_negatives, n_ids).transpose(0, 1)


def _split_labels(labels: Tensor, n_rows: int) -> tuple[Tensor, Tensor]:
    """Split label rows into integer ids ``(B, K)`` and float weights ``(B, K)`` (0 where masked)."""
    if labels is None:
        raise ValueError("HEALLoss needs a 'label' column of label paths; see heal_rag.LabelPaths.to_label_rows().")
    if labels.dim() == 1:
        labels = labels.unsqueeze(1)
    if labels.dim() != 2 or labels.shape[0] != n_rows:
        raise ValueError(f"labels must have shape (batch, levels) with batch={n_rows}, got {tuple(labels.shape)}.")
    if labels.is_floating_point():
        if labels.shape[1] % 2:
            raise ValueError("Float label rows must hold ids then weights (an even number of columns).")
        half = labels.shape[1] // 2
        ids = labels[:, :half].round().long()
        weights = labels[:, half:].float()
    else:
        ids = labels.long()
        weights = torch.ones(ids.shape, dtype=torch.float32, device=labels.device)
    weights = weights.masked_fill(ids < 0, 0.0)
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or bool((weights > 1).any()):
        raise ValueError(
            "Label weights must be finite and lie in [0, 1] (soft memberships); got "
            f"min {float(weights.min()):.4g}, max {float(weights.max()):.4g}. See heal_rag.LabelPaths.to_label_rows()."
        )
    return ids, weights


def _supcon_per_level(
    logits: Tensor, same: Tensor, weights: Tensor, blocked: Tensor, anchors: Tensor | None = None
) -> Tensor:
    """Weighted SupCon loss per level, ``(K,)``, from ``(N, N)`` logits and ``(K, N, N)`` positive masks.

    Anchors without a positive at a level are skipped there; a level without anchors gives 0 (still attached to the
    graph, so every component can be back-propagated). ``blocked`` is the ``(N, N)`` boolean mask of pairs left out
    of every softmax (the diagonal, and padding columns); ``anchors`` (``(N,)`` boolean, default all) the rows whose
    losses are averaged.
    """
    logits = logits.masked_fill(blocked, float("-inf"))
    log_prob = (logits - torch.logsumexp(logits, dim=1, keepdim=True)).masked_fill(blocked, 0.0)
    positive_weight = same * weights.T[:, None, :]  # (K, N, N)
    positive_total = positive_weight.sum(-1)  # (K, N)
    per_anchor = -(positive_weight * log_prob.unsqueeze(0)).sum(-1) / positive_total.clamp_min(_EPS)
    anchor_weight = weights.T * (positive_total > 0)  # (K, N)
    if anchors is not None:
        anchor_weight = anchor_weight * anchors[None, :]
    per_level = (per_anchor * anchor_weight).sum(-1) / anchor_weight.sum(-1).clamp_min(_EPS)
    return per_level + 0.0 * log_prob.sum()


def _ranking_loss(
    queries: Tensor,
    documents: Tensor,
    query_ids: Tensor,
    document_ids: Tensor,
    temperature: float,
    discount: float,
    excluded: Tensor | None = None,
) -> Tensor:
    """Cross-entropy of each query's softmax over the batch documents against a target distribution.

    ``excluded`` (``(Q, B)`` boolean, optional) drops documents from query ``i``'s softmax (never its own document),
    e.g. the other documents of its leaf, or padding, so they are neither negatives nor targets.

    ``query_ids`` / ``document_ids`` are the rows' hierarchy ids followed by the document key (the same rows unless
    the documents were gathered from other ranks). The target puts weight 1 on the query's own
    document (every row with its key) and, when ``discount > 0``, ``discount^(L - shared + 1)`` on a document that
    shares ``shared ≥ 1`` of the ``L`` hierarchy levels. With ``discount = 0`` and one row per document this is
    MultipleNegativesRankingLoss at scale ``1/temperature``.
    """
    scores = F.normalize(queries, dim=-1) @ F.normalize(documents, dim=-1).T / temperature
    own = (query_ids[:, -1][:, None] == document_ids[:, -1][None, :]) & (document_ids[:, -1] >= 0)[None, :]
    if excluded is not None:
        scores = scores.masked_fill(excluded & ~own, float("-inf"))
    log_prob = scores - torch.logsumexp(scores, dim=1, keepdim=True)
    if discount <= 0:
        return -torch.logsumexp(log_prob.masked_fill(~own, float("-inf")), dim=1).mean()
    query_levels, document_levels = query_ids[:, None, :-1], document_ids[None, :, :-1]
    shared = ((query_levels == document_levels) & (query_levels >= 0) & (document_levels >= 0)).sum(-1)
    n_levels = query_ids.shape[1] - 1
    target = torch.where(shared > 0, discount ** (n_levels - shared + 1).to(scores.dtype), 0.0)
    target = torch.where(own, torch.ones_like(target), target)
    if excluded is not None:
        target = target.masked_fill(excluded & ~own, 0.0)
    target = target / target.sum(dim=1, keepdim=True)
    return -(target * log_prob.masked_fill(target == 0, 0.0)).sum(dim=1).mean()


def _same_label_masks(ids: Tensor, eye: Tensor) -> Tensor:
    """``(K, N, N)`` boolean masks: same label at level k, both labelled, not the anchor itself."""
    by_level = ids.T  # (K, N)
    valid = by_level >= 0
    same = by_level[:, :, None] == by_level[:, None, :]
    return same & valid[:, :, None] & valid[:, None, :] & ~eye


def _consistency_hinge(cosine: Tensor, same: Tensor, margin: float, anchors: Tensor | None = None) -> Tensor:
    """Mean of ``relu(margin + mean_sim(shares level k only) - mean_sim(shares level k+1))`` over anchors, k."""
    if same.shape[0] < 2:
        return cosine.sum() * 0.0
    deeper = same[1:].float()  # shares level k+1
    shallow_only = (same[:-1] & ~same[1:]).float()  # shares level k but not k+1
    deeper_count = deeper.sum(-1)
    shallow_count = shallow_only.sum(-1)
    deeper_mean = (deeper * cosine).sum(-1) / deeper_count.clamp_min(1.0)
    shallow_mean = (shallow_only * cosine).sum(-1) / shallow_count.clamp_min(1.0)
    active = (deeper_count > 0) & (shallow_count > 0)
    if anchors is not None:
        active = active & anchors[None, :]
    violations = F.relu(margin + shallow_mean - deeper_mean) * active
    return violations.sum() / active.sum().clamp_min(1)


def _world_size() -> int:
    """Ranks to gather from: 1 unless a process group is running (not merely launched)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_batch(embeddings: list[Tensor], labels: Tensor) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """Every rank's embeddings (with gradients) and labels, padded to the longest rank's batch.

    Returns:
        The gathered embedding columns ``(W·B_max, D)``, labels ``(W·B_max, C)`` (padding rows all ``-1``), the
        ``(W·B_max,)`` mask of this rank's rows (the anchors) and the mask of rows that are not padding.
    """
    import torch.distributed as dist
    import torch.distributed.nn

    rank, world = dist.get_rank(), dist.get_world_size()
    size = torch.tensor([labels.shape[0]], device=labels.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    pad = longest - labels.shape[0]
    padded_labels = torch.cat([labels, labels.new_full((pad, *labels.shape[1:]), -1)]) if pad else labels
    gathered_labels = [torch.empty_like(padded_labels) for _ in range(world)]
    dist.all_gather(gathered_labels, padded_labels.contiguous())
    gathered = []
    for column in embeddings:
        padded = torch.cat([column, column.new_zeros((pad, column.shape[1]))]) if pad else column
        gathered.append(torch.cat(torch.distributed.nn.all_gather(padded.contiguous()), dim=0))
    positions = torch.arange(longest, device=labels.device)
    present = torch.cat([positions < int(s) for s in sizes])
    anchors = torch.zeros(world * longest, dtype=torch.bool, device=labels.device)
    anchors[rank * longest : rank * longest + labels.shape[0]] = True
    return gathered, torch.cat(gathered_labels), anchors, present
