"""Choosing how much of the base model to blend back after fine-tuning, on held-out (query, document) pairs.

``fine_tune(..., base_weight_share="auto")`` holds a few of the training documents out of training together with
their queries, trains on the rest, then tries each candidate share (see
:func:`heal_rag.models.blend_with_base_weights`) and keeps the one whose blended model ranks the held-out
documents best for their queries (MRR@10, scored by sentence-transformers' ``InformationRetrievalEvaluator``).
The held-out documents are searched among training documents as distractors, as in a RAG index built from the
corpus the model was tuned on.

``"auto"`` is the default. When it cannot choose (no queries at all, or fewer than
``blend_min_validation_queries`` held-out queries, where the choice would be noise), ``fine_tune`` trains on every
row and keeps ``blend_fallback_share`` (:data:`FIXED_SHARE`, the best single share measured across datasets), and
says why in ``heal_rag.json`` (``training.blend_selection.fallback``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from heal_rag.models import blend_with_base_weights, copy_weights

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

#: The share ``base_weight_share="auto"`` keeps when it cannot choose; also the advice for discovered labels, whose
#: fine level held-out MRR cannot see (see benchmarks/README.md).
FIXED_SHARE = 0.4
#: The shares ``base_weight_share="auto"`` tries.
DEFAULT_CANDIDATE_SHARES: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6)
#: At most this many documents are held out (with all their queries), whatever the fraction.
MAX_HELD_OUT_DOCUMENTS = 256
#: The validation corpus holds the held-out documents and training documents up to this many times their number.
DISTRACTOR_FACTOR = 4
#: Below this many validation queries the choice is noisy: ``fine_tune`` keeps :data:`FIXED_SHARE` instead (its
#: ``blend_min_validation_queries``), and :func:`select_base_weight_share` warns.
FEW_VALIDATION_QUERIES = 50


class HoldOutTooSmallError(ValueError):
    """Holding out the requested share of documents would leave no document on one side."""


@dataclass(frozen=True)
class BlendValidation:
    """Held-out (query, document) pairs and the corpus they are searched in.

    Attributes:
        queries: Query texts.
        gold: For each query, the index of its document in ``corpus``.
        corpus: Document texts: the held-out documents first, then training documents as distractors.
        held_out_documents: Indices (into the training input) of the documents kept out of training.
        corpus_documents: For each entry of ``corpus``, its index in the training input (held-out, then distractors).
    """

    queries: list[str]
    gold: list[int]
    corpus: list[str]
    held_out_documents: list[int] = field(default_factory=list)
    corpus_documents: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class BlendSelection:
    """Outcome of :func:`select_base_weight_share`.

    Attributes:
        share: The chosen ``base_weight_share``.
        validation_mrr: MRR@10 on the validation pairs for every candidate share.
        n_queries: Validation queries.
        n_documents: Documents in the validation corpus.
    """

    share: float
    validation_mrr: dict[float, float]
    n_queries: int
    n_documents: int

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON view for ``heal_rag.json``."""
        return {
            "share": self.share,
            "validation_mrr@10": {f"{share:g}": round(mrr, 6) for share, mrr in self.validation_mrr.items()},
            "validation_queries": self.n_queries,
            "validation_documents": self.n_documents,
        }


def announce(message: str, show: bool) -> None:
    """Say what a long step is doing: always to the log, and on stderr when progress is shown."""
    logger.info(message)
    if show:
        tqdm.write(message, file=sys.stderr)


def estimate_encoding(model: SentenceTransformer, texts: Sequence[str], passes: int = 1, sample: int = 32) -> str:
    """About how long ``passes`` encodings of ``texts`` take, timed on a sample (``"about 2 min"``)."""
    picked = list(texts[:sample])
    if not picked:
        return "no time"
    started = time.perf_counter()
    model.encode_document(picked, batch_size=len(picked), show_progress_bar=False)
    seconds = (time.perf_counter() - started) / len(picked) * len(texts) * passes
    return f"about {seconds:.0f} s" if seconds < 120 else f"about {seconds / 60:.0f} min"


def check_candidate_shares(shares: Sequence[float]) -> tuple[float, ...]:
    """Validate candidate shares: at least one, each in ``[0, 1)``; returned sorted without repeats."""
    values = tuple(sorted({float(share) for share in shares}))
    if not values:
        raise ValueError("blend_candidate_shares is empty: give at least one share in [0, 1), e.g. (0.0, 0.4).")
    bad = [share for share in values if not 0.0 <= share < 1.0]
    if bad:
        raise ValueError(f"blend_candidate_shares must lie in [0, 1) (0: keep the tuned weights), got {bad}.")
    return values


def hold_out_pairs(
    row_documents: Sequence[int], row_queries: Sequence[str], documents: Sequence[str], fraction: float, seed: int
) -> tuple[list[int], BlendValidation]:
    """Keep some documents and all their queries out of training, for choosing the blend.

    Args:
        row_documents: For each training row, the index of its document in ``documents``.
        row_queries: For each training row, its query.
        documents: The training documents.
        fraction: Share of the documents to hold out (at most :data:`MAX_HELD_OUT_DOCUMENTS`).
        seed: Seed of the choice.

    Returns:
        The indices of the rows that stay in training, and the validation pairs: every row of a held-out document
        is one query, searched among the held-out documents and up to ``DISTRACTOR_FACTOR - 1`` times as many
        training documents.

    Raises:
        ValueError: When ``fraction`` is outside ``(0, 1)``.
        HoldOutTooSmallError: When the split leaves no document on one side.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"blend_validation_fraction must lie in (0, 1), got {fraction}.")
    with_rows = np.unique(np.asarray(row_documents, dtype=np.int64))
    n_held_out = min(MAX_HELD_OUT_DOCUMENTS, int(round(fraction * len(with_rows))))
    if n_held_out < 1 or n_held_out >= len(with_rows):
        raise HoldOutTooSmallError(
            f"base_weight_share='auto' holds out {fraction:g} of {len(with_rows)} documents with queries, which "
            "leaves none on one side: use more documents, a larger blend_validation_fraction, or a fixed "
            "base_weight_share."
        )
    rng = np.random.default_rng(seed)
    held_out = np.sort(rng.choice(with_rows, size=n_held_out, replace=False)).tolist()
    training_docs = np.setdiff1d(with_rows, held_out)
    n_distractors = min(len(training_docs), (DISTRACTOR_FACTOR - 1) * n_held_out)
    distractors = np.sort(rng.choice(training_docs, size=n_distractors, replace=False)).tolist()
    position = {doc: i for i, doc in enumerate(held_out)}
    kept_rows, queries, gold = [], [], []
    for row, (doc, query) in enumerate(zip(row_documents, row_queries, strict=True)):
        if doc in position:
            queries.append(query)
            gold.append(position[doc])
        else:
            kept_rows.append(row)
    validation = BlendValidation(
        queries=queries,
        gold=gold,
        corpus=[documents[d] for d in held_out + distractors],
        held_out_documents=held_out,
        corpus_documents=held_out + distractors,
    )
    return kept_rows, validation


def select_base_weight_share(
    model: SentenceTransformer,
    base_state: Mapping[str, torch.Tensor],
    validation: BlendValidation,
    shares: Sequence[float] = DEFAULT_CANDIDATE_SHARES,
    *,
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> BlendSelection:
    """Blend ``model`` with its base at each share, score each blend on ``validation``, keep the best (in place).

    The score is MRR@10 of each query's own document among ``validation.corpus``; ties go to the smaller share.

    Args:
        model: The fine-tuned model (left blended at the chosen share).
        base_state: The base model's ``state_dict()``, copied before training.
        validation: Held-out queries, their gold documents and the corpus to search.
        shares: Candidate ``base_weight_share`` values, each in ``[0, 1)``.
        batch_size: Encoding batch size.
        show_progress_bar: Show a bar over the candidate shares.

    Returns:
        The chosen share and every candidate's validation MRR@10.

    Example:
        ```python
        base_state = copy_weights(model)
        ...  # train model
        validation = BlendValidation(queries=["what is a qubit"], gold=[0], corpus=["Qubits are ...", "Primes ..."])
        select_base_weight_share(model, base_state, validation, shares=(0.0, 0.4)).share
        ```
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    candidates = check_candidate_shares(shares)
    if not validation.queries:
        raise ValueError("The validation set has no queries: nothing to choose the blend on.")
    if len(validation.queries) < FEW_VALIDATION_QUERIES:
        logger.warning(
            "Choosing base_weight_share on only %d held-out queries: the choice may be noise; "
            "use more documents or a larger blend_validation_fraction.",
            len(validation.queries),
        )
    evaluator = InformationRetrievalEvaluator(
        queries={f"q{i}": query for i, query in enumerate(validation.queries)},
        corpus={f"d{i}": text for i, text in enumerate(validation.corpus)},
        relevant_docs={f"q{i}": {f"d{gold}"} for i, gold in enumerate(validation.gold)},
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[10],
        map_at_k=[10],
        batch_size=batch_size,
        name="blend",
        write_csv=False,
        score_functions={"cosine": cos_sim},
        main_score_function="cosine",
    )
    tuned_state = copy_weights(model)
    announce(
        f"choosing base_weight_share among {len(candidates)} candidates on {len(validation.queries)} held-out queries "
        f"and {len(validation.corpus)} documents: {estimate_encoding(model, validation.corpus, len(candidates))} "
        "(pass a number, e.g. base_weight_share=0.4 / --base-weight-share 0.4, to skip)",
        show_progress_bar,
    )
    validation_mrr: dict[float, float] = {}
    for share in tqdm(candidates, desc="Choosing base_weight_share", disable=not show_progress_bar):
        model.load_state_dict(tuned_state)
        blend_with_base_weights(model, base_state, share)
        metrics = evaluator(model)
        validation_mrr[share] = float(metrics["blend_cosine_mrr@10"])
    best = max(candidates, key=lambda share: (validation_mrr[share], -share))
    model.load_state_dict(tuned_state)
    blend_with_base_weights(model, base_state, best)
    logger.info("base_weight_share=%g chosen on %d held-out queries.", best, len(validation.queries))
    return BlendSelection(
        share=best,
        validation_mrr=validation_mrr,
        n_queries=len(validation.queries),
        n_documents=len(validation.corpus),
    )
