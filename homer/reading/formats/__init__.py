"""Readers of the sectioned formats — EPUB, DOCX, HTML — into a
:class:`homer.reading.sources.SourceDocument` whose locations are labelled sections
(:mod:`homer.reading.locations`): :mod:`.epub`, :mod:`.docx`, :mod:`.html`, over the shared
bounds of :mod:`.zipsafe` (zip bombs), :mod:`.markup` (hostile XML) and :mod:`.base`
(characters, time, an empty result)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..source_document import DocumentError, SourceDocument

if TYPE_CHECKING:
    from .zipsafe import ZipLimits

KINDS = ("epub", "docx", "html")


def read_sectioned(
    kind: str, data: bytes, max_chars: int | None = None, deadline: float | None = None, limits: ZipLimits | None = None
) -> SourceDocument:
    """Read ``data`` as ``kind`` ("epub", "docx" or "html"); :class:`DocumentError` with a
    one-line reason when it cannot be. ``max_chars`` bounds the extracted text and
    ``deadline`` (``time.monotonic()``) the time spent (None: unbounded); ``limits`` an EPUB's
    or DOCX's archive (default: :class:`.zipsafe.ZipLimits`' defaults)."""
    if kind == "epub":
        from .epub import read_epub

        return read_epub(data, max_chars=max_chars, deadline=deadline, limits=limits)
    if kind == "docx":
        from .docx import read_docx

        return read_docx(data, max_chars=max_chars, deadline=deadline, limits=limits)
    if kind == "html":
        from .html import read_html

        return read_html(data, max_chars=max_chars, deadline=deadline)
    raise DocumentError(f"unknown sectioned format {kind!r}")


def check_sectioned_upload(kind: str, data: bytes, limits: ZipLimits | None = None) -> None:
    """The cheap checks of an upload, for the upload request: an EPUB or DOCX is a zip
    whose directory is within ``limits`` (and an EPUB is not DRM-protected), read from the
    directory and two small members only; an HTML file is not a PDF, zip or Office file.
    Raises :class:`DocumentError`."""
    if kind == "epub":
        from .epub import check_epub

        check_epub(data, limits)
    elif kind == "docx":
        from .docx import check_docx

        check_docx(data, limits)
    elif kind == "html":
        from .html import check_html

        check_html(data)
    else:
        raise DocumentError(f"unknown sectioned format {kind!r}")
