"""Turning an uploaded file into a document: text with a page map, checked for the usual
bad inputs, and split into passages on natural boundaries (token-length aware).

Every refusal is an :class:`IngestError` whose message is one line for the user.

Ingestion is bounded (:class:`app.ingest_limits.IngestLimits`, each a setting: :class:`app.settings.IngestSettings`) so
that one hostile or huge file cannot hold a worker for long or take the memory of the
machine: the file's size, a PDF's pages (checked before any text is extracted), each PDF
page's content stream and text, the extracted characters, the tokens and the seconds spent
(OCR of a scanned PDF's pages adds its own page limit and time allowance).
Tokens are counted in pieces of bounded size, and passages are split in blocks of bounded
size, so time and memory grow linearly with the text."""

from __future__ import annotations

import bisect
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from homer.reading.sources import SECTIONED_SUFFIXES, DocumentError, read_document

from .ingest_limits import IngestLimits, ingest_limits, max_upload_bytes, reading_options, zip_limits

PASSAGE_TOKENS = 512
TOKEN_PIECE_CHARS = 65_536  # text tokenised at once when counting tokens (bounds the tokenizer's memory)


class IngestError(ValueError):
    """An upload that cannot become a document; the message says why, in one line."""


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
    locations: list[str] | None = None  # section labels of a sectioned format, one per start (None: pages)

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
    bad = sum(
        1
        for ch in sample
        if ch == "\ufffd" or (unicodedata.category(ch) in ("Cc", "Cn", "Co", "Cs") and ch not in "\n\r\t\f")
    )
    return bad / len(sample) > 0.05


def _title(text: str, kind: str, file_name: str) -> str:
    if kind == "markdown":
        for line in text[:100_000].splitlines()[:50]:
            if line.startswith("# "):
                return line[2:].strip()[:200]
    return Path(file_name).stem


class _Clock:
    """The ingest's deadline; :meth:`check` refuses once it has passed."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def check(self, doing: str) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DocumentError(f"{doing} took longer than the limit of {self.seconds:.0f} s")

    def extend(self, seconds: float) -> None:
        """Allow ``seconds`` more (the OCR of a scan's pages)."""
        if self.deadline is not None and seconds > 0:
            self.seconds += seconds
            self.deadline += seconds


_BREAKS = ("\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ")


def cut_points(text: str, size: int, breaks: tuple[str, ...] = _BREAKS) -> list[tuple[int, int]]:
    """Contiguous (start, end) pieces of ``text`` of at most ``size`` characters, each cut
    after the strongest break (in ``breaks`` order) found in the second half of its window,
    else at exactly ``size`` (a run without any break). Linear in ``len(text)``."""
    pieces, start, n = [], 0, len(text)
    while n - start > size:
        low, high = start + size // 2, start + size
        cut = high
        for sep in breaks:
            at = text.rfind(sep, low, high)
            if at >= 0:
                cut = at + len(sep)
                break
        pieces.append((start, cut))
        start = cut
    if start < n or not pieces:
        pieces.append((start, n))
    return pieces


def count_tokens(text: str, tokenizer, max_tokens: int | None = None, clock: _Clock | None = None) -> int:
    """The document's length in the model's tokens, tokenised in pieces of at most
    ``TOKEN_PIECE_CHARS`` characters cut at line starts or spaces (a whole 40 MB text at once
    took several GiB in the tokenizer); a piece boundary may count a token more or less than
    a whole-text count. Stops as soon as ``max_tokens`` is exceeded."""
    total = 0
    for start, end in cut_points(text, TOKEN_PIECE_CHARS, ("\n", " ")):
        total += len(tokenizer(text[start:end], add_special_tokens=False).input_ids)
        if max_tokens is not None and total > max_tokens:
            raise DocumentError(
                f"the document is over {max_tokens:,} tokens (the limit; "
                f"counted {total:,} in its first {end:,} characters)"
            )
        if clock is not None:
            clock.check("counting the tokens")
    return total


def _fixed_passages(block: str, tokenizer, passage_tokens: int) -> list[tuple[int, int]]:
    """A block cut into passages of at most ``passage_tokens`` tokens (×4 characters without a
    tokenizer), each cut moved back to the last whitespace in the second half of its window
    when there is one: one tokenizer call with offsets, then one pass — for text without the
    separators the recursive splitter needs."""
    if tokenizer is None:
        starts, step = None, passage_tokens * 4
    else:
        offsets = tokenizer(block, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        starts, step = [o[0] for o in offsets], passage_tokens
    spans, start = [], 0
    while start < len(block):
        if starts is None:
            limit = start + step
        else:
            first = bisect.bisect_left(starts, start)
            limit = starts[first + step] if first + step < len(starts) else len(block)
        if limit >= len(block):
            spans.append((start, len(block)))
            break
        cut = limit
        space = max(
            block.rfind(" ", start + (limit - start) // 2, limit),
            block.rfind("\n", start + (limit - start) // 2, limit),
        )
        if space >= 0:
            cut = space + 1
        cut = max(cut, start + 1)
        spans.append((start, cut))
        start = cut
    return spans


def split_passages(
    text: str, tokenizer=None, passage_tokens: int = PASSAGE_TOKENS, clock: _Clock | None = None
) -> list[tuple[int, int]]:
    """(start, end) character spans of passages cut on natural boundaries (paragraphs, lines,
    sentences, words) by langchain's RecursiveCharacterTextSplitter; lengths are counted in
    the model's tokens when a tokenizer is given, else in characters (×4).

    Why in blocks: the splitter falls back to single characters on a stretch without
    separators and then measures and merges each character (a 10 MB line took about a minute
    without a tokenizer, minutes with one, and its cost grows faster than the text). So the
    text is first cut into blocks of at most 64 passages' worth of characters at the
    strongest break near each block's end (:func:`cut_points`), and a block holding a run of
    over ``2 × passage_tokens`` characters without whitespace, or of ``8 × passage_tokens``
    without a line break or punctuation, is cut at whitespace every ``passage_tokens`` tokens
    in one linear pass instead (:func:`_fixed_passages`). Work is then bounded per
    block and linear overall; ordinary prose is cut where it was before, except that a
    passage never crosses a block's edge."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    separators = [*_BREAKS, ""]
    if tokenizer is not None:
        splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
            tokenizer,
            chunk_size=passage_tokens,
            chunk_overlap=0,
            separators=separators,
            keep_separator="end",
            add_start_index=True,
            strip_whitespace=False,
        )
    else:
        splitter = RecursiveCharacterTextSplitter(
            chunk_size=passage_tokens * 4,
            chunk_overlap=0,
            separators=separators,
            keep_separator="end",
            add_start_index=True,
            strip_whitespace=False,
        )
    # stretches the recursive splitter would take apart word by word or character by character
    unsplittable = re.compile(rf"\S{{{2 * passage_tokens + 1},}}|[^\n.?!;,]{{{8 * passage_tokens},}}")
    spans = []
    for block_start, block_end in cut_points(text, 64 * 4 * passage_tokens):
        block = text[block_start:block_end]
        if unsplittable.search(block):
            pieces = _fixed_passages(block, tokenizer, passage_tokens)
        else:
            pieces = []
            for piece in splitter.create_documents([block]):
                start = int(piece.metadata["start_index"])
                pieces.append((start, start + len(piece.page_content)))
        spans += [(block_start + s, block_start + e) for s, e in pieces]
        if clock is not None:
            clock.check("splitting the text into passages")
    return spans


SNIFF_BYTES = 65_536  # what the upload request decodes of a text file
_CONTINUATION = bytes(range(0x80, 0xC0))


def is_pdf(data: bytes, file_name: str) -> bool:
    return Path(file_name).suffix.lower() == ".pdf" or data.startswith(b"%PDF-")


def _utf8_prefix(data: bytes, size: int) -> bytes:
    """The first ``size`` bytes, shortened so as not to end inside a UTF-8 character."""
    if len(data) <= size:
        return data
    cut = size
    while cut > size - 4 and 0x80 <= data[cut] < 0xC0:
        cut -= 1
    return data[:cut]


def least_chars(data: bytes) -> int:
    """A lower bound of the characters a text file decodes to, without decoding it: exact for
    UTF-8 (bytes that do not continue a character), a quarter of the bytes otherwise (no
    encoding spends more than four bytes on a character)."""
    try:
        _utf8_prefix(data, SNIFF_BYTES).decode("utf-8-sig")
    except UnicodeDecodeError:
        return len(data) // 4
    return len(data.translate(None, _CONTINUATION))


def check_text_upload(data: bytes, file_name: str, limits: IngestLimits | None = None) -> None:
    """The checks of a text / Markdown upload that are cheap enough for the upload request
    (the worker reads, counts and splits the whole text): size, emptiness, a binary sniff and
    the encoding on the first ``SNIFF_BYTES``, and the character limit from the bytes."""
    from homer.reading.sources import decode_text

    limits = limits or ingest_limits()
    if len(data) > limits.max_bytes:
        raise IngestError(
            f"{file_name}: the file is {len(data) / 2**20:.1f} MB, over the limit of {limits.max_bytes / 2**20:.1f} MB"
        )
    if not data.strip():
        raise IngestError(f"{file_name}: the file is empty")
    try:
        prefix = decode_text(_utf8_prefix(data, SNIFF_BYTES))
    except DocumentError as exc:
        raise IngestError(f"{file_name}: {exc}") from None
    if _looks_binary(prefix):
        raise IngestError(f"{file_name}: the file is binary, not text")
    chars = least_chars(data)
    if chars > limits.max_chars:
        raise IngestError(
            f"{file_name}: the file holds at least {chars:,} characters of text, over the limit of {limits.max_chars:,}"
        )


def ingest_bytes(
    data: bytes,
    file_name: str,
    tokenizer=None,
    max_bytes: int | None = None,
    passage_tokens: int = PASSAGE_TOKENS,
    limits: IngestLimits | None = None,
    progress=None,
    split: bool = True,
) -> IngestedDocument:
    """Check and read an upload (PDF, EPUB, DOCX, HTML, TXT, Markdown) into an :class:`IngestedDocument`,
    within ``limits`` (default: :func:`ingest_limits`; ``max_bytes`` overrides its size).
    ``progress(message)``, if given, hears the steps that take long ("OCR page 3/80")."""
    limits = limits or ingest_limits(max_bytes)
    if len(data) > limits.max_bytes:
        raise IngestError(
            f"{file_name}: the file is {len(data) / 2**20:.1f} MB, over the limit of {limits.max_bytes / 2**20:.1f} MB"
        )
    clock = _Clock(limits.seconds)
    try:
        if (
            not is_pdf(data, file_name)
            and Path(file_name).suffix.lower() not in SECTIONED_SUFFIXES
            and least_chars(data) > limits.max_chars
        ):  # before decoding it all (the sectioned readers
            # count their text as they read: a zip's or a page's bytes are not its characters)
            raise DocumentError(
                f"the file holds at least {least_chars(data):,} characters of text, over the limit "
                f"of {limits.max_chars:,}"
            )
        source = read_document(
            file_name, data=data, progress=progress, **limits.pdf(clock.deadline), **reading_options()
        )
        clock.extend(len(getattr(source, "ocr_pages", ())) * limits.ocr_page_seconds)  # as read_pdf allowed it
        if source.kind != "pdf" and _looks_binary(source.text):
            raise DocumentError("the file is binary, not text")
        if len(source.text) > limits.max_chars:
            raise DocumentError(
                f"the file holds {len(source.text):,} characters of text, over the limit of {limits.max_chars:,}"
            )
        clock.check("reading the file")
        token_count = None
        if tokenizer is not None:  # before splitting: an overlong document is refused at the lower cost
            token_count = count_tokens(source.text, tokenizer, limits.max_tokens, clock)
        # ``split=False``: the token-counted passages later (:func:`token_passages`); they are the
        # slowest step (a tokenizer call per candidate piece), and a document is askable without them
        passages = token_passages(source.text, source.page_starts, tokenizer, passage_tokens, clock) if split else None
    except DocumentError as exc:
        raise IngestError(f"{file_name}: {exc}") from None
    return IngestedDocument(
        data=data,
        file_name=Path(file_name).name,
        text=source.text,
        kind=source.kind,
        page_starts=list(source.page_starts),
        passages=passages,
        token_count=token_count,
        title=_title(source.text, source.kind, file_name),
        locations=list(source.labels) if source.labels is not None else None,
    )


def token_passages(
    text: str, page_starts: list[int], tokenizer=None, passage_tokens: int = PASSAGE_TOKENS, clock: _Clock | None = None
) -> list[list[int]]:
    """``[start, end, first page, last page]`` of the document's token-counted passages
    (:func:`split_passages`), as the document row and its bundles keep them."""
    spans = split_passages(text, tokenizer, passage_tokens, clock)
    return [[s, e, page_of(page_starts, s), page_of(page_starts, max(s, e - 1))] for s, e in spans]


def add_to_store(store, doc: IngestedDocument) -> dict:
    """Store an ingested document (once per content); returns its row."""
    return store.add_document(
        doc.data,
        doc.file_name,
        doc.text,
        doc.kind,
        doc.page_starts,
        token_count=doc.token_count,
        title=doc.title,
        passages=doc.passages,
        locations=doc.locations,
    )


# the limits are re-exported: callers import them from here (:mod:`app.ingest_limits` holds them)
__all__ = [
    "PASSAGE_TOKENS",
    "IngestError",
    "IngestLimits",
    "IngestedDocument",
    "add_to_store",
    "check_text_upload",
    "count_tokens",
    "cut_points",
    "ingest_bytes",
    "ingest_limits",
    "is_pdf",
    "least_chars",
    "max_upload_bytes",
    "page_of",
    "split_passages",
    "token_passages",
    "zip_limits",
]
