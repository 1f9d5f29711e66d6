"""Cost of one training step: HEAL vs MultipleNegativesRankingLoss on the same texts and batch size.

Both losses see the same batches of (title, abstract) pairs from the demo corpus, drawn by
HierarchicalBatchSampler, tokenised per column as SentenceTransformerTrainer does. A step is forward, loss,
backward and an AdamW update. Steps of the variants are interleaved, so a machine slowdown hits all alike.
A third variant shows why queries and documents get separate forward passes: padding queries to document
length in one pass.

    python benchmarks/step_cost.py [--steps 12] [--batch-size 32] [--max-seq-length 128]

Prints a table and writes benchmarks/results/step_cost.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss  # noqa: E402
from shared import ARXIV_MINI, require  # noqa: E402

from heal_rag.artifacts import write_json_atomic  # noqa: E402
from heal_rag.data import read_corpus  # noqa: E402
from heal_rag.losses import HEALLoss  # noqa: E402
from heal_rag.models import load_sentence_transformer  # noqa: E402
from heal_rag.sampler import HierarchicalBatchSampler  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "step_cost.json"


class PaddedTogetherHEAL(HEALLoss):
    """HEAL with queries and documents in one forward pass (queries padded to document length)."""

    def __init__(self, model, tokenize, **kwargs):
        super().__init__(model, **kwargs)
        self.tokenize = tokenize

    def forward(self, sentence_features, labels):
        texts = sentence_features  # here: (queries, documents) as raw strings
        joint = self.tokenize(texts[0] + texts[1])
        embeddings = self.model(joint)["sentence_embedding"]
        half = len(texts[0])
        return self.compute_loss_from_embeddings([embeddings[:half], embeddings[half:]], labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.manual_seed(0)
    corpus = read_corpus(require(ARXIV_MINI))
    rows = corpus.labels.to_label_rows(extra_ids=list(range(len(corpus))))
    sampler = HierarchicalBatchSampler.from_label_rows(rows, batch_size=args.batch_size, n_levels=corpus.labels.depth)
    batches = [b for b in sampler if len(b) == args.batch_size][: args.steps + args.warmup]

    model = load_sentence_transformer(None)
    model.max_seq_length = args.max_seq_length
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def features(texts):
        return model.preprocess(texts)

    variants = {
        "MNRL (query, document)": MultipleNegativesRankingLoss(model),
        "HEAL (query, document)": HEALLoss(model, temperature=0.1),
        "HEAL, queries padded to document length": PaddedTogetherHEAL(model, features, temperature=0.1),
    }
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for step, batch in enumerate(batches):
        queries = [corpus.titles[i] for i in batch]
        documents = [corpus.texts[i] for i in batch]
        labels = torch.tensor([rows[i] for i in batch])
        for name, loss_fn in variants.items():
            started = time.perf_counter()
            if isinstance(loss_fn, PaddedTogetherHEAL):
                output = loss_fn([queries, documents], labels)
            else:
                output = loss_fn([features(queries), features(documents)], labels)
            loss = torch.stack(list(output.values())).sum() if isinstance(output, dict) else output
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= args.warmup:
                timings[name].append(time.perf_counter() - started)

    mnrl = statistics.median(timings["MNRL (query, document)"])
    table = []
    for name, values in timings.items():
        median = statistics.median(values)
        table.append({"variant": name, "median_step_s": median, "ratio_to_mnrl": median / mnrl, "steps": len(values)})

    print(
        f"\nOne training step, batch {args.batch_size} (query, document) pairs, max_seq_length "
        f"{args.max_seq_length}, {torch.get_num_threads()} threads, median of {args.steps} steps\n"
    )
    print("| variant | median step (s) | × MNRL |")
    print("|---|---:|---:|")
    for row in table:
        print(f"| {row['variant']} | {row['median_step_s']:.3f} | {row['ratio_to_mnrl']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        args.out,
        {
            "command": "python " + " ".join(sys.argv),
            "batch_size": args.batch_size,
            "max_seq_length": args.max_seq_length,
            "threads": torch.get_num_threads(),
            "machine": platform.platform(),
            "results": table,
        },
    )
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
