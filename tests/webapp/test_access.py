"""One answer for "not found" and "not yours": with login on, a reference (full id, id prefix,
file name, title) is looked up among the asking user's documents only, so another user's
document gets exactly the answer a reference nobody uses gets — through the library's
functions and through the running app's API as two users."""

from __future__ import annotations

import hashlib
import json
import secrets

import pytest
from store_helpers import story

from app import library
from app.ingest import add_to_store, ingest_bytes
from storage import Store, StoreError


def add(store, text: str, name: str, owner: str) -> dict:
    doc = add_to_store(store, ingest_bytes(text.encode(), name))
    library.add_owner(store, doc["id"], owner)
    return doc


def refusal(call) -> str:
    with pytest.raises(StoreError) as info:
        call()
    return str(info.value)


def same_shape_unused(ref: str) -> str:
    """A reference of the same form and length that names no document."""
    if all(c in "0123456789abcdef" for c in ref):
        return secrets.token_hex(32)[: len(ref)]
    return "q" * (len(ref) - 4) + ref[-4:]


def normalised(answer, ref: str) -> str:
    return json.dumps(answer, sort_keys=True, default=str).replace(ref, "<ref>")


@pytest.fixture
def two_users(tmp_path):
    store = Store(tmp_path / "store")
    ann = add(store, story(10, "ann"), "ann-notes.txt", "ann")
    return store, ann


def test_another_users_document_is_refused_exactly_like_a_missing_one(two_users):
    store, ann = two_users
    refs = [ann["id"], ann["id"][:12], ann["id"][:3], "ann-notes.txt", "ann-notes"]
    for ref in refs:
        unused = same_shape_unused(ref)
        for call in (
            lambda r: library.check_access(store, r, "bob"),
            lambda r: library.delete_document(store, r, "bob"),
        ):
            theirs, nobodys = refusal(lambda: call(ref)), refusal(lambda: call(unused))
            assert (
                theirs.replace(ref, "<ref>")
                == nobodys.replace(unused, "<ref>")
                == "no document '<ref>' in your library"
            )
    # ann herself reaches it by every reference, and bob's attempts changed nothing
    assert {library.check_access(store, ref, "ann")["id"] for ref in refs} == {ann["id"]}
    assert store.get_document(ann["id"]) is not None


def test_a_prefix_is_unique_within_the_users_own_library(tmp_path):
    """Ambiguity counts only the user's documents: bob's one document starting with "x" is
    found by "x" however many of ann's share it, and the count never includes hers."""
    store = Store(tmp_path / "store")
    texts = (story(3, f"n{i}") for i in range(10_000))
    by_first: dict[str, list[str]] = {}
    for text in texts:
        by_first.setdefault(hashlib.sha256(text.encode()).hexdigest()[0], []).append(text)
        if any(len(v) >= 4 for v in by_first.values()):
            break
    first, same = next((k, v) for k, v in by_first.items() if len(v) >= 4)
    anns = [add(store, text, f"a{i}.txt", "ann") for i, text in enumerate(same[:3])]
    bobs = add(store, same[3], "b.txt", "bob")
    assert library.check_access(store, first, "bob")["id"] == bobs["id"]
    assert (
        refusal(lambda: library.check_access(store, first, "ann"))
        == f"{first!r} matches 3 documents in your library; use more of the id"
    )
    # the same file name in two libraries: each user gets their own
    shared_name = add(store, story(3, "bob-two"), "a0.txt", "bob")
    assert library.check_access(store, "a0.txt", "bob")["id"] == shared_name["id"]
    assert library.check_access(store, "a0.txt", "ann")["id"] == anns[0]["id"]


def test_like_wildcards_in_a_reference_match_nothing(two_users):
    store, _ = two_users
    for ref in ("%", "_", "%notes%"):
        assert refusal(lambda: library.check_access(store, ref, "bob")) == f"no document {ref!r} in your library"
        assert refusal(lambda: library.check_access(store, ref, "ann")) == f"no document {ref!r} in your library"


@pytest.mark.e2e
def test_through_the_running_app_as_two_users(tmp_path, model_dir):
    """Every endpoint that takes a document reference (ask, clear, export, delete, inspect,
    read again) answers bob's references to ann's document byte for byte as it answers an
    unused reference of the same form (the reference itself substituted)."""
    gradio_client = pytest.importorskip("gradio_client")
    from app_helpers import running_app
    from test_app_e2e import wait_ready

    book = tmp_path / "ann-notes.txt"
    book.write_text(story(12, "ann"))
    document_id = hashlib.sha256(book.read_bytes()).hexdigest()
    with running_app(tmp_path / "home", model_dir, "--auth", "ann:pw-a", "--auth", "bob:pw-b") as url:
        ann = gradio_client.Client(url, auth=("ann", "pw-a"), verbose=False)
        bob = gradio_client.Client(url, auth=("bob", "pw-b"), verbose=False)
        ann.predict([gradio_client.handle_file(str(book))], api_name="/upload")
        assert wait_ready(ann, "ann-notes.txt")[1] == "ready"

        def answer(client, endpoint: str, ref: str):
            args = {
                "/ask": (ref, "Who?", 0.0, 8),
                "/export": (ref,),
                "/delete": (ref,),
                "/inspect": (ref,),
                "/clear": (ref,),
                "/read_again": (ref,),
            }[endpoint]
            try:
                return ["ok", client.predict(*args, api_name=endpoint)]
            except Exception as exc:  # gradio_client raises the app's gr.Error with its message
                return ["error", str(exc)]

        endpoints = ["/ask", "/export", "/inspect", "/clear", "/read_again", "/delete"]
        for ref in (document_id, document_id[:12], document_id[:2], "ann-notes.txt", "ann-notes"):
            unused = same_shape_unused(ref)
            for endpoint in endpoints:
                theirs, nobodys = answer(bob, endpoint, ref), answer(bob, endpoint, unused)
                assert normalised(theirs, ref) == normalised(nobodys, unused), (endpoint, ref, theirs, nobodys)
                if endpoint != "/clear":  # clear answers an empty chat whatever it is given
                    assert "in your library" in json.dumps(theirs), (endpoint, theirs)
        # ann's document survived bob's deletes, and ann still reaches it by every reference
        assert answer(ann, "/ask", "ann-notes.txt")[0] == "ok"
        assert answer(ann, "/export", document_id[:12])[0] == "ok"
        assert [row[0] for row in bob.predict(api_name="/library")["data"]] == []


def test_a_second_uploader_of_the_same_bytes_never_sees_the_first_ones_names(tmp_path):
    """Documents are stored once per content: bob uploading ann's exact bytes as his own file
    shares the stored document and its cache, but sees his file name and title, never ann's,
    and cannot reach it by ann's name."""
    store = Store(tmp_path / "store")
    text = story(8, "shared")
    ann = add_to_store(store, ingest_bytes(text.encode(), "ann-secret-plan.txt"))
    library.add_owner(store, ann["id"], "ann", "ann-secret-plan.txt")
    again = add_to_store(store, ingest_bytes(text.encode(), "bob-copy.txt"))
    assert again["id"] == ann["id"]
    library.add_owner(store, ann["id"], "bob", "bob-copy.txt")
    seen = library.check_access(store, ann["id"], "bob")
    assert (seen["file_name"], seen["title"]) == ("bob-copy.txt", "bob-copy")
    assert [(d["file_name"], d["title"]) for d in library.visible_documents(store, "bob")] == [
        ("bob-copy.txt", "bob-copy")
    ]
    assert library.check_access(store, "bob-copy", "bob")["id"] == ann["id"]
    for ref in ("ann-secret-plan.txt", "ann-secret-plan"):
        assert refusal(lambda: library.check_access(store, ref, "bob")) == f"no document {ref!r} in your library"
    entries = library.library(store, "embedded", "f" * 32, owner="bob")
    assert [(e["name"], e["title"]) for e in entries] == [("bob-copy.txt", "bob-copy")]
    assert "ann-secret" not in json.dumps(library.table_rows(entries))
    # ann still sees her own names
    assert library.check_access(store, ann["id"], "ann")["file_name"] == "ann-secret-plan.txt"
    assert library.delete_document(store, ann["id"], "bob") == "removed bob-copy.txt from your library"
    # the last owner's delete removes the stored copy, with the same words
    assert library.delete_document(store, ann["id"], "ann") == "removed ann-secret-plan.txt from your library"
    assert store.get_document(ann["id"]) is None


def test_an_export_carries_the_exporters_names_only(tmp_path):
    """bob's bundle of content ann uploaded first names bob's file, not ann's."""
    import zipfile

    from conftest import tiny_model, tiny_tokenizer

    from homer import HomerConfig, build_document_cache

    store = Store(tmp_path / "store")
    text = story(8, "shared")
    doc = add_to_store(store, ingest_bytes(text.encode(), "ann-secret-plan.txt"))
    library.add_owner(store, doc["id"], "ann", "ann-secret-plan.txt")
    library.add_owner(store, doc["id"], "bob", "bob-copy.txt")
    store.save_cache(
        doc["id"],
        build_document_cache(
            tiny_model("llama", window=1024), tiny_tokenizer(), text, HomerConfig(significance="uncalibrated")
        ),
    )
    fingerprint = store.caches(doc["id"])[0]["model_fingerprint"]
    bundle = library.export_document(store, doc["id"], fingerprint, "bob", folder=tmp_path / "out")
    assert bundle.name == "bob-copy.homer-bundle.zip"
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert "ann-secret" not in json.dumps(manifest)
    assert (manifest["document"]["file_name"], manifest["document"]["title"]) == ("bob-copy.txt", "bob-copy")
    second = Store(tmp_path / "second")  # and it imports as bob's document elsewhere
    row = library.import_bundle_file(second, bundle, fingerprint, "bob", tokenizer=tiny_tokenizer())
    assert row["document_id"] == doc["id"] and second.document(doc["id"])["file_name"] == "bob-copy.txt"
