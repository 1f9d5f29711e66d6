"""Serving a tuned model through ONNX Runtime or OpenVINO: export, numerical check, and encoding.

``export_model`` writes the model's transformer to ``<model>/exports/`` with ``torch.onnx`` (fp32), optionally
quantised to int8 with ONNX Runtime's dynamic quantisation; OpenVINO compiles those ONNX files directly. Tokenisation,
prompts, pooling and normalisation stay those of the sentence-transformers model, so a backend gives the same kind of
vector as PyTorch. An export is refused unless its vectors agree with PyTorch's on a fixed set of texts (the measured
agreement is kept in ``heal_rag.json`` under ``exports``). The PyTorch weights stay, so the directory still loads in
plain sentence-transformers; the files under ``exports/`` are outside the model's fingerprint, and each export
records its own file hash.

Backends: ``"torch"`` (default), ``"onnx"``, ``"onnx-int8"``, ``"openvino"``, ``"openvino-bf16"``,
``"openvino-int8"`` (the int8 ONNX file run by OpenVINO). ``"openvino"`` and ``"openvino-int8"`` run in fp32 on
every CPU (OpenVINO's ``INFERENCE_PRECISION_HINT`` is pinned, since OpenVINO's own default switches to bf16 on CPUs
that have it); ``"openvino-bf16"`` runs the fp32 ONNX file in bfloat16 and needs a CPU with native bf16 (AVX512_BF16
or AMX: OpenVINO lists ``BF16`` in the CPU's ``OPTIMIZATION_CAPABILITIES``). fp32 and bf16 backends give PyTorch's
vectors to within :data:`FP32_TOLERANCE` (checked at export), so a collection built with one can be queried with
another; int8 vectors differ more, so an int8 backend has its own fingerprint and a collection built with it accepts
only it (and vice versa).

Needs the ``onnx`` extra (``onnxruntime``, ``onnx``, ``onnxscript``) and, for OpenVINO, the ``openvino`` extra.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heal_rag._validation import check_choice
from heal_rag._warning import HEALWarning

#: The backends an encoder can use.
BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-bf16", "openvino-int8")
#: Folder, inside a model directory, holding the exported files (outside the model's fingerprint).
EXPORT_DIR = "exports"
#: Files of each exported backend (OpenVINO compiles the ONNX files).
EXPORT_FILES = {"onnx": "model.onnx", "onnx-int8": "model_int8.onnx"}
#: Largest allowed difference (1 − cosine) between a fp32 or bf16 backend's vectors and PyTorch's.
FP32_TOLERANCE = 1e-4
#: Largest allowed difference (1 − cosine) for int8; int8 backends get their own fingerprint.
INT8_TOLERANCE = 0.05
#: Texts the numerical check encodes: short queries and longer passages from several domains.
CHECK_TEXTS = (
    "How do I reset my password?",
    "matrix or vector norm",
    "Export a decision tree in DOT format.",
    "What are the symptoms of iron deficiency anaemia?",
    "superconducting qubits lose coherence through coupling to two-level systems in the substrate",
    "The pump must be primed before the first start: fill the casing with water and bleed the air.",
    "Quarterly revenue grew by 12 percent, driven by subscriptions in the European market.",
    "The court held that the contract was void because one party lacked capacity to consent.",
    "Gradient boosting builds an additive model in a forward stage-wise fashion; it allows for the optimization "
    "of arbitrary differentiable loss functions. In each stage a regression tree is fit on the negative gradient.",
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen as a by-product "
    "of splitting water molecules in the thylakoid membranes of chloroplasts.",
)


class ExportError(ValueError):
    """A model cannot be exported, or its export disagrees with PyTorch, or an exported file changed."""


def base_backend(backend: str) -> str:
    """The ONNX file a backend runs (``"onnx"`` or ``"onnx-int8"``)."""
    return "onnx-int8" if backend.endswith("int8") else "onnx"


def export_options(backend: str) -> dict[str, str | None]:
    """The :func:`export_model` arguments that write a backend, e.g. ``openvino``, ``None``, ``bf16``.

    Returns:
        ``{"backend": "onnx" | "openvino", "quantize": None | "int8", "precision": "fp32" | "bf16"}``.

    Raises:
        ValueError: For ``"torch"`` or an unknown backend.
    """
    check_choice("backend", backend, BACKENDS[1:])
    return {
        "backend": backend.split("-")[0],
        "quantize": "int8" if backend.endswith("int8") else None,
        "precision": "bf16" if backend.endswith("bf16") else "fp32",
    }


def export_flags(backend: str) -> str:
    """The `heal-rag export` options that write a backend, e.g. ``"--backend openvino --precision bf16"``."""
    options = export_options(backend)
    flags = f"--backend {options['backend']}"
    if options["quantize"]:
        flags += f" --quantize {options['quantize']}"
    if options["precision"] != "fp32":
        flags += f" --precision {options['precision']}"
    return flags


def cpu_has_native_bf16() -> bool:
    """Whether OpenVINO can run bfloat16 natively here (``BF16`` in the CPU's ``OPTIMIZATION_CAPABILITIES``).

    True on CPUs with AVX512_BF16 or AMX (Intel Cooper Lake and Sapphire Rapids onwards, AMD Zen 4 onwards).

    Raises:
        ImportError: Without the ``openvino`` extra.
    """
    core = _runtime_import("openvino").Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _openvino_config(backend: str) -> dict[str, str]:
    """The compile options of an OpenVINO backend: its inference precision, pinned (see the module docstring)."""
    if backend != "openvino-bf16":
        return {"INFERENCE_PRECISION_HINT": "f32"}
    if not cpu_has_native_bf16():
        warnings.warn(
            "This CPU has no native bf16 (AVX512_BF16 or AMX), so 'openvino-bf16' runs in fp32 here: the same "
            "vectors, without the bf16 speed-up (an 'onnx' export is the fp32 backend to choose on such a CPU).",
            HEALWarning,
            stacklevel=4,
        )
        return {"INFERENCE_PRECISION_HINT": "f32"}
    return {"INFERENCE_PRECISION_HINT": "bf16"}


def _runtime_import(backend: str) -> Any:
    try:
        if backend.startswith("openvino"):
            import openvino

            return openvino
        import onnxruntime

        return onnxruntime
    except ImportError as exc:
        extra = "openvino" if backend.startswith("openvino") else "onnx"
        raise ImportError(f"The {backend!r} backend needs the {extra} extra: pip install 'heal_rag[{extra}]'") from exc


def _pooling_mode(model: Any) -> str:
    """``"mean"``, ``"cls"`` or ``"max"``: the sentence-transformers Pooling module's mode."""
    config = model[1].get_config_dict()
    mode = config.get("pooling_mode") or ("cls" if config.get("pooling_mode_cls_token") else "mean")
    return str(mode)


def _check_exportable(model: Any) -> None:
    names = [type(module).__name__ for module in model]
    if not names or names[0] != "Transformer" or names[1:2] != ["Pooling"] or set(names[2:]) - {"Normalize"}:
        raise ExportError(
            f"Only models made of a Transformer, a Pooling and optionally a Normalize module can be exported; this "
            f"one has {names}. Keep the torch backend for it."
        )
    if _pooling_mode(model) not in ("mean", "cls", "max"):
        raise ExportError(f"Pooling {_pooling_mode(model)!r} is not supported by the exported backends.")


def _last_hidden_state_module(transformer: Any, input_names: list[str]) -> Any:
    """A torch module taking the inputs positionally and returning the last hidden state (what ONNX export needs)."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs: Any) -> Any:
            return self.transformer(**dict(zip(input_names, inputs, strict=True))).last_hidden_state

    return LastHiddenState().eval()


def _export_onnx(model: Any, path: Path) -> None:
    import torch

    transformer = model[0].auto_model
    sample = model.tokenizer(
        ["a short text", "a somewhat longer text to export with"], padding=True, return_tensors="pt"
    )
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]
    wrapper = _last_hidden_state_module(transformer, names)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    # The tracer's warnings are about shapes fixed at trace time; dynamic axes cover batch and sequence, and the
    # agreement check afterwards is what decides whether the export is kept.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(sample[name] for name in names),
            str(path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def checked_export(model_dir: str | os.PathLike[str], metadata: dict[str, Any] | None, backend: str) -> dict[str, Any]:
    """The record of ``backend``'s checked export in a model's ``heal_rag.json`` (``metadata``; ``None``: none).

    Raises:
        ExportError: When the model has no checked export for ``backend``, naming the ``heal-rag export`` to run.
    """
    record = ((metadata or {}).get("exports") or {}).get(backend)
    if record is None:
        raise ExportError(
            f"{str(model_dir)!r} has no checked {backend} export: run `heal-rag export --model {model_dir} "
            f"{export_flags(backend)}` first."
        )
    return record


class RuntimeEncoder:
    """Encodes texts with an exported model, the sentence-transformers model's tokenizer, prompts and pooling.

    Args:
        model: The loaded ``SentenceTransformer`` (its tokenizer, prompts, pooling and token limit are used).
        model_dir: The model directory holding ``exports/``.
        backend: One of :data:`BACKENDS` other than ``"torch"``.
        expected_sha256: The export's recorded file hash; a different file is refused.

    Attributes:
        inference_precision: What the runtime computes in: ``"f32"``, or ``"bf16"`` for ``"openvino-bf16"`` on a
            CPU with native bf16 (int8 files dequantise to f32 between their int8 products).

    Raises:
        ExportError: When the export is missing or its file changed since it was checked.
        ImportError: Without the backend's extra.
    """

    def __init__(
        self, model: Any, model_dir: str | os.PathLike[str], backend: str, expected_sha256: str | None
    ) -> None:
        check_choice("backend", backend, BACKENDS[1:])
        runtime = _runtime_import(backend)
        path = Path(model_dir) / EXPORT_DIR / EXPORT_FILES[base_backend(backend)]
        if not path.is_file():
            raise ExportError(
                f"{str(model_dir)!r} has no {backend} export file: run `heal-rag export --model {model_dir} "
                f"{export_flags(backend)}` first."
            )
        if expected_sha256 is not None and _sha256(path) != expected_sha256:
            raise ExportError(f"{path} changed after it was exported and checked; export the model again.")
        self.model = model
        self.backend = backend
        if backend.startswith("openvino"):
            compiled = runtime.Core().compile_model(str(path), "CPU", _openvino_config(backend))
            self.inference_precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            self.input_names = [port.get_any_name() for port in compiled.inputs]
            self._run = lambda feed: compiled(feed)[0]
        else:
            options = runtime.SessionOptions()
            options.log_severity_level = 3
            session = runtime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.inference_precision = "f32"  # ONNX Runtime's CPU provider; int8 files dequantise to it
            self.input_names = [i.name for i in session.get_inputs()]
            self._run = lambda feed: session.run(None, feed)[0]
        self.pooling = _pooling_mode(model)

    def encode(self, texts: list[str], prompt: str = "", batch_size: int = 32) -> np.ndarray:
        """Normalised ``(n, dimension)`` vectors of ``texts`` (with ``prompt`` prepended), as float32."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        order = np.argsort([-len(text) for text in texts], kind="stable")
        out: list[np.ndarray] = [np.empty(0)] * len(texts)
        limit = getattr(self.model, "max_seq_length", None)
        for start in range(0, len(texts), batch_size):
            batch = [prompt + texts[i] for i in order[start : start + batch_size]]
            features = self.model.tokenizer(
                batch, padding=True, truncation=True, max_length=limit, return_tensors="np"
            )
            feed = {name: features[name].astype(np.int64) for name in self.input_names}
            hidden = np.asarray(self._run(feed), dtype=np.float32)
            pooled = self._pool(hidden, features["attention_mask"])
            for position, vector in zip(order[start : start + batch_size], pooled, strict=True):
                out[position] = vector
        vectors = np.stack(out)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask[..., None].astype(np.float32)
        if self.pooling == "max":
            return np.where(weights > 0, hidden, -1e9).max(axis=1)
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


@dataclass(frozen=True)
class ExportRecord:
    """What an export wrote and how well it agrees with PyTorch (kept in ``heal_rag.json``)."""

    backend: str
    file: str
    sha256: str
    min_cosine: float
    texts_checked: int

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON view."""
        return {"file": self.file, "sha256": self.sha256, "min_cosine": self.min_cosine, "texts": self.texts_checked}


def export_model(
    model_dir: str | os.PathLike[str],
    backend: str = "onnx",
    quantize: str | None = None,
    *,
    precision: str = "fp32",
    overwrite: bool = False,
) -> ExportRecord:
    """Export a model for fast CPU serving and record it in ``heal_rag.json`` (see the module docstring).

    Args:
        model_dir: A heal_rag model directory.
        backend: ``"onnx"`` or ``"openvino"`` (which runs the ONNX file).
        quantize: ``None`` or ``"int8"`` (dynamic int8 quantisation of the weights).
        precision: ``"fp32"`` or, with ``backend="openvino"`` and no quantisation, ``"bf16"``: OpenVINO computes in
            bfloat16 (about twice as fast where the CPU has native bf16; see :func:`cpu_has_native_bf16`).
        overwrite: Replace an earlier export of the same kind.

    Returns:
        The :class:`ExportRecord` of the backend (``"onnx"``, ``"onnx-int8"``, ``"openvino"``, ``"openvino-bf16"``,
        ``"openvino-int8"``).

    Raises:
        ExportError: For a model that cannot be exported, an existing export without ``overwrite``, bf16 asked of
            ONNX Runtime, with int8, or on a CPU without native bf16 (its check would measure fp32), or vectors that
            disagree with PyTorch's beyond :data:`FP32_TOLERANCE` (fp32, bf16) or :data:`INT8_TOLERANCE` (int8);
            nothing is kept then.
        ImportError: Without the backend's extra.
    """
    from heal_rag.artifacts import METADATA_FILE, read_metadata, write_json_atomic
    from heal_rag.models import load_sentence_transformer
    from heal_rag.outputs import check_writable

    check_choice("backend", backend, ("onnx", "openvino"))
    check_choice("quantize", quantize, (None, "int8"))
    check_choice("precision", precision, ("fp32", "bf16"))
    name = backend + ("-int8" if quantize else "-bf16" if precision == "bf16" else "")
    _runtime_import(name)
    _runtime_import("onnx")
    if precision == "bf16":
        _check_bf16_export(backend, quantize)
    metadata = read_metadata(model_dir, verify_files=True)
    for location in (Path(model_dir), Path(model_dir) / EXPORT_DIR):  # before the export's work, not after it
        check_writable(location)
    model = load_sentence_transformer(model_dir)
    _check_exportable(model)
    exports = Path(model_dir) / EXPORT_DIR
    target = exports / EXPORT_FILES[base_backend(name)]
    records = dict(metadata.get("exports") or {})
    sharing = {k for k in records if base_backend(k) == base_backend(name)}  # the backends that run this file
    intact = target.is_file() and _sha256(target) in {records[k]["sha256"] for k in sharing}
    if name in records and intact and not overwrite:
        raise ExportError(
            f"{str(model_dir)!r} already has a checked {name} export; pass overwrite=True (CLI: --overwrite) to "
            "export it again."
        )
    if not intact or (overwrite and name in EXPORT_FILES):  # missing, changed or unrecorded files are written anew
        exports.mkdir(exist_ok=True)
        _write_onnx(model, exports, quantized=bool(quantize))
        dropped = sorted(sharing - {name})
        if dropped:
            warnings.warn(
                f"{target.name} was written anew, so its checked {', '.join(dropped)} export(s) were dropped from "
                "heal_rag.json: export them again to use them.",
                HEALWarning,
                stacklevel=2,
            )
        records = {k: v for k, v in records.items() if k not in sharing}
    record = _check_agreement(model, model_dir, name, target)
    records[name] = record.as_dict()
    metadata = read_metadata(model_dir)
    metadata["exports"] = records
    write_json_atomic(Path(model_dir) / METADATA_FILE, metadata)
    return record


def _check_bf16_export(backend: str, quantize: str | None) -> None:
    if backend != "openvino" or quantize:
        raise ExportError(
            "bf16 needs backend='openvino' and no int8 quantisation (heal-rag export --backend openvino --precision "
            "bf16)."
        )
    if not cpu_has_native_bf16():
        raise ExportError(
            "This CPU has no native bf16 (AVX512_BF16 or AMX), so a bf16 export cannot be checked here: export it "
            "on the machine that serves it, or use the fp32 backend 'onnx' here (heal-rag export --backend onnx)."
        )


def _write_onnx(model: Any, exports: Path, quantized: bool) -> None:
    """Write ``model.onnx`` (and, quantised, ``model_int8.onnx`` from it) through a staging file."""
    fp32 = exports / EXPORT_FILES["onnx"]
    target = exports / EXPORT_FILES["onnx-int8" if quantized else "onnx"]
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if quantized:
            if not fp32.is_file():
                _write_onnx(model, exports, quantized=False)
            from onnxruntime.quantization import QuantType, quantize_dynamic

            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # its advice to pre-process is for static quantisation of vision models
            try:
                quantize_dynamic(str(fp32), str(staging), weight_type=QuantType.QInt8, per_channel=True)
            finally:
                root.setLevel(level)
        else:
            _export_onnx(model, staging)
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)


def _check_agreement(model: Any, model_dir: str | os.PathLike[str], name: str, path: Path) -> ExportRecord:
    """Encode :data:`CHECK_TEXTS` both ways; refuse (and remove the file) when the vectors disagree."""
    reference = np.asarray(
        model.encode_document(list(CHECK_TEXTS), normalize_embeddings=True, show_progress_bar=False)
    )
    runtime = RuntimeEncoder(model, model_dir, name, expected_sha256=None)
    vectors = runtime.encode(list(CHECK_TEXTS), prompt=_document_prompt(model))
    min_cosine = float((reference * vectors).sum(axis=1).min())
    tolerance = INT8_TOLERANCE if name.endswith("int8") else FP32_TOLERANCE
    if not 1.0 - min_cosine <= tolerance:
        if not name.startswith("openvino"):
            path.unlink(missing_ok=True)
        fallback = "an fp32 backend ('openvino' or 'onnx')" if name.endswith("bf16") else "the torch backend"
        raise ExportError(
            f"The {name} export disagrees with PyTorch (least cosine {min_cosine:.6f}, allowed {1 - tolerance:.6f}); "
            f"it is not kept. Keep {fallback} for this model."
        )
    return ExportRecord(name, f"{EXPORT_DIR}/{path.name}", _sha256(path), round(min_cosine, 6), len(CHECK_TEXTS))


def _document_prompt(model: Any) -> str:
    prompts = getattr(model, "prompts", None) or {}
    return next((prompts[n] for n in ("document", "passage", "corpus") if prompts.get(n)), "")
