"""Askable while reading: an upload's text and passage index are stored the moment it lands.

A build waits for a build lane and takes minutes to hours; the passages that answer most
questions are indexed in well under a second. So the process that received an upload reads
it in (the app's own ingestion: its limits, its OCR) and indexes its passages in a thread of
its own, at once, while the HOMER build is queued as before. The build then finds the
document stored and starts from the merge tree; a build that starts while the read-ahead is
still running in this process waits for it rather than reading the file a second time (a
worker on another machine reads it itself: the store keeps one copy either way).

A read-ahead that fails (a refused or damaged file) logs and stops: the build reads the file
again and fails the job with the reason, where the library shows it.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

_running: dict[str, threading.Thread] = {}
_lock = threading.Lock()


def start(store, job: dict, read) -> threading.Thread | None:
    """Read ``job``'s upload into the store now, in a thread, with ``read(store, job)`` (the
    build's own ingestion, :func:`app.tasks.read_in`); None when there is nothing to do (not
    an upload, already stored, already being read ahead, or the job has ended)."""
    document_id = job.get("document_id")
    if not job.get("upload") or not document_id or job.get("state") not in ("queued", "running"):
        return None
    if store.get_document(document_id) is not None:
        return None
    with _lock:
        if document_id in _running:
            return None
        thread = threading.Thread(
            target=_read, args=(store, dict(job), read), name=f"read-ahead-{document_id[:8]}", daemon=True
        )
        _running[document_id] = thread
    thread.start()
    return thread


def wait(document_id: str, timeout: float | None = None) -> None:
    """Wait for this process's read-ahead of ``document_id`` (if any) to end."""
    with _lock:
        thread = _running.get(document_id)
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)


def _read(store, job: dict, read) -> None:
    try:
        read(store, job)
        log.info("read ahead: %s stored and indexed; askable while its build waits", job.get("file_name"))
    except Exception as exc:  # noqa: BLE001 — the build reads it again and fails the job with the reason
        log.warning(
            "read ahead of %s stopped (%s); the build reads it",
            job.get("file_name"),
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
    finally:
        with _lock:
            _running.pop(job["document_id"], None)
