"""The team library through the running app as two users (``--auth``), by full id and by id
prefix: private → bob is refused on every endpoint exactly as for a missing document; ann
shares it with bob → bob lists it (read-only), asks, inspects and exports it, while /delete,
/read_again and /share are refused; unshared → refused again like a missing document;
shared again and deleted by ann → refused. A grantee's export and re-import, passed on or
kept past the unshare, never grants access, and a share to a name nobody can log in as is
refused (one app for both). And the UI's handlers take a Hugging Face profile as the user
(injected as gradio injects it; no network), whose Share box says a name is a Hugging Face
username."""

from __future__ import annotations

import hashlib
import json

import pytest
from store_helpers import story
from test_access import normalised, same_shape_unused

ENDPOINTS = ["/ask", "/export", "/inspect", "/read_again", "/delete", "/share", "/unshare"]


def call(client, endpoint: str, ref: str):
    args = {
        "/ask": (ref, "Who?", 0.0, 8),
        "/export": (ref,),
        "/inspect": (ref,),
        "/read_again": (ref,),
        "/delete": (ref,),
        "/share": (ref, "cy"),
        "/unshare": (ref, ""),
    }[endpoint]
    try:
        return ["ok", client.predict(*args, api_name=endpoint)]
    except Exception as exc:  # gradio_client raises the app's gr.Error with its message
        return ["error", str(exc)]


def refused_like_missing(client, ref: str) -> None:
    """Every endpoint answers ``ref`` as it answers an unused reference of the same form."""
    unused = same_shape_unused(ref)
    for endpoint in ENDPOINTS:
        theirs, nobodys = call(client, endpoint, ref), call(client, endpoint, unused)
        assert normalised(theirs, ref) == normalised(nobodys, unused), (endpoint, ref, theirs, nobodys)
        assert "in your library" in json.dumps(theirs), (endpoint, theirs)


def rows(client) -> list[list]:
    return client.predict(api_name="/library")["data"]


@pytest.mark.e2e
@pytest.mark.parametrize("length", [64, 12])
def test_private_shared_unshared_deleted_through_the_running_app(tmp_path, model_dir, length):
    gradio_client = pytest.importorskip("gradio_client")
    from app_helpers import running_app
    from test_app_e2e import wait_ready

    book = tmp_path / "ann-plan.txt"
    book.write_text(story(12, "ann"))
    document_id = hashlib.sha256(book.read_bytes()).hexdigest()
    ref = document_id[:length]
    with running_app(
        tmp_path / "home", model_dir, "--auth", "ann:pw-a", "--auth", "bob:pw-b", env={"HOMER_FOCUS": "cache"}
    ) as url:
        ann = gradio_client.Client(url, auth=("ann", "pw-a"), verbose=False)
        bob = gradio_client.Client(url, auth=("bob", "pw-b"), verbose=False)
        ann.predict([gradio_client.handle_file(str(book))], api_name="/upload")
        assert wait_ready(ann, "ann-plan.txt")[1] == "ready"
        assert rows(ann)[0][-1] == "yours"

        # private
        refused_like_missing(bob, ref)
        assert rows(bob) == []

        # shared with bob: read-only
        assert ann.predict(ref, "bob", api_name="/share") == "✓ shared ann-plan.txt read-only with bob"
        assert rows(ann)[0][-1] == "yours · shared with bob"
        (row,) = rows(bob)
        assert (row[0], row[1], row[-2], row[-1]) == (
            "ann-plan.txt",
            "ready",
            document_id[:12],
            "shared with you (read-only)",
        )
        history, _, _, stats = bob.predict(ref, "Who kept the lamp?", 0.0, 8, api_name="/ask")
        assert stats["cache_reused"] and history[-1]["role"] == "assistant"  # ann's cache, not rebuilt
        assert not call(bob, "/inspect", ref)[1][2].startswith("✗")
        path, line = bob.predict(ref, api_name="/export")
        assert line.startswith("✓ exported ann-plan.homer-bundle.zip")
        for endpoint, doing in (("/delete", "delete"), ("/read_again", "read")):
            answer = call(bob, endpoint, ref)
            assert answer == ["ok", f"✗ ann-plan.txt is shared with you read-only: only its owner can {doing} it"]
        assert call(bob, "/share", ref)[1].startswith("✗ no document")  # a grantee cannot share it on
        assert rows(ann)[0][0] == "ann-plan.txt"  # bob's attempts changed nothing

        # unshared: refused again exactly like a missing document
        assert ann.predict(ref, "", api_name="/unshare") == "✓ ann-plan.txt is private"
        refused_like_missing(bob, ref)
        assert rows(bob) == [] and rows(ann)[0][-1] == "yours"

        # shared with everyone, then deleted by its owner: refused
        assert ann.predict(ref, "everyone", api_name="/share").endswith("read-only with everyone")
        assert rows(bob)[0][-1] == "shared with you (read-only)"
        assert ann.predict(ref, api_name="/delete") == "removed ann-plan.txt from your library"
        refused_like_missing(bob, ref)
        assert rows(bob) == [] and rows(ann) == []


def test_handlers_take_the_hugging_face_profile_as_the_user(tmp_path, monkeypatch):
    """With sign-in with Hugging Face on, the handlers' user is the profile gradio injects
    (``gr.OAuthProfile``); signed out the library is empty and uploads are refused."""
    import gradio as gr
    import gradio.oauth
    from conftest import tiny_model, tiny_tokenizer

    from app import library
    from app.chat import ChatService
    from app.mcp_tools import SIGN_IN, Access
    from app.ui import build_ui
    from homer.fingerprint import model_fingerprint
    from storage import Store

    # gradio attaches sign-in routes when it sees a LoginButton; off a Space its mocked
    # sign-in asks the Hub who this machine is logged in as: answer without the network
    monkeypatch.setattr(gradio.oauth, "_get_mocked_oauth_info", lambda: {"userinfo": {}})
    model, tokenizer = tiny_model("llama", window=1024), tiny_tokenizer()
    fingerprint = model_fingerprint(model)
    service = ChatService(Store(tmp_path / "store"), loader=lambda name: (model, tokenizer, fingerprint))
    from app_helpers import add_ready_document

    doc = add_ready_document(service.store, model, tokenizer, story(6, "cy").encode(), "cy-notes.txt", owner="cy")
    demo = build_ui(service.store, None, service, "tiny", access=Access(oauth=True))
    assert demo.expects_oauth  # the Sign in button is there
    (share_with,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "share-with"]
    assert "a name is a hugging face username: the share goes to whoever holds that name" in share_with.info.lower()
    fns = {fn.api_name: fn.fn for fn in demo.fns.values() if fn.api_name}
    from gradio.utils import get_type_hints, is_special_typed_parameter

    for name in ("library", "upload", "ask", "delete", "share", "unshare", "export", "inspect", "list_documents"):
        assert is_special_typed_parameter("profile", get_type_hints(fns[name])), name  # gradio injects it

    def profile(name: str) -> gr.OAuthProfile:
        return gr.OAuthProfile(
            {
                "name": name.title(),
                "preferred_username": name,
                "profile": f"https://huggingface.co/{name}",
                "picture": "",
            }
        )

    table, _ = fns["library"]("tiny", None, profile("cy"))
    assert table["document"].tolist() == ["cy-notes.txt"] and table["access"].tolist() == ["yours"]
    assert fns["library"]("tiny", None, profile("dee"))[0].empty
    assert fns["library"]("tiny", None, None)[0].empty  # signed out: no library
    assert list(fns["upload"](["x.txt"], "tiny", {}, None, None)) == [(f"✗ {SIGN_IN}", None)]
    assert fns["delete"](doc["id"], None, None) == f"✗ {SIGN_IN}"
    assert fns["share"](doc["id"][:12], "dee", None, profile("dee")).startswith("✗ no document")
    assert fns["share"](doc["id"][:12], "dee", None, profile("cy")) == "✓ shared cy-notes.txt read-only with dee"
    table, _ = fns["library"]("tiny", None, profile("dee"))
    assert table["access"].tolist() == ["shared with you (read-only)"]
    assert library.check_access(service.store, doc["id"], "dee")["access"] == "shared"
    assert fns["delete"](doc["id"], None, profile("dee")).endswith("only its owner can delete it")
    assert fns["delete"](doc["id"], None, profile("cy")) == "removed cy-notes.txt from your library"


# --- issue 22: a share is never laundered; a share names a user the app knows ----------------------
USERS = {"ann": "pw-a", "bob": "pw-b", "mallory": "pw-m", "cy": "pw-c"}


@pytest.fixture(scope="module")
def team(tmp_path_factory, model_dir):
    """One running app (``--auth``, four users) for the tests below; yields (clients, folder)."""
    gradio_client = pytest.importorskip("gradio_client")
    from app_helpers import running_app

    folder = tmp_path_factory.mktemp("team-app")
    logins = [arg for name, password in USERS.items() for arg in ("--auth", f"{name}:{password}")]
    with running_app(folder / "home", model_dir, *logins, env={"HOMER_FOCUS": "cache"}) as url:
        yield (
            {name: gradio_client.Client(url, auth=(name, password), verbose=False) for name, password in USERS.items()},
            folder,
        )


def upload_ready(client, path) -> None:
    from gradio_client import handle_file
    from test_app_e2e import wait_ready

    client.predict([handle_file(str(path))], api_name="/upload")
    assert wait_ready(client, path.name)[1] == "ready"


def import_(client, bundle) -> str:
    from gradio_client import handle_file

    return client.predict(handle_file(str(bundle)), api_name="/import_bundle")


def stored_rows(home) -> tuple:
    """(documents, caches, owner rows) in the running app's store, read without writing."""
    import sqlite3

    with sqlite3.connect(f"file:{home / 'store' / 'index.db'}?mode=ro", uri=True) as db:
        return tuple(
            db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("documents", "caches", "document_owners")
        )


@pytest.mark.e2e
def test_a_read_only_grantee_never_launders_a_share_through_the_running_app(team):
    """Finding 1, as it was shown: bob, a read-only grantee, exports ann's document and imports
    the bundle to become an owner, shares it on to mallory, and keeps it after ann unshares and
    deletes. Now: bob's bundle holds no source file; his import, and mallory's, are refused in
    one line and write nothing; bob stays read-only and cannot share on; after the unshare and
    the delete nobody reaches it and nothing of it is stored. cy uploading the same bytes (the
    designed deduplication) sees her own names, no shares and no threads of ann's or bob's."""
    import zipfile

    clients, folder = team
    ann, bob, mallory, cy = (clients[n] for n in ("ann", "bob", "mallory", "cy"))
    book = folder / "ann-plan.txt"
    book.write_text(story(12, "plan"))
    document_id = hashlib.sha256(book.read_bytes()).hexdigest()
    ref = document_id[:12]
    upload_ready(ann, book)
    ann.predict(ref, "Who kept the lamp?", 0.0, 8, api_name="/ask")  # ann's thread
    assert ann.predict(ref, "bob", api_name="/share") == "✓ shared ann-plan.txt read-only with bob"
    bob.predict(ref, "What was her name?", 0.0, 8, api_name="/ask")  # bob's thread

    theirs, line = bob.predict(ref, api_name="/export")
    assert sorted(zipfile.ZipFile(theirs).namelist()) == ["cache.safetensors", "manifest.json", "text.txt"]
    assert "text and cache only, without the source file" in line
    own, _ = ann.predict(ref, api_name="/export")
    assert "source.txt" in zipfile.ZipFile(own).namelist()

    before = stored_rows(folder / "home")
    again = (
        "✗ refused: ann-plan.txt is already in your library, shared with you read-only: importing it changes nothing"
    )
    assert import_(bob, theirs) == again and import_(bob, own) == again
    passed_on = (
        "✗ refused: this bundle was exported from a document shared read-only with its exporter; only "
        "that document's owner can share it with you"
    )
    assert import_(mallory, theirs) == passed_on
    assert stored_rows(folder / "home") == before  # nothing written by the refused imports
    assert [row[-1] for row in rows(bob)] == ["shared with you (read-only)"] and rows(mallory) == []
    assert call(bob, "/share", ref)[1].startswith("✗ no document")  # still cannot share it on
    assert call(bob, "/delete", ref)[1].endswith("only its owner can delete it")

    # the designed deduplication: the stored copy, but only cy's own names, shares and threads
    cy_copy = folder / "cy-copy.txt"
    cy_copy.write_bytes(book.read_bytes())
    upload_ready(cy, cy_copy)
    assert [(row[0], row[-1]) for row in rows(cy)] == [("cy-copy.txt", "yours")]
    assert cy.predict(ref, api_name="/threads") == []
    assert [t["name"] for t in bob.predict(ref, api_name="/threads")] == ["What was her name?"]
    assert [t["name"] for t in ann.predict(ref, api_name="/threads")] == ["Who kept the lamp?"]
    assert cy.predict(ref, api_name="/delete") == "removed cy-copy.txt from your library"

    # unshare: bob's kept bundle gives him nothing
    assert ann.predict(ref, "", api_name="/unshare") == "✓ ann-plan.txt is private"
    assert import_(bob, theirs) == passed_on and rows(bob) == []
    refused_like_missing(bob, ref)

    # shared with everyone, then deleted: nobody reaches it, re-imports included, nothing stays
    ann.predict(ref, "everyone", api_name="/share")
    assert [row[-1] for row in rows(mallory)] == ["shared with you (read-only)"]
    assert ann.predict(ref, api_name="/delete") == "removed ann-plan.txt from your library"
    for client in (bob, mallory, cy):
        assert import_(client, theirs) == passed_on and rows(client) == []
    refused_like_missing(mallory, ref)
    assert stored_rows(folder / "home") == (0, 0, 0)


@pytest.mark.slow
def test_a_share_to_a_name_nobody_can_log_in_as_is_refused(team):
    """Finding 10: with --auth the app knows its users, so a share to an unknown name (which
    would go to whoever got that name later) is refused in one line and shares nothing."""
    clients, folder = team
    ann, mallory = clients["ann"], clients["mallory"]
    book = folder / "ann-names.txt"
    book.write_text(story(6, "names"))
    ref = hashlib.sha256(book.read_bytes()).hexdigest()[:12]
    upload_ready(ann, book)
    refusal = "✗ no user named 'zed' can log in to this app: a share goes only to its users"
    assert ann.predict(ref, "zed", api_name="/share") == refusal
    assert ann.predict(ref, "mallory, zed", api_name="/share") == refusal  # all or nothing
    assert [row[-1] for row in rows(ann) if row[0] == "ann-names.txt"] == ["yours"] and rows(mallory) == []
    assert ann.predict(ref, "mallory", api_name="/share") == "✓ shared ann-names.txt read-only with mallory"
    assert [row[0] for row in rows(mallory)] == ["ann-names.txt"]
    assert ann.predict(ref, api_name="/delete") == "removed ann-names.txt from your library"
