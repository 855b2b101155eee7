"""Builds in slices, for hosts that lend the accelerator only inside requests and only for
short calls — a ZeroGPU Space, where ``spaces.GPU`` lends a GPU to one call of a function,
from a user's request and charged to that user's quota, for a duration asked in advance.

* **Who drives it.** The upload request runs the first slice; then every refresh of the
  library (the page's timer, or ``/continue_builds`` through the API) runs the next slice of
  the oldest unfinished build of the user who asked (documents they added; every build when
  the app runs without login), until it is done. A page left open finishes its builds; a
  closed one leaves them queued, and they go on at the next visit.
* **How long a slice is.** Each slice is one call of the GPU function with a duration sized
  from the work left: the leaves left (one more, for the merges) × the seconds per leaf
  measured in this build's previous slice × 1.25, plus a margin
  (``HOMER_GPU_SLICE_MARGIN``, 10 s, at most half the slice) for starting the GPU worker,
  reading the checkpoints and the step that runs past the deadline — capped at
  ``HOMER_GPU_SLICE_SECONDS`` (60). A first slice, with nothing measured yet, asks for the
  cap. Inside, the build stops once the slice less the margin is spent, right after a
  checkpoint (:func:`app.tasks.run_build` with a deadline), and the job goes back to queued
  with its progress ("read 12/32 leaves (37 %); continues on the next request").
* **Refusals.** ZeroGPU refuses a call with a ``gradio.Error`` titled "ZeroGPU quota
  exceeded", "ZeroGPU illegal duration", "ZeroGPU pending credits exceeded", "ZeroGPU
  queue timeout" or "ZeroGPU client error" (read in the ``spaces`` 0.51.3 source,
  ``spaces/zero/client.py``), or "ZeroGPU worker error" when the GPU task died. Each becomes
  a readable line in the library's status and in the job's message; the job stays queued
  and its checkpoints stay, so nothing is lost and the next request goes on. An illegal
  duration also halves the slices asked from then on.
* **One slice of a job at a time**: in this process a set of jobs in flight; across
  processes the job's lease (a slice claims the job like any worker).

Arguments to the GPU function are a job id and a number of seconds (ZeroGPU pickles them
into a forked worker); it returns a small dict. Nothing here needs the ``spaces`` package:
the app passes ``spaces.GPU`` in (:func:`zero_gpu_decorator`)."""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from storage import db as dbmod

from . import tasks
from .settings import load_settings

log = logging.getLogger(__name__)

SAFETY = 1.25  # a slice asks for this much more than the measured pace says
MIN_SECONDS = 1

# the titles of the refusals ``spaces`` raises (spaces 0.51.3: spaces/zero/client.py, wrappers.py)
QUOTA = "ZeroGPU quota exceeded"
ILLEGAL_DURATION = "ZeroGPU illegal duration"
PENDING = "ZeroGPU pending credits exceeded"
QUEUE_TIMEOUT = "ZeroGPU queue timeout"
CLIENT_ERROR = "ZeroGPU client error"
WORKER_ERROR = "ZeroGPU worker error"


def slice_cap() -> float:
    """The longest slice asked for, in seconds (``HOMER_GPU_SLICE_SECONDS``, 60; 0 or less is 60)."""
    value = load_settings().builds.gpu_slice_seconds
    return value if value > 0 else 60.0


def slice_margin(seconds: float) -> float:
    """Of a slice of ``seconds``, the part kept for starting the GPU worker, reading the
    checkpoints and the step that runs past the deadline (``HOMER_GPU_SLICE_MARGIN``, 10 s;
    at most half the slice)."""
    margin = load_settings().builds.gpu_slice_margin
    return min(max(margin, 0.0), seconds / 2)


def zero_gpu_decorator() -> Callable | None:
    """``spaces.GPU`` when the ``spaces`` package is importable (a no-op decorator off
    ZeroGPU), else None: slices then run unwrapped, in the request."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return None
    return spaces.GPU


def refusal_kind(exc: BaseException) -> str | None:
    """The ZeroGPU refusal an exception is (one of the titles above), or None. ``spaces``
    raises ``gradio.Error(message, title=...)``; without a title (old gradio), the message
    tells."""
    title = str(getattr(exc, "title", "") or "")
    if title.startswith("ZeroGPU"):
        return title
    message = str(getattr(exc, "message", "") or exc)
    if "is larger than the maximum allowed" in message:
        return ILLEGAL_DURATION
    if ("ZeroGPU" in message and "quota" in message) or "reached its GPU limit" in message:
        return QUOTA
    return None


def refusal_line(kind: str, exc: BaseException, seconds: int, next_seconds: int) -> str:
    """What the user reads when ZeroGPU refused a slice."""
    message = " ".join(str(getattr(exc, "message", "") or exc).split())
    if kind == QUOTA:
        wait = re.search(r"[Tt]ry again in ([0-9:]+)", message)
        when = f" (try again in {wait.group(1)})" if wait else ""
        return f"GPU quota used up for now{when}: the build continues on your next visit"
    if kind == ILLEGAL_DURATION:
        return (
            f"the GPU refused a {seconds} s slice as too long: the build continues on the next request "
            f"with {next_seconds} s slices (set HOMER_GPU_SLICE_SECONDS lower to keep it so)"
        )
    if kind == PENDING:
        return "too many of your GPU tasks are running: the build continues on the next request"
    if kind in (QUEUE_TIMEOUT, CLIENT_ERROR):
        return "no GPU was free: the build continues on the next request"
    if kind == WORKER_ERROR:
        return f"the GPU task stopped ({message[:120]}): the build continues from its checkpoint on the next request"
    return f"the GPU refused the slice ({kind}: {message[:120]}): the build continues on the next request"


@dataclass
class SliceOutcome:
    """What one slice did: ``state`` is the job's after it ("done", "failed", "queued": more
    slices to go, "refused": ZeroGPU refused the call, the job still queued), ``line`` says it
    for the user."""

    job_id: str
    state: str
    line: str


class Slices:
    """Runs builds a slice per request. ``gpu``: a decorator maker like ``spaces.GPU``
    (``gpu(duration=fn)(function)``; ``fn`` gets the function's arguments and returns
    seconds), or None: slices run here, unwrapped."""

    def __init__(self, store, gpu: Callable | None = None):
        self.store = store
        self._measured: dict[str, dict] = {}  # job id → leaves done, leaves total, seconds per leaf
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._cap_after_refusal: float | None = None  # set by an illegal duration
        run = self._gpu_function()
        self.gpu_call = gpu(duration=gpu_duration)(run) if gpu is not None else run

    # --- sizing ---------------------------------------------------------------------------
    def cap(self) -> float:
        cap = slice_cap()
        return min(cap, self._cap_after_refusal) if self._cap_after_refusal else cap

    def slice_seconds(self, job_id: str) -> int:
        """The duration the next slice of ``job_id`` asks for: from the work left and the
        pace measured in its previous slice, capped (the cap when nothing is measured)."""
        cap = self.cap()
        seen = self._measured.get(job_id)
        if not seen or not seen.get("seconds_per_leaf"):
            return max(MIN_SECONDS, math.floor(cap))
        left = max(seen["leaves_total"] - seen["leaves_done"], 0) + 1  # + 1: the merges after the last leaf
        need = slice_margin(cap) + SAFETY * seen["seconds_per_leaf"] * left
        return max(MIN_SECONDS, math.ceil(min(cap, need)))

    def _learn(self, job_id: str, result: dict) -> None:
        if result.get("outcome") != tasks.SLICE_ENDED:
            self._measured.pop(job_id, None)
            return
        seen = self._measured.setdefault(job_id, {})
        seen.update(leaves_done=result["leaves_done"], leaves_total=result["leaves_total"])
        if result.get("leaves_computed"):  # a slice of merges only keeps the pace measured before
            seen["seconds_per_leaf"] = result["compute_seconds"] / result["leaves_computed"]

    # --- the GPU function -----------------------------------------------------------------
    def _gpu_function(self):
        store = self.store

        def build_slice(job_id: str, seconds: int) -> dict:
            """One slice of a build (in ZeroGPU's forked GPU worker): ids in, a small dict out."""
            started = time.monotonic()
            deadline = started + max(seconds - slice_margin(seconds), 0.0)
            report: dict = {}
            try:
                outcome = tasks.run_build(store, job_id, deadline=deadline, report=report)
            except tasks.Retry as exc:  # never raise out of a GPU function: ZeroGPU keeps only the class name
                outcome = f"retry later: {exc}"
            return {"outcome": outcome, "seconds": time.monotonic() - started, **report}

        return build_slice

    # --- driving --------------------------------------------------------------------------
    def recover(self) -> None:
        """Put back to queued the jobs whose slice died (its lease ran out): no worker thread
        does it here."""
        for job in self.store.jobs.stale_running():
            if self.store.jobs.recover(job) == "failed":
                tasks._drop_upload(self.store, job)

    def next_job(self, owner: str | None = None) -> dict | None:
        """The oldest queued build of ``owner`` (documents they added), of anyone without login."""
        sql = "SELECT * FROM jobs WHERE state = 'queued' AND kind = 'build'"
        params: list = []
        if owner:
            sql += " AND document_id IN (SELECT document_id FROM document_owners WHERE owner = ?)"
            params.append(owner)
        rows = list(self.store.db.query(sql + " ORDER BY created LIMIT 1", params))
        return rows[0] if rows else None

    def run_next(self, owner: str | None = None) -> SliceOutcome | None:
        """Run the next slice of ``owner``'s oldest unfinished build: what became of it, or
        None when there was nothing to do (no build queued, or its slice is running)."""
        self.recover()
        job = self.next_job(owner)
        if job is None:
            return None
        return self.run_slice(job["id"])

    def run_slice(self, job_id: str) -> SliceOutcome | None:
        """One slice of ``job_id`` (None when one is already running here, or it is not queued)."""
        with self._lock:
            if job_id in self._in_flight:
                return None
            self._in_flight.add(job_id)
        try:
            job = self.store.jobs.get(job_id)
            if job["state"] != "queued":
                return None
            name = job["file_name"] or job["document_id"][:12]
            seconds = self.slice_seconds(job_id)
            try:
                result = self.gpu_call(job_id, seconds)
            except Exception as exc:
                kind = refusal_kind(exc)
                if kind is None:
                    log.exception("a build slice of job %s failed", job_id[:8])
                    line = (
                        f"the build slice failed ({type(exc).__name__}: {exc}); it is tried again on the next request"
                    )
                else:
                    if kind == ILLEGAL_DURATION:
                        self._cap_after_refusal = max(MIN_SECONDS, seconds // 2)
                    line = refusal_line(kind, exc, seconds, int(self.cap()))
                    log.warning("job %s: %s (%s)", job_id[:8], kind, exc)
                self._note(job_id, line)
                return SliceOutcome(job_id, "refused", f"✗ {name}: {line}")
            self._learn(job_id, result)
            return self._describe(name, job_id, result)
        finally:
            with self._lock:
                self._in_flight.discard(job_id)

    def _note(self, job_id: str, line: str) -> None:
        """Show a refusal in the job's message (the library table) while it stays queued."""
        self.store.db.execute(
            "UPDATE jobs SET message = ?, updated = ? WHERE id = ? AND state = 'queued'",
            [line[:300], dbmod.now(), job_id],
        )

    def _describe(self, name: str, job_id: str, result: dict) -> SliceOutcome:
        job = self.store.jobs.get(job_id)
        if job["state"] == "done":
            return SliceOutcome(job_id, "done", f"✓ {name}: {job['message']}")
        if job["state"] == "failed":
            return SliceOutcome(job_id, "failed", f"✗ {name}: {job['error']}")
        if result.get("outcome") == tasks.SLICE_ENDED:
            return SliceOutcome(job_id, job["state"], f"{name}: {job['message']}")
        return SliceOutcome(job_id, job["state"], f"{name}: {job['message']} ({result.get('outcome')})")


def gpu_duration(job_id: str, seconds: int) -> int:
    """The duration ``spaces.GPU`` asks for a slice: the seconds :meth:`Slices.slice_seconds`
    sized from the work left (called with the GPU function's own arguments)."""
    return int(seconds)
