"""Kinds 5 and 9: duplicate ids are refused up front in every entry point; malformed input gets file:line and a
clean CLI error with nothing created."""

from __future__ import annotations

import pytest
from _helpers import corpus_file
from conftest import build_tiny_heal_model, build_tiny_model, make_corpus

from heal_rag.cli import main
from heal_rag.data import Corpus, CorpusFormatError, read_corpus
from heal_rag.encoder import HEALEncoder
from heal_rag.labels import LabelPaths


def test_corpus_refuses_duplicate_ids_naming_the_first():
    with pytest.raises(ValueError, match=r"Duplicate document ids: 'a' occurs at positions 0 and 2"):
        Corpus(["a", "b", "a"], ["x", "y", "z"], [None] * 3)


def test_build_index_refuses_duplicates_before_touching_the_database(tmp_path):
    from heal_rag.chroma import build_index

    with pytest.raises(ValueError, match="'a'"):
        corpus = Corpus(["a", "b", "a"], ["one", "two", "three"], [None] * 3)
        build_index(str(build_tiny_heal_model()), corpus, tmp_path / "db", batch_size=2)
    assert not (tmp_path / "db").exists()


def test_langchain_retriever_refuses_duplicate_ids():
    from langchain_core.documents import Document

    from heal_rag.langchain import HEALRetriever

    encoder = HEALEncoder.load(build_tiny_heal_model())
    with pytest.raises(ValueError, match="'a'"):
        HEALRetriever.from_texts(["x", "y", "z"], ids=["a", "b", "a"], encoder=encoder)
    with pytest.raises(ValueError, match="'d'"):
        HEALRetriever.from_documents([Document("x", id="d"), Document("y", id="d")], encoder=encoder)
    assert len(HEALRetriever.from_texts(["x", "y"], encoder=encoder).documents) == 2  # no ids: fine


def test_llamaindex_retriever_refuses_duplicate_node_ids():
    from llama_index.core.schema import TextNode

    from heal_rag.llamaindex import HEALRetriever

    nodes = [TextNode(text="x", id_="n1"), TextNode(text="y", id_="n1")]
    with pytest.raises(ValueError, match="'n1'"):
        HEALRetriever(nodes, HEALEncoder.load(build_tiny_heal_model()))


def test_fine_tune_refuses_duplicate_ids_before_loading_a_model(tmp_path):
    from heal_rag.training import fine_tune

    texts, paths, _ = make_corpus()
    ids = [f"d{i}" for i in range(len(texts))]
    ids[5] = "d1"
    with pytest.raises(ValueError, match="'d1' occurs at positions 1 and 5"):
        fine_tune(texts, paths, ids=ids, output_dir=tmp_path / "m", base_model=build_tiny_model())
    assert not (tmp_path / "m").exists()


def test_a_non_utf8_corpus_error_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        b'{"id": "a", "text": "fine", "labels": ["x"]}\n{"id": "b", "text": "caf\xe9", "labels": ["x"]}\n'
    )
    with pytest.raises(CorpusFormatError, match=r"latin1.jsonl:2: not UTF-8 \(byte 0xe9 at column 25\).*iconv"):
        read_corpus(path)


def test_a_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "text": "fine", "labels": ["x"]}\n')
    assert read_corpus(path).ids == ["a"]


@pytest.mark.parametrize("name", ["c", "ab", "-abc", "a..b", "has space", "192.168.0.1", "x" * 513])
def test_invalid_collection_names_are_clean_errors_with_nothing_created(tmp_path, capsys, name):
    data = corpus_file(tmp_path / "in")
    code = main(
        [
            "index",
            "--model",
            str(build_tiny_heal_model()),
            "--data",
            str(data),
            "--db",
            str(tmp_path / "db"),
            f"--collection={name}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "Invalid collection name" in err and "Traceback" not in err and not (tmp_path / "db").exists()


def test_labels_may_not_contain_the_level_separator():
    from heal_rag.labels import LabelPathError

    with pytest.raises(LabelPathError, match="' > '"):
        LabelPaths([["Physics > Optics"]])


def test_encoder_docstring_example_imports_work():
    from heal_rag.encoder import HEALEncoder as Imported

    assert Imported is HEALEncoder
    encoder = HEALEncoder.load(build_tiny_heal_model())
    assert encoder.predict_path(["laser light"])[0].path
