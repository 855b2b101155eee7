"""A document is askable seconds after its upload, while its build runs on (through the running
app's API, as a client meets it): a specific question is answered from its passages, a
whole-document question gets the reading line, never "no document"; after the build the same
conversation goes on over the cache."""

from __future__ import annotations

import time

import pytest
from app_helpers import running_app

FACT = "The harbour master of Quillon counted forty-two fishing boats on the Tuesday before the storm."


def book_text() -> str:
    import random

    rng = random.Random(3)
    words = "river stone market bread lantern window garden letter morning silver keeper tide".split()
    paras = [" ".join(rng.choice(words) for _ in range(60)) + "." for _ in range(6)]
    paras[4] = FACT
    return "\n\n".join(paras)


@pytest.fixture(scope="module")
def app(model_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("askable") / "home"
    # a slow build (each leaf and merge waits 3 s): the questions come while it runs
    with running_app(home, model_dir, env={"HOMER_TEST_STEP_DELAY": "3"}) as url:
        yield url, home


@pytest.mark.e2e
def test_a_document_is_askable_while_its_build_runs(app, tmp_path):
    from gradio_client import Client, handle_file

    url, _ = app
    path = tmp_path / "harbour.txt"
    path.write_text(book_text())
    client = Client(url, verbose=False)
    started = time.monotonic()
    client.predict([handle_file(str(path))], api_name="/upload")
    answer, refusals = None, []
    while time.monotonic() - started < 60:
        try:
            answer = client.predict(
                "harbour.txt", "How many fishing boats did the harbour master count?", 4, api_name="/ask_document"
            )
            break
        except Exception as exc:  # noqa: BLE001 — before the text is stored: the reading line
            refusals.append(str(exc))
            time.sleep(0.3)
    assert answer is not None, refusals[-3:]
    assert all("no document" not in r for r in refusals)  # never "no document" for one being read
    assert answer["strategy"] == "passages" and answer["reading"] != "ready"  # answered before the build ended
    assert answer["sources"] and "forty-two fishing boats" in answer["sources"][0]["quote"]
    assert "Sources:" not in answer["answer"] and answer["sources_label"].startswith("- ")
    whole = client.predict("harbour.txt", "What is this book about?", 4, api_name="/ask_document")
    assert whole["strategy"] == "waiting" and whole["answer"].startswith(("still reading", "queued for reading"))
    rows = {row[0]: row[1] for row in client.predict(api_name="/library")["data"]}
    assert not rows["harbour.txt"].startswith("ready")  # the build was still running all along
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not rows["harbour.txt"].startswith("ready"):
        time.sleep(2)
        rows = {row[0]: row[1] for row in client.predict(api_name="/library")["data"]}
    assert rows["harbour.txt"].startswith("ready"), rows
    after = client.predict("harbour.txt", "What is this book about?", 4, api_name="/ask_document")
    assert after["strategy"] == "cache" and after["reading"] == "ready"
