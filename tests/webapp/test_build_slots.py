"""Build lanes: documents over HOMER_LARGE_BUILD_CHARS characters build in a lane of their
own, so a small document queued behind a large, slow build finishes while the large one is
still running — with thread workers in this process, with a worker process on the SQLite
queue and on Redis, and (one at a time) for builds run inside requests."""

from __future__ import annotations

import signal

import pytest
from store_helpers import FAST, redis_url, start_worker, stop, story, wait_until  # noqa: F401

from app import tasks
from app.tasks import run_queued, wait_for
from app.worker import queue_for, start_consumer_in_process
from storage import Store

SLOW = {"HOMER_TEST_STEP_DELAY": "0.5", "HOMER_LARGE_BUILD_CHARS": "2000"}  # a worker process's environment
LARGE_TEXT, SMALL_TEXT = story(40, "large"), story(5, "small")  # 2 800 characters, 15 build steps; 1 step


@pytest.fixture
def slow_builds(configure):
    """This process's settings as :data:`SLOW` sets a worker process's."""
    configure(builds={"test_step_delay": 0.5, "large_build_chars": 2000})


@pytest.fixture
def restore_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def small_passes_large(queue, model_dir) -> None:
    """Queue the large document, wait until it is building, queue the small one: the small
    one is done while the large one is still running."""
    store = queue.store
    large = queue.submit_file(LARGE_TEXT.encode(), "large.txt", str(model_dir), FAST)
    assert tasks.job_lane(store, large) == tasks.LARGE
    wait_until(
        lambda: (
            store.jobs.get(large["id"])["state"] == "running" and (store.jobs.get(large["id"])["progress"] or 0) > 0
        ),
        timeout=180,
        what="the large build to start",
    )
    small = queue.submit_file(SMALL_TEXT.encode(), "small.txt", str(model_dir), FAST)
    assert tasks.job_lane(store, small) == tasks.SMALL
    done = wait_for(store, small["id"], timeout=120)
    large_then = store.jobs.get(large["id"])
    assert done["state"] == "done", done
    assert large_then["state"] == "running" and large_then["progress"] < 1.0, large_then
    assert wait_for(store, large["id"], timeout=240)["state"] == "done"
    assert done["finished"] < store.jobs.get(large["id"])["finished"]


def test_lanes_follow_the_document_size(tmp_path, configure):
    from store_helpers import text_pdf

    configure(builds={"large_build_chars": 2000})
    store = Store(tmp_path / "store")
    queue = queue_for(store)
    jobs = {
        name: queue.submit_file(data, name, "m")
        for name, data in [
            ("small.txt", SMALL_TEXT.encode()),
            ("large.txt", LARGE_TEXT.encode()),
            ("one-page.pdf", text_pdf(["One page."])),
            ("many-pages.pdf", text_pdf(["A page."] * 3)),
        ]
    }
    lanes = {name: tasks.job_lane(store, job) for name, job in jobs.items()}
    assert lanes == {
        "small.txt": "small",
        "large.txt": "large",
        "one-page.pdf": "large",  # 3 000 characters guessed per page
        "many-pages.pdf": "large",
    }
    pending = {lane: {t.id for t in huey.pending()} for lane, huey in queue.hueys.items()}
    for name, job in jobs.items():  # each job's message sits in its lane's queue
        assert store.jobs.get(job["id"])["task_id"] in pending[lanes[name]]
    assert queue.pending_task_ids() == pending["small"] | pending["large"]


@pytest.mark.slow
def test_in_process_a_small_document_passes_a_large_one(tmp_path, model_dir, slow_builds, restore_signals):
    handle = start_consumer_in_process(Store(tmp_path / "store"), workers=1)
    try:
        assert len(handle.consumers) == 2  # one consumer per lane
        small_passes_large(handle.queue, model_dir)
    finally:
        handle.stop()


def test_a_worker_serving_only_the_small_lane_leaves_large_documents_queued(
    tmp_path, model_dir, slow_builds, restore_signals
):
    handle = start_consumer_in_process(Store(tmp_path / "store"), workers=1, lanes=("small",))
    try:
        queue, store = handle.queue, handle.queue.store
        large = queue.submit_file(LARGE_TEXT.encode(), "large.txt", str(model_dir), FAST)
        small = queue.submit_file(SMALL_TEXT.encode(), "small.txt", str(model_dir), FAST)
        assert wait_for(store, small["id"], timeout=120)["state"] == "done"
        assert store.jobs.get(large["id"])["state"] == "queued"
    finally:
        handle.stop()


@pytest.mark.e2e
def test_a_worker_process_on_the_sqlite_queue(tmp_path, model_dir, slow_builds):
    store = Store(tmp_path / "store")
    worker = start_worker(store.root, tmp_path / "home", tmp_path / "worker.log", **SLOW)
    try:
        small_passes_large(queue_for(store), model_dir)
    finally:
        stop(worker)
    assert store.check() == []


@pytest.mark.e2e
def test_worker_processes_on_redis(tmp_path, model_dir, slow_builds, redis_url):
    store = Store(tmp_path / "store")
    queue = queue_for(store, redis_url=redis_url)
    worker = start_worker(store.root, tmp_path / "home", tmp_path / "worker.log", HOMER_REDIS_URL=redis_url, **SLOW)
    try:
        small_passes_large(queue, model_dir)
    finally:
        stop(worker)
    assert not (store.root / "queue.db").exists() and queue.pending_task_ids() == set()


@pytest.mark.slow
def test_builds_in_requests_take_small_documents_first(tmp_path, model_dir, configure):
    configure(builds={"large_build_chars": 2000})
    store = Store(tmp_path / "store")
    queue = queue_for(store)  # no consumer: the request runs the builds
    large = queue.submit_file(LARGE_TEXT.encode(), "large.txt", str(model_dir), FAST)
    small = queue.submit_file(SMALL_TEXT.encode(), "small.txt", str(model_dir), FAST)
    outcomes = run_queued(store)
    assert outcomes == [(small["id"], "done"), (large["id"], "done")]
