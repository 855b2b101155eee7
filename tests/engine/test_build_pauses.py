"""A build gives way to a question: it waits before its next layer while an answer is being
made (the same cores), at most a bounded time, and never inside the answering thread itself."""

from __future__ import annotations

import threading
import time

from conftest import tiny_model, tiny_tokenizer

from app.model_turns import model_turn, pause_for_answers
from homer import HomerConfig, build_document_cache


def test_a_build_pauses_between_layers_while_a_question_is_answered():
    answering, release = threading.Event(), threading.Event()

    def answer():
        with model_turn("test"):
            answering.set()
            release.wait(10)

    asker = threading.Thread(target=answer)
    asker.start()
    answering.wait(10)
    waited = []
    pauser = threading.Thread(target=lambda: waited.append(pause_for_answers(limit=10)))
    pauser.start()
    time.sleep(0.3)
    assert pauser.is_alive()  # held back while the answer runs
    release.set()
    asker.join(10)
    pauser.join(10)
    assert 0.25 < waited[0] < 10
    assert pause_for_answers() < 0.05  # nothing being answered: no wait
    with model_turn("test"):
        assert pause_for_answers(limit=5) == 0.0  # the answering thread itself never waits (a build in a request)
    started = time.monotonic()
    with model_turn("test"):
        bounded = []
        other = threading.Thread(target=lambda: bounded.append(pause_for_answers(limit=0.2)))
        other.start()
        other.join(5)
    assert 0.15 < bounded[0] < 2 and time.monotonic() - started < 5  # bounded: a long answer never stops a build


def test_the_builder_calls_pause_before_every_layer():
    model, tokenizer = tiny_model("llama", window=1024), tiny_tokenizer()
    calls = []

    def progress(done, total, message):
        pass

    progress.pause = lambda: calls.append(1)
    text = "The lighthouse keeper rowed out at dawn. " * 12
    with_pauses = build_document_cache(
        model, tokenizer, text, HomerConfig(significance="uncalibrated"), progress=progress
    )
    plain = build_document_cache(model, tokenizer, text, HomerConfig(significance="uncalibrated"))
    assert len(calls) >= model.config.num_hidden_layers  # every layer of every leaf and merge
    assert len(with_pauses) == len(plain)
