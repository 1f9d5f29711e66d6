"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: HEALLoss with gather_across_devices.

Rank 0 holds rows 0-5 of a 10-row paired batch, rank 1 rows 6-9 (unequal, so padding is exercised). Each rank
computes its loss on the gathered batch and back-propagates it; the script writes this rank's loss and the
gradient of its own rows next to the single-process reference: the loss over the full batch with this rank's rows
as anchors, and the gradient of the sum of both ranks' reference losses (what all_gather's backward sums up).

Usage: torchrun --nproc_per_node 2 tests/scripts/distributed_gather.py RECORD_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from heal_rag.losses import HEALLoss, _gather_batch

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
queries, documents = torch.randn(10, 8, dtype=torch.float64), torch.randn(10, 8, dtype=torch.float64)
labels = torch.tensor(
    [[0, 0, i] for i in range(4)] + [[0, 1, i] for i in range(4, 7)] + [[1, 2, i] for i in (7, 8, 9)]
)
labels[3, -1] = 2  # two rows of one document: positives at the document level
rows = slice(0, 6) if rank == 0 else slice(6, 10)
loss = HEALLoss(torch.nn.Identity(), pair_level_discount=0.3, consistency_weight=0.5, symmetric_pairs=True)

local_q, local_d = queries[rows].clone().requires_grad_(), documents[rows].clone().requires_grad_()
gathered, gathered_labels, anchors, present = _gather_batch([local_q, local_d], labels[rows])
components = loss.compute_loss_from_embeddings(gathered, gathered_labels, anchors=anchors, present=present)
total = sum(components.values())
total.backward()


def reference(q: torch.Tensor, d: torch.Tensor, anchor_rows: slice) -> torch.Tensor:
    anchor_mask = torch.zeros(10, dtype=torch.bool)
    anchor_mask[anchor_rows] = True
    return sum(loss.compute_loss_from_embeddings([q, d], labels, anchors=anchor_mask).values())


full_q, full_d = queries.clone().requires_grad_(), documents.clone().requires_grad_()
own = reference(full_q, full_d, rows)
(reference(full_q, full_d, slice(0, 6)) + reference(full_q, full_d, slice(6, 10))).backward()
record = {
    "loss": float(total.detach()),
    "reference_loss": float(own.detach()),
    "grad_q": local_q.grad.tolist(),
    "reference_grad_q": full_q.grad[rows].tolist(),
    "grad_d": local_d.grad.tolist(),
    "reference_grad_d": full_d.grad[rows].tolist(),
}
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(record))
dist.barrier()  # leave together: a rank tearing gloo down while the other is still in it aborts (seen, flaky)
dist.destroy_process_group()
