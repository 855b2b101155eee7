"""Opening an EPUB or DOCX — a zip archive — without letting it take the machine.

A zip bomb declares (or hides) far more bytes than it carries: a member of 200 MB of zeros
is about 200 KB deflated. So the archive's central directory is checked *before* anything
is decompressed — the number of members, each member's declared size, the declared total,
each larger member's compression ratio, and that no member carries more compressed bytes
than its declared size could need (a member that declares 1 000 bytes but holds a megabyte
of deflate lies) — and every read is bounded again while it runs (a member can never yield
more than it declared, nor the reads together more than the total), so a directory that
lies otherwise is caught too. Only :meth:`SafeZip.read` decompresses: a library that opens
the archive itself (python-docx reads every member with a plain ``zipfile`` read) is handed
a package rebuilt from checked reads instead (:func:`homer.reading.formats.docx.text_package`).
Nothing is ever written to disk.

The file's first bytes also tell what it really is, so a PDF or an old Word file renamed
to ``.docx`` gets a reason that says so (:func:`sniff`).

Limits (:class:`ZipLimits`, given by the caller; the app sets them from ``HOMER_ZIP_MAX_MEMBERS``
(10 000), ``HOMER_ZIP_MAX_MB`` (total uncompressed, 256), ``HOMER_ZIP_MAX_MEMBER_MB`` (one
member, 64), ``HOMER_ZIP_MAX_RATIO`` (uncompressed ÷ compressed of a member over 1 MB, 100;
text compresses 3–20×, a bomb about 1000×) and ``HOMER_DOCX_MAX_PARSE_MB`` (what parsing a
DOCX's XML may take, 384: :mod:`.docx`), :mod:`app.settings`)."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

from ..source_document import DocumentError

ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # an OLE compound file: an encrypted Office file, or a .doc
RATIO_FLOOR = 2**20  # members smaller than this are not held to the ratio (a small file of spaces is fine)
# Compressing never adds more than this to a member (deflate adds 5 bytes per 64 KB stored
# block, bzip2 about 1 %, plus headers): a member compressed beyond it declares a false size.
SLACK_FRACTION, SLACK_BYTES = 0.02, 4096
READ_CHUNK = 2**20



@dataclass(frozen=True)
class ZipLimits:
    """What an archive may hold. Only the package, the table of contents and the text
    parts are decompressed of an EPUB, and only the XML parts python-docx parses of a DOCX
    (images, fonts and the like never are); the total bounds the bytes read, one member's
    size one XML tree (lxml takes up to about 25 times the size of XML dense with elements:
    a DOCX's trees are bounded by their estimated size too, ``max_parse_bytes``, in :mod:`.docx`)."""

    max_members: int = 10_000
    max_total_bytes: int = 256 * 2**20
    max_member_bytes: int = 64 * 2**20
    max_ratio: float = 100.0
    max_parse_bytes: int = 384 * 2**20


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB"


def sniff(data: bytes) -> str:
    """What the bytes are, by their signature: "zip", "pdf", "ole" (an encrypted Office
    file or an old .doc), "ole-encrypted" (an OLE file holding an ``EncryptedPackage``
    stream: a password-protected DOCX, XLSX or PPTX), "html", "xml" or "unknown"."""
    if data.startswith((ZIP_MAGIC, EMPTY_ZIP_MAGIC)):
        return "zip"
    if data.startswith(b"%PDF-"):
        return "pdf"
    if data.startswith(OLE_MAGIC):
        return "ole-encrypted" if "EncryptedPackage".encode("utf-16-le") in data else "ole"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "html"
    if head.startswith(b"<?xml"):
        return "xml"
    return "unknown"


WHAT_IT_IS = {"pdf": "a PDF", "html": "an HTML file", "xml": "an XML file", "zip": "a zip archive",
              "ole": "an old-style Office file (.doc, .xls or .ppt)",
              "ole-encrypted": "a password-protected (encrypted) Office file"}


def a(name: str) -> str:
    """The name with its article: "an EPUB", "a DOCX"."""
    return f"{'an' if name[:1] in 'AEFHILMNORSX' else 'a'} {name}"


def not_a(name: str, data: bytes) -> DocumentError:
    """The refusal of a file that is not a zip although its name says ``name`` (EPUB, DOCX)."""
    kind = sniff(data)
    if name == "DOCX" and kind == "ole-encrypted":
        return DocumentError("the DOCX is password-protected (encrypted)")
    if name == "DOCX" and kind == "ole":
        return DocumentError("the file is an old Word document (.doc) or another OLE file, not a DOCX: "
                             "save it as .docx")
    if kind in WHAT_IT_IS:
        return DocumentError(f"the file is {WHAT_IT_IS[kind]}, not {a(name)} (wrong file extension?)")
    return DocumentError(f"the file is not {a(name)} ({a(name)} is a zip archive; this is not one)")


class SafeZip:
    """A zip archive in memory whose directory passed :class:`ZipLimits`; :meth:`read`
    decompresses one member within them. ``name``: what the archive should be ("EPUB",
    "DOCX"), for the reasons."""

    def __init__(self, data: bytes, name: str, limits: ZipLimits | None = None):
        self.name, self.limits = name, limits or ZipLimits()
        if not data.startswith((ZIP_MAGIC, EMPTY_ZIP_MAGIC)):
            raise not_a(name, data)
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
            raise DocumentError(f"the {name} is a damaged zip archive ({exc})") from None
        check_directory(infos, name, self.limits)
        self.members = {info.filename: info for info in infos}
        self.read_bytes = 0

    def __contains__(self, member: str) -> bool:
        return member in self.members

    def find(self, member: str) -> str | None:
        """The archive's name for ``member``, matched without regard to case (zip tools differ)."""
        if member in self.members:
            return member
        lowered = member.lower()
        return next((m for m in self.members if m.lower() == lowered), None)

    def read(self, member: str) -> bytes:
        """The member's bytes, read in chunks: never more than it declared, nor than the
        per-member and total limits; a damaged or lying member is refused."""
        info = self.members.get(member) or self.members.get(self.find(member) or "")
        if info is None:
            raise DocumentError(f"the {self.name} has no {member}")
        cap = min(info.file_size, self.limits.max_member_bytes)
        chunks, size = [], 0
        try:
            with self.zip.open(info) as stream:
                while True:
                    chunk = stream.read(min(READ_CHUNK, cap - size + 1))
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > cap or self.read_bytes + size > self.limits.max_total_bytes:
                        raise DocumentError(f"the {self.name} member {member} decompresses to more than it declared "
                                            f"or than the limits allow (a zip bomb?)")
                    chunks.append(chunk)
        except DocumentError:
            raise
        except RuntimeError as exc:  # zip-level encryption ("... is encrypted, password required")
            raise DocumentError(f"the {self.name} is encrypted ({member} needs a password)") from None
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
            raise DocumentError(f"the {self.name} is a damaged zip archive ({member}: {exc})") from None
        self.read_bytes += size
        return b"".join(chunks)


def check_directory(infos: list[zipfile.ZipInfo], name: str, limits: ZipLimits) -> None:
    """Refuse an archive whose central directory breaks ``limits`` (nothing decompressed)."""
    if not infos:
        raise DocumentError(f"the {name} is an empty zip archive")
    if len(infos) > limits.max_members:
        raise DocumentError(f"the {name} holds {len(infos):,} files, over the limit of {limits.max_members:,}")
    total = 0
    for info in infos:
        if info.flag_bits & 0x1:
            raise DocumentError(f"the {name} is encrypted ({info.filename} needs a password)")
        if info.compress_size > info.file_size * (1 + SLACK_FRACTION) + SLACK_BYTES:
            raise DocumentError(f"the {name} member {info.filename} declares {info.file_size:,} bytes uncompressed "
                                f"but holds {_mb(info.compress_size)} compressed: its declared size is false "
                                f"(a zip bomb?)")
        if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise DocumentError(f"the {name} member {info.filename} expands {ratio:,.0f} times "
                                f"({_mb(info.compress_size)} to {_mb(info.file_size)}), over the limit of "
                                f"{limits.max_ratio:,.0f} (a zip bomb?)")
        if info.file_size > limits.max_member_bytes:
            raise DocumentError(f"the {name} member {info.filename} is {_mb(info.file_size)} uncompressed, over the "
                                f"limit of {_mb(limits.max_member_bytes)} (a zip bomb?)")
        total += info.file_size
    if total > limits.max_total_bytes:
        raise DocumentError(f"the {name} is {_mb(total)} uncompressed, over the limit of "
                            f"{_mb(limits.max_total_bytes)} (a zip bomb?)")


def check_zip_upload(data: bytes, name: str, limits: ZipLimits | None = None) -> None:
    """The cheap check of an upload in the request: a zip at all, and its directory within
    the limits (nothing is decompressed). Raises :class:`DocumentError`."""
    SafeZip(data, name, limits)
