"""The store's side of resumable builds (:mod:`homer.checkpoints`): one folder of checkpoints
per cache key under ``checkpoints/``, with ``build.json`` naming its document, and the
store's secret every checkpoint is stamped with (``checkpoint.key``).

Part of :class:`storage.store.Store` (a mixin: it uses the store's ``root`` and ``tmp_dir``).
Which checkpoint folders are stale is decided by :mod:`storage.consistency`."""

from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from pathlib import Path

from . import db as dbmod
from .errors import StoreError
from .files import entries, fsync_dir, owner_token, write_bytes_atomic
from .ids import check_cache_key, check_document_id, inside, is_cache_key, is_link, remove_tree

CHECKPOINT_INFO = "build.json"
CHECKPOINT_SECRET = "checkpoint.key"
SECRET_BYTES = 32


class CheckpointsMixin:
    """Build checkpoint folders and the checkpoint secret."""

    _checkpoint_secret: bytes | None = None

    def checkpoint_dir(self, key: str) -> Path:
        """The checkpoint folder of the build of cache ``key`` (a well-formed key only)."""
        check_cache_key(key)
        return inside(self.root, self.root / "checkpoints" / key)

    def build_checkpoints(self, document_id: str, key: str):
        """The :class:`homer.checkpoints.DirectoryCheckpointer` a build of cache ``key`` of
        document ``document_id`` saves its finished subtrees to — an earlier, stopped build's
        checkpoints included, which the build resumes from. Its temp files are written in the
        store's ``tmp/``, named after their writer; ``build.json`` names the document (for
        :meth:`check` and :meth:`delete_document`). Removed when the cache is indexed."""
        from homer.checkpoints import DirectoryCheckpointer

        check_document_id(document_id)
        secret = self.checkpoint_secret()  # a damaged key file refuses before any folder is made
        folder = self.checkpoint_dir(key)
        if is_link(folder) or is_link(folder.parent):
            raise StoreError(f"the checkpoint folder of cache {key[:12]} is a symbolic link; refused")
        folder.mkdir(parents=True, exist_ok=True)
        info = folder / CHECKPOINT_INFO
        if is_link(info) or self._checkpoint_info(folder).get("document_id") != document_id:
            write_bytes_atomic(
                json.dumps({"document_id": document_id, "cache_key": key, "created": dbmod.now()}).encode(),
                info,
                self.tmp_dir,
            )
        return DirectoryCheckpointer(
            folder, temp_dir=self.tmp_dir, temp_tag=owner_token().replace(":", "-"), secret=secret
        )

    def checkpoint_secret(self) -> bytes:
        """The store's secret that every checkpoint is stamped with (an HMAC,
        :mod:`homer.checkpoints`): ``checkpoint.key`` in the root, outside the checkpoint
        folders, mode 0600. The first caller makes it — random bytes written to a temp file and
        hard-linked into place (created exclusively where the file system has no hard links),
        so of openers racing (processes or machines sharing the store) one wins and every one
        reads the winner's; it is never replaced. A key file that is a
        link or not :data:`SECRET_BYTES` long is refused (:class:`StoreError`; a build then
        goes on without checkpoints) and reported by :meth:`check`, whose repair removes it."""
        if self._checkpoint_secret is None:
            self._checkpoint_secret = _read_or_make_secret(self.root / CHECKPOINT_SECRET, self.tmp_dir)
        return self._checkpoint_secret

    def drop_checkpoints(self, key: str) -> None:
        """Remove the checkpoint folder of cache ``key`` (only that folder, proven inside the store)."""
        try:
            remove_tree(self.root, self.checkpoint_dir(key))
        except (StoreError, OSError):
            pass  # a linked folder: left alone, reported by check

    @staticmethod
    def _checkpoint_info(folder: Path) -> dict:
        info = folder / CHECKPOINT_INFO
        try:
            if is_link(info):
                return {}
            data = json.loads(info.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def checkpoint_folders(self) -> list[tuple[str, dict]]:
        """(cache key, build.json) of every well-formed checkpoint folder."""
        return [
            (path.name, self._checkpoint_info(path))
            for path in entries(self.root / "checkpoints")
            if is_cache_key(path.name) and path.is_dir() and not is_link(path)
        ]


def read_secret(path: Path) -> bytes | None:
    """The bytes of the key file at ``path``; None when there is none. A link, a non-file or a
    file of the wrong length is refused (:class:`StoreError`); a mode wider than 0600 (a
    copied store) is narrowed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size != SECRET_BYTES:
        raise StoreError(
            f"the store's {path.name} is not a {SECRET_BYTES}-byte file; "
            "checkpoints are not used until `store check --repair` removes it"
        )
    if info.st_mode & 0o077:
        os.chmod(path, 0o600)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(SECRET_BYTES + 1)
    if len(data) != SECRET_BYTES:
        raise StoreError(
            f"the store's {path.name} is not a {SECRET_BYTES}-byte file; "
            "checkpoints are not used until `store check --repair` removes it"
        )
    return data


def _read_or_make_secret(path: Path, temp_dir: Path) -> bytes:
    """The secret in ``path``, made first if there is none (see :meth:`Store.checkpoint_secret`)."""
    secret = read_secret(path)
    if secret is not None:
        return secret
    temp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f"{path.name}.{owner_token().replace(':', '-')}.", suffix=".tmp", dir=temp_dir
    )  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(os.urandom(SECRET_BYTES))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)  # never over an existing key: of racing makers, the first link wins
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links (some mounted buckets): exclusive create
            _create_exclusive(path, Path(tmp).read_bytes())
        fsync_dir(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)
    for _ in range(40):  # an exclusive create is not atomic: a racing maker may still be writing it
        try:
            secret = read_secret(path)
            break
        except StoreError:
            if time.time() - os.lstat(path).st_mtime > 5:
                raise
            time.sleep(0.05)
    if secret is None:
        raise StoreError(f"the store's {path.name} could not be made")
    return secret


def _create_exclusive(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` (mode 0600); nothing when it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
