"""Readers of the sectioned formats — EPUB, DOCX, HTML — into a
:class:`homer.sources.SourceDocument` whose locations are labelled sections
(:mod:`homer.locations`)."""

from __future__ import annotations

from ..source_document import DocumentError, SourceDocument


def read_sectioned(kind: str, data: bytes, max_chars: int | None = None, deadline: float | None = None) -> SourceDocument:
    """Read ``data`` as ``kind`` ("epub", "docx" or "html"); :class:`DocumentError` with a
    one-line reason when it cannot be."""
    raise DocumentError(f"reading {kind.upper()} files is not available yet")
