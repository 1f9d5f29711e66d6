"""Fine-tune the embedded all-MiniLM-L6-v2 with HEAL on a folder of documents, then search its chunks.

    python examples/fine_tune_folder.py --data runs/demo/api_docs [--max-steps 20]

The folders are the label path; documents are cut into chunks that fit the model, each chunk's heading is its
training query. The saved directory is a plain sentence-transformers model plus heal_rag.json (label tree,
centroids, the chunking settings).
"""

from __future__ import annotations

import argparse

from heal_rag.documents import fine_tune_documents


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="runs/demo/api_docs", help="a folder of documents (make demo builds one)")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--out", default="runs/example-model")
    parser.add_argument("--query", default="compute a matrix norm")
    parser.add_argument("--base-model", default=None, help="base model directory (default: all-MiniLM-L6-v2)")
    args = parser.parse_args()

    result = fine_tune_documents(
        args.data, output_dir=args.out, base_model=args.base_model, max_steps=args.max_steps, max_seq_length=128
    )
    chunks, model = result.chunks, result.model
    scores = model.similarity(model.encode_query([args.query]), model.encode_document(chunks.texts[:500]))[0]
    print(f"\nquery: {args.query}")
    for index in scores.argsort(descending=True)[:3].tolist():
        path = " > ".join(chunks.labels.paths[index]) if chunks.labels else "-"
        print(f"  {float(scores[index]):.3f}  {path}  |  {chunks.ids[index]}")


if __name__ == "__main__":
    main()
