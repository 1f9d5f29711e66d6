"""A LlamaIndex query engine with the HEAL encoder and the hierarchy-aware node postprocessor.

    python examples/llamaindex_query_engine.py --model runs/demo/model --question "How do qubits lose coherence?"

The LLM is LlamaIndex's MockLLM so the example runs offline; set `llm=` to any LlamaIndex LLM in your own code.
"""

from __future__ import annotations

import argparse

from common import load_corpus
from llama_index.core import VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.schema import TextNode

from heal_rag.encoder import HEALEncoder
from heal_rag.llamaindex import HEALEmbedding, HierarchyNodePostprocessor, exclude_hierarchy_metadata
from heal_rag.rerank import path_from_metadata


def build_query_engine(encoder: HEALEncoder, nodes: list[TextNode], llm=None):
    """VectorStoreIndex with HEAL embeddings; retrieve 10, rerank by hierarchy, keep 3."""
    index = VectorStoreIndex(nodes, embed_model=HEALEmbedding(encoder=encoder))
    return index.as_query_engine(
        llm=llm or MockLLM(max_tokens=32),
        similarity_top_k=10,
        node_postprocessors=[HierarchyNodePostprocessor(encoder, top_n=3)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo/model", help="HEAL model directory (make demo writes one)")
    parser.add_argument("--data", default=None, help="JSONL corpus (default: bundled arXiv demo corpus)")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N documents")
    parser.add_argument("--question", default="How do superconducting qubits lose coherence?")
    args = parser.parse_args()

    encoder = HEALEncoder.load(args.model)
    corpus = load_corpus(args.data, args.limit)
    nodes = [
        exclude_hierarchy_metadata(TextNode(text=text, id_=doc_id, metadata={"title": title or ""}))
        for doc_id, text, title in zip(corpus.ids, corpus.texts, corpus.titles, strict=True)
    ]
    response = build_query_engine(encoder, nodes).query(args.question)
    print(f"Q: {args.question}\nA (MockLLM): {str(response)[:80]}…\n\nSources:")
    for rank, hit in enumerate(response.source_nodes, start=1):
        path = " > ".join(path_from_metadata(hit.node.metadata) or ())
        print(f"[{rank}] {path} | {hit.node.metadata.get('title')} | score {hit.score:.3f}")


if __name__ == "__main__":
    main()
