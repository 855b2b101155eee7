"""Build lanes: which queue a build goes to. A document over ``HOMER_LARGE_BUILD_CHARS``
characters builds in the *large* lane, the rest in the *small* one, so a small document never
waits behind a book (:mod:`app.worker` runs a consumer per lane). Before its text is read, an
upload's size is guessed from its bytes, or its pages for a PDF."""

from __future__ import annotations

from .settings import load_settings

SMALL, LARGE = "small", "large"
PDF_CHARS_PER_PAGE = 3000  # an upload's size guess before its text is read: a dense printed page


def large_build_chars() -> int:
    """Documents of more characters than this build in the *large* lane
    (``HOMER_LARGE_BUILD_CHARS``, 250 000 — about 60 000 tokens, a 150-page book)."""
    return load_settings().builds.large_build_chars


def job_size(store, job: dict) -> int:
    """A job's document size in characters: exact once the document is stored, else guessed
    from the upload (a text file's bytes; a PDF's pages × ``PDF_CHARS_PER_PAGE``). A file
    that cannot be sized counts as small: it fails at once in the worker."""
    doc = store.get_document(job["document_id"])
    if doc is not None:
        return int(doc.get("chars") or 0)
    if not job.get("upload"):
        return 0
    try:
        path = store.upload_path(job["upload"])
        if path.suffix.lower() != ".pdf":
            return path.stat().st_size
        from pypdf import PdfReader

        return len(PdfReader(str(path)).pages) * PDF_CHARS_PER_PAGE
    except Exception:  # gone, unreadable, not a PDF after all: the build reports it
        return 0


def job_lane(store, job: dict) -> str:
    """``"large"`` for a document over :func:`large_build_chars`, else ``"small"``."""
    return LARGE if job_size(store, job) > large_build_chars() else SMALL
