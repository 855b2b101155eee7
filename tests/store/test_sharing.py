"""The team library: private by default, shared read-only with named users or everyone,
unshared, deleted — an isolation matrix over every library function, by full id and by id
prefix."""

from __future__ import annotations

import pytest
from store_helpers import story

from app import library, sharing
from app.ingest import add_to_store, ingest_bytes
from storage import Store, StoreError
from storage.bundles import text_document_id


@pytest.fixture
def team(tmp_path):
    store = Store(tmp_path / "store")
    doc = add_to_store(store, ingest_bytes(story(8, "ann").encode(), "ann-plan.txt"))
    library.add_owner(store, doc["id"], "ann", "ann-plan.txt")
    return store, doc["id"]


def can(store, ref, user) -> dict:
    """What ``user`` can do with ``ref``: see it listed, reach it (ask, inspect, export all go
    through check_access), change it (delete, read again)."""
    listed = ref[: len(ref)] in {d["id"][: len(ref)] for d in library.visible_documents(store, user)}
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


# --- a share is never laundered into access: export, re-import, pass on, unshare, delete ---------
@pytest.fixture(scope="module")
def tiny():
    from conftest import tiny_model, tiny_tokenizer

    return tiny_model("llama", window=1024), tiny_tokenizer()


def with_cache(store, tiny, text: str, name: str, owner: str) -> dict:
    from app_helpers import add_ready_document

    return add_ready_document(store, *tiny, text.encode(), name, owner=owner)


def members(bundle) -> list[str]:
    import zipfile

    with zipfile.ZipFile(bundle) as zf:
        return sorted(zf.namelist())


def import_as(store, bundle, user, tiny) -> str:
    """What ``user``'s import answers: ``imported`` or the refusal's one line."""
    try:
        library.import_bundle_file(store, bundle, None, user, tokenizer=tiny[1])
    except StoreError as exc:
        assert "\n" not in str(exc)
        return str(exc)
    return "imported"


def stored(store) -> tuple:
    """Everything an import could add: documents, caches, owners."""
    db = store.db
    return tuple(
        db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("documents", "caches", "document_owners")
    )


READ_ONLY_AGAIN = "is already in your library, shared with you read-only: importing it changes nothing"
NOT_THEIRS = (
    "refused: this bundle was exported from a document shared read-only with its exporter; only that "
    "document's owner can share it with you"
)


def test_a_grantee_export_and_reimport_never_grants_access(tmp_path, tiny):
    """bob, a read-only grantee, exports ann's document (text and cache, no source file) and
    imports it — refused, he stays read-only; mallory imports bob's bundle — refused; after
    ann unshares and deletes, bob's and mallory's imports are refused and nothing of it is
    stored. cy, who uploaded the same bytes herself, shares the stored copy but never ann's
    names, shares or threads."""
    store = Store(tmp_path / "store")
    doc = with_cache(store, tiny, story(8, "ann"), "ann-plan.txt", "ann")
    fingerprint = store.caches(doc["id"])[0]["model_fingerprint"]
    store.add_conversation(doc["id"], owner="ann", name="ann's question")
    library.share_document(store, doc["id"], "ann", "bob")

    own = library.export_document(store, doc["id"], fingerprint, "ann", folder=tmp_path / "ann")
    assert members(own) == ["cache.safetensors", "manifest.json", "source.txt", "text.txt"]
    bundle = library.export_document(store, doc["id"], fingerprint, "bob", folder=tmp_path / "bob")
    assert members(bundle) == ["cache.safetensors", "manifest.json", "text.txt"]  # no source file of ann's
    assert "without the source file" in library.export_message(bundle)

    before = stored(store)
    assert import_as(store, bundle, "bob", tiny) == f"refused: ann-plan.txt {READ_ONLY_AGAIN}"
    assert import_as(store, own, "bob", tiny) == f"refused: ann-plan.txt {READ_ONLY_AGAIN}"  # ann's own bundle too
    assert import_as(store, bundle, "mallory", tiny) == NOT_THEIRS
    assert stored(store) == before
    assert can(store, doc["id"], "bob") == READ and can(store, doc["id"], "mallory") == NONE
    with pytest.raises(StoreError, match="no document"):  # still cannot share it on
        library.share_document(store, doc["id"], "bob", "mallory")

    # the designed deduplication: cy uploads the same bytes — the stored copy, her own names only
    library.add_owner(store, doc["id"], "cy", "cy-copy.txt")
    entry = next(e for e in library.library(store, "embedded", fingerprint, owner="cy"))
    assert (entry["name"], entry["access"], entry["shared_with"]) == ("cy-copy.txt", "owner", [])
    assert store.threads(doc["id"], "cy") == [] and store.threads(doc["id"], "bob") == []
    library.delete_document(store, doc["id"], "cy")

    library.unshare_document(store, doc["id"], "ann")
    assert import_as(store, bundle, "bob", tiny) == NOT_THEIRS  # kept until after the unshare: nothing
    assert can(store, doc["id"], "bob") == NONE
    assert import_as(store, bundle, "ann", tiny) == "imported"  # its owner may (her own text)
    text_id = text_document_id(store.document_text(doc["id"]))
    library.delete_document(store, text_id, "ann")
    library.delete_document(store, doc["id"], "ann")
    for user in ("bob", "mallory", "ann"):
        assert import_as(store, bundle, user, tiny) == NOT_THEIRS
    assert store.documents() == [] and stored(store) == (0, 0, 0)


def test_a_sourceless_original_whose_ids_coincide(tmp_path, tiny):
    """ann's own document has no source (she imported a bundle without it), so bob's export
    of it imports under the very same text-derived id: bob's import, mallory's, and bob's
    after the unshare are refused all the same; ann's goes through; her delete removes it."""
    from bundle_helpers import rebuild

    first = Store(tmp_path / "first")
    origin = with_cache(first, tiny, story(9, "sourceless"), "notes.txt", "dee")
    fingerprint = first.caches(origin["id"])[0]["model_fingerprint"]
    sourced = library.export_document(first, origin["id"], fingerprint, "dee", folder=tmp_path / "dee")
    textonly = rebuild(sourced, tmp_path / "textonly.zip", drop=["source.txt"])

    store = Store(tmp_path / "store")
    assert import_as(store, textonly, "ann", tiny) == "imported"
    (doc,) = store.documents()
    assert doc["id"] == text_document_id(first.document_text(origin["id"])) and store.source_path(doc["id"]) is None
    library.share_document(store, doc["id"], "ann", "bob")
    bundle = library.export_document(store, doc["id"], fingerprint, "bob", folder=tmp_path / "bob")
    assert import_as(store, bundle, "bob", tiny) == f"refused: notes.txt {READ_ONLY_AGAIN}"
    assert import_as(store, bundle, "mallory", tiny) == NOT_THEIRS
    assert import_as(store, textonly, "mallory", tiny) == NOT_THEIRS  # the same text, however it comes
    assert import_as(store, bundle, "ann", tiny) == "imported"
    library.unshare_document(store, doc["id"], "ann")
    assert import_as(store, bundle, "bob", tiny) == NOT_THEIRS
    assert [row["owner"] for row in store.db["document_owners"].rows] == ["ann"]
    library.delete_document(store, doc["id"], "ann")
    assert store.documents() == [] and import_as(store, bundle, "bob", tiny) == NOT_THEIRS


def test_with_known_users_a_share_to_an_unknown_name_is_refused(team):
    store, doc_id = team
    users = {"ann", "bob"}
    with pytest.raises(StoreError) as info:
        library.share_document(store, doc_id, "ann", "bob, zed", users=users)
    assert str(info.value) == "no user named 'zed' can log in to this app: a share goes only to its users"
    assert sharing.shares_of(store, doc_id, "ann") == []  # nothing shared, not even with bob
    assert library.share_document(store, doc_id, "ann", "bob", users=users).endswith("with bob")
    assert library.share_document(store, doc_id, "ann", "everyone", users=users).endswith("with everyone")
    assert "Hugging Face username" in library.share_info(True) and "Hugging Face" not in library.share_info(False)
