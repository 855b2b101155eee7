"""Turning an uploaded file into a document: text with a page map, checked for the usual
bad inputs, and split into passages on natural boundaries (token-length aware).

Every refusal is an :class:`IngestError` whose message is one line for the user."""

from __future__ import annotations

import bisect
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from homer.sources import DocumentError, read_document

DEFAULT_MAX_BYTES = 50 * 2**20
PASSAGE_TOKENS = 512


class IngestError(ValueError):
    """An upload that cannot become a document; the message says why, in one line."""


def max_upload_bytes() -> int:
    """The size limit: ``HOMER_MAX_UPLOAD_MB`` (default 50 MB)."""
    value = os.environ.get("HOMER_MAX_UPLOAD_MB")
    return int(float(value) * 2**20) if value else DEFAULT_MAX_BYTES


@dataclass
class IngestedDocument:
    """What the store keeps of an upload. ``passages``: [start, end, first page, last page]
    per passage (character offsets into ``text``; pages 1-based)."""

    data: bytes
    file_name: str
    text: str
    kind: str
    page_starts: list[int] = field(default_factory=lambda: [0])
    passages: list[list[int]] = field(default_factory=list)
    token_count: int | None = None
    title: str = ""

    def page_of(self, offset: int) -> int:
        return page_of(self.page_starts, offset)


def page_of(page_starts: list[int], offset: int) -> int:
    """1-based page holding character ``offset``."""
    return max(1, bisect.bisect_right(page_starts, offset))


def _looks_binary(text: str) -> bool:
    """Decoded text that is mostly control / unassigned characters came from a binary file."""
    sample = text[:20_000]
    if not sample:
        return False
    bad = sum(1 for ch in sample if ch == "\ufffd" or (unicodedata.category(ch) in ("Cc", "Cn", "Co", "Cs")
                                                      and ch not in "\n\r\t\f"))
    return bad / len(sample) > 0.05


def _title(text: str, kind: str, file_name: str) -> str:
    if kind == "markdown":
        for line in text.splitlines()[:50]:
            if line.startswith("# "):
                return line[2:].strip()[:200]
    return Path(file_name).stem


def split_passages(text: str, tokenizer=None, passage_tokens: int = PASSAGE_TOKENS) -> list[tuple[int, int]]:
    """(start, end) character spans of passages cut on natural boundaries (paragraphs, lines,
    sentences, words) by langchain's RecursiveCharacterTextSplitter; lengths are counted in
    the model's tokens when a tokenizer is given, else in characters (×4)."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    separators = ["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""]
    if tokenizer is not None:
        splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
            tokenizer, chunk_size=passage_tokens, chunk_overlap=0, separators=separators,
            keep_separator="end", add_start_index=True, strip_whitespace=False)
    else:
        splitter = RecursiveCharacterTextSplitter(chunk_size=passage_tokens * 4, chunk_overlap=0, separators=separators,
                                                  keep_separator="end", add_start_index=True, strip_whitespace=False)
    spans = []
    for piece in splitter.create_documents([text]):
        start = int(piece.metadata["start_index"])
        spans.append((start, start + len(piece.page_content)))
    return spans


def ingest_bytes(data: bytes, file_name: str, tokenizer=None, max_bytes: int | None = None,
                 passage_tokens: int = PASSAGE_TOKENS) -> IngestedDocument:
    """Check and read an upload (PDF, TXT, Markdown) into an :class:`IngestedDocument`."""
    limit = max_upload_bytes() if max_bytes is None else max_bytes
    if len(data) > limit:
        raise IngestError(f"{file_name}: the file is {len(data) / 2**20:.1f} MB, over the limit of "
                          f"{limit / 2**20:.1f} MB")
    try:
        source = read_document(file_name, data=data)
    except DocumentError as exc:
        raise IngestError(f"{file_name}: {exc}") from None
    if source.kind != "pdf" and _looks_binary(source.text):
        raise IngestError(f"{file_name}: the file is binary, not text")
    spans = split_passages(source.text, tokenizer, passage_tokens)
    passages = [[s, e, page_of(source.page_starts, s), page_of(source.page_starts, max(s, e - 1))] for s, e in spans]
    token_count = None
    if tokenizer is not None:
        token_count = len(tokenizer(source.text, add_special_tokens=False).input_ids)
    return IngestedDocument(data=data, file_name=Path(file_name).name, text=source.text, kind=source.kind,
                            page_starts=list(source.page_starts), passages=passages, token_count=token_count,
                            title=_title(source.text, source.kind, file_name))


def ingest_file(path: str | os.PathLike, tokenizer=None, max_bytes: int | None = None) -> IngestedDocument:
    path = Path(path)
    limit = max_upload_bytes() if max_bytes is None else max_bytes
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise IngestError(f"{path.name}: cannot read the file ({exc.strerror})") from None
    if size > limit:
        raise IngestError(f"{path.name}: the file is {size / 2**20:.1f} MB, over the limit of {limit / 2**20:.1f} MB")
    return ingest_bytes(path.read_bytes(), path.name, tokenizer, limit)


def add_to_store(store, doc: IngestedDocument) -> dict:
    """Store an ingested document (once per content); returns its row."""
    return store.add_document(doc.data, doc.file_name, doc.text, doc.kind, doc.page_starts,
                              token_count=doc.token_count, title=doc.title, passages=doc.passages)
