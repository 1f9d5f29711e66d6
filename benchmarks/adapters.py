"""Adapter overhead: encode throughput vs raw sentence-transformers, and query latency on a 20k-document Chroma index.

1. Throughput: the same 512 abstracts, batch 32, through raw ``SentenceTransformer.encode_document`` and through
   each adapter (LangChain ``HEALEmbeddings``, LlamaIndex ``HEALEmbedding``, Chroma ``HEALEmbeddingFunction``).
   Rounds are interleaved; the median of each is reported, with the ratio adapter/raw throughput.
2. Latency: all 21,450 arXiv abstracts (../shared/data) in a persistent Chroma collection (built once under
   runs/bench-chroma). For 100 title queries: raw = ``encode_query`` + Chroma query for 5 hits by embedding;
   ours = Chroma ``query_texts`` through the registered function for 20 candidates + ``HierarchyReranker`` to 5.

    python benchmarks/adapters.py [--model runs/demo/model]

Prints tables and writes benchmarks/results/adapters.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from shared import ARXIV_MINI, require  # noqa: E402

from heal_rag.artifacts import write_json_atomic  # noqa: E402
from heal_rag.chroma import HEALEmbeddingFunction, build_index, open_client  # noqa: E402
from heal_rag.data import read_corpus  # noqa: E402
from heal_rag.encoder import HEALEncoder  # noqa: E402
from heal_rag.langchain import HEALEmbeddings, HierarchyReranker  # noqa: E402
from heal_rag.llamaindex import HEALEmbedding  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "adapters.json"
FULL_ARXIV = ROOT.parent / "shared" / "data" / "arxiv_oai" / "arxiv_oai_hier.jsonl"


def throughput(encoder: HEALEncoder, texts: list[str], rounds: int) -> list[dict]:
    raw_model = encoder.model
    variants = {
        "raw SentenceTransformer.encode_document": lambda: raw_model.encode_document(
            texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
        ),
        "LangChain HEALEmbeddings.embed_documents": lambda: HEALEmbeddings(encoder=encoder).embed_documents(texts),
        "LlamaIndex HEALEmbedding.get_text_embedding_batch": lambda: HEALEmbedding(
            encoder=encoder, embed_batch_size=32
        ).get_text_embedding_batch(texts),
        "Chroma HEALEmbeddingFunction.__call__": lambda: HEALEmbeddingFunction(encoder=encoder)(texts),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    raw = statistics.median(times["raw SentenceTransformer.encode_document"])
    return [
        {
            "variant": name,
            "median_s": statistics.median(values),
            "texts_per_s": len(texts) / statistics.median(values),
            "throughput_vs_raw": raw / statistics.median(values),
        }
        for name, values in times.items()
    ]


def latency(encoder: HEALEncoder, model_dir: str, n_queries: int) -> dict:
    corpus = read_corpus(FULL_ARXIV)
    db = ROOT / "runs" / "bench-chroma"
    name = "arxiv-full"
    client = open_client(db)
    function = HEALEmbeddingFunction(encoder=encoder)
    names = {c.name for c in client.list_collections()}
    if name not in names or client.get_collection(name, embedding_function=function).count() != len(corpus):
        started = time.perf_counter()
        build_index(encoder, corpus, db, collection_name=name, batch_size=512)
        print(f"built the {len(corpus)}-document index in {time.perf_counter() - started:.0f} s")
    collection = client.get_collection(name, embedding_function=function)
    reranker = HierarchyReranker(encoder=encoder, top_n=5)
    rng = np.random.default_rng(0)
    queries = [corpus.titles[i] for i in rng.choice(len(corpus), n_queries, replace=False)]
    from langchain_core.documents import Document

    raw_times, ours_times = [], []
    for query in queries:
        started = time.perf_counter()
        embedding = encoder.model.encode_query([query], normalize_embeddings=True, convert_to_numpy=True)
        collection.query(query_embeddings=embedding, n_results=5)
        raw_times.append(time.perf_counter() - started)

        started = time.perf_counter()
        result = collection.query(query_texts=[query], n_results=20, include=["documents", "metadatas", "distances"])
        docs = [
            Document(page_content=t, metadata={**m, "score": 1.0 - d})
            for t, m, d in zip(result["documents"][0], result["metadatas"][0], result["distances"][0], strict=True)
        ]
        reranker.compress_documents(docs, query)
        ours_times.append(time.perf_counter() - started)

    def summary(values: list[float]) -> dict:
        return {"p50_ms": 1000 * float(np.percentile(values, 50)), "p95_ms": 1000 * float(np.percentile(values, 95))}

    return {
        "n_docs": len(corpus),
        "n_queries": n_queries,
        "raw encode_query + Chroma query (5 hits)": summary(raw_times),
        "HEAL: Chroma query_texts (20) + HierarchyReranker (5)": summary(ours_times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "runs" / "demo" / "model"))
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()

    encoder = HEALEncoder.load(args.model, batch_size=32)
    texts = read_corpus(require(ARXIV_MINI)).texts[: args.texts]
    encoder.embed_documents(texts[:64])  # warm-up
    rows = throughput(encoder, texts, args.rounds)
    print(f"\nEncode throughput, {len(texts)} abstracts, batch 32, median of {args.rounds} interleaved rounds\n")
    print("| path | texts/s | × raw |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row['variant']} | {row['texts_per_s']:.1f} | {row['throughput_vs_raw']:.3f} |")
    report: dict = {"command": "python " + " ".join(sys.argv), "model": args.model, "throughput": rows}

    if FULL_ARXIV.is_file():
        report["latency"] = latency(encoder, args.model, args.queries)
        print(f"\nQuery latency on a {report['latency']['n_docs']}-document Chroma index, {args.queries} queries\n")
        print("| path | p50 (ms) | p95 (ms) |")
        print("|---|---:|---:|")
        for key, value in report["latency"].items():
            if isinstance(value, dict):
                print(f"| {key} | {value['p50_ms']:.1f} | {value['p95_ms']:.1f} |")
    else:
        print(f"[skip] latency: {FULL_ARXIV} not found")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS, report)
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
