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

log = logging.getLogger(__name__)
_turns = threading.BoundedSemaphore(TURNS)


@contextlib.contextmanager
def model_turn(door: str) -> Iterator[None]:
    """Wait for the model's turn, hold it while the block runs, give it back however it ends.
    ``door`` names the caller in the log line (``"ui ask"``, ``"mcp ask"``)."""
    asked = time.monotonic()
    _turns.acquire()
    began = time.monotonic()
    try:
        yield
    finally:
        ended = time.monotonic()
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
