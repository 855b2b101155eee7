"""Where HOMER keeps its local data: converted models, calibration tables, caches.

``HOMER_HOME`` wins, otherwise the user's data folder. A Hugging Face Space has no
persistent ``/data`` disk any more (2026): its disk is ephemeral, and what must outlive a
restart lives in a Storage Bucket mounted as a volume — set ``HOMER_HOME`` to a folder in it.
:func:`home_persistence` tells which of the two the app is using.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def homer_home() -> Path:
    """The root folder for everything HOMER stores on this machine."""
    env = os.environ.get("HOMER_HOME")
    if env:
        root = Path(env).expanduser()
    else:
        root = Path(platformdirs.user_data_dir("homer-chat", appauthor=False))
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    """Converted model folders (e.g. the embedded GGUF model as safetensors)."""
    path = homer_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def calibration_dir() -> Path:
    """Calibration bias tables, one safetensors file per (model, RoPE scaling, M)."""
    path = homer_home() / "calibration"
    path.mkdir(parents=True, exist_ok=True)
    return path


# Mounts that never outlive the machine: a folder on one of them is as ephemeral as a Space's disk.
EPHEMERAL_FILESYSTEMS = {"tmpfs", "ramfs", "overlay", "devtmpfs"}


def _mount_of(path: Path) -> tuple[Path, str] | None:
    """The nearest mount point above ``path`` other than ``/`` and its file-system type (from
    /proc/mounts where it exists), or None."""
    types = {}
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3:
                    types[fields[1].replace("\\040", " ")] = fields[2]
    except OSError:
        pass
    for folder in [path, *path.parents]:
        if folder == Path(folder.anchor):
            return None
        if os.path.ismount(folder):
            return folder, types.get(str(folder), "")
    return None


def home_persistence(root: Path | None = None) -> tuple[bool, str]:
    """``(persistent, one line for the UI)`` about the HOMER home. Off a Space the home is a
    folder on this machine's own disk: persistent. On a Space (``SPACE_ID`` set) it persists
    only inside a mounted volume — a Storage Bucket — that is not a RAM or overlay file system."""
    root = Path(root) if root is not None else homer_home()
    if not os.environ.get("SPACE_ID"):
        return True, "The library is kept on this machine's disk."
    mount = _mount_of(root.resolve())
    if mount is not None and mount[1] not in EPHEMERAL_FILESYSTEMS:
        return True, f"The library is kept in the volume mounted at {mount[0]} (persistent)."
    return False, (
        "This Space's disk is ephemeral: the library vanishes when the Space restarts. Mount a "
        "Storage Bucket as a volume and set HOMER_HOME to a folder in it to keep it."
    )
