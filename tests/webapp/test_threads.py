"""Conversation threads kept on the server (app.threads): several named threads per document
and user, isolation between users by id, rename, delete, and a restart that reattaches the
stored cache (a new ChatService over the same store on disk) — tiny random model, no browser."""

from __future__ import annotations

import pytest
from store_helpers import story

from app.chat import ChatError, ChatService, describe_turn
from app.ingest import add_to_store, ingest_bytes
from app.threads import CACHE_GONE, Threads
from homer import HomerConfig, build_document_cache
from homer.generation import GenerationSettings
from storage import Store, StoreError

FAST = HomerConfig(significance="uncalibrated")
SHORT = GenerationSettings(max_new_tokens=3)


@pytest.fixture(autouse=True)
def cache_only(configure):
    # the cache's conversation (random weights, made-up questions), no sources line
    configure(answering={"focus": "cache", "citations": False})


def add_ready(store, tiny, data: bytes, name: str) -> tuple[dict, dict]:
    model, tokenizer, _ = tiny
    doc = add_to_store(store, ingest_bytes(data, name, tokenizer))
    cache = build_document_cache(
        model, tokenizer, store.document_text(doc["id"]), FAST, metadata={"document_id": doc["id"]}
    )
    return doc, store.save_cache(doc["id"], cache)


def service(root, tiny) -> Threads:
    return Threads(ChatService(Store(root), loader=lambda name: tiny))


def ask(threads, key, owner, doc_id, question, thread_id=None):
    *_, (answer, stats) = threads.ask(
        key, owner, doc_id, question, thread_id=thread_id, model_name="tiny", generation=SHORT
    )
    return answer, stats


def test_several_named_threads_per_document_and_user(tmp_path, tiny):
    threads = service(tmp_path / "store", tiny)
    doc, _ = add_ready(threads.store, tiny, story(30).encode(), "ada.txt")
    _, first = ask(threads, "s", "ada", doc["id"], "Who kept the lamp on the hill in the long winter " + "x" * 90)
    a = first["thread_id"]
    assert threads.current("s", doc["id"]) == a
    ask(threads, "s", "ada", doc["id"], "And then?")  # the same thread goes on
    b = threads.new("s", "ada", doc["id"])
    _, stats = ask(threads, "s", "ada", doc["id"], "Where is the sea?")
    assert stats["thread_id"] == b and stats["turn"] == 1
    listed = threads.list("ada", doc["id"])
    assert [t["id"] for t in listed] == [b, a]  # the most recently used first
    assert listed[1]["messages"] == 4 and listed[0]["messages"] == 2
    assert listed[0]["name"] == "Where is the sea?"
    assert listed[1]["name"].startswith("Who kept the lamp") and len(listed[1]["name"]) <= 80
    # back in thread A: its turn 3, B untouched
    _, again = ask(threads, "s", "ada", doc["id"], "Why?", thread_id=a)
    assert again["thread_id"] == a and again["turn"] == 3
    assert len(threads.store.thread(b, "ada")["messages"]) == 2
    # rename, and a name is cut to 80 characters
    assert threads.rename("ada", a, "  The   lamp  ") == "The lamp"
    assert len(threads.rename("ada", b, "y" * 200)) == 80
    assert {t["name"] for t in threads.list("ada", doc["id"])} == {"The lamp", "y" * 79 + "…"}
    with pytest.raises(ChatError):
        threads.rename("ada", a, "   ")
    # an empty new thread is listed too, and opens empty
    c = threads.new("s", "ada", doc["id"], name="Later")
    assert threads.list("ada", doc["id"])[0]["id"] == c
    assert threads.open("s", "ada", doc["id"], c)["messages"] == []
    # delete one thread: the others stay; the session answering in it starts a new one
    threads.open("s", "ada", doc["id"], b)
    threads.delete("ada", b)
    assert [t["id"] for t in threads.list("ada", doc["id"])] == [c, a]
    assert threads.current("s", doc["id"]) is None
    _, fresh = ask(threads, "s", "ada", doc["id"], "Anew?")
    assert fresh["thread_id"] not in (a, b, c) and fresh["turn"] == 1
    with pytest.raises(ChatError, match="no thread"):
        threads.open("s", "ada", doc["id"], b)
    # deleting the document removes its threads
    threads.store.delete_document(doc["id"])
    assert threads.store.conversations(doc["id"]) == []


def test_threads_are_private_to_their_user(tmp_path, tiny):
    threads = service(tmp_path / "store", tiny)
    doc, _ = add_ready(threads.store, tiny, story(30).encode(), "ada.txt")
    _, stats = ask(threads, "ada-session", "ada", doc["id"], "Who kept the lamp?")
    mine = stats["thread_id"]
    assert threads.list("bob", doc["id"]) == [] and threads.list(None, doc["id"]) == []
    missing = "0" * 32
    for action in (
        lambda t: threads.open("bob-session", "bob", doc["id"], t),
        lambda t: threads.rename("bob", t, "mine now"),
        lambda t: threads.delete("bob", t),
        lambda t: list(
            threads.ask("bob-session", "bob", doc["id"], "Hi?", thread_id=t, model_name="tiny", generation=SHORT)
        ),
        lambda t: threads.open("anon", None, doc["id"], t),
    ):  # without login: not an owned thread
        answers = []
        for thread_id in (mine, missing):
            with pytest.raises(ChatError) as caught:
                action(thread_id)
            answers.append(str(caught.value).replace(thread_id, "ID"))
        assert answers[0] == answers[1] == "no thread ID"  # the same answer as for a missing one
    with pytest.raises(StoreError, match="no thread"):
        threads.store.thread(mine, "bob")
    # ada's thread is intact; bob's own question makes bob's own thread
    assert threads.store.thread(mine, "ada")["name"] == "Who kept the lamp?"
    _, his = ask(threads, "bob-session", "bob", doc["id"], "Where?")
    assert his["thread_id"] != mine and [t["id"] for t in threads.list("bob", doc["id"])] == [his["thread_id"]]
    # a thread id of another document is not a thread of this one
    other, _ = add_ready(threads.store, tiny, story(20, "b").encode(), "b.txt")
    with pytest.raises(ChatError, match="no thread"):
        threads.open("ada-session", "ada", other["id"], mine)


def test_a_thread_reopened_after_a_restart_reattaches_its_cache(tmp_path, tiny, monkeypatch):
    root = tmp_path / "store"
    first = service(root, tiny)
    doc, row = add_ready(first.store, tiny, story(40).encode(), "ada.txt")
    _, stats = ask(first, "s1", "ada", doc["id"], "Who kept the lamp?")
    thread_id = stats["thread_id"]
    stored = first.store.thread(thread_id, "ada")
    assert stored["cache_id"] == row["id"] and len(stored["turns"]) == 1
    earlier = stored["turns"][0]

    # a restart: a new ChatService over the same store on disk; the document is never read or built again
    import homer

    def refuse(*args, **kwargs):
        raise AssertionError("the document was read again")

    monkeypatch.setattr(Store, "document_text", refuse)
    monkeypatch.setattr(homer, "build_document_cache", refuse)
    second = service(root, tiny)
    opened = second.open("s2", "ada", doc["id"], thread_id)
    assert [m["role"] for m in opened["messages"]] == ["user", "assistant"] and opened["notice"] == ""
    assert opened["messages"][0]["content"] == "Who kept the lamp?"
    assert second.chat.history("s2", doc["id"]) == opened["messages"]
    _, follow = ask(second, "s2", "ada", doc["id"], "And then?")
    assert follow["thread_id"] == thread_id and follow["turn"] == 2
    assert follow["cache_id"] == row["id"] and follow["cache_reused"] and follow["cache_source"] == "disk"
    conversation = second.chat.session("s2", doc["id"]).conversation
    assert conversation.turns[0] == earlier  # the earlier turn was re-appended after the stored cache
    _, tokenizer, _ = tiny
    earlier_tokens = len(tokenizer(earlier[0] + earlier[1], add_special_tokens=False)["input_ids"])
    assert follow["appended_tokens"] > earlier_tokens  # the earlier turn and the new question, not the document
    assert follow["appended_tokens"] < follow["document_tokens"]
    assert len(second.store.thread(thread_id, "ada")["messages"]) == 4


def test_a_thread_whose_cache_was_rebuilt_says_so(tmp_path, tiny):
    root = tmp_path / "store"
    first = service(root, tiny)
    doc, row = add_ready(first.store, tiny, story(30).encode(), "ada.txt")
    _, stats = ask(first, "s", None, doc["id"], "Who kept the lamp?")  # without login: owner None
    thread_id = stats["thread_id"]
    first.store.delete_cache(row["id"])  # deleted, and built again with other settings (another key)
    model, tokenizer, _ = tiny
    other = build_document_cache(
        model,
        tokenizer,
        first.store.document_text(doc["id"]),
        HomerConfig(significance="uncalibrated", warmup_layers=1),
        metadata={"document_id": doc["id"]},
    )
    rebuilt = first.store.save_cache(doc["id"], other)
    assert rebuilt["id"] != row["id"]
    assert [t["id"] for t in first.list(None, doc["id"])] == [thread_id]  # the thread outlived its cache

    second = service(root, tiny)
    opened = second.open("s", None, doc["id"], thread_id)
    assert opened["notice"] == CACHE_GONE and len(opened["messages"]) == 2  # the text history is shown
    _, follow = ask(second, "s", None, doc["id"], "And then?")
    assert follow["cache_id"] == rebuilt["id"] and follow["thread_id"] == thread_id
    assert follow["turn"] == 1 and follow["thread_notice"]  # the model starts over from the current cache
    assert "cache" in describe_turn(follow) and follow["thread_notice"] in describe_turn(follow)
    assert second.chat.session("s", doc["id"]).conversation.turns[:-1] == []
    after = second.store.thread(thread_id, None)
    assert after["cache_id"] == rebuilt["id"] and len(after["messages"]) == 4 and len(after["turns"]) == 1


# --- through the UI's API: /threads, /new_thread, /open_thread, /rename_thread, /delete_thread ------


@pytest.mark.e2e
def test_threads_through_the_api_with_login(tmp_path, tiny, monkeypatch):
    gradio_client = pytest.importorskip("gradio_client")
    from app_helpers import add_ready_document, free_port

    from app.ui import build_ui

    chat = ChatService(Store(tmp_path / "store"), loader=lambda name: tiny)
    model, tokenizer, _ = tiny
    doc = add_ready_document(chat.store, model, tokenizer, story(30).encode(), "ada.txt", "ann")
    add_ready_document(chat.store, model, tokenizer, story(30).encode(), "mine.txt", "bob")  # the same content
    demo = build_ui(chat.store, None, chat, "tiny", auth=True, refresh_seconds=0.5)
    demo.queue()
    demo.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        show_error=True,
        auth=[("ann", "pw-a"), ("bob", "pw-b")],
        quiet=True,
    )
    try:
        ann = gradio_client.Client(demo.local_url, auth=("ann", "pw-a"), verbose=False)
        bob = gradio_client.Client(demo.local_url, auth=("bob", "pw-b"), verbose=False)
        _, _, _, stats = ann.predict(doc["id"], "Who kept the lamp?", 0.0, 8, api_name="/ask")  # no thread picked
        first = stats["thread_id"]
        listed = ann.predict(doc["id"], api_name="/threads")
        assert [(t["id"], t["name"], t["current"]) for t in listed] == [(first, "Who kept the lamp?", True)]
        history, line, _, _ = ann.predict(doc["id"], api_name="/new_thread")
        assert history == [] and "new thread" in line
        _, _, _, stats = ann.predict(doc["id"], "Where is the sea?", 0.0, 8, api_name="/ask")
        second = stats["thread_id"]
        assert second != first and stats["turn"] == 1
        assert [t["id"] for t in ann.predict(doc["id"], api_name="/threads")] == [second, first]
        history, _, picked, name = ann.predict(doc["id"], first, api_name="/open_thread")
        assert [m["role"] for m in history] == ["user", "assistant"] and picked["value"] == first
        assert ["Who kept the lamp? · 1 turn", first] in picked["choices"] and name == "Who kept the lamp?"
        _, _, _, stats = ann.predict(doc["id"], "And then?", 0.0, 8, api_name="/ask")
        assert stats["thread_id"] == first and stats["turn"] == 2
        picked, name = ann.predict(doc["id"], first, "The lamp", api_name="/rename_thread")
        assert name == "The lamp"
        # bob shares the document's content, never ann's threads
        assert bob.predict(doc["id"], api_name="/threads") == []
        for endpoint, args in (
            ("/open_thread", (doc["id"], first)),
            ("/delete_thread", (doc["id"], first)),
            ("/rename_thread", (doc["id"], first, "mine")),
        ):
            with pytest.raises(Exception, match="no thread"):
                bob.predict(*args, api_name=endpoint)
        ann.predict(doc["id"], second, api_name="/delete_thread")
        assert [(t["id"], t["name"]) for t in ann.predict(doc["id"], api_name="/threads")] == [(first, "The lamp")]
    finally:
        demo.close()
