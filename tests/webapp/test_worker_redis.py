"""Many-machine mode: RedisHuey with a real redis-server (a private one on a free loopback
port). Two worker processes build 8 documents concurrently: no duplicate build, no lost job."""

from __future__ import annotations

import pytest
from store_helpers import FAST, redis_url, start_worker, stop, story, wait_until  # noqa: F401

from app.tasks import wait_for
from app.worker import queue_for
from storage import Store


@pytest.mark.e2e
def test_two_redis_workers_build_eight_documents_once_each(tmp_path, model_dir, redis_url):
    root, home, log = tmp_path / "store", tmp_path / "home", tmp_path / "workers.log"
    store = Store(root)
    queue = queue_for(store, redis_url=redis_url)
    assert queue.kind == "redis"
    workers = [
        start_worker(root, home, log, HOMER_REDIS_URL=redis_url, HOMER_JOB_LEASE_SECONDS=5, HOMER_TEST_STEP_DELAY=0.05)
        for _ in range(2)
    ]
    try:
        jobs = [
            queue.submit_file(story(20, f"redis-{i}").encode(), f"doc{i}.txt", str(model_dir), FAST) for i in range(8)
        ]
        duplicates = [
            queue.submit_file(story(20, f"redis-{i}").encode(), f"doc{i}.txt", str(model_dir), FAST) for i in range(8)
        ]
        assert [j["id"] for j in duplicates] == [j["id"] for j in jobs]
        finished = [wait_for(store, job["id"], timeout=300) for job in jobs]
    finally:
        for worker in workers:
            stop(worker)
    assert all(job["state"] == "done" for job in finished), (
        [(j["state"], j["error"]) for j in finished],
        log.read_text()[-3000:],
    )
    assert all(job["attempts"] == 1 and job["message"].startswith("built") for job in finished)
    caches = store.caches(status=None)
    assert len(caches) == 8 and len({c["id"] for c in caches}) == 8
    assert len(store.jobs.list()) == 8 and queue.pending_task_ids() == set()
    assert not (root / "queue.db").exists()  # the SQLite queue was never used
    assert store.check() == []


@pytest.mark.e2e
def test_both_redis_workers_take_work(tmp_path, model_dir, redis_url):
    """Jobs are spread over the two processes (each records its pid as the job owner)."""
    root, home, log = tmp_path / "store", tmp_path / "home", tmp_path / "workers.log"
    store = Store(root)
    queue = queue_for(store, redis_url=redis_url)
    workers = [start_worker(root, home, log, HOMER_REDIS_URL=redis_url, HOMER_TEST_STEP_DELAY=0.2) for _ in range(2)]
    seen = set()
    try:
        jobs = [
            queue.submit_file(story(20, f"spread-{i}").encode(), f"d{i}.txt", str(model_dir), FAST) for i in range(4)
        ]

        def both_busy():
            for job in jobs:
                owner = store.jobs.get(job["id"])["owner"]
                if owner:
                    seen.add(owner.split(":")[1])
            return len(seen) == 2

        wait_until(both_busy, timeout=240, poll=0.05, what="both workers to run a build")
        assert all(wait_for(store, job["id"], timeout=300)["state"] == "done" for job in jobs)
    finally:
        for worker in workers:
            stop(worker)
    assert seen == {str(w.pid) for w in workers}
