"""The user's path on real data: a folder tree → chunks → tune → index, against the untouched model and MNRL.

Folder trees are built from ../shared/data (outside the repository, written under runs/, never committed):

- 20 Newsgroups as ``<group>/<newsgroup>/<id>.txt``, the subject line first (queries: the subject);
- MedQuAD as ``<collection>/<focus>/<id>.md``, the question as the heading, the answer below (queries: the question);
- arXiv as ``<group>/<archive>/<category>/<id>.md``, the title as the heading, the abstract below (queries: the title).

Each dataset is cut by hashed document id into a training tree and a held-out tree (MedQuAD by source document, so a
focus keeps its question-answer pairs on one side). Every trained method starts from all-MiniLM-L6-v2 and gets the same
training chunks and queries, the same step budget (``--steps`` of batch 32, 128 tokens, seed 42):

- ``untouched``: the base model; ``bm25``: bm25s on the same chunks;
- ``mnrl``: MultipleNegativesRankingLoss on the (query, chunk) pairs HEAL trains on (lr 1e-4, its usual rate);
- ``llamaindex``: LlamaIndex's ``SentenceTransformersFinetuneEngine`` on the same pairs with its defaults except batch
  size and length (see ``baselines.py``);
- ``heal``: ``fine_tune_documents`` on the training folder with its defaults (source document as the finest level)
  and the ``--heal`` overrides; ``heal-defaults``: the same without the overrides, so a run can pair a proposed
  recipe with the defaults of the code that runs it (it lives where ``heal`` without overrides does, for ``--reuse``);
- ``heal-no-source``: the same without the source-document level (the ablation the issue asks for);
- ``heal-headings`` / ``heal-generator-free``: MedQuAD only, training queries from the headings (the default) or
  from key sentences alone (no headings), reported separately; ``heal-generator-free-defaults``: the latter without
  the ``--heal`` overrides (paired with it, as ``heal-defaults`` with ``heal``); ``mnrl-generator-free`` /
  ``llamaindex-generator-free``: the stock fine-tunes on those key-sentence pairs.

Evaluation: each held-out document's query (subject / question) searched among all held-out chunks, cut as the model
was tuned; the gold passage is the document's first chunk; nDCG@10 graded by shared path, MRR@10, hP@10 per level,
off-topic@5 and context-miss@5, with 95 % paired bootstrap intervals against HEAL; where each method's first-ranked
chunk comes from when it is not the gold (another chunk of the same document, the same folder, ...); wall time of
every stage. ``--blend-curve`` also scores HEAL at every blend share its ``auto`` choice tried; ``--reuse`` evaluates
the models a previous run left under runs/ instead of training them again.

    python benchmarks/documents.py [--datasets 20newsgroups medquad] [--steps 100] [--methods ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import baselines  # noqa: E402
import blend_shares  # noqa: E402
import numpy as np  # noqa: E402
from shared import SHARED_DATA, output_file, parse_overrides  # noqa: E402

from heal_rag.artifacts import write_json_atomic  # noqa: E402
from heal_rag.evaluation.retrieval import format_paired, paired_difference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "bench-documents"
RESULTS = Path(__file__).parent / "results" / "documents.json"
SOURCES = {
    "20newsgroups": ("20newsgroups/20newsgroups.jsonl", "title", "labels", None, ".txt"),
    "medquad": ("medquad/medquad_qa.jsonl", "question", "labels", "doc_id", ".md"),
    "arxiv": ("arxiv_oai/arxiv_oai_hier.jsonl", "title", "labels", None, ".md"),
}
METHODS = (
    "untouched",
    "bm25",
    "mnrl",
    "llamaindex",
    "heal",
    "heal-defaults",
    "heal-no-source",
    "heal-generator-free",
    "heal-generator-free-defaults",
    "mnrl-generator-free",
    "llamaindex-generator-free",
)
#: The columns of every table; ``hP@10/L*`` are added per dataset, one per level (see :func:`metric_names`).
RANKING_METRICS = ("nDCG@10", "MRR@10", "Recall@1")
TOPIC_METRICS = ("off-topic@5", "context-miss@5")
#: Blend shares beyond ``auto``'s candidates that ``--blend-curve`` also scores.
EXTRA_SHARES = (0.7, 0.8)
CHUNK_SIZE = 126  # tokens: a chunk fits the 128 tokens every method trains and evaluates with


def metric_names(values: dict[str, Any]) -> tuple[str, ...]:
    """The table's columns for one dataset's scores: the ranking metrics, hP@10 at each level, the topic metrics."""
    levels = sorted((m for m in values if m.startswith("hP@10/L")), key=lambda m: int(m.rsplit("L", 1)[1]))
    return (*RANKING_METRICS, *levels, *TOPIC_METRICS)


def _hash(value: str) -> bytes:
    return hashlib.sha1(f"documents:{value}".encode()).digest()


def _folder_name(text: str) -> str:
    return re.sub(r"[/\\:*?\"<>|]+", "-", text).strip(" .") or "unnamed"


def build_trees(name: str, train_docs: int, test_docs: int) -> tuple[Path, Path, dict[str, str]] | None:
    """Write the training and held-out folder trees; return them and each held-out document's query."""
    relative, query_field, label_field, group_field, suffix = SOURCES[name]
    path = SHARED_DATA / relative
    if not path.is_file():
        print(f"[{name}] {path} not found: skipped", flush=True)
        return None
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        query = re.sub(r"^(re:\s*)+", "", str(record.get(query_field) or "").strip(), flags=re.I).strip()
        if query and str(record.get("text", "")).strip():
            records.append(record | {"_query": query})
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(str(record[group_field]) if group_field else record["id"], []).append(record)
    train, test = [], []
    for key in sorted(groups, key=_hash):  # whole groups, hashed order, alternately filling each side
        side = test if (len(test) * train_docs < len(train) * test_docs) else train
        side.extend(groups[key])
        if len(train) >= train_docs and len(test) >= test_docs:
            break
    base = WORK / name
    for side in ("train", "test"):  # rebuild the trees only: the models beside them stay for --reuse
        shutil.rmtree(base / side, ignore_errors=True)
    queries = {}
    for side, records_of_side in (("train", train[:train_docs]), ("test", test[:test_docs])):
        for record in records_of_side:
            labels = [_folder_name(str(part)) for part in record[label_field]]
            file = base / side / Path(*labels) / f"{_folder_name(record['id'])}{suffix}"
            file.parent.mkdir(parents=True, exist_ok=True)
            body = record["text"].strip()
            content = f"{record['_query']}\n\n{body}\n" if suffix == ".txt" else f"# {record['_query']}\n\n{body}\n"
            file.write_text(content, encoding="utf-8")
            if side == "test":
                queries[file.relative_to(base / side).as_posix()] = record["_query"]
    return base / "train", base / "test", queries


def training_pairs(chunks: Any, use_titles: bool = True) -> tuple[list[str], list[str]]:
    """The (query, chunk) pairs HEAL trains on: the default query generator's query for every chunk that gets one
    (without ``use_titles``: key sentences only, as ``heal-generator-free`` gets them)."""
    from heal_rag.queries import KeySentenceQueryGenerator

    queries = KeySentenceQueryGenerator(use_titles=use_titles)(chunks.texts, chunks.titles)
    pairs = [(q, t) for q, t in zip(queries, chunks.texts, strict=True) if q]
    return [q for q, _ in pairs], [t for _, t in pairs]


def train_baseline(method: str, chunks: Any, steps: int, output_dir: Path, reuse: bool = False) -> tuple[Any, bool]:
    """A stock fine-tune (``mnrl`` or ``llamaindex``, see ``baselines.py``) on HEAL's (query, chunk) pairs (or, with
    ``reuse``, the model an earlier run left in ``output_dir``: its steps and pairs are not checked); and whether it
    was reused."""
    if reuse and (output_dir / "model.safetensors").is_file():
        from heal_rag.models import load_sentence_transformer, set_max_seq_length

        print(f"reusing {output_dir}", flush=True)
        model = load_sentence_transformer(output_dir)
        set_max_seq_length(model, 128)
        return model, True
    queries, texts = training_pairs(chunks, use_titles=not method.endswith("-generator-free"))
    if method.startswith("llamaindex"):
        model = baselines.train_llamaindex_finetune(
            queries, texts, steps=steps, batch_size=32, max_seq_length=128, seed=42, output_dir=output_dir
        )
        return model, False
    model = baselines.train_mnrl(
        queries,
        texts,
        steps=steps,
        batch_size=32,
        learning_rate=1e-4,
        warmup_ratio=0.1,
        max_seq_length=128,
        seed=42,
        output_dir=output_dir,
    )
    return model, False


def top1_breakdown(top1: np.ndarray, task: Any) -> dict[str, float]:
    """Where the first-ranked chunk comes from when it is not the gold chunk, as shares of all queries.

    ``same document``: another chunk of the gold chunk's document; ``same leaf`` / ``same parent``: a chunk of another
    document in the gold's deepest folder / its parent folder; ``elsewhere``: anywhere else.
    """
    from heal_rag.chunking import DOCUMENT_ID_KEY

    documents = np.array([m[DOCUMENT_ID_KEY] for m in task.corpus.metadata])
    levels = task.level_ids
    gold = task.gold
    missed = top1 != gold
    same_document = missed & (documents[top1] == documents[gold])
    same_leaf = missed & ~same_document & (levels[top1, -1] == levels[gold, -1])
    parent = max(levels.shape[1] - 2, 0)
    same_parent = missed & ~same_document & ~same_leaf & (levels[top1, parent] == levels[gold, parent])
    elsewhere = missed & ~same_document & ~same_leaf & ~same_parent
    return {
        "gold first": float(np.mean(~missed)),
        "same document": float(np.mean(same_document)),
        "same leaf": float(np.mean(same_leaf)),
        "same parent": float(np.mean(same_parent)),
        "elsewhere": float(np.mean(elsewhere)),
    }


def heal_settings(method: str, steps: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    from heal_rag.queries import KeySentenceQueryGenerator

    settings: dict[str, Any] = {
        "max_steps": steps,
        "max_seq_length": 128,
        "chunk_size": CHUNK_SIZE,
        **(overrides or {}),
    }
    if method == "heal-no-source":
        settings["source_level"] = False
    if method == "heal-generator-free":
        settings["query_generator"] = KeySentenceQueryGenerator(use_titles=False)
    return settings


def train_heal(
    method: str, train_tree: Path, steps: int, output_dir: Path, reuse: bool, overrides: dict[str, Any] | None = None
) -> tuple[Any, dict[str, Any], bool]:
    """``fine_tune_documents`` on the training tree (or, with ``reuse``, the model an earlier run left there).

    Returns:
        The model (at 128 tokens), its ``heal_rag.json`` training record, and whether it was reused.
    """
    from heal_rag.artifacts import read_metadata
    from heal_rag.documents import fine_tune_documents
    from heal_rag.models import load_sentence_transformer, set_max_seq_length

    if reuse and (output_dir / "heal_rag.json").is_file():
        print(f"reusing {output_dir}", flush=True)
        model, training = load_sentence_transformer(output_dir), read_metadata(output_dir)["training"]
        set_max_seq_length(model, 128)
        return model, training, True
    result = fine_tune_documents(
        train_tree,
        output_dir=output_dir,
        overwrite=True,
        show_progress_bar=False,
        **heal_settings(method, steps, overrides),
    )
    model = result.model
    set_max_seq_length(model, 128)
    return model, result.metadata["training"], False


def blend_curve(model: Any, task: Any, selection: dict[str, Any], label: str) -> dict[str, dict[str, float]]:
    """Held-out scores at every share ``base_weight_share="auto"`` tried and at :data:`EXTRA_SHARES` (nearer the base
    model than any candidate; no validation score), see ``blend_shares.py``."""
    from heal_rag.evaluation.report import evaluate_embedding_model

    validation = selection["validation_mrr@10"]
    shares = sorted({float(k) for k in validation} | set(EXTRA_SHARES))
    curve = {}
    for share in blend_shares.at_shares(model, float(selection["share"]), shares):
        key = f"{share:g}"
        retrieval = evaluate_embedding_model(model, task, key, show_progress_bar=False).retrieval.as_dict()
        se = selection.get("difference_se@10", {}).get(key)
        curve[key] = {"validation MRR@10": validation.get(key), "validation SE": se}
        curve[key] |= {m: retrieval[m] for m in metric_names(retrieval)}
        print(f"[{label}] share {key}: {json.dumps(curve[key])}", flush=True)
    return curve


def run(
    name: str,
    methods: list[str],
    steps: int,
    train_docs: int,
    test_docs: int,
    with_blend_curve: bool = False,
    reuse: bool = False,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    from heal_rag.chunking import CHUNK_INDEX_KEY, DOCUMENT_ID_KEY, chunk_documents
    from heal_rag.documents import load_documents
    from heal_rag.evaluation.report import EvaluationTask, bm25_rankings, evaluate_bm25, evaluate_embedding_model
    from heal_rag.models import load_sentence_transformer, set_max_seq_length
    from heal_rag.queries import Query

    times: dict[str, float] = {}
    # HEAL models trained with overrides live beside the default ones, so --reuse never mixes recipes
    work_name = name + "".join(f"-{k}={v}" for k, v in sorted((overrides or {}).items()))
    started = time.perf_counter()
    trees = build_trees(name, train_docs, test_docs)
    if trees is None:
        return None
    train_tree, test_tree, held_out_queries = trees
    times["build trees"] = time.perf_counter() - started

    started = time.perf_counter()
    tokenizer = load_sentence_transformer(None)
    set_max_seq_length(tokenizer, 128)
    test_docs_read, _ = load_documents(test_tree, show_progress=False)
    test_chunks = chunk_documents(test_docs_read, tokenizer, chunk_size=CHUNK_SIZE, show_progress=False)
    train_docs_read, _ = load_documents(train_tree, show_progress=False)
    train_chunks = chunk_documents(train_docs_read, tokenizer, chunk_size=CHUNK_SIZE, show_progress=False)
    first = {
        m[DOCUMENT_ID_KEY]: cid
        for cid, m in zip(test_chunks.ids, test_chunks.metadata, strict=True)
        if m[CHUNK_INDEX_KEY] == 0
    }
    task = EvaluationTask.build(
        test_chunks, [Query(q, first[doc]) for doc, q in held_out_queries.items() if doc in first]
    )
    times["read and chunk"] = time.perf_counter() - started
    sizes = f"held out {len(test_docs_read)} → {len(test_chunks)} chunks, {len(task.query_texts)} queries"
    print(f"[{name}] train {len(train_docs_read)} documents → {len(train_chunks)} chunks; {sizes}", flush=True)

    evaluations, summary, top1 = {}, {}, {}
    for method in methods:
        if "-generator-free" in method and name != "medquad":
            continue
        started = time.perf_counter()
        reused = False
        if method == "untouched":
            model = tokenizer
        elif method == "bm25":
            evaluations[method] = evaluate_bm25(task)
            top1[method] = top1_breakdown(bm25_rankings(task.corpus.texts, task.query_texts, 1)[:, 0], task)
            times[method] = time.perf_counter() - started
            continue
        elif method.startswith(("mnrl", "llamaindex")):
            model, reused = train_baseline(method, train_chunks, steps, WORK / name / method, reuse)
        else:  # a HEAL variant; X-defaults ignores --heal and lives where X without overrides does
            defaults = method.endswith("-defaults")
            variant = method.removesuffix("-defaults")
            output_dir = WORK / (name if defaults else work_name) / variant
            model, training, reused = train_heal(
                variant, train_tree, steps, output_dir, reuse, None if defaults else overrides
            )
            summary[method] = {k: training.get(k) for k in ("blend_selection", "chunks", "global_steps")}
        trained = time.perf_counter() - started
        evaluations[method] = evaluate_embedding_model(model, task, method, show_progress_bar=False)
        scores = evaluations[method].query_embeddings @ evaluations[method].document_embeddings.T
        top1[method] = top1_breakdown(scores.argmax(axis=1), task)
        stage = f"{method} (reused model)" if reused else method
        times[stage] = time.perf_counter() - started
        times[f"{stage} (encode held-out)"] = times[stage] - trained
        scores_of_method = evaluations[method].retrieval.as_dict()
        values = {m: round(scores_of_method[m], 4) for m in metric_names(scores_of_method)}
        print(f"[{name}] {method}: {json.dumps(values)}", flush=True)
        selection = summary.get(method, {}).get("blend_selection") or {}
        if with_blend_curve and "validation_mrr@10" in selection:
            summary[method]["blend_curve"] = blend_curve(model, task, selection, f"{name}/{method}")
    differences = {}
    for heal_method, method in paired_comparisons(list(evaluations)):
        reference, evaluation = evaluations[heal_method], evaluations[method]
        differences[f"{heal_method} - {method}"] = {
            m: paired_difference(reference.retrieval_per_query[m], evaluation.retrieval_per_query[m]).as_dict()
            for m in metric_names(reference.retrieval_per_query)
        }
    return {
        "train_documents": len(train_docs_read),
        "train_chunks": len(train_chunks),
        "test_documents": len(test_docs_read),
        "test_chunks": len(test_chunks),
        "queries": len(task.query_texts),
        "steps": steps,
        "heal_overrides": overrides or {},
        "metrics": {method: e.retrieval.as_dict() for method, e in evaluations.items()},
        "differences": differences,
        "heal_runs": summary,
        "top1": top1,
        "seconds": times,
    }


def paired_comparisons(methods: list[str]) -> list[tuple[str, str]]:
    """The (HEAL variant, other method) pairs a run reports intervals for: every HEAL variant against the baselines
    and against its own ``-defaults`` twin; the default HEAL also against the other variants (ablations)."""
    pairs = []
    for heal_method in methods:
        if not heal_method.startswith("heal"):
            continue
        for method in methods:
            own_defaults = method == f"{heal_method}-defaults"
            if method != heal_method and (heal_method == "heal" or own_defaults or not method.startswith("heal")):
                pairs.append((heal_method, method))
    return pairs


def merge_runs(previous: dict[str, Any] | None, result: dict[str, Any]) -> dict[str, Any]:
    """A dataset's results with a new run's methods added or replaced (a run of some methods keeps the others)."""
    sizes = ("steps", "queries", "train_documents", "train_chunks", "test_documents", "test_chunks")
    if previous is None or any(previous.get(key) != result[key] for key in sizes):
        return result
    if (previous.get("heal_overrides") or {}) != (result.get("heal_overrides") or {}):  # none: a run before --heal
        return result
    merged = {**previous, **{k: v for k, v in result.items() if not isinstance(v, dict)}}
    for key in ("metrics", "heal_runs", "top1", "seconds"):
        merged[key] = {**previous.get(key, {}), **result.get(key, {})}
    # an interval against HEAL holds only if neither side was re-run: drop the stale ones, keep the new ones
    rerun = set(result["metrics"])
    kept = {
        comparison: values
        for comparison, values in previous.get("differences", {}).items()
        if "heal" not in rerun and comparison.split(" - ", 1)[1] not in rerun
    }
    merged["differences"] = {**kept, **result.get("differences", {})}
    return merged


def format_tables(name: str, result: dict[str, Any]) -> str:
    metrics = metric_names(next(iter(result["metrics"].values())))
    lines = [
        f"### {name}: {result['train_documents']} training documents ({result['train_chunks']} chunks), "
        f"{result['queries']} held-out queries over {result['test_chunks']} chunks, {result['steps']} steps",
        "",
        "| method | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for method, values in result["metrics"].items():
        lines.append(f"| {method} | " + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |")
    lines += ["", "| HEAL − | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for comparison, values in result["differences"].items():
        reference, method = comparison.split(" - ", 1)
        label = method if reference == "heal" else f"{reference} − {method}"  # several variants: say which
        lines.append(f"| {label} | " + " | ".join(format_paired(values[m]) for m in metrics) + " |")
    if result.get("top1"):
        kinds = list(next(iter(result["top1"].values())))
        lines += ["", "| first-ranked chunk | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        for method, shares in result["top1"].items():
            lines.append(f"| {method} | " + " | ".join(f"{shares[kind]:.3f}" for kind in kinds) + " |")
    lines += ["", "seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--train-docs", type=int, default=2000)
    parser.add_argument("--test-docs", type=int, default=600)
    parser.add_argument(
        "--blend-curve", action="store_true", help="score HEAL at every blend share its 'auto' choice tried"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="evaluate the models a previous run left instead of training them again"
    )
    parser.add_argument("--heal", nargs="*", default=[], metavar="KEY=VALUE", help="HEALTrainingConfig overrides")
    parser.add_argument(
        "--output", type=output_file, default=RESULTS, help="results JSON (runs with --heal: use another)"
    )
    args = parser.parse_args()
    overrides = parse_overrides(args.heal)
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    for name in args.datasets:
        result = run(
            name, args.methods, args.steps, args.train_docs, args.test_docs, args.blend_curve, args.reuse, overrides
        )
        if result is None:
            continue
        results[name] = merge_runs(results.get(name), result)
        write_json_atomic(args.output, results)
        print(format_tables(name, results[name]), flush=True)
    if not results:
        print("nothing measured (no shared data)", file=sys.stderr)


if __name__ == "__main__":
    main()
