"""The location map: pages of a PDF, labelled sections of the sectioned formats, kept by the
store and carried in bundles."""

import pytest

from homer.reading.locations import MAX_LABEL_CHARS, LocationMap, section_label


def test_pages_are_numbered_and_sections_are_labelled():
    pages = LocationMap.of([0, 100, 250])
    assert [pages.number(o) for o in (0, 99, 100, 260)] == [1, 1, 2, 3]
    assert pages.label_at(120) == "p. 2" and pages.noun == "page" and not pages.sectioned
    assert pages.span(2, 400) == (100, 250) and pages.span(3, 400) == (250, 400)
    sections = LocationMap.of([0, 40], ["Chapter 1 · Loomings", ""])
    assert sections.label_at(10) == "Chapter 1 · Loomings" and sections.noun == "section"
    assert sections.label(2) == "§ 2"  # a section without a heading is numbered
    assert LocationMap.of([0]).where(1) == ""  # one page: nothing to say
    assert LocationMap.of([0], ["Preface"]).where(1) == "Preface"
    with pytest.raises(ValueError):
        LocationMap.of([0, 10], ["only one"])


def test_section_labels_keep_the_deepest_levels_within_the_limit():
    assert section_label(["Part  One", "", "Chapter\n3"]) == "Part One · Chapter 3"
    long = section_label(["x" * 250, "The Storm"])
    assert long == "The Storm"
    assert len(section_label(["y" * 500])) == MAX_LABEL_CHARS


def test_the_store_keeps_section_labels(tmp_path):
    from storage.store import Store, StoreError

    store = Store(tmp_path / "store")
    text = "Loomings. Call me Ishmael.\n\nThe Carpet-Bag. I stuffed a shirt or two."
    row = store.add_document(
        b"epub bytes",
        "moby.epub",
        text,
        "epub",
        [0, 28],
        locations=["Chapter 1 · Loomings", "Chapter 2 · The Carpet-Bag"],
    )
    assert store.location_map(row["id"]).label_at(30) == "Chapter 2 · The Carpet-Bag"
    plain = store.add_document(b"pdf bytes", "a.pdf", "one\n\ntwo", "pdf", [0, 5])
    assert store.location_map(plain["id"]).label_at(6) == "p. 2"
    with pytest.raises(StoreError):
        store.add_document(b"other", "b.epub", text, "epub", [0, 28], locations=["one label"])


def test_markdown_headings_are_sections_and_code_fences_are_not():
    from homer.reading.sources import read_document

    text = (
        "Intro line.\n\n# Install\n\nPip it.\n\n## Requirements\n\nPython 3.11.\n\n```\n# not a heading\n```\n\n"
        "# Use\n\nAsk away.\n"
    )
    doc = read_document("guide.md", data=text.encode())
    assert doc.labels == ["", "Install", "Install · Requirements", "Use"]
    places = doc.locations
    assert places.label_at(text.index("Python")) == "Install · Requirements"
    assert places.label_at(text.index("not a heading")) == "Install · Requirements"
    assert places.label_at(text.index("Ask")) == "Use" and places.label_at(0) == "§ 1"
    assert read_document("plain.md", data=b"No headings here.").labels is None
    first = read_document("t.md", data=b"# Title\n\nBody.\n")
    assert first.page_starts == [0] and first.labels == ["Title"]
