"""Builds in slices (ZeroGPU: the GPU is lent to one short call at a time, from a user's
request): a build given a deadline stops right after a checkpoint and the next call goes on;
a build run as many slices gives the one-shot cache bit for bit (torch.equal on every
tensor), every slice advancing it; a ZeroGPU refusal between slices loses nothing and the
next request goes on; the duration each slice asks for stays under the cap and shrinks as
the work left does; and the app's request-driven path (upload, then library refreshes)
finishes a build across several requests.

The refusals are the exceptions the ``spaces`` package (0.51.3) raises:
``spaces.zero.gradio.error(title, message)``, i.e. ``gradio.Error(message, title=title,
print_exception=False)``, with the titles and messages of ``spaces/zero/client.py``. The
real function is used when ``spaces`` is importable; otherwise (it is not a requirement of
this project) :func:`zero_gpu_error` builds the same ``gradio.Error`` the same way."""

from __future__ import annotations

import hashlib
import pickle
import threading
import time

import pytest
import torch
from conftest import random_ids, tiny_model
from store_helpers import story

from app import slices as slicing
from app import tasks
from app.slices import Slices
from app.worker import queue_for
from homer import BuildSliceEnded, HomerConfig, build_cache, build_document_cache
from homer.checkpoints import DirectoryCheckpointer
from homer.prompting import default_prompt
from storage import Store

SETTINGS = {"significance": "uncalibrated", "warmup_layers": 0, "max_chunk_len": 192}  # 32 leaves of story(30)
QUOTA_MESSAGE = (
    "You have exceeded your free ZeroGPU quota (60s requested vs. 12s left). "
    "Try again in 0:14:28. "
)  # as spaces/zero/client.py words it
ILLEGAL_MESSAGE = "The requested GPU duration (60s) is larger than the maximum allowed"


def zero_gpu_error(title: str, message: str) -> Exception:
    """The exception ``spaces`` raises for a refused call (its own function when installed)."""
    try:
        from spaces.zero.gradio import error  # type: ignore[import-not-found]
    except ImportError:
        import gradio as gr

        return gr.Error(message, title=title, print_exception=False)  # what spaces.zero.gradio.error builds
    return error(title, message)


def assert_same_cache(a, b) -> None:
    ta, tb = a.tensors(), b.tensors()
    assert ta.keys() == tb.keys()
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and torch.equal(ta[name], tb[name]), name


# --- the engine -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deep():
    return tiny_model("llama", layers=8, window=64)


@pytest.mark.parametrize("significance", ["uncalibrated", "random"])
def test_a_build_in_slices_is_the_one_shot_build(deep, tmp_path, significance):
    """A spent deadline: every call computes one leaf or merge, checkpoints it and stops."""
    prefix, context, suffix = random_ids(4, 1), random_ids(32 * 20, 2), random_ids(3, 3)
    cfg = HomerConfig(significance=significance, warmup_layers=1, span="token")
    one_shot = build_cache(deep, prefix, context, suffix, cfg)
    checkpoints = DirectoryCheckpointer(tmp_path / "checkpoints")
    ends = []
    while True:
        try:
            sliced = build_cache(deep, prefix, context, suffix, cfg, checkpoints=checkpoints, deadline=time.monotonic())
            break
        except BuildSliceEnded as end:
            ends.append(end)
    assert len(ends) == 2 * 32 - 2  # one step per slice; the root's merge ends the last call
    assert [e.steps_done for e in ends] == list(range(1, 2 * 32 - 1))  # every slice advanced
    leaves = [e.leaves_done for e in ends]
    assert leaves == sorted(leaves) and leaves[0] == 1 and leaves[-1] == 32 and ends[0].leaves_total == 32
    assert all(e.leaves_computed <= 1 and e.compute_seconds >= 0 for e in ends)
    assert str(ends[11]).startswith(f"read {ends[11].leaves_done}/32 leaves")
    assert_same_cache(one_shot, sliced)


def test_a_stop_callback_slices_too_and_a_deadline_needs_checkpoints(deep, tmp_path):
    prefix, context, suffix = random_ids(4, 1), random_ids(32 * 20, 2), random_ids(3, 3)
    cfg = HomerConfig(significance="uncalibrated", warmup_layers=1, span="token")
    with pytest.raises(ValueError, match="needs checkpoints"):
        build_cache(deep, prefix, context, suffix, cfg, deadline=time.monotonic())
    checkpoints = DirectoryCheckpointer(tmp_path / "checkpoints")
    slices = 0
    while True:
        asked = []

        def stop() -> bool:  # asked after every step this call computes: ten steps per slice
            asked.append(1)
            return len(asked) >= 10

        try:
            sliced = build_cache(deep, prefix, context, suffix, cfg, checkpoints=checkpoints, deadline=stop)
            break
        except BuildSliceEnded as end:
            slices += 1
            assert end.steps_done == 10 * slices
    assert slices == 6
    assert_same_cache(build_cache(deep, prefix, context, suffix, cfg), sliced)
    far = build_cache(
        deep,
        prefix,
        context,
        suffix,
        cfg,
        checkpoints=DirectoryCheckpointer(tmp_path / "other"),
        deadline=time.monotonic() + 3600,
    )  # a deadline never reached: one call
    assert far.metadata["leaves_computed"] == "32"


# --- the app: slices of a queued job ----------------------------------------------------
class FakeGPU:
    """Stands in for ``spaces.GPU``: ``gpu(duration=fn)(task)``; each call asks ``fn`` for
    its duration with the task's arguments (as spaces does), checks that the arguments
    pickle (spaces pickles them into a forked worker), and raises ``refuse[i]`` instead of
    running call ``i`` when one is given."""

    def __init__(self, refuse: dict[int, Exception] | None = None):
        self.durations: list[int] = []
        self.calls = 0
        self.refuse = refuse or {}

    def __call__(self, duration):
        def wrap(task):
            def handler(*args, **kwargs):
                self.calls += 1
                seconds = duration(*args, **kwargs) if callable(duration) else duration
                self.durations.append(seconds)
                pickle.dumps((args, kwargs))
                if self.calls in self.refuse:
                    raise self.refuse[self.calls]
                result = self.run(task, *args, **kwargs)
                pickle.dumps(result)
                return result

            return handler

        return wrap

    def run(self, task, *args, **kwargs):
        return task(*args, **kwargs)


@pytest.fixture
def slow_slices(configure):
    """Slices of 2 s, 0.5 s of them kept as margin; every build step takes 0.1 s at least."""
    configure(builds={"gpu_slice_seconds": 2, "gpu_slice_margin": 0.5, "test_step_delay": 0.1, "job_lease_seconds": 5})
    torch.set_num_threads(1)


def one_shot_cache(model_dir, store, document_id: str):
    from homer.models import load_model

    model, tokenizer = load_model(str(model_dir))
    return build_document_cache(
        model, tokenizer, store.document_text(document_id), HomerConfig(**SETTINGS), prompt=default_prompt(tokenizer)
    )


def checkpoint_files(store) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((store.root / "checkpoints").glob("*/leaves-*.safetensors"))}


@pytest.mark.slow
def test_a_queued_build_finishes_in_slices_bit_identical(tmp_path, model_dir, slow_slices):
    store = Store(tmp_path / "store")
    gpu = FakeGPU()
    slices = Slices(store, gpu=gpu)
    job = queue_for(store).submit_file(story(30).encode(), "keeper.txt", str(model_dir), SETTINGS)
    seen = []
    for _ in range(40):
        outcome = slices.run_next()
        assert outcome is not None and outcome.job_id == job["id"]
        row = store.jobs.get(job["id"])
        seen.append((outcome.state, row["progress"], row["message"]))
        if outcome.state == "done":
            break
        assert outcome.state == "queued" and row["state"] == "queued", (outcome, row)
        assert "leaves" in row["message"] and row["message"].endswith("continues on the next request")
        assert outcome.line == f"keeper.txt: {row['message']}"
    assert seen[-1][0] == "done", seen
    assert len(seen) >= 3, seen  # the bar: at least three slices
    progress = [p for _, p, _ in seen]
    assert all(a < b for a, b in zip(progress, progress[1:])), seen  # every slice advanced the build
    assert seen[0][2].startswith("read ") and "/32 leaves" in seen[0][2]
    assert all(d <= 2 for d in gpu.durations) and gpu.durations[0] == 2, gpu.durations  # capped; first: the cap
    done = store.jobs.get(job["id"])
    assert done["attempts"] == 1, done  # slices do not count as attempts (the last one claims it)
    assert "in a last slice of" in done["message"] and "(read in slices; this last one computed" in done["message"]
    assert slices.run_next() is None  # nothing left to do
    cache = store.load_cache(done["cache_id"])
    assert cache.metadata["num_leaves"] == "32"
    assert_same_cache(one_shot_cache(model_dir, store, done["document_id"]), cache)
    assert not (store.root / "checkpoints" / done["cache_id"]).exists()  # removed once indexed


@pytest.mark.slow
def test_a_refusal_midway_loses_nothing_and_the_next_request_goes_on(tmp_path, model_dir, slow_slices):
    store = Store(tmp_path / "store")
    refusals = {
        2: zero_gpu_error(slicing.QUOTA, QUOTA_MESSAGE),
        4: zero_gpu_error(slicing.ILLEGAL_DURATION, ILLEGAL_MESSAGE),
    }
    gpu = FakeGPU(refuse=refusals)
    slices = Slices(store, gpu=gpu)
    job = queue_for(store).submit_file(story(30).encode(), "keeper.txt", str(model_dir), SETTINGS)

    first = slices.run_next()
    assert first.state == "queued"
    before, kept = store.jobs.get(job["id"]), checkpoint_files(store)
    assert kept and 0 < before["progress"] < 1

    refused = slices.run_next()  # call 2: "quota exceeded", raised by the GPU wrapper before the slice ran
    after = store.jobs.get(job["id"])
    assert refused.state == "refused" and refused.job_id == job["id"]
    assert refused.line == (
        "✗ keeper.txt: GPU quota used up for now (try again in 0:14:28): the build continues on your next visit"
    )
    assert after["state"] == "queued" and after["progress"] == before["progress"]
    assert after["attempts"] == before["attempts"] and after["message"] in refused.line
    assert checkpoint_files(store) == kept  # nothing lost

    third = slices.run_next()  # goes on from the checkpoints
    assert third.state in ("queued", "done") and store.jobs.get(job["id"])["progress"] > before["progress"]

    illegal = slices.run_next()  # call 4: "illegal duration": later slices ask for half
    assert illegal.state == "refused" and "refused a 2 s slice as too long" in illegal.line
    assert store.jobs.get(job["id"])["state"] == "queued"
    while (outcome := slices.run_next()).state != "done":
        assert outcome.state == "queued"
    assert all(d <= 1 for d in gpu.durations[4:]) and gpu.durations[:4] == [2, 2, 2, 2], gpu.durations
    done = store.jobs.get(job["id"])
    assert done["state"] == "done" and done["attempts"] == 1
    assert_same_cache(one_shot_cache(model_dir, store, done["document_id"]), store.load_cache(done["cache_id"]))


@pytest.mark.slow
def test_a_slice_that_died_on_the_gpu_is_recovered_and_goes_on(tmp_path, model_dir, slow_slices):
    """ "ZeroGPU worker error": the GPU task died with the job claimed; once its lease has run
    out the next request puts it back and goes on from the checkpoints."""
    store = Store(tmp_path / "store")
    job = queue_for(store).submit_file(story(30).encode(), "keeper.txt", str(model_dir), SETTINGS)

    aborted = zero_gpu_error(slicing.WORKER_ERROR, "GPU task aborted")  # made first: importing gradio takes a while

    class DiesMidway(FakeGPU):
        def run(self, task, job_id, seconds):
            result = task(job_id, seconds)
            if self.calls == 2:  # the slice ran, then its worker died with the job claimed
                assert store.jobs.claim(job_id, "dead-gpu-worker", 3.0)
                raise aborted
            return result

    slices = Slices(store, gpu=DiesMidway())
    assert slices.run_next().state == "queued"
    died = slices.run_next()
    assert died.state == "refused" and "the GPU task stopped (GPU task aborted)" in died.line
    assert store.jobs.get(job["id"])["state"] == "running"
    assert slices.run_next() is None  # its lease still runs: no second slice of the same job
    time.sleep(3.2)
    while (outcome := slices.run_next()).state != "done":
        assert outcome.state == "queued"
    done = store.jobs.get(job["id"])
    assert_same_cache(one_shot_cache(model_dir, store, done["document_id"]), store.load_cache(done["cache_id"]))


def test_one_slice_of_a_job_at_a_time(tmp_path, model_dir, slow_slices):
    store = Store(tmp_path / "store")
    entered, release = threading.Event(), threading.Event()

    def held(duration):
        def wrap(task):
            def handler(job_id, seconds):
                entered.set()
                release.wait(30)
                return task(job_id, seconds)

            return handler

        return wrap

    slices = Slices(store, gpu=held)
    queue_for(store).submit_file(story(30).encode(), "keeper.txt", str(model_dir), SETTINGS)
    results = []
    first = threading.Thread(target=lambda: results.append(slices.run_next()))
    first.start()
    assert entered.wait(30)
    assert slices.run_next() is None  # the same job's slice is in flight
    release.set()
    first.join(60)
    assert results and results[0].state == "queued"


def test_the_duration_is_capped_and_shrinks_with_the_work_left(tmp_path, configure):
    configure(builds={"gpu_slice_seconds": 60, "gpu_slice_margin": 10})
    slices = Slices(Store(tmp_path / "store"))
    assert slices.slice_seconds("job") == 60  # nothing measured yet: the cap
    asked = []
    for done in range(0, 1025, 64):  # 1024 leaves at 0.5 s a leaf (merges included)
        slices._learn(
            "job",
            {
                "outcome": tasks.SLICE_ENDED,
                "leaves_done": done,
                "leaves_total": 1024,
                "leaves_computed": 64,
                "compute_seconds": 32.0,
            },
        )
        asked.append(slices.slice_seconds("job"))
    assert all(1 <= s <= 60 for s in asked) and asked[0] == 60
    assert asked == sorted(asked, reverse=True) and asked[-1] < 60, asked  # shrinks as work is done
    assert asked[-1] == 11  # margin 10 s + 1.25 × 0.5 s for the last merges
    assert slicing.gpu_duration("job", asked[-1]) == 11
    configure(builds={"gpu_slice_seconds": 20})
    assert slices.slice_seconds("job") <= 20
    slices._learn("job", {"outcome": "done"})
    assert slices.slice_seconds("job") == 20  # a new build of it measures again


def test_refusals_read_plainly():
    quota = zero_gpu_error(slicing.QUOTA, QUOTA_MESSAGE)
    assert slicing.refusal_kind(quota) == slicing.QUOTA
    assert slicing.refusal_kind(zero_gpu_error(slicing.ILLEGAL_DURATION, ILLEGAL_MESSAGE)) == slicing.ILLEGAL_DURATION
    assert slicing.refusal_kind(ValueError(ILLEGAL_MESSAGE)) == slicing.ILLEGAL_DURATION  # an error without a title
    assert slicing.refusal_kind(RuntimeError("disk full")) is None
    unsigned = zero_gpu_error(slicing.QUOTA, "Space app has reached its GPU limit. Try again later.")
    assert (
        slicing.refusal_line(slicing.QUOTA, unsigned, 60, 60)
        == "GPU quota used up for now: the build continues on your next visit"
    )
    for title in (slicing.PENDING, slicing.QUEUE_TIMEOUT, slicing.CLIENT_ERROR):
        line = slicing.refusal_line(title, zero_gpu_error(title, "x"), 60, 60)
        assert "continues on the next request" in line


# --- the app's request-driven path ------------------------------------------------------
@pytest.mark.e2e
def test_builds_in_requests_go_on_across_library_refreshes(tmp_path, model_dir):
    """``--builds-in-requests`` with 1 s slices: the upload request runs the first slice; each
    call of the library's refresh (``/continue_builds``, which the page's timer calls) runs
    the next, and the library shows the progress until the document is ready."""
    gradio_client = pytest.importorskip("gradio_client")
    from app_helpers import app_log, running_app

    book = tmp_path / "harbour.txt"
    book.write_text(story(30))
    env = {
        "HOMER_GPU_SLICE_SECONDS": "1",
        "HOMER_GPU_SLICE_MARGIN": "0",
        "HOMER_TEST_STEP_DELAY": "0.25",
        "OMP_NUM_THREADS": "1",
    }
    with running_app(tmp_path / "home", model_dir, "--builds-in-requests", env=env) as url:
        client = gradio_client.Client(url, verbose=False)
        status, _ = client.predict([gradio_client.handle_file(str(book))], api_name="/upload")
        assert "harbour.txt: queued" in status and "leaves" in status and "goes on reading" in status, status
        rows = client.predict(api_name="/library")["data"]
        assert rows[0][1].startswith("queued · read ") and "continues on the next request" in rows[0][1], rows
        refreshes, lines = 0, []
        while refreshes < 60:
            lines.append(client.predict(api_name="/continue_builds"))
            refreshes += 1
            row = client.predict(api_name="/library")["data"][0]
            if row[1] == "ready":
                break
        assert row[1] == "ready", (row, lines, app_log(tmp_path / "home")[-3000:])
        assert refreshes >= 2 and lines[-1].startswith("✓ harbour.txt: built "), lines
        document_id = hashlib.sha256(book.read_bytes()).hexdigest()
        assert row[7] == document_id[:12]
        print(f"{refreshes} refreshes after the upload: {lines}")
        unchanged = client.predict(api_name="/continue_builds")  # nothing left: the status stays as it is
        assert unchanged in (None, "", {"__type__": "update"}), unchanged
