"""The store's side of the answer pipeline (:mod:`homer.answering`): what every door of the
app plugs into it — the stored document's places and persisted passage index, the
settings the app runs with, how far a document still being read has got — and the turn's
typed result turned into the stats the UI's turn details show.

The pipeline itself (retrieve, read, answer, cite) is the library's; nothing here answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from homer.answering import Answer, AnswerSettings, DocumentText
from storage import passages as index

from . import focus as focusing


def answer_settings() -> AnswerSettings:
    """The app's :class:`homer.answering.AnswerSettings` (``HOMER_FOCUS``,
    ``HOMER_FOCUS_PASSAGES``, ``HOMER_FOCUS_WORDS``, ``HOMER_PASSAGE_ORDER``,
    ``HOMER_SOURCE_ORDER``, ``HOMER_NOT_FOUND``, ``HOMER_CITATIONS``; :mod:`app.focus`)."""
    return AnswerSettings(
        focus=focusing.requested_focus(),
        passages=focusing.passages_per_question(),
        excerpt_words=focusing.excerpt_words(),
        passage_order=focusing.passage_order(),
        source_order=focusing.source_order(),
        not_found=focusing.not_found_enabled(),
        citations=focusing.citations_enabled(),
    )


@dataclass
class StoredPassages:
    """A stored document's passage index as the pipeline searches it: the store's retriever
    (BM25 over the document's own statistics by default, ``HOMER_RETRIEVER`` for dense or
    fused), built on first use for a document that has none (a bundle's)."""

    store: object
    document_id: str

    def search(self, question: str, k: int = 3):
        return index.search(self.store.db, self.document_id, question, k, method=focusing.retriever())

    @property
    def passages(self):
        return index.passages(self.store.db, self.document_id)

    def frequencies(self):
        return focusing.frequencies(self.store, self.document_id)


def stored_document(store, row: dict) -> DocumentText:
    """A stored document (a row as the user sees it: their name for it) for the pipeline;
    its passage index is built now when it has none."""
    from . import reader

    focusing.index_document(store, row["id"])
    name = row.get("file_name") or row.get("title") or row["id"][:12]
    return DocumentText(
        row["id"],
        name,
        store.location_map(row["id"]),
        StoredPassages(store, row["id"]),
        reader.text_length(store, row["id"]),
    )


def plan_turn(
    store, document_id: str, question: str, focus, tokenizer=None, model=None, cache=None, max_new_tokens: int = 256
):
    """The passages a question gets from a stored document — the pipeline's own plan step
    (:meth:`homer.answering.DocumentChat.plan`), for the benchmarks that look at retrieval."""
    from homer.answering import DocumentChat
    from homer.reading.locations import LocationMap

    row = store.get_document(document_id)
    document = (
        stored_document(store, row)
        if row is not None
        else DocumentText(document_id, document_id[:12], LocationMap.of(None), StoredPassages(store, document_id))
    )  # an index alone
    return DocumentChat(model, tokenizer, document, settings=answer_settings()).plan(
        question, focus, cache, max_new_tokens
    )


def reading_state(store, document_id: str) -> str | None:
    """How far the reading of a document without a ready cache has got, as one line:
    ``still reading (43 %)``, ``queued for reading``, ``reading failed: reason``; None when
    no build of it is known."""
    jobs = list(store.db["jobs"].rows_where("document_id = ?", [document_id], order_by="created desc", limit=5))
    active = [j for j in jobs if j["state"] in ("queued", "running")]
    if active:
        job = active[0]
        if job["state"] == "queued":
            return "queued for reading"
        return f"still reading ({float(job.get('progress') or 0.0) * 100:.0f} %)"
    if jobs and jobs[0]["state"] == "failed":
        return f"reading failed: {jobs[0].get('error') or 'unknown reason'}"
    return None


def upload_states(store, owner: str | None, limit: int = 20) -> dict[str, str]:
    """The states of this user's newest uploads whose text is not stored (``{document id:
    "queued" | "running" | "failed" …}``): a change — a failed reading above all, which adds
    nothing to the library — tells the page to update the chat's status."""
    if not store.db["jobs"].exists():
        return {}
    mine = (
        "" if owner is None else " AND document_id IN (SELECT document_id FROM document_owners WHERE owner = :owner)"
    )  # as pending_state
    rows = store.db.execute(
        "SELECT document_id, state FROM jobs WHERE document_id NOT IN (SELECT id FROM documents)"
        + mine
        + " ORDER BY created DESC LIMIT :limit",
        {"owner": owner, "limit": limit},
    ).fetchall()
    return {document_id: state for document_id, state in reversed(rows)}


def pending_state(store, ref: str, owner: str | None) -> str | None:
    """For a reference that names no stored document of this user: how far the reading of an
    upload of theirs with that id (or prefix) or file name has got ("queued for reading",
    "still reading (0 %)" …), or None (then it is not theirs, or not there)."""
    ref = str(ref or "").strip()
    if not ref:
        return None
    jobs = store.db["jobs"]
    rows = (
        list(
            store.db.query(
                "SELECT document_id FROM jobs "
                "WHERE (document_id = ? OR substr(document_id, 1, ?) = ? OR file_name = ?) "
                "AND document_id NOT IN (SELECT id FROM documents) ORDER BY created DESC LIMIT 20",
                [ref, len(ref), ref, ref],
            )
        )
        if jobs.exists()
        else []
    )
    for row in rows:
        if (
            owner is None
            or store.db.execute(
                "SELECT 1 FROM document_owners WHERE document_id = ? AND owner = ?", [row["document_id"], owner]
            ).fetchone()
        ):
            return reading_state(store, row["document_id"])
    return None


def turn_stats(answer: Answer, **extra) -> dict:
    """The turn's report as the UI's stats dict, with the answer's sources (the label shown
    under it and the places the reader opens) and the app's own facts (``extra``)."""
    stats = {**answer.report.to_dict(), **extra} if answer.report is not None else dict(extra)
    if answer.report is not None and answer.report.cited:
        stats["sources"] = answer.sources_text.strip()
        places = []
        for s in answer.sources:
            place = {
                "document_id": s.document_id,
                "location": s.location,
                "label": s.label,
                "start": s.start,
                "end": s.end,
                "quote": s.quote,
            }
            if answer.report is not None and len(answer.report.documents) > 1:
                place["document"] = s.document
            places.append(place)
        stats["source_places"] = places
    return stats
