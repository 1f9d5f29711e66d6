"""A LangChain RAG chain on your own Chroma store: langchain_chroma retriever | hierarchy reranker | prompt | model.

    python examples/langchain_rag.py --model runs/demo/model --question "How do I compute eigenvalues?"

`make demo` writes runs/demo/model and runs/demo/api_docs. The collection is built once with heal_rag (the chunks the
model was tuned on, with their label path in flat metadata) and then opened as an ordinary `langchain_chroma.Chroma`
store sharing heal_rag's client: the only heal_rag pieces in the chain are the embeddings and the reranker. The model
step is offline (extractive by default, SmolLM2 with --llm smollm2); in your own chain, put any chat model there.
"""

from __future__ import annotations

import argparse

from common import load_corpus, make_generator
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from heal_rag.chatbot import PROMPT, citations, format_sources
from heal_rag.chroma import build_index, open_client
from heal_rag.encoder import HEALEncoder
from heal_rag.langchain import HEALEmbeddings, HierarchyReranker, chroma_vectorstore


def build_chain(retriever, reranker: HierarchyReranker, model):
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
    parser.add_argument("--data", default=None, help="folder or JSONL corpus (default: runs/demo/api_docs)")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N chunks")
    parser.add_argument("--db", default="runs/langchain-chroma", help="Chroma directory")
    parser.add_argument("--collection", default="langchain-example")
    parser.add_argument("--question", default="How can I compute the eigenvalues of a symmetric matrix?")
    parser.add_argument("--llm", choices=["extractive", "smollm2", "auto"], default="extractive")
    args = parser.parse_args()

    encoder = HEALEncoder.load(args.model)
    if args.collection not in {c.name for c in open_client(args.db).list_collections()}:
        build_index(encoder, load_corpus(args.model, args.data, args.limit), args.db, args.collection)
    store = chroma_vectorstore(args.db, args.collection, HEALEmbeddings(encoder=encoder))  # a langchain_chroma.Chroma
    reranker = HierarchyReranker(encoder=encoder, top_n=3)  # reads the path from the store's metadata
    chain = build_chain(store.as_retriever(search_kwargs={"k": 10}), reranker, make_generator(args.llm, encoder))

    result = chain.invoke(args.question)
    print(f"Q: {args.question}\nA: {result['answer']}\n\nSources:\n{citations(result['sources'])}")


if __name__ == "__main__":
    main()
