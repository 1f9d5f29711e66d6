"""A LlamaIndex query engine on a ChromaVectorStore with the HEAL embedding and the hierarchy node postprocessor.

    python examples/llamaindex_query_engine.py --model runs/demo/model --question "Which function fits a spline?"

The chunks the model was tuned on go into LlamaIndex's own `ChromaVectorStore` (sharing heal_rag's Chroma client, the
model checked against the collection); the LLM is LlamaIndex's MockLLM so the example runs offline: set `llm=` to any
LlamaIndex LLM in your own code.
"""

from __future__ import annotations

import argparse

from common import load_corpus
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.llms import MockLLM

from heal_rag.encoder import HEALEncoder
from heal_rag.llamaindex import HEALEmbedding, HierarchyNodePostprocessor, chroma_vector_store, to_nodes
from heal_rag.metadata import path_from_metadata


def build_query_engine(encoder: HEALEncoder, store, nodes=None, llm=None):
    """VectorStoreIndex over the Chroma store (adding ``nodes`` first); retrieve 10, rerank by hierarchy, keep 3."""
    embed_model = HEALEmbedding(encoder=encoder)
    if nodes:
        index = VectorStoreIndex(
            nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed_model
        )
    else:
        index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
    return index.as_query_engine(
        llm=llm or MockLLM(max_tokens=32),
        similarity_top_k=10,
        node_postprocessors=[HierarchyNodePostprocessor(encoder, top_n=3)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo/model", help="HEAL model directory (make demo writes one)")
    parser.add_argument("--data", default=None, help="folder or JSONL corpus (default: runs/demo/api_docs)")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N chunks")
    parser.add_argument("--db", default="runs/llamaindex-chroma", help="Chroma directory")
    parser.add_argument("--collection", default="llamaindex-example")
    parser.add_argument("--question", default="Which function fits a smoothing spline to data?")
    args = parser.parse_args()

    encoder = HEALEncoder.load(args.model)
    store = chroma_vector_store(args.db, args.collection, HEALEmbedding(encoder=encoder))
    nodes = to_nodes(load_corpus(args.model, args.data, args.limit)) if store._collection.count() == 0 else None
    response = build_query_engine(encoder, store, nodes).query(args.question)
    print(f"Q: {args.question}\nA (MockLLM): {str(response)[:80]}…\n\nSources:")
    for rank, hit in enumerate(response.source_nodes, start=1):
        path = " > ".join(path_from_metadata(hit.node.metadata) or ())
        source = hit.node.metadata.get("source") or hit.node.metadata.get("title")
        print(f"[{rank}] {path} | {source} | score {hit.score:.3f}")


if __name__ == "__main__":
    main()
