"""Multi-process training: the sampler deals every rank the same number of batches with every row once per epoch,
and ``torchrun --nproc_per_node 2`` (gloo, CPU) trains one model that only rank 0 writes (issue 20)."""

from __future__ import annotations

import inspect
import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_model, command_env, make_corpus, write_corpus_jsonl

from heal_rag.labels import LabelPaths
from heal_rag.losses import HEALLoss
from heal_rag.sampler import HierarchicalBatchSampler, deal_evenly

SCRIPT = Path(__file__).parent / "scripts" / "distributed_fine_tune.py"


def _label_rows(per_leaf: int) -> list[list[float]]:
    _, labels, _ = make_corpus(per_leaf)
    return LabelPaths(labels).to_label_rows()


def _shards(sampler: HierarchicalBatchSampler, world_size: int) -> list[list[list[int]]]:
    from accelerate.data_loader import BatchSamplerShard

    return [
        list(BatchSamplerShard(sampler, num_processes=world_size, process_index=rank, even_batches=False))
        for rank in range(world_size)
    ]


def test_deal_evenly_splits_batches_between_groups_and_pads_only_when_it_must():
    batches = [[[0, 1], [2, 3], [4, 5]], [[6, 7]], [[8, 9], [10, 11]]]
    dealt = deal_evenly(batches, 2)
    assert len(dealt) == 4
    assert sorted(row for batch in dealt for group in batch for row in group) == list(range(12))
    assert [[0, 1]] in dealt and [[2, 3], [4, 5]] in dealt  # the largest batch split at a group boundary
    assert deal_evenly(batches, 3) == batches
    padded = deal_evenly([[[0, 1]]], 3)  # one group, three ranks: nothing to split, so repeat
    assert padded == [[[0, 1]]] * 3


@pytest.mark.parametrize(("world_size", "per_leaf", "batch_size"), [(2, 8, 8), (3, 8, 8), (2, 5, 12), (4, 9, 10)])
def test_every_rank_gets_as_many_batches_and_every_row_is_used_once(world_size, per_leaf, batch_size):
    rows = _label_rows(per_leaf)
    sampler = HierarchicalBatchSampler.from_label_rows(rows, batch_size=batch_size, seed=3, world_size=world_size)
    assert sampler.batch_size is None  # accelerate must not wait for full-size batches
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        shards = _shards(sampler, world_size)
        assert len({len(shard) for shard in shards}) == 1, [len(s) for s in shards]
        assert all(len(shard) == len(sampler) // world_size for shard in shards)
        counts = Counter(row for shard in shards for batch in shard for row in batch)
        assert counts == Counter(range(len(rows)))
        for shard in shards:  # the hierarchy guarantee survives the split: every row has a leaf-mate in its batch
            for batch in shard:
                leaves = Counter(rows[row][-1] for row in batch)
                assert all(count >= 2 for count in leaves.values()), batch
                assert len(batch) <= batch_size


def test_a_single_process_sampler_is_unchanged():
    rows = _label_rows(8)
    single = HierarchicalBatchSampler.from_label_rows(rows, batch_size=8, seed=3)
    assert single.batch_size == 8 and single.world_size == 1
    assert list(single) == list(HierarchicalBatchSampler.from_label_rows(rows, batch_size=8, seed=3, world_size=1))


def test_the_sampler_is_found_under_accelerates_wrappers():
    from accelerate.data_loader import BatchSamplerShard, SkipBatchSampler
    from torch.utils.data import DataLoader

    from heal_rag.sampler import find_hierarchical_sampler

    sampler = HierarchicalBatchSampler.from_label_rows(_label_rows(4), batch_size=8, world_size=2)
    resumed = DataLoader(range(24), batch_sampler=SkipBatchSampler(BatchSamplerShard(sampler, 2, 0), skip_batches=1))
    assert find_hierarchical_sampler(resumed) is sampler  # three levels down, as in a resumed torchrun epoch
    assert find_hierarchical_sampler(DataLoader(range(4), batch_size=2)) is None  # an ordinary loader: nothing
    assert find_hierarchical_sampler(None) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = command_env()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    texts, labels, titles = make_corpus(7)  # 42 rows: batches of varying length
    return write_corpus_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", texts, labels, titles)


def test_torchrun_two_processes_train_one_model_that_rank_0_writes(corpus_file, tmp_path):
    out, records = tmp_path / "model", tmp_path / "records"
    records.mkdir()
    _torchrun([str(SCRIPT), str(build_tiny_model()), str(corpus_file), str(out), str(records)], cwd=tmp_path)
    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(r["changed"] for r in ranks)  # the model trained
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # and the ranks agree on its final weights
    assert ranks[0]["global_steps"] == ranks[1]["global_steps"] > 0
    assert ranks[0]["metadata_keys"] and not ranks[1]["metadata_keys"]  # rank 0 alone wrote heal_rag.json
    n_rows = ranks[0]["rows"]
    per_epoch = len(ranks[0]["batches"]) // 2
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == 2 * per_epoch
    for epoch in (0, 1):  # every row seen exactly once per epoch, across the two ranks
        seen = Counter(
            row for r in ranks for batch in r["batches"][epoch * per_epoch : (epoch + 1) * per_epoch] for row in batch
        )
        assert seen == Counter(range(n_rows))
    assert (out / "heal_rag.json").is_file() and (out / "model.safetensors").is_file()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    # the loss saw both ranks' rows (the default, measured in benchmarks/distributed.py)
    training = json.loads((out / "heal_rag.json").read_text())["training"]
    assert training["gather_across_devices"] is True
    assert training["world_size"] == 2

    from heal_rag.encoder import HEALEncoder

    encoder = HEALEncoder.load(out)  # the written directory is complete: it loads and predicts paths
    assert encoder.predict_path(["laser light lens"])[0].path


def test_a_run_resumed_mid_epoch_under_torchrun_replays_that_epochs_batches(corpus_file, tmp_path):
    # every step checkpointed, all kept; then resume from the second step of epoch 1 (three sampler wrappers deep:
    # SkipBatchSampler -> BatchSamplerShard -> HierarchicalBatchSampler, where the trainer's set_epoch does not reach)
    checkpoints = tmp_path / "ckpt"
    full = {"checkpoint_dir": str(checkpoints), "checkpoint_steps": 1, "training_args": {"save_total_limit": None}}
    model = str(build_tiny_model())
    for name in ("full", "resumed"):
        (tmp_path / name).mkdir()
    _torchrun(
        [str(SCRIPT), model, str(corpus_file), str(tmp_path / "a"), str(tmp_path / "full"), json.dumps(full)], tmp_path
    )
    uninterrupted = [json.loads((tmp_path / "full" / f"rank{r}.json").read_text()) for r in (0, 1)]
    per_epoch = len(uninterrupted[0]["batches"]) // 2
    assert per_epoch >= 2
    resume = {"resume_from_checkpoint": str(checkpoints / f"checkpoint-{per_epoch + 1}")}
    _torchrun(
        [str(SCRIPT), model, str(corpus_file), str(tmp_path / "b"), str(tmp_path / "resumed"), json.dumps(resume)],
        tmp_path,
    )
    for rank in (0, 1):
        resumed = json.loads((tmp_path / "resumed" / f"rank{rank}.json").read_text())
        epoch_0, epoch_1 = (uninterrupted[rank]["batches"][i * per_epoch : (i + 1) * per_epoch] for i in (0, 1))
        assert epoch_0 != epoch_1  # the plans differ, so replaying epoch 0 would show
        # the resumed run walks epoch 1's plan (skipping the step already trained), then stops at the same step
        assert resumed["batches"] == epoch_1
        assert resumed["global_steps"] == uninterrupted[rank]["global_steps"]


def test_under_torchrun_rank_0_alone_discovers_the_labels_every_rank_trains_on(tmp_path):
    texts, _, titles = make_corpus(per_leaf=12)  # 72 documents without labels
    data = tmp_path / "c.jsonl"
    data.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t, "title": titles[i]}) + "\n" for i, t in enumerate(texts))
    )
    records, out = tmp_path / "records", tmp_path / "model"
    records.mkdir()
    result = _torchrun(
        [str(Path(__file__).parent / "scripts" / "distributed_discover.py"), str(records), "--data", str(data),
         "--out", str(out), "--base-model", str(build_tiny_model()), "--max-steps", "2", "--batch-size", "8",
         "--hard-negatives", "1"],
        cwd=tmp_path,
    )  # fmt: skip
    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["code"] for r in ranks] == [0, 0]
    assert [r["hnmfk_runs"] for r in ranks] == [1, 0]  # one HNMFk, on rank 0
    assert [r["minings"] for r in ranks] == [1, 0]  # the hard negatives too: every rank trains on rank 0's
    assert ranks[0]["negatives"] == ranks[1]["negatives"] and len(ranks[0]["negatives"]) > 0
    assert ranks[0]["labels"] == ranks[1]["labels"] and len(ranks[0]["labels"]) == 72  # the same paths everywhere
    assert result.stdout.count("saved to") == 1
    assert json.loads((out / "heal_rag.json").read_text())["training"]["global_steps"] == 2


def test_broadcast_from_rank_0_hands_every_rank_its_result_or_its_error(tmp_path):
    _torchrun([str(Path(__file__).parent / "scripts" / "distributed_broadcast.py"), str(tmp_path)], cwd=tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["value"] for r in ranks] == [{"from_rank": 0}, {"from_rank": 0}]
    assert [r["computed_here"] for r in ranks] == [1, 0]
    assert ranks[0]["error"] == "ValueError: no labels could be discovered"
    assert (
        ranks[1]["error"] == "RuntimeError: rank 0 failed before training: ValueError: no labels could be discovered"
    )


def test_the_cli_under_torchrun_prints_once_and_writes_a_complete_model(corpus_file, tmp_path):
    out = tmp_path / "cli-model"
    result = _torchrun(
        ["-m", "heal_rag.cli", "train", "--data", str(corpus_file), "--out", str(out), "--base-model",
         str(build_tiny_model()), "--max-steps", "3", "--batch-size", "8", "--lr", "1e-2", "--base-weight-share", "0",
         "--checkpoints", str(tmp_path / "ckpt"), "--checkpoint-steps", "2", "--no-gather-across-devices"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.stdout.count("saved to") == 1, result.stdout
    assert json.loads((out / "heal_rag.json").read_text())["training"]["global_steps"] == 3
    assert (tmp_path / "ckpt" / "checkpoint-2" / "trainer_state.json").is_file()  # rank 0 wrote the checkpoint
    assert (tmp_path / "ckpt" / "checkpoint-2" / "heal_rag_run.json").is_file()  # and the run's record
    assert json.loads((out / "heal_rag.json").read_text())["training"]["gather_across_devices"] is False

    # resuming that 2-process checkpoint in one process (same settings) works, with a warning that the batches differ
    from heal_rag.cli import main

    with pytest.warns(UserWarning, match="written by 2 processes and this run has 1.*torchrun --nproc_per_node 2"):
        code = main(
            ["train", "--data", str(corpus_file), "--out", str(tmp_path / "one"), "--base-model",
             str(build_tiny_model()), "--max-steps", "5", "--batch-size", "8", "--lr", "1e-2",
             "--base-weight-share", "0", "--checkpoints", str(tmp_path / "ckpt"), "--resume",
             "--no-gather-across-devices"]
        )  # fmt: skip
    assert code == 0
    assert json.loads((tmp_path / "one" / "heal_rag.json").read_text())["training"]["global_steps"] == 5


def test_the_cli_under_accelerate_launch_trains_on_two_processes(corpus_file, tmp_path):
    # accelerate's --cpu flag starts a single process; --multi_gpu starts one per --num_processes, with gloo on CPU
    out = tmp_path / "model"
    env = command_env(HF_HOME=str(tmp_path / "hf"))  # no accelerate config of the machine's
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port())]  # fmt: skip
    train = ["-m", "heal_rag.cli", "train", "--data", str(corpus_file), "--out", str(out), "--base-model",
             str(build_tiny_model()), "--max-steps", "3", "--batch-size", "8", "--base-weight-share", "0"]  # fmt: skip
    command = launcher + train
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert result.stdout.count("saved to") == 1, result.stdout  # rank 0 alone prints and writes
    training = json.loads((out / "heal_rag.json").read_text())["training"]
    assert training["world_size"] == 2 and training["global_steps"] == 3


def test_gathered_loss_and_gradients_equal_the_single_process_reference(tmp_path):
    """Each rank's loss over the gathered batch (its rows as anchors, padding masked) and the gradient of its rows
    equal what one process computes on the whole batch (tests/scripts/distributed_gather.py)."""
    _torchrun([str(Path(__file__).parent / "scripts" / "distributed_gather.py"), str(tmp_path)], cwd=tmp_path)
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["loss"] == pytest.approx(record["reference_loss"], rel=1e-9)
        for name in ("grad_q", "grad_d"):
            assert np.allclose(record[name], record[f"reference_{name}"], atol=1e-12)
            assert np.abs(record[name]).max() > 0


def test_anchor_and_padding_masks_leave_the_loss_unchanged_in_one_process():
    torch.manual_seed(1)
    queries, documents = torch.randn(6, 8), torch.randn(6, 8)
    labels = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 2], [0, 1, 3], [1, 2, 4], [1, 2, 5]])
    loss = HEALLoss(torch.nn.Identity(), consistency_weight=0.5, pair_level_discount=0.2)
    plain = loss.compute_loss_from_embeddings([queries, documents], labels)
    padded = loss.compute_loss_from_embeddings(
        [torch.cat([queries, torch.zeros(3, 8)]), torch.cat([documents, torch.zeros(3, 8)])],
        torch.cat([labels, torch.full((3, 3), -1)]),
        anchors=torch.tensor([True] * 6 + [False] * 3),
        present=torch.tensor([True] * 6 + [False] * 3),
    )
    assert plain.keys() == padded.keys()
    for name, value in plain.items():
        assert float(padded[name]) == pytest.approx(float(value), rel=1e-6), name


def test_the_negatives_of_padding_rows_are_never_candidates():
    torch.manual_seed(3)
    columns = [torch.randn(6, 8) for _ in range(4)]  # queries, documents, two negative columns
    own = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 2], [0, 1, 3], [1, 2, 4], [1, 2, 5]])
    labels = torch.cat([own, torch.roll(own, 2, 0) + 10, torch.roll(own, 3, 0) + 20], dim=1)
    loss = HEALLoss(torch.nn.Identity())
    plain = loss.compute_loss_from_embeddings(columns, labels)
    padded = loss.compute_loss_from_embeddings(
        [torch.cat([column, torch.zeros(3, 8)]) for column in columns],
        torch.cat([labels, torch.full((3, 9), -1)]),  # as _gather_batch pads a rank's rows
        anchors=torch.tensor([True] * 6 + [False] * 3),
        present=torch.tensor([True] * 6 + [False] * 3),
    )
    for name, value in plain.items():
        assert float(padded[name]) == pytest.approx(float(value), rel=1e-6), name


def test_gathering_across_ranks_is_the_default_and_the_cli_can_switch_it_off():
    from heal_rag.cli import _training_overrides, build_parser
    from heal_rag.training import HEALTrainingConfig

    def config(*flags: str) -> HEALTrainingConfig:
        args = build_parser().parse_args(["train", "--data", "corpus.jsonl", "--out", "model", *flags])
        return HEALTrainingConfig(**_training_overrides(args))

    assert config().gather_across_devices is True
    assert config("--no-gather-across-devices").gather_across_devices is False
    assert config("--gather-across-devices").gather_across_devices is True
    assert inspect.signature(HEALLoss).parameters["gather_across_devices"].default is True
