"""The HEAL loss: supervised contrastive learning at every level of a label hierarchy, weighted by depth."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LevelSchedule = Literal["uniform", "deeper", "coarser"]
LevelWeights = LevelSchedule | Sequence[float]

_EPS = 1e-12


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
    (no padding of short queries to document length), share one batch of ``2B`` samples, inherit the same path,
    and an extra finest level pairs each query with its source document (the *query↔document level*, weighted by
    ``query_document_weight``). That level is what makes HEAL a retrieval objective and not only a clustering one.

    An optional hierarchy-consistency hinge (after HiMulCon) asks that, for every anchor, positives sharing a deeper
    prefix are on average at least ``consistency_margin`` more similar (cosine) than those sharing only a shallower
    one.

    Args:
        model: The SentenceTransformer model to train.
        temperature: τ, the softmax temperature.
        level_weights: λ per hierarchy level, or a schedule name (see :func:`level_weight_schedule`).
        schedule_alpha: Growth rate of the ``"deeper"``/``"coarser"`` schedules.
        query_document_weight: Weight of the query↔document level (two-column input only).
        consistency_weight: Weight of the consistency hinge; 0 turns it off.
        consistency_margin: Margin of the consistency hinge, in cosine similarity.

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

        An id of -1 means "no label at this level" (masked).

    Example:
        ```python
        from datasets import Dataset
        from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
        from heal_rag import HEALLoss, LabelPaths

        model = SentenceTransformer("path/to/model")
        labels = LabelPaths([["Physics", "Optics"], ["Physics", "Optics"], ["Physics", "Plasma"], ["Maths", "Logic"]])
        dataset = Dataset.from_dict({"text": ["...", "...", "...", "..."], "label": labels.to_label_rows()})
        trainer = SentenceTransformerTrainer(model=model, train_dataset=dataset, loss=HEALLoss(model))
        trainer.train()
        ```
    """

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.05,
        level_weights: LevelWeights = "deeper",
        schedule_alpha: float = 1.0,
        query_document_weight: float = 1.0,
        consistency_weight: float = 0.0,
        consistency_margin: float = 0.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if query_document_weight < 0 or consistency_weight < 0:
            raise ValueError("query_document_weight and consistency_weight must be non-negative.")
        if isinstance(level_weights, str):
            level_weight_schedule(1, level_weights)  # validates the name early
        self.model = model
        self.temperature = float(temperature)
        self.level_weights: LevelWeights = level_weights if isinstance(level_weights, str) else list(level_weights)
        self.schedule_alpha = float(schedule_alpha)
        self.query_document_weight = float(query_document_weight)
        self.consistency_weight = float(consistency_weight)
        self.consistency_margin = float(consistency_margin)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> dict[str, Tensor]:
        """Embed each text column in its own forward pass and compute the loss components."""
        embeddings = [self.model(features)["sentence_embedding"] for features in sentence_features]
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        """Compute the weighted loss components from embeddings.

        Args:
            embeddings: One ``(B, D)`` tensor (documents) or two (queries, documents).
            labels: ``(B, C)`` label rows as described in the class docstring.

        Returns:
            ``{"level_0": ..., "level_{L-1}": ..., ["query_document": ...], ["consistency": ...]}``; each value is
            already weighted, so their sum is the loss (as :class:`SentenceTransformerTrainer` computes it).
        """
        if len(embeddings) not in (1, 2):
            raise ValueError(
                f"HEALLoss takes one text column (documents) or two (query, document), got {len(embeddings)}."
            )
        paired = len(embeddings) == 2
        ids, weights = _split_labels(labels, n_rows=embeddings[0].shape[0])
        n_hierarchy = ids.shape[1] - (1 if paired else 0)
        if n_hierarchy < 1:
            raise ValueError("Labels must hold at least one hierarchy level (plus the document key when paired).")
        if paired:
            embeddings_all = torch.cat(embeddings, dim=0)
            ids = torch.cat([ids, ids], dim=0)
            weights = torch.cat([weights, weights], dim=0)
        else:
            embeddings_all = embeddings[0]

        lambdas = level_weight_schedule(n_hierarchy, self.level_weights, self.schedule_alpha)
        if paired:
            lambdas = [*lambdas, self.query_document_weight]
        lambda_t = embeddings_all.new_tensor(lambdas)

        z = F.normalize(embeddings_all, dim=-1)
        cosine = z @ z.T
        n = cosine.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        logits = (cosine / self.temperature).masked_fill(eye, float("-inf"))
        log_prob = (logits - torch.logsumexp(logits, dim=1, keepdim=True)).masked_fill(eye, 0.0)

        same = _same_label_masks(ids, eye)  # (K, N, N): j is a positive of anchor i at level k
        positive_weight = same * weights.T[:, None, :]  # (K, N, N)
        positive_total = positive_weight.sum(-1)  # (K, N)
        per_anchor = -(positive_weight * log_prob.unsqueeze(0)).sum(-1) / positive_total.clamp_min(_EPS)
        anchor_weight = weights.T * (positive_total > 0)  # (K, N): anchors without a positive are skipped
        anchor_total = anchor_weight.sum(-1)
        per_level = (per_anchor * anchor_weight).sum(-1) / anchor_total.clamp_min(_EPS)  # (K,)
        # Keep every component attached to the graph, even a level with no anchors in this batch.
        per_level = per_level + 0.0 * log_prob.sum()
        weighted = per_level * lambda_t

        components = {f"level_{level}": weighted[level] for level in range(n_hierarchy)}
        if paired:
            components["query_document"] = weighted[-1]
        if self.consistency_weight > 0:
            components["consistency"] = self.consistency_weight * _consistency_hinge(
                cosine, same, self.consistency_margin
            )
        return components

    def get_config_dict(self) -> dict[str, Any]:
        """Settings shown in the model card."""
        return {
            "temperature": self.temperature,
            "level_weights": self.level_weights,
            "schedule_alpha": self.schedule_alpha,
            "query_document_weight": self.query_document_weight,
            "consistency_weight": self.consistency_weight,
            "consistency_margin": self.consistency_margin,
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
    return ids, weights


def _same_label_masks(ids: Tensor, eye: Tensor) -> Tensor:
    """``(K, N, N)`` boolean masks: same label at level k, both labelled, not the anchor itself."""
    by_level = ids.T  # (K, N)
    valid = by_level >= 0
    same = by_level[:, :, None] == by_level[:, None, :]
    return same & valid[:, :, None] & valid[:, None, :] & ~eye


def _consistency_hinge(cosine: Tensor, same: Tensor, margin: float) -> Tensor:
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
    violations = F.relu(margin + shallow_mean - deeper_mean) * active
    return violations.sum() / active.sum().clamp_min(1)
