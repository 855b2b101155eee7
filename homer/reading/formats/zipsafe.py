"""Opening a zip archive from someone else — an EPUB, a DOCX, a sharing bundle — without
letting it take the machine: the one bounded zip reader of the project (:class:`BoundedZip`,
parametrised by :class:`ZipLimits`).

A zip bomb declares (or hides) far more bytes than it carries: a member of 200 MB of zeros
is about 200 KB deflated. So the archive's central directory is checked *before* anything
is decompressed — the number of members, each member's declared size, the declared total,
each larger member's compression ratio, and that no member carries more compressed bytes
than its declared size could need (a member that declares 1 000 bytes but holds a megabyte
of deflate lies) — and every read is bounded again while it runs (a member can never yield
more than its limit, nor the reads together more than the total), so a directory that
lies otherwise is caught too. With ``max_directory_bytes`` the directory itself is bounded
from the archive's end record before the zipfile module parses it (a bundle of 400 000 tiny
members is refused at once). Only :meth:`BoundedZip.blocks` decompresses: a library that
opens the archive itself (python-docx reads every member with a plain ``zipfile`` read) is
handed a package rebuilt from checked reads instead
(:func:`homer.reading.formats.docx.text_package`).

The reader refuses with a :class:`ZipRefusal` — why (its ``kind``) and the facts — and each
caller words it as its own error: :class:`SafeZip` (an EPUB or DOCX in memory; nothing is
ever written to disk) as a :class:`DocumentError`, the bundle importer
(``storage.bundle_verify``) as its ``BundleError``.

The file's first bytes also tell what it really is, so a PDF or an old Word file renamed
to ``.docx`` gets a reason that says so (:func:`sniff`).

Limits (:class:`ZipLimits`, given by the caller; the app sets them from ``HOMER_ZIP_MAX_MEMBERS``
(10 000), ``HOMER_ZIP_MAX_MB`` (total uncompressed, 256), ``HOMER_ZIP_MAX_MEMBER_MB`` (one
member, 64), ``HOMER_ZIP_MAX_RATIO`` (uncompressed ÷ compressed of a member over 1 MB, 100;
text compresses 3–20×, a bomb about 1000×) and ``HOMER_DOCX_MAX_PARSE_MB`` (what parsing a
DOCX's XML may take, 384: :mod:`.docx`), :mod:`app.settings`)."""

from __future__ import annotations

import io
import lzma
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from ..source_document import DocumentError

ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # an OLE compound file: an encrypted Office file, or a .doc
RATIO_FLOOR = 2**20  # members smaller than this are not held to the ratio (a small file of spaces is fine)
# Compressing never adds more than this to a member (deflate adds 5 bytes per 64 KB stored
# block, bzip2 about 1 %, plus headers): a member compressed beyond it declares a false size.
SLACK_FRACTION, SLACK_BYTES = 0.02, 4096
READ_CHUNK = 2**20
END_RECORD, END_RECORD_BYTES, MAX_COMMENT_BYTES = b"PK\x05\x06", 22, 65535
# what a damaged or hostile zip makes the zipfile module raise while it is read
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    OverflowError,
    KeyError,
    IndexError,
)


@dataclass(frozen=True)
class ZipLimits:
    """What an archive may hold. Only the package, the table of contents and the text
    parts are decompressed of an EPUB, and only the XML parts python-docx parses of a DOCX
    (images, fonts and the like never are); the total bounds the bytes read, one member's
    size one XML tree (lxml takes up to about 25 times the size of XML dense with elements:
    a DOCX's trees are bounded by their estimated size too, ``max_parse_bytes``, in :mod:`.docx`).
    ``max_ratio`` None: no member is held to a compression ratio; ``max_directory_bytes``:
    bound the directory from the end record before it is parsed (None: not done)."""

    max_members: int = 10_000
    max_total_bytes: int = 256 * 2**20
    max_member_bytes: int = 64 * 2**20
    max_ratio: float | None = 100.0
    max_parse_bytes: int = 384 * 2**20
    max_directory_bytes: int | None = None


class ZipRefusal(Exception):
    """Why :class:`BoundedZip` refused an archive: ``kind`` — one of not-zip, damaged, empty,
    members, directory, encrypted, false-size, ratio, member-size, total-size, missing,
    member-inflates, total-inflates — and the facts of the case in ``facts`` (``member``,
    ``count``, ``size``, ``declared``, ``compressed``, ``ratio``, ``limit``, ``detail``: the
    zipfile module's exception or a description). Callers turn it into their own error."""

    def __init__(self, kind: str, **facts):
        super().__init__(kind, facts)
        self.kind, self.facts = kind, facts


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


WHAT_IT_IS = {
    "pdf": "a PDF",
    "html": "an HTML file",
    "xml": "an XML file",
    "zip": "a zip archive",
    "ole": "an old-style Office file (.doc, .xls or .ppt)",
    "ole-encrypted": "a password-protected (encrypted) Office file",
}


def a(name: str) -> str:
    """The name with its article: "an EPUB", "a DOCX"."""
    return f"{'an' if name[:1] in 'AEFHILMNORSX' else 'a'} {name}"


def not_a(name: str, data: bytes) -> DocumentError:
    """The refusal of a file that is not a zip although its name says ``name`` (EPUB, DOCX)."""
    kind = sniff(data)
    if name == "DOCX" and kind == "ole-encrypted":
        return DocumentError("the DOCX is password-protected (encrypted)")
    if name == "DOCX" and kind == "ole":
        return DocumentError(
            "the file is an old Word document (.doc) or another OLE file, not a DOCX: save it as .docx"
        )
    if kind in WHAT_IT_IS:
        return DocumentError(f"the file is {WHAT_IT_IS[kind]}, not {a(name)} (wrong file extension?)")
    return DocumentError(f"the file is not {a(name)} ({a(name)} is a zip archive; this is not one)")


# --- the reader -----------------------------------------------------------------------------
def check_end_record(fh: BinaryIO, limits: ZipLimits) -> None:
    """Bound the zip directory (member count and bytes) from its end record, before the
    zipfile module parses it (zip64 archives by their zip64 end record)."""
    size = fh.seek(0, io.SEEK_END)
    tail_len = min(size, END_RECORD_BYTES + MAX_COMMENT_BYTES)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(END_RECORD)
    if pos < 0 or len(tail) - pos < END_RECORD_BYTES:
        raise ZipRefusal("not-zip")
    _, _, _, _, count, cd_size, cd_offset, _ = struct.unpack("<4s4H2LH", tail[pos : pos + END_RECORD_BYTES])
    if count == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:  # zip64: read its end record
        locator = tail[pos - 20 : pos] if pos >= 20 else b""
        if len(locator) != 20 or locator[:4] != b"PK\x06\x07":
            raise ZipRefusal("damaged", detail="no zip64 end record")
        (record_offset,) = struct.unpack("<Q", locator[8:16])
        if record_offset > size - 56:
            raise ZipRefusal("damaged", detail="zip64 end record outside the file")
        fh.seek(record_offset)
        record = fh.read(56)
        if record[:4] != b"PK\x06\x06":
            raise ZipRefusal("damaged", detail="bad zip64 end record")
        count, cd_size = struct.unpack("<QQ", record[32:48])
    if count > limits.max_members:
        raise ZipRefusal("members", count=count, limit=limits.max_members)
    if limits.max_directory_bytes is not None and cd_size > limits.max_directory_bytes:
        raise ZipRefusal("directory", size=cd_size, limit=limits.max_directory_bytes)


def check_directory(infos: list[zipfile.ZipInfo], limits: ZipLimits) -> None:
    """Refuse an archive whose central directory breaks ``limits`` (nothing decompressed)."""
    if not infos:
        raise ZipRefusal("empty")
    if len(infos) > limits.max_members:
        raise ZipRefusal("members", count=len(infos), limit=limits.max_members)
    total = 0
    for info in infos:
        member, size, compressed = info.filename, info.file_size, info.compress_size
        if info.flag_bits & 0x1:
            raise ZipRefusal("encrypted", member=member)
        if compressed > size * (1 + SLACK_FRACTION) + SLACK_BYTES:
            raise ZipRefusal("false-size", member=member, declared=size, compressed=compressed)
        if limits.max_ratio is not None and size > RATIO_FLOOR and size > limits.max_ratio * max(compressed, 1):
            raise ZipRefusal(
                "ratio",
                member=member,
                size=size,
                compressed=compressed,
                ratio=size / max(compressed, 1),
                limit=limits.max_ratio,
            )
        if size > limits.max_member_bytes:
            raise ZipRefusal("member-size", member=member, size=size, limit=limits.max_member_bytes)
        total += size
    if total > limits.max_total_bytes:
        raise ZipRefusal("total-size", size=total, limit=limits.max_total_bytes)


class BoundedZip:
    """A zip archive (bytes, or a binary file open for reading) whose directory passed
    ``limits``; :meth:`blocks` and :meth:`read` decompress one member within them. Every
    refusal is a :class:`ZipRefusal`."""

    def __init__(self, source: bytes | BinaryIO, limits: ZipLimits):
        self.limits = limits
        fh = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        if limits.max_directory_bytes is not None:
            check_end_record(fh, limits)
            fh.seek(0)
        try:
            self.zip = zipfile.ZipFile(fh)
            self.infos = self.zip.infolist()
        except ZIP_ERRORS as exc:
            raise ZipRefusal("damaged", detail=exc) from None
        check_directory(self.infos, limits)
        self.members = {info.filename: info for info in self.infos}
        self.read_bytes = 0

    def __enter__(self) -> BoundedZip:
        return self

    def __exit__(self, *exc) -> None:
        self.zip.close()

    def __contains__(self, member: str) -> bool:
        return member in self.members

    def find(self, member: str) -> str | None:
        """The archive's name for ``member``, matched without regard to case (zip tools differ)."""
        if member in self.members:
            return member
        lowered = member.lower()
        return next((m for m in self.members if m.lower() == lowered), None)

    def blocks(self, member: str, limit: int | None = None) -> Iterator[bytes]:
        """The member's bytes in blocks, counted as they come out against ``limit`` (default:
        its declared size), the per-member limit and, with every read before, the total:
        reading stops one block past a limit whatever the member claims (a member lying
        about its size is never inflated whole)."""
        info = self.members.get(member)
        if info is None:
            raise ZipRefusal("missing", member=member)
        cap = min(info.file_size if limit is None else limit, self.limits.max_member_bytes)
        size = 0
        try:
            with self.zip.open(info) as stream:
                while block := stream.read(min(READ_CHUNK, cap + 1 - size)):
                    size += len(block)
                    self.read_bytes += len(block)
                    if self.read_bytes > self.limits.max_total_bytes:
                        raise ZipRefusal("total-inflates", member=member, limit=self.limits.max_total_bytes)
                    if size > cap:
                        raise ZipRefusal("member-inflates", member=member, limit=cap)
                    yield block
        except ZipRefusal:
            raise
        except RuntimeError:  # zip-level encryption ("... is encrypted, password required")
            raise ZipRefusal("encrypted", member=member) from None
        except ZIP_ERRORS as exc:
            raise ZipRefusal("damaged", member=member, detail=exc) from None

    def read(self, member: str, limit: int | None = None) -> bytes:
        """The member's bytes in memory, read as :meth:`blocks` reads them."""
        return b"".join(self.blocks(member, limit))


# --- an EPUB or DOCX in memory ----------------------------------------------------------------
def document_reason(name: str, refusal: ZipRefusal) -> str:
    """How a refusal of an EPUB or DOCX (``name``) reads to the person who uploaded it."""
    facts = refusal.facts
    member = facts.get("member")
    match refusal.kind:
        case "damaged":
            detail = f"{member}: {facts['detail']}" if member else facts["detail"]
            return f"the {name} is a damaged zip archive ({detail})"
        case "not-zip":
            return f"the {name} is a damaged zip archive (no end of central directory)"
        case "empty":
            return f"the {name} is an empty zip archive"
        case "members":
            return f"the {name} holds {facts['count']:,} files, over the limit of {facts['limit']:,}"
        case "directory":
            return f"the {name} has a zip directory of {_mb(facts['size'])}, over the limit of {_mb(facts['limit'])}"
        case "encrypted":
            return f"the {name} is encrypted ({member} needs a password)"
        case "false-size":
            return (
                f"the {name} member {member} declares {facts['declared']:,} bytes uncompressed but holds "
                f"{_mb(facts['compressed'])} compressed: its declared size is false (a zip bomb?)"
            )
        case "ratio":
            return (
                f"the {name} member {member} expands {facts['ratio']:,.0f} times ({_mb(facts['compressed'])} to "
                f"{_mb(facts['size'])}), over the limit of {facts['limit']:,.0f} (a zip bomb?)"
            )
        case "member-size":
            return (
                f"the {name} member {member} is {_mb(facts['size'])} uncompressed, over the limit of "
                f"{_mb(facts['limit'])} (a zip bomb?)"
            )
        case "total-size":
            return (
                f"the {name} is {_mb(facts['size'])} uncompressed, over the limit of {_mb(facts['limit'])} "
                f"(a zip bomb?)"
            )
        case "missing":
            return f"the {name} has no {member}"
        case _:  # member-inflates, total-inflates
            return (
                f"the {name} member {member} decompresses to more than it declared or than the limits allow "
                f"(a zip bomb?)"
            )


class SafeZip(BoundedZip):
    """An EPUB or DOCX in memory whose directory passed :class:`ZipLimits`; :meth:`read`
    decompresses one member within them, never more than it declared. ``name``: what the
    archive should be ("EPUB", "DOCX"), for the reasons; every refusal is a
    :class:`DocumentError` (:func:`document_reason`)."""

    def __init__(self, data: bytes, name: str, limits: ZipLimits | None = None):
        self.name = name
        if not data.startswith((ZIP_MAGIC, EMPTY_ZIP_MAGIC)):
            raise not_a(name, data)
        with self._refusals():
            super().__init__(data, limits or ZipLimits())

    def read(self, member: str) -> bytes:
        """The member's bytes (its name matched without regard to case), read in chunks:
        never more than it declared, nor than the per-member and total limits; a damaged or
        lying member is refused."""
        with self._refusals(member):
            return super().read(self.find(member) or member)

    @contextmanager
    def _refusals(self, member: str | None = None):
        """Word a :class:`ZipRefusal` as a :class:`DocumentError` (naming ``member`` as asked)."""
        try:
            yield
        except ZipRefusal as refusal:
            if member is not None and "member" in refusal.facts:
                refusal.facts["member"] = member
            raise DocumentError(document_reason(self.name, refusal)) from None
