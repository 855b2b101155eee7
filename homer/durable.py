"""Small helpers shared by everything that writes files that must survive a crash, and by
the settings read from the environment — numbers (:func:`env_number`) and yes/no flags
(:func:`env_flag`) — homer/ imports nothing from app/ or storage/, so they live here and
those import them."""

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


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")

# Every yes/no setting of the project (engine, store and app) and who reads it: the app and
# the command lines check them all at start (:func:`check_flags`), so a mistyped value is one
# line then, not a surprise at the first request that reads it. Defaults stay with the readers.
FLAGS = {
    "HOMER_LOCK_MODEL": "app.py: users may not switch the model",
    "HOMER_MCP": "app.py: serve the MCP tools",
    "HOMER_DEEP_READ": "app.tasks: keep leaf states for deep reads",
    "HOMER_CITATIONS": "app.chat: cite passages under answers",
    "HOMER_NOT_FOUND": "app.focus: say when the document does not hold the answer",
    "HOMER_OCR": "homer.reading.formats.ocr: read scanned pages",
    "HOMER_HF_OAUTH": "app.mcp_tools: sign in with Hugging Face",
}


def env_flag(name: str, default: bool) -> bool:
    """A yes/no setting from the environment variable ``name``, parsed one way everywhere:
    1/true/yes/on (any case) are true, 0/false/no/off false, unset or empty ``default``;
    anything else is ValueError with a one-line reason that names the variable (``=0`` must
    never mean yes because the string is non-empty)."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ValueError(f"{name} must be one of {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}, "
                     f"not {os.environ[name].strip()[:40]!r}")


def check_flags() -> None:
    """Parse every setting of :data:`FLAGS`; ValueError (one line, naming the variable) at the
    first that is neither yes nor no."""
    for name in FLAGS:
        env_flag(name, False)
