"""Retrieval and classification quality: HEAL against the baselines a team would try first, on real data.

Datasets (read from ../shared/data; a missing one is skipped):

- ``arxiv``: arxiv_oai, title → abstract, 3 levels (group → archive → category).
- ``20newsgroups``: subject → body, 2 levels (group → newsgroup).
- ``medquad``: question → answer, 2 levels (collection → focus); sampled by source document so that a focus
  keeps its question–answer pairs together.

Each dataset is cut to a deterministic sample by hashed id (``--train-docs`` training documents, ``--test-docs``
held-out ones). Every method sees the same base model, training documents and queries, step budget, batch size,
warm-up, token limit and seed; MNRL and flat SupCon train at ``--learning-rate`` (1e-4, MNRL's better choice),
HEAL at its recipe's (``fine_tune``'s default, or ``--heal learning_rate=...``):

- ``untouched``: the base model.
- ``bm25``: bm25s (Lucene BM25, English stop words) over the held-out documents.
- ``mnrl``: MultipleNegativesRankingLoss on (query, document) pairs, batches without duplicates: what
  sentence-transformers users do today.
- ``llamaindex``: LlamaIndex's ``SentenceTransformersFinetuneEngine`` (``llama-index-finetuning``) on the same
  pairs with its defaults (MNRL, lr 2e-5, 10 % warm-up, duplicates allowed in a batch) except batch size and length,
  set to the shared budget: what LlamaIndex users do today (see ``baselines.py``).
- ``supcon``: flat supervised contrastive loss on the leaf labels of the documents (HEALLoss with one level).
- ``heal``: ``heal_rag.fine_tune`` with its defaults (override with ``--heal key=value``).

Retrieval: each held-out document's query against the held-out documents; metrics from
:mod:`heal_rag.evaluation`. Classification: each held-out document's path predicted by a 10-NN vote over the
training documents in the method's embedding space.

    python benchmarks/quality.py [--datasets arxiv 20newsgroups medquad] [--steps 100] [--seeds 42 1 2]
    python benchmarks/quality.py --datasets arxiv --methods heal --heal level_weights=uniform --tag uniform
    python benchmarks/quality.py --heal-labels hnmfk-2 --tag hnmfk   # HEAL on labels HNMFk discovers

``--heal-labels hnmfk-N`` trains HEAL on the label paths HNMFk (depth N, fitted on the training texts alone)
discovers instead of the dataset's own; every score is still taken against the true hierarchy. As the CLI and the
demo do with discovered labels, HEAL then trains with ``heal_rag.training.DISCOVERED_LABELS_SETTINGS`` (fixed
share 0.4, query↔document weight 6, hierarchy τ 0.2) where ``--heal`` does not set them.

After each table comes HEAL minus every other method: the mean per-query difference of nDCG@10, MRR@10, leaf
hierarchical precision@10 and off-topic@5 with a 95 % paired bootstrap interval over the held-out queries. With
several ``--seeds`` every trained method runs once per seed; tables show mean ±sd over seeds and the comparison
uses each query's score averaged over seeds.

Runs are cached under runs/quality (embeddings and rankings), so a table can be rebuilt without retraining.
Prints one table per dataset and writes benchmarks/results/quality.json (or quality-<tag>.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import baselines  # noqa: E402
import blend_shares  # noqa: E402
import numpy as np  # noqa: E402
from shared import SHARED_DATA as SHARED  # noqa: E402
from shared import parse_overrides  # noqa: E402

from heal_rag.artifacts import write_json_atomic  # noqa: E402
from heal_rag.data import hashed_split  # noqa: E402
from heal_rag.evaluation import (  # noqa: E402
    RetrievalReport,
    format_paired,
    hierarchical_classification_report,
    knn_predict_level_ids,
    paired_difference,
    per_query_scores,
    top_k_indices,
)
from heal_rag.evaluation.report import bm25_rankings  # noqa: E402
from heal_rag.labels import LabelPaths  # noqa: E402
from heal_rag.training import DISCOVERED_LABELS_SETTINGS, HEALTrainingConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).resolve().parents[1] / "runs" / "quality"
METHODS = ("untouched", "bm25", "mnrl", "llamaindex", "supcon", "heal")
TRAINED_METHODS = ("mnrl", "llamaindex", "supcon", "heal")
DEFAULT_SIZES = (2000, 600)
# The columns of the HEAL − baseline comparison (per-query paired bootstrap); "leaf" is the deepest level.
PAIRED_COLUMNS = ("nDCG@10", "MRR@10", "Recall@1", "hP@10/leaf", "off-topic@5")
RANK_DEPTH = 100
# The recipe settings an ablation varies, and where the sweep started (the defaults before issue 3).
RECIPE_KEYS = (
    "temperature",
    "level_weights",
    "schedule_alpha",
    "query_document_weight",
    "pair_loss",
    "pair_temperature",
    "hierarchy_views",
    "pair_level_discount",
    "symmetric_pairs",
    "pair_negatives",
    "query_hierarchy_weight",
    "consistency_weight",
    "consistency_margin",
    "samples_per_leaf",
    "leaves_per_parent",
    "learning_rate",
    "base_weight_share",
    "blend_validation_fraction",
    "blend_candidate_shares",
    "blend_min_validation_queries",
    "blend_fallback_share",
    "blend_standard_errors",
)
# Recipe keys added after the first cached runs: left out of the recipe (and so of the cache key) while they hold
# this value, so the runs cached before they existed stay valid.
LATER_KEYS = {
    "symmetric_pairs": False,
    "pair_negatives": "all",
    "query_hierarchy_weight": 1.0,
    "base_weight_share": 0.0,
    "blend_validation_fraction": 0.1,
    "blend_candidate_shares": [0.0, 0.2, 0.3, 0.4, 0.5, 0.6],
    "blend_min_validation_queries": 50,
    "blend_fallback_share": 0.4,
    "blend_standard_errors": 0.0,
}
SWEEP_START = {
    "temperature": 0.1,
    "level_weights": "deeper",
    "schedule_alpha": 1.0,
    "query_document_weight": 1.0,
    "pair_loss": "supcon",
    "pair_temperature": None,
    "hierarchy_views": "both",
    "pair_level_discount": 0.0,
    "symmetric_pairs": False,
    "pair_negatives": "all",
    "query_hierarchy_weight": 1.0,
    "consistency_weight": 0.0,
    "consistency_margin": 0.0,
    "samples_per_leaf": 4,
    "leaves_per_parent": 4,
    "learning_rate": 1e-4,
    "base_weight_share": 0.0,
}


@dataclass(frozen=True)
class DatasetSpec:
    """Where a shared dataset lives and which fields hold the query, the labels and the sampling group."""

    path: str
    query_field: str
    label_field: str
    group_field: str | None = None


DATASETS = {
    "arxiv": DatasetSpec("arxiv_oai/arxiv_oai_hier.jsonl", "title", "labels"),
    "20newsgroups": DatasetSpec("20newsgroups/20newsgroups.jsonl", "title", "labels"),
    "medquad": DatasetSpec("medquad/medquad_qa.jsonl", "question", "labels_tree", group_field="doc_id"),
}


@dataclass
class Split:
    """A dataset sample: training and held-out documents with queries and label paths."""

    name: str
    train_texts: list[str]
    train_queries: list[str]
    train_ids: list[str]
    train_labels: LabelPaths
    test_texts: list[str]
    test_queries: list[str]
    test_level_ids: np.ndarray
    train_level_ids: np.ndarray
    sizes: tuple[int, int] = DEFAULT_SIZES  # the requested (train, test) sample sizes
    test_paths: list[tuple[str, ...]] = field(default_factory=list)  # the held-out documents' label paths
    heal_labels: str = "true"  # "true", or "hnmfk-N": HEAL trains on labels HNMFk discovers at depth N


def _hash(value: str) -> int:
    return int.from_bytes(hashlib.sha1(f"quality:{value}".encode()).digest()[:8], "big")


def _clean_query(text: str) -> str:
    return re.sub(r"^(re:\s*)+", "", text.strip(), flags=re.IGNORECASE).strip()


def load_split(name: str, train_docs: int, test_docs: int) -> Split | None:
    """Deterministic sample of a shared dataset, or ``None`` when the file is absent."""
    spec = DATASETS[name]
    path = SHARED / spec.path
    if not path.is_file():
        print(f"[{name}] {path} not found: skipped", flush=True)
        return None
    records = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            query = _clean_query(str(record.get(spec.query_field) or ""))
            if query and record.get("text", "").strip():
                records.append(record | {"_query": query})
    # Sample whole groups in hashed order until there are enough documents, then split documents by hashed id.
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(str(record[spec.group_field]) if spec.group_field else record["id"], []).append(record)
    wanted = train_docs + test_docs
    sample: list[dict[str, Any]] = []
    for key in sorted(groups, key=_hash):
        sample.extend(groups[key])
        if len(sample) >= wanted * 1.05:
            break
    train_idx, test_idx = hashed_split([r["id"] for r in sample], test_fraction=test_docs / wanted)
    train = [sample[i] for i in train_idx][:train_docs]
    test = [sample[i] for i in test_idx][:test_docs]
    labels = LabelPaths([r[spec.label_field] for r in train + test])
    level_ids = labels.level_ids()
    return Split(
        name=name,
        train_texts=[r["text"] for r in train],
        train_queries=[r["_query"] for r in train],
        train_ids=[r["id"] for r in train],
        train_labels=labels.subset(range(len(train))),
        test_texts=[r["text"] for r in test],
        test_queries=[r["_query"] for r in test],
        test_level_ids=level_ids[len(train) :],
        train_level_ids=level_ids[: len(train)],
        sizes=(train_docs, test_docs),
        test_paths=[tuple(p) for p in labels.paths[len(train) :]],
    )


@dataclass(frozen=True)
class Budget:
    """What every trained method shares."""

    steps: int
    batch_size: int
    learning_rate: float
    warmup_ratio: float
    max_seq_length: int
    seed: int


def train_mnrl(split: Split, budget: Budget, output_dir: Path) -> Any:
    """The usual sentence-transformers fine-tune: MNRL on (query, document) pairs, no duplicates in a batch."""
    return baselines.train_mnrl(
        split.train_queries,
        split.train_texts,
        steps=budget.steps,
        batch_size=budget.batch_size,
        learning_rate=budget.learning_rate,
        warmup_ratio=budget.warmup_ratio,
        max_seq_length=budget.max_seq_length,
        seed=budget.seed,
        output_dir=output_dir,
    )


def train_llamaindex(split: Split, budget: Budget, output_dir: Path) -> Any:
    """LlamaIndex's stock embedding fine-tune on the same pairs, at the same steps and batch size."""
    return baselines.train_llamaindex_finetune(
        split.train_queries,
        split.train_texts,
        steps=budget.steps,
        batch_size=budget.batch_size,
        max_seq_length=budget.max_seq_length,
        seed=budget.seed,
        output_dir=output_dir / "model",
    )


def discovered_training_labels(split: Split) -> LabelPaths:
    """The training labels HEAL uses: the true ones, or HNMFk's from the training texts (``split.heal_labels``)."""
    if split.heal_labels == "true":
        return split.train_labels
    from heal_rag.hierarchy.discover import discover_labels

    _, labels = discover_labels(split.train_texts, max_depth=_hnmfk_depth(split.heal_labels), show_progress=False)
    return labels


def _hnmfk_depth(heal_labels: str) -> int:
    match = re.fullmatch(r"hnmfk-(\d+)", heal_labels)
    if match is None or int(match.group(1)) < 1:
        raise SystemExit(f"--heal-labels {heal_labels!r}: use 'true' or 'hnmfk-N' with a depth N >= 1.")
    return int(match.group(1))


def train_heal(split: Split, budget: Budget, output_dir: Path, overrides: dict[str, Any]) -> Any:
    """``heal_rag.fine_tune`` with its defaults and ``overrides``, on (query, document) pairs."""
    from heal_rag.models import set_max_seq_length
    from heal_rag.queries import Query
    from heal_rag.training import fine_tune

    result = fine_tune(
        split.train_texts,
        discovered_training_labels(split),
        ids=split.train_ids,
        queries=[Query(q, i) for q, i in zip(split.train_queries, split.train_ids, strict=True)],
        output_dir=output_dir / "model",
        **{**_budget_settings(budget, learning_rate=False), **overrides},
    )
    # fine_tune gives the model back at its deployed limit (256 tokens); score it at the budget's, like the others
    set_max_seq_length(result.model, budget.max_seq_length)
    return result.model, result.metadata["training"]


def train_supcon(split: Split, budget: Budget, output_dir: Path) -> Any:
    """Flat SupCon: documents only, leaf labels only (one level), the hierarchical sampler for positives."""
    from heal_rag.models import set_max_seq_length
    from heal_rag.training import fine_tune

    leaves = LabelPaths([[path[-1]] for path in split.train_labels.paths])
    result = fine_tune(
        split.train_texts,
        leaves,
        ids=split.train_ids,
        query_generator=None,
        output_dir=output_dir / "model",
        level_weights="uniform",
        **_budget_settings(budget),
    )
    set_max_seq_length(result.model, budget.max_seq_length)  # scored at the budget's limit, like every method
    return result.model


def _budget_settings(budget: Budget, learning_rate: bool = True) -> dict[str, Any]:
    """``fine_tune`` settings of the shared budget; HEAL leaves out the learning rate (its recipe has its own)."""
    return {
        "max_steps": budget.steps,
        "batch_size": budget.batch_size,
        **({"learning_rate": budget.learning_rate} if learning_rate else {}),
        "warmup_ratio": budget.warmup_ratio,
        "max_seq_length": budget.max_seq_length,
        "seed": budget.seed,
        "show_progress_bar": False,
    }


def embed(model: Any, split: Split) -> dict[str, np.ndarray]:
    """Normalised embeddings of held-out queries and documents and of the training documents."""
    kwargs = {"batch_size": 64, "normalize_embeddings": True, "convert_to_numpy": True}
    return {
        "queries": model.encode_query(split.test_queries, **kwargs),
        "documents": model.encode_document(split.test_texts, **kwargs),
        "train_documents": model.encode_document(split.train_texts, **kwargs),
    }


CURVE_COLUMNS = ("nDCG@10", "MRR@10", "Recall@1", "hP@10/leaf", "off-topic@5")


def blend_curve(model: Any, split: Split, selection: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Held-out retrieval at every share ``base_weight_share="auto"`` tried, beside the validation MRR it chose by.

    Returns:
        ``{share: {"validation MRR@10": ..., column: held-out value, ...}}`` for every candidate share.
    """
    kwargs = {"batch_size": 64, "normalize_embeddings": True, "convert_to_numpy": True}
    validation = selection["validation_mrr@10"]
    curve = {}
    for share in blend_shares.at_shares(model, float(selection["share"]), [float(k) for k in validation]):
        key = f"{share:g}"
        ranked = top_k_indices(
            model.encode_query(split.test_queries, **kwargs),
            model.encode_document(split.test_texts, **kwargs),
            RANK_DEPTH,
        )
        retrieval, _ = score(split, ranked, {})
        curve[key] = {"validation MRR@10": validation[key]} | {
            c: _value({"r": retrieval}, c, "r") for c in CURVE_COLUMNS
        }
        print(f"[{split.name}] share {key}: {json.dumps(curve[key])}", flush=True)
    return curve


def retrieval_per_query(split: Split, ranked: np.ndarray) -> dict[str, np.ndarray]:
    """Every retrieval metric per held-out query (each query's own document is its gold; k 10, context 5)."""
    return per_query_scores(
        ranked,
        np.arange(len(split.test_texts)),
        split.test_level_ids,
        split.test_level_ids,
        k=10,
        recall_at=(1, 10),
        context_k=5,
    )


def precision_ceiling(level_ids: np.ndarray, k: int = 10) -> list[float]:
    """The highest hP@k each level allows, since retrieval ranks only the held-out documents.

    Per query, ``min(k, held-out documents sharing its path down to the level) / k`` (its own document included),
    averaged over queries: a level of many small groups caps hP@k below 1 whatever the model does.

    Args:
        level_ids: ``(held-out documents, levels)`` label ids, one row per query's document.
        k: The cut-off of hP@k.

    Returns:
        One ceiling in [0, 1] per level, most general first.
    """
    ceilings = []
    for level in range(level_ids.shape[1]):
        _, inverse, counts = np.unique(level_ids[:, : level + 1], axis=0, return_inverse=True, return_counts=True)
        ceilings.append(float(np.minimum(counts[inverse.ravel()], k).mean() / k))
    return ceilings


def first_ranked_breakdown(split: Split, ranked: np.ndarray) -> dict[str, float]:
    """Where each query's first-ranked document comes from when it is not the gold, as shares of all queries.

    ``same leaf``: another document of the gold's leaf (a near sibling); ``same top``: of its top-level class;
    ``elsewhere``: anywhere else. Also the share of gold documents ranked 2–3, 4–10 and below 10.
    """
    gold = np.arange(len(split.test_texts))
    levels = split.test_level_ids
    first = ranked[:, 0]
    missed = first != gold
    same_leaf = missed & (levels[first, -1] == levels[gold, -1])
    same_top = missed & ~same_leaf & (levels[first, 0] == levels[gold, 0])
    hits = ranked == gold[:, None]
    rank = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.inf)  # not in the ranking: below every rank
    return {
        "gold first": float(np.mean(~missed)),
        "same leaf": float(np.mean(same_leaf)),
        "same top": float(np.mean(same_top)),
        "elsewhere": float(np.mean(missed & ~same_leaf & ~same_top)),
        "gold at 2-3": float(np.mean((rank >= 2) & (rank <= 3))),
        "gold at 4-10": float(np.mean((rank >= 4) & (rank <= 10))),
        "gold below 10": float(np.mean(rank > 10)),
    }


def score(
    split: Split, ranked: np.ndarray, arrays: dict[str, np.ndarray]
) -> tuple[dict[str, float], dict[str, float]]:
    """Retrieval metrics of ``ranked`` and, given embeddings (see :func:`embed`), 10-NN path prediction metrics."""
    per_query = retrieval_per_query(split, ranked)
    retrieval = RetrievalReport.from_per_query(per_query, k=10, recall_at=(1, 10), context_k=5).as_dict()
    classification: dict[str, float] = {}
    if arrays:
        predicted = knn_predict_level_ids(arrays["documents"], arrays["train_documents"], split.train_level_ids, k=10)
        classification = hierarchical_classification_report(predicted, split.test_level_ids).as_dict()
    return retrieval, classification


def run_method(
    split: Split,
    method: str,
    budget: Budget,
    overrides: dict[str, Any],
    refresh: bool = False,
    with_blend_curve: bool = False,
) -> tuple[dict[str, Any], np.ndarray]:
    """Train (if needed), embed, rank and score one method; cached by its settings.

    With ``with_blend_curve``, a HEAL run that chose its blend share also scores every candidate share on the
    held-out queries (see :func:`blend_curve`; computed when the run is trained, so pass ``refresh`` for a cached one).

    Returns the result and the ``(queries, RANK_DEPTH)`` rankings.
    """
    from heal_rag.models import load_sentence_transformer, set_max_seq_length

    if method == "heal" and split.heal_labels != "true":  # as the CLI and the demo do with discovered labels
        overrides = {**DISCOVERED_LABELS_SETTINGS, **overrides}
    key_payload = {"method": method, "budget": budget.__dict__, "overrides": {}}
    if method == "heal":
        key_payload["overrides"] = heal_recipe(overrides)
        if split.heal_labels != "true":  # left out for the true labels so older caches stay valid
            key_payload["heal_labels"] = split.heal_labels
    if method in ("heal", "supcon"):  # scored at the budget's limit since fine_tune keeps the deployed one (256)
        key_payload["scored_at_training_limit"] = True
    if method == "untouched":
        key_payload = {"method": method, "max_seq_length": budget.max_seq_length}
    elif method == "bm25":
        key_payload = {"method": method}
    if split.sizes != DEFAULT_SIZES:  # the default sample is left out of the key so older caches stay valid
        key_payload["sizes"] = list(split.sizes)
    key = hashlib.sha1(json.dumps(key_payload, sort_keys=True).encode()).hexdigest()[:10]
    cache_dir = CACHE / split.name / f"{method}-{key}"
    result_path = cache_dir / "result.json"
    if result_path.is_file() and not refresh:
        return json.loads(result_path.read_text()), np.load(cache_dir / "ranked.npy")

    started = time.perf_counter()
    train_seconds = 0.0
    heal_config: dict[str, Any] = {}
    curve: dict[str, dict[str, float]] = {}
    arrays: dict[str, np.ndarray] = {}
    if method == "bm25":
        ranked = bm25_rankings(split.test_texts, split.test_queries, RANK_DEPTH)
    else:
        with tempfile.TemporaryDirectory(prefix=f"quality-{method}-") as scratch:
            trainers: dict[str, Callable[[], Any]] = {
                "mnrl": lambda: train_mnrl(split, budget, Path(scratch)),
                "llamaindex": lambda: train_llamaindex(split, budget, Path(scratch)),
                "supcon": lambda: train_supcon(split, budget, Path(scratch)),
                "heal": lambda: train_heal(split, budget, Path(scratch), overrides),
            }
            if method == "untouched":
                model = load_sentence_transformer(None)
                set_max_seq_length(model, budget.max_seq_length)
            else:
                model = trainers[method]()
                if method == "heal":
                    model, heal_config = model
                train_seconds = time.perf_counter() - started
            arrays = embed(model, split)
            if (
                with_blend_curve
                and method == "heal"
                and "validation_mrr@10" in (heal_config.get("blend_selection") or {})
            ):
                curve = blend_curve(model, split, heal_config["blend_selection"])
        ranked = top_k_indices(arrays["queries"], arrays["documents"], RANK_DEPTH)
    retrieval, classification = score(split, ranked, arrays)
    result = {
        "method": method,
        "settings": key_payload,
        "retrieval": retrieval,
        "classification": classification,
        "heal_config": heal_recipe(heal_config) if method == "heal" else {},
        "blend_selection": heal_config.get("blend_selection"),  # base_weight_share="auto": what it chose
        **({"blend_curve": curve} if curve else {}),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache_dir / "ranked.npy", ranked)
    for name, values in arrays.items():
        np.save(cache_dir / f"{name}.npy", values.astype(np.float32))
    write_json_atomic(result_path, result)
    return result, ranked


TABLE_COLUMNS = (
    ("nDCG@10", "retrieval"),
    ("MRR@10", "retrieval"),
    ("Recall@1", "retrieval"),
    ("hP@10/leaf", "retrieval"),
    ("off-topic@5", "retrieval"),
    ("context-miss@5", "retrieval"),
    ("acc/leaf", "classification"),
    ("hF1", "classification"),
)


# Columns that stand for the deepest level of a per-level metric.
LEAF_COLUMNS = {"hP@10/leaf": "hP@10/L", "acc/leaf": "acc/L"}


def _value(result: dict[str, Any], column: str, section: str) -> float | None:
    values = result[section]
    prefix = LEAF_COLUMNS.get(column)
    if prefix is None:
        return values.get(column)
    levels = [int(key[len(prefix) :]) for key in values if key.startswith(prefix)]
    return values[f"{prefix}{max(levels)}"] if levels else None


def _cells(result: dict[str, Any]) -> list[str]:
    """The table cells of one result, in TABLE_COLUMNS order ("–" where the method has no such metric).

    A result averaged over seeds shows ``mean ±sd``.
    """
    cells = []
    for column, section in TABLE_COLUMNS:
        value = _value(result, column, section)
        spread = _value({section: result[f"{section}_sd"]}, column, section) if f"{section}_sd" in result else None
        cell = "–" if value is None else f"{value:.4f}"
        cells.append(cell if spread is None else f"{cell} ±{spread:.4f}")
    return cells


def format_table(name: str, results: dict[str, dict[str, Any]], n_test: int) -> str:
    """Markdown table: one row per method."""
    header = "| method | " + " | ".join(c for c, _ in TABLE_COLUMNS) + " | train s |"
    lines = [f"{name} ({n_test} held-out queries)", header, "|---" + "|---:" * (len(TABLE_COLUMNS) + 1) + "|"]
    for method, result in results.items():
        lines.append(f"| {method} | " + " | ".join(_cells(result)) + f" | {result['train_seconds']:.0f} |")
    return "\n".join(lines)


# The evaluation issue's targets for HEAL: (column, section, direction, methods it must beat).
TARGETS = (
    ("nDCG@10", "retrieval", "higher", ("untouched", "bm25", "mnrl", "llamaindex")),
    ("MRR@10", "retrieval", "higher", ("untouched", "bm25", "mnrl", "llamaindex")),
    ("Recall@1", "retrieval", "higher", ("mnrl", "llamaindex")),
    ("hP@10/leaf", "retrieval", "higher", ("untouched", "bm25", "mnrl", "llamaindex")),
    ("off-topic@5", "retrieval", "lower", ("untouched", "bm25", "mnrl", "llamaindex")),
    ("acc/leaf", "classification", "higher", ("untouched",)),
    ("hF1", "classification", "higher", ("untouched",)),
)


def target_check(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of HEAL against each baseline present: ``{column, versus, heal, other, gap, met}``.

    ``gap`` is HEAL minus the baseline, signed so that a positive gap is good for HEAL.
    """
    rows = []
    for column, section, direction, rivals in TARGETS:
        heal = _value(results["heal"], column, section) if "heal" in results else None
        for rival in rivals:
            other = _value(results[rival], column, section) if rival in results else None
            if heal is None or other is None:
                continue
            gap = heal - other if direction == "higher" else other - heal
            rows.append({"column": column, "versus": rival, "heal": heal, "other": other, "gap": gap, "met": gap > 0})
    return rows


def format_target_check(rows: list[dict[str, Any]]) -> str:
    """One line: how many targets HEAL meets, and the missed ones with their gaps."""
    missed = [f"{r['column']} vs {r['versus']} ({r['gap']:+.4f})" for r in rows if not r["met"]]
    met = sum(r["met"] for r in rows)
    return f"targets met: {met}/{len(rows)}" + (f"; missed: {', '.join(missed)}" if missed else "")


def paired_comparison(split: Split, rankings: dict[str, list[np.ndarray]]) -> dict[str, dict[str, dict[str, float]]]:
    """HEAL minus each other method on the same held-out queries: ``{method: {column: difference}}``.

    Each difference is the mean per-query difference with a 95 % paired bootstrap interval
    (:func:`heal_rag.evaluation.retrieval.paired_difference`), so a gap can be told apart from noise. A method
    trained with several seeds counts each query's score averaged over the seeds.
    """

    def scores(ranked_per_seed: list[np.ndarray]) -> dict[str, np.ndarray]:
        per_seed = [{"retrieval": retrieval_per_query(split, ranked)} for ranked in ranked_per_seed]
        return {
            column: np.mean([_value(values, column, "retrieval") for values in per_seed], axis=0)
            for column in PAIRED_COLUMNS
        }

    heal = scores(rankings["heal"])
    out = {}
    for method, ranked in rankings.items():
        if method != "heal":
            other = scores(ranked)
            out[method] = {c: paired_difference(heal[c], other[c]).as_dict() for c in PAIRED_COLUMNS}
    return out


def format_comparison(comparison: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table of :func:`paired_comparison`: mean difference and its 95 % interval per cell."""
    lines = ["| HEAL − | " + " | ".join(PAIRED_COLUMNS) + " |", "|---" + "|---:" * len(PAIRED_COLUMNS) + "|"]
    for method, cells in comparison.items():
        row = (format_paired(difference) for difference in cells.values())
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_breakdown(breakdown: dict[str, dict[str, float]]) -> str:
    """Markdown table of :func:`first_ranked_breakdown` per method (first seed)."""
    kinds = list(next(iter(breakdown.values())))
    lines = ["| first-ranked | " + " | ".join(kinds) + " |", "|---" + "|---:" * len(kinds) + "|"]
    lines += [f"| {m} | " + " | ".join(f"{v[k]:.3f}" for k in kinds) + " |" for m, v in breakdown.items()]
    return "\n".join(lines)


def average_over_seeds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from the runs of several seeds: metric means, their standard deviations and the runs."""
    if len(results) == 1:
        return results[0]
    out = dict(results[0])
    for section in ("retrieval", "classification"):
        out[section] = {key: float(np.mean([r[section][key] for r in results])) for key in results[0][section]}
        out[f"{section}_sd"] = {key: float(np.std([r[section][key] for r in results])) for key in results[0][section]}
    out["seeds"] = [r["settings"]["budget"]["seed"] for r in results]
    out["per_seed"] = [{"retrieval": r["retrieval"], "classification": r["classification"]} for r in results]
    out["train_seconds"] = float(np.mean([r["train_seconds"] for r in results]))
    return out


def heal_recipe(settings: dict[str, Any]) -> dict[str, Any]:
    """The effective HEAL recipe: ``fine_tune`` defaults (learning rate included), then ``settings``."""
    recipe = {k: v for k, v in HEALTrainingConfig().as_dict().items() if k in RECIPE_KEYS}
    recipe.update({k: v for k, v in settings.items() if k in RECIPE_KEYS})
    for key, value in recipe.items():  # "2" on the command line and 2.0 in the defaults are the same recipe
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and key not in ("samples_per_leaf", "leaves_per_parent")
        ):
            recipe[key] = float(value)
    for key, neutral in LATER_KEYS.items():
        if recipe.get(key, neutral) == neutral:
            recipe.pop(key, None)
    return dict(sorted(recipe.items()))


def ablation_table(name: str, seed: int) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table of the cached HEAL runs on dataset ``name`` trained with ``seed`` (one row per settings).

    Only runs on the dataset's own labels and the default sample count (``--heal-labels`` and ``--train-docs`` runs
    would repeat a row's settings with other data).

    Returns the table and its rows.
    """
    rows = []
    for path in sorted((CACHE / name).glob("heal-*/result.json")):
        result = json.loads(path.read_text())
        settings = result["settings"]
        if settings["budget"]["seed"] == seed and "heal_labels" not in settings and "sizes" not in settings:
            rows.append(result)
    rows.sort(key=lambda r: r.get("heal_config", {}).get("query_document_weight", 0))
    header = "| HEAL settings (changes from the sweep start) | " + " | ".join(c for c, _ in TABLE_COLUMNS) + " |"
    lines = [header, "|---" + "|---:" * len(TABLE_COLUMNS) + "|"]
    for result in rows:
        config = result.get("heal_config", {})
        changed = {k: v for k, v in config.items() if SWEEP_START.get(k, v) != v}
        label = ", ".join(f"{k}={v}" for k, v in sorted(changed.items())) or "sweep start (pre-issue-3 defaults)"
        lines.append(f"| {label} | " + " | ".join(_cells(result)) + " |")
    return "\n".join(lines), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--train-docs", type=int, default=2000)
    parser.add_argument("--test-docs", type=int, default=600)
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps of every trained method")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    defaults = HEALTrainingConfig()
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=1e-4,
        help="of MNRL and flat SupCon (HEAL: its recipe's, --heal learning_rate=...)",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[defaults.seed],
        help="train every method once per seed; tables show means",
    )
    parser.add_argument("--heal", nargs="*", default=[], metavar="KEY=VALUE", help="HEALTrainingConfig overrides")
    parser.add_argument(
        "--heal-labels",
        default="true",
        help="labels HEAL trains on: 'true' (the dataset's) or 'hnmfk-N' (discovered by HNMFk at depth N)",
    )
    parser.add_argument("--tag", default="", help="suffix of the results file")
    parser.add_argument("--refresh", action="store_true", help="ignore cached runs")
    parser.add_argument(
        "--blend-curve",
        action="store_true",
        help="also score HEAL at every blend share 'auto' tried (held-out vs validation MRR; newly trained runs)",
    )
    parser.add_argument(
        "--ablation-table", action="store_true", help="only print the table of cached HEAL runs per dataset"
    )
    args = parser.parse_args()
    if args.ablation_table:
        payload = {}
        for name in args.datasets:
            table, rows = ablation_table(name, args.seeds[0])
            print(f"{name}\n{table}\n")
            payload[name] = rows
        write_json_atomic(RESULTS / "quality-ablations.json", payload)
        return

    budget = Budget(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_ratio=defaults.warmup_ratio,
        max_seq_length=args.max_seq_length,
        seed=args.seeds[0],
    )
    overrides = parse_overrides(args.heal)
    if args.heal_labels != "true":
        _hnmfk_depth(args.heal_labels)  # a bad value fails here, not after the baselines have run
    report: dict[str, Any] = {
        "budget": budget.__dict__,
        "seeds": args.seeds,
        "heal_overrides": overrides,
        "heal_labels": args.heal_labels,
        "datasets": {},
    }
    for name in args.datasets:
        split = load_split(name, args.train_docs, args.test_docs)
        if split is None:
            continue
        split.heal_labels = args.heal_labels
        ceiling = precision_ceiling(np.asarray(split.test_level_ids))
        print(
            f"[{name}] train {len(split.train_texts)}, held out {len(split.test_texts)}; "
            f"highest hP@10 the held-out documents allow, per level: {', '.join(f'{c:.4f}' for c in ceiling)}",
            flush=True,
        )
        results, rankings = {}, {}
        for method in args.methods:
            seeds = args.seeds if method in TRAINED_METHODS else args.seeds[:1]
            runs = [
                run_method(
                    split,
                    method,
                    replace(budget, seed=seed),
                    overrides,
                    refresh=args.refresh,
                    with_blend_curve=args.blend_curve,
                )
                for seed in seeds
            ]
            results[method] = average_over_seeds([result for result, _ in runs])
            rankings[method] = [ranked for _, ranked in runs]
            print(f"[{name}] {method}: {sum(r['total_seconds'] for r, _ in runs):.0f} s", flush=True)
        print(format_table(name, results, len(split.test_texts)), flush=True)
        breakdown = {method: first_ranked_breakdown(split, ranked[0]) for method, ranked in rankings.items()}
        print(format_breakdown(breakdown), flush=True)
        report["datasets"][name] = {
            "n_train": len(split.train_texts),
            "n_test": len(split.test_texts),
            "hP@10 ceiling": ceiling,
            **results,
            "first_ranked": breakdown,
        }
        if "heal" in results and len(results) > 1:
            targets = target_check(results)
            print(format_target_check(targets), flush=True)
            report["datasets"][name]["heal_targets"] = targets
        if "heal" in rankings and len(rankings) > 1:
            comparison = paired_comparison(split, rankings)
            print(
                f"\nHEAL minus each method, mean per-query difference [95 % paired bootstrap interval]\n"
                f"{format_comparison(comparison)}\n",
                flush=True,
            )
            report["datasets"][name]["heal_minus"] = comparison
    out = RESULTS / (f"quality-{args.tag}.json" if args.tag else "quality.json")
    write_json_atomic(out, report)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
