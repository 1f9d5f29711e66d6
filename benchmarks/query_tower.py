"""Probe (issues 17 and 22): does tuning the query side alone keep the base model's topic grouping on unseen foci?

On MedQuAD's folder tree with headings (``documents.py``), every fine-tune that raised MRR@10 lowered hP@10 at the
focus, along one frontier; the explanation offered was that the (question, chunk) pairs push the chunks of one
disease apart. If so, leaving the documents' vectors as the base model gives them, and training only the query side
to find its chunk among them, should raise MRR@10 without that loss. This trains such a query tower (the base model,
tuned with in-batch negatives against the frozen base model's vectors of the same (query, chunk) pairs HEAL trains
on; 100 steps of 32, 128 tokens, warm-up 10 %, linear decay, seed 42, scale 20 as MNRL) and scores it against the
untouched model on the held-out tree. With ``--hard-negatives K`` each query also ranks its chunk below the frozen
vectors of the K training chunks of other foci nearest to it (``heal_rag.negatives.mine_other_leaf_negatives``),
shared across the batch.

    python benchmarks/query_tower.py [--learning-rates 1e-4 3e-5] [--hard-negatives 4]

Writes ``results/query_tower.json``; a few minutes per learning rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import documents  # noqa: E402
import numpy as np  # noqa: E402

from heal_rag.artifacts import write_json_atomic  # noqa: E402
from heal_rag.evaluation.retrieval import paired_difference  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "query_tower.json"
METRICS = ("nDCG@10", "MRR@10", "Recall@1", "hP@10/L1", "off-topic@5", "context-miss@5")
STEPS, BATCH, SCALE, SEED = 100, 32, 20.0, 42


def held_out_task() -> tuple[Any, Any]:
    """The MedQuAD held-out task of ``documents.py`` and its training chunks (``None`` when the data is absent)."""
    from heal_rag.chunking import CHUNK_INDEX_KEY, DOCUMENT_ID_KEY, chunk_documents
    from heal_rag.documents import load_documents
    from heal_rag.evaluation.report import EvaluationTask
    from heal_rag.models import load_sentence_transformer, set_max_seq_length
    from heal_rag.queries import Query

    trees = documents.build_trees("medquad", 2000, 600)
    if trees is None:
        return None, None
    train_tree, test_tree, held_out = trees
    tokenizer = load_sentence_transformer(None)
    set_max_seq_length(tokenizer, 128)
    chunks = {}
    for side, tree in (("train", train_tree), ("test", test_tree)):
        read, _ = load_documents(tree, show_progress=False)
        chunks[side] = chunk_documents(read, tokenizer, chunk_size=documents.CHUNK_SIZE, show_progress=False)
    first = {
        meta[DOCUMENT_ID_KEY]: chunk_id
        for chunk_id, meta in zip(chunks["test"].ids, chunks["test"].metadata, strict=True)
        if meta[CHUNK_INDEX_KEY] == 0
    }
    queries = [Query(text, first[doc]) for doc, text in held_out.items() if doc in first]
    return EvaluationTask.build(chunks["test"], queries), chunks["train"]


def encode(model: Any, texts: list[str], side: str) -> np.ndarray:
    encode_side = model.encode_query if side == "query" else model.encode_document
    return np.asarray(encode_side(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False))


def train_query_tower(
    queries: list[str],
    document_vectors: np.ndarray,
    learning_rate: float,
    negative_vectors: np.ndarray | None = None,
    negatives: np.ndarray | None = None,
) -> Any:
    """The base model tuned so each query finds its own document among the batch's frozen document vectors (and,
    with ``negatives``, the pool rows ``negatives[i]`` of ``negative_vectors`` for every query of the batch)."""
    import torch

    from heal_rag.models import load_sentence_transformer, set_max_seq_length

    torch.manual_seed(SEED)
    model = load_sentence_transformer(None)
    set_max_seq_length(model, 128)
    targets = torch.tensor(document_vectors)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    warmup = STEPS // 10
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / warmup if step < warmup else (STEPS - step) / (STEPS - warmup)
    )
    order = np.random.default_rng(SEED).permutation(len(queries))
    model.train()
    for step in range(STEPS):
        start = (step * BATCH) % len(order)
        batch = order[start : start + BATCH]
        features = model.preprocess([queries[i] for i in batch])
        vectors = torch.nn.functional.normalize(model(features)["sentence_embedding"], dim=-1)
        candidates = targets[batch]
        if negatives is not None:
            candidates = torch.cat([candidates, torch.tensor(negative_vectors[negatives[batch].ravel()])])
        loss = torch.nn.functional.cross_entropy(SCALE * vectors @ candidates.T, torch.arange(len(batch)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return model


def main() -> None:
    from heal_rag.evaluation.report import evaluate_ranked
    from heal_rag.models import load_sentence_transformer, set_max_seq_length

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[1e-4, 3e-5])
    parser.add_argument(
        "--hard-negatives", type=int, default=0, help="also K mined negatives per query from other foci (0: none)"
    )
    args = parser.parse_args()
    task, train_chunks = held_out_task()
    if task is None:
        return
    base = load_sentence_transformer(None)
    set_max_seq_length(base, 128)
    base_documents = encode(base, list(task.corpus.texts), "document")

    def scored(query_vectors: np.ndarray, name: str) -> Any:
        ranked = np.argsort(-(query_vectors @ base_documents.T), axis=1, kind="stable")[:, :10]
        return evaluate_ranked(ranked, task, name)

    untouched = scored(encode(base, list(task.query_texts), "query"), "untouched")
    results: dict[str, Any] = {"untouched": {m: untouched.retrieval.as_dict()[m] for m in METRICS}}
    queries, texts = documents.training_pairs(train_chunks)
    pair_vectors = encode(base, texts, "document")
    mined: dict[str, Any] = {}
    if args.hard_negatives:
        from heal_rag.negatives import mine_other_leaf_negatives
        from heal_rag.queries import KeySentenceQueryGenerator

        generated = KeySentenceQueryGenerator()(train_chunks.texts, train_chunks.titles)
        rows = [i for i, query in enumerate(generated) if query]  # the chunks of training_pairs, in its order
        if [generated[i] for i in rows] != queries:
            raise SystemExit("documents.training_pairs no longer keeps the chunks with a query in order; update.")
        leaves = np.unique([" > ".join(path) for path in train_chunks.labels.paths], return_inverse=True)[1]
        pool_vectors = encode(base, list(train_chunks.texts), "document")
        mined = {
            "negative_vectors": pool_vectors,
            "negatives": mine_other_leaf_negatives(
                encode(base, queries, "query"), pool_vectors, leaves[rows, None], leaves[:, None], args.hard_negatives
            ),
        }
    print("| run | " + " | ".join(METRICS) + " | train s |\n|---|" + "---:|" * (len(METRICS) + 1))
    print("| untouched | " + " | ".join(f"{results['untouched'][m]:.4f}" for m in METRICS) + " | 0 |")
    for learning_rate in args.learning_rates:
        started = time.perf_counter()
        tower = train_query_tower(queries, pair_vectors, learning_rate, **mined)
        seconds = time.perf_counter() - started
        evaluation = scored(encode(tower, list(task.query_texts), "query"), f"query tower {learning_rate:g}")
        name = f"query tower, lr {learning_rate:g}" + (
            f", {args.hard_negatives} other-focus negatives" if mined else ""
        )
        row = {m: evaluation.retrieval.as_dict()[m] for m in METRICS}
        row["minus untouched"] = {
            m: paired_difference(evaluation.retrieval_per_query[m], untouched.retrieval_per_query[m]).as_dict()
            for m in METRICS
        }
        row["train_s"] = round(seconds, 1)
        results[name] = row
        print(f"| {name} | " + " | ".join(f"{row[m]:.4f}" for m in METRICS) + f" | {seconds:.0f} |")
    earlier = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    write_json_atomic(RESULTS, {**earlier, **results})  # runs of other settings stay


if __name__ == "__main__":
    main()
