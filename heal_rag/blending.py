"""Choosing how much of the base model to blend back after fine-tuning, on held-out (query, document) pairs.

``fine_tune(..., base_weight_share="auto")`` holds a few of the training documents out of training together with
their queries, trains on the rest, then tries each candidate share (see
:func:`heal_rag.models.blend_with_base_weights`) and keeps the one whose blended model ranks the held-out
documents best for their queries (MRR@10 by cosine similarity; a duplicate of the gold does not push it down).
The held-out documents are searched among training documents as distractors, as in a RAG index built from the
corpus the model was tuned on. With ``blend_standard_errors`` above 0 it keeps instead the share nearest the base
model whose MRR@10 is within that many paired standard errors of the best (the one-standard-error rule for 1;
Hastie, Tibshirani & Friedman, *The Elements of Statistical Learning*, 2nd ed., 2009, §7.10): the validation
queries are few and come from the training distribution, and where they cannot tell the shares apart the base
model is the safer side.

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

from heal_rag._validation import check_real
from heal_rag.models import blend_with_base_weights, copy_weights

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

#: The share ``base_weight_share="auto"`` keeps when it cannot choose; also the advice for discovered labels, whose
#: fine level held-out MRR cannot see (see benchmarks/README.md).
FIXED_SHARE = 0.4
#: The shares ``base_weight_share="auto"`` tries. Up to 0.8 since arXiv at 2,000 held-out queries chose the largest
#: of 0 to 0.6 with validation MRR@10 still rising, and 0.8 brought its exact retrieval level with MNRL; 20
#: Newsgroups and MedQuAD, which peak inside 0 to 0.6, kept their choice (benchmarks/README.md, "The shared splits
#: with 2,000 held-out queries").
DEFAULT_CANDIDATE_SHARES: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: At most this many documents are held out (with all their queries), whatever the fraction.
MAX_HELD_OUT_DOCUMENTS = 256
#: The validation corpus holds the held-out documents and training documents up to this many times their number.
DISTRACTOR_FACTOR = 4
#: Cosine similarities closer than this to the gold's count as ties with it (see :func:`reciprocal_ranks`).
TIE_TOLERANCE = 1e-6
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
        best_share: The candidate with the highest validation MRR@10 (ties: the smaller share).
        standard_errors: The tolerance the choice used, in paired standard errors (0: ``share`` is ``best_share``).
        difference_se: For every candidate, the standard error of the mean per-query difference of reciprocal
            ranks between ``best_share`` and it (0 for ``best_share`` itself).
    """

    share: float
    validation_mrr: dict[float, float]
    n_queries: int
    n_documents: int
    best_share: float
    standard_errors: float = 0.0
    difference_se: dict[float, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON view for ``heal_rag.json``."""
        return {
            "share": self.share,
            "validation_mrr@10": {f"{share:g}": round(mrr, 6) for share, mrr in self.validation_mrr.items()},
            "validation_queries": self.n_queries,
            "validation_documents": self.n_documents,
            "best_share": self.best_share,
            "standard_errors": self.standard_errors,
            "difference_se@10": {f"{share:g}": round(se, 6) for share, se in self.difference_se.items()},
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


def reciprocal_ranks(
    model: SentenceTransformer, validation: BlendValidation, *, k: int = 10, batch_size: int = 64
) -> np.ndarray:
    """Each validation query's reciprocal rank of its gold document within the top ``k``, by cosine similarity.

    A document that scores as high as the gold (a duplicate text; within 1e-6, what encoding in another batch can
    move) does not push it down: the rank is one plus the number of documents scoring higher, so the score never
    depends on an arbitrary order of ties.

    Args:
        model: The model to score.
        validation: Held-out queries, their gold documents and the corpus to search.
        k: Cut-off (``>= 1``): a gold document below rank ``k`` scores 0.
        batch_size: Encoding batch size.

    Returns:
        Shape ``(len(validation.queries),)``, values in ``{0} ∪ [1/k, 1]``; their mean is MRR@k.

    Raises:
        ValueError: When ``k < 1``.
    """
    from sentence_transformers.util import cos_sim

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    queries = model.encode_query(validation.queries, batch_size=batch_size, convert_to_tensor=True)
    corpus = model.encode_document(validation.corpus, batch_size=batch_size, convert_to_tensor=True)
    scores = cos_sim(queries, corpus).float().cpu().numpy()  # (queries, documents); at most 256 x 1,024
    gold = scores[np.arange(len(validation.gold)), validation.gold]
    rank = 1 + (scores > gold[:, None] + TIE_TOLERANCE).sum(axis=1)
    return np.where(rank <= k, 1.0 / rank, 0.0)


def choose_share(
    reciprocal: Mapping[float, np.ndarray], standard_errors: float = 0.0, *, n_documents: int = 0
) -> BlendSelection:
    """Pick a share from every candidate's per-query reciprocal ranks (see the module docstring).

    Args:
        reciprocal: For each candidate share, a 1-D array of the reciprocal ranks (in ``[0, 1]``) of the same
            validation queries in the same order.
        standard_errors: Finite, ``>= 0``. 0: the share with the best MRR (ties: the smaller share). Above 0: the
            largest share whose MRR is below the best by at most ``standard_errors`` times the standard error of its
            per-query differences from the best share (ties: the larger share).
        n_documents: Documents in the validation corpus, for the record.

    Returns:
        The selection.

    Raises:
        ValueError: When ``reciprocal`` is empty, its arrays differ in length, are empty or hold values outside
            ``[0, 1]``, or ``standard_errors`` is negative or not finite.
    """
    check_real("blend_standard_errors", standard_errors, minimum=0)
    if not reciprocal:
        raise ValueError("No candidate shares to choose from: give at least one.")
    arrays = {share: np.asarray(values, dtype=np.float64) for share, values in reciprocal.items()}
    lengths = {values.shape for values in arrays.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1 or next(iter(lengths))[0] == 0:
        raise ValueError(
            f"Every share needs the reciprocal ranks of the same queries (1-D, same length); got {lengths}."
        )
    if any(not np.all((values >= 0) & (values <= 1)) for values in arrays.values()):
        raise ValueError("Reciprocal ranks must lie in [0, 1] (no NaN).")
    mrr = {share: float(values.mean()) for share, values in arrays.items()}
    best = max(mrr, key=lambda share: (mrr[share], -share))
    n = len(arrays[best])
    difference_se = {
        share: float(np.std(arrays[best] - values, ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        for share, values in arrays.items()
    }
    chosen = best
    if standard_errors > 0:
        # The margin keeps a gap that equals the tolerance exactly (one query worse: gap and SE are both d/n) from
        # being decided by rounding.
        chosen = max(
            share for share in mrr if mrr[best] - mrr[share] <= standard_errors * difference_se[share] + 1e-12
        )
    return BlendSelection(
        share=chosen,
        validation_mrr=mrr,
        n_queries=n,
        n_documents=n_documents,
        best_share=best,
        standard_errors=float(standard_errors),
        difference_se=difference_se,
    )


def select_base_weight_share(
    model: SentenceTransformer,
    base_state: Mapping[str, torch.Tensor],
    validation: BlendValidation,
    shares: Sequence[float] = DEFAULT_CANDIDATE_SHARES,
    *,
    standard_errors: float = 0.0,
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> BlendSelection:
    """Blend ``model`` with its base at each share, score each blend on ``validation``, keep one (in place).

    The score is MRR@10 of each query's own document among ``validation.corpus``. With ``standard_errors=0`` the best
    share is kept (ties go to the smaller share); above 0, the share nearest the base model whose MRR@10 is within
    ``standard_errors`` paired standard errors of the best (see :func:`choose_share`).

    Args:
        model: The fine-tuned model (left blended at the chosen share).
        base_state: The base model's ``state_dict()``, copied before training.
        validation: Held-out queries, their gold documents and the corpus to search.
        shares: Candidate ``base_weight_share`` values, each in ``[0, 1)``.
        standard_errors: Tolerance towards the base model, in paired standard errors (``>= 0``; 1: the
            one-standard-error rule).
        batch_size: Encoding batch size.
        show_progress_bar: Show a bar over the candidate shares.

    Returns:
        The chosen share, the best one, and every candidate's validation MRR@10 and paired standard error.

    Raises:
        ValueError: When ``validation`` has no queries, a share is outside ``[0, 1)`` or ``standard_errors`` is
            negative or not finite (before anything is encoded).

    Example:
        ```python
        base_state = copy_weights(model)
        ...  # train model
        validation = BlendValidation(queries=["what is a qubit"], gold=[0], corpus=["Qubits are ...", "Primes ..."])
        select_base_weight_share(model, base_state, validation, shares=(0.0, 0.4)).share
        ```
    """
    candidates = check_candidate_shares(shares)
    if not validation.queries:
        raise ValueError("The validation set has no queries: nothing to choose the blend on.")
    check_real("blend_standard_errors", standard_errors, minimum=0)
    if len(validation.queries) < FEW_VALIDATION_QUERIES:
        logger.warning(
            "Choosing base_weight_share on only %d held-out queries: the choice may be noise; "
            "use more documents or a larger blend_validation_fraction.",
            len(validation.queries),
        )
    tuned_state = copy_weights(model)
    announce(
        f"choosing base_weight_share among {len(candidates)} candidates on {len(validation.queries)} held-out queries "
        f"and {len(validation.corpus)} documents: {estimate_encoding(model, validation.corpus, len(candidates))} "
        "(pass a number, e.g. base_weight_share=0.4 / --base-weight-share 0.4, to skip)",
        show_progress_bar,
    )
    reciprocal: dict[float, np.ndarray] = {}
    for share in tqdm(candidates, desc="Choosing base_weight_share", disable=not show_progress_bar):
        model.load_state_dict(tuned_state)
        blend_with_base_weights(model, base_state, share)
        reciprocal[share] = reciprocal_ranks(model, validation, batch_size=batch_size)
    selection = choose_share(reciprocal, standard_errors, n_documents=len(validation.corpus))
    model.load_state_dict(tuned_state)
    blend_with_base_weights(model, base_state, selection.share)
    logger.info(
        "base_weight_share=%g chosen on %d held-out queries (best MRR@10 at %g).",
        selection.share,
        len(validation.queries),
        selection.best_share,
    )
    return selection
