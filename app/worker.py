"""The build queue (huey): a SQLite queue file in the store by default, Redis when
``HOMER_REDIS_URL`` is set (several worker machines sharing the work).

* in the app: ``handle = start_consumer_in_process(store)`` (thread workers; call it from
  the main thread, before the UI starts) and ``handle.stop()``;
* as its own process: ``homer worker`` or ``python -m app.worker [--store DIR] [-w N]``.

Both run a janitor thread next to the consumer that re-queues the jobs of dead workers.

**Build lanes** (so one huge document cannot starve everyone else's): two huey queues in the
same queue file (or Redis), *small* and *large*, split by the document's size in characters
(:func:`app.tasks.job_lane`: over ``HOMER_LARGE_BUILD_CHARS``, 250 000, is large; an upload
not read yet is sized from its bytes or its PDF pages). Each lane has its own consumer and
threads (``workers`` for the small lane, ``HOMER_LARGE_WORKERS`` / ``large_workers``, 1, for
the large one), so a small document is never queued behind a large one: while a large
build runs, small ones keep going; at worst two builds share the accelerator. A worker
process serves both lanes, or one (``homer worker --lane small|large``: e.g. a machine of
its own for large builds). Builds inside requests (:func:`app.tasks.run_queued`) take the
small documents first."""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import dataclass

from huey import RedisHuey, SqliteHuey
from huey.exceptions import RetryTask

from storage import Store

from . import tasks
from .settings import SettingsError, load_settings, use_settings

log = logging.getLogger(__name__)

_queues: dict[str, "BuildQueue"] = {}
_queues_lock = threading.Lock()


class BuildQueue:
    """One store's huey instances, one per build lane, each with the ``build_document`` task
    bound to that store. ``huey`` is the small lane's (the queue name used before lanes)."""

    def __init__(self, store: Store, redis_url: str | None = None):
        self.store = store
        queue = load_settings().queue
        redis_url = redis_url if redis_url is not None else queue.redis_url
        self.kind = "redis" if redis_url else "sqlite"
        name = queue.queue_name if redis_url else "homer"
        self.hueys, self.build_tasks = {}, {}
        for lane in (tasks.SMALL, tasks.LARGE):
            lane_name = name if lane == tasks.SMALL else f"{name}-{lane}"
            if redis_url:
                huey = RedisHuey(name=lane_name, url=redis_url, results=False)
            else:
                huey = SqliteHuey(name=lane_name, filename=str(store.root / "queue.db"), results=False)

            @huey.task(name="build_document")
            def build_document(job_id: str) -> str:
                try:
                    return tasks.run_build(store, job_id)
                except tasks.Retry as retry:
                    raise RetryTask(str(retry), delay=retry.delay) from None

            self.hueys[lane], self.build_tasks[lane] = huey, build_document
        self.huey, self.build_task = self.hueys[tasks.SMALL], self.build_tasks[tasks.SMALL]

    def enqueue(self, job_id: str) -> str:
        """Hand a job to its lane's queue; the task id is kept on the job (for recovery)."""
        lane = tasks.job_lane(self.store, self.store.jobs.get(job_id))
        task = self.build_tasks[lane].s(job_id)
        self.store.jobs.set_task_id(job_id, task.id)
        self.hueys[lane].enqueue(task)
        return task.id

    def pending_task_ids(self) -> set[str]:
        ids = set()
        for huey in self.hueys.values():
            ids |= {task.id for task in huey.pending()} | {task.id for task in huey.scheduled()}
        return ids

    def submit_file(self, data: bytes, file_name: str, model: str | None = None, settings: dict | None = None) -> dict:
        """Queue an upload's build, and read its text in at once (:mod:`app.read_ahead`): the
        document is askable from its passages seconds after the upload."""
        from . import read_ahead

        job = tasks.submit_file(self.store, self.enqueue, data, file_name, model, settings)
        read_ahead.start(self.store, job, tasks.read_in)
        return job

    def submit_document(self, document_id: str, model: str | None = None, settings: dict | None = None) -> dict:
        return tasks.submit_document(self.store, self.enqueue, document_id, model, settings)

    def open_document_cache(self, document_id: str, model: str | None = None, settings: dict | None = None):
        """The ready cache, or ``(None, job)`` with a (re)build queued."""
        return tasks.open_document_cache(self.store, self.enqueue, document_id, model, settings)

    def recover(self) -> list[str]:
        return tasks.recover(self.store, self.enqueue, self.pending_task_ids())


def queue_for(store: Store | None = None, redis_url: str | None = None) -> BuildQueue:
    """The build queue of a store (one per store root and process)."""
    store = store or tasks.open_store()
    key = f"{store.root.resolve()}|{redis_url if redis_url is not None else load_settings().queue.redis_url or ''}"
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


def large_workers() -> int:
    """Build threads of the large lane in a process serving it (``HOMER_LARGE_WORKERS``, 1)."""
    return max(1, load_settings().builds.large_workers)


@dataclass
class ConsumerHandle:
    queue: BuildQueue
    consumers: list
    janitor: Janitor

    @property
    def consumer(self):
        return self.consumers[0]

    def stop(self, graceful: bool = True) -> None:
        self.janitor.stop()
        for consumer in self.consumers:
            consumer.stop(graceful=graceful)


def _consumer(huey, workers: int):
    return huey.create_consumer(
        workers=workers,
        worker_type="thread",
        periodic=False,
        initial_delay=0.1,
        max_delay=1.0,
        backoff=1.15,
        scheduler_interval=1,
        check_worker_health=True,
    )


def _lane_workers(lanes, workers: int, large: int | None) -> dict[str, int]:
    counts = {tasks.SMALL: workers, tasks.LARGE: large if large is not None else large_workers()}
    unknown = set(lanes) - set(counts)
    if unknown:
        raise ValueError(f"unknown build lane {sorted(unknown)[0]!r}: use small or large")
    return {lane: counts[lane] for lane in (tasks.SMALL, tasks.LARGE) if lane in lanes and counts[lane] > 0}


def start_consumer_in_process(
    store: Store | None = None, workers: int = 1, large: int | None = None, lanes=(tasks.SMALL, tasks.LARGE)
) -> ConsumerHandle:
    """Start thread workers for each lane (``workers`` small, ``large`` large) and the janitor
    inside this process (the app). Must be called from the main thread: huey installs signal
    handlers."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("start_consumer_in_process() must be called from the main thread")
    queue = queue_for(store)
    consumers = []
    for lane, count in _lane_workers(lanes, workers, large).items():
        consumer = _consumer(queue.hueys[lane], count)
        consumer.start()
        consumers.append(consumer)
    return ConsumerHandle(queue, consumers, Janitor(queue).start())


def run_worker(
    store: Store | None = None, workers: int = 1, large: int | None = None, lanes=(tasks.SMALL, tasks.LARGE)
) -> int:
    """Run a worker in the foreground until SIGINT / SIGTERM (``homer worker``): the small
    lane's consumer in the foreground, the large lane's started beside it (stopped with it)."""
    queue = queue_for(store)
    counts = _lane_workers(lanes, workers, large)
    if not counts:
        raise ValueError("no build threads to run: give at least one lane a worker")
    log.warning(
        "homer worker: %s on the %s queue of %s",
        ", ".join(f"{n} {lane}-lane thread(s)" for lane, n in counts.items()),
        queue.kind,
        queue.store.root,
    )
    janitor = Janitor(queue).start()
    consumers = [_consumer(queue.hueys[lane], n) for lane, n in counts.items()]
    try:
        for consumer in consumers[1:]:
            consumer.start()
        consumers[0].run()  # its signal handlers (installed last) end the run
    finally:
        janitor.stop()
        for consumer in consumers[1:]:
            consumer.stop(graceful=getattr(consumers[0], "_graceful", True))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="homer worker", description="run HOMER build workers")
    parser.add_argument("--store", default=None, help="store folder (default: the HOMER home store)")
    parser.add_argument("-w", "--workers", type=int, default=1, help="build threads of the small lane (default 1)")
    parser.add_argument(
        "--large-workers",
        type=int,
        default=None,
        help="build threads of the large lane (default 1, or HOMER_LARGE_WORKERS)",
    )
    parser.add_argument(
        "--lane", choices=["all", "small", "large"], default="all", help="serve both build lanes (default) or only one"
    )
    parser.add_argument(
        "--deep-read",
        action="store_true",
        help="also keep the leaf states of each build, for deep reads (or HOMER_DEEP_READ=1)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()  # a bad setting: refused before any work, in one line
    except SettingsError as exc:
        parser.exit(2, f"error: {exc}\n")
    if args.deep_read:  # the flag wins over HOMER_DEEP_READ for this process's builds
        use_settings(settings.changed(builds={"deep_read": True}))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    lanes = (tasks.SMALL, tasks.LARGE) if args.lane == "all" else (args.lane,)
    return run_worker(tasks.open_store(args.store) if args.store else None, args.workers, args.large_workers, lanes)


if __name__ == "__main__":
    # Run as ``python -m app.worker``: use the importable module, whose tasks carry the names
    # (``app.worker.build_document``) the app and ``homer submit`` enqueue under — this file's
    # ``__main__`` copy would register ``__main__.build_document`` and drop every message it
    # did not enqueue itself (they then waited for the janitor's re-enqueue).
    from app.worker import main as _module_main

    raise SystemExit(_module_main())
