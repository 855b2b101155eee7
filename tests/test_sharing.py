"""The team library: private by default, shared read-only with named users or everyone,
unshared, deleted — an isolation matrix over every library function, by full id and by id
prefix."""

from __future__ import annotations

import pytest

from app import library, sharing
from app.ingest import add_to_store, ingest_bytes
from storage import Store, StoreError
from store_helpers import story


@pytest.fixture
def team(tmp_path):
    store = Store(tmp_path / "store")
    doc = add_to_store(store, ingest_bytes(story(8, "ann").encode(), "ann-plan.txt"))
    library.add_owner(store, doc["id"], "ann", "ann-plan.txt")
    return store, doc["id"]


def can(store, ref, user) -> dict:
    """What ``user`` can do with ``ref``: see it listed, reach it (ask, inspect, export all go
    through check_access), change it (delete, read again)."""
    listed = ref[:len(ref)] in {d["id"][:len(ref)] for d in library.visible_documents(store, user)}
    try:
        row = library.check_access(store, ref, user)
        reach = True
        writable = row["access"] == "owner"
    except StoreError as exc:
        assert str(exc) == f"no document {ref!r} in your library"  # the one answer for not yours / missing
        reach = writable = False
    return {"list": listed, "reach": reach, "write": writable}


NONE = {"list": False, "reach": False, "write": False}
READ = {"list": True, "reach": True, "write": False}
OWN = {"list": True, "reach": True, "write": True}


@pytest.mark.parametrize("prefix", [64, 12])
def test_private_shared_unshared_deleted(team, prefix):
    store, doc_id = team
    ref = doc_id[:prefix]
    assert [can(store, ref, u) for u in ("ann", "bob", "cy")] == [OWN, NONE, NONE]  # private

    assert library.share_document(store, ref, "ann", "bob") == "shared ann-plan.txt read-only with bob"
    assert [can(store, ref, u) for u in ("ann", "bob", "cy")] == [OWN, READ, NONE]
    assert library.visible_documents(store, "bob")[0]["file_name"] == "ann-plan.txt"  # the owner's name
    with pytest.raises(StoreError, match="read-only: only its owner can delete"):
        library.delete_document(store, ref, "bob")
    with pytest.raises(StoreError, match="no document"):  # a grantee cannot share it on
        library.share_document(store, ref, "bob", "cy")

    library.share_document(store, ref, "ann", "everyone")
    assert [can(store, ref, u) for u in ("ann", "bob", "cy")] == [OWN, READ, READ]
    assert sharing.shares_of(store, doc_id, "ann") == ["*", "bob"]

    assert library.unshare_document(store, ref, "ann") == "ann-plan.txt is private"
    assert [can(store, ref, u) for u in ("ann", "bob", "cy")] == [OWN, NONE, NONE]

    library.share_document(store, ref, "ann", "bob, cy")
    assert library.unshare_document(store, ref, "ann", "bob") == "ann-plan.txt is shared with cy"
    assert [can(store, ref, u) for u in ("bob", "cy")] == [NONE, READ]

    assert library.delete_document(store, ref, "ann") == "removed ann-plan.txt from your library"
    assert [can(store, ref, u) for u in ("ann", "bob", "cy")] == [NONE, NONE, NONE]  # deleted
    assert store.get_document(doc_id) is None
    assert store.db.execute("SELECT COUNT(*) FROM document_shares").fetchone()[0] == 0


def test_a_co_owners_library_is_untouched_by_another_owners_shares(team):
    store, doc_id = team
    library.add_owner(store, doc_id, "dee", "dee-copy.txt")  # uploaded the same bytes
    library.share_document(store, doc_id, "ann", "everyone")
    row = library.check_access(store, doc_id, "dee")
    assert row["access"] == "owner" and row["file_name"] == "dee-copy.txt"
    library.delete_document(store, doc_id, "ann")  # ann drops it: her share goes, dee keeps hers
    assert can(store, doc_id, "bob") == NONE and can(store, doc_id, "dee") == OWN


def test_sharing_needs_sign_in_and_real_names(team):
    store, doc_id = team
    with pytest.raises(StoreError, match="needs sign-in"):
        library.share_document(store, doc_id, None)
    with pytest.raises(StoreError, match="not a user name"):
        library.share_document(store, doc_id, "ann", ["bob", "x" * 200])
    with pytest.raises(StoreError, match="own library"):
        library.share_document(store, doc_id, "ann", "ann")


def test_a_grantee_cannot_rebuild_a_shared_document(team):
    store, doc_id = team
    library.share_document(store, doc_id, "ann", "bob")

    class Queue:  # submit_existing refuses before it reaches the queue
        def __init__(self, store):
            self.store = store

        def submit_document(self, *args, **kwargs):
            raise AssertionError("a grantee's read-again reached the build queue")

    with pytest.raises(StoreError, match="read-only: only its owner can read"):
        library.submit_existing(Queue(store), doc_id, "embedded", owner="bob")
