"""Exported backends (ONNX Runtime, OpenVINO, int8): export, agreement with PyTorch, fingerprints, refusals.

The model is a 1-layer BERT built in the test, fine-tuned for one HEAL step, so every check runs the real export and
the real runtimes on CPU in seconds.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import make_corpus
from reliability.test_truncation_and_prompts import wordpiece_model

from heal_rag.artifacts import METADATA_FILE, MetadataError
from heal_rag.backends import EXPORT_DIR, ExportError, cpu_has_native_bf16, export_model
from heal_rag.encoder import HEALEncoder

pytestmark = pytest.mark.filterwarnings("ignore::heal_rag.encoder.TruncationWarning")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def bert_heal_model(tmp_path_factory):
    """A tiny transformer HEAL model with query/document prompts (so prompts must reach the exported path too)."""
    from heal_rag.training import fine_tune

    base = tmp_path_factory.mktemp("bert")
    prompts = {"query": "query: ", "document": "passage: "}
    texts, labels, titles = make_corpus()
    out = base / "heal"
    fine_tune(
        texts,
        labels,
        titles=titles,
        output_dir=out,
        base_model=wordpiece_model(base, max_seq_length=32, prompts=prompts),
        max_steps=1,
        batch_size=8,
        samples_per_leaf=2,
        seed=0,
        show_progress_bar=False,
    )
    return out


@pytest.fixture()
def model_dir(bert_heal_model, tmp_path):
    """A private copy, so tests that export or tamper do not affect each other."""
    return shutil.copytree(bert_heal_model, tmp_path / "model")


def _texts() -> list[str]:
    texts, _, _ = make_corpus()
    return texts[:12] + ["", "a", " ".join(texts) * 3]  # empty, one token, and one past the token limit


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_fp32_backends_give_pytorchs_vectors_and_share_its_fingerprint(model_dir, backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    record = export_model(model_dir, backend)
    assert record.min_cosine > 1 - 1e-4
    assert (model_dir / record.file).is_file()
    torch_encoder = HEALEncoder.load(model_dir)
    runtime_encoder = HEALEncoder.load(model_dir, backend=backend)
    texts = _texts()
    np.testing.assert_allclose(
        runtime_encoder.embed_documents(texts), torch_encoder.embed_documents(texts), atol=2e-4, rtol=0
    )
    # Queries get the query prompt, documents the document prompt, on the exported path as on PyTorch's.
    np.testing.assert_allclose(runtime_encoder.embed_queries(texts), torch_encoder.embed_queries(texts), atol=2e-4)
    assert not np.allclose(runtime_encoder.embed_queries(texts[:3]), runtime_encoder.embed_documents(texts[:3]))
    assert runtime_encoder.fingerprint == torch_encoder.fingerprint
    # The export sits outside the model's fingerprint: the directory still verifies and loads in PyTorch.
    assert HEALEncoder.load(model_dir).fingerprint == torch_encoder.fingerprint


def _native_bf16() -> bool:
    pytest.importorskip("openvino")
    return cpu_has_native_bf16()


def test_openvino_runs_in_fp32_on_every_cpu(model_dir):
    """OpenVINO's own default is bf16 where the CPU has it; the ``openvino`` backend pins fp32."""
    pytest.importorskip("openvino")
    export_model(model_dir, "openvino")
    encoder = HEALEncoder.load(model_dir, backend="openvino")
    assert encoder.runtime.inference_precision == "f32"
    texts = _texts()
    np.testing.assert_allclose(
        encoder.embed_documents(texts), HEALEncoder.load(model_dir).embed_documents(texts), atol=2e-5
    )


def test_bf16_agrees_within_the_fp32_tolerance_and_shares_the_fingerprint(model_dir):
    if not _native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512_BF16 or AMX)")
    record = export_model(model_dir, "openvino", precision="bf16")
    assert record.backend == "openvino-bf16"
    assert record.file == f"{EXPORT_DIR}/model.onnx"  # the fp32 file, computed in bf16
    assert record.min_cosine > 1 - 1e-4
    torch_encoder = HEALEncoder.load(model_dir)
    bf16 = HEALEncoder.load(model_dir, backend="openvino-bf16")
    assert bf16.runtime.inference_precision == "bf16"
    texts = _texts()
    cosines = (bf16.embed_documents(texts) * torch_encoder.embed_documents(texts)).sum(axis=1)
    assert cosines.min() > 1 - 1e-4
    assert not np.allclose(bf16.embed_documents(texts), torch_encoder.embed_documents(texts), atol=1e-6, rtol=0)
    assert bf16.fingerprint == torch_encoder.fingerprint
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    assert set(metadata["exports"]) == {"openvino-bf16"}
    # Re-exporting the fp32 file invalidates every backend that runs it, bf16 included, and says so.
    with pytest.warns(UserWarning, match="openvino-bf16 export"):
        export_model(model_dir, "onnx", overwrite=True)
    assert set(json.loads((model_dir / METADATA_FILE).read_text())["exports"]) == {"onnx"}


@pytest.mark.parametrize(
    ("backend", "quantize"), [("onnx", None), ("openvino", "int8")], ids=["onnx-runtime", "with-int8"]
)
def test_bf16_is_refused_outside_openvino_fp32_before_anything_is_written(model_dir, backend, quantize):
    pytest.importorskip("openvino")
    with pytest.raises(ExportError, match="--backend openvino --precision bf16"):
        export_model(model_dir, backend, quantize, precision="bf16")
    assert not (model_dir / EXPORT_DIR).exists()
    with pytest.raises(ValueError, match="precision"):
        export_model(model_dir, "openvino", precision="fp16")


def test_without_native_bf16_the_export_is_refused_and_an_existing_one_runs_in_fp32(model_dir, monkeypatch):
    """A bf16 export checked on a CPU without bf16 would measure fp32; serving one there warns and uses fp32."""
    from heal_rag import backends

    if not _native_bf16():
        pytest.skip("needs a CPU with native bf16 to write the export first")
    export_model(model_dir, "openvino", precision="bf16")
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ExportError, match="no native bf16"):
        export_model(model_dir, "openvino", precision="bf16", overwrite=True)
    with pytest.warns(UserWarning, match="runs in fp32 here"):
        encoder = HEALEncoder.load(model_dir, backend="openvino-bf16")
    assert encoder.runtime.inference_precision == "f32"


def test_int8_agrees_closely_and_has_its_own_fingerprint(model_dir):
    record = export_model(model_dir, "onnx", quantize="int8")
    assert record.backend == "onnx-int8"
    torch_encoder = HEALEncoder.load(model_dir)
    int8 = HEALEncoder.load(model_dir, backend="onnx-int8")
    cosines = (int8.embed_documents(_texts()) * torch_encoder.embed_documents(_texts())).sum(axis=1)
    assert cosines.min() > 0.95
    assert int8.fingerprint != torch_encoder.fingerprint
    assert int8.fingerprint.startswith(torch_encoder.fingerprint)
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    assert set(metadata["exports"]) == {"onnx-int8"}


def test_a_collection_built_with_int8_refuses_the_fp32_encoder_and_the_other_way_round(model_dir, tmp_path):
    from conftest import write_corpus_jsonl

    from heal_rag.chroma import build_index, open_collection
    from heal_rag.data import read_corpus
    from heal_rag.stale import StaleModelError

    export_model(model_dir, "onnx")
    export_model(model_dir, "onnx", quantize="int8")
    texts, labels, titles = make_corpus()
    corpus = read_corpus(write_corpus_jsonl(tmp_path / "corpus.jsonl", texts, labels, titles))
    build_index(model_dir, corpus, tmp_path / "db", "int8", backend="onnx-int8", show_progress=False)
    build_index(model_dir, corpus, tmp_path / "db", "fp32", backend="onnx", show_progress=False)

    int8_collection = open_collection(tmp_path / "db", "int8")
    assert int8_collection.query(query_texts=[texts[0]], n_results=1)["ids"][0] == ["d0"]
    fp32_collection = open_collection(tmp_path / "db", "fp32")
    assert fp32_collection.query(query_texts=[texts[0]], n_results=1)["ids"][0] == ["d0"]

    with pytest.raises(StaleModelError, match="with backend 'onnx-int8'"):  # the message names what built it
        open_collection(tmp_path / "db", "int8", model=HEALEncoder.load(model_dir))
    with pytest.raises(StaleModelError, match="this encoder is .* with backend 'onnx-int8'"):
        open_collection(tmp_path / "db", "fp32", model=HEALEncoder.load(model_dir, backend="onnx-int8"))
    # fp32 ONNX and PyTorch give the same vectors, so they may share a collection.
    open_collection(tmp_path / "db", "fp32", model=HEALEncoder.load(model_dir))


def test_a_backend_that_was_not_exported_is_named_with_the_command_to_run(model_dir):
    with pytest.raises(ExportError, match=r"heal-rag export --model .* --backend onnx --quantize int8"):
        HEALEncoder.load(model_dir, backend="onnx-int8")
    with pytest.raises(ExportError, match=r"heal-rag export --model .* --backend openvino --precision bf16`"):
        HEALEncoder.load(model_dir, backend="openvino-bf16")
    with pytest.raises(ValueError, match="backend"):
        HEALEncoder.load(model_dir, backend="tensorrt")


def test_a_changed_export_file_is_refused(model_dir):
    record = export_model(model_dir, "onnx", quantize="int8")
    path = model_dir / record.file
    path.write_bytes(path.read_bytes()[:-16] + b"\0" * 16)
    with pytest.raises(ExportError, match="changed after it was exported"):
        HEALEncoder.load(model_dir, backend="onnx-int8")


def test_a_damaged_shared_file_is_written_anew_by_any_backend_that_runs_it(model_dir):
    """``openvino --overwrite`` must not re-check a damaged ONNX file; other checked backends on it are dropped."""
    pytest.importorskip("openvino")
    export_model(model_dir, "onnx")
    export_model(model_dir, "openvino")
    path = model_dir / EXPORT_DIR / "model.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ExportError, match="changed after it was exported"):
        HEALEncoder.load(model_dir, backend="openvino")
    with pytest.warns(UserWarning, match=r"its checked onnx export\(s\) were dropped"):
        export_model(model_dir, "openvino", overwrite=True)
    assert set(json.loads((model_dir / METADATA_FILE).read_text())["exports"]) == {"openvino"}
    texts = _texts()
    np.testing.assert_allclose(
        HEALEncoder.load(model_dir, backend="openvino").embed_documents(texts),
        HEALEncoder.load(model_dir).embed_documents(texts),
        atol=2e-5,
    )


def test_a_deleted_export_file_names_its_command_and_is_exported_again_without_overwrite(model_dir):
    export_model(model_dir, "onnx", quantize="int8")
    (model_dir / EXPORT_DIR / "model_int8.onnx").unlink()
    with pytest.raises(ExportError, match=r"heal-rag export --model .* --backend onnx --quantize int8`"):
        HEALEncoder.load(model_dir, backend="onnx-int8")
    export_model(model_dir, "onnx", quantize="int8")  # the record without its file does not block a new export
    assert HEALEncoder.load(model_dir, backend="onnx-int8").embed_query("laser optics").shape[0] > 0


def test_exporting_twice_needs_overwrite_and_leaves_no_staging_files(model_dir):
    export_model(model_dir, "onnx")
    with pytest.raises(ExportError, match="overwrite"):
        export_model(model_dir, "onnx")
    export_model(model_dir, "onnx", overwrite=True)
    assert sorted(p.name for p in (model_dir / EXPORT_DIR).iterdir()) == ["model.onnx"]


def test_a_retrained_model_in_the_same_directory_is_not_served_by_the_old_export(model_dir):
    """The weights the export came from changed: the model fails its own check before the export is used."""
    export_model(model_dir, "onnx")
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\1" * 8
    weights.write_bytes(bytes(data))
    with pytest.raises((MetadataError, ValueError)):
        HEALEncoder.load(model_dir, backend="onnx")


def test_a_model_that_cannot_be_exported_is_refused_before_anything_is_written(tmp_path):
    from conftest import build_tiny_heal_model

    model = shutil.copytree(build_tiny_heal_model(), tmp_path / "static")
    with pytest.raises(ExportError, match="Transformer"):
        export_model(model, "onnx")
    assert not (model / EXPORT_DIR).exists()


def _export_and_index_with_the_cli(model_dir, tmp_path, capsys, export_args: list[str], backend: str):
    """``heal-rag export`` then ``heal-rag index --backend``; the collection, after checking the backend it records."""
    from conftest import write_corpus_jsonl

    from heal_rag.chroma import open_collection
    from heal_rag.cli import main

    assert main(["export", "--model", str(model_dir), *export_args]) == 0
    assert f"--backend {backend}" in capsys.readouterr().out
    texts, labels, titles = make_corpus()
    data = write_corpus_jsonl(tmp_path / "corpus.jsonl", texts, labels, titles)
    args = ["index", "--model", str(model_dir), "--data", str(data), "--db", str(tmp_path / "db"), "--quiet"]
    assert main([*args, "--backend", backend]) == 0
    collection = open_collection(tmp_path / "db", "heal_rag")
    assert collection.count() == len(texts)
    assert collection.configuration_json["embedding_function"]["config"]["backend"] == backend
    return collection, texts


def test_the_cli_exports_and_indexes_with_a_backend(model_dir, tmp_path, capsys):
    _export_and_index_with_the_cli(
        model_dir, tmp_path, capsys, ["--backend", "onnx", "--quantize", "int8"], "onnx-int8"
    )


def test_the_cli_exports_bf16_and_indexes_with_it(model_dir, tmp_path, capsys):
    from heal_rag.chroma import open_collection

    if not _native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512_BF16 or AMX)")
    collection, texts = _export_and_index_with_the_cli(
        model_dir, tmp_path, capsys, ["--backend", "openvino", "--precision", "bf16"], "openvino-bf16"
    )
    # bf16 shares the model's fingerprint, so the PyTorch encoder may query this collection.
    open_collection(tmp_path / "db", "heal_rag", model=HEALEncoder.load(model_dir))
    assert collection.query(query_texts=[texts[0]], n_results=1)["ids"][0] == ["d0"]


def test_every_adapter_takes_the_backend_and_encodes_through_it(model_dir):
    """LangChain embeddings and reranker, LlamaIndex embedding and postprocessor, and the Chroma function."""
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from heal_rag.chroma import HEALEmbeddingFunction
    from heal_rag.langchain import HEALEmbeddings, HierarchyReranker
    from heal_rag.llamaindex import HEALEmbedding, HierarchyNodePostprocessor

    export_model(model_dir, "onnx", quantize="int8")
    reference = HEALEncoder.load(model_dir, backend="onnx-int8")
    query, document = "laser beam optics", "photon lens mirror"
    expected_query = reference.embed_query(query)
    expected_document = reference.embed_documents([document])[0]
    torch_query = HEALEncoder.load(model_dir).embed_query(query)
    assert not np.allclose(expected_query, torch_query, atol=1e-6)  # so agreeing below means the int8 path ran

    langchain = HEALEmbeddings(model=str(model_dir), backend="onnx-int8")
    np.testing.assert_allclose(langchain.embed_query(query), expected_query, atol=1e-6)
    np.testing.assert_allclose(langchain.embed_documents([document])[0], expected_document, atol=1e-6)
    assert HEALEmbeddings(encoder=reference).backend == "onnx-int8"

    llama = HEALEmbedding(model=str(model_dir), backend="onnx-int8")
    np.testing.assert_allclose(llama.get_query_embedding(query), expected_query, atol=1e-6)
    rebuilt = HEALEmbedding.from_dict(llama.to_dict())
    assert rebuilt.backend == "onnx-int8"
    np.testing.assert_allclose(rebuilt.get_text_embedding(document), expected_document, atol=1e-6)

    function = HEALEmbeddingFunction(model_dir, backend="onnx-int8")
    np.testing.assert_allclose(function([document])[0], expected_document, atol=1e-6)
    again = HEALEmbeddingFunction.build_from_config(function.get_config())
    assert again.encoder.backend == "onnx-int8"

    assert HierarchyReranker.from_model(str(model_dir), backend="onnx-int8").encoder.backend == "onnx-int8"
    postprocessor = HierarchyNodePostprocessor.from_model(str(model_dir), backend="onnx-int8")
    assert postprocessor._scorer.encoder.backend == "onnx-int8"


def test_a_missing_extra_is_named_with_the_install_command(model_dir, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_openvino)
    with pytest.raises(ImportError, match=r"pip install 'heal_rag\[openvino\]'"):
        export_model(model_dir, "openvino")
    assert not (model_dir / EXPORT_DIR).exists()


def test_an_unwritable_model_folder_is_refused_before_the_export(model_dir, monkeypatch):
    import heal_rag.models
    from heal_rag.outputs import OutputPathError

    (model_dir / EXPORT_DIR).write_text("a file where the exports folder goes")
    monkeypatch.setattr(heal_rag.models, "load_sentence_transformer", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(OutputPathError, match="exports' is a file, not a directory"):
        export_model(model_dir, "onnx")
    with pytest.raises(FileNotFoundError, match="Model directory '.*nosuch' does not exist"):
        export_model(model_dir.parent / "nosuch", "onnx")


def test_eval_compares_an_export_with_its_own_model(model_dir, tmp_path, capsys):
    from conftest import write_corpus_jsonl

    from heal_rag.cli import main

    export_model(model_dir, "onnx")
    texts, labels, titles = make_corpus()
    corpus = write_corpus_jsonl(tmp_path / "c.jsonl", texts, labels, titles)
    out = tmp_path / "report"
    # the model as trained (the reference, torch) against its export
    args = ["eval", "--data", str(corpus), "--base-model", str(model_dir), "--model", str(model_dir)]
    args += ["--out", str(out)]  # each model at its own token limit (32 here; the default used to be a fixed 256)
    assert main([*args, "--backend", "onnx", "--map", "pca", "-q"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    torch_name = f"{tmp_path.name}/model"  # a folder named model is shown with its parent
    assert list(metrics["models"]) == [torch_name, f"{torch_name} (onnx)"]
    torch_scores, onnx_scores = (metrics["models"][name]["retrieval"] for name in (torch_name, f"{torch_name} (onnx)"))
    for metric, value in torch_scores.items():  # the fp32 export retrieves as the model does
        assert onnx_scores[metric] == pytest.approx(value, abs=1e-6), metric

    fresh = tmp_path / "report2"
    assert main([*args[:-2], "--out", str(fresh), "--backend", "onnx-int8"]) == 2  # not exported: named, with the
    assert "heal-rag export --model" in capsys.readouterr().err  # command, before anything is evaluated or written
    assert not fresh.exists()
    assert main(["eval", "--compare", str(out), "--backend", "onnx", "--out", str(fresh)]) == 2
    assert "--backend" in capsys.readouterr().err and not fresh.exists()
    plain = tmp_path / "plain"  # a sentence-transformers folder without heal_rag.json
    shutil.copytree(model_dir, plain, ignore=shutil.ignore_patterns("heal_rag.json"))
    for model, expected in ((plain, "has no heal_rag.json"), (tmp_path / "nope", "does not exist")):
        assert (
            main([*args[:-2], "--out", str(fresh), "--model", str(model), "--backend", "onnx", "--backend", "onnx"])
            == 2
        )
        assert expected in capsys.readouterr().err and not fresh.exists()
    assert main([*args[:-2], "--out", str(fresh), "--reference", "bogus"]) == 2  # before any model is evaluated
    assert "--reference 'bogus' is none of the evaluated models" in capsys.readouterr().err and not fresh.exists()
    assert main([*args, "--overwrite", "--backend", "onnx", "--backend", "onnx"]) == 2
    assert "2 --backend for 1 --model" in capsys.readouterr().err
