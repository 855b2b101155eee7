"""Where HOMER keeps its local data: converted models, calibration tables, caches.

``HOMER_HOME`` wins; otherwise ``/data/homer`` when ``/data`` exists (a Hugging Face Space
with persistent storage), otherwise the user's data folder.
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
    elif Path("/data").is_dir() and os.access("/data", os.W_OK):
        root = Path("/data") / "homer"
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
