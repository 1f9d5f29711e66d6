"""Checkpoints of a training run: where they go, and whether a run may resume from one.

``fine_tune(checkpoint_dir=..., resume_from_checkpoint=...)`` (``heal-rag train --checkpoints DIR --resume``) hands
checkpointing to the sentence-transformers trainer. This module checks, before any work starts, that the directory
holds only checkpoints, that the one resumed from is complete, safe to load and not at the end of training, and that
it belongs to *this* run: every checkpoint also holds ``heal_rag_run.json``, the run's settings and a fingerprint of
its training rows, and a resumed run with other settings or other data is refused (it would not give the
uninterrupted run's result, which is what resuming promises). Only the step budget (``max_steps``, ``epochs``) may
change, to train on.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from heal_rag._warning import HEALWarning
from heal_rag.artifacts import write_json_atomic
from heal_rag.distributed import get_world_size, is_main_process
from heal_rag.models import check_model_files
from heal_rag.outputs import OutputPathError, check_writable

if TYPE_CHECKING:
    from heal_rag.training import HEALTrainingConfig, TrainingRows

RUN_RECORD_FILE = "heal_rag_run.json"
# settings a resumed run may change: the step budget (to train on past the checkpoint) and the length the saved model
# serves at, which training never sees
RESUMABLE_SETTINGS = frozenset({"max_steps", "epochs", "save_max_seq_length"})


def run_record(config: HEALTrainingConfig, rows: TrainingRows) -> dict[str, Any]:
    """What a checkpoint records about its run: the settings a resume must keep, and the rows' SHA-256.

    The fingerprint covers the rows as :func:`heal_rag.training.build_training_rows` returns them (queries, documents,
    label paths, in order), before the blend's hold-out and the mined negatives, which follow from them and the
    settings.
    """
    settings = {key: value for key, value in config.as_dict().items() if key not in RESUMABLE_SETTINGS}
    payload = json.dumps(rows.columns, sort_keys=True, ensure_ascii=False, default=str)
    return {"settings": settings, "rows_sha256": hashlib.sha256(payload.encode("utf-8")).hexdigest()}


class RunRecordCallback(TrainerCallback):
    """Write the run's :func:`run_record` into each checkpoint the trainer saves (the main process only).

    Args:
        record: The :func:`run_record` of the run being trained.
    """

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = dict(record)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Add ``heal_rag_run.json`` to the checkpoint just written (``<output_dir>/checkpoint-<step>``)."""
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            write_json_atomic(folder / RUN_RECORD_FILE, self.record)


def checkpoint_location(
    output_dir: Path,
    checkpoint_dir: str | os.PathLike[str] | None,
    training_args: Mapping[str, Any] | None,
    resume_from_checkpoint: str | bool | None,
) -> Path | None:
    """Where checkpoints go (``None``: nowhere), checked before any training.

    A checkpoint directory may hold only the trainer's ``checkpoint-<step>`` folders. Existing checkpoints are
    refused unless the run resumes from them, and ``resume_from_checkpoint=True`` needs one.

    Raises:
        OutputPathError: For a directory with other files, or leftover checkpoints without ``resume``.
        ValueError: When resuming and there is no checkpoint.
    """
    args = dict(training_args or {})
    wanted = checkpoint_dir or args.pop("output_dir", None)
    if wanted is None and (str(args.get("save_strategy", "no")) != "no" or resume_from_checkpoint):
        wanted = output_dir.with_name(output_dir.name + ".checkpoints")
    if wanted is None:
        return None
    location = Path(wanted).expanduser().resolve()
    if location.exists() and not location.is_dir():
        raise OutputPathError(f"Checkpoint directory {str(wanted)!r} is an existing file; give a directory path.")
    entries = list(location.iterdir()) if location.is_dir() else []
    foreign = [e.name for e in entries if not (e.is_dir() and e.name.startswith("checkpoint-"))]
    if foreign:
        raise OutputPathError(
            f"Checkpoint directory {str(wanted)!r} holds files that are not checkpoints "
            f"({', '.join(sorted(foreign)[:3])}); heal_rag never replaces them. Choose a new or empty directory."
        )
    if isinstance(resume_from_checkpoint, str):
        if not (Path(resume_from_checkpoint) / "trainer_state.json").is_file():
            raise ValueError(f"{resume_from_checkpoint!r} is not a trainer checkpoint (no trainer_state.json).")
    elif resume_from_checkpoint and not entries:
        raise ValueError(
            f"Nothing to resume: {str(wanted)!r} holds no checkpoint. Start without resume_from_checkpoint (--resume)."
        )
    elif entries and not resume_from_checkpoint:
        raise OutputPathError(
            f"Checkpoint directory {str(wanted)!r} holds checkpoints of an earlier run. Pass "
            "resume_from_checkpoint=True (--resume) to continue it, or choose an empty checkpoint directory."
        )
    if location == output_dir or output_dir in location.parents:
        raise OutputPathError("The checkpoint directory must lie outside the model directory.")
    check_writable(location)
    return location


def check_resume_point(
    checkpoints: Path | None,
    resume_from_checkpoint: str | bool | None,
    record: Mapping[str, Any],
    max_steps: int | None,
) -> str | bool | None:
    """Check the checkpoint a run resumes from: its weights, its run, and that training is not over.

    Args:
        checkpoints: The run's checkpoint directory (:func:`checkpoint_location`).
        resume_from_checkpoint: ``True`` (the latest checkpoint there), a checkpoint path, or ``None``/``False``.
        record: This run's :func:`run_record`, compared with the checkpoint's ``heal_rag_run.json`` (a checkpoint
            written before heal_rag kept one is not compared).
        max_steps: This run's step budget (``None``: epochs).

    Returns:
        What to hand the trainer: with ``resume_from_checkpoint=True``, the latest *complete* checkpoint (one a run
        stopped while writing has no ``trainer_state.json`` and is passed over, with a warning).

    Raises:
        ValueError: When no checkpoint is complete, training already ended at the checkpoint, or the checkpoint
            belongs to a run with other settings or other training rows (naming them).
        heal_rag.models.UnsafeModelError: When the checkpoint holds pickled weights without safetensors.
    """
    if not resume_from_checkpoint:
        return resume_from_checkpoint
    if isinstance(resume_from_checkpoint, str):
        latest = Path(resume_from_checkpoint)
    else:
        found = [p for p in (checkpoints or Path()).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        if checkpoints is None or not found:
            return resume_from_checkpoint
        found.sort(key=lambda p: int(p.name.split("-")[-1]))
        complete = [p for p in found if (p / "trainer_state.json").is_file()]
        if not complete:
            raise ValueError(
                f"No complete checkpoint in {str(checkpoints)!r}: {found[-1].name} has no trainer_state.json (the run "
                "stopped while writing it). Delete that folder to start over, or point --resume at a complete one."
            )
        latest = complete[-1]
        if latest != found[-1]:
            warnings.warn(
                f"Resuming from {latest.name}: {found[-1].name} is incomplete (the run stopped while writing it).",
                HEALWarning,
                stacklevel=3,
            )
        resume_from_checkpoint = str(latest)
    check_model_files(latest)
    _check_same_run(latest, record)
    _warn_other_world_size(latest)
    state_file = latest / "trainer_state.json"
    step = json.loads(state_file.read_text(encoding="utf-8")).get("global_step", 0) if state_file.is_file() else 0
    if max_steps is not None and step >= max_steps:
        raise ValueError(
            f"The checkpoint {str(latest)!r} is at step {step}, the end of training (max_steps {max_steps}): "
            "there is nothing to resume. Raise --max-steps to train on, or start without --resume."
        )
    return resume_from_checkpoint


def _check_same_run(checkpoint: Path, record: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose ``heal_rag_run.json`` records other settings or other rows than this run's."""
    file = checkpoint / RUN_RECORD_FILE
    if not file.is_file():
        return
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
        saved_settings, saved_rows = dict(saved["settings"]), saved["rows_sha256"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{str(file)!r} is damaged ({error}); resume from another checkpoint.") from None
    settings = json.loads(json.dumps(record["settings"]))  # tuples as lists, as the file has them
    changed = sorted(
        key for key in settings.keys() | saved_settings.keys() if settings.get(key) != saved_settings.get(key)
    )
    if changed:
        shown = ", ".join(f"{key} {saved_settings.get(key)!r} → {settings.get(key)!r}" for key in changed[:5])
        raise ValueError(
            f"{checkpoint.name} was written by a run with other settings ({shown}): resuming would not give that "
            "run's result. Resume with the checkpoint's settings (only max_steps and epochs may change), or start a "
            "new run without resume_from_checkpoint (--resume) in an empty checkpoint directory."
        )
    if saved_rows != record["rows_sha256"]:
        raise ValueError(
            f"{checkpoint.name} was written by a run on other training data (the documents, queries or label paths "
            "differ): resuming would mix the two. Resume with the same data, or start a new run without "
            "resume_from_checkpoint (--resume) in an empty checkpoint directory."
        )


def _warn_other_world_size(checkpoint: Path) -> None:
    """Warn when ``checkpoint`` was written by another number of processes than this run has.

    The trainer saves one ``rng_state_<rank>.pth`` per process of a multi-process run, ``rng_state.pth`` for one;
    a checkpoint with neither (``save_only_model``, files removed) says nothing and is not warned about. Training
    goes on from the checkpoint's weights and optimiser state either way, but the sampler deals the epoch's batches
    to another number of ranks, so the rest of the epoch is not the uninterrupted run's.
    """
    ranks = len(list(checkpoint.glob("rng_state_*.pth")))
    written_by = ranks or (1 if (checkpoint / "rng_state.pth").is_file() else None)
    processes = get_world_size()
    if written_by is not None and written_by != processes and is_main_process():
        warnings.warn(
            f"{checkpoint.name} was written by {written_by} process{'es' if written_by > 1 else ''} and this run has "
            f"{processes}: training goes on "
            "from its weights and optimiser state, but the rest of the epoch is dealt to another number of processes "
            "(rows may repeat or be left out until the epoch ends), so the result is not the uninterrupted run's. "
            f"Resume with {written_by} process{'es' if written_by > 1 else ''} "
            f"({'torchrun --nproc_per_node ' + str(written_by) if written_by > 1 else 'no launcher'}) for that.",
            HEALWarning,
            stacklevel=4,
        )
