"""Small file helpers: checksums, fsync'ed atomic installs, owner tokens for temp names, and
walking the store's folders without following links (for the consistency check)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from homer.durable import fsync_dir  # noqa: F401  (re-exported: the store imports it from here)

from .ids import is_link


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def host_name() -> str:
    """This machine's name without dots (it is embedded in temp file names)."""
    return socket.gethostname().replace(".", "_").replace(":", "_") or "host"


def owner_token() -> str:
    """``host:pid`` — who holds a job, a lock or a temp file."""
    return f"{host_name()}:{os.getpid()}"


def owner_alive(owner: str | None) -> bool | None:
    """Whether the ``host:pid[:thread]`` owner is a live process; None when it runs on another host."""
    import psutil

    if not owner or ":" not in owner:
        return None
    host, pid = owner.split(":")[:2]
    if host != host_name() or not pid.isdigit():
        return None
    return psutil.pid_exists(int(pid))


@contextmanager
def atomic_output(target: Path, temp_dir: Path, prefix: str | None = None):
    """Write ``target`` atomically: yields a binary file opened on a temp name in ``temp_dir``
    (same file system); on success fsync, rename over ``target``, fsync the folder; on any
    error the temp file is removed and ``target`` is untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp_dir.mkdir(parents=True, exist_ok=True)
    prefix = prefix or f"{target.name}.{owner_token().replace(':', '-')}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=temp_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install_file(source, target: Path, temp_dir: Path) -> Path:
    """Copy ``source`` (a path or a readable binary file object) to ``target`` atomically."""
    with atomic_output(target, temp_dir) as out:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        else:
            shutil.copyfileobj(source, out, 1 << 20)
    return target


def write_bytes_atomic(data: bytes, target: Path, temp_dir: Path) -> Path:
    import io

    return install_file(io.BytesIO(data), target, temp_dir)


def older_than(path: Path, seconds: float) -> bool:
    """Whether ``path`` was last modified more than ``seconds`` ago (False when it is gone)."""
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def shown_path(root: Path, path: Path) -> str:
    """``path`` as shown in a report: relative to the store ``root`` when it lies under it."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def entries(folder: Path) -> list[Path]:
    """The entries of a folder (not following links), sorted; none when it is missing."""
    try:
        return sorted(Path(entry.path) for entry in os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []


def newest_mtime(folder: Path) -> float:
    """The latest modification time of a folder or anything in it (links not followed)."""
    newest = 0.0
    for path in [folder, *walk_files(folder)]:
        try:
            newest = max(newest, os.lstat(path).st_mtime)
        except FileNotFoundError:
            pass
    return newest


def walk_files(folder: Path) -> list[Path]:
    """Every non-folder entry below ``folder`` (links included, never followed), sorted."""
    found = []
    for current, folders, files in os.walk(folder, followlinks=False):
        found += [Path(current) / name for name in files]
        found += [Path(current) / name for name in folders if is_link(Path(current) / name)]
    return sorted(found)
