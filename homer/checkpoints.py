"""Checkpoints of a HOMER build, so a build that is killed, times out or is interrupted
resumes where it stopped (``build_cache(checkpoints=...)``, :mod:`homer.tree`).

The depth-first merge tree (method §6) finishes one subtree after another. Each finished
subtree's node — its tokens' hidden states, positions, ids, sources, carried scores and the
K/V of every layer run so far — is saved under the subtree's leaf range (``leaves-0-7``),
with the state of the build's random generator after it. When a parent is saved its two
children are dropped, so at most one finished node per tree level (plus the one just
finished) is kept: O(log N) nodes. A build given the same checkpoints loads the largest
finished subtrees instead of computing them, and since every later step reads only those
nodes (and the generator state), the final cache is bit for bit the one-shot build's.

Every entry carries the *build digest* (:func:`build_digest`): a hash of everything that
determines the build — token ids, pruning units, resolved settings, scorer (and its bias
table or repeat prompt), model fingerprint, model dtype and device type, torch version — so
a checkpoint of another document, other settings or another model is never used: it is
ignored with a log line. An unreadable, truncated or altered entry (each file carries the
sha256 of its tensors) is ignored with a log line too, and that subtree is built again.

**Stamps.** A checksum anyone can recompute catches damage, not forgery: whoever can write the
folder can alter a node's tensors, recompute the sha256 and have the build resume from them.
A :class:`DirectoryCheckpointer` given a ``secret`` (the app's store passes its per-store
key, kept outside the checkpoint folders) stamps every entry with an HMAC-SHA256 of the
entry's name and metadata — the tensors' sha256 and the build digest included — and on
resume ignores, with a log line, every entry whose stamp is missing (an older, unkeyed
checkpoint) or wrong (forged, or written under another key); that subtree is built again.
Without a secret the folder is trusted as its owner's and only the checksum is checked.

:class:`Checkpointer` is the small storage interface the build uses;
:class:`DirectoryCheckpointer` keeps one safetensors file per entry in a folder, each
written atomically (temp file, fsync, rename, fsync of the folder). The engine never
deletes the folder: its owner does, once the cache is safely stored (the app's store does
it when it indexes the cache) — or call :meth:`DirectoryCheckpointer.clear`.

**Builds in slices** (``build_cache(checkpoints=..., deadline=...)``): a build given a
deadline stops right after the first subtree it checkpoints once the deadline has passed
and raises :class:`BuildSliceEnded`; the next call with the same checkpoints goes on from
there. A host that lends its accelerator for short calls only (a ZeroGPU Space) builds a
long document as a sequence of such slices, with the one-shot cache at the end.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .durable import fsync_dir

log = logging.getLogger(__name__)

FORMAT = "homer-checkpoint"
FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
_KEY = re.compile(r"[a-z0-9][a-z0-9.-]{0,80}")

Entry = tuple[dict[str, torch.Tensor], dict[str, str]]


class CheckpointError(Exception):
    """A checkpoint entry that cannot be used (unreadable, truncated, altered)."""


class BuildSliceEnded(Exception):
    """A build given a ``deadline`` stopped once it was spent, right after a finished subtree
    was checkpointed: call ``build_cache`` again with the same checkpoints to go on.

    ``leaves_done`` of ``leaves_total`` leaves are finished (computed in this call or an
    earlier one), ``steps_done`` of ``steps_total`` leaves and merges; ``leaves_computed``
    leaves were computed in this call, in ``compute_seconds`` (from its first computed step to
    the stop: no model loading, no checkpoint reading)."""

    def __init__(
        self,
        leaves_done: int,
        leaves_total: int,
        steps_done: int,
        steps_total: int,
        leaves_computed: int,
        compute_seconds: float,
    ):
        super().__init__(f"read {leaves_done}/{leaves_total} leaves; the build goes on from its checkpoints")
        self.leaves_done, self.leaves_total = leaves_done, leaves_total
        self.steps_done, self.steps_total = steps_done, steps_total
        self.leaves_computed, self.compute_seconds = leaves_computed, compute_seconds

    def as_dict(self) -> dict:
        return {
            "leaves_done": self.leaves_done,
            "leaves_total": self.leaves_total,
            "steps_done": self.steps_done,
            "steps_total": self.steps_total,
            "leaves_computed": self.leaves_computed,
            "compute_seconds": self.compute_seconds,
        }


@runtime_checkable
class Checkpointer(Protocol):
    """Where a build keeps its checkpoints: named entries of tensors plus string metadata.

    ``load`` returns None for a missing entry and raises :class:`CheckpointError` for one that
    cannot be read; ``save`` replaces an entry atomically (a reader sees the old one or the new
    one, never a mix); ``discard`` removes one entry (missing is fine); ``clear`` removes all."""

    def save(self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None: ...

    def load(self, key: str) -> Entry | None: ...

    def discard(self, key: str) -> None: ...

    def clear(self) -> None: ...


def _check_key(key: str) -> str:
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        raise ValueError(f"{key!r} is not a checkpoint name (lowercase letters, digits, '-' and '.')")
    return key


def payload_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def stamp(secret: bytes, key: str, metadata: dict[str, str]) -> str:
    """The HMAC-SHA256, under ``secret``, of entry ``key``'s name and string metadata (every
    item but the stamp itself). The metadata holds the tensors' sha256 (``payload_sha256``),
    so the stamp covers the tensors too; the name binds it to its place in the tree."""
    items = sorted((str(k), str(v)) for k, v in metadata.items() if k != "stamp")
    material = json.dumps([FORMAT, key, items], ensure_ascii=True).encode()
    return hmac.new(secret, material, hashlib.sha256).hexdigest()


class DirectoryCheckpointer:
    """Checkpoint entries as ``<folder>/<key>.safetensors`` files.

    ``temp_dir``: where a file is written before its rename (default the folder itself; it
    must be on the same file system); ``temp_tag``: a word put in temp names (the app's store
    names its writer there, so a killed writer's temp file is found and removed); ``secret``:
    the key every entry is stamped with and checked against (see the module docstring; at
    least 16 bytes), kept somewhere the folder's writers cannot read."""

    def __init__(
        self,
        folder: str | os.PathLike,
        temp_dir: str | os.PathLike | None = None,
        temp_tag: str = "",
        secret: bytes | None = None,
    ):
        if secret is not None and (not isinstance(secret, bytes) or len(secret) < 16):
            raise ValueError("a checkpoint secret is at least 16 bytes")
        self.folder = Path(folder)
        self.temp_dir = Path(temp_dir) if temp_dir is not None else self.folder
        self.temp_tag = temp_tag
        self._secret = secret

    def __repr__(self) -> str:
        return f"DirectoryCheckpointer({str(self.folder)!r})"

    def path(self, key: str) -> Path:
        return self.folder / f"{_check_key(key)}{SUFFIX}"

    def keys(self) -> list[str]:
        """The names of the stored entries."""
        try:
            return sorted(
                p.name[: -len(SUFFIX)]
                for p in self.folder.iterdir()
                if p.name.endswith(SUFFIX) and _KEY.fullmatch(p.name[: -len(SUFFIX)])
            )
        except FileNotFoundError:
            return []

    def save(self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        target = self.path(key)
        cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        meta = {**{k: str(v) for k, v in metadata.items() if k != "stamp"}, "payload_sha256": payload_digest(cpu)}
        if self._secret is not None:
            meta["stamp"] = stamp(self._secret, key, meta)
        data = save_safetensors(cpu, metadata=meta)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        tag = f".{self.temp_tag}" if self.temp_tag else ""
        fd, tmp = tempfile.mkstemp(prefix=f".{key}{tag}.", suffix=".tmp", dir=self.temp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(self.folder)

    def load(self, key: str) -> Entry | None:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"cannot be read: {exc}") from exc
        try:
            (size,) = struct.unpack("<Q", data[:8])
            header = json.loads(data[8 : 8 + size])
            metadata = dict(header.get("__metadata__") or {})
        except Exception as exc:  # truncated, not safetensors, bad header
            raise CheckpointError(f"is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
        if self._secret is not None:  # checked before any tensor is read: a forged entry costs no more
            found = metadata.get("stamp")
            if not isinstance(found, str) or not found:
                raise CheckpointError("carries no stamp of this store (an older, unkeyed checkpoint)")
            if not hmac.compare_digest(found.encode(), stamp(self._secret, key, metadata).encode()):
                raise CheckpointError("does not carry this store's stamp (forged, or written under another key)")
        try:
            tensors = load_safetensors(data)
        except Exception as exc:  # truncated, not safetensors
            raise CheckpointError(f"is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
        # fresh, separately allocated tensors, laid out as the build's own (no views of a buffer)
        tensors = {name: t.clone() for name, t in tensors.items()}
        if metadata.get("payload_sha256") != payload_digest(tensors):
            raise CheckpointError("does not match its checksum (altered or corrupt)")
        return tensors, metadata

    def discard(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every entry (and the folder, when nothing else is left in it)."""
        for key in self.keys():
            self.discard(key)
        try:
            self.folder.rmdir()
        except OSError:
            pass


def build_digest(
    *,
    fingerprint: str,
    settings_json: str,
    scorer,
    prefix: torch.Tensor,
    context: torch.Tensor,
    suffix: torch.Tensor,
    units: torch.Tensor | None,
    model_dtype: torch.dtype,
    device_type: str,
) -> str:
    """A hash of everything that determines a build's nodes (see the module docstring)."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            [
                FORMAT,
                FORMAT_VERSION,
                fingerprint,
                settings_json,
                scorer.name,
                str(model_dtype),
                device_type,
                torch.__version__,
            ]
        ).encode()
    )
    extras = {}
    bias = getattr(scorer, "bias", None)  # the calibration table the scores subtract
    if isinstance(bias, torch.Tensor):
        extras["bias"] = bias
    prompt = getattr(scorer, "prompt_ids", None)  # the reconstruction copy's repeat prompt
    if isinstance(prompt, torch.Tensor):
        extras["repeat_prompt"] = prompt
    for attr in ("layers", "chunk_len"):
        if hasattr(scorer, attr):
            digest.update(f"{attr}={getattr(scorer, attr)}".encode())
    tensors = {"prefix": prefix, "context": context, "suffix": suffix, **extras}
    if units is not None:
        tensors["units"] = units
    digest.update(payload_digest(tensors).encode())
    return digest.hexdigest()[:32]


class BuildCheckpoints:
    """One build's view of a :class:`Checkpointer`: entries stamped with the build digest,
    and every entry that cannot be used (another build's, unreadable, altered) ignored with a
    log line and removed. A failing save is logged and ends checkpointing for this build; the
    build itself goes on."""

    def __init__(self, checkpointer: Checkpointer, digest: str):
        self.checkpointer = checkpointer
        self.digest = digest
        self.saving = True
        self.saved = 0
        self.loaded = 0

    def save(self, key: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
        if not self.saving:
            return
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "build": self.digest,
            **{k: str(v) for k, v in (metadata or {}).items()},
        }
        try:
            self.checkpointer.save(key, tensors, meta)
            self.saved += 1
        except Exception as exc:  # a full disk must not fail the build: it only loses resumability
            log.warning(
                "checkpoint %s could not be saved (%s: %s); this build goes on without checkpoints",
                key,
                type(exc).__name__,
                exc,
            )
            self.saving = False

    def load(self, key: str) -> Entry | None:
        try:
            entry = self.checkpointer.load(key)
        except CheckpointError as exc:
            log.warning("checkpoint %s %s: ignored, that part is built again", key, exc)
            self.discard(key)
            return None
        if entry is None:
            return None
        _, meta = entry
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            log.warning("checkpoint %s is not a HOMER checkpoint of format %s: ignored", key, FORMAT_VERSION)
            self.discard(key)
            return None
        if meta.get("build") != self.digest:
            log.info("checkpoint %s belongs to another build (other text, settings or model): ignored", key)
            self.discard(key)
            return None
        self.loaded += 1
        return entry

    def discard(self, key: str) -> None:
        try:
            self.checkpointer.discard(key)
        except Exception as exc:
            log.warning("checkpoint %s could not be removed (%s: %s)", key, type(exc).__name__, exc)
