"""Sections of a Markdown file: each ATX heading (``#`` to ``######`` at a line start, not
inside a fenced code block) starts a location labelled with its heading path. The text itself
is kept as written — the sections are offsets into it — so Markdown reads as before, and its
sources say "Install · Requirements" instead of nothing."""

from __future__ import annotations

import re

from ..locations import section_label

_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def markdown_sections(text: str) -> tuple[list[int], list[str]] | None:
    """``(starts, labels)`` of the headings' sections (the text before the first heading is a
    section without a label), or None when the text has no heading."""
    starts, labels, path = [0], [""], []
    fence, offset = None, 0
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        opening = _FENCE.match(bare)
        if fence is not None:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = None
        elif opening:
            fence = opening.group(1)
        else:
            match = _HEADING.match(bare)
            if match:
                level, title = len(match.group(1)), " ".join(match.group(2).split())
                while path and path[-1][0] >= level:
                    path.pop()
                path.append((level, title))
                label = section_label([t for _, t in path])
                if text[starts[-1] : offset].strip():
                    starts.append(offset)
                    labels.append(label)
                else:  # nothing but blank lines since the last start: that section becomes this one
                    labels[-1] = label
        offset += len(line)
    return (starts, labels) if len(path) or any(labels) else None
