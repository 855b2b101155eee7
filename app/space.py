"""The app on a Hugging Face Space with ZeroGPU: whether this is one, and the decorator that
lends the GPU to a function for one call (``spaces.GPU``), a no-op elsewhere."""

from __future__ import annotations

from collections.abc import Callable

from .settings import load_settings


def _identity(fn):
    return fn


def on_zero_gpu() -> bool:
    """A ZeroGPU Space: the GPU is lent only inside requests to functions wrapped by spaces.GPU."""
    return load_settings().space.zero_gpu


def spaces_gpu(duration: int | None = None) -> Callable:
    """``spaces.GPU(duration=…)`` when the ``spaces`` package is importable (a ZeroGPU Space),
    else a no-op decorator."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return _identity
    seconds = duration or load_settings().space.gpu_seconds
    return spaces.GPU(duration=seconds)
