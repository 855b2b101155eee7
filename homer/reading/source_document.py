"""What reading a document file gives — :class:`SourceDocument` — and the refusal of one that
cannot be read — :class:`DocumentError`. Both are re-exported by :mod:`homer.reading.sources`, where
callers import them; they live here so that the format readers (:mod:`homer.reading.formats`), which
:mod:`homer.reading.sources` calls, can use them without an import cycle."""

from __future__ import annotations

from dataclasses import dataclass, field


class DocumentError(ValueError):
    """A file that cannot be read as a document; the message says why, in one line."""


@dataclass
class SourceDocument:
    text: str
    kind: str  # "pdf" | "text" | "markdown" | "epub" | "docx" | "html"
    page_starts: list[int] = field(default_factory=lambda: [0])  # char offset of each page (or section)
    labels: list[str] | None = None  # a sectioned format's section labels, one per start (None: pages)

    @property
    def locations(self):
        """The :class:`homer.reading.locations.LocationMap` of the text."""
        from .locations import LocationMap

        return LocationMap.of(self.page_starts, self.labels)

    @property
    def pages(self) -> int:
        return len(self.page_starts)

    def page_of(self, offset: int) -> int:
        """1-based page number holding character ``offset``."""
        import bisect

        return max(1, bisect.bisect_right(self.page_starts, offset))
