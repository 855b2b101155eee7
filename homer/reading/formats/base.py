"""The text a sectioned reader builds: paragraphs joined by blank lines, a location (a
:class:`homer.reading.locations.LocationMap` entry) starting at each heading and labelled with its
heading path, within the reader's bounds (characters and time)."""

from __future__ import annotations

import time

from ..locations import section_label
from ..source_document import DocumentError, SourceDocument

NAMES = {"epub": "EPUB", "docx": "DOCX", "html": "HTML file"}
DEADLINE_EVERY = 64  # blocks between two looks at the clock


LINE_BREAK = "\ue000"  # a line break the document asks for (``<br>``, a DOCX break), kept by collapse()


def collapse(text: str) -> str:
    """Runs of whitespace (line ends of the markup included) as one space; each
    :data:`LINE_BREAK` as a line end."""
    lines = (" ".join(line.split()) for line in text.split(LINE_BREAK))
    return "\n".join(line for line in lines if line)


class SectionedText:
    """Text built block by block with its locations. ``heading(level, title)`` starts a
    section at the current end of the text whose label is the path of the open headings
    (a heading closes those at its level and deeper); ``block(text)`` adds a paragraph.
    ``max_chars`` and ``deadline`` (``time.monotonic()``) are checked as the text grows:
    a refusal is a :class:`DocumentError`. The first location starts at 0: the text before
    the first heading is labelled ``preamble`` (e.g. the document's title)."""

    def __init__(self, kind: str, max_chars: int | None = None, deadline: float | None = None, preamble: str = ""):
        self.kind, self.name = kind, NAMES.get(kind, kind.upper())
        self.max_chars, self.deadline = max_chars, deadline
        self.parts: list[str] = []
        self.length = 0
        self.starts, self.labels = [0], [section_label([preamble]) if preamble else ""]
        self.path: list[tuple[int, str]] = []
        self.blocks = 0

    @property
    def label(self) -> str:
        return self.labels[-1]

    def heading(self, level: int, title: str) -> None:
        """Open a section of heading depth ``level`` (1: top) titled ``title``."""
        title = " ".join(str(title).split())
        if not title:
            return
        while self.path and self.path[-1][0] >= level:
            self.path.pop()
        self.path.append((level, title))
        label = section_label([t for _, t in self.path])
        if self.starts[-1] == self.length:  # nothing since the last start: that location becomes this one
            self.labels[-1] = label
        else:
            self.starts.append(self.length)
            self.labels.append(label)

    def block(self, text: str) -> None:
        """Add one paragraph (or a table's rows, one per line) after a blank line."""
        text = text.strip("\n").rstrip()
        if not text.strip():
            return
        piece = text + "\n\n"
        self.parts.append(piece)
        self.length += len(piece)
        if self.max_chars is not None and self.length > self.max_chars:
            raise DocumentError(f"the {self.name} holds over {self.max_chars:,} characters of text (the limit)")
        self.blocks += 1
        if self.blocks % DEADLINE_EVERY == 0:
            self.check_time()

    def check_time(self, where: str = "") -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            at = f" (stopped at {where})" if where else f" (stopped after {self.length:,} characters)"
            raise DocumentError(f"reading the {self.name} took too long{at}")

    def document(self) -> SourceDocument:
        """The :class:`SourceDocument`; refused when no text was found."""
        text = "".join(self.parts).rstrip()
        if not text.strip():
            raise DocumentError(f"the {self.name} holds no text")
        starts, labels = [], []
        for start, label in zip(self.starts, self.labels):
            if start >= len(text) and starts:  # a heading with nothing after it, at the very end
                continue
            starts.append(min(start, len(text)))
            labels.append(label)
        return SourceDocument(text, self.kind, starts, labels)
