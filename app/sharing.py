"""A team library: with sign-in on, documents are private to whoever added them; an owner
may share one **read-only** with named users or with everyone on the instance, and unshare it.

Read-only means the grantee may find the document in their library, ask it, inspect it and
export it **without its source file** (the bundle holds the text and the cache: what the
grantee can see), but not delete it, read it again or share it on. The document is stored
once and its caches are the owner's: a grantee's questions reuse them, nothing is rebuilt per
user. A grantee sees the document under its owner's name for it, never another co-owner's
names, shares or threads.

A share must not be laundered into ownership. Importing something already shared with you
changes nothing (:func:`app.library.import_bundle_file` refuses it), and a grantee's export
is recorded here by the id its text would get on import (``shared_exports``: the text-derived
id of :func:`storage.bundles.text_document_id`, and the shared document's id), so that
bundle — passed on, or kept until after an unshare or a delete — gives nobody access but
those who can reach the shared document itself. Unsharing and deleting therefore end every
access that came from the share. The rows hold two hashes, no names, and stay after the
document goes (that is when they matter).

The rows live in ``document_shares`` (one per document, owner and grantee, ``*`` for
everyone); they go when their owner drops the document or the document is deleted. Without
sign-in every document is everyone's and there is nothing to share. With ``--auth`` the app
knows its users and a share to a name it does not know is refused; with sign-in with Hugging
Face a name is a Hugging Face username, and the share goes to whoever holds that name."""

from __future__ import annotations

import re

from storage import db as dbmod
from storage.errors import StoreError

EVERYONE = "*"
MAX_GRANTEES = 100
_USER = re.compile(r"[^\s,*][^\s,]{0,99}")  # a user name: no spaces or commas, not "*", ≤ 100 chars


def parse_grantees(value: str | list[str] | None) -> list[str]:
    """User names from a comma- or space-separated string (or a list); ``everyone`` or ``*``
    (or nothing) means everyone on the instance."""
    items = value if isinstance(value, list) else re.split(r"[\s,]+", value or "")
    names = [str(v).strip() for v in items if str(v).strip()]
    if not names or any(n.lower() in ("*", "everyone", "all") for n in names):
        return [EVERYONE]
    bad = [n for n in names if not _USER.fullmatch(n)]
    if bad:
        raise StoreError(f"not a user name: {bad[0][:40]!r}")
    if len(names) > MAX_GRANTEES:
        raise StoreError(f"at most {MAX_GRANTEES} users at once")
    return sorted(set(names))


def share(store, doc: dict, owner: str, grantees: str | list[str] | None = None, users: set[str] | None = None) -> str:
    """Share ``doc`` (a row the owner added: :func:`app.library.share_document` finds it)
    read-only with ``grantees`` (default: everyone). ``users``: the names that can log in
    (``--auth``), or None where the app cannot know them (Hugging Face sign-in): a name
    outside ``users`` is refused, so a share never waits for whoever takes a name later."""
    names = [n for n in parse_grantees(grantees) if n != owner]
    if not names:
        raise StoreError("a document is always in its owner's own library")
    if users is not None:
        unknown = [n for n in names if n != EVERYONE and n not in users]
        if unknown:
            raise StoreError(
                f"no user named {unknown[0][:40]!r} can log in to this app: a share goes only to its users"
            )
    store.db["document_shares"].insert_all(
        [{"document_id": doc["id"], "owner": owner, "grantee": n, "added": dbmod.now()} for n in names], ignore=True
    )
    return f"shared {doc['file_name']} read-only with {describe(shares_of(store, doc['id'], owner))}"


def unshare(store, doc: dict, owner: str, grantees: str | list[str] | None = None) -> str:
    """Stop sharing ``doc`` with ``grantees`` (default: with anyone)."""
    names = parse_grantees(grantees) if grantees else None
    if names is None:
        store.db.execute("DELETE FROM document_shares WHERE document_id = ? AND owner = ?", [doc["id"], owner])
    else:
        store.db.execute(
            f"DELETE FROM document_shares WHERE document_id = ? AND owner = ? AND grantee IN "
            f"({', '.join('?' * len(names))})",
            [doc["id"], owner, *names],
        )
    left = shares_of(store, doc["id"], owner)
    return f"{doc['file_name']} is " + (f"shared with {describe(left)}" if left else "private")


def shares_of(store, document_id: str, owner: str) -> list[str]:
    """Whom ``owner`` shares ``document_id`` with (``*``: everyone)."""
    return [
        row[0]
        for row in store.db.execute(
            "SELECT grantee FROM document_shares WHERE document_id = ? AND owner = ? ORDER BY grantee",
            [document_id, owner],
        )
    ]


def describe(grantees: list[str]) -> str:
    if not grantees:
        return "nobody"
    return "everyone" if EVERYONE in grantees else ", ".join(grantees)


def drop_owner(store, document_id: str, owner: str) -> None:
    """The owner dropped the document from their library: their shares of it go too."""
    store.db.execute("DELETE FROM document_shares WHERE document_id = ? AND owner = ?", [document_id, owner])


def accessible_sql(shared: bool = True) -> tuple[str, int]:
    """``(sql, n)``: a subquery of (document_id, file_name, title, access) rows that a user may
    use — those they added (access ``owner``), and with ``shared`` those an owner shares with
    them or with everyone (``shared``; the first owner's names when several share it) — and
    how many times the user's name must be bound to it."""
    own = "SELECT document_id, file_name, title, 'owner' AS access FROM document_owners WHERE owner = ?"
    if not shared:
        return own, 1
    theirs = (
        "SELECT document_id, file_name, title, access FROM ("  # one row per document: the first owner's names
        "SELECT s.document_id, o.file_name, o.title, 'shared' AS access, MIN(s.owner) "
        "FROM document_shares s JOIN document_owners o ON o.document_id = s.document_id AND o.owner = s.owner "
        f"WHERE (s.grantee = ? OR s.grantee = '{EVERYONE}') "
        "AND s.document_id NOT IN (SELECT document_id FROM document_owners WHERE owner = ?) "
        "GROUP BY s.document_id)"
    )
    return f"{own} UNION ALL {theirs}", 3


# --- what a grantee's export becomes on import ------------------------------------------------
_EXPORTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS shared_exports (text_id TEXT NOT NULL, document_id TEXT NOT NULL, "
    "added REAL, PRIMARY KEY (text_id, document_id))"
)


def _exports_table(store) -> None:
    # Created on first use rather than by a store migration: only the team library writes
    # or reads it, and an old store without it simply has no grantee exports yet.
    store.db.execute(_EXPORTS_TABLE)


def record_export(store, text_id: str, document_id: str) -> None:
    """A grantee exported ``document_id`` (read-only to them): the bundle, which carries no
    source file, imports as ``text_id`` anywhere; remember where that id came from."""
    _exports_table(store)
    store.db.execute(
        "INSERT OR IGNORE INTO shared_exports (text_id, document_id, added) VALUES (?, ?, ?)",
        [text_id, document_id, dbmod.now()],
    )


def exported_from(store, text_id: str) -> list[str]:
    """The shared documents a grantee's export of which imports as ``text_id`` (none: that
    text never left this app through a read-only share)."""
    _exports_table(store)
    return [
        row[0]
        for row in store.db.execute(
            "SELECT document_id FROM shared_exports WHERE text_id = ? ORDER BY document_id", [text_id]
        )
    ]
