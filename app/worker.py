"""The build queue (huey): a SQLite queue file in the store by default, Redis when
``HOMER_REDIS_URL`` is set (several worker machines sharing the work).

* in the app: ``handle = start_consumer_in_process(store)`` (thread workers; call it from
  the main thread, before the UI starts) and ``handle.stop()``;
* as its own process: ``homer worker`` or ``python -m app.worker [--store DIR] [-w N]``.

Both run a janitor thread next to the consumer that re-queues the jobs of dead workers."""

from __future__ import annotations

import argparse
import logging
import os
import threading
from dataclasses import dataclass

from huey import RedisHuey, SqliteHuey
from huey.exceptions import RetryTask

from storage import Store

from . import tasks

log = logging.getLogger(__name__)

_queues: dict[str, "BuildQueue"] = {}
_queues_lock = threading.Lock()


class BuildQueue:
    """One store's huey instance with the ``build_document`` task bound to that store."""

    def __init__(self, store: Store, redis_url: str | None = None):
        self.store = store
        redis_url = redis_url if redis_url is not None else os.environ.get("HOMER_REDIS_URL")
        if redis_url:
            name = os.environ.get("HOMER_QUEUE_NAME", "homer")
            self.huey = RedisHuey(name=name, url=redis_url, results=False)
        else:
            self.huey = SqliteHuey(name="homer", filename=str(store.root / "queue.db"), results=False)
        self.kind = "redis" if redis_url else "sqlite"

        @self.huey.task(name="build_document")
        def build_document(job_id: str) -> str:
            try:
                return tasks.run_build(store, job_id)
            except tasks.Retry as retry:
                raise RetryTask(str(retry), delay=retry.delay) from None

        self.build_task = build_document

    def enqueue(self, job_id: str) -> str:
        """Hand a job to the queue; the task id is kept on the job (for recovery)."""
        task = self.build_task.s(job_id)
        self.store.jobs.set_task_id(job_id, task.id)
        self.huey.enqueue(task)
        return task.id

    def pending_task_ids(self) -> set[str]:
        return {task.id for task in self.huey.pending()} | {task.id for task in self.huey.scheduled()}

    def submit_file(self, data: bytes, file_name: str, model: str | None = None, settings: dict | None = None) -> dict:
        return tasks.submit_file(self.store, self.enqueue, data, file_name, model, settings)

    def submit_document(self, document_id: str, model: str | None = None, settings: dict | None = None) -> dict:
        return tasks.submit_document(self.store, self.enqueue, document_id, model, settings)

    def open_document_cache(self, document_id: str, model: str | None = None, settings: dict | None = None):
        """The ready cache, or ``(None, job)`` with a (re)build queued."""
        return tasks.open_document_cache(self.store, self.enqueue, document_id, model, settings)

    def recover(self) -> list[str]:
        return tasks.recover(self.store, self.enqueue, self.pending_task_ids())


def queue_for(store: Store | None = None, redis_url: str | None = None) -> BuildQueue:
    """The build queue of a store (one per store root and process)."""
    store = store or Store()
    key = f"{store.root.resolve()}|{redis_url if redis_url is not None else os.environ.get('HOMER_REDIS_URL', '')}"
    with _queues_lock:
        if key not in _queues:
            _queues[key] = BuildQueue(store, redis_url)
        return _queues[key]


class Janitor:
    """Runs :meth:`BuildQueue.recover` now and every few seconds in a daemon thread."""

    def __init__(self, queue: BuildQueue, interval: float | None = None):
        self.queue = queue
        self.interval = interval or max(1.0, tasks.lease_seconds() / 2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="homer-janitor", daemon=True)

    def start(self) -> "Janitor":
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                for line in self.queue.recover():
                    log.info("janitor: %s", line)
            except Exception:  # never let a hiccup (a locked database) end the janitor
                log.exception("janitor: recovery failed, trying again")
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class ConsumerHandle:
    queue: BuildQueue
    consumer: object
    janitor: Janitor

    def stop(self, graceful: bool = True) -> None:
        self.janitor.stop()
        self.consumer.stop(graceful=graceful)


def _consumer(queue: BuildQueue, workers: int):
    return queue.huey.create_consumer(workers=workers, worker_type="thread", periodic=False,
                                      initial_delay=0.1, max_delay=1.0, backoff=1.15, scheduler_interval=1,
                                      check_worker_health=True)


def start_consumer_in_process(store: Store | None = None, workers: int = 1) -> ConsumerHandle:
    """Start thread workers and the janitor inside this process (the app). Must be called
    from the main thread: huey installs signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("start_consumer_in_process() must be called from the main thread")
    queue = queue_for(store)
    consumer = _consumer(queue, workers)
    consumer.start()
    return ConsumerHandle(queue, consumer, Janitor(queue).start())


def run_worker(store: Store | None = None, workers: int = 1) -> int:
    """Run a worker in the foreground until SIGINT / SIGTERM (``homer worker``)."""
    queue = queue_for(store)
    log.warning("homer worker: %d thread(s) on the %s queue of %s", workers, queue.kind, queue.store.root)
    janitor = Janitor(queue).start()
    try:
        _consumer(queue, workers).run()
    finally:
        janitor.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="homer worker", description="run HOMER build workers")
    parser.add_argument("--store", default=None, help="store folder (default: the HOMER home store)")
    parser.add_argument("-w", "--workers", type=int, default=1)
    parser.add_argument("--deep-read", action="store_true",
                        help="also keep the leaf states of each build, for deep reads (or HOMER_DEEP_READ=1)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.deep_read:
        os.environ["HOMER_DEEP_READ"] = "1"
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    return run_worker(Store(args.store) if args.store else None, args.workers)


if __name__ == "__main__":
    raise SystemExit(main())
