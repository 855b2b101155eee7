"""The build queue with a real huey consumer on a real SQLite queue: bad uploads fail with
their reason without blocking the queue, a SIGKILLed worker's job is retried to completion,
two worker processes and four clients share one store."""

from __future__ import annotations

import signal
import threading

import pytest
from store_helpers import FAST, blank_pdf, consumer_in_process, start_worker, stop, story, text_pdf, wait_until  # noqa: F401

from app.tasks import wait_for
from app.worker import queue_for
from storage import Store


@pytest.fixture
def in_process_consumer(tmp_path):
    """Thread workers inside the test process (as the app runs them)."""
    with consumer_in_process(Store(tmp_path / "store"), workers=2) as queue:
        yield queue


def test_uploads_build_in_the_background_and_bad_ones_fail_with_their_reason(in_process_consumer, model_dir):
    queue, store = in_process_consumer, in_process_consumer.store
    bad = {
        "empty.txt": b"",
        "scan.pdf": blank_pdf(),
        "locked.pdf": text_pdf(["x"], password="pw"),
        "photo.txt": b"\x89PNG\r\n\x1a\n\x00\x00" * 50,
    }
    bad_jobs = {name: queue.submit_file(data, name, str(model_dir), FAST) for name, data in bad.items()}
    good = queue.submit_file(story().encode(), "keeper.txt", str(model_dir), FAST)
    pdf = queue.submit_file(text_pdf(["The keeper was Ada.", "She kept the lamp."]), "log.pdf", str(model_dir), FAST)
    again = queue.submit_file(story().encode(), "copy.txt", str(model_dir), FAST)
    assert again["id"] == good["id"]  # the same request is one job

    for name, job in bad_jobs.items():
        job = wait_for(store, job["id"], timeout=120)
        assert job["state"] == "failed" and job["error"].startswith(name) and "\n" not in job["error"], job
    good, pdf = (wait_for(store, job["id"], timeout=120) for job in (good, pdf))
    for job in (good, pdf):
        assert job["state"] == "done" and job["progress"] == 1.0 and job["cache_id"], job
        assert store.get_cache(job["cache_id"])["status"] == "ready"
    assert store.get_document(good["document_id"])["token_count"] > 0
    assert len(store.documents()) == 2 and list((store.root / "uploads").iterdir()) == []

    reused = queue.submit_document(good["document_id"], str(model_dir), FAST)
    assert reused["id"] == good["id"] and reused["state"] == "done"
    other_settings = wait_for(
        store, queue.submit_document(good["document_id"], str(model_dir), {**FAST, "seed": 1})["id"]
    )
    assert other_settings["state"] == "done" and other_settings["cache_id"] != good["cache_id"]
    assert len(store.caches(good["document_id"])) == 2
    assert store.check() == []


@pytest.mark.e2e
def test_a_killed_worker_s_job_is_retried_and_completes_once(tmp_path, model_dir):
    store = Store(tmp_path / "store")
    home, log = tmp_path / "home", tmp_path / "worker.log"
    slow = {"HOMER_JOB_LEASE_SECONDS": 3, "HOMER_TEST_STEP_DELAY": 0.4}
    first = start_worker(store.root, home, log, **slow)
    try:
        job = queue_for(store).submit_file(story(40).encode(), "long.txt", str(model_dir), FAST)
        wait_until(
            lambda: 0.1 < store.jobs.get(job["id"])["progress"] < 0.9, timeout=180, what="the build to be underway"
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        stop(first, signal.SIGKILL)
    killed = store.jobs.get(job["id"])
    assert killed["state"] == "running" and killed["attempts"] == 1
    assert store.caches(status=None) == []  # nothing half-built is indexed

    second = start_worker(store.root, home, log, HOMER_JOB_LEASE_SECONDS=3)
    try:
        done = wait_for(store, job["id"], timeout=180)
    finally:
        stop(second)
    assert done["state"] == "done", (done, log.read_text()[-3000:])
    assert done["attempts"] == 2 and done["error"] is None
    ready = store.caches(status=None)
    assert len(ready) == 1 and ready[0]["status"] == "ready" and ready[0]["id"] == done["cache_id"]
    assert len(store.jobs.list()) == 1  # no duplicate job
    store.load_cache(done["cache_id"])  # checksum and fingerprint verified
    assert list(store.tmp_dir.iterdir()) == [], "temp files left behind"
    assert [p.name for p in (store.root / "caches").rglob("*.safetensors")] == [f"{done['cache_id']}.safetensors"]
    assert store.check() == []


@pytest.mark.e2e
def test_two_workers_and_four_clients_share_one_store(tmp_path, model_dir):
    root, home, log = tmp_path / "store", tmp_path / "home", tmp_path / "workers.log"
    Store(root)
    workers = [start_worker(root, home, log, HOMER_JOB_LEASE_SECONDS=5) for _ in range(2)]
    # Two spellings of the same model folder: different requests, the same cache key — the
    # lock per key makes one of them wait and reuse the other's cache.
    models = [str(model_dir), str(model_dir) + "/"]
    documents = [story(20, f"#{i}").encode() for i in range(4)]
    submitted, errors = [], []

    def client(index: int) -> None:
        try:
            store = Store(root)  # each client its own connections
            queue = queue_for(store)
            for n, data in enumerate(documents):
                job = queue.submit_file(data, f"doc{n}.txt", models[(index + n) % 2], FAST)
                submitted.append(job["id"])
                store.jobs.get(job["id"])["progress"]  # clients poll progress meanwhile
        except Exception as exc:  # surfaced below
            errors.append(exc)

    try:
        clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        assert not errors, errors
        store = Store(root)
        finished = [wait_for(store, job_id, timeout=240) for job_id in set(submitted)]
    finally:
        for w in workers:
            stop(w)
    assert all(job["state"] == "done" for job in finished), [(j["state"], j["error"]) for j in finished]
    assert len(finished) == 8  # 4 documents × 2 model spellings; duplicates collapsed
    caches = store.caches(status=None)
    assert len(caches) == 4 and all(c["status"] == "ready" for c in caches)
    built = [job for job in finished if job["message"].startswith("built")]
    assert len(built) == 4, [job["message"] for job in finished]  # each cache built exactly once
    assert {job["cache_id"] for job in finished} == {c["id"] for c in caches}
    assert len(store.documents()) == 4 and store.check() == []


def test_a_corrupt_cache_is_queued_for_rebuild_when_opened(in_process_consumer, model_dir):
    queue, store = in_process_consumer, in_process_consumer.store
    job = wait_for(store, queue.submit_file(story().encode(), "keeper.txt", str(model_dir), FAST)["id"])
    cache, pending = queue.open_document_cache(job["document_id"], str(model_dir), FAST)
    assert cache is not None and pending is None
    path = store.root / store.get_cache(job["cache_id"])["file"]
    path.write_bytes(path.read_bytes()[:1000])  # truncated on disk
    cache, rebuild = queue.open_document_cache(job["document_id"], str(model_dir), FAST)
    assert cache is None and rebuild["id"] != job["id"]
    assert store.get_cache(job["cache_id"])["status"] in ("corrupt", "ready")
    rebuilt = wait_for(store, rebuild["id"], timeout=120)
    assert rebuilt["state"] == "done" and rebuilt["cache_id"] == job["cache_id"]
    cache, pending = queue.open_document_cache(job["document_id"], str(model_dir), FAST)
    assert cache is not None and pending is None and store.check() == []


@pytest.mark.slow
def test_settings_the_model_cannot_use_fail_at_once_without_retries(in_process_consumer, model_dir):
    queue, store = in_process_consumer, in_process_consumer.store
    job = queue.submit_file(story().encode(), "keeper.txt", str(model_dir), {**FAST, "warmup_layers": 99})
    job = wait_for(store, job["id"], timeout=120)
    assert job["state"] == "failed" and job["attempts"] == 1 and "warmup_layers" in job["error"]
    good = wait_for(store, queue.submit_file(story().encode(), "keeper.txt", str(model_dir), FAST)["id"])
    assert good["state"] == "done"  # the queue goes on
