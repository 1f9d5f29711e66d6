"""From the user's documents to a tuned model and an index of the same chunks: chunking, queries, LLM questions,
the source-document level, the CLI folder path and the reranker on the user's own metadata."""

from __future__ import annotations

import json

import pytest
from conftest import build_tiny_heal_model, build_tiny_model, make_corpus, write_corpus_jsonl
from test_sources import write

from heal_rag.chunking import ChunkingConfig, chunk_documents, token_counter
from heal_rag.cli import main
from heal_rag.labels import LabelPaths
from heal_rag.question_generation import LLMQuestionGenerator, parse_questions
from heal_rag.sources import SourceDocument, read_directory
from heal_rag.sources.document import Section

FAST = {"max_steps": 2, "batch_size": 8, "samples_per_leaf": 2, "learning_rate": 1e-2, "show_progress_bar": False}


@pytest.fixture(scope="module")
def minilm():
    from heal_rag.models import load_sentence_transformer

    return load_sentence_transformer(None)


def long_document(doc_id="guide.md", words=900) -> SourceDocument:
    body = " ".join(f"w{i}" for i in range(words))  # distinct words, so positions are unambiguous
    sections = (Section("Short intro.", ("Guide",)), Section(body, ("Guide", "Details")))
    return SourceDocument(doc_id, "Short intro.\n\n" + body, ("Manuals",), {"source": doc_id}, sections, "Guide")


def test_chunks_fit_the_models_window_counted_by_its_tokenizer(minilm):
    corpus = chunk_documents([long_document()], minilm, show_progress=False)
    count = token_counter(minilm)
    assert ChunkingConfig().resolved(minilm) == ChunkingConfig(254, 31)  # 256 minus [CLS] and [SEP]
    assert len(corpus) > 3 and max(count(text) for text in corpus.texts) <= 254
    assert corpus.ids == [f"guide.md#{i}" for i in range(len(corpus))]
    assert [m["chunk_index"] for m in corpus.metadata] == list(range(len(corpus)))
    assert all(m["document_id"] == "guide.md" and m["source"] == "guide.md" for m in corpus.metadata)
    assert corpus.metadata[0]["heading"] == "Guide" and corpus.metadata[1]["heading"] == "Guide > Details"
    # the heading is the query of the first chunk of each section only
    assert corpus.titles[:3] == ["Guide", "Details", None] and set(corpus.titles[3:]) == {None}
    assert corpus.labels.paths == (("Manuals",),) * len(corpus)
    # neighbouring chunks of a section overlap: the next one starts inside the previous one
    second, third = corpus.texts[1].split(), corpus.texts[2].split()
    assert third[0] in second and second[-1] in third
    assert corpus.metadata[2]["start_index"] == corpus.texts[1].index(third[0]) + corpus.metadata[1]["start_index"]


def test_chunk_size_and_overlap_are_settable_and_checked(minilm):
    corpus = chunk_documents([long_document()], minilm, chunk_size=64, chunk_overlap=0, show_progress=False)
    assert max(token_counter(minilm)(t) for t in corpus.texts) <= 64
    cases = (
        ({"chunk_size": 8}, "chunk_size"),
        ({"chunk_size": 64, "chunk_overlap": 64}, "smaller"),
        ({"chunk_size": 100_000}, r"chunk_size 100000 is more tokens than the model reads \(254: .* at most 254"),
    )
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            chunk_documents([long_document()], minilm, **kwargs)


def test_chunking_a_tiny_static_model_counts_its_word_tokens():
    from heal_rag.encoder import HEALEncoder

    encoder = HEALEncoder.load(build_tiny_heal_model())
    assert token_counter(encoder)("laser light lens") == 3
    corpus = chunk_documents([long_document(words=600)], encoder, chunk_size=50, show_progress=False)
    assert max(len(t.split()) for t in corpus.texts) <= 50


def test_a_document_without_headings_asks_its_title_of_its_first_chunk(tmp_path, minilm):
    from heal_rag.documents import load_documents

    body = " ".join(f"w{i}" for i in range(600))
    path = write_corpus_jsonl(tmp_path / "c.jsonl", [body, body], [("A",), ("B",)], ["Pump setup", None], ["p", "q"])
    documents, _ = load_documents(path, show_progress=False)
    corpus = chunk_documents(documents, minilm, chunk_size=100, show_progress=False)
    first_q = corpus.ids.index("q#0")
    assert corpus.titles[0] == "Pump setup" and set(corpus.titles[1:first_q]) == {None}
    assert set(corpus.titles[first_q:]) == {None}  # no title, no heading: key sentences, as before
    # a document with headings keeps its headings' queries: its title (the first heading) is not asked twice
    headed = chunk_documents([long_document()], minilm, show_progress=False)
    assert headed.titles.count("Guide") == 1


def test_parse_questions_robustly():
    assert parse_questions(
        "Sure! Here they are:\n1. How do pumps fail?\n2) What is priming?\n3. Extra one here?", 2
    ) == [
        "How do pumps fail?",
        "What is priming?",
    ]
    assert parse_questions('```json\n["What is a seal for?", "How is it replaced?"]\n```', 5) == [
        "What is a seal for?",
        "How is it replaced?",
    ]
    assert parse_questions("- Why does it leak so?\n- why does it leak so?\n* ok\nQ3: When to grease it?", 3) == [
        "Why does it leak so?",
        "When to grease it?",
    ]
    assert parse_questions("", 2) == []


def test_llm_questions_with_a_langchain_fake_chat_model_are_cached_by_content(tmp_path):
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    llm = FakeListChatModel(responses=["1. What moves water here?\n2. Which pump fits?", "Why do seals leak?"])
    cache = tmp_path / "questions.jsonl"
    generator = LLMQuestionGenerator(llm, n_questions=2, cache_path=cache, show_progress=False)
    queries = generator.generate(["pumps move water", "seals leak"], ["c1", "c2"])
    assert [(q.text, q.document_id) for q in queries] == [
        ("What moves water here?", "c1"),
        ("Which pump fits?", "c1"),
        ("Why do seals leak?", "c2"),
    ]
    assert generator.asked == 2 and len(cache.read_text().splitlines()) == 2

    def must_not_be_called(prompt):
        raise AssertionError("a cached chunk was asked again")

    again = LLMQuestionGenerator(must_not_be_called, n_questions=2, cache_path=cache, show_progress=False)
    assert [q.text for q in again.generate(["pumps move water", "seals leak"], ["x", "y"])] == [
        q.text for q in queries
    ]
    assert again.asked == 0
    changed = LLMQuestionGenerator(lambda p: "What changed in the prompt?", n_questions=2, prompt="Q about {text}",
                                   cache_path=cache, show_progress=False)  # fmt: skip
    assert changed.generate(["pumps move water"], ["c1"])[0].text == "What changed in the prompt?"


def test_a_failing_chunk_never_stops_the_run(caplog):
    def flaky(prompt):
        if "seals" in prompt:
            raise TimeoutError("the LLM timed out")
        return "What does this passage cover?"

    generator = LLMQuestionGenerator(flaky, n_questions=1, show_progress=False)
    queries = generator.generate(["pumps move water", "seals leak", "valves stop flow"], ["a", "b", "c"])
    assert [q.document_id for q in queries] == ["a", "c"]
    assert len(generator.failures) == 1 and "TimeoutError" in generator.failures[0][1]
    assert "no usable questions for 1 of 3 chunks" in caplog.text


def test_llm_questions_with_a_llamaindex_mock_llm():
    from llama_index.core.llms import MockLLM

    generator = LLMQuestionGenerator(MockLLM(max_tokens=4), n_questions=2, show_progress=False)
    queries = generator.generate(["pumps move water"], ["c1"])
    assert [(q.text, q.document_id) for q in queries] == [("text text text text", "c1")]


def test_the_prompt_must_have_a_place_for_the_text():
    with pytest.raises(ValueError, match=r"\{text\}"):
        LLMQuestionGenerator(lambda p: "", prompt="Write questions.")


def test_with_finest_level_and_the_sampler_keeps_chunks_of_a_document_together():
    from heal_rag.sampler import HierarchicalBatchSampler

    labels = LabelPaths([["A", "x"]] * 6 + [["A", "y"]] * 6).with_finest_level(["d1", "d2", "d3"] * 4)
    assert labels.depth == 3 and labels.paths[0] == ("A", "x", "d1")
    sampler = HierarchicalBatchSampler.from_label_rows(
        labels.to_label_rows(), batch_size=4, samples_per_leaf=2, leaf_level=-2, keep_together_level=-1, seed=3
    )
    rows = labels.level_ids()
    batches = list(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(12)), "every row once"
    for batch in batches:
        for start in range(0, len(batch), 2):
            pair = batch[start : start + 2]
            assert len({rows[i, 1] for i in pair}) == 1, "a group comes from one leaf"
    same_document_pairs = sum(
        rows[batch[i], 2] == rows[batch[i + 1], 2] for batch in batches for i in range(0, len(batch) - 1, 2)
    )
    assert same_document_pairs >= 5, "groups hold chunks of one document"


def test_fine_tune_documents_from_langchain_documents_records_chunks_and_the_source_level(tmp_path):
    from langchain_core.documents import Document

    from heal_rag.documents import fine_tune_documents

    texts, paths, titles = make_corpus()
    docs = [
        Document(page_content=f"{t} {t} {t}", metadata={"category": list(p), "title": ti}, id=f"doc{i}")
        for i, (t, p, ti) in enumerate(zip(texts, paths, titles, strict=True))
    ]
    result = fine_tune_documents(docs, path_key="category", output_dir=tmp_path / "m", base_model=build_tiny_model(),
                                 chunk_size=16, chunk_overlap=4, **FAST)  # fmt: skip
    training = json.loads((tmp_path / "m" / "heal_rag.json").read_text())["training"]
    assert training["chunking"] == {"chunk_size": 16, "chunk_overlap": 4}
    assert (
        training["source_level"] is True and training["documents"] == 24 and training["chunks"] == len(result.chunks)
    )
    assert len(result.chunks) > 24 and all("#" in i for i in result.chunks.ids)
    assert result.metadata["label_tree"]["depth"] == 2, "the source level is not part of the saved label tree"


def test_fine_tune_documents_takes_a_splitters_pieces_without_ids(tmp_path):
    """The commonest LangChain ingestion: a text splitter's pieces share their file's source and have no id."""
    from langchain_core.documents import Document
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from heal_rag.documents import fine_tune_documents

    texts, paths, _ = make_corpus()
    files = [
        Document(f"{t}\n\n{t} again.\n\n{t} once more.", metadata={"source": f"f{i}.txt", "category": list(p)})
        for i, (t, p) in enumerate(zip(texts, paths, strict=True))
    ]
    pieces = RecursiveCharacterTextSplitter(chunk_size=80, chunk_overlap=0).split_documents(files)
    assert len(pieces) > len(files) and all(piece.id is None for piece in pieces)
    result = fine_tune_documents(pieces, path_key="category", output_dir=tmp_path / "m", base_model=build_tiny_model(),
                                 **FAST)  # fmt: skip
    ids = list(result.chunks.ids)
    assert len(set(ids)) == len(ids) and any(i.startswith("f0.txt_part_1#") for i in ids)


def test_the_cli_trains_and_indexes_a_folder_with_the_same_chunks(tmp_path, capsys):
    from heal_rag.chroma import open_collection
    from heal_rag.documents import chunks_for_model

    texts, paths, titles = make_corpus()
    for i, (text, path, title) in enumerate(zip(texts, paths, titles, strict=True)):
        write(tmp_path / "kb" / path[0] / path[1] / f"doc{i}.md", f"# {title}\n\n{text} {text}\n\n## More\n\n{text}\n")
    write(tmp_path / "kb" / "Physics" / "image.png", b"\x89PNG")
    flags = ["--base-model", str(build_tiny_model()), "--max-steps", "2", "--batch-size", "8", "--chunk-size", "16"]
    assert main(["train", "--data", str(tmp_path / "kb"), "--out", str(tmp_path / "m"), *flags]) == 0
    out = capsys.readouterr().out
    assert "read 24 documents (24 .md)" in out and "skipped 1 files" in out and "tuned on" in out
    assert main(["index", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "kb"), "--db", str(tmp_path / "db"),
                 "--collection", "kb-chunks"]) == 0  # fmt: skip
    trained_on = chunks_for_model(tmp_path / "m", tmp_path / "kb", show_progress=False)
    stored = open_collection(tmp_path / "db", "kb-chunks").get(include=["metadatas"])
    assert sorted(stored["ids"]) == sorted(trained_on.ids)
    training = json.loads((tmp_path / "m" / "heal_rag.json").read_text())["training"]
    assert training["chunks"] == len(trained_on) and training["chunking"]["chunk_size"] == 16
    # headings and key sentences: the recipe and the mined negatives, without the one-standard-error rule
    assert training["hierarchy_views"] == "documents" and training["inverse_cloze_rate"] == 0.9
    assert training["hard_negatives"] == "auto" and training["hard_negatives_per_query"] == 4
    assert training["blend_standard_errors"] == 0
    records = dict(zip(stored["ids"], stored["metadatas"], strict=True))
    doc0 = [records[i] for i in sorted(records) if i.startswith("Physics/Optics/doc0.md#")]
    assert [r["chunk_index"] for r in doc0] == list(range(len(doc0))) and len(doc0) >= 2
    assert all(r["heal_path"] == "Physics > Optics" and r["source"] == "Physics/Optics/doc0.md" for r in doc0)
    assert doc0[-1]["heading"].endswith("> More") and not doc0[0]["heading"].endswith("> More")

    # the folder changes: a document removed, another shortened; --delete-missing drops their stale chunks
    (tmp_path / "kb" / "Physics" / "Optics" / "doc0.md").unlink()
    shortened = next((tmp_path / "kb").rglob("doc1.md"))
    shortened.write_text("# Short\n\nOnly this.\n")
    index = ["index", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "kb"), "--db", str(tmp_path / "db"),
             "--collection", "kb-chunks"]  # fmt: skip
    assert main(index) == 0
    kept = open_collection(tmp_path / "db", "kb-chunks").get(include=[])["ids"]
    assert set(kept) > set(chunks_for_model(tmp_path / "m", tmp_path / "kb", show_progress=False).ids), "kept"
    capsys.readouterr()
    assert main([*index, "--delete-missing"]) == 0
    assert "records deleted" in capsys.readouterr().out
    now = chunks_for_model(tmp_path / "m", tmp_path / "kb", show_progress=False)
    kept = open_collection(tmp_path / "db", "kb-chunks").get(include=[])["ids"]
    assert sorted(kept) == sorted(now.ids) and not any(i.startswith("Physics/Optics/doc0.md#") for i in kept)
    assert len([i for i in kept if "/doc1.md#" in i]) == 1


def test_a_flat_folder_gets_a_discovered_hierarchy(tmp_path, capsys):
    texts, _, _ = make_corpus(8)
    for i, text in enumerate(texts):
        write(tmp_path / "flat" / f"note{i:02d}.txt", f"{text} {text}")
    flags = [
        "--base-model",
        str(build_tiny_model()),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--hierarchy-depth",
        "1",
    ]
    assert main(["train", "--data", str(tmp_path / "flat"), "--out", str(tmp_path / "m"), *flags]) == 0
    assert "no label paths: discovering a hierarchy of up to 1 levels" in capsys.readouterr().out
    metadata = json.loads((tmp_path / "m" / "heal_rag.json").read_text())
    assert metadata["label_tree"]["depth"] == 1 and metadata["training"]["temperature"] == 0.2  # discovered settings


def test_plain_text_folders_train_with_the_settings_measured_for_generated_queries(tmp_path):
    texts, paths, _ = make_corpus()
    for i, (text, path) in enumerate(zip(texts, paths, strict=True)):
        write(tmp_path / "kb" / path[0] / path[1] / f"doc{i}.txt", f"{text}. {text} again.")
    flags = ["--base-model", str(build_tiny_model()), "--max-steps", "2", "--batch-size", "8"]
    assert main(["train", "--data", str(tmp_path / "kb"), "--out", str(tmp_path / "m"), *flags]) == 0
    training = json.loads((tmp_path / "m" / "heal_rag.json").read_text())["training"]
    assert training["hierarchy_views"] == "documents" and training["inverse_cloze_rate"] == 0.9
    assert training["blend_candidate_shares"] == [0.0, 0.2, 0.4, 0.6, 0.7, 0.8]
    assert training["blend_standard_errors"] == 1.0
    assert training["hard_negatives"] == 0 and training["hard_negatives_per_query"] == 0, "none for key sentences"
    mine = ["--inverse-cloze-rate", "0", "--hierarchy-views", "both", "--blend-standard-errors", "0", "--overwrite",
            "--hard-negatives", "auto"]  # fmt: skip
    assert main(["train", "--data", str(tmp_path / "kb"), "--out", str(tmp_path / "m"), *flags, *mine]) == 0
    training = json.loads((tmp_path / "m" / "heal_rag.json").read_text())["training"]
    assert training["hierarchy_views"] == "both" and training["inverse_cloze_rate"] == 0, "the user's flags win"
    assert training["blend_standard_errors"] == 0
    assert training["hard_negatives"] == "auto" and training["hard_negatives_per_query"] == 4, "negatives on request"
    assert training["blend_candidate_shares"] == [0.0, 0.2, 0.4, 0.6, 0.7, 0.8]


def test_a_config_given_whole_is_used_as_it_is(tmp_path):
    from heal_rag.documents import fine_tune_documents
    from heal_rag.training import HEALTrainingConfig

    texts, paths, _ = make_corpus()
    for i, (text, path) in enumerate(zip(texts, paths, strict=True)):
        write(tmp_path / "kb" / path[0] / path[1] / f"doc{i}.txt", f"{text}. {text} again.")
    config = HEALTrainingConfig(max_steps=2, batch_size=8, hierarchy_views="both")
    fine_tune_documents(tmp_path / "kb", output_dir=tmp_path / "m", base_model=build_tiny_model(), config=config,
                        show_progress_bar=False)  # fmt: skip
    training = json.loads((tmp_path / "m" / "heal_rag.json").read_text())["training"]
    assert training["hierarchy_views"] == "both" and training["inverse_cloze_rate"] == 0


def test_the_cli_refuses_options_that_would_do_nothing(tmp_path, capsys):
    """Folder options with a JSONL corpus, --chroma-port with --db, model options with eval --compare."""
    texts, paths, titles = make_corpus()
    data = write_corpus_jsonl(tmp_path / "c.jsonl", texts, paths, titles)
    out = str(tmp_path / "m")
    cases = (
        (["train", "--data", str(data), "--out", out, "--chunk-size", "64"], "--chunk-size apply to a folder"),
        (["train", "--data", str(data), "--out", out, "--max-depth", "1", "--chunk-overlap", "2"],
         "--max-depth, --chunk-overlap apply to a folder of documents, not a JSONL corpus; leave them out"),
        (["index", "--model", out, "--data", str(data), "--db", str(tmp_path / "db"), "--chroma-port", "8001"],
         "--chroma-port goes with --chroma-host"),
        (["eval", "--compare", str(tmp_path / "r1"), "--model", out, "--bm25", "--out", str(tmp_path / "r")],
         "--model, --bm25 evaluate models; --compare combines reports"),
    )  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not (tmp_path / "db").exists() and not (tmp_path / "r").exists()


def test_the_cli_refuses_queries_with_a_folder_and_bad_chunk_settings(tmp_path, capsys):
    write(tmp_path / "kb" / "a" / "x.md", "# X\n\ntext")
    assert main(["train", "--data", str(tmp_path / "kb"), "--out", str(tmp_path / "m"), "--chunk-overlap", "-1"]) == 2
    assert "chunk_overlap" in capsys.readouterr().err and not (tmp_path / "m").exists()
    # a base model that is not there, or a chunk_size it cannot read, fails before the folder is read
    base = str(build_tiny_model())
    cases = (
        (["--base-model", str(tmp_path / "nope")], "does not exist"),
        (["--base-model", base, "--chunk-size", "100000"], "more tokens than the model reads"),
    )
    for flags, message in cases:
        assert main(["train", "--data", str(tmp_path / "kb"), "--out", str(tmp_path / "m"), *flags]) == 2
        out, err = capsys.readouterr()
        assert message in err and "read 1 documents" not in out and not (tmp_path / "m").exists()


def test_rerankers_read_the_path_from_the_users_own_metadata_key():
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from heal_rag.encoder import HEALEncoder
    from heal_rag.langchain import HierarchyReranker
    from heal_rag.llamaindex import HierarchyNodePostprocessor

    encoder = HEALEncoder.load(build_tiny_heal_model())
    texts, paths, _ = make_corpus()
    docs = [
        Document(t, metadata={"category": " > ".join(p), "source": f"s{i}"})
        for i, (t, p) in enumerate(zip(texts, paths, strict=True))
    ]
    docs.append(Document("laser light lens", metadata={"source": "no-category"}))  # predicted
    reranked = HierarchyReranker(encoder=encoder, top_n=25, path_key="category").compress_documents(docs, "laser")
    by_source = {d.metadata["source"]: d for d in reranked}
    assert by_source["s0"].metadata["heal_path"] == "Physics > Optics" and by_source["s0"].metadata["category"]
    assert by_source["no-category"].metadata["heal_path"].count(" > ") == 1
    nodes = [NodeWithScore(node=TextNode(text=d.page_content, metadata=dict(d.metadata)), score=None) for d in docs]
    post = HierarchyNodePostprocessor(encoder, top_n=25, path_key="category")
    out = post.postprocess_nodes(nodes, query_str="laser")
    assert {n.node.metadata["source"]: n.node.metadata["heal_path"] for n in out}["s5"] == " > ".join(paths[5])


def test_folder_helpers_for_langchain_and_llamaindex(tmp_path):
    from heal_rag.langchain import load_folder as langchain_folder
    from heal_rag.langchain import to_documents
    from heal_rag.llamaindex import load_folder as llamaindex_folder
    from heal_rag.llamaindex import to_nodes

    write(tmp_path / "kb" / "pumps" / "a.md", "# Pumps\n\nThey move water.")
    write(tmp_path / "kb" / "valves" / "b.txt", "Valves stop flow.")
    lc = langchain_folder(tmp_path / "kb", show_progress=False)
    assert [(d.id, d.metadata["heal_path"], d.metadata.get("title")) for d in lc] == [
        ("pumps/a.md", "pumps", "Pumps"),
        ("valves/b.txt", "valves", None),
    ]
    li = llamaindex_folder(tmp_path / "kb", show_progress=False)
    assert li[0].id_ == "pumps/a.md" and "heal_path" in li[0].excluded_embed_metadata_keys
    chunks = chunk_documents(read_directory(tmp_path / "kb", show_progress=False).documents, None, show_progress=False)
    assert [d.id for d in to_documents(chunks)] == chunks.ids == [n.id_ for n in to_nodes(chunks)]
    assert to_documents(chunks)[0].metadata["heal_path"] == "pumps"
    # LlamaIndex embeds metadata by default: these nodes embed exactly the text the model was tuned on
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.schema import MetadataMode

    assert [n.get_content(MetadataMode.EMBED) for n in to_nodes(chunks)] == list(chunks.texts)
    split = SentenceSplitter(chunk_size=64, chunk_overlap=0).get_nodes_from_documents(li)
    assert [n.get_content(MetadataMode.EMBED) for n in split] == [n.get_content() for n in split]
    assert "pumps" in split[0].get_content(MetadataMode.LLM) and "heal_path" not in split[0].get_content(
        MetadataMode.LLM
    )
