"""One answer from the model at a time, whichever door the question comes through.

The UI's ``/ask`` event (and ``gradio_client`` calls of it) runs in gradio's queue with
``concurrency_id="gpu"``, but an MCP tool or a ``gr.api`` endpoint is not queued: its calls ran
beside each other and beside the UI's, each with its own cache in memory, all slower. Every
function that runs the model to answer wraps itself in :func:`takes_turns` (or the block that
calls the model in :func:`model_turn`): a process-wide semaphore of :data:`TURNS` that all
doors share, so the calls take turns whatever their door. Builds are not answers: they run in
their own lanes (the build queue's workers) and are not counted here.

A semaphore, not a lock: gradio runs each step of a streaming (generator) handler on a pool
thread of its choosing, so the turn may be given back by another thread than took it. Each
turn is logged (``INFO``, this module's logger) with when it began and ended on the process's
monotonic clock and how long it waited, so a log shows that turns never overlap.

A turn is not re-entrant: wrap the outermost function of a door (the one gradio calls), never
also a function it calls, or the call waits for itself."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator

TURNS = 1  # the model answers one question at a time (the UI queue's concurrency_limit too)

PAUSE_SECONDS = 60.0  # the longest a build waits for answers at one layer (then it goes on beside them)

log = logging.getLogger(__name__)
_turns = threading.BoundedSemaphore(TURNS)
_answering = threading.Condition()
_active = 0  # turns being answered now
_local = threading.local()


def _begin() -> None:
    global _active
    with _answering:
        _active += 1
    _local.depth = getattr(_local, "depth", 0) + 1


def _end() -> None:
    global _active
    with _answering:
        _active -= 1
        _answering.notify_all()
    _local.depth = max(getattr(_local, "depth", 1) - 1, 0)


def pause_for_answers(limit: float = PAUSE_SECONDS) -> float:
    """A build's yield point (called before every layer it runs, :mod:`homer.tree`): wait
    while a question is being answered, at most ``limit`` seconds; returns the seconds waited.
    On a CPU the build and the answer share the same cores, so the answer gets them all — its
    first token does not wait for a whole leaf, and the build pauses only for the answer's
    length. A thread that is itself answering never waits here (a build run inside a request)."""
    if getattr(_local, "depth", 0):
        return 0.0
    began = time.monotonic()
    with _answering:
        if _active:
            _answering.wait_for(lambda: _active == 0, timeout=limit)
    return time.monotonic() - began


@contextlib.contextmanager
def model_turn(door: str) -> Iterator[None]:
    """Wait for the model's turn, hold it while the block runs, give it back however it ends.
    ``door`` names the caller in the log line (``"ui ask"``, ``"mcp ask"``)."""
    asked = time.monotonic()
    _turns.acquire()
    began = time.monotonic()
    _begin()
    try:
        yield
    finally:
        ended = time.monotonic()
        _end()
        _turns.release()
        log.info("model turn %s: began %.6f ended %.6f (waited %.3f s)", door, began, ended, began - asked)


def takes_turns(door: str) -> Callable[[Callable], Callable]:
    """Decorator: the whole call (for a generator: from its first step until it is finished
    or closed) runs in one :func:`model_turn`. It keeps the function's signature, type hints
    and docstring (gradio reads them for the API and the MCP tool list) and, for a generator,
    stays a generator function (gradio streams it). Put it outside ``spaces.GPU`` so that a
    call waits for its turn before it asks ZeroGPU for the GPU."""

    def wrap(fn: Callable) -> Callable:
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def streamed(*args, **kwargs):
                with model_turn(door):
                    yield from fn(*args, **kwargs)

            return streamed

        @functools.wraps(fn)
        def called(*args, **kwargs):
            with model_turn(door):
                return fn(*args, **kwargs)

        return called

    return wrap
