"""Fine-tune the embedded all-MiniLM-L6-v2 with HEAL on the bundled arXiv demo corpus, then search with it.

    python examples/fine_tune_demo.py [--max-steps 20]

The saved directory is a plain sentence-transformers model plus heal_rag.json (label tree, centroids).
"""

from __future__ import annotations

import argparse

from heal_rag import demo_corpus_path, fine_tune, hashed_split, read_corpus


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--out", default="runs/example-model")
    args = parser.parse_args()

    corpus = read_corpus(demo_corpus_path())
    train_idx, _ = hashed_split(corpus.ids, test_fraction=0.3)
    train = corpus.subset(train_idx)
    result = fine_tune(
        train.texts,
        train.labels,
        ids=train.ids,
        titles=train.titles,  # titles become the training queries
        output_dir=args.out,
        max_steps=args.max_steps,
        max_seq_length=128,
    )
    model = result.model
    query = "superconducting qubits and decoherence"
    scores = model.similarity(model.encode_query([query]), model.encode_document(train.texts[:200]))[0]
    best = scores.argsort(descending=True)[:3].tolist()
    print(f"\nquery: {query}")
    for index in best:
        print(f"  {float(scores[index]):.3f}  {' > '.join(train.labels.paths[index])}  |  {train.titles[index]}")


if __name__ == "__main__":
    main()
