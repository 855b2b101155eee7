"""Small helpers shared by everything that writes files that must survive a crash, and by
the settings read from the environment (homer/ imports nothing from app/ or storage/, so
they live here and those import them)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def env_number(name: str, default: float) -> float:
    """A positive number from the environment variable ``name`` (``default`` when unset or
    empty); ValueError with a one-line reason otherwise."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if number <= 0:
        raise ValueError(f"{name} must be positive, not {value!r}")
    return number
