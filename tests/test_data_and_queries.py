from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ARXIV_MINI, shared_file

from heal_rag.data import CorpusFormatError, hashed_split, read_corpus, read_queries
from heal_rag.evaluation.retrieval import evaluate_retrieval, top_k_indices
from heal_rag.queries import KeySentenceQueryGenerator, QueryGenerator, split_sentences


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def test_the_shared_arxiv_mini_corpus_reads_with_its_labels():
    corpus = read_corpus(shared_file(ARXIV_MINI))
    assert len(corpus) == 2145
    assert corpus.labels.depth == 3
    assert [corpus.labels.n_labels(level) for level in range(3)] == [6, 14, 143]
    assert all(corpus.titles)


def test_read_corpus_round_trip(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [{"id": "a", "text": "x y", "labels": ["A", "B"], "title": "T"}, {"id": 2, "text": "z", "labels": "C"}],
    )
    corpus = read_corpus(path)
    assert corpus.ids == ["a", "2"] and corpus.titles == ["T", None]
    assert corpus.labels.paths == (("A", "B"), ("C",))


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"id": "a", "labels": ["A"]}], "'text' must be a non-empty string"),
        ([{"text": "t", "labels": ["A"]}], "missing 'id'"),
        ([{"id": "a", "text": "t", "labels": ["A"]}, {"id": "a", "text": "u", "labels": ["A"]}], "duplicate id"),
        ([{"id": "a", "text": "t"}], "have no 'labels'"),
        ([{"id": {"x": 1}, "text": "t", "labels": ["A"]}], "'id' must be a string or an integer, got dict"),
        ([{"id": "a", "text": "t", "labels": ["A"], "title": ["a", "b"]}], "'title' must be a string, got list"),
        (
            [{"id": "a", "text": "t", "labels": ["A"]}, {"id": "b", "text": "t"}],
            r"1 of 2 records have no 'labels' \(first: line 2, id 'b'\)",
        ),
        ([{"id": "a", "text": "t", "labels": []}], r"c\.jsonl:1 \(id 'a'\): 'labels' is empty"),
        (
            [{"id": "a", "text": "t", "labels": ["A"]}, {"id": "b", "text": "t", "labels": ["A", " "]}],
            r"c\.jsonl:2 \(id 'b'\): 'labels' has an empty label at level 1",
        ),
    ],
)
def test_read_corpus_errors_name_the_problem(tmp_path, records, message):
    with pytest.raises(CorpusFormatError, match=message):
        read_corpus(write_jsonl(tmp_path / "c.jsonl", records))


def test_read_corpus_bad_json_names_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "t", "labels": ["A"]}\n{oops\n', encoding="utf-8")
    with pytest.raises(CorpusFormatError, match=r"c.jsonl:2: not valid JSON"):
        read_corpus(path)
    with pytest.raises(CorpusFormatError, match="does not exist: give a JSONL corpus file .*a folder of documents"):
        read_corpus(tmp_path / "missing.jsonl")


def test_unlabelled_corpus_allowed_when_asked(tmp_path):
    corpus = read_corpus(write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "t"}]), require_labels=False)
    assert corpus.labels is None


def test_read_queries(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"query": "what", "document_id": "a"}, {"text": "how", "id": "b"}])
    queries = read_queries(path, known_ids=["a", "b"])
    assert [(q.text, q.document_id) for q in queries] == [("what", "a"), ("how", "b")]
    with pytest.raises(CorpusFormatError, match="not in the corpus"):
        read_queries(path, known_ids=["a"])


def test_hashed_split_is_deterministic_and_disjoint():
    ids = [f"doc-{i}" for i in range(1000)]
    train, test = hashed_split(ids, test_fraction=0.3)
    assert (train, test) == hashed_split(ids, test_fraction=0.3)
    assert set(train).isdisjoint(test) and len(train) + len(test) == 1000
    assert 230 < len(test) < 370
    # A document's side does not depend on the rest of the corpus.
    _, test_subset = hashed_split(ids[:500], test_fraction=0.3)
    assert set(test_subset) == {i for i in test if i < 500}
    with pytest.raises(ValueError, match="test_fraction"):
        hashed_split(ids, test_fraction=1.5)


def test_query_generator_uses_titles_then_key_sentences():
    generator = KeySentenceQueryGenerator(max_words=6)
    assert isinstance(generator, QueryGenerator)
    documents = [
        "Cats are nice. Quantum qubits decohere fast and quantum error correction protects qubits. Dogs bark.",
        "Anything at all.",
    ]
    queries = generator(documents, [None, "A given title"])
    assert queries[1] == "A given title"
    assert queries[0] == "Quantum qubits decohere fast and quantum"
    assert KeySentenceQueryGenerator(use_titles=False)(["One. Two."], ["T"])[0] in {"One", "Two"}


def test_split_sentences():
    assert split_sentences("First one. Second one! Third? e.g. not split") == [
        "First one.",
        "Second one!",
        "Third? e.g. not split",
    ]


def test_retrieval_metrics_on_a_hand_made_case():
    # 3 documents on a line; queries point at doc 0 and doc 2.
    docs = np.eye(3)
    queries = np.array([[1.0, 0.5, 0.0], [0.0, 0.9, 1.0]])  # q0 ranks 0,1,2 ; q1 ranks 2,1,0
    doc_ids = np.array([[0, 0], [0, 1], [1, 2]])  # doc0 and doc1 share level 0
    query_ids = doc_ids[[0, 1]]  # a query carries its gold document's labels
    assert top_k_indices(queries, docs, 3).tolist() == [[0, 1, 2], [2, 1, 0]]
    report = evaluate_retrieval(queries, docs, [0, 1], query_ids, doc_ids, k=2, recall_at=(1, 2))
    # q0: gold 0 at rank 1 -> RR 1 ; q1: gold 1 at rank 2 -> RR 0.5
    assert report.mrr == pytest.approx(0.75)
    assert report.recall == {1: 0.5, 2: 1.0}
    # level 0 within top-2: q0 (label 0): docs 0,1 -> 2/2 ; q1 (label 1): docs 2,1 -> 1/2
    assert report.hier_precision[0] == pytest.approx(0.75)
    # level 1: q0 (label 0): docs 0,1 -> 1/2 ; q1 (label 2): docs 2,1 -> 1/2
    assert report.hier_precision[1] == pytest.approx(0.5)


def test_graded_ndcg_and_context_rates_on_a_hand_made_case():
    from heal_rag.evaluation.retrieval import evaluate_rankings, graded_gains

    doc_ids = np.array([[0, 0], [0, 1], [1, 2], [0, 0]])  # doc 3 shares the full path of doc 0
    query_ids = doc_ids[[0]]  # one query, gold = doc 0
    gains = graded_gains(query_ids, doc_ids, [0])
    assert gains.tolist() == [[3.0, 1.0, 0.0, 2.0]]  # gold 2+1, same leaf 2, same top 1, other 0
    ranked = np.array([[3, 0, 1, 2]])
    report = evaluate_rankings(ranked, [0], query_ids, doc_ids, k=2, recall_at=(1,), context_k=2)
    dcg = 2 / np.log2(2) + 3 / np.log2(3)
    ideal = 3 / np.log2(2) + 2 / np.log2(3)
    assert report.extra["nDCG@2"] == pytest.approx(dcg / ideal)
    assert report.extra["context-miss@2"] == 0.0  # gold is at rank 2
    assert report.extra["off-topic@2"] == 0.0  # both passages share the query's leaf
    report = evaluate_rankings(np.array([[1, 2, 3, 0]]), [0], query_ids, doc_ids, k=2, recall_at=(1,), context_k=2)
    assert report.extra["context-miss@2"] == 1.0 and report.extra["off-topic@2"] == 1.0
    assert report.mrr == 0.0
