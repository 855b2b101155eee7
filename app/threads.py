"""Conversation threads kept on the server: several named threads per (user, document).

A thread is a stored conversation (:meth:`storage.Store.threads`) with an owner (the
signed-in user, None without login), a name (its first question, at most 80 characters,
until renamed), the messages as shown and the turns as the model saw them over the cache
they were answered from. Each browser session has one *current* thread per document — the
one :meth:`ChatService.ask` answers in.

* :meth:`Threads.open` — reopen a thread, in this process or after a restart (a new
  :class:`~app.chat.ChatService` over the same store): its messages are shown at once, and the
  next question is answered from the stored cache with the earlier turns re-appended after it
  (the cache reattached; the document is not read again). When that cache was rebuilt or
  deleted, the thread says so and goes on from the document's current cache, its earlier
  messages shown as text only.
* :meth:`Threads.new`, :meth:`Threads.rename`, :meth:`Threads.delete`, :meth:`Threads.list`.
* :meth:`Threads.ask` — ask in a chosen thread, or in the session's current one (created on
  the first question when there is none).

Another user's thread id gets the same "no thread …" answer as a missing one.
"""

from __future__ import annotations

from collections.abc import Iterator

from storage.errors import StoreError

from .chat import ChatError, ChatService, ChatSession

NEW_THREAD = "New thread"

CACHE_GONE = (
    "this thread's cache was rebuilt or deleted: the next answer starts from the document's current "
    "cache; the earlier messages are shown as text only"
)


class Threads:
    """The threads of one :class:`ChatService` (and its store)."""

    def __init__(self, chat: ChatService):
        self.chat = chat
        self.store = chat.store

    def list(self, owner: str | None, document_id: str | None) -> list[dict]:
        """``owner``'s threads about a document, the most recently used first."""
        if not document_id:
            return []
        return self.store.threads(document_id, owner)

    def current(self, session_key: str, document_id: str | None) -> str | None:
        """The id of the thread this session answers in about the document (None before its
        first question)."""
        if not document_id:
            return None
        session = self.chat.session(session_key, document_id)
        return session.conversation_id if session is not None else None

    def new(self, session_key: str, owner: str | None, document_id: str, name: str | None = None) -> str:
        """A new, empty thread, now this session's current one; returns its id."""
        if not document_id:
            raise ChatError("pick a ready document first")
        thread_id = self.store.add_conversation(document_id, None, owner=owner, name=name or None)
        self.chat.attach(
            session_key, document_id, ChatSession(document_id, "", conversation_id=thread_id, owner=owner, thread=True)
        )
        return thread_id

    def open(self, session_key: str, owner: str | None, document_id: str, thread_id: str) -> dict:
        """Make a stored thread this session's current one: ``{"id", "name", "messages",
        "notice"}`` — the notice says when its cache is gone (rebuilt or deleted)."""
        row = self._thread(thread_id, owner, document_id)
        session = self.chat.session(session_key, document_id)
        if session is not None and session.conversation_id == row["id"]:
            return {
                "id": row["id"],
                "name": row["name"],
                "messages": [dict(m) for m in session.messages],
                "notice": session.notice,
            }
        cache = self.store.get_cache(row["cache_id"]) if row.get("cache_id") else None
        notice = ""
        if row["turns"] and (cache is None or cache.get("status") != "ready"):
            notice = CACHE_GONE
        chat = ChatSession(
            document_id,
            row.get("cache_id") or "",
            conversation_id=row["id"],
            turns=list(row["turns"]) if not notice else [],
            messages=[dict(m) for m in row["messages"]],
            owner=owner,
            thread=True,
            notice=notice,
        )
        self.chat.attach(session_key, document_id, chat)
        return {"id": row["id"], "name": row["name"], "messages": [dict(m) for m in chat.messages], "notice": notice}

    def rename(self, owner: str | None, thread_id: str, name: str) -> str:
        try:
            return self.store.rename_thread(thread_id, owner, name)
        except StoreError as exc:
            raise ChatError(str(exc)) from None

    def delete(self, owner: str | None, thread_id: str) -> None:
        """Delete one thread (its messages); sessions answering in it start a new one."""
        try:
            self.store.delete_thread(thread_id, owner)
        except StoreError as exc:
            raise ChatError(str(exc)) from None
        self.chat.forget_conversation(thread_id)

    def ask(
        self,
        session_key: str,
        owner: str | None,
        document_id: str,
        question: str,
        thread_id: str | None = None,
        **options,
    ) -> Iterator[tuple[str, dict]]:
        """:meth:`ChatService.ask` in ``thread_id`` (reopened when it is not the session's
        current thread), else in the session's current thread (a new one on the first
        question). ``options`` are ``ask``'s (model_name, generation, settings, deep_read, focus)."""
        if not document_id:
            raise ChatError("pick a ready document first")
        if thread_id:
            if self.current(session_key, document_id) != thread_id:
                self.open(session_key, owner, document_id, thread_id)
            else:
                self._thread(thread_id, owner, document_id)  # still there, still theirs
        else:
            session = self.chat.session(session_key, document_id)
            if session is None or not session.thread or session.owner != owner:  # a thread of its own,
                self.chat.attach(
                    session_key,
                    document_id,  # stored with the first question
                    ChatSession(document_id, "", owner=owner, thread=True),
                )
        return self.chat.ask(session_key, document_id, question, **options)

    def _thread(self, thread_id: str, owner: str | None, document_id: str | None) -> dict:
        try:
            return self.store.thread(thread_id, owner, document_id)
        except StoreError as exc:
            raise ChatError(str(exc)) from None
