"""Helpers for the store / worker tests: a tiny model folder, PDFs made with pypdf, a
private redis-server, worker processes."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from benchmarks.evaluation.pdf import text_pdf  # noqa: F401  (shared with the benchmarks; the tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
FAST = {"significance": "uncalibrated"}


def story(n: int = 30, seed: str = "") -> str:
    return f"The lighthouse keeper {seed} was named Ada. She kept the lamp burning.\n\n" * n


def blank_pdf(pages: int = 2) -> bytes:
    """Pages without any text layer (like a scan)."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(612, 792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(home: Path, **extra) -> dict:
    env = {"HOMER_HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_worker(store_root: Path, home: Path, log: Path, workers: int = 1, **env) -> subprocess.Popen:
    """A real worker process (``python -m app.worker``) on the store."""
    return subprocess.Popen(
        [sys.executable, "-m", "app.worker", "--store", str(store_root), "-w", str(workers), "-v"],
        cwd=ROOT,
        env=subprocess_env(home, **env),
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen, sig=signal.SIGINT, timeout: float = 20) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(predicate, timeout: float = 120, poll: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def redis_url():
    """A private redis-server on a free loopback port in a temp folder; skipped only where no
    redis-server binary exists (``bash run.sh`` installs one)."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        pytest.skip("no redis-server binary on this machine (bash run.sh installs the Debian package)")
    import redis

    folder = tempfile.mkdtemp(prefix="homer-redis-")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            folder,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        wait_until(lambda: _ping(client), timeout=20, what="redis-server to start")
        yield url
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def _ping(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def bad_uploads(folder: Path) -> list[tuple[Path, str]]:
    """Files every upload path must refuse, with a word of the expected reason."""
    empty = folder / "empty.txt"
    empty.write_bytes(b"")
    binary = folder / "photo.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00" * 50)
    broken = folder / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\n garbage")
    return [(empty, "the file is empty"), (binary, "binary"), (broken, "corrupt or unreadable")]


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started (VmHWM: per address space, so a
    child does not inherit the parent's peak the way ru_maxrss does across fork and exec —
    a test process of 1.7 GB would make every child look that big)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def consumer_in_process(store, **kwargs):
    """Thread workers inside the test process, as the app runs them (``start_consumer_in_process``
    installs signal handlers: they are put back afterwards); yields the build queue."""
    from app.worker import start_consumer_in_process

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    handle = start_consumer_in_process(store, **kwargs)
    try:
        yield handle.queue
    finally:
        handle.stop()
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.fixture(scope="module")
def model():
    """The tiny Llama the store tests build their caches with (import it as a fixture)."""
    from conftest import tiny_model

    return tiny_model("llama", window=1024)


@pytest.fixture(scope="module")
def built(model):
    """(text, a real HOMER cache of it) for the store tests (import it as a fixture)."""
    from conftest import tiny_tokenizer

    from homer import HomerConfig, build_document_cache

    text = story()
    return text, build_document_cache(model, tiny_tokenizer(), text, HomerConfig(significance="uncalibrated"))
