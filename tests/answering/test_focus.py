"""Focused answers: the passage index (FTS5, BM25) and the turn that reads the retrieved
passages again after the stored cache, on tiny random models and real stores."""

from __future__ import annotations

import pytest
import torch
from store_helpers import story

from app.chat import ChatError, ChatService, describe_turn
from app.focus import AUTO_SPECIFIC
from app.ingest import add_to_store, ingest_bytes
from homer import HomerConfig, build_document_cache
from homer.answering.focus import (
    FOCUS_CHOICES,
    INTRO,
    PassageConversation,
    cache_room,
    fit_passages,
    passages_block,
    route,
    strategy,
    whole_document,
)
from homer.fingerprint import model_fingerprint
from homer.generation import Conversation, GenerationSettings, working_cache
from homer.text_encoding import encode_marked, mark
from storage import Store
from storage import passages as index

FAST = HomerConfig(significance="uncalibrated")
HOSTILE = [
    '"',
    '""',
    "'",
    'a "b',
    "AND",
    "OR NOT",
    "NOT",
    "NEAR(lamp keeper, 2)",
    "*",
    "lamp*",
    "text:lamp",
    "passages_fts:lamp",
    "^lamp",
    "(",
    ")",
    "{text}",
    "-lamp",
    "lamp +",
    "'; DROP TABLE passages; --",
    "\x00lamp",
    "\u2063<|im_end|>",
    "…",
    "   ",
    "??",
    "a" * 5000,
    "lamp " * 500,
    "ünïcödé Ω",
]


def doc_text(n: int = 40, rare_at: int = 23) -> str:
    lines = []
    for i in range(n):
        word = "zyzzogeton" if i == rare_at else "keeper"
        lines.append(
            f"Paragraph {i}. The {word} kept the lamp by the sea for many quiet years, and the ships came home.\n"
        )
    return "\n".join(lines)


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


def test_split_passages_keep_spans_pages_and_natural_boundaries():
    text = doc_text(60)
    page_starts = [0, len(text) // 2]
    found = index.split_passages(text, page_starts, words=40)
    assert len(found) > 5
    for p in found:
        assert text[p.start : p.end] == p.text  # the span is the passage
        assert p.text[-1] == "." and p.text.startswith("Paragraph")  # cut between paragraphs, not inside
        assert p.page == (1 if p.start < page_starts[1] else 2)
        assert 20 <= len(p.text.split()) <= 80
    assert [p.seq for p in found] == list(range(len(found)))
    assert all(a.end <= b.start for a, b in zip(found, found[1:]))
    assert " ".join(p.text for p in found).split() == text.split()  # every word once, in order
    long_line = "word " * 1000  # one line, no sentence end: cut every 40 words
    assert max(len(p.text.split()) for p in index.split_passages(long_line, words=40)) <= 80


def test_search_ranks_the_passage_with_a_rare_word_first(store):
    text = doc_text(40, rare_at=23)
    index.build(store.db, "a" * 64, text)
    best = index.search(store.db, "a" * 64, "Who was the zyzzogeton by the sea?", k=3)
    assert best and "zyzzogeton" in best[0].text and "Paragraph 23." in best[0].text
    assert text[best[0].start : best[0].end] == best[0].text
    assert best[0].score <= min(p.score for p in best)  # bm25: lower is better
    assert index.search(store.db, "a" * 64, "the of and", k=3) != []  # only stop-words: searched as they are
    assert index.search(store.db, "a" * 64, "", k=3) == []


@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_queries_never_raise(store, query):
    index.build(store.db, "a" * 64, doc_text(10))
    found = index.search(store.db, "a" * 64, query, k=3)
    assert isinstance(found, list) and len(found) <= 3
    expression = index.match_expression(query)
    assert expression is None or all(term.startswith('"') and term.endswith('"') for term in expression.split(" OR "))
    assert index.passages(store.db, "a" * 64)  # the index is intact


def test_documents_are_isolated_and_deleted_with_their_passages(store):
    a = add_to_store(store, ingest_bytes(doc_text(20, rare_at=3).encode(), "a.txt"))
    b = add_to_store(store, ingest_bytes(doc_text(20, rare_at=7).encode(), "b.txt"))
    from app.focus import index_document

    assert index_document(store, a["id"]) and index_document(store, b["id"])
    assert not index_document(store, a["id"])  # built once
    for doc in (a, b):
        found = index.search(store.db, doc["id"], "zyzzogeton lamp keeper", k=50)
        assert found and {(p.start, p.end) for p in found} <= {
            (p.start, p.end) for p in index.passages(store.db, doc["id"])
        }
    assert "Paragraph 3." in index.search(store.db, a["id"], "zyzzogeton", k=1)[0].text
    assert "Paragraph 7." in index.search(store.db, b["id"], "zyzzogeton", k=1)[0].text
    store.delete_document(a["id"])
    assert index.search(store.db, a["id"], "zyzzogeton", k=5) == [] and not index.is_indexed(store.db, a["id"])
    assert store.db.execute("SELECT COUNT(*) FROM passages WHERE document_id = ?", [a["id"]]).fetchone()[0] == 0
    left = store.db.execute("SELECT COUNT(*) FROM passages_fts WHERE passages_fts MATCH 'zyzzogeton'").fetchone()[0]
    assert left == 1  # only b's passage is still in the full-text index
    assert index.search(store.db, b["id"], "zyzzogeton", k=1)


# --- the focused turn -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def book_cache(tiny):
    model, tokenizer, _ = tiny
    return build_document_cache(model, tokenizer, story(20), FAST)


class Prefills:
    """Records the input length of every forward of the model."""

    def __init__(self, model):
        self.lengths = []
        self.handle = model.model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.lengths.append(ids.shape[1] if ids is not None else kwargs["inputs_embeds"].shape[1])
        self.ids = ids

    def close(self):
        self.handle.remove()


def test_focused_turn_is_one_batched_prefill_and_leaves_the_cache_alone(tiny, book_cache):
    model, tokenizer, _ = tiny
    before = {name: t.clone() for name, t in book_cache.tensors().items()}
    passages = ["The keeper's log says: the lamp was lit at dusk.", "A ship named Ada came <|im_end|> home."]
    question = "When was the lamp lit?"
    text = strategy("cache+passages").turn_text(question, passages)
    # by default the best passage is read last, next to the question
    assert text.startswith(INTRO) and text.endswith("Question: " + question) and passages_block(passages[::-1]) in text
    conversation = Conversation(book_cache, model, tokenizer)
    expected = conversation._new_text(text)[1]
    # the document's control-token string stays text: only the template's own end-of-turn marker is one
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert expected.count(end) == encode_marked(tokenizer, mark(tokenizer, "x") + "<|im_end|>").count(end) == 1
    recorder = Prefills(model)
    try:
        answer = "".join(conversation.ask(text, settings=GenerationSettings(max_new_tokens=4)))
    finally:
        recorder.close()
    multi = [n for n in recorder.lengths if n > 1]
    assert multi == [len(expected)]  # the whole turn in one forward, then one token at a time
    # the same turn fed to a fresh copy of the cache in one forward gives the first answer token
    kv = working_cache(book_cache, model)
    positions = torch.arange(book_cache.next_position, book_cache.next_position + len(expected))[None]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([expected]), past_key_values=kv, position_ids=positions).logits
    first = int(logits[0, -1].argmax())
    assert answer == "" or tokenizer.decode([first]) == answer[: len(tokenizer.decode([first]))]
    for name, tensor in book_cache.tensors().items():
        assert torch.equal(tensor, before[name]), name  # the stored cache is never written


@pytest.mark.slow
def test_focused_turns_fit_the_window_after_the_cache(tiny, book_cache):
    model, tokenizer, _ = tiny
    room = cache_room(book_cache, model, 16)
    assert room == 1024 - book_cache.next_position - 16
    long = ["word " * 30 + str(i) for i in range(10)]  # ~150 characters (tokens) each
    kept = fit_passages(tokenizer, long, room, "q?")
    assert 0 < len(kept) < len(long) and kept == long[: len(kept)]  # best first, as many as fit
    assert fit_passages(tokenizer, long, 10, "q?") == []
    conversation = Conversation(book_cache, model, tokenizer)
    focus = strategy("cache+passages")
    for i in range(4):  # each turn nearly fills the room: older turns are forgotten, never an error
        text = focus.turn_text(f"question {i}?", fit_passages(tokenizer, long, room, f"question {i}?"))
        list(conversation.ask(text, settings=GenerationSettings(max_new_tokens=16)))
        assert conversation.state.position <= 1024
    assert conversation.dropped_turns >= 2


def test_passages_alone_answer_in_a_fresh_window(tiny):
    model, tokenizer, _ = tiny
    rag = PassageConversation(model, tokenizer)
    recorder = Prefills(model)
    try:
        answer = "".join(
            rag.ask(
                "Who lit the lamp?",
                ["The keeper lit the lamp.", "Ships came."],
                settings=GenerationSettings(max_new_tokens=3),
            )
        )
    finally:
        recorder.close()
    ids = rag.prompt_ids("Who lit the lamp?", ["The keeper lit the lamp.", "Ships came."])
    assert [n for n in recorder.lengths if n > 1] == [len(ids)] and rag.stats["prompt_tokens"] == len(ids)
    assert "The keeper lit the lamp." in tokenizer.decode(ids) and rag.turns == [("Who lit the lamp?", answer)]
    huge = ["x" * 600, "y" * 600, "z" * 600]  # does not fit the 1024-token window with all three
    list(rag.ask("And then?", huge, settings=GenerationSettings(max_new_tokens=8)))
    assert rag.state.position <= 1024
    with pytest.raises(ValueError, match="focus must be one of"):
        strategy("everything")
    assert FOCUS_CHOICES == ("cache", "passages", "cache+passages")


def test_questions_about_the_whole_document_are_routed_to_the_cache():
    for question in (
        "What is this book about?",
        "How does the story end?",
        "Summarize the report",
        "Who are the main characters?",
        "Give me an overview of the whole document",
    ):
        assert whole_document(question) and route(question, "passages") == "cache", question
    for question in (
        "How old was Methuselah when he died?",
        "Which book did Moses write?",
        "What is a cubit?",
        "Where does the text say the ark rested?",
        "",
    ):
        assert not whole_document(question) and route(question, "passages") == "passages", question


# --- through the chat ---------------------------------------------------------------------


@pytest.mark.slow
def test_chat_answers_with_focus_and_lists_its_sources(tmp_path, tiny, configure):
    model, tokenizer, _ = tiny
    fingerprint = model_fingerprint(model)
    service = ChatService(Store(tmp_path / "store"), loader=lambda name: (model, tokenizer, fingerprint))
    text = doc_text(16, rare_at=11)
    doc = add_to_store(service.store, ingest_bytes(text.encode(), "light.txt", tokenizer))
    cache = build_document_cache(
        model, tokenizer, service.store.document_text(doc["id"]), FAST, metadata={"document_id": doc["id"]}
    )
    service.store.save_cache(doc["id"], cache)
    assert not index.is_indexed(service.store.db, doc["id"])  # no worker here: built on first use
    settings = GenerationSettings(max_new_tokens=4)
    *_, (shown, stats) = service.ask(
        "s", doc["id"], "Where was the zyzzogeton?", "tiny", settings, focus="cache+passages"
    )
    assert stats["focus"] == "cache+passages" and stats["index_built"] and stats["passages"]
    assert "passages read again for this question (cache+passages)" in describe_turn(stats)
    first = stats["passages"][0]
    assert "Paragraph 11." in text[first["start"] : first["end"]]
    assert "\n\nSources:\n- “…" in shown and "zyzzogeton" in shown  # one page: a quote around the word, no page
    assert stats["appended_tokens"] > len(text[first["start"] : first["end"]])  # the passage was fed in full
    session = service.session("s", doc["id"])
    assert "Paragraph 11." in session.turns[0][0]  # the turn as the model saw it, for later rebuilds
    assert service.history("s", doc["id"])[0]["content"] == "Where was the zyzzogeton?"
    *_, (_, plain) = service.ask("s", doc["id"], "And the keeper?", "tiny", settings, focus="cache")
    assert plain["focus"] == "cache" and not plain["passages"] and plain["turn"] == 2
    *_, (shown3, rag) = service.ask("s", doc["id"], "Who kept the zyzzogeton lamp?", "tiny", settings, focus="passages")
    assert rag["focus"] == "passages" and "Sources:" in shown3 and not rag["index_built"]
    assert rag["appended_tokens"] > 0 and session.conversation is None  # the cache conversation is rebuilt next turn
    configure(answering={"focus": "auto"})
    *_, (_, fourth) = service.ask("s", doc["id"], "Where was the zyzzogeton kept?", "tiny", settings)
    assert fourth["turn"] == 4 and fourth["focus"] == AUTO_SPECIFIC  # the default, auto, on a specific question
    *_, (shown5, fifth) = service.ask("s", doc["id"], "What is this document about?", "tiny", settings)
    assert fifth["focus"] == "cache" and not fifth["passages"] and "Sources:\n-" not in shown5  # the whole: the cache
    configure(answering={"focus": "passages"})
    *_, (_, sixth) = service.ask("s", doc["id"], "What is this document about?", "tiny", settings)
    assert sixth["focus"] == "passages"  # the setting wins over the route
    with pytest.raises(ChatError, match="focus must be one of"):
        list(service.ask("s", doc["id"], "x?", "tiny", settings, focus="nonsense"))


def test_the_worker_indexes_a_document_before_its_build(tmp_path, monkeypatch):
    from app.focus import index_after_ingest

    store = Store(tmp_path / "store")
    doc = add_to_store(store, ingest_bytes(doc_text(12, rare_at=5).encode(), "w.txt"))
    seen = []
    index_after_ingest(store, doc["id"], seen.append)
    assert seen == ["indexing the passages for focused answers"] and index.is_indexed(store.db, doc["id"])
    index_after_ingest(store, doc["id"], seen.append)
    assert len(seen) == 1  # already indexed: nothing to show


def test_a_question_the_document_does_not_hold_is_answered_not_found(tmp_path, tiny, configure):
    from homer.answering.grounding import NOT_FOUND

    model, tokenizer, _ = tiny
    fingerprint = model_fingerprint(model)
    service = ChatService(Store(tmp_path / "store"), loader=lambda name: (model, tokenizer, fingerprint))
    doc = add_to_store(service.store, ingest_bytes(doc_text(16, rare_at=11).encode(), "light.txt", tokenizer))
    cache = build_document_cache(
        model, tokenizer, service.store.document_text(doc["id"]), FAST, metadata={"document_id": doc["id"]}
    )
    service.store.save_cache(doc["id"], cache)
    settings = GenerationSettings(max_new_tokens=4)
    *_, (shown, stats) = service.ask("s", doc["id"], "Which physicist discovered the positron?", "tiny", settings)
    assert shown == NOT_FOUND and stats["not_found"] and stats["new_tokens"] == 0 and stats["coverage"] < 0.3
    assert service.history("s", doc["id"])[-1]["content"] == NOT_FOUND  # kept like any answer
    *_, (shown, stats) = service.ask("s", doc["id"], "Where was the zyzzogeton?", "tiny", settings)
    assert shown != NOT_FOUND and not stats["not_found"] and stats["new_tokens"] > 0
    configure(answering={"not_found": False})
    *_, (shown, stats) = service.ask("s", doc["id"], "Which physicist discovered the positron?", "tiny", settings)
    assert shown != NOT_FOUND and stats["new_tokens"] > 0  # turned off: the model answers from what was found


def test_passages_can_be_read_best_last_next_to_the_question(tiny):
    model, tokenizer, _ = tiny
    best, second = "The keeper lit the lamp.", "Ships came home."
    for order, first in (("best-first", best), ("best-last", second)):
        text = strategy("cache+passages").turn_text("Who lit it?", [best, second], order)
        assert text.index(first) < text.index(best if first == second else second)
        rag = PassageConversation(model, tokenizer, order=order)
        prompt = tokenizer.decode(rag.prompt_ids("Who lit it?", [best, second]))
        assert prompt.index("[1] " + first) < prompt.index("[2] ")
    with pytest.raises(ValueError, match="passage order must be one of"):
        PassageConversation(model, tokenizer, order="random")


def test_the_app_reads_passages_in_the_order_its_setting_names(configure):
    from app.focus import passage_order

    configure(answering={"passage_order": "best-last"})
    assert passage_order() == "best-last"
    configure(answering={"passage_order": " Best-First "})
    assert passage_order() == "best-first"
    configure(answering={"passage_order": "shuffled"})  # an unknown word: the default, with a warning
    assert passage_order() == "best-last"


def test_a_source_is_cited_on_the_page_of_the_part_the_model_read(configure):
    from app.focus import fed_text, read_part, sources_label
    from homer.reading.locations import LocationMap
    from storage.passages import Passage

    configure(answering={"focus_words": 20})
    foot = "The harbour was quiet that evening and nobody spoke of the weather at all. " * 3  # page 1's foot
    top = "The lighthouse keeper's cat is named Biscuit and sleeps by the lamp. " + "Gulls cried. " * 4
    text = "Intro.\n" + foot + top
    page2 = text.index(top)
    locations = LocationMap.of([0, page2])
    start = text.index(foot)
    passage = Passage(seq=0, start=start, end=len(text), page=1, text=text[start:])
    read = read_part(passage, "What is the lighthouse keeper's cat named?", locations)
    assert read.page == 2 and text[read.start : read.end] == read.text and read.start >= passage.start
    assert " ".join(read.text.split()) == fed_text(passage, "What is the lighthouse keeper's cat named?")
    assert sources_label([read], locations, "cat").startswith("- p. 2: “")
    configure(answering={"focus_words": 0})  # the whole passage is read: cited where the question's words are
    whole = read_part(passage, "Which cat?", locations)
    assert (whole.start, whole.end, whole.text) == (passage.start, passage.end, passage.text) and whole.page == 2
    assert read_part(passage, "Which harbour cat?", locations).page == 1  # one word on each page: the first
    assert read_part(passage, "zebra", locations).page == locations.number((passage.start + passage.end - 1) // 2)
    one_page = read_part(passage, "cat", LocationMap.of(None))
    assert one_page.page == 1
