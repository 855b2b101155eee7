"""Where a character offset of a document lies, said as fits its format: a page of a PDF
("p. 12") or a section of an EPUB, DOCX or HTML file ("Chapter 3 · The Storm").

A document's text is cut into *locations* at ``starts`` (the character offset where each
begins, the first at 0). A PDF's locations are its pages and carry no labels: they are
numbered. A sectioned format gives one label per location (its heading path, at most
:data:`MAX_LABEL_CHARS` characters). Passages, citations and the inspector name places through
one :class:`LocationMap`, so they agree on every format."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

MAX_LABEL_CHARS = 200
SECTION_SEPARATOR = " · "  # between the levels of a heading path: "Chapter 3 · The Storm"


def section_label(path: Sequence[str]) -> str:
    """A heading path as one label, shortened to :data:`MAX_LABEL_CHARS` (the deepest levels
    are kept: they say most about the place)."""
    parts = [" ".join(str(p).split()) for p in path if str(p).strip()]
    label = SECTION_SEPARATOR.join(parts)
    while len(label) > MAX_LABEL_CHARS and len(parts) > 1:
        parts = parts[1:]
        label = SECTION_SEPARATOR.join(parts)
    if len(label) > MAX_LABEL_CHARS:
        label = label[: MAX_LABEL_CHARS - 1].rstrip() + "…"
    return label


@dataclass(frozen=True)
class LocationMap:
    """The locations of one document: ``starts`` (non-decreasing, the first 0) and, for a
    sectioned format, ``labels`` (one per start; None: numbered pages)."""

    starts: tuple[int, ...] = (0,)
    labels: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "starts", tuple(int(s) for s in self.starts) or (0,))
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))
            if len(self.labels) != len(self.starts):
                raise ValueError(f"{len(self.labels)} location labels for {len(self.starts)} locations")

    @classmethod
    def of(cls, starts: Sequence[int] | None, labels: Sequence[str] | None = None) -> "LocationMap":
        return cls(tuple(starts or (0,)), tuple(labels) if labels is not None else None)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def sectioned(self) -> bool:
        return self.labels is not None

    @property
    def noun(self) -> str:
        """What a location is called: "page" or "section"."""
        return "section" if self.sectioned else "page"

    def number(self, offset: int) -> int:
        """The 1-based location holding character ``offset``."""
        return max(1, bisect.bisect_right(self.starts, offset))

    def label(self, number: int) -> str:
        """Location ``number`` (1-based) as a reader says it: "p. 12", or the section's label
        (its number, "§ 3", when the section has no heading)."""
        if self.labels is None:
            return f"p. {number}"
        if 1 <= number <= len(self.labels) and self.labels[number - 1]:
            return self.labels[number - 1]
        return f"§ {number}"

    def label_at(self, offset: int) -> str:
        return self.label(self.number(offset))

    def where(self, number: int) -> str:
        """The label when it tells something (several locations, or a titled section), else ""."""
        if len(self) > 1 or (self.labels is not None and self.labels[0]):
            return self.label(number)
        return ""

    def span(self, number: int, text_length: int) -> tuple[int, int]:
        """(start, end) character offsets of location ``number`` in a text of ``text_length``."""
        number = min(max(number, 1), len(self.starts))
        end = self.starts[number] if number < len(self.starts) else text_length
        return self.starts[number - 1], end
