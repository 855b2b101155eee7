"""The store: documents by content hash, cache files with checksums, conversations, all
indexed in one SQLite file under a root folder.

Layout under the root::

    index.db                         the SQLite index (WAL); index.db.setup-lock: openers take turns
    documents/ab/<sha256>/source.pdf the uploaded bytes, text.txt the extracted text
    caches/cd/<key>.safetensors      HOMER caches (the engine's safetensors format)
    caches/cd/<key>.leaves.safetensors  optional leaf states of a cache, for deep reads
    tmp/                             temp files named after their writer (host-pid)
    uploads/                         uploads waiting for ingest by a worker
    checkpoints/<key>/               a running (or stopped) build's checkpoints, build.json
                                     names its document; removed when the cache is indexed
    checkpoint.key                   the store's secret the checkpoints are stamped with (mode
                                     0600, made once): a forged checkpoint is not resumed from

No identifier becomes a path unless it has its exact form (:mod:`storage.ids`: a document id
is 64 lowercase hex digits, a cache key 32), every path is proven to lie inside the root with
no symbolic link on the way, and a row's ``file`` column is used only when it names the row's
own place. A cache file is checked for structure (:meth:`HomerCache.load`) before it is
indexed and whenever it is loaded or checked.

:class:`Store` is a small facade; each part of the store is a module of its own (see its
docstring).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from . import db as dbmod
from .cache_install import CacheInstallMixin
from .caches import CachesMixin
from .checkpoints import CheckpointsMixin
from .consistency import ConsistencyMixin, Problem  # noqa: F401  (Problem: what check() returns)
from .documents import DocumentsMixin
from .errors import CacheCorrupt, CacheExists, StoreError  # noqa: F401  (re-exported: callers import them from here)
from .ids import cache_key  # noqa: F401  (re-exported: callers import it from here)
from .jobs import Jobs
from .locks import Locks
from .temp_files import TempFilesMixin
from .threads import ThreadsMixin

DEFAULT_CHECKPOINT_MAX_AGE_HOURS = 24.0


def default_root() -> Path:
    """``homer_home() / "store"`` (``HOMER_HOME`` respected, ``/data`` on a Space)."""
    from homer.paths import homer_home

    return homer_home() / "store"


class Store(
    DocumentsMixin, CachesMixin, CacheInstallMixin, CheckpointsMixin, ThreadsMixin, TempFilesMixin, ConsistencyMixin
):
    """Documents, caches, conversations and jobs of one store root.

    The facade holds what every part shares — the root, the calling thread's connection to
    the index (:attr:`db`), ``tmp/`` — and the parts are mixins, one module each:

    * :mod:`storage.documents` — documents by content hash, their files, uploads
      (``add_document``, ``document``, ``documents``, ``document_text``, ``delete_document``, …);
    * :mod:`storage.caches` — cache files, their rows, loading with checks, leaf states
      (``get_cache``, ``caches``, ``load_cache``, ``open_leaf_states``, ``delete_cache``, …);
    * :mod:`storage.cache_install` — writing a cache in, crash-safe (``save_cache``,
      ``install_cache_file``);
    * :mod:`storage.checkpoints` — a build's checkpoints and the checkpoint secret
      (``build_checkpoints``, ``drop_checkpoints``, ``checkpoint_secret``);
    * :mod:`storage.threads` — conversations as named threads (``add_conversation``,
      ``threads``, ``thread``, ``save_turn``, …);
    * :mod:`storage.temp_files` — staging paths in ``tmp/`` and stopped writers' leftovers
      (``staging_path``, ``remove_stale_temp_files``);
    * :mod:`storage.consistency` — ``check(repair=...)``.

    Jobs and locks are objects of their own (:attr:`jobs`, :mod:`storage.jobs`; :attr:`locks`,
    :mod:`storage.locks`). ``checkpoint_max_age_hours``: how long a stopped build's
    checkpoints are kept for a retry to resume from before :meth:`check` calls them stale."""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        checkpoint_max_age_hours: float = DEFAULT_CHECKPOINT_MAX_AGE_HOURS,
    ):
        self.root = Path(root) if root is not None else default_root()
        self.root.mkdir(parents=True, exist_ok=True)
        for name in ("documents", "caches", "tmp", "uploads"):
            (self.root / name).mkdir(exist_ok=True)
        self.index_path = self.root / "index.db"
        self.checkpoint_max_age_hours = float(checkpoint_max_age_hours)
        self._local = threading.local()
        self._local.db = dbmod.open_index(self.index_path)  # several processes may open a fresh store at once
        self.jobs = Jobs(self)
        self.locks = Locks(self)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @property
    def db(self):
        """The calling thread's connection to the index (SQLite connections are per thread)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = dbmod.connect(self.index_path)
        return db

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"
