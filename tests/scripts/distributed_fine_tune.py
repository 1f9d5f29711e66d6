"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: fine_tune on the tiny model, then record
what this rank saw (the batches accelerate dealt it, per epoch) and the SHA-256 of its final weights.

Usage: torchrun --nproc_per_node 2 tests/scripts/distributed_fine_tune.py BASE_MODEL CORPUS_JSONL OUT_DIR RECORD_DIR
[FINE_TUNE_KWARGS_JSON]  (e.g. checkpoint settings, or resume_from_checkpoint)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from accelerate.data_loader import BatchSamplerShard

from heal_rag.data import read_corpus
from heal_rag.distributed import get_rank, get_world_size
from heal_rag.training import fine_tune

base_model, corpus_path, out_dir, record_dir = sys.argv[1:5]
extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
seen: list[list[int]] = []
_iterate = BatchSamplerShard.__iter__


def _recording_iter(self):  # the real sharding, with a record of what this rank receives
    for batch in _iterate(self):
        seen.append(list(batch))
        yield batch


BatchSamplerShard.__iter__ = _recording_iter
corpus = read_corpus(corpus_path)
result = fine_tune(
    corpus.texts,
    corpus.labels,
    ids=corpus.ids,
    titles=corpus.titles,
    output_dir=out_dir,
    base_model=base_model,
    epochs=2,
    batch_size=8,
    learning_rate=1e-2,
    base_weight_share=0.0,
    show_progress_bar=False,
    **extra,
)
digest = hashlib.sha256()
for name, tensor in sorted(result.model.state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
record = {
    "rank": get_rank(),
    "world_size": get_world_size(),
    "batches": seen,
    "rows": len(corpus),
    "global_steps": result.global_steps,
    "weights_sha256": digest.hexdigest(),
    "metadata_keys": sorted(result.metadata),
    "changed": not torch.equal(
        result.model[0].embedding.weight.detach().cpu(),
        __import__("sentence_transformers").SentenceTransformer(base_model, device="cpu")[0].embedding.weight,
    ),
}
Path(record_dir, f"rank{get_rank()}.json").write_text(json.dumps(record))
