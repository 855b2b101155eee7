"""The answer pipeline: one turn of a chat with a document, the same from every door.

Given one document (its text's places and passage index) and optionally its HOMER cache —
or several documents, read from their passages — :meth:`DocumentChat.stream` answers a
question the way the app does, streaming, and ends with a typed :class:`Answer`: the answer
text, its :class:`Source` list (document, place, quote, character span) and a
:class:`TurnReport` of what the turn did and cost (all three in :mod:`homer.answering.results`).
The Python quickstart, the command line, the web UI, its API and the MCP tools all call it;
the app's store only plugs in its persisted passage index, its caches and its conversations
(kvpress's ``pipeline(...)`` and kotaemon's ``FullQAPipeline`` are the shape: retrieval,
reading and citing in one object).

How a question is answered (:class:`AnswerSettings`, one strategy per name as in
:mod:`homer.answering.focus`): a question about the document as a whole goes to the HOMER cache (its
gist, Song et al., ICLR 2024); any other is answered from the passages it points to, read
again at full resolution (REFORM, arXiv 2506.01215) — in a fresh window (``passages``), or
after the cache (``cache+passages``). A question the passages hold too little of is answered
:data:`homer.answering.grounding.NOT_FOUND` without running the model. Sources: the passages read
(where the model read them), or for a cache answer the pages its attention rests on
(:mod:`homer.answering.citations`).

A document still being read has no cache yet: its specific questions are answered from the
passages all the same, and a whole-document question gets the ``waiting`` line its caller
gives (the app: "still reading (43 %) …"), or a partial cache passed for that turn.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..generation import Conversation, ConversationFullError, GenerationSettings
from . import grounding
from .focus import (
    DEFAULT_PASSAGE_ORDER,
    PASSAGE_ORDERS,
    FocusStrategy,
    PassageConversation,
    cache_room,
    fit_passages,
    route,
    strategy,
    whole_document,
)
from .results import Answer, Source, TurnReport, source_line
from .retrieval import DocumentText, FoundPassage, coverage, retrieve

AUTO = "auto"
# What "auto" uses for a specific question: on the book set (README) the passages alone
# answered at least as many factual questions as the cache with the passages and reached the
# first token in about half the time; the cache alone answered almost none.
AUTO_SPECIFIC = "passages"
FOCUS_NAMES = (AUTO, "cache", "passages", "cache+passages")
SOURCE_ORDERS = ("retrieval", "attention")
NO_CACHE = (
    "this question is about the whole document: it is answered from the document's HOMER cache, "
    "which is not built yet (read the document first)"
)
SEVERAL_WHOLE = (
    "a question about a whole document needs that one document (its cache holds the gist): "
    "pick one, or ask something specific across several"
)


class AnswerError(ValueError):
    """A question that cannot be asked as it is (one line, for the user)."""


@dataclass(frozen=True)
class AnswerSettings:
    """How questions are answered; every field has the app's measured default.

    ``focus``: ``auto`` (the cache for a whole-document question, :data:`AUTO_SPECIFIC`
    otherwise), ``cache``, ``passages`` or ``cache+passages``; ``passages``: passages per
    question; ``excerpt_words``: words of each passage the model reads (its best window; 0:
    whole passages); ``passage_order``: ``best-last`` (the best passage next to the question)
    or ``best-first``; ``source_order``: how a passages-only answer lists its sources,
    ``retrieval`` or ``attention``; ``not_found``: answer :data:`homer.answering.grounding.NOT_FOUND`
    when the passages hold too little of the question; ``citations``: list sources."""

    focus: str = AUTO
    passages: int = 3
    excerpt_words: int = 80
    passage_order: str = DEFAULT_PASSAGE_ORDER
    source_order: str = "retrieval"
    not_found: bool = True
    citations: bool = True

    def __post_init__(self):
        if self.focus not in FOCUS_NAMES:
            raise AnswerError(f"focus must be one of {', '.join(FOCUS_NAMES)}, not {self.focus!r}")
        if self.passage_order not in PASSAGE_ORDERS:
            raise AnswerError(f"passage order must be one of {', '.join(PASSAGE_ORDERS)}, not {self.passage_order!r}")
        if self.source_order not in SOURCE_ORDERS:
            raise AnswerError(f"source order must be one of {', '.join(SOURCE_ORDERS)}, not {self.source_order!r}")
        if self.passages < 1 or self.excerpt_words < 0:
            raise AnswerError("at least one passage per question, and no negative excerpt length")

    def strategy(self, question: str, focus: str | None = None) -> FocusStrategy:
        """The strategy for ``question`` (``focus`` overrides the setting for one turn)."""
        name = (focus or self.focus or AUTO).strip().lower()
        if name == AUTO:
            name = route(question, AUTO_SPECIFIC)
        try:
            return strategy(name)
        except ValueError:
            raise AnswerError(f"focus must be one of {', '.join(FOCUS_NAMES)}, not {name!r}") from None


@dataclass
class TurnPlan:
    """What a turn reads (:meth:`DocumentChat.plan`): its strategy, the passages found (best
    first) and what the model reads of each, how much of the question the best holds, whether
    it is answered :data:`homer.answering.grounding.NOT_FOUND` without the model, and what it cost."""

    strategy: FocusStrategy
    found: list[FoundPassage]
    texts: list[str]
    coverage: float
    not_found: bool
    seconds: float = 0.0

    @property
    def passages(self) -> list:
        return [f.passage for f in self.found]


class DocumentChat:
    """A conversation with one document (or, from their passages, several): each
    :meth:`stream` answers one question with the earlier turns in the window.

    ``documents``: a :class:`~homer.answering.retrieval.DocumentText` or several; ``cache``:
    the document's :class:`homer.HomerCache` (one document only; None while it is being read
    or when no cache is wanted). The turns are kept (``turns``, as the model saw them); the
    live KV state after the cache can be dropped with :meth:`release` to save memory — the
    turns are then re-appended with the next question."""

    def __init__(
        self,
        model,
        tokenizer,
        documents: DocumentText | Sequence[DocumentText],
        cache=None,
        settings: AnswerSettings | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.documents = [documents] if isinstance(documents, DocumentText) else list(documents)
        if not self.documents:
            raise AnswerError("no document to ask")
        if cache is not None and len(self.documents) > 1:
            raise AnswerError("a HOMER cache holds one document: ask several documents from their passages")
        self.cache = cache
        self.settings = settings or AnswerSettings()
        self.turns: list[tuple[str, str]] = []
        self.conversation: Conversation | None = None  # the live conversation after the cache

    @property
    def several(self) -> bool:
        return len(self.documents) > 1

    def release(self) -> None:
        """Drop the KV state after the cache (its turns are re-appended when needed)."""
        self.conversation = None

    def ask(self, question: str, **options) -> Answer:
        """The complete answer to ``question`` (:meth:`stream`'s last item)."""
        answer = None
        for answer in self.stream(question, **options):
            pass
        return answer

    # --- one turn ----------------------------------------------------------------------------
    def stream(
        self,
        question: str,
        *,
        focus: str | None = None,
        generation: GenerationSettings | None = None,
        cache=None,
        cache_note: str = "",
        waiting: str | None = None,
    ) -> Iterator[Answer]:
        """Stream :class:`Answer` items for ``question`` (text so far); the last is ``done``
        with its sources and report.

        ``focus`` overrides the strategy for this turn; ``cache``: answer this turn from
        that cache (a question-aware deep-read cache, or a partial cache of a document still
        being read, ``cache_note`` saying how much it holds) in a fresh window; ``waiting``:
        the line a whole-document question gets while no cache exists (default
        :data:`NO_CACHE`)."""
        started = time.perf_counter()
        question = (question or "").strip()
        if not question:
            raise AnswerError("type a question")
        generation = generation or GenerationSettings()
        chosen = self.settings.strategy(question, focus)
        report = TurnReport(
            chosen.name, turn=len(self.turns) + 1, documents=[{"id": d.id, "name": d.name} for d in self.documents]
        )
        if cache_note:
            report.notes.append(cache_note)
        turn_cache = cache if cache is not None else self.cache
        if self.several and chosen.uses_cache:
            if whole_document(question) or (focus or self.settings.focus) not in (None, AUTO):
                raise AnswerError(
                    SEVERAL_WHOLE
                    if whole_document(question)
                    else f"focus “{chosen.name}” reads one document's cache: pick one document, "
                    "or use auto or passages across several"
                )
        if chosen.uses_cache and turn_cache is None:
            if chosen.uses_passages:  # cache+passages before the cache exists: the passages alone
                chosen = strategy("passages")
                report.strategy = chosen.name
                report.notes.append("answered from its passages: the document's cache is not ready yet")
            else:
                report.strategy = "waiting"
                yield self._finish(Answer(waiting or NO_CACHE), report, started)
                return
        if cache is not None:
            chosen = strategy("cache")
            report.strategy = chosen.name

        # retrieval
        found: list[FoundPassage] = []
        texts: list[str] = []
        if chosen.uses_passages:
            plan = self.plan(question, chosen, turn_cache, generation.max_new_tokens)
            found, texts = plan.found, plan.texts
            report.retrieval_seconds = round(plan.seconds, 4)
            report.passages = [self._passage_dict(f) for f in found]
            report.coverage, report.not_found = round(plan.coverage, 3), plan.not_found
            if report.not_found:
                self.turns.append((question, grounding.NOT_FOUND))
                yield self._finish(Answer(grounding.NOT_FOUND), report, started)
                return

        # reading and answering
        if turn_cache is not None and chosen.uses_cache:
            report.cache_used, report.cache_tokens = True, len(turn_cache)
            report.document_tokens = int(turn_cache.metadata.get("context_len") or 0)
        fresh_cache = cache is not None
        if not chosen.uses_cache:
            conversation = PassageConversation(self.model, self.tokenizer, order=self.settings.passage_order)
            conversation.turns = list(self.turns)
            self.conversation = None  # re-appended with this turn when the cache answers again
            asked_text = question
            pieces = conversation.ask(question, texts, settings=generation)
        else:
            asked_text = chosen.turn_text(question, texts, self.settings.passage_order)
            if fresh_cache:
                conversation = Conversation(turn_cache, self.model, self.tokenizer)
            else:
                if self.conversation is None:
                    self.conversation = Conversation(turn_cache, self.model, self.tokenizer)
                    self.conversation.turns = list(self.turns)  # re-appended with this question
                conversation = self.conversation
            pieces = conversation.ask(asked_text, settings=generation)
        position_before = conversation.state.position if conversation.state is not None else 0
        text, first = "", None
        try:
            for piece in pieces:
                if first is None:
                    first = time.perf_counter() - started
                    report.time_to_first_token = round(first, 4)
                text += piece
                yield Answer(text, report=report)
        except BaseException as error:  # an error, a question too long, or the listener went away
            if conversation is self.conversation:
                self.conversation = None  # its KV state is unknown now; rebuilt from the turns next time
            if isinstance(error, ConversationFullError):
                raise AnswerError(str(error)) from None
            raise
        engine = conversation.stats
        generated = int(engine.get("new_tokens", 0))
        report.engine_time_to_first_token = round(float(engine.get("time_to_first_token", 0.0)), 4)
        report.tokens_per_second = round(float(engine.get("tokens_per_second", 0.0)), 2)
        report.new_tokens, report.forgotten_turns = generated, conversation.dropped_turns
        if chosen.uses_cache:
            report.appended_tokens = conversation.state.position - position_before - max(generated - 1, 0)
        else:
            report.appended_tokens = int(engine.get("prompt_tokens", 0))
        answer = Answer(text)
        if self.settings.citations:
            if found:
                self._passage_sources(answer, report, found, texts, question, conversation, chosen)
            elif chosen.uses_cache and text.strip():
                earlier = [] if fresh_cache else conversation.turns[:-1]
                self._cache_sources(answer, report, turn_cache, conversation.prompt, earlier, asked_text, text)
        self.turns.append((asked_text, text))
        if fresh_cache and self.conversation is not None:
            self.conversation.turns.append((question, text))  # appended before its next question
        yield self._finish(answer, report, started, first)

    def plan(self, question: str, chosen: FocusStrategy, cache=None, max_new_tokens: int = 256) -> "TurnPlan":
        """The passages a turn of strategy ``chosen`` reads for ``question``, best first: what
        the model reads of each (its best window; over several documents, named), cut to the
        room the window leaves after ``cache``; and whether they hold enough of the question
        to answer from (:mod:`homer.answering.grounding`)."""
        began = time.perf_counter()
        found = retrieve(self.documents, question, self.settings.passages)
        texts = [f.text(question, self.settings.excerpt_words, self.several) for f in found]
        if chosen.uses_cache and found and cache is not None:
            texts = fit_passages(self.tokenizer, texts, cache_room(cache, self.model, max_new_tokens), question)
            found = found[: len(texts)]
        held = coverage(question, found)
        return TurnPlan(
            chosen,
            found,
            texts,
            held,
            self.settings.not_found and held < grounding.MIN_COVERAGE,
            time.perf_counter() - began,
        )

    # --- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _finish(answer: Answer, report: TurnReport, started: float, first: float | None = None) -> Answer:
        elapsed = round(time.perf_counter() - started, 4)
        report.seconds = elapsed
        if first is None:
            report.time_to_first_token = elapsed
        answer.report, answer.done = report, True
        return answer

    def _passage_dict(self, found: FoundPassage) -> dict:
        p = found.passage
        out = {"seq": p.seq, "page": p.page, "start": p.start, "end": p.end, "score": round(p.score, 3)}
        if self.several:
            out.update(
                document_id=found.document.id,
                document=found.document.name,
                rank=found.rank,
                fused=round(found.fused, 6),
            )
        return out

    def _passage_sources(
        self,
        answer: Answer,
        report: TurnReport,
        found: list[FoundPassage],
        texts: list[str],
        question: str,
        conversation,
        chosen: FocusStrategy,
    ) -> None:
        """The passages read, as sources: in retrieval order, or by the answer's attention
        (``source_order="attention"``, a passages-only answer: :mod:`homer.answering.passage_citations`)."""
        began = time.perf_counter()
        report.cited = True
        order = list(range(len(found)))
        report.source_order = "retrieval"
        if (
            self.settings.source_order == "attention"
            and not chosen.uses_cache
            and answer.text.strip()
            and not self.several
        ):
            from .passage_citations import cite_passages, last_turn_prompt

            rebuilt = last_turn_prompt(conversation, question, texts)
            if rebuilt is not None:
                prompt_ids, read = rebuilt
                cited = cite_passages(
                    self.model, self.tokenizer, prompt_ids, answer.text, read, order=conversation.order
                )
                order = cited.order() + list(range(len(read), len(found)))
                report.source_order = "attention"
                report.source_scores = [
                    {
                        "seq": found[i].passage.seq,
                        "page": found[i].passage.page,
                        "score": None if i >= len(read) else round(cited.scores[i], 4),
                    }
                    for i in order
                ]
        lines = []
        for i in order:
            f = found[i]
            read = f.read(question, self.settings.excerpt_words)
            locations = f.document.locations
            source = Source(
                f.document.id,
                f.document.name,
                read.page,
                locations.label(read.page),
                read.start,
                read.end,
                read.quote(query=f.quote_words or question),
            )
            answer.sources.append(source)
            where = ", ".join(x for x in (f.document.name if self.several else "", locations.where(read.page)) if x)
            lines.append(source_line(where, source.quote))
        answer.sources_text = "\n" + "\n".join(lines)
        report.citation_seconds = round(time.perf_counter() - began + report.retrieval_seconds, 4)

    def _cache_sources(
        self, answer: Answer, report: TurnReport, cache, prompt, turns, question: str, text: str
    ) -> None:
        """The pages an answer from the cache was read from (its attention over the cache's
        kept tokens, :func:`homer.answering.citations.cite_answer`); none for a one-page document or a
        cache without source offsets."""
        document = self.documents[0]
        locations = document.locations
        if cache.char_offsets is None or len(locations) < 2:
            return
        from .citations import cite_answer

        cited = cite_answer(
            self.model, self.tokenizer, cache, list(locations.starts), question, text, turns=turns, prompt=prompt
        )
        report.cited = True
        report.citation_seconds = round(cited.seconds, 4)
        report.citations = cited.to_dict()["pages"]
        for c in cited.pages:
            start, end = locations.span(c.page, document.chars)
            answer.sources.append(Source(document.id, document.name, c.page, locations.label(c.page), start, end))
        label = cited.label(locations)
        answer.sources_text = f" {label}" if label else ""


__all__ = [
    "AUTO_SPECIFIC",
    "Answer",
    "AnswerError",
    "AnswerSettings",
    "DocumentChat",
    "NO_CACHE",
    "Source",
    "TurnPlan",
    "TurnReport",
    "source_line",
]
