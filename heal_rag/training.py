"""``fine_tune``: HEAL fine-tuning of a sentence-transformers model, built on ``SentenceTransformerTrainer``."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from heal_rag._validation import check_choice, check_int, check_real, check_unique_ids
from heal_rag.artifacts import (
    METADATA_FILE,
    build_metadata,
    label_centroids,
    model_fingerprint,
    write_json_atomic,
)
from heal_rag.backends import EXPORT_DIR
from heal_rag.blending import (
    DEFAULT_CANDIDATE_SHARES,
    FEW_VALIDATION_QUERIES,
    FIXED_SHARE,
    BlendValidation,
    HoldOutTooSmallError,
    announce,
    check_candidate_shares,
    estimate_encoding,
    hold_out_pairs,
    select_base_weight_share,
)
from heal_rag.distributed import broadcast_from_main_process, get_world_size, is_main_process
from heal_rag.labels import PATH_SEPARATOR, LabelPaths
from heal_rag.losses import LevelWeights
from heal_rag.models import blend_with_base_weights, copy_weights, load_sentence_transformer, set_max_seq_length
from heal_rag.outputs import atomic_directory, prepare_output_dir
from heal_rag.queries import KeySentenceQueryGenerator, Query, QueryGenerator, remove_key_sentence

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


logger = logging.getLogger(__name__)

#: Settings for labels discovered by HNMFk rather than given: the fixed blend (``"auto"`` chooses by MRR, which cannot
#: see discovered leaves), a heavier query↔document level, so that the queries, not the discovered facets, lead, and
#: a softer τ (0.2) in the hierarchy levels, so that a coarse discovered leaf draws its documents together without
#: flattening the finer topics inside it (the query↔document level keeps τ 0.1). Against the untouched model this
#: turned arXiv's fine-level precision from a loss to a tie and MedQuAD's into a win (see the README's hierarchy
#: section). ``heal-rag train``/``demo`` apply them to unlabelled corpora unless set.
DISCOVERED_LABELS_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {"base_weight_share": FIXED_SHARE, "query_document_weight": 6.0, "temperature": 0.2, "pair_temperature": 0.1}
)

#: The generator used when ``fine_tune`` is given no queries: titles, else key sentences.
DEFAULT_QUERY_GENERATOR = KeySentenceQueryGenerator()

#: Hard negatives per query that ``hard_negatives="auto"`` mines where the training set has that many documents
#: outside the largest leaf (fewer where it has fewer). Four lifted focus precision on MedQuAD's folder tree and
#: newsgroup precision on 20 Newsgroups' at level exact retrieval (benchmarks/README.md, "The sixth lever").
AUTO_HARD_NEGATIVES = 4

#: Measured settings for training queries generated from the chunks themselves: each chunk's heading where it is
#: the first chunk under one, else its key sentence (the folder path's default). The queries stay out of the
#: hierarchy levels, 90 % of the key-sentence queries are paired with their chunk without the sentence (the inverse
#: cloze task, which lets the blend's validation tell the shares apart), the blend may go nearer the base model, and
#: each query ranks its chunk above its nearest chunks of other leaves (``hard_negatives="auto"``). Chosen on
#: MedQuAD's folder tree with question headings (better on every topic column, exact retrieval level with MNRL),
#: checked on arXiv's with title headings (level with the earlier defaults on every column) at about three times
#: the training time (benchmarks/README.md, "The sixth lever with the generated-query recipe").
#: :func:`heal_rag.documents.fine_tune_documents`, ``heal-rag train --data DIR`` and the demo apply them (see
#: :func:`measured_settings`) unless set; ``heal-rag train`` on a JSONL corpus's titles, given queries and LLM
#: questions keep the defaults.
HEADING_QUERY_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {
        "hierarchy_views": "documents",
        "inverse_cloze_rate": 0.9,
        "blend_candidate_shares": (0.0, 0.2, 0.4, 0.6, 0.7, 0.8),
        "hard_negatives": "auto",
    }
)

#: Measured settings for training queries that are all generated key sentences (a folder of plain-text files, a
#: corpus without titles): those of :data:`HEADING_QUERY_SETTINGS` without the mined negatives, and the blend keeps
#: the share nearest the base model within one standard error of the best (the held-out key sentences cannot tell
#: those shares apart; real queries found their documents better nearer the base). The recipe chosen on the 20
#: Newsgroups folder tree and confirmed on MedQuAD's without headings, the rule measured on both. The negatives
#: lifted 20 Newsgroups' topic columns (separate runs) and, paired on MedQuAD's, cost its exact retrieval (MRR@10
#: -0.034) for no topic gain, at about three times the training time (benchmarks/README.md, "A recipe for
#: generated queries", "The one-standard-error rule", "Hard negatives with key-sentence queries").
#: ``heal-rag train``/``demo`` and :func:`heal_rag.documents.fine_tune_documents` apply them (see
#: :func:`measured_settings`) unless set, and not to discovered labels, which have their own.
KEY_SENTENCE_QUERY_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {**HEADING_QUERY_SETTINGS, "hard_negatives": 0, "blend_standard_errors": 1.0}
)


def only_generated_queries(queries: Sequence[Any] | None, query_generator: QueryGenerator | None) -> bool:
    """Whether every training query will come from the default offline generator: a title, else a key sentence.

    For chunks (:func:`heal_rag.documents.fine_tune_documents`, the demo) a chunk's title is the heading above it (or
    its headingless document's title), so these are heading and key-sentence queries: :data:`HEADING_QUERY_SETTINGS`
    applies (see :func:`measured_settings`). False when queries are given or the generator is any other (a subclass,
    an LLM), which may write real questions.

    Args:
        queries: The given training queries, if any.
        query_generator: The generator ``fine_tune`` will use for documents without a query.

    Returns:
        Whether no queries are given and the generator is a :class:`~heal_rag.queries.KeySentenceQueryGenerator`.
    """
    return not queries and type(query_generator) is KeySentenceQueryGenerator


def only_key_sentence_queries(
    titles: Sequence[str | None] | None,
    queries: Sequence[Any] | None,
    query_generator: QueryGenerator | None,
) -> bool:
    """Whether every training query will be a generated key sentence.

    True when no queries are given and the generator is a :class:`~heal_rag.queries.KeySentenceQueryGenerator` (not
    a subclass) that has no title to use (``use_titles=False``, or no document has one); False for any other
    generator, which may write real questions.

    Args:
        titles: The documents' (or chunks') titles as ``fine_tune`` gets them, ``None`` entries for none.
        queries: The given training queries, if any.
        query_generator: The generator ``fine_tune`` will use for documents without a query.

    Returns:
        Whether :data:`KEY_SENTENCE_QUERY_SETTINGS` applies (see :func:`measured_settings`).
    """
    if not only_generated_queries(queries, query_generator):
        return False
    return not query_generator.use_titles or not any(title and title.strip() for title in titles or ())


def measured_settings(
    overrides: Mapping[str, Any],
    *,
    discovered_labels: bool,
    key_sentence_queries: bool,
    heading_queries: bool = False,
) -> dict[str, Any]:
    """The settings a run gets: ``overrides`` over the measured settings for its kind of data.

    Args:
        overrides: The user's :class:`HEALTrainingConfig` settings; they always win.
        discovered_labels: The labels were discovered (HNMFk): :data:`DISCOVERED_LABELS_SETTINGS`.
        key_sentence_queries: Every training query is a generated key sentence (:func:`only_key_sentence_queries`):
            :data:`KEY_SENTENCE_QUERY_SETTINGS`, unless the labels were discovered (not measured together).
        heading_queries: The rows are chunks and every query is generated from them, the heading above a chunk or
            its key sentence (:func:`only_generated_queries` on the chunk path): :data:`HEADING_QUERY_SETTINGS`,
            unless one of the above applies. Leave it False for titles of whole documents (a JSONL corpus).

    Returns:
        The merged settings, for ``fine_tune(**settings)``.
    """
    if discovered_labels:
        return {**DISCOVERED_LABELS_SETTINGS, **overrides}
    if key_sentence_queries:
        return {**KEY_SENTENCE_QUERY_SETTINGS, **overrides}
    if heading_queries:
        return {**HEADING_QUERY_SETTINGS, **overrides}
    return dict(overrides)


@dataclass(frozen=True)
class HEALTrainingConfig:
    """Settings of a HEAL fine-tune (the defaults are the recommended recipe).

    Attributes:
        epochs: Passes over the training rows (ignored when ``max_steps`` is set).
        max_steps: Optimiser steps; overrides ``epochs``.
        batch_size: Rows per batch; a row is a document, or a (query, document) pair.
        learning_rate: Peak AdamW learning rate (linear decay after warm-up).
        warmup_ratio: Share of the steps spent warming up.
        seed: Seed for the sampler, model initialisation and data order.
        max_seq_length: Truncate texts to this many tokens during training (``None``, the default: the model's own
            limit, 256 for all-MiniLM-L6-v2). 128 trains about twice as fast and cuts longer texts; the saved model
            keeps its own limit either way (``save_max_seq_length``).
        temperature: HEAL τ.
        level_weights: HEAL λ: a schedule name or one weight per hierarchy level.
        schedule_alpha: Growth rate of the exponential λ schedules.
        query_document_weight: Weight of the query↔document level.
        consistency_weight: Weight of the hierarchy-consistency hinge (0: off).
        consistency_margin: Margin of the hinge.
        pair_loss: Form of the query↔document level, ``"ranking"`` or ``"supcon"`` (see :class:`heal_rag.HEALLoss`).
        pair_temperature: τ of the query↔document level (``None``: ``temperature``).
        hierarchy_views: ``"both"`` (queries and documents) or ``"documents"`` in the hierarchy levels.
        pair_level_discount: Share of the query↔document target given to same-topic documents (ranking form).
        symmetric_pairs: Also rank queries for each document (ranking form).
        pair_negatives: ``"all"`` or ``"other_leaves"``: which batch documents are a query's negatives.
        query_hierarchy_weight: Weight of the queries in the hierarchy levels (``hierarchy_views="both"``).
        gather_across_devices: Under ``torchrun``, every rank's rows join each rank's loss as positives and
            negatives (see :class:`heal_rag.HEALLoss`; on by default, ``False`` gives each rank's loss its own rows
            only); no effect in one process.
        samples_per_leaf: Rows per leaf in a batch (see :class:`heal_rag.HierarchicalBatchSampler`).
        leaves_per_parent: Sibling leaves per parent in a batch.
        base_weight_share: After training, blend this share of the base model's weights back into the tuned
            weights (weight-space ensembling, see :func:`heal_rag.models.blend_with_base_weights`; 0: off), or
            ``"auto"`` (default): hold ``blend_validation_fraction`` of the documents and their queries out of
            training and keep the candidate share that retrieves them best (see :mod:`heal_rag.blending`). Without
            queries, or with fewer than ``blend_min_validation_queries`` held out, ``"auto"`` trains on everything
            and keeps ``blend_fallback_share``.
        blend_validation_fraction: Share of the documents held out when ``base_weight_share="auto"`` (at most 256).
        blend_candidate_shares: The shares ``base_weight_share="auto"`` tries.
        blend_min_validation_queries: Fewest held-out queries ``"auto"`` chooses on.
        blend_fallback_share: The share ``"auto"`` keeps when it cannot choose.
        blend_standard_errors: Finite, ``>= 0``: how far below the best validation MRR@10 ``"auto"`` may go
            towards the base model, in standard errors of the per-query differences. 0 (default) keeps the best
            candidate; k > 0 keeps the largest share within k standard errors of it (1: the one-standard-error
            rule, see :mod:`heal_rag.blending`; 1 when every training query is a generated key sentence).
        save_max_seq_length: Token limit saved with the tuned model (``None``: the base model's own limit, whatever
            ``max_seq_length`` training used), so a training-time speed setting never shortens what the deployed
            retriever reads.
        inverse_cloze_rate: Share (0–1) of the documents whose generated key-sentence query is paired with the
            document *without* that sentence (the inverse cloze task of Lee et al., 2019), so the model learns what
            a passage is about instead of copying its words; titles and given queries are never affected (see
            :func:`heal_rag.queries.remove_key_sentence`). The blend's held-out documents are searched as trained.
        hard_negatives: ``k >= 0`` hard negatives per query (ranking form, paired rows): before training, the
            base model finds each query's ``k`` nearest training documents *of other leaves* (with a source-document
            level, of the user's other leaves), and every query of a batch ranks its document among them too (see
            :func:`heal_rag.negatives.mine_other_leaf_negatives`). 0 (default): in-batch negatives only. ``"auto"``:
            :data:`AUTO_HARD_NEGATIVES`, or as many as the training documents outside the largest leaf allow, and
            none without queries or with ``pair_loss="supcon"`` (the heading-query settings use it; an integer
            that cannot be met is an error instead). Each negative adds a document forward pass per row, and
            mining embeds the training set once.

    Raises:
        ValueError: When a setting is not a finite number in its range (e.g. ``temperature=nan``,
            ``batch_size=0``); the message names the setting.
    """

    epochs: float = 2.0
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.1
    seed: int = 42
    max_seq_length: int | None = None
    temperature: float = 0.1
    level_weights: LevelWeights = "deeper"
    schedule_alpha: float = 1.0
    query_document_weight: float = 3.0
    consistency_weight: float = 0.0
    consistency_margin: float = 0.0
    pair_loss: str = "ranking"
    pair_temperature: float | None = None
    hierarchy_views: str = "both"
    pair_level_discount: float = 0.0
    symmetric_pairs: bool = False
    pair_negatives: str = "all"
    query_hierarchy_weight: float = 1.0
    gather_across_devices: bool = True
    samples_per_leaf: int = 2
    leaves_per_parent: int = 4
    base_weight_share: float | str = "auto"
    blend_validation_fraction: float = 0.1
    blend_candidate_shares: tuple[float, ...] = DEFAULT_CANDIDATE_SHARES
    blend_min_validation_queries: int = FEW_VALIDATION_QUERIES
    blend_fallback_share: float = FIXED_SHARE
    blend_standard_errors: float = 0.0
    save_max_seq_length: int | None = None
    inverse_cloze_rate: float = 0.0
    hard_negatives: int | str = 0

    def __post_init__(self) -> None:
        """Validate every setting up front (finite, in range), so nothing is trained with a value that cannot work.

        Raises:
            ValueError: Naming the first setting that is out of range.
        """
        check_real("epochs", self.epochs, minimum=0, min_open=True)
        check_int("max_steps", self.max_steps, minimum=1, allow_none=True)
        check_int("batch_size", self.batch_size, minimum=2)
        check_real("learning_rate", self.learning_rate, minimum=0, maximum=1, min_open=True)
        check_real("warmup_ratio", self.warmup_ratio, minimum=0, maximum=1, max_open=True)
        check_int("seed", self.seed, minimum=0, maximum=2**32 - 1)
        check_int("max_seq_length", self.max_seq_length, minimum=1, allow_none=True)
        check_int("save_max_seq_length", self.save_max_seq_length, minimum=1, allow_none=True)
        check_real("temperature", self.temperature, minimum=0, min_open=True)
        check_real("pair_temperature", self.pair_temperature, minimum=0, min_open=True, allow_none=True)
        if isinstance(self.level_weights, str):
            check_choice("level_weights", self.level_weights, ("uniform", "deeper", "coarser"))
        else:
            for level, weight in enumerate(self.level_weights):
                check_real(f"level_weights[{level}]", weight, minimum=0)
        check_real("schedule_alpha", self.schedule_alpha)
        check_real("query_document_weight", self.query_document_weight, minimum=0)
        check_real("consistency_weight", self.consistency_weight, minimum=0)
        check_real("consistency_margin", self.consistency_margin, minimum=-2, maximum=2)
        check_choice("pair_loss", self.pair_loss, ("ranking", "supcon"))
        check_choice("hierarchy_views", self.hierarchy_views, ("both", "documents"))
        check_real("pair_level_discount", self.pair_level_discount, minimum=0, maximum=1, max_open=True)
        check_choice("symmetric_pairs", self.symmetric_pairs, (True, False))
        check_choice("pair_negatives", self.pair_negatives, ("all", "other_leaves"))
        check_real("query_hierarchy_weight", self.query_hierarchy_weight, minimum=0, maximum=1)
        check_int("samples_per_leaf", self.samples_per_leaf, minimum=2)
        check_int("leaves_per_parent", self.leaves_per_parent, minimum=1)
        if (
            not isinstance(self.level_weights, str)
            and not any(self.level_weights)
            and self.query_document_weight == 0
            and self.consistency_weight == 0
        ):
            raise ValueError(
                "Every loss weight is 0 (level_weights, query_document_weight, consistency_weight): there is nothing "
                "to train. Give at least one level or the query↔document level a positive weight."
            )
        if self.batch_size < self.samples_per_leaf:
            raise ValueError(f"batch_size ({self.batch_size}) must be >= samples_per_leaf ({self.samples_per_leaf}).")
        if self.base_weight_share != "auto":
            try:
                check_real("base_weight_share", self.base_weight_share, minimum=0, maximum=1, max_open=True)
            except ValueError:
                raise ValueError(
                    "base_weight_share must lie in [0, 1) (0: keep the tuned weights) or be 'auto', got "
                    f"{self.base_weight_share!r}."
                ) from None
        check_real(
            "blend_validation_fraction",
            self.blend_validation_fraction,
            minimum=0,
            maximum=1,
            min_open=True,
            max_open=True,
        )
        for share in self.blend_candidate_shares:
            check_real("blend_candidate_shares", share, minimum=0, maximum=1, max_open=True)
        check_int("blend_min_validation_queries", self.blend_min_validation_queries, minimum=1)
        check_real("blend_fallback_share", self.blend_fallback_share, minimum=0, maximum=1, max_open=True)
        check_real("blend_standard_errors", self.blend_standard_errors, minimum=0)
        check_real("inverse_cloze_rate", self.inverse_cloze_rate, minimum=0, maximum=1)
        if self.hard_negatives != "auto":
            self._check_hard_negatives()

    def _check_hard_negatives(self) -> None:
        """An integer ``hard_negatives`` (``"auto"`` adapts to the data and needs no check)."""
        try:
            check_int("hard_negatives", self.hard_negatives, minimum=0)
        except ValueError:
            raise ValueError(
                f"hard_negatives must be an integer >= 0 or 'auto', got {self.hard_negatives!r}."
            ) from None
        if self.hard_negatives and self.pair_loss != "ranking":
            raise ValueError(
                f"hard_negatives={self.hard_negatives} goes with pair_loss='ranking' (the negatives join each "
                "query's ranking of the batch's documents); use it, or set hard_negatives=0."
            )

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON view for ``heal_rag.json``."""
        out = dict(self.__dict__)
        out["level_weights"] = self.level_weights if isinstance(self.level_weights, str) else list(self.level_weights)
        out["blend_candidate_shares"] = list(self.blend_candidate_shares)
        return out


@dataclass(frozen=True)
class TrainingRows:
    """The rows handed to the trainer: columns in model-input order, plus what the sampler needs to know.

    Attributes:
        columns: ``query`` (when paired), ``document`` and ``label`` columns.
        n_levels: Hierarchy levels in the labels.
        paired: Whether the rows are (query, document) pairs.
        document_indices: For each row, the index of its document in the input documents.
        source_level: Whether the finest of the ``n_levels`` is the source document (``fine_tune(source_ids=...)``).
        document_texts: Each input document as its rows show it (without its key sentence where the inverse cloze
            task removed it); empty when every document is shown whole.
    """

    columns: dict[str, list[Any]]
    n_levels: int
    paired: bool
    document_indices: list[int] = field(default_factory=list)
    source_level: bool = False
    document_texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.columns["label"])

    @property
    def leaf_column(self) -> int:
        """The label column of the user's leaf: the finest level, or the one above a source-document level."""
        return self.n_levels - 2 if self.source_level and self.n_levels > 1 else self.n_levels - 1

    def subset(self, rows: Sequence[int]) -> TrainingRows:
        """The given rows, in that order."""
        return TrainingRows(
            columns={name: [values[i] for i in rows] for name, values in self.columns.items()},
            n_levels=self.n_levels,
            paired=self.paired,
            document_indices=[self.document_indices[i] for i in rows],
            source_level=self.source_level,
            document_texts=self.document_texts,
        )


@dataclass(frozen=True)
class FineTuneResult:
    """What :func:`fine_tune` returns.

    Attributes:
        model: The tuned model (also saved in ``output_dir``).
        output_dir: Directory holding the sentence-transformers model and ``heal_rag.json``.
        metadata: The ``heal_rag.json`` payload.
        train_loss: Mean training loss reported by the trainer.
        train_runtime_s: Wall time of ``trainer.train()``.
        global_steps: Optimiser steps taken.
    """

    model: SentenceTransformer
    output_dir: Path
    metadata: dict[str, Any]
    train_loss: float
    train_runtime_s: float
    global_steps: int

    def describe_blend(self) -> str:
        """One line on the base-weight share the model was saved with, and how it was set.

        Example:
            ``"base_weight_share 0.6, chosen on 151 held-out queries (MRR@10 0.9540)"``
        """
        training = self.metadata.get("training", {})
        selection = training.get("blend_selection")
        if selection is None:
            return f"base_weight_share {training.get('base_weight_share', 0):g} (fixed)"
        if "fallback" in selection:
            return f"base_weight_share {selection['share']:g}, not chosen: {selection['fallback']}"
        mrr = selection["validation_mrr@10"][f"{selection['share']:g}"]
        line = (
            f"base_weight_share {selection['share']:g}, chosen on {selection['validation_queries']} held-out "
            f"queries (MRR@10 {mrr:.4f})"
        )
        best = selection.get("best_share", selection["share"])
        if best != selection["share"]:
            best_mrr = selection["validation_mrr@10"][f"{best:g}"]
            line += (
                f", the share nearest the base model whose MRR@10 is within {selection['standard_errors']:g} standard "
                f"error(s) of the best ({best_mrr:.4f} at {best:g})"
            )
        return line


def build_training_rows(
    documents: Sequence[str],
    labels: LabelPaths,
    *,
    ids: Sequence[str] | None = None,
    titles: Sequence[str | None] | None = None,
    queries: Sequence[Query | tuple[str, str]] | None = None,
    query_generator: QueryGenerator | None = DEFAULT_QUERY_GENERATOR,
    source_ids: Sequence[str] | None = None,
    inverse_cloze_rate: float = 0.0,
    seed: int = 0,
) -> TrainingRows:
    """Turn documents, label paths and queries into trainer rows.

    Each query inherits its source document's path; the label row gets one more column, the document's index, so
    the loss can pair every query with its own document. Documents without a user query get one from
    ``query_generator``. With no queries and ``query_generator=None`` the rows are documents alone. With
    ``source_ids`` (the source document of each text, e.g. of each chunk) the labels get one more, finest level:
    texts from the same source are positives there. With ``inverse_cloze_rate`` that share of the documents whose
    query the generator cut from their own text (a key sentence, not a title) is shown without that sentence
    (:func:`heal_rag.queries.remove_key_sentence`; chosen with ``seed``).

    Raises:
        ValueError: On mismatched lengths, unknown document ids, or documents left without a query.
    """
    n_docs = len(documents)
    labels.check_length(n_docs, "documents")
    ids = [str(i) for i in range(n_docs)] if ids is None else [str(i) for i in ids]
    if len(ids) != n_docs:
        raise ValueError(f"Got {n_docs} documents but {len(ids)} ids.")
    check_unique_ids(ids, "document ids")
    titles = [None] * n_docs if titles is None else list(titles)
    if len(titles) != n_docs:
        raise ValueError(f"Got {n_docs} documents but {len(titles)} titles.")
    if source_ids is not None:
        if len(source_ids) != n_docs:
            raise ValueError(f"Got {n_docs} documents but {len(source_ids)} source ids.")
        labels = labels.with_finest_level([str(source).replace(PATH_SEPARATOR, " / ") for source in source_ids])

    index_of = {doc_id: i for i, doc_id in enumerate(ids)}
    queries_per_doc: dict[int, list[str]] = defaultdict(list)
    for query in queries or []:
        text, doc_id = (query.text, query.document_id) if isinstance(query, Query) else query
        if str(doc_id) not in index_of:
            raise ValueError(f"Query {text!r} refers to document id {doc_id!r}, which is not among the documents.")
        if text and text.strip():
            queries_per_doc[index_of[str(doc_id)]].append(text.strip())

    if not queries_per_doc and query_generator is None:
        return TrainingRows(
            columns={"document": list(documents), "label": labels.to_label_rows()},
            n_levels=labels.depth,
            paired=False,
            document_indices=list(range(n_docs)),
            source_level=source_ids is not None,
        )

    missing = [i for i in range(n_docs) if i not in queries_per_doc]
    if missing:
        if query_generator is None:
            raise ValueError(
                f"{len(missing)} of {n_docs} documents have no query and query_generator is None: give queries for "
                "every document, or pass a query generator (the default makes one from the title or key sentence)."
            )
        generated = query_generator([documents[i] for i in missing], [titles[i] for i in missing])
        if len(generated) != len(missing):
            raise ValueError(f"The query generator returned {len(generated)} queries for {len(missing)} documents.")
        for doc_index, text in zip(missing, generated, strict=True):
            if text and text.strip():
                queries_per_doc[doc_index].append(text.strip())
    shown = _inverse_cloze(documents, titles, missing, queries_per_doc, inverse_cloze_rate, seed)

    row_docs = [d for d in range(n_docs) for _ in queries_per_doc.get(d, [])]
    row_queries = [q for d in range(n_docs) for q in queries_per_doc.get(d, [])]
    per_doc_rows = np.asarray(labels.to_label_rows(extra_ids=list(range(n_docs))))
    label_rows = per_doc_rows[row_docs].tolist()
    return TrainingRows(
        columns={"query": row_queries, "document": [shown[d] for d in row_docs], "label": label_rows},
        n_levels=labels.depth,
        paired=True,
        document_indices=row_docs,
        source_level=source_ids is not None,
        document_texts=shown if shown != list(documents) else [],
    )


def _inverse_cloze(
    documents: Sequence[str],
    titles: Sequence[str | None],
    generated: Sequence[int],
    queries_per_doc: Mapping[int, list[str]],
    rate: float,
    seed: int,
) -> list[str]:
    """Each document as the rows show it: ``rate`` of those with a generated key-sentence query lose the sentence."""
    shown = list(documents)
    if rate <= 0:
        return shown
    rng = random.Random(seed)
    for index in generated:
        title = (titles[index] or "").strip()
        for query in queries_per_doc.get(index, []):
            if query != title and rng.random() < rate:
                shown[index] = remove_key_sentence(documents[index], query) or documents[index]
    return shown


def fine_tune(
    documents: Sequence[str],
    labels: LabelPaths | Sequence[Sequence[str]],
    *,
    output_dir: str | os.PathLike[str],
    ids: Sequence[str] | None = None,
    titles: Sequence[str | None] | None = None,
    queries: Sequence[Query | tuple[str, str]] | None = None,
    query_generator: QueryGenerator | None = DEFAULT_QUERY_GENERATOR,
    base_model: str | os.PathLike[str] | SentenceTransformer | None = None,
    label_names: Mapping[str, str] | None = None,
    source_ids: Sequence[str] | None = None,
    training_record: Mapping[str, Any] | None = None,
    config: HEALTrainingConfig | None = None,
    overwrite: bool = False,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_steps: int = 100,
    resume_from_checkpoint: str | bool | None = None,
    training_args: Mapping[str, Any] | None = None,
    show_progress_bar: bool = True,
    device: str | None = None,
    **config_overrides: Any,
) -> FineTuneResult:
    """Fine-tune an embedding model with the HEAL loss and save it with its ``heal_rag.json``.

    Every setting, the documents and the output location are checked before any model is loaded; a run that fails
    (bad data, a non-finite loss, an interruption) leaves ``output_dir`` as it was.

    Args:
        documents: Document texts.
        labels: One label path per document (:class:`~heal_rag.LabelPaths` or lists of strings).
        output_dir: Where the tuned model goes, written atomically. It must be new, empty, or an earlier heal_rag
            model directory (replaced only with ``overwrite=True``); a directory heal_rag did not write is refused.
        ids: Unique document ids (default ``"0"``, ``"1"``, ...); queries refer to them.
        titles: Optional titles, used by the default query generator.
        queries: ``(query_text, document_id)`` pairs or :class:`~heal_rag.Query` objects.
        query_generator: Makes queries for documents without one; ``None`` trains on documents alone (when no
            queries are given).
        base_model: A loaded ``SentenceTransformer``, a model directory (safetensors weights only), or ``None`` for
            the embedded all-MiniLM-L6-v2.
        label_names: Readable names of label parts, kept in ``heal_rag.json`` (e.g. HNMFk's ``node_names()``).
        source_ids: The source document of each text, when the texts are chunks: one more, finest level in the
            loss, where chunks of the same document are positives, and the sampler keeps them together in a batch.
            It is a training device only: the saved label tree (and the reranker) keep the given hierarchy.
        training_record: Extra entries for the ``training`` section of ``heal_rag.json`` (e.g. the chunking
            settings, so that an index built later cuts the same chunks).
        config: Training settings; see :class:`HEALTrainingConfig` for the defaults.
        overwrite: Replace an earlier heal_rag model directory at ``output_dir``.
        checkpoint_dir: Write a checkpoint every ``checkpoint_steps`` optimiser steps here (the last two are kept),
            so an interrupted run can resume. ``None``: no checkpoints (``<output_dir>.checkpoints`` when
            ``training_args`` ask for them or ``resume_from_checkpoint`` is set).
        checkpoint_steps: Steps between checkpoints (with ``checkpoint_dir``).
        resume_from_checkpoint: ``True``: continue from the latest checkpoint in ``checkpoint_dir``; or a
            checkpoint path. The result equals that of an uninterrupted run; a checkpoint written with other
            settings (only ``max_steps`` and ``epochs`` may change) or other training data is refused before any
            work (see :mod:`heal_rag.checkpoints`).
        training_args: Extra ``SentenceTransformerTrainingArguments`` (e.g. ``{"logging_steps": 10}``).
        show_progress_bar: Show the trainer's progress bar.
        device: Torch device for a model loaded here.
        **config_overrides: Any :class:`HEALTrainingConfig` field, e.g. ``max_steps=60, learning_rate=5e-5``.

    Multi-process training: run the same script under ``torchrun --nproc_per_node N`` (or ``accelerate launch``);
    each rank trains on its share of the batches (see :class:`HierarchicalBatchSampler`) and gradients are averaged
    (``DistributedDataParallel``), so ``batch_size`` is per process and ``max_steps`` counts optimiser steps. Only
    rank 0 chooses the blend share, computes the centroids and writes ``output_dir``; the other ranks return right
    after training, with their (identical, unblended) weights and empty ``metadata``.

    Returns:
        A :class:`FineTuneResult` with the tuned model and where it was saved.

    Raises:
        ValueError: For a setting out of range, malformed documents, labels or ids (duplicates are named), or a
            checkpoint to resume from that is incomplete, at the end of training, or another run's.
        heal_rag.outputs.OutputPathError: When ``output_dir`` or ``checkpoint_dir`` may not be written (see
            :mod:`heal_rag.outputs`).
        heal_rag.losses.NonFiniteLossError: When the loss becomes NaN or infinite; nothing is saved.

    Example:
        ```python
        from heal_rag import fine_tune

        result = fine_tune(
            ["Qubits decohere ...", "Cooper pairs ...", "Prime gaps ..."],
            [["Physics", "Quantum"], ["Physics", "Superconductivity"], ["Maths", "Number theory"]],
            output_dir="models/heal-example",
            max_steps=60,
        )
        result.model.encode_query("error correction for qubits")
        ```
    """
    config = _with_overrides(config or HEALTrainingConfig(), config_overrides)
    choose_share = _check_base_weight_share(config)
    check_int("checkpoint_steps", checkpoint_steps, minimum=1)
    labels = LabelPaths.coerce(labels)
    if len(documents) < 2:
        raise ValueError("fine_tune needs at least 2 documents.")
    if any(not isinstance(d, str) or not d.strip() for d in documents):
        raise ValueError("Every document must be a non-empty string.")
    base_path = base_model if isinstance(base_model, (str, os.PathLike)) else None
    output_dir = prepare_output_dir(
        output_dir, overwrite=overwrite, inputs=[base_path], what="Model directory", kind="model"
    )
    from heal_rag.checkpoints import check_resume_point, checkpoint_location, run_record

    checkpoints = checkpoint_location(output_dir, checkpoint_dir, training_args, resume_from_checkpoint)

    rows = build_training_rows(
        documents,
        labels,
        ids=ids,
        titles=titles,
        queries=queries,
        query_generator=query_generator,
        source_ids=source_ids,
        inverse_cloze_rate=config.inverse_cloze_rate,
        seed=config.seed,
    )
    _check_rows_against_config(rows, config)
    record = run_record(config, rows, training_args) if checkpoints is not None else None
    resume_from_checkpoint = check_resume_point(checkpoints, resume_from_checkpoint, record, config.max_steps)
    validation: BlendValidation | None = None
    fallback_reason = ""
    if choose_share:
        rows, validation, fallback_reason = _hold_out_for_share_choice(rows, documents, config)

    model, base_model_name = _load_base_model(base_model, device)
    deployed_max_seq_length = config.save_max_seq_length or getattr(model, "max_seq_length", None)
    set_max_seq_length(model, config.max_seq_length)
    _warn_truncated(model, documents, config.max_seq_length)
    model.model_card_data.generate_widget_examples = False
    fixed_share = config.blend_fallback_share if choose_share else float(config.base_weight_share)
    base_state = copy_weights(model) if validation is not None or fixed_share > 0 else None
    base_spread = _spread(model, documents)[1]
    negatives_per_query = _negatives_per_query(rows, config)  # after the hold-out: mined among the rows' documents
    if negatives_per_query:
        rows = _with_hard_negatives(model, rows, negatives_per_query, show_progress_bar)

    train_output = _train(
        model,
        rows,
        replace(config, hard_negatives=negatives_per_query),
        checkpoints,
        checkpoint_steps,
        resume_from_checkpoint,
        record,
        training_args,
        show_progress_bar,
    )
    if not is_main_process():  # rank 0 alone chooses the blend and writes; the weights are the same on every rank
        return _result(model, output_dir, {}, train_output)
    _check_trained_model(model, documents, base_spread)
    set_max_seq_length(model, deployed_max_seq_length)
    settings = {
        **config.as_dict(),
        "training_rows": len(rows),
        "hard_negatives_per_query": negatives_per_query,
        "paired_queries": rows.paired,
        "source_level": rows.source_level,
        "global_steps": int(train_output.global_step),
        "world_size": get_world_size(),  # processes that trained; batch_size is per process
        "training_prompts": _training_prompts(model),
        **dict(training_record or {}),
    }
    selection = _blend(model, base_state, validation, config, fixed_share, fallback_reason, show_progress_bar)
    if selection is not None:
        settings["blend_selection"] = selection

    document_embeddings = _embed_documents(model, documents, show_progress_bar)
    centroids = label_centroids(document_embeddings, labels)
    if validation is not None:
        settings["reranker"] = _choose_reranker(model, validation, labels, document_embeddings, centroids)
    metadata = save_heal_model(
        model,
        output_dir,
        documents=documents,
        labels=labels,
        base_model=base_model_name,
        training=settings,
        label_names=label_names,
        show_progress_bar=show_progress_bar,
        overwrite=overwrite,
        centroids=centroids,
    )
    return _result(model, output_dir, metadata, train_output)


def _with_overrides(config: HEALTrainingConfig, overrides: Mapping[str, Any]) -> HEALTrainingConfig:
    """``config`` with ``fine_tune``'s keyword settings applied (validated again by the dataclass)."""
    if not overrides:
        return config
    unknown = set(overrides) - set(HEALTrainingConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"Unknown fine_tune settings: {sorted(unknown)}; see HEALTrainingConfig.")
    return HEALTrainingConfig(**{**config.__dict__, **overrides})


def _load_base_model(
    base_model: str | os.PathLike[str] | SentenceTransformer | None, device: str | None
) -> tuple[SentenceTransformer, str]:
    """The model to tune (a given one is used in place) and the base model's name for the model card."""
    from sentence_transformers import SentenceTransformer

    if isinstance(base_model, SentenceTransformer):
        return base_model, str(base_model.model_card_data.base_model or "")
    return load_sentence_transformer(base_model, device=device), str(base_model or "all-MiniLM-L6-v2")


def _blend(
    model: SentenceTransformer,
    base_state: dict[str, Any] | None,
    validation: BlendValidation | None,
    config: HEALTrainingConfig,
    fixed_share: float,
    fallback_reason: str,
    show_progress_bar: bool,
) -> dict[str, Any] | None:
    """Blend the base weights into ``model``: the share chosen on the held-out ``validation``, else ``fixed_share``.

    Returns:
        ``heal_rag.json``'s ``blend_selection`` record; ``None`` for a share the user fixed.
    """
    if validation is not None and base_state is not None:
        return select_base_weight_share(
            model,
            base_state,
            validation,
            config.blend_candidate_shares,
            standard_errors=config.blend_standard_errors,
            show_progress_bar=show_progress_bar,
        ).as_dict()
    if base_state is not None:
        blend_with_base_weights(model, base_state, fixed_share)
    if config.base_weight_share == "auto":
        return {"share": fixed_share, "fallback": fallback_reason}
    return None


def _result(
    model: SentenceTransformer, output_dir: Path, metadata: dict[str, Any], train_output: Any
) -> FineTuneResult:
    """The :class:`FineTuneResult` of a finished run, from the trainer's ``TrainOutput``."""
    return FineTuneResult(
        model=model,
        output_dir=output_dir,
        metadata=metadata,
        train_loss=float(train_output.training_loss),
        train_runtime_s=float(train_output.metrics.get("train_runtime", float("nan"))),
        global_steps=int(train_output.global_step),
    )


def _train(
    model: SentenceTransformer,
    rows: TrainingRows,
    config: HEALTrainingConfig,
    checkpoints: Path | None,
    checkpoint_steps: int,
    resume_from_checkpoint: str | bool | None,
    run_record: Mapping[str, Any] | None,
    training_args: Mapping[str, Any] | None,
    show_progress_bar: bool,
) -> Any:
    """Run ``SentenceTransformerTrainer`` with the HEAL loss and sampler; returns the trainer's ``TrainOutput``.

    Each checkpoint gets ``run_record`` (:func:`heal_rag.checkpoints.run_record`) beside the trainer's files.
    """
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from heal_rag.checkpoints import RunRecordCallback
    from heal_rag.losses import HEALLoss
    from heal_rag.sampler import HierarchicalBatchSampler, SamplerEpochCallback

    loss = HEALLoss(
        model,
        temperature=config.temperature,
        level_weights=config.level_weights,
        schedule_alpha=config.schedule_alpha,
        query_document_weight=config.query_document_weight,
        consistency_weight=config.consistency_weight,
        consistency_margin=config.consistency_margin,
        pair_loss=config.pair_loss,
        pair_temperature=config.pair_temperature,
        hierarchy_views=config.hierarchy_views,
        pair_level_discount=config.pair_level_discount,
        symmetric_pairs=config.symmetric_pairs,
        pair_negatives=config.pair_negatives,
        query_hierarchy_weight=config.query_hierarchy_weight,
        gather_across_devices=config.gather_across_devices,
    )
    steps_hint = config.max_steps or max(1, int(config.epochs * len(rows) / config.batch_size))
    args_kwargs: dict[str, Any] = {
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps if config.max_steps is not None else -1,
        "per_device_train_batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "warmup_steps": config.warmup_ratio,
        "seed": config.seed,
        "data_seed": config.seed,
        "batch_sampler": partial(
            HierarchicalBatchSampler,
            n_levels=rows.n_levels,
            samples_per_leaf=config.samples_per_leaf,
            leaves_per_parent=config.leaves_per_parent,
            # with a source level, batches are built on the user's leaves; chunks of one document stay together
            leaf_level=rows.leaf_column,
            keep_together_level=-1 if rows.source_level else None,
        ),
        "prompts": _training_prompts(model, config.hard_negatives) or None,
        "logging_steps": max(1, steps_hint // 10),
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": not show_progress_bar,
        "dataloader_drop_last": False,
        "dataloader_pin_memory": torch.cuda.is_available(),
    }
    if checkpoints is not None:
        args_kwargs.update(save_strategy="steps", save_steps=checkpoint_steps, save_total_limit=2)
    if get_world_size() > 1 and not torch.cuda.is_available():
        # accelerate treats a CPU-only torchrun launch as one process per copy unless told to use the CPU, and
        # every rank would then train alone on all the data: use_cpu makes it one gloo process group
        args_kwargs["use_cpu"] = True
    args_kwargs.update(training_args or {})
    with tempfile.TemporaryDirectory(prefix="heal_rag-trainer-") as scratch:
        args_kwargs["output_dir"] = str(checkpoints) if checkpoints is not None else scratch
        with _quiet_logger("sentence_transformers.base.training_args", get_world_size() > 1):
            args = SentenceTransformerTrainingArguments(**args_kwargs)
        if "dataloader_drop_last" not in (training_args or {}):
            # sentence-transformers turns drop_last on under DDP so that no rank waits on an uneven last batch;
            # HierarchicalBatchSampler already deals every rank the same number of batches, and keeps every row
            args.dataloader_drop_last = False
        # Quiet means quiet: without progress bars the trainer would print its loss logs instead (PrinterCallback)
        # and the model card its widget examples; both go.
        with contextlib.redirect_stderr(io.StringIO()) if not show_progress_bar else contextlib.nullcontext():
            trainer = SentenceTransformerTrainer(
                model=model,
                args=args,
                train_dataset=Dataset.from_dict(rows.columns),
                loss=loss,
                callbacks=[SamplerEpochCallback(), *([RunRecordCallback(run_record)] if run_record else [])],
            )
        if not show_progress_bar:
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        return trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)


@contextlib.contextmanager
def _quiet_logger(name: str, quiet: bool) -> Any:
    """Silence one library logger's warnings for a moment (a warning about a setting heal_rag then changes back)."""
    logger = logging.getLogger(name)
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _training_prompts(model: SentenceTransformer, hard_negatives: int = 0) -> dict[str, str]:
    """The model's own query and document prompts, keyed by the training columns they apply to.

    Serving goes through ``encode_query`` / ``encode_document``, which prepend these prompts; training with them
    too means the tuned model sees the same inputs in both (e.g. ``"query: "`` / ``"passage: "`` for e5 models).
    The columns ``negative_1 ... negative_{hard_negatives}`` are documents and get the document prompt.
    """
    prompts = getattr(model, "prompts", None) or {}
    document_prompt = next((prompts[name] for name in ("document", "passage", "corpus") if name in prompts), "")
    columns = [("query", prompts.get("query", "")), ("document", document_prompt)]
    columns += [(f"negative_{j + 1}", document_prompt) for j in range(hard_negatives)]
    return {column: prompt for column, prompt in columns if prompt}


def _with_hard_negatives(
    model: SentenceTransformer, rows: TrainingRows, hard_negatives: int, show_progress_bar: bool
) -> TrainingRows:
    """``rows`` with ``negative_1 ... negative_k`` columns: each query's nearest documents of other leaves.

    ``model`` is the base model, before training; the documents are the rows' own (as the rows show them, so none
    held out for the blend's choice), one per distinct text. With a source-document level the leaf is the user's,
    one level up: the other chunks of a query's topic are never its negatives. Each label row gets the negatives'
    label ids after its own (see :class:`heal_rag.HEALLoss`), so the loss treats a negative as the document it is.
    Under a launcher rank 0 alone mines and hands every rank its negatives (GPUs may differ in the last bit and would
    otherwise pick different ones).

    Raises:
        ValueError: When a query has fewer than ``hard_negatives`` documents outside its leaf.
    """
    from heal_rag import negatives

    n_ids = rows.n_levels + 1  # the levels, then the document key
    ids = np.rint(np.asarray(rows.columns["label"], dtype=np.float64)[:, :n_ids]).astype(np.int64)
    user_levels = rows.leaf_column + 1
    first_row_of: dict[str, int] = {}
    for row, text in enumerate(rows.columns["document"]):
        first_row_of.setdefault(text, row)
    texts, document_rows = list(first_row_of), list(first_row_of.values())
    encode = {"batch_size": 64, "normalize_embeddings": True, "show_progress_bar": show_progress_bar}
    mined = broadcast_from_main_process(
        lambda: negatives.mine_other_leaf_negatives(
            np.asarray(model.encode_query(rows.columns["query"], **encode)),
            np.asarray(model.encode_document(texts, **encode)),
            ids[:, :user_levels],
            ids[document_rows, :user_levels],
            hard_negatives,
            query_keys=[first_row_of[text] for text in rows.columns["document"]],  # a text's key: its first row
            document_keys=document_rows,
        )
    )
    negative_ids = ids[np.asarray(document_rows)[mined]].reshape(len(rows), -1)  # (rows, k · n_ids)
    labels = [[*label, *extra] for label, extra in zip(rows.columns["label"], negative_ids.tolist(), strict=True)]
    columns = {name: values for name, values in rows.columns.items() if name != "label"}
    return replace(rows, columns={**columns, **negatives.negative_columns(texts, mined), "label": labels})


def _embed_documents(
    model: SentenceTransformer, documents: Sequence[str], show_progress_bar: bool, batch_size: int = 64
) -> np.ndarray:
    """The saved model's normalised document vectors (for the label centroids and the reranker's choice)."""
    announce(
        f"computing label centroids on {len(documents)} documents: {estimate_encoding(model, documents)}",
        show_progress_bar,
    )
    return np.asarray(
        model.encode_document(
            list(documents), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=show_progress_bar
        )
    )


def _choose_reranker(
    model: SentenceTransformer,
    validation: BlendValidation,
    labels: LabelPaths,
    document_embeddings: np.ndarray,
    centroids: list[np.ndarray],
) -> dict[str, Any]:
    """The reranker's settings for this model, chosen on the held-out queries.

    See :func:`heal_rag.rerank.choose_settings`; the held-out documents' vectors are reused, only queries are embedded.
    """
    from heal_rag.rerank import choose_settings

    queries = np.asarray(model.encode_query(validation.queries, normalize_embeddings=True, show_progress_bar=False))
    corpus = validation.corpus_documents
    return choose_settings(
        queries, document_embeddings[corpus], validation.gold, labels.level_ids()[corpus], centroids
    )


def _check_rows_against_config(rows: TrainingRows, config: HEALTrainingConfig) -> None:
    """Settings that depend on the labels, checked before any model is loaded."""
    from heal_rag.losses import level_weight_schedule

    try:
        weights = level_weight_schedule(rows.n_levels, config.level_weights, config.schedule_alpha)
    except ValueError as exc:
        extra = " (the source-document level included)" if rows.source_level else ""
        raise ValueError(f"{exc}{extra}") from None
    if not rows.paired and not any(weights) and config.consistency_weight == 0:
        raise ValueError("Every level weight is 0 and there are no queries: there is nothing to train.")
    if config.hard_negatives == "auto":
        return  # resolved after the hold-out, to what the rows allow (_negatives_per_query)
    if config.hard_negatives and not rows.paired:
        raise ValueError(
            f"hard_negatives={config.hard_negatives} needs queries (they are mined per query): give queries or a "
            "query generator, or set hard_negatives=0."
        )
    if config.hard_negatives:
        outside = _documents_outside_largest_leaf(rows)
        if outside < config.hard_negatives:
            raise ValueError(
                f"hard_negatives={config.hard_negatives} needs that many training documents outside each query's "
                f"leaf, and the largest leaf has only {outside} outside it: set hard_negatives={outside} or lower, "
                "or train on documents from more leaves."
            )


def _documents_outside_largest_leaf(rows: TrainingRows) -> int:
    """Distinct training documents outside the leaf that holds the most: every query's least choice of negatives."""
    labels, leaf = rows.columns["label"], rows.leaf_column
    leaf_of_text = {text: round(row[leaf]) for text, row in zip(rows.columns["document"], labels, strict=True)}
    return len(leaf_of_text) - max(Counter(leaf_of_text.values()).values())


def _negatives_per_query(rows: TrainingRows, config: HEALTrainingConfig) -> int:
    """The hard negatives each query gets: ``config.hard_negatives``, or what ``"auto"`` resolves to on ``rows``.

    ``"auto"``: :data:`AUTO_HARD_NEGATIVES`, at most the distinct documents outside the largest leaf, and 0 without
    paired rows or with ``pair_loss="supcon"`` (the negatives join the ranking form only).
    """
    if config.hard_negatives != "auto":
        return int(config.hard_negatives)
    if not rows.paired or config.pair_loss != "ranking":
        return 0
    return min(AUTO_HARD_NEGATIVES, _documents_outside_largest_leaf(rows))


def _warn_truncated(model: SentenceTransformer, documents: Sequence[str], max_seq_length: int | None) -> None:
    """Warn once, with the count, when training documents are longer than the training token limit."""
    from heal_rag.encoder import TruncationWarning, count_truncated

    truncated = count_truncated(model, documents, "document")
    if truncated:
        warnings.warn(
            f"{truncated} of {len(documents)} training documents are longer than max_seq_length="
            f"{max_seq_length or getattr(model, 'max_seq_length', None)} tokens; training sees their beginning only. "
            "Split long documents into chunks (fine_tune_documents, or heal-rag train --data DIR, chunk for you).",
            TruncationWarning,
            stacklevel=3,
        )


def _spread(model: SentenceTransformer, documents: Sequence[str]) -> tuple[np.ndarray, float]:
    """Embeddings of a sample of ``documents`` and how different they are (1 - the largest pairwise cosine)."""
    sample = list(dict.fromkeys(documents))[:16]
    embeddings = np.asarray(model.encode_document(sample, convert_to_numpy=True, show_progress_bar=False))
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1), 1e-12)[:, None]
    cosines = (unit @ unit.T)[~np.eye(len(sample), dtype=bool)]
    return embeddings, 1.0 - float(cosines.max()) if cosines.size else 1.0


def _check_trained_model(model: SentenceTransformer, documents: Sequence[str], base_spread: float) -> None:
    """Refuse to save a model whose training diverged: non-finite weights, or embeddings that collapsed.

    Collapse means the tuned model gives (nearly) one embedding to documents the base model told apart
    (``base_spread``, see :func:`_spread`).

    Raises:
        heal_rag.losses.TrainingDivergedError: Naming what went wrong; nothing is saved.
    """
    import torch

    from heal_rag.losses import NonFiniteLossError, TrainingDivergedError

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteLossError(
                f"Training left non-finite values in {name!r}; the model is not saved. Lower learning_rate or "
                "check the settings and data."
            )
    embeddings, spread = _spread(model, documents)
    collapsed = base_spread > 1e-3 and spread < 1e-5
    norms = np.linalg.norm(embeddings, axis=1)
    if not np.isfinite(embeddings).all() or float(norms.min(initial=1.0)) < 1e-6 or collapsed:
        raise TrainingDivergedError(
            "Training diverged: the tuned model gives "
            + ("zero or non-finite embeddings" if not collapsed else "the same embedding to different texts")
            + "; the model is not saved. Lower learning_rate (default 2e-4)."
        )


def _hold_out_for_share_choice(
    rows: TrainingRows, documents: Sequence[str], config: HEALTrainingConfig
) -> tuple[TrainingRows, BlendValidation | None, str]:
    """For ``base_weight_share="auto"``: the rows to train on, the held-out pairs, or why there are none.

    Falls back (no validation pairs, every row trained on, the reason returned) when there are no queries or fewer
    than ``config.blend_min_validation_queries`` would be held out; a bad ``blend_validation_fraction`` still raises.
    """
    if not rows.paired:
        reason = "no queries (none given and query_generator=None)"
    else:
        try:
            kept_rows, validation = hold_out_pairs(
                rows.document_indices,
                rows.columns["query"],
                rows.document_texts or documents,  # as trained: a key sentence is not found in its own text
                config.blend_validation_fraction,
                config.seed,
            )
        except HoldOutTooSmallError as exc:
            reason = str(exc)
        else:
            if len(validation.queries) >= config.blend_min_validation_queries:
                return rows.subset(kept_rows), validation, ""
            reason = (
                f"only {len(validation.queries)} held-out queries (blend_min_validation_queries="
                f"{config.blend_min_validation_queries})"
            )
    logger.info(
        "base_weight_share='auto' keeps %g without choosing: %s. Give more documents with queries to let it "
        "choose, or set base_weight_share to a number.",
        config.blend_fallback_share,
        reason,
    )
    return rows, None, reason


def _check_base_weight_share(config: HEALTrainingConfig) -> bool:
    """``True`` when the share is to be chosen (``"auto"``); the candidates must not be empty.

    The ranges themselves are checked by :class:`HEALTrainingConfig` when it is built.
    """
    if config.base_weight_share == "auto":
        check_candidate_shares(config.blend_candidate_shares)
        return True
    return False


def save_heal_model(
    model: SentenceTransformer,
    output_dir: str | os.PathLike[str],
    *,
    documents: Sequence[str],
    labels: LabelPaths,
    base_model: str,
    training: dict[str, Any],
    label_names: Mapping[str, str] | None = None,
    batch_size: int = 64,
    show_progress_bar: bool = False,
    overwrite: bool = False,
    centroids: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Save ``model`` as a plain sentence-transformers directory plus ``heal_rag.json``, atomically.

    The label centroids are computed from ``documents`` embedded with the saved model.

    Args:
        model: The model to save.
        output_dir: New, empty, or an earlier heal_rag model directory (replaced only with ``overwrite=True``).
        documents: Texts whose embeddings give the label centroids.
        labels: Their label paths.
        base_model: Name recorded as the base model.
        training: Settings recorded in ``heal_rag.json``.
        label_names: Readable label names.
        batch_size: Encoding batch size for the centroids.
        show_progress_bar: Progress bar while encoding.
        overwrite: Replace an earlier heal_rag model directory.
        centroids: The label centroids, when the caller computed them (else from ``documents``).

    Returns:
        The ``heal_rag.json`` payload.

    Raises:
        heal_rag.outputs.OutputPathError: When ``output_dir`` may not be written.
    """
    prepare_output_dir(output_dir, overwrite=overwrite, what="Model directory", kind="model")
    if centroids is None:
        centroids = label_centroids(_embed_documents(model, documents, show_progress_bar, batch_size), labels)
    with atomic_directory(output_dir, overwrite=overwrite, kind="model", managed=[EXPORT_DIR]) as staging:
        model.save(str(staging))
        metadata = build_metadata(
            labels=labels,
            centroids=centroids,
            fingerprint=model_fingerprint(staging),
            base_model=base_model,
            embedding_dimension=int(model.get_embedding_dimension()),
            similarity_fn_name=str(model.similarity_fn_name or "cosine"),
            training=training,
            label_names=label_names,
        )
        write_json_atomic(staging / METADATA_FILE, metadata)
    return metadata
