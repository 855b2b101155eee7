"""Reading a document file into text, with the character offset where each page starts
(so kept tokens can be traced back to pages). PDF via pypdf; text and Markdown with
encoding detection (charset-normalizer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".text"}


class DocumentError(ValueError):
    """A file that cannot be read as a document; the message says why, in one line."""


@dataclass
class SourceDocument:
    text: str
    kind: str  # "pdf" | "text" | "markdown"
    page_starts: list[int] = field(default_factory=lambda: [0])  # char offset of each page

    @property
    def pages(self) -> int:
        return len(self.page_starts)

    def page_of(self, offset: int) -> int:
        """1-based page number holding character ``offset``."""
        import bisect

        return max(1, bisect.bisect_right(self.page_starts, offset))


def read_pdf(data: bytes) -> SourceDocument:
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError("the PDF is encrypted (password-protected)")
        texts = [(page.extract_text() or "") for page in reader.pages]
    except DocumentError:
        raise
    except (PdfReadError, Exception) as exc:  # pypdf raises several types on broken files
        raise DocumentError(f"the PDF is corrupt or unreadable ({type(exc).__name__})") from exc
    if not texts:
        raise DocumentError("the PDF has no pages")
    starts, parts, offset = [], [], 0
    for text in texts:
        starts.append(offset)
        parts.append(text + "\n\n")
        offset += len(text) + 2
    full = "".join(parts).rstrip()
    if not full.strip():
        raise DocumentError("the PDF has no text layer (scanned images only?)")
    return SourceDocument(full, "pdf", starts)


def decode_text(data: bytes) -> str:
    from charset_normalizer import from_bytes

    if b"\x00" in data[:4096] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DocumentError("the file is binary, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        matches = from_bytes(data)
        best = matches.best()
        if best is None:
            raise DocumentError("the file is not text in any known encoding") from None
        # charset-normalizer often ranks a Baltic / Central European code page first for short
        # Western text; prefer cp1252 (a superset of Latin-1's printable range) when it fits as well.
        for match in matches:
            if match.encoding == "cp1252" and ("cp1252" in best.could_be_from_charset
                                               or match.chaos <= best.chaos + 0.1):
                return str(match)
        return str(best)


def read_document(path: str | Path, data: bytes | None = None) -> SourceDocument:
    """Read a PDF, TXT or Markdown file. Raises :class:`DocumentError` with a reason."""
    path = Path(path)
    if data is None:
        data = path.read_bytes()
    suffix = path.suffix.lower()
    if not data.strip():
        raise DocumentError("the file is empty")
    if suffix == ".pdf" or data.startswith(b"%PDF-"):
        return read_pdf(data)
    if suffix in TEXT_SUFFIXES or suffix == "":
        text = decode_text(data)
        if not text.strip():
            raise DocumentError("the file holds no text")
        return SourceDocument(text, "markdown" if suffix in (".md", ".markdown") else "text")
    raise DocumentError(f"unsupported file type {suffix!r}: use PDF, TXT or Markdown")
