"""Readers: folders (every format, bad files), LangChain documents and LlamaIndex nodes, with label paths."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from heal_rag.sources import from_langchain, from_llamaindex, read_directory
from heal_rag.sources.formats import parse_html, parse_markdown, parse_rst


def minimal_pdf(pages: list[str]) -> bytes:
    """A PDF with one line of Helvetica text per page (enough for pypdf's text extraction)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", "", "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects)} 0 R "
            "/Resources << /Font << /F1 3 0 R >> >> >>"
        )
        kids.append(len(objects))
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>"
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    return out + f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


@pytest.fixture()
def manuals(tmp_path) -> Path:
    root = tmp_path / "manuals"
    write(root / "pump" / "setup" / "install.md", "# Installing\n\nBolt it down.\n\n## Priming\n\nFill the casing.\n")
    write(root / "pump" / "repair" / "seal.txt", "Seal replacement\n\nRemove the impeller.\n")
    write(root / "valve" / "types.html", "<html><head><title>Valves</title><style>p{}</style></head><body>"
          "<nav>menu</nav><h1>Valve types</h1><p>Gate and <b>ball</b> valves.</p><h2>Ball</h2><p>Quarter turn.</p>"
          "<script>var x = 1;</script></body></html>")  # fmt: skip
    write(root / "valve" / "upkeep.rst", "Upkeep\n======\n\nGrease the stem.\n\nLeaks\n-----\n\nTighten the nut.\n")
    write(root / "valve" / "guide.pdf", minimal_pdf(["Valve guide page one", "Page two on seals"]))
    write(root / "valve" / "photo.png", b"\x89PNG")
    write(root / "valve" / "data.json", "{}")
    write(root / ".git" / "notes.md", "# hidden")
    write(root / "readme.md", "# About\n\nThese manuals cover pumps and valves.\n")
    return root


def test_a_folder_tree_gives_documents_labelled_by_their_folders(manuals):
    report = read_directory(manuals, show_progress=False)
    by_id = {d.id: d for d in report.documents}
    assert sorted(by_id) == [
        "pump/repair/seal.txt", "pump/setup/install.md", "readme.md", "valve/guide.pdf", "valve/types.html",
        "valve/upkeep.rst",
    ]  # fmt: skip
    assert by_id["pump/setup/install.md"].path == ("pump", "setup")
    assert by_id["valve/types.html"].path == ("valve",)
    assert by_id["readme.md"].path == ("manuals",), "a file in the root is labelled by the root"
    assert report.skipped == {".png": 1, ".json": 1} and report.unreadable == []
    install = by_id["pump/setup/install.md"]
    assert [(s.headings, s.text) for s in install.sections] == [
        (("Installing",), "Bolt it down."),
        (("Installing", "Priming"), "Fill the casing."),
    ]
    assert install.title == "Installing" and install.metadata["source"] == "pump/setup/install.md"
    html = by_id["valve/types.html"]
    assert html.title == "Valves" and [s.headings for s in html.sections] == [
        ("Valve types",),
        ("Valve types", "Ball"),
    ]
    assert "Gate and ball valves." in html.text and "var x" not in html.text and "menu" not in html.text
    assert [s.page for s in by_id["valve/guide.pdf"].sections] == [1, 2]
    assert by_id["valve/guide.pdf"].metadata["pages"] == 2
    assert "skipped 2 files of other types" in report.summary()


def test_max_depth_keeps_the_top_folders(manuals):
    report = read_directory(manuals, max_depth=1, show_progress=False)
    assert {d.path for d in report.documents} == {("pump",), ("valve",), ("manuals",)}


def test_a_flat_folder_has_no_paths(tmp_path):
    for i in range(3):
        write(tmp_path / f"note{i}.txt", f"note number {i}")
    assert [d.path for d in read_directory(tmp_path, show_progress=False).documents] == [None, None, None]


def test_bad_files_are_reported_with_their_path_and_the_read_goes_on(manuals, monkeypatch):
    write(manuals / "pump" / "binary.txt", b"\x00\x01\x02 binary")
    write(manuals / "pump" / "latin.md", b"caf\xe9 au lait")
    write(manuals / "pump" / "broken.pdf", b"%PDF-1.4 not really")
    write(manuals / "pump" / "empty.txt", "   \n")
    report = read_directory(manuals, show_progress=False)
    reasons = dict(report.unreadable)
    assert "binary" in reasons["pump/binary.txt"]
    assert "not UTF-8" in reasons["pump/latin.md"]
    assert "pump/broken.pdf" in reasons and reasons["pump/empty.txt"] == "no text"
    assert len(report.documents) == 6
    assert "could not read pump/binary.txt" in report.summary()
    (manuals / "pump" / "gone.md").symlink_to(manuals / "pump" / "deleted.md")  # a dangling link is reported too
    reasons = dict(read_directory(manuals, show_progress=False).unreadable)
    assert reasons["pump/gone.md"] == "a link to a file that does not exist"


def test_a_pdf_without_the_extra_is_reported_not_raised(manuals, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdf", None)  # as if heal_rag[pdf] were not installed
    report = read_directory(manuals, show_progress=False)
    assert "heal_rag[pdf]" in dict(report.unreadable)["valve/guide.pdf"]
    assert len(report.documents) == 5


def test_an_empty_folder_and_a_missing_one_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"No readable documents under .*: heal_rag reads \.htm, \.html, \.markdown"):
        read_directory(tmp_path, show_progress=False)
    with pytest.raises(ValueError, match=r"read 0 documents$"):
        read_directory(tmp_path, show_progress=False)
    write(tmp_path / "only.png", b"x")
    with pytest.raises(ValueError, match=r"(?s)No readable documents.*\.png: 1"):
        read_directory(tmp_path, show_progress=False)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        read_directory(tmp_path / "nope", show_progress=False)


def test_parsers_on_tricky_input():
    sections, title = parse_markdown("# T\n\n```\n# not a heading\n```\n\n## A\n\nbody")
    assert (
        title == "T"
        and [s.headings for s in sections] == [("T",), ("T", "A")]
        and "# not a heading" in sections[0].text
    )
    sections, _ = parse_rst("Title\n=====\n\nIntro.\n\n.. unknown-directive:: x\n\nA\n-\n\nText *a*.\n")
    assert [(s.headings, s.text) for s in sections][-1] == (("Title", "A"), "Text a.")
    sections, title = parse_html("<h1>One <em>two</em></h1><div>x<p>y</p></div><!-- comment -->")
    assert title == "One two" and sections[0].text == "x\ny"


def langchain_docs():
    from langchain_core.documents import Document

    return [
        Document("pumps move water", metadata={"category": ["Pumps", "Setup"]}, id="a"),
        Document("seals leak", metadata={"category": "Pumps > Repair"}, id="b"),
        Document("valves stop flow", metadata={"category": ["Valves"]}, id="c"),
    ]


def test_langchain_documents_with_a_path_key_a_string_or_per_level_keys_or_a_callable():
    from langchain_core.documents import Document

    docs = from_langchain(langchain_docs(), path_key="category")
    assert [d.path for d in docs] == [("Pumps", "Setup"), ("Pumps", "Repair"), ("Valves",)]
    assert [d.id for d in docs] == ["a", "b", "c"]
    per_level = [Document("x", metadata={"dept": "Ops", "team": "Pumps"}), Document("y", metadata={"dept": "HR"})]
    assert [d.path for d in from_langchain(per_level, path_key=["dept", "team"])] == [("Ops", "Pumps"), ("HR",)]
    by_callable = from_langchain(langchain_docs(), path_key=lambda m: ["All", str(m["category"][0])])
    assert by_callable[0].path == ("All", "Pumps")


def test_langchain_documents_labelled_by_their_source_path(tmp_path):
    from langchain_core.documents import Document

    docs = [
        Document("a", metadata={"source": str(tmp_path / "kb" / "pumps" / "a.md")}),
        Document("b", metadata={"source": str(tmp_path / "kb" / "valves" / "old" / "b.md")}),
    ]
    assert [d.path for d in from_langchain(docs, root=tmp_path / "kb")] == [("pumps",), ("valves", "old")]
    assert [d.path for d in from_langchain(docs, root=tmp_path / "kb", max_depth=1)] == [("pumps",), ("valves",)]


def test_a_path_key_missing_on_some_documents_is_named():
    from langchain_core.documents import Document

    docs = [*langchain_docs(), Document("no category here", metadata={"other": 1}, id="d")]
    with pytest.raises(
        ValueError, match=r"1 of 4 documents have no label path in metadata key 'category' \(first: 'd'\)"
    ):
        from_langchain(docs, path_key="category")
    # a key that no document has is a mistyped key, not a request to discover a hierarchy
    expected = r"None of the 1 documents has a label path in metadata key 'category' \(their metadata keys: other\)"
    with pytest.raises(ValueError, match=expected):
        from_langchain(docs[3:], path_key="category")
    assert from_langchain(docs[3:])[0].path is None, "no path_key and no paths: discovered"


def test_documents_without_ids_that_share_a_source_get_part_ids():
    """A splitter's pieces or a PDF loader's pages share their source: they get LlamaIndex-style part ids."""
    from langchain_core.documents import Document

    docs = [
        Document("pumps move water", metadata={"source": "pumps.txt", "category": "Pumps"}),
        Document("valves stop flow", metadata={"source": "valves.txt", "category": "Valves"}),
        Document("pumps need priming", metadata={"source": "pumps.txt", "category": "Pumps"}),
        Document("an id of its own", metadata={"source": "pumps.txt", "category": "Pumps"}, id="own"),
    ]
    ids = [d.id for d in from_langchain(docs, path_key="category")]
    assert ids == ["pumps.txt_part_0", "valves.txt", "pumps.txt_part_1", "own"]
    clash = [docs[0], Document("again", metadata={"category": "Pumps"}, id="pumps.txt")]
    with pytest.raises(ValueError, match=r"Documents 0 and 1 have the same id 'pumps.txt'\. Give each document"):
        from_langchain(clash, path_key="category")


def test_llamaindex_documents_and_nodes():
    from llama_index.core.schema import Document, NodeWithScore, TextNode

    items = [
        Document(text="pumps move water", id_="p", metadata={"heal_path": "Pumps > Setup"}),
        NodeWithScore(node=TextNode(text="valves stop flow", id_="v", metadata={"heal_l0": "Valves"}), score=0.3),
    ]
    docs = from_llamaindex(items)
    assert [(d.id, d.path, d.text) for d in docs] == [
        ("p", ("Pumps", "Setup"), "pumps move water"),
        ("v", ("Valves",), "valves stop flow"),
    ]


def test_the_folder_helpers_keep_headings_that_come_back_as_the_same_sections(manuals):
    """load_folder → LangChain/LlamaIndex documents → fine_tune_documents's reader: the chunks' training queries (the
    headings) survive the trip, so the helpers' documents train like the folder itself."""
    from heal_rag.langchain import load_folder as langchain_folder
    from heal_rag.llamaindex import load_folder as llamaindex_folder

    direct = {d.id: d for d in read_directory(manuals, show_progress=False).documents}
    for documents in (
        from_langchain(langchain_folder(manuals, show_progress=False)),
        from_llamaindex(llamaindex_folder(manuals, show_progress=False)),
    ):
        for document in documents:
            original = direct[document.id]
            if original.id.endswith(".pdf"):  # pages are not headings: one text either way
                assert len(document.sections) == 1 and not document.sections[0].headings
                continue
            assert [(s.headings, s.text) for s in document.sections] == [
                (s.headings, s.text) for s in original.sections
            ], original.id
            assert document.title == original.title
    assert langchain_folder(manuals, show_progress=False)[1].page_content.startswith("# Installing\n\nBolt it down.")


def test_headings_in_framework_documents_are_read_only_from_headed_files():
    from langchain_core.documents import Document

    text = "# Setup\n\nBolt it down.\n\n## Priming\n\nFill the casing."
    markdown, plain = from_langchain(
        [Document(text, metadata={"source": "kb/pump.md"}), Document(text, metadata={"source": "notes.txt"})]
    )
    assert [(s.headings, s.text) for s in markdown.sections] == [
        (("Setup",), "Bolt it down."),
        (("Setup", "Priming"), "Fill the casing."),
    ]
    assert markdown.title == "Setup"
    assert [(s.headings, s.text) for s in plain.sections] == [((), text)] and plain.title is None
