"""The store's ``tmp/`` folder: every temp file is named after its writer (``host-pid``), so
the leftovers of a writer that stopped are known as soon as it is gone.

Part of :class:`storage.store.Store` (a mixin: it uses the store's ``root`` and ``tmp_dir``)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from .errors import StoreError
from .files import entries, host_name, older_than, owner_token
from .ids import is_link, remove_file, remove_tree

STALE_TEMP_SECONDS = 3600.0


class TempFilesMixin:
    """Staging paths in ``tmp/`` and the removal of stopped writers' leftovers."""

    def staging_path(self, suffix: str = ".safetensors") -> Path:
        """A fresh temp path in the store (same file system, named after its writer so a
        crashed writer's leftovers are found by :meth:`check`)."""
        return self.tmp_dir / f"{uuid.uuid4().hex}.{owner_token().replace(':', '-')}{suffix}"

    def remove_stale_temp_files(self) -> int:
        """Delete temp files whose writer is gone (a worker restarting after a crash)."""
        removed = 0
        for path in entries(self.tmp_dir):
            if stale_temp(path):
                try:
                    remove_tree(self.root, path) if path.is_dir() and not is_link(path) else remove_file(
                        self.root, path
                    )
                    removed += 1
                except (StoreError, OSError):
                    pass
        return removed


def stale_temp(path: Path) -> bool:
    """A temp file is stale when its writer (``host-pid`` in its name) is gone: no such
    process on this host, a zombie, or a newer process that reused the pid (it started after
    the file was last written) — known at once, not after a timeout. A name without a writer
    of this host (another machine on a shared store) is stale after an hour."""
    host = host_name()
    try:
        written = os.lstat(path).st_mtime
    except FileNotFoundError:
        return False
    for part in path.name.split("."):
        if part.startswith(f"{host}-"):
            pid = part[len(host) + 1 :]
            if pid.isdigit():
                return not _writer_alive(int(pid), written)
    return older_than(path, STALE_TEMP_SECONDS)


def _writer_alive(pid: int, written: float) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return process.create_time() <= written + 1.0  # a process started later only reused the pid
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # not ours to inspect: assume it is alive
        return True
