"""A LangChain RAG chain with the HEAL encoder: retriever | hierarchy reranker | prompt | model.

    python examples/langchain_rag.py --model runs/demo/model --question "How do qubits lose coherence?"

`make demo` writes runs/demo/model. The model step is offline: extractive by default, SmolLM2 with --llm smollm2
(when installed); in your own chain, put any LangChain chat model there.
"""

from __future__ import annotations

import argparse

from common import PROMPT, citations, format_sources, load_corpus, make_generator
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from heal_rag.encoder import HEALEncoder
from heal_rag.langchain import HEALRetriever, HierarchyReranker


def build_chain(retriever: HEALRetriever, reranker: HierarchyReranker, model):
    """LCEL: retriever | reranker | prompt | model. The chain returns {question, sources, answer}."""
    rerank = RunnableLambda(lambda x: reranker.compress_documents(x["docs"], x["question"]))
    sources = {"docs": retriever, "question": RunnablePassthrough()} | rerank
    generate = (
        RunnableLambda(lambda x: {"context": format_sources(x["sources"]), "question": x["question"]})
        | PROMPT
        | model
        | StrOutputParser()
    )
    return {"sources": sources, "question": RunnablePassthrough()} | RunnablePassthrough.assign(answer=generate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo/model", help="HEAL model directory (make demo writes one)")
    parser.add_argument("--data", default=None, help="JSONL corpus (default: bundled arXiv demo corpus)")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N documents")
    parser.add_argument("--question", default="How do superconducting qubits lose coherence?")
    parser.add_argument("--llm", choices=["extractive", "smollm2", "auto"], default="extractive")
    args = parser.parse_args()

    encoder = HEALEncoder.load(args.model)
    corpus = load_corpus(args.data, args.limit)
    metadatas = [{"title": t} if t else {} for t in corpus.titles]
    retriever = HEALRetriever.from_texts(corpus.texts, metadatas, corpus.ids, encoder=encoder, k=10)
    reranker = HierarchyReranker(encoder=encoder, top_n=3)
    chain = build_chain(retriever, reranker, make_generator(args.llm, encoder))

    result = chain.invoke(args.question)
    print(f"Q: {args.question}\nA: {result['answer']}\n\nSources:\n{citations(result['sources'])}")


if __name__ == "__main__":
    main()
