"""The typed results of one answered turn, and how they are shown.

:class:`Answer` (the text, complete when ``done``), its :class:`Source` list (document, place,
quote, character span) and the :class:`TurnReport` of what the turn did and cost;
:func:`source_line` writes one source as the line under an answer. The answer pipeline
(:mod:`homer.answering.pipeline`) fills them; every door (Python, CLI, UI, API, MCP) reads them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


def source_line(where: str, quote: str) -> str:
    """One line of the sources under an answer: ``- p. 12: “quote”`` (``where`` may name the
    document too, or be empty for a one-page document)."""
    return f"- {where + ': ' if where else ''}“{quote}”"


@dataclass(frozen=True)
class Source:
    """Where an answer was read: the document (id and shown name), the place (1-based page or
    section number and its label), the character span read there and a short quote (empty
    for a page cited from the cache)."""

    document_id: str
    document: str
    location: int
    label: str
    start: int
    end: int
    quote: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TurnReport:
    """What one turn did and cost. ``strategy``: what answered (cache, passages,
    cache+passages, or ``waiting`` when nothing could yet); times in seconds from the
    question; tokens as the model counted them."""

    strategy: str
    turn: int = 1
    documents: list[dict] = field(default_factory=list)  # id and name of each document asked
    passages: list[dict] = field(default_factory=list)  # seq, page, span, score (rank, fused over several)
    retrieval_seconds: float = 0.0
    coverage: float | None = None
    not_found: bool = False
    cache_used: bool = False
    cache_tokens: int = 0
    document_tokens: int = 0
    time_to_first_token: float = 0.0
    engine_time_to_first_token: float = 0.0
    tokens_per_second: float = 0.0
    new_tokens: int = 0
    appended_tokens: int = 0
    forgotten_turns: int = 0
    seconds: float = 0.0
    cited: bool = False  # sources were looked for (citations on, something to cite)
    citation_seconds: float = 0.0
    citations: list[dict] = field(default_factory=list)  # pages cited from the cache, with scores
    source_order: str = ""
    source_scores: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one line each: what the user should know

    def to_dict(self) -> dict:
        """The report as a plain dict (the app's turn details and API); ``focus`` is the
        strategy's name, as the app's settings call it."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["focus"] = out.pop("strategy")
        return out


@dataclass
class Answer:
    """An answer (complete when ``done``): its text, its sources and the turn's report.
    ``str(answer)`` is the text with the sources under it, as the app shows it."""

    text: str
    sources: list[Source] = field(default_factory=list)
    report: TurnReport | None = None
    done: bool = False
    sources_text: str = ""  # the sources as shown under the answer ("" without sources)

    def shown(self) -> str:
        return f"{self.text}\n\nSources:{self.sources_text}" if self.sources_text else self.text

    def __str__(self) -> str:
        return self.shown()


__all__ = ["Answer", "Source", "TurnReport", "source_line"]
