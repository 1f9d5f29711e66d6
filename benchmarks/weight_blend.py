"""Weight-space blending with the base model (``base_weight_share``): one training run, several blends.

Trains HEAL (``heal_rag.fine_tune`` with ``--heal`` overrides, blending switched off) or MNRL once per dataset on
the ``quality.py`` split and budget, then moves its weights back towards the base model by each ``--shares`` value
(``heal_rag.models.blend_with_base_weights``: ``(1 - share) * tuned + share * base``) and scores every blend
like ``quality.py`` does. A share of 0 is the plain tuned model, and a HEAL blend at share *s* is what
``fine_tune(..., base_weight_share=s)`` saves. This is how the default share was chosen.

    python benchmarks/weight_blend.py [--datasets arxiv medquad 20newsgroups] [--method heal|mnrl] \\
        [--shares 0 0.3 0.4 0.5] [--learning-rate 2e-4] [--seed 42] [--heal KEY=VALUE ...]

Prints one table per dataset and writes benchmarks/results/weight_blend-<method>-lr<lr>-seed<seed>.json. About
4 minutes to train plus ~40 s per share on 2 CPU cores, per dataset.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import quality
from quality import DATASETS, RESULTS, Budget, _cells, embed, load_split, score
from shared import parse_overrides

from heal_rag.artifacts import write_json_atomic
from heal_rag.evaluation import top_k_indices
from heal_rag.models import blend_with_base_weights, copy_weights, load_sentence_transformer


def blend_sweep(
    split: quality.Split, method: str, budget: Budget, overrides: dict[str, Any], shares: list[float]
) -> dict[str, dict[str, Any]]:
    """Train ``method`` once, then score the tuned model blended with the base at each share."""
    with tempfile.TemporaryDirectory(prefix=f"weight-blend-{method}-") as scratch:
        if method == "heal":
            model, _ = quality.train_heal(split, budget, Path(scratch), {**overrides, "base_weight_share": 0.0})
        else:
            model = quality.train_mnrl(split, budget, Path(scratch))
    base_state = load_sentence_transformer(None).state_dict()
    tuned_state = copy_weights(model)
    results = {}
    for share in sorted(shares):
        model.load_state_dict(tuned_state)
        blend_with_base_weights(model, base_state, share)
        arrays = embed(model, split)
        ranked = top_k_indices(arrays["queries"], arrays["documents"], quality.RANK_DEPTH)
        retrieval, classification = score(split, ranked, arrays)
        row = {"retrieval": retrieval, "classification": classification, "train_seconds": 0}
        results[f"share {share:g}"] = row
        print(f"[{split.name}] {method} share {share:g}: " + " | ".join(_cells(row)), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--method", choices=["heal", "mnrl"], default="heal")
    parser.add_argument("--shares", nargs="+", type=float, default=[0.0, 0.3, 0.4, 0.5])
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--heal", nargs="*", default=[], metavar="KEY=VALUE", help="HEALTrainingConfig overrides")
    args = parser.parse_args()
    budget = Budget(
        steps=args.steps,
        batch_size=32,
        learning_rate=args.learning_rate,
        warmup_ratio=0.1,
        max_seq_length=128,
        seed=args.seed,
    )
    overrides = {"learning_rate": args.learning_rate, **parse_overrides(args.heal)}
    report: dict[str, Any] = {"command": "python " + " ".join(sys.argv), "budget": budget.__dict__, "datasets": {}}
    for name in args.datasets:
        split = load_split(name, *quality.DEFAULT_SIZES)
        if split is None:
            continue
        results = blend_sweep(split, args.method, budget, overrides, args.shares)
        report["datasets"][name] = results
        title = f"{name}, {args.method} blended with the base"
        print("\n" + quality.format_table(title, results, len(split.test_texts)) + "\n")
    out = RESULTS / f"weight_blend-{args.method}-lr{args.learning_rate:g}-seed{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
