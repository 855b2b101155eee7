"""The jobs table: what the user sees of a background build (state, progress 0–1 with a
message, error, attempts) and the lease that makes the queue crash-safe.

A worker *claims* a queued job (state → running, a lease of a few seconds that it renews
while building). If the worker dies, the lease runs out and :meth:`Jobs.recover` puts the
job back to queued (or failed after ``max_attempts``). All state changes are single
conditional UPDATEs, so two workers never both win the same transition."""

from __future__ import annotations

import json
import sqlite3
import uuid

from . import db as dbmod
from .errors import StoreError
from .files import owner_alive

ACTIVE = ("queued", "running")


class Jobs:
    def __init__(self, store):
        self.store = store

    @property
    def _db(self):
        return self.store.db

    def create(
        self,
        document_id: str,
        build_key: str,
        model: str,
        settings: dict | None = None,
        upload: str | None = None,
        file_name: str | None = None,
        max_attempts: int = 3,
        kind: str = "build",
    ) -> tuple[dict, bool]:
        """A new queued job, or the active job of the same ``build_key`` (``created`` False)."""
        stamp = dbmod.now()
        row = {
            "id": uuid.uuid4().hex,
            "kind": kind,
            "document_id": document_id,
            "build_key": build_key,
            "upload": upload,
            "file_name": file_name,
            "model": model,
            "settings": json.dumps(settings or {}),
            "state": "queued",
            "progress": 0.0,
            "message": "queued",
            "attempts": 0,
            "max_attempts": max_attempts,
            "created": stamp,
            "enqueued": stamp,
            "updated": stamp,
        }
        try:
            self._db["jobs"].insert(row)
            return self.get(row["id"]), True
        except sqlite3.IntegrityError:
            active = self.active_for(build_key)
            if active is None:  # it finished between our insert and this look-up: try once more
                return self.create(document_id, build_key, model, settings, upload, file_name, max_attempts, kind)
            return active, False

    def get(self, job_id: str) -> dict:
        rows = list(self._db["jobs"].rows_where("id = ?", [job_id]))
        if not rows:
            raise StoreError(f"no job {job_id}")
        return rows[0]

    def active_for(self, build_key: str) -> dict | None:
        rows = list(self._db["jobs"].rows_where("build_key = ? AND state IN ('queued', 'running')", [build_key]))
        return rows[0] if rows else None

    def list(self, state: str | None = None) -> list[dict]:
        if state is None:
            return list(self._db["jobs"].rows_where(order_by="created"))
        return list(self._db["jobs"].rows_where("state = ?", [state], order_by="created"))

    def set_task_id(self, job_id: str, task_id: str) -> None:
        self._db.execute(
            "UPDATE jobs SET task_id = ?, enqueued = ?, updated = ? WHERE id = ?",
            [task_id, dbmod.now(), dbmod.now(), job_id],
        )

    def claim(self, job_id: str, owner: str, lease: float) -> bool:
        """queued → running for ``owner``; False if another worker has it or it is finished."""
        stamp = dbmod.now()
        cursor = self._db.execute(
            "UPDATE jobs SET state = 'running', owner = ?, lease_until = ?, attempts = attempts + 1, "
            "started = ?, updated = ?, message = 'starting', error = NULL WHERE id = ? AND state = 'queued'",
            [owner, stamp + lease, stamp, stamp, job_id],
        )
        return cursor.rowcount == 1

    def heartbeat(
        self, job_id: str, owner: str, lease: float, progress: float | None = None, message: str | None = None
    ) -> bool:
        """Renew the lease (and report progress); False when the job is no longer ours."""
        stamp = dbmod.now()
        cursor = self._db.execute(
            "UPDATE jobs SET lease_until = ?, updated = ?, progress = COALESCE(?, progress), "
            "message = COALESCE(?, message) WHERE id = ? AND owner = ? AND state = 'running'",
            [stamp + lease, stamp, progress, message, job_id, owner],
        )
        return cursor.rowcount == 1

    def finish(self, job_id: str, owner: str, cache_id: str | None, message: str = "done") -> bool:
        stamp = dbmod.now()
        cursor = self._db.execute(
            "UPDATE jobs SET state = 'done', cache_id = ?, progress = 1.0, message = ?, owner = NULL, "
            "lease_until = NULL, upload = NULL, finished = ?, updated = ? "
            "WHERE id = ? AND owner = ? AND state = 'running'",
            [cache_id, message, stamp, stamp, job_id, owner],
        )
        return cursor.rowcount == 1

    def fail(self, job_id: str, error: str, owner: str | None = None) -> bool:
        """→ failed with a one-line reason (only from an active state; by its owner if given)."""
        stamp = dbmod.now()
        error = " ".join(str(error).split())[:500]
        sql = (
            "UPDATE jobs SET state = 'failed', error = ?, message = 'failed', owner = NULL, lease_until = NULL, "
            "upload = NULL, "
            "finished = ?, updated = ? WHERE id = ? AND state IN ('queued', 'running')"
        )
        args = [error, stamp, stamp, job_id]
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        return self._db.execute(sql, args).rowcount == 1

    def release(self, job_id: str, owner: str, message: str, error: str | None = None, uncount: bool = False) -> bool:
        """running → queued by its owner (a retry later, or waiting for another build; with
        ``uncount`` this run does not count as an attempt)."""
        stamp = dbmod.now()
        cursor = self._db.execute(
            "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, message = ?, error = ?, "
            "attempts = attempts - ?, enqueued = ?, updated = ? WHERE id = ? AND owner = ? AND state = 'running'",
            [message, error, 1 if uncount else 0, stamp, stamp, job_id, owner],
        )
        return cursor.rowcount == 1

    def stale_running(self) -> list[dict]:
        """Running jobs whose worker is gone: lease expired, or a dead process on this host."""
        stamp = dbmod.now()
        return [
            job
            for job in self._db["jobs"].rows_where("state = 'running'")
            if (job["lease_until"] or 0) < stamp or owner_alive(job["owner"]) is False
        ]

    def recover(self, job: dict) -> str | None:
        """Put a stale running job back to queued (or failed when its attempts are used up).
        Returns the new state, or None when another process recovered it first."""
        stamp = dbmod.now()
        if job["attempts"] >= job["max_attempts"]:
            error = (
                f"the worker stopped {job['attempts']} times while building "
                f"(killed, crashed or out of memory); giving up"
            )
            cursor = self._db.execute(
                "UPDATE jobs SET state = 'failed', error = ?, message = 'failed', owner = NULL, lease_until = NULL, "
                "finished = ?, updated = ? WHERE id = ? AND state = 'running' AND owner IS ?",
                [error, stamp, stamp, job["id"], job["owner"]],
            )
            return "failed" if cursor.rowcount == 1 else None
        cursor = self._db.execute(
            "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, "
            "message = 'requeued after the worker stopped', enqueued = ?, updated = ? "
            "WHERE id = ? AND state = 'running' AND owner IS ?",
            [stamp, stamp, job["id"], job["owner"]],
        )
        return "queued" if cursor.rowcount == 1 else None

    def touch_queued(self, job_id: str, older_than: float) -> bool:
        """Claim the right to re-enqueue a queued job whose queue message was lost: True for
        exactly one caller when the job has been waiting more than ``older_than`` seconds."""
        stamp = dbmod.now()
        cursor = self._db.execute(
            "UPDATE jobs SET enqueued = ?, updated = ? WHERE id = ? AND state = 'queued' AND enqueued < ?",
            [stamp, stamp, job_id, stamp - older_than],
        )
        return cursor.rowcount == 1
