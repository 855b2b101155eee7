"""Named leases in the index: a lock per cache key, so the same cache is never built twice
at once — across threads, processes and (on a shared store) machines. A lease expires when
its holder stops renewing it (a killed worker), so no lock outlives its holder for long."""

from __future__ import annotations

from . import db as dbmod


class Locks:
    def __init__(self, store):
        self.store = store

    def acquire(self, name: str, owner: str, ttl: float) -> bool:
        """Take ``name`` for ``ttl`` seconds if free, expired, or already ours."""
        stamp = dbmod.now()
        cursor = self.store.db.execute(
            "INSERT INTO locks (name, owner, expires) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, expires = excluded.expires "
            "WHERE locks.expires < ? OR locks.owner = excluded.owner",
            [name, owner, stamp + ttl, stamp],
        )
        return cursor.rowcount == 1

    def renew(self, name: str, owner: str, ttl: float) -> bool:
        cursor = self.store.db.execute(
            "UPDATE locks SET expires = ? WHERE name = ? AND owner = ?", [dbmod.now() + ttl, name, owner]
        )
        return cursor.rowcount == 1

    def release(self, name: str, owner: str) -> None:
        self.store.db.execute("DELETE FROM locks WHERE name = ? AND owner = ?", [name, owner])

    def holder(self, name: str) -> str | None:
        row = self.store.db.execute(
            "SELECT owner FROM locks WHERE name = ? AND expires >= ?", [name, dbmod.now()]
        ).fetchone()
        return row[0] if row else None
