"""The build task and the functions around it: submitting work, running one build, and
recovering jobs whose worker died. Queue-agnostic: :mod:`app.worker` binds these to huey.

A build job goes: queued → running (claimed with a renewed lease) → done | failed.
* idempotent: the cache key (document hash, model fingerprint, resolved HOMER settings,
  prompt version) already ready → the job is done at once, reusing it;
* one build per key at a time: a lease lock ``build:<key>`` in the index;
* crash-safe: a killed worker's lease runs out, :func:`recover` re-queues the job; the
  cache file is installed (temp, fsync, rename) and indexed only when complete;
* resumable: the build checkpoints every finished subtree in the store
  (``checkpoints/<key>/``, :mod:`homer.checkpoints`), so a retry after a killed worker or
  an error resumes from there ("resumed at leaf 9/32"); removed when the cache is indexed;
* in slices (``run_build(..., deadline=...)``, for hosts that lend the accelerator for short
  calls only — :mod:`app.slices`): the build stops once the deadline is spent, right after a
  checkpoint, and the job goes back to queued ("read 12/32 leaves …") without counting as an
  attempt; the next slice goes on from the checkpoints;
* failures (bad upload, errors after the last attempt) end the job as failed with a
  one-line reason; the queue goes on."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

from homer.reading.sources import DocumentError
from storage.errors import StoreError
from storage.files import owner_token, write_bytes_atomic
from storage.store import cache_key

from .build_lanes import LARGE, PDF_CHARS_PER_PAGE, SMALL, job_lane, job_size, large_build_chars  # noqa: F401
from .ingest import IngestError, add_to_store, ingest_bytes, max_upload_bytes
from .settings import load_settings

log = logging.getLogger(__name__)

EMBEDDED = "embedded"


def open_store(root=None):
    """The store at ``root`` (default: the HOMER home's, :func:`storage.store.default_root`)
    with the app's settings (``HOMER_CHECKPOINT_MAX_AGE_HOURS``)."""
    from storage import Store

    return Store(root, checkpoint_max_age_hours=load_settings().storage.checkpoint_max_age_hours)


def lease_seconds() -> float:
    """How long a worker's claim lasts without renewal (``HOMER_JOB_LEASE_SECONDS``, 30)."""
    return load_settings().builds.job_lease_seconds


def deep_read_enabled() -> bool:
    """Whether builds also keep the leaf states for deep reads (``HOMER_DEEP_READ=1``; the
    app's ``--deep-read`` sets it in the process's settings). Off by default: about 15 KB per
    document token with the embedded model."""
    return load_settings().builds.deep_read


def _lacks_wanted_leaf_states(cache: dict | None) -> bool:
    """A ready cache still needs a build when leaf states are wanted and it has none."""
    return deep_read_enabled() and cache is not None and not cache.get("leaf_states_file")


def retry_delay() -> float:
    """Seconds before a failed build is tried again (``HOMER_JOB_RETRY_DELAY``, 5)."""
    return load_settings().builds.job_retry_delay


class Retry(Exception):
    """Run this job again after ``delay`` seconds (raised to the queue adapter)."""

    def __init__(self, delay: float, reason: str):
        super().__init__(reason)
        self.delay = delay


class LeaseLost(Exception):
    """Another worker took over this job (our lease ran out); stop quietly."""


# --- models, loaded once per process ------------------------------------------------------
_models: dict[str, tuple] = {}
_models_lock = threading.Lock()


def get_model(name: str | None):
    """``(model, tokenizer, fingerprint)`` for a model name or folder, loaded once per process."""
    from homer.fingerprint import model_fingerprint
    from homer.models import load_model

    key = name or EMBEDDED
    with _models_lock:
        if key not in _models:
            model, tokenizer = load_model(None if key == EMBEDDED else key)
            _models[key] = (model, tokenizer, model_fingerprint(model))
        return _models[key]


# --- submitting -----------------------------------------------------------------------------
def build_key(document_id: str, model: str | None, settings: dict | None) -> str:
    """What makes two build requests the same before any model is loaded."""
    material = json.dumps([document_id, model or EMBEDDED, settings or {}], sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def _finished_job_with_ready_cache(store, key: str) -> dict | None:
    for job in store.db["jobs"].rows_where("build_key = ? AND state = 'done'", [key], order_by="finished DESC"):
        cache = store.get_cache(job["cache_id"]) if job["cache_id"] else None
        if cache is not None and cache["status"] == "ready" and not _lacks_wanted_leaf_states(cache):
            return job
    return None


def submit_file(
    store, enqueue, data: bytes, file_name: str, model: str | None = None, settings: dict | None = None
) -> dict:
    """Queue an upload for ingest + build; returns the job row (an existing one for the same
    content, model and settings). ``enqueue(job_id)`` hands the job to the queue."""
    limit = max_upload_bytes()
    if len(data) > limit:  # refuse before writing anything; ingest checks again
        raise IngestError(
            f"{file_name}: the file is {len(data) / 2**20:.1f} MB, over the limit of {limit / 2**20:.1f} MB"
        )
    document_id = hashlib.sha256(data).hexdigest()
    if store.get_document(document_id) is not None:
        return submit_document(store, enqueue, document_id, model, settings)
    key = build_key(document_id, model, settings)
    suffix = "".join(ch for ch in Path(file_name).suffix.lower() if ch.isascii() and ch.isalnum())[:15]
    upload = f"uploads/{document_id}" + (f".{suffix}" if suffix else "")
    write_bytes_atomic(data, store.upload_path(upload), store.tmp_dir)
    job, created = store.jobs.create(
        document_id, key, model or EMBEDDED, settings, upload=upload, file_name=Path(file_name).name
    )
    if created:
        enqueue(job["id"])
    return store.jobs.get(job["id"])


def submit_document(store, enqueue, document_id: str, model: str | None = None, settings: dict | None = None) -> dict:
    """Queue a build of a stored document; a finished build of the same request is reused."""
    document_id = store.document(document_id)["id"]
    key = build_key(document_id, model, settings)
    done = _finished_job_with_ready_cache(store, key)
    if done is not None:
        return done
    job, created = store.jobs.create(
        document_id, key, model or EMBEDDED, settings, file_name=store.document(document_id)["file_name"]
    )
    if created:
        enqueue(job["id"])
    return store.jobs.get(job["id"])


def open_document_cache(store, enqueue, document_id: str, model: str | None = None, settings: dict | None = None):
    """``(cache, None)`` with the document's ready cache for this model and settings, or
    ``(None, job)`` after queueing a build — also when the stored cache turned out missing or
    corrupt (reported in the job's message; never a crash, never a wrong cache)."""
    from homer.config import HomerConfig
    from homer.prompting import default_prompt
    from storage.errors import CacheCorrupt

    loaded, tokenizer, fingerprint = get_model(model)
    document_id = store.document(document_id)["id"]
    config = HomerConfig(**(settings or {})).resolve(loaded.config)
    key = cache_key(document_id, fingerprint, config.settings_json(), default_prompt(tokenizer).version)
    row = store.get_cache(key)
    if row is not None and row["status"] == "ready":
        try:
            return store.load_cache(key, expected_fingerprint=fingerprint), None
        except CacheCorrupt as exc:
            log.warning("%s", exc)
    return None, submit_document(store, enqueue, document_id, model, settings)


def wait_for(store, job_id: str, timeout: float = 300.0, poll: float = 0.2) -> dict:
    """Block until the job is done or failed (or ``timeout``); returns its row."""
    deadline = time.monotonic() + timeout
    while True:
        job = store.jobs.get(job_id)
        if job["state"] in ("done", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(poll)


# --- running one build ------------------------------------------------------------------
class Heartbeat:
    """Renews the job's lease (and the key lock) in the background while a build runs, and
    writes progress at most a few times a second."""

    def __init__(self, store, job_id: str, owner: str, lease: float):
        self.store, self.job_id, self.owner, self.lease = store, job_id, owner, lease
        self.lock_name: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)
        self._last_write = 0.0
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(max(0.2, self.lease / 3)):
            self.beat()

    def beat(self, progress: float | None = None, message: str | None = None) -> None:
        if not self.store.jobs.heartbeat(self.job_id, self.owner, self.lease, progress, message):
            self.lost = True
        if self.lock_name:
            self.store.locks.renew(self.lock_name, self.owner, self.lease)

    def progress(self, fraction: float, message: str, force: bool = False) -> None:
        if self.lost:
            raise LeaseLost(self.job_id)
        now = time.monotonic()
        if force or now - self._last_write >= 0.5:
            self._last_write = now
            self.beat(round(min(max(fraction, 0.0), 1.0), 4), message)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _progress_callback(heartbeat: Heartbeat, started: float):
    step_delay = load_settings().builds.test_step_delay  # tests slow builds down
    resumed = {"message": "", "steps": 0}  # a build resumed from its checkpoints says so in every message

    def progress(done: int, total: int, message: str) -> None:
        if message.startswith("resumed "):
            resumed.update(message=message, steps=done)
        elif resumed["message"]:
            message = f"{message} ({resumed['message']})"
        elapsed = time.monotonic() - started
        eta = elapsed / (done - resumed["steps"]) * (total - done) if done > resumed["steps"] else 0.0
        heartbeat.progress(
            done / max(total, 1), f"{message} — step {done}/{total}, about {eta:.0f} s left", force=done == total
        )
        if step_delay:
            time.sleep(step_delay)

    from .model_turns import pause_for_answers

    progress.pause = pause_for_answers  # before every layer: a question being answered goes first
    return progress


def ingest_upload(store, job: dict, tokenizer, progress=None, split: bool = True) -> str:
    """Read a job's upload into the store (the app's ingestion and limits); its document id.
    ``split=False`` stores it without its token-counted passages (added by the caller)."""
    upload = store.upload_path(job["upload"])  # a StoreError fails the job: never read outside the store
    try:
        data = upload.read_bytes()
    except FileNotFoundError:
        raise IngestError(f"{job['file_name']}: the upload is gone") from None
    doc = ingest_bytes(data, job["file_name"] or upload.name, tokenizer, progress=progress, split=split)
    row = add_to_store(store, doc)
    return row["id"]


_ingest_upload = ingest_upload  # the name the store's safety tests call


def read_in(store, job: dict) -> str:
    """An upload's text and passage index stored now, before its build (:mod:`app.read_ahead`):
    the document is askable from its passages; its id."""
    from .focus import index_document
    from .ingest import token_passages

    loaded = _models.get(job["model"] or EMBEDDED)  # never loads one: a load holds the lock the builds need
    if loaded is None:
        raise IngestError(f"the model {job['model']} is not loaded in this process yet; the build reads it in")
    tokenizer = loaded[1]
    document_id = ingest_upload(store, job, tokenizer, split=False)  # askable first …
    index_document(store, document_id)
    row = store.get_document(document_id)
    if row is not None and row.get("passages") is None:  # … then its token-counted passages
        store.set_passages(
            document_id, token_passages(store.document_text(document_id), store.page_starts(document_id), tokenizer)
        )
    return document_id


def _drop_upload(store, job: dict) -> None:
    """Remove a job's upload unless another active job (same content) still needs it."""
    if not job.get("upload"):
        return
    others = store.db.execute(
        "SELECT COUNT(*) FROM jobs WHERE upload = ? AND id != ? AND state IN ('queued', 'running')",
        [job["upload"], job["id"]],
    ).fetchone()[0]
    if not others:
        try:
            store.upload_path(job["upload"]).unlink(missing_ok=True)
        except StoreError:  # a row naming anything else: never delete outside the uploads folder
            log.warning("job %s names an upload outside the store; not deleted", job["id"][:8])


SLICE_ENDED = "sliced"


def run_build(store, job_id: str, deadline: float | None = None, report: dict | None = None) -> str:
    """Run one build job to its end state; returns "done", "failed", "skipped" or "lost".
    Raises :class:`Retry` when the job should run again later. With ``deadline`` (a
    ``time.monotonic()`` time) the build stops once it is spent, right after a checkpoint:
    the job is queued again with its progress, this run not counted as an attempt, and
    :data:`SLICE_ENDED` is returned (``report``, a dict, then gets the leaves done and total
    and the seconds this slice computed: :meth:`homer.checkpoints.BuildSliceEnded.as_dict`)."""
    from homer.checkpoints import BuildSliceEnded
    from homer.config import HomerConfig
    from homer.document import build_document_cache
    from homer.prompting import default_prompt

    owner = f"{owner_token()}:{threading.get_ident()}"
    lease = lease_seconds()
    if not store.jobs.claim(job_id, owner, lease):
        return "skipped"  # another worker has it, or it already ended
    job = store.jobs.get(job_id)
    heartbeat = Heartbeat(store, job_id, owner, lease)
    try:
        heartbeat.progress(0.0, "loading the model", force=True)
        model, tokenizer, fingerprint = get_model(None if job["model"] == EMBEDDED else job["model"])
        document_id = job["document_id"]
        if job["upload"] and store.get_document(document_id) is None:
            from . import read_ahead

            read_ahead.wait(document_id)  # this process is reading it in already (askable while reading)
        if job["upload"] and store.get_document(document_id) is None:
            heartbeat.progress(0.0, "reading the document", force=True)
            document_id = ingest_upload(
                store,
                job,
                tokenizer,  # a scan's OCR says "OCR page 3/80"
                lambda message: heartbeat.progress(0.0, message, force=True),
            )
        config = HomerConfig(**json.loads(job["settings"] or "{}")).resolve(model.config)
        prompt = default_prompt(tokenizer)
        key = cache_key(document_id, fingerprint, config.settings_json(), prompt.version)
        existing = store.get_cache(key)
        if existing is not None and existing["status"] == "ready" and not _lacks_wanted_leaf_states(existing):
            store.jobs.finish(job_id, owner, key, "reused the cache already built")
            _drop_upload(store, job)
            return "done"
        heartbeat.lock_name = f"build:{key}"
        if not store.locks.acquire(heartbeat.lock_name, owner, lease):
            heartbeat.lock_name = None
            store.jobs.release(job_id, owner, "waiting for another build of the same cache", uncount=True)
            raise Retry(min(retry_delay(), lease), "same cache is being built elsewhere")
        started = time.monotonic()
        text = store.document_text(document_id)
        document = store.document(document_id)
        from .focus import index_after_ingest  # the passage index that focused answers search

        index_after_ingest(store, document_id, lambda message: heartbeat.progress(0.0, message, force=True))
        # leaf states (not part of the cache key): written to a temp path in the store, then
        # installed with the cache row
        leaves = store.staging_path(".leaves.safetensors") if deep_read_enabled() else None
        try:
            checkpoints = store.build_checkpoints(document_id, key)  # a stopped build of the key resumes
        except StoreError as exc:
            log.warning("job %s builds without checkpoints: %s", job_id[:8], exc)
            checkpoints = None
        try:
            cache = build_document_cache(
                model,
                tokenizer,
                text,
                config,
                prompt=prompt,
                progress=_progress_callback(heartbeat, started),
                metadata={"document_id": document_id, "source": document["file_name"]},
                leaf_states=leaves,
                checkpoints=checkpoints,
                deadline=deadline if checkpoints is not None else None,
            )
            if heartbeat.lost:
                raise LeaseLost(job_id)
            heartbeat.progress(1.0, "saving the cache", force=True)
            row = store.save_cache(document_id, cache, build_seconds=time.monotonic() - started, leaf_states=leaves)
        finally:
            if leaves is not None:
                leaves.unlink(missing_ok=True)
        kept = f" and {row['leaf_states_bytes'] / 2**20:.1f} MiB of leaf states" if row.get("leaf_states_file") else ""
        sliced = bool(cache.metadata.get("resumed")) and deadline is not None  # the last slice of a build in slices
        if sliced:
            kept += (
                f" (read in slices; this last one computed {cache.metadata['leaves_computed']} of "
                f"{cache.metadata['num_leaves']} leaves)"
            )
        elif cache.metadata.get("resumed"):  # e.g. "(resumed at leaf 9/32: 24 of 32 leaves computed)"
            kept += (
                f" ({cache.metadata['resumed']}: {cache.metadata['leaves_computed']} of "
                f"{cache.metadata['num_leaves']} leaves computed)"
            )
        took = f"{'a last slice of ' if sliced else ''}{row['build_seconds']:.1f} s"
        store.jobs.finish(
            job_id,
            owner,
            row["id"],
            f"built {row['tokens']} cached tokens from {document['token_count'] or '?'} in {took}" + kept,
        )
        _drop_upload(store, job)
        return "done"
    except BuildSliceEnded as end:  # this slice's time is spent: the next one goes on from the checkpoints
        message = (
            f"read {end.leaves_done}/{end.leaves_total} leaves "
            f"({100 * end.steps_done / max(end.steps_total, 1):.0f} %); continues on the next request"
        )
        heartbeat.beat(round(end.steps_done / max(end.steps_total, 1), 4), message)
        if not store.jobs.release(job_id, owner, message, uncount=True):
            return "lost"
        if report is not None:
            report.update(end.as_dict())
        return SLICE_ENDED
    except (IngestError, DocumentError, StoreError, ValueError) as exc:  # deterministic: retrying cannot help
        store.jobs.fail(job_id, str(exc), owner=owner)
        _drop_upload(store, job)
        return "failed"
    except LeaseLost:
        log.warning("job %s was taken over by another worker; stopping this build", job_id)
        return "lost"
    except Retry:
        raise
    except Exception as exc:  # anything else may be transient (out of memory, a disk hiccup)
        reason = f"{type(exc).__name__}: {exc}"
        job = store.jobs.get(job_id)
        if job["attempts"] < job["max_attempts"]:
            store.jobs.release(job_id, owner, f"retrying after: {reason}"[:300], error=reason)
            raise Retry(retry_delay(), reason) from exc
        store.jobs.fail(job_id, f"failed after {job['attempts']} attempts: {reason}", owner=owner)
        _drop_upload(store, job)
        return "failed"
    finally:
        heartbeat.stop()
        if heartbeat.lock_name:
            store.locks.release(heartbeat.lock_name, owner)


# --- recovery ---------------------------------------------------------------------------
def run_queued(store) -> list[tuple[str, str]]:
    """Run every queued build here and now — small documents first, then large ones, each
    oldest first, so a small document never waits behind a large one: (job id, outcome) per job,
    each build to its end. (The app runs builds inside requests in slices instead:
    :mod:`app.slices`.)"""
    outcomes = []
    queued = store.jobs.list("queued")
    lanes = {job["id"]: job_lane(store, job) for job in queued}
    for job in sorted(queued, key=lambda job: lanes[job["id"]] == LARGE):  # small ones first, each lane oldest first
        try:
            outcomes.append((job["id"], run_build(store, job["id"])))
        except Retry as exc:
            outcomes.append((job["id"], f"retry later: {exc}"))
        except LeaseLost:
            outcomes.append((job["id"], "lost"))
    return outcomes


def recover(store, enqueue, pending_task_ids: set[str] | None, grace: float | None = None) -> list[str]:
    """Re-queue jobs whose worker died (lease expired / dead process) and queued jobs whose
    queue message is gone; remove temp files of dead writers. Safe to run from every worker
    at once: each transition is won by one of them. Returns what it did, one line each."""
    actions = []
    grace = lease_seconds() if grace is None else grace
    if store.remove_stale_temp_files():
        actions.append("removed temp files of stopped writers")
    for job in store.jobs.stale_running():
        state = store.jobs.recover(job)
        if state == "queued":
            enqueue(job["id"])
            actions.append(f"requeued job {job['id'][:8]} (its worker stopped)")
        elif state == "failed":
            _drop_upload(store, job)
            actions.append(f"failed job {job['id'][:8]} (attempts used up)")
    if pending_task_ids is not None:
        for job in store.jobs.list("queued"):
            if job["task_id"] not in pending_task_ids and store.jobs.touch_queued(job["id"], grace):
                enqueue(job["id"])
                actions.append(f"re-enqueued job {job['id'][:8]} (its queue message was lost)")
    return actions
