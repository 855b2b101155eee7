"""Who may see and change a document: its owners (who uploaded or imported its source) and those
an owner shared it with read-only (:mod:`app.sharing`); the library's access checks, shares and
unshares. With login off (``owner`` None) everyone is everyone's owner."""

from __future__ import annotations

from pathlib import Path

from storage import db as dbmod
from storage.errors import StoreError

from . import sharing


def add_owner(store, document_id: str, owner: str | None, file_name: str | None = None) -> None:
    """Put a document in ``owner``'s library under the name they gave it (``file_name``: the
    file they uploaded or imported; the first name an owner gave is kept)."""
    if owner:
        name = Path(file_name).name[:255] if file_name else None
        store.db["document_owners"].insert(
            {
                "document_id": document_id,
                "owner": owner,
                "added": dbmod.now(),
                "file_name": name,
                "title": Path(name).stem if name else None,
            },
            ignore=True,
        )


# What a user sees of a document's name: their own (documents_owners) where they gave one that
# differs from the stored row's, else the row's. Another owner's file name or title never shows.
_SEEN_NAMES = (
    "CASE WHEN o.file_name IS NULL OR o.file_name = d.file_name THEN d.file_name ELSE o.file_name END",
    "CASE WHEN o.file_name IS NULL OR o.file_name = d.file_name THEN d.title ELSE o.title END",
)


def _seen(store, owner: str | None, where: str = "1", params: list | None = None, shared: bool = True) -> list[dict]:
    """Document rows as ``owner`` sees them (their own names; an ``access`` column says
    ``owner`` or ``shared``), filtered by ``where``: the documents they added and, with
    ``shared``, those shared with them; every document without login."""
    if not owner:
        return list(
            store.db.query(
                f"SELECT d.*, 'owner' AS access FROM documents d WHERE {where} ORDER BY d.created", params or []
            )
        )
    seen = {"file_name": _SEEN_NAMES[0], "title": _SEEN_NAMES[1]}
    columns = ", ".join(
        f"{seen[c.name]} AS {c.name}" if c.name in seen else f"d.{c.name}" for c in store.db["documents"].columns
    )
    rows, binds = sharing.accessible_sql(shared)
    sql = (
        f"SELECT * FROM (SELECT {columns}, o.access AS access FROM documents d JOIN ({rows}) o "
        f"ON o.document_id = d.id) d WHERE {where} ORDER BY d.created"
    )
    return list(store.db.query(sql, [owner] * binds + list(params or [])))


def owned_ids(store, owner: str | None) -> set[str] | None:
    """Document ids ``owner`` may see (their own and those shared with them); None =
    everything (the app runs without login)."""
    if not owner:
        return None
    rows, binds = sharing.accessible_sql()
    return {row[0] for row in store.db.execute(f"SELECT document_id FROM ({rows})", [owner] * binds)}


def visible_documents(store, owner: str | None) -> list[dict]:
    """The documents ``owner`` may use, under the names they gave them (or their owner's)."""
    return _seen(store, owner)


def not_found(ref: str) -> StoreError:
    """The one refusal for a reference the user cannot use, whether no such document exists
    or it belongs to someone else: the same words either way, so the answer tells nothing
    about other users' libraries."""
    return StoreError(f"no document {str(ref)!r} in your library")


def read_only(doc: dict, doing: str) -> StoreError:
    """The refusal of a change to a document shared with this user (they can see it)."""
    return StoreError(f"{doc['file_name']} is shared with you read-only: only its owner can {doing} it")


def check_access(store, document_id: str, owner: str | None, shared: bool = True) -> dict:
    """The document row that ``document_id`` names in ``owner``'s library (else
    :func:`not_found`): a full id, a unique id prefix, a file name or a title, looked up among
    that owner's documents only (all documents when the app runs without login). Another
    user's document is never matched, counted or named — a prefix, file name or title of it
    gets the same answer as a reference nobody uses. Documents shared with the owner count as
    theirs unless ``shared`` is False (what only an owner may do: share, unshare)."""
    ref = str(document_id or "").strip()
    if not ref:
        raise not_found(ref)
    rows = _seen(store, owner, "d.id = ?", [ref], shared)
    if not rows:  # a prefix compared as a string (not LIKE: '%' or '_' in a reference match nothing)
        rows = _seen(
            store,
            owner,
            "(substr(d.id, 1, ?) = ? OR d.file_name = ? OR d.title = ?)",
            [len(ref), ref, ref, ref],
            shared,
        )
    if len(rows) == 1:
        return rows[0]
    if not rows:
        raise not_found(ref)
    raise StoreError(f"{ref!r} matches {len(rows)} documents in your library; use more of the id")


def _own(store, document_id: str, owner: str | None) -> dict:
    """A document this user added (not one shared with them): what sharing acts on."""
    if not owner:
        raise StoreError("sharing needs sign-in: without it every document is already everyone's")
    return check_access(store, document_id, owner, shared=False)


def share_document(
    store, document_id: str, owner: str | None, grantees: str | list[str] | None = None, users: set[str] | None = None
) -> str:
    """Share a document of this user's read-only with ``grantees`` (names; default everyone).
    ``users``: the names that can log in (``--auth``; None with Hugging Face sign-in)."""
    return sharing.share(store, _own(store, document_id, owner), owner, grantees, users)


def share_info(hugging_face: bool) -> str:
    """The Share box's note: what a read-only share allows, and (with sign-in with Hugging
    Face, where the app cannot know its users) whom a name reaches."""
    info = "read-only: they can ask, inspect and export it (text and cache, not the source file); Unshare ends it"
    if hugging_face:
        info += (
            ". A name is a Hugging Face username: the share goes to whoever holds that name on Hugging Face, "
            "now or later"
        )
    return info


def unshare_document(store, document_id: str, owner: str | None, grantees: str | list[str] | None = None) -> str:
    """Stop sharing a document of this user's with ``grantees`` (default: with anyone)."""
    return sharing.unshare(store, _own(store, document_id, owner), owner, grantees)


# --- labels -----------------------------------------------------------------------------
