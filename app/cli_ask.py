"""``homer ask`` and ``homer chat``: the app's answers on a terminal.

* ``homer ask book.pdf "question" ["another" …]`` reads the file into the store (or finds it
  there by its content hash), answers each question on its own (a fresh conversation each,
  as a new chat in the app) through the same pipeline as the web app (:mod:`homer.answering`,
  via :class:`app.chat.ChatService`) and prints its sources
  under it. A specific question is answered from the passages at once; a question about the
  whole document reads the document into its HOMER cache first (once per document and
  model, kept in the store for the next time);
* ``homer ask DOC "question"`` asks a document already in the store (id, id prefix, file
  name or title);
* ``homer chat DOC`` (a file or a stored document) is a streaming conversation: one
  question per line, the earlier turns in the window, an empty line or end of input ends it;
* ``homer ask CACHE.safetensors "question"`` keeps the engine's cache-only answer, and says
  so in one line.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

CACHE_ONLY = (
    "note: answering from the cache alone (no passages, no sources); for the app's answers ask the "
    'document itself: homer ask book.pdf "…"'
)


def add_arguments(p) -> None:
    """The arguments ``ask`` and ``chat`` share (the engine's ``ask`` options stay)."""
    p.add_argument("--store", default=None, help="store folder (default: HOMER_HOME/store)")
    p.add_argument(
        "--focus",
        default=None,
        choices=["auto", "cache", "passages", "cache+passages"],
        help="how questions are answered (default: auto, or HOMER_FOCUS)",
    )


def _store(args):
    from app.tasks import open_store

    return open_store(args.store)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def open_target(store, target: str, model_name: str | None) -> dict:
    """The stored document ``target`` names: a file (read into the store now, or found there
    by its content hash), else a stored document's id, id prefix, file name or title (looked
    up before the model loads: a wrong name is refused at once)."""
    import hashlib

    from app.focus import index_document
    from app.ingest import add_to_store, ingest_bytes, max_upload_bytes

    path = Path(target)
    if path.is_file():
        size = path.stat().st_size
        limit = max_upload_bytes()
        if size > limit:
            raise ValueError(
                f"{path.name}: the file is {size / 2**20:.1f} MB, over the limit of {limit / 2**20:.1f} MB"
            )
        data = path.read_bytes()
        found = store.get_document(hashlib.sha256(data).hexdigest())
        if found is None:
            from app.tasks import get_model

            _, tokenizer, _ = get_model(model_name)
            began = time.perf_counter()
            found = add_to_store(store, ingest_bytes(data, path.name, tokenizer))
            index_document(store, found["id"])
            print(
                f"read {path.name}: {found['pages']} {'pages' if found['pages'] != 1 else 'page'}, "
                f"{found['token_count'] or 0:,} tokens in {time.perf_counter() - began:.1f} s "
                f"(stored as {found['id'][:12]})",
                file=sys.stderr,
            )
        return found
    return store.document(target)


def _read_whole(store, document_id: str, model_name: str | None) -> None:
    """Build the document's HOMER cache now (the worker's build, in this process), showing
    its progress; a finished or running build of the same request is reused."""
    from app import tasks

    job = tasks.submit_document(store, lambda _job_id: None, document_id, model_name)
    if job["state"] == "done":
        return
    print("reading the whole document into its HOMER cache (once per document and model) …", file=sys.stderr)
    stop = threading.Event()

    def show() -> None:
        from tqdm import tqdm

        with tqdm(total=100, desc="reading", unit="%", file=sys.stderr, leave=False) as bar:
            while not stop.wait(1.0):
                row = store.jobs.get(job["id"]) or {}
                bar.n = int(float(row.get("progress") or 0.0) * 100)
                bar.refresh()

    watcher = threading.Thread(target=show, daemon=True)
    watcher.start()
    try:
        state = tasks.run_build(store, job["id"])
        if state == "skipped":  # another process is reading it: wait for that build
            state = tasks.wait_for(store, job["id"], timeout=24 * 3600)["state"]
    finally:
        stop.set()
        watcher.join(timeout=2)
    row = store.jobs.get(job["id"]) or {}
    if row.get("state") == "failed":
        raise ValueError(f"reading failed: {row.get('error') or 'unknown reason'}")


def answer(service, document: dict, question: str, args, session: str = "cli") -> None:
    """Stream one answer to stdout, its sources under it, and one line of what it cost."""
    from app import answering
    from homer.generation import GenerationSettings

    model_name = getattr(args, "model", None)
    strategy = answering.answer_settings().strategy(question, args.focus)
    if strategy.uses_cache and service.ready_cache(document["id"], model_name) is None:
        _read_whole(service.store, document["id"], model_name)
    generation = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    printed, stats = "", {}
    for shown, stats in service.ask(
        session, document["id"], question, model_name, generation, focus=args.focus, name=document.get("file_name")
    ):
        sys.stdout.write(shown[len(printed) :])
        sys.stdout.flush()
        printed = shown
    print()
    line = (
        f"[{stats.get('focus', '')} · first token {stats.get('time_to_first_token', 0):.2f} s · "
        f"{stats.get('tokens_per_second', 0):.1f} tok/s"
    )
    for note in stats.get("notes") or []:
        line += f" · {note}"
    print(line + "]", file=sys.stderr)


def cmd_ask(args) -> int:
    """``homer ask`` over a document (the app's answers), or over a cache file (cache only)."""
    from app.chat import ChatError, ChatService
    from app.ingest import IngestError
    from storage import StoreError

    target = args.cache  # the engine's name for the first argument
    if target.endswith(".safetensors") and Path(target).is_file():
        from homer.cli import cmd_ask as cache_only

        print(CACHE_ONLY, file=sys.stderr)
        return cache_only(args)
    try:
        store = _store(args)
        document = open_target(store, target, args.model)
        service = ChatService(store)
        for number, question in enumerate(args.question):  # each on its own: `homer chat` is the conversation
            print(f"> {question}")
            answer(service, document, question, args, session=f"ask:{number}")
            service.clear(f"ask:{number}", document["id"])
    except (ChatError, IngestError, StoreError, ValueError) as exc:
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return 0


def cmd_chat(args) -> int:
    """A terminal conversation with a document: one question per line."""
    from app.chat import ChatError, ChatService
    from app.ingest import IngestError
    from storage import StoreError

    try:
        store = _store(args)
        document = open_target(store, args.document, args.model)
    except (IngestError, StoreError, ValueError) as exc:
        return _fail(str(exc).splitlines()[0])
    service = ChatService(store)
    print(f"chatting with {document['file_name']} — one question per line, an empty line ends", file=sys.stderr)
    while True:
        try:
            question = input("> " if sys.stdin.isatty() else "").strip()
        except EOFError:
            break
        if not question or question in ("exit", "quit"):
            break
        if not sys.stdin.isatty():
            print(f"> {question}")
        try:
            answer(service, document, question, args, session="chat")
        except ChatError as exc:
            print(f"error: {exc}", file=sys.stderr)
    return 0
