"""The store's conversations: each one a thread about one document, owned by a user (or by
no one without login), with its shown messages and the turns the model saw.

Part of :class:`storage.store.Store` (a mixin: it uses the store's ``db`` and :meth:`document`)."""

from __future__ import annotations

import json
import uuid

from . import db as dbmod
from .errors import StoreError


class ThreadsMixin:
    """Conversations (threads): create, read, name, delete, record a turn."""

    def add_conversation(
        self, document_id: str, cache_id: str | None = None, owner: str | None = None, name: str | None = None
    ) -> str:
        """A new conversation (a thread) about a document, owned by ``owner`` (None without
        login); ``name`` defaults to its first question when that is asked."""
        conversation_id = uuid.uuid4().hex
        stamp = dbmod.now()
        self.db["conversations"].insert(
            {
                "id": conversation_id,
                "document_id": self.document(document_id)["id"],
                "cache_id": cache_id,
                "messages": "[]",
                "created": stamp,
                "updated": stamp,
                "owner": owner,
                "name": thread_name(name) if name else None,
                "turns": "[]",
            }
        )
        return conversation_id

    def conversation(self, conversation_id: str) -> dict:
        rows = list(self.db["conversations"].rows_where("id = ?", [conversation_id]))
        if not rows:
            raise StoreError(f"no conversation {conversation_id}")
        row = rows[0]
        row["messages"] = json.loads(row["messages"])
        return row

    def conversations(self, document_id: str) -> list[dict]:
        return list(self.db["conversations"].rows_where("document_id = ?", [document_id], order_by="updated DESC"))

    # --- threads: a user's named conversations about a document --------------------------
    def threads(self, document_id: str, owner: str | None) -> list[dict]:
        """``owner``'s threads about a document, the most recently used first: id, name (the
        first question when never named), cache_id, messages (their number), created, updated.
        Without login (``owner`` None) the threads that have no owner."""
        rows = self.db.execute(
            "SELECT id, name, cache_id, messages, created, updated FROM conversations "
            "WHERE document_id = ? AND owner IS ? ORDER BY updated DESC, created DESC",
            [document_id, owner],
        ).fetchall()
        out = []
        for thread_id, name, cache_id, messages, created, updated in rows:
            messages = json.loads(messages or "[]")
            out.append(
                {
                    "id": thread_id,
                    "name": name or _default_name(messages),
                    "cache_id": cache_id,
                    "messages": len(messages),
                    "created": created,
                    "updated": updated,
                }
            )
        return out

    def thread(self, thread_id: str, owner: str | None, document_id: str | None = None) -> dict:
        """One thread with its messages and turns (lists), only for its owner (and, when
        given, about ``document_id``): another user's thread is answered as a missing one."""
        rows = list(self.db["conversations"].rows_where("id = ? AND owner IS ?", [str(thread_id or ""), owner]))
        if not rows or (document_id is not None and rows[0]["document_id"] != document_id):
            raise StoreError(f"no thread {str(thread_id or '')[:40]}")
        row = rows[0]
        row["messages"] = json.loads(row["messages"] or "[]")
        row["turns"] = [tuple(t) for t in json.loads(row["turns"] or "[]")]
        row["name"] = row["name"] or _default_name(row["messages"])
        return row

    def rename_thread(self, thread_id: str, owner: str | None, name: str) -> str:
        """Give a thread a name (whitespace collapsed, at most 80 characters); returns it."""
        name = thread_name(name)
        if not name:
            raise StoreError("type a name for the thread")
        with self.db.atomic():
            self.thread(thread_id, owner)
            self.db["conversations"].update(thread_id, {"name": name})
        return name

    def delete_thread(self, thread_id: str, owner: str | None) -> None:
        with self.db.atomic():
            self.thread(thread_id, owner)
            self.db.execute("DELETE FROM conversations WHERE id = ?", [thread_id])

    def save_turn(
        self, conversation_id: str, cache_id: str | None, messages: list[dict], turns: list[tuple[str, str]]
    ) -> None:
        """Append a turn's shown ``messages`` and record the thread's ``turns`` (as the model
        saw them over ``cache_id``, all of them) in one write; an unnamed thread is named
        after its first question."""
        with self.db.atomic():
            row = self.conversation(conversation_id)
            stored = row["messages"] + [{"role": m["role"], "content": m["content"]} for m in messages]
            update = {
                "messages": json.dumps(stored),
                "turns": json.dumps([list(t) for t in turns]),
                "cache_id": cache_id,
                "updated": dbmod.now(),
            }
            if not row.get("name"):
                update["name"] = _default_name(stored) or None
            self.db["conversations"].update(conversation_id, update)


THREAD_NAME_CHARS = 80


def thread_name(text: str | None) -> str:
    """A thread's title: whitespace collapsed, at most 80 characters (cut with "…")."""
    text = " ".join(str(text or "").split())
    return text if len(text) <= THREAD_NAME_CHARS else text[: THREAD_NAME_CHARS - 1].rstrip() + "…"


def _default_name(messages: list[dict]) -> str:
    """An unnamed thread's title: its first question, else empty."""
    first = next((m.get("content") for m in messages if m.get("role") == "user"), "")
    return thread_name(first if isinstance(first, str) else "")
