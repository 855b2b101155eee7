"""Ingest: the bad-input matrix (each case named) and what good inputs become (text, page
map, passages on natural boundaries counted in tokens)."""

from __future__ import annotations

import random

import pytest
from conftest import tiny_tokenizer
from store_helpers import blank_pdf, text_pdf

from app.ingest import IngestError, ingest_bytes

LIMIT = 64 * 1024


def _random_high_bytes() -> bytes:
    rng = random.Random(0)
    return bytes(rng.choice([*range(1, 9), *range(14, 32), *range(0x80, 0x100)]) for _ in range(4000))


BAD_INPUTS = {
    "corrupt-pdf": ("broken.pdf", lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog garbage", "corrupt"),
    "truncated-pdf": ("cut.pdf", lambda: text_pdf(["Some text on a page."])[:120], "PDF"),
    "encrypted-pdf": ("locked.pdf", lambda: text_pdf(["secret text"], password="pw"), "encrypted"),
    "image-only-pdf": ("scan.pdf", lambda: blank_pdf(3), "no text layer"),
    "empty-file": ("empty.txt", lambda: b"", "empty"),
    "whitespace-only": ("blank.md", lambda: b" \n\n\t \n", "empty"),
    "binary-renamed-txt": ("photo.txt", lambda: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 100, "binary"),
    "binary-without-nul-bytes": ("noise.txt", _random_high_bytes, "binary|not text"),
    "oversize": ("huge.txt", lambda: b"word " * (LIMIT // 4), "over the limit"),
    "unsupported-type": ("report.xlsx", lambda: b"PK\x03\x04 some zip", "unsupported"),
    "damaged-docx": ("report.docx", lambda: b"PK\x03\x04 some zip", "damaged zip archive"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_with_a_one_line_reason(case):
    name, make, expected = BAD_INPUTS[case]
    with pytest.raises(IngestError, match=expected) as info:
        ingest_bytes(make(), name, tiny_tokenizer(), max_bytes=LIMIT)
    message = str(info.value)
    assert "\n" not in message and message.startswith(name)


def test_latin1_text_is_decoded_correctly():
    text = "Café crème à la française, déjà vu; Über naïve façade — Ångström. " * 20
    text = text.replace("—", "-")
    doc = ingest_bytes(text.encode("latin-1"), "notes.txt", max_bytes=LIMIT)
    assert doc.text == text and doc.kind == "text"


def test_utf16_with_bom_is_text_not_binary():
    text = "Plain words in UTF-16 with a byte order mark. " * 10
    doc = ingest_bytes(text.encode("utf-16"), "wide.txt", max_bytes=LIMIT)
    assert doc.text.strip() == text.strip()


def test_markdown_keeps_its_title_and_kind():
    md = "# The Keeper's Log\n\nAda kept the lamp.\n\n## Day two\n\nThe storm came.\n"
    doc = ingest_bytes(md.encode(), "log.md", tiny_tokenizer(), max_bytes=LIMIT)
    assert doc.kind == "markdown" and doc.title == "The Keeper's Log" and doc.text == md


def test_pdf_pages_are_mapped_to_character_offsets():
    pages = ["Chapter one. The sea was calm.", "Chapter two. The keeper was Ada.", "Chapter three. Dawn."]
    doc = ingest_bytes(text_pdf(pages), "book.pdf", tiny_tokenizer(), max_bytes=LIMIT)
    assert doc.kind == "pdf" and len(doc.page_starts) == 3
    assert doc.page_of(doc.text.index("Ada")) == 2 and doc.page_of(doc.text.index("Dawn")) == 3
    assert doc.passages[0][2] == 1 and doc.passages[-1][3] == 3


def test_passages_cover_the_text_on_natural_boundaries_within_the_token_budget():
    tokenizer = tiny_tokenizer()
    paragraphs = [
        f"Paragraph {i}. " + "The keeper trimmed the wick and watched the sea. " * (1 + i % 4) for i in range(40)
    ]
    text = "\n\n".join(paragraphs)
    doc = ingest_bytes(text.encode(), "long.txt", tokenizer, max_bytes=10 * LIMIT, passage_tokens=300)
    spans = [(s, e) for s, e, _, _ in doc.passages]
    assert "".join(text[s:e] for s, e in spans) == text  # contiguous, nothing lost
    assert all(len(tokenizer.tokenize(text[s:e])) <= 300 for s, e in spans)
    assert all(text[s:e].endswith("\n\n") for s, e in spans[:-1])  # cut between paragraphs
    assert doc.token_count == len(tokenizer(text, add_special_tokens=False).input_ids)
