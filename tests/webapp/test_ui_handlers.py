"""The UI's handlers called as plain functions of the services (no server, no browser), and
:meth:`app.ui.common.Services.bind`, which makes one the event function gradio calls: it must
keep what gradio reads — the signature less the services, the type hints that make gradio
inject ``gr.Request`` and ``gr.OAuthProfile``, a generator function staying one (streamed)."""

from __future__ import annotations

import inspect
import json

import pytest
from store_helpers import story


@pytest.fixture
def services(tmp_path):
    from conftest import tiny_model, tiny_tokenizer

    from app.chat import ChatService
    from app.mcp_tools import Access
    from app.ui.common import Services
    from homer.fingerprint import model_fingerprint
    from storage import Store

    model, tokenizer = tiny_model("llama", window=1024), tiny_tokenizer()
    fingerprint = model_fingerprint(model)
    chat = ChatService(Store(tmp_path / "store"), loader=lambda name: (model, tokenizer, fingerprint))
    return Services(chat.store, None, chat, Access(login=True))


def test_a_bound_handler_keeps_what_gradio_reads(services):
    from gradio.utils import get_function_params, get_type_hints, is_special_typed_parameter

    from app.ui import chat_tab, library_tab

    for handler, streamed in ((chat_tab.ask, True), (library_tab.upload, True), (library_tab.delete, False)):
        event = services.bind(handler)
        assert inspect.isgeneratorfunction(event) is streamed, handler.__name__
        assert event.__name__ == handler.__name__ and event.__doc__ == handler.__doc__
        names = list(inspect.signature(event).parameters)
        assert names == list(inspect.signature(handler).parameters)[1:], handler.__name__
        hints = get_type_hints(event)
        assert is_special_typed_parameter("request", hints) and is_special_typed_parameter("profile", hints)
        assert "services" not in [p[0] for p in get_function_params(event)]  # not an API parameter


def test_library_handlers_as_plain_functions(services):
    from app_helpers import add_ready_document

    from app import library
    from app.ui import library_tab

    model, tokenizer, _ = services.chat.model("tiny")
    doc = add_ready_document(services.store, model, tokenizer, story(6, "ada").encode(), "ada.txt", owner="ann")
    ann = type("Request", (), {"username": "ann", "session_hash": "s1"})()
    table, version = library_tab.refresh(services, "tiny", ann)
    assert list(table.columns) == library.TEAM_HEADERS and table["document"].tolist() == ["ada.txt"]
    assert [c[1] for c in json.loads(version)["ready"]] == [doc["id"]]  # (label, id)
    assert library_tab.delete(services, None, ann) == "Pick a document first."
    assert library_tab.share(services, doc["id"], " ", ann) == "Type user names (comma-separated), or everyone."
    assert library_tab.delete(services, doc["id"], ann) == "removed ada.txt from your library"
    assert library_tab.refresh(services, "tiny", ann)[0].empty


def test_the_pickers_pick_an_upload_made_in_the_chat_once_it_is_askable(services):
    from app.ui import pickers

    version = json.dumps(
        {
            "every": [["a.txt", "id-a"], ["b.txt", "id-b"]],
            "askable": [["a.txt", "id-a"]],
            "ready": [["a.txt", "id-a"]],
            "reading": {},
        }
    )
    lib, chat, share, insp, several, waiting, status = pickers.update_pickers(
        services, version, None, None, None, None, ["id-a", "gone"], [["id-a", "a.txt"]]
    )
    assert chat["value"] == "id-a" and waiting == [] and status == ""  # arrived: picked in the chat
    assert lib["choices"] == [("a.txt", "id-a"), ("b.txt", "id-b")] and lib["value"] is None
    assert share["value"] == "id-a" and insp["value"] is None  # inspecting costs: on request only
    assert several["value"] == ["id-a"]  # an id no longer askable leaves the selection
    assert (
        pickers.not_stored("x.txt", "queued for reading")
        == "x.txt: queued for reading: its text is not stored yet — ask again in a few seconds"
    )
    assert pickers.pending_line("x.txt", "reading failed: empty").startswith("✗ x.txt")


def test_the_focus_control_starts_at_homer_focus(configure):
    from app.settings import SettingsError, load_settings
    from app.ui.chat_tab import default_focus

    assert default_focus() == "auto"
    configure(answering={"focus": "passages"})
    assert default_focus() == "passages"
    with pytest.raises(SettingsError, match="HOMER_FOCUS"):  # an unknown strategy stops the start
        load_settings().changed(answering={"focus": "nonsense"})


def test_a_failed_upload_changes_the_refresh_version(tmp_path):
    """A reading that fails adds nothing to the library; the version the pickers' update
    listens to must change all the same, or the chat never says the upload failed."""
    from app.answering import upload_states
    from storage.store import Store

    store = Store(tmp_path / "store")
    job, _ = store.jobs.create("ab" * 32, "key-1", "tiny", None, file_name="too-long.txt")
    before = upload_states(store, None)
    assert before == {"ab" * 32: "queued"}
    store.jobs.fail(job["id"], "too-long.txt: the document is over 3,000 tokens")
    assert upload_states(store, None) == {"ab" * 32: "failed"} != before
    assert upload_states(store, "someone") == {}  # not their upload
