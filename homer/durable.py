"""Small helpers shared by everything that writes files that must survive a crash (homer/
imports nothing from app/ or storage/, so they live here and those import them).

The settings read from the environment are the app's (:mod:`app.settings`): the library
takes its limits as arguments."""

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
