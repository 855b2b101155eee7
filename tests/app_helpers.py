"""Running the app (``python app.py``) as a subprocess for end-to-end and browser tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_app(home: Path, model_dir: Path, *extra: str, env: dict | None = None, timeout: float = 180.0):
    """Start the app on a free port with ``HOMER_HOME=home``; yields its URL; stops it with
    SIGINT (then SIGKILL if it hangs)."""
    port = free_port()
    log = open(home.parent / f"{home.name}-app.log", "w")
    environment = {
        **os.environ,
        "HOMER_HOME": str(home),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    environment.pop("SPACE_ID", None)
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "app.py"),
            "--model",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ],
        cwd=ROOT,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the app exited with {process.returncode}:\n{Path(log.name).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the app did not start in {timeout} s:\n{Path(log.name).read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        log.close()


def app_log(home: Path) -> str:
    path = home.parent / f"{home.name}-app.log"
    return path.read_text() if path.exists() else ""


def add_ready_document(store, model, tokenizer, data: bytes, name: str, owner: str | None = None) -> dict:
    """A document ingested into ``store`` (under ``owner``'s name for it, with login) with a
    real HOMER cache of ``model``, as a finished build leaves it; returns the document row."""
    from app import library
    from app.ingest import add_to_store, ingest_bytes
    from homer import HomerConfig, build_document_cache

    doc = add_to_store(store, ingest_bytes(data, name, tokenizer))
    library.add_owner(store, doc["id"], owner, name)
    if not store.caches(doc["id"]):
        cache = build_document_cache(
            model,
            tokenizer,
            store.document_text(doc["id"]),
            HomerConfig(significance="uncalibrated"),
            metadata={"document_id": doc["id"]},
        )
        store.save_cache(doc["id"], cache)
    return doc
