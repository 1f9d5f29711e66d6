"""Checkpoints of a training run: where they go, and whether a run may resume from one.

``fine_tune(checkpoint_dir=..., resume_from_checkpoint=...)`` (``heal-rag train --checkpoints DIR --resume``) hands
checkpointing to the sentence-transformers trainer. This module checks, before any work starts, that the directory
holds only checkpoints, that the one resumed from is complete, safe to load and not at the end of training, and that
it belongs to *this* run: every checkpoint also holds ``heal_rag_run.json``, the run's settings, the trainer
arguments that change training, and a fingerprint of its training rows, and a resumed run with other settings or
other data is refused (it would not give the uninterrupted run's result, which is what resuming promises). Only the
step budget (``max_steps``, ``epochs``) may change, to train on past the checkpoint; the learning-rate schedule then
follows the new budget, so that result is not an uninterrupted run's either. The base model is not compared: the
checkpoint's weights replace it, and what the base model still decides (the blend, mined negatives) uses the one
given now.
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
# trainer arguments that say where and how often to write or show things, not how to train
_UNRECORDED_ARGUMENT_PREFIXES = (
    "output_dir",
    "logging",
    "save",
    "report_to",
    "disable_tqdm",
    "dataloader",
    "push_to_hub",
    "hub_",
    "run_name",
)


def run_record(
    config: HEALTrainingConfig, rows: TrainingRows, training_args: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What a checkpoint records about its run: the settings a resume must keep, and the rows' SHA-256.

    Args:
        config: The run's settings; all but :data:`RESUMABLE_SETTINGS` are recorded.
        rows: The rows as :func:`heal_rag.training.build_training_rows` returns them (queries, documents, label
            paths, in order), before the blend's hold-out and the mined negatives, which follow from them and the
            settings. Their SHA-256 is recorded, not the rows.
        training_args: The user's extra trainer arguments; those that change training are recorded (not where or
            how often to save, log or load).

    Returns:
        ``{"settings": {...}, "training_args": {...}, "rows_sha256": "..."}``, plain JSON.
    """
    settings = {key: value for key, value in config.as_dict().items() if key not in RESUMABLE_SETTINGS}
    arguments = {
        key: value for key, value in (training_args or {}).items() if not key.startswith(_UNRECORDED_ARGUMENT_PREFIXES)
    }
    digest = hashlib.sha256()
    for name in sorted(rows.columns):
        digest.update(json.dumps(name).encode("utf-8"))
        for value in rows.columns[name]:
            digest.update(json.dumps(value, ensure_ascii=False, default=_plain).encode("utf-8") + b"\n")
    record = {"settings": settings, "training_args": arguments, "rows_sha256": digest.hexdigest()}
    return json.loads(json.dumps(record, default=_plain))  # numpy numbers as Python ones, tuples as lists


def _plain(value: Any) -> Any:
    """A JSON stand-in for ``value``: a numpy number's Python value, else its ``repr``."""
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "shape", None) == () else repr(value)


class RunRecordCallback(TrainerCallback):
    """Put the run's :func:`run_record` into each checkpoint folder *before* the trainer writes the checkpoint.

    The trainer marks a checkpoint complete by writing ``trainer_state.json`` last, so a complete checkpoint always
    holds the record: it is written when a step or epoch ends with a save due, ahead of the save, by every process
    that saves (``args.should_save``: the main process, or one per node with ``save_on_each_node``).

    Args:
        record: The :func:`run_record` of the run being trained.
    """

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = dict(record)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Write the record into ``<output_dir>/checkpoint-<step>`` when this step ends with a save."""
        self._write(args, state, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Write the record when the epoch ends with a save (``save_strategy="epoch"``)."""
        self._write(args, state, control)

    def _write(self, args: Any, state: Any, control: Any) -> None:
        if control.should_save and args.should_save:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
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
    record: Mapping[str, Any] | None,
    max_steps: int | None,
) -> str | bool | None:
    """Check the checkpoint a run resumes from: its weights, its run, and that training is not over.

    Args:
        checkpoints: The run's checkpoint directory (:func:`checkpoint_location`).
        resume_from_checkpoint: ``True`` (the latest checkpoint there), a checkpoint path, or ``None``/``False``.
        record: This run's :func:`run_record`, compared with the checkpoint's ``heal_rag_run.json`` (a checkpoint
            written before heal_rag kept one is resumed with a warning); ``None``: not compared.
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
    if record is not None:
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


def _flat_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """A run record's settings and trainer arguments in one mapping, the latter as ``training_args.<name>``."""
    training_args = dict(record.get("training_args", {}))
    return {**dict(record["settings"]), **{f"training_args.{k}": v for k, v in training_args.items()}}


def _check_same_run(checkpoint: Path, record: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose ``heal_rag_run.json`` records other settings or other rows than this run's.

    A checkpoint without the file (written before heal_rag kept one) is resumed with a warning. A setting the
    checkpoint's heal_rag did not have yet is compared only when this run changes it from its default, and
    ``gather_across_devices`` not at all in one process, where it does nothing.
    """
    file = checkpoint / RUN_RECORD_FILE
    if not file.is_file():
        warnings.warn(
            f"{checkpoint.name} has no {RUN_RECORD_FILE} (an older heal_rag wrote it), so whether this run has its "
            "settings and data cannot be checked: resume with the same ones for the same result.",
            HEALWarning,
            stacklevel=4,
        )
        return
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
        saved_settings, saved_rows = _flat_settings(saved), saved["rows_sha256"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{str(file)!r} is damaged ({error}); resume from another checkpoint.") from None
    settings = _flat_settings(record)
    from heal_rag.training import HEALTrainingConfig

    defaults = json.loads(json.dumps(HEALTrainingConfig().as_dict()))
    missing = object()
    changed = sorted(
        key
        for key in settings.keys() | saved_settings.keys()
        if settings.get(key, missing) != saved_settings.get(key, missing)
        and not (key not in saved_settings and key in defaults and settings[key] == defaults[key])
        and not (key == "gather_across_devices" and get_world_size() == 1)
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
            "differ; LLM-written questions differ between runs unless cached, see LLMQuestionGenerator's "
            "cache_path): resuming would mix the two. Resume with the same data, or start a new run without "
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
