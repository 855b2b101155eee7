"""The reader in a real browser (the system's Chromium driven by Playwright, as in
test_app_browser.py): a PDF uploaded and read, a question asked, its first source clicked →
the reader beside the chat shows that page, rendered, with the quote boxed and scrolled into
view; a sectioned document (stored as the HTML reader stores one) → the cited section alone,
the quote marked; the reader's next button turns to the next section. A screenshot of the
chat with the reader is written to ``HOMER_SCREENSHOTS`` (default: the test's temp folder) as
``reader.png``.

``HOMER_BROWSER_MODEL=<model>`` runs it on a real model (that is how the README's screenshot
is taken); by default a tiny random-weight model answers (its answers are noise, its sources
are the passages retrieved for the question, which is what the reader opens)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from app_helpers import app_log, running_app
from store_helpers import text_pdf
from test_app_browser import browser, open_tab, shots, upload, wait_for_table  # noqa: F401  (fixtures)

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytest.importorskip("pypdfium2", reason="the reader renders PDF pages with pypdfium2")

FILLER = "The gulls circled the quay, and the tide turned at noon."
LEDGER = [
    "\n".join(
        [
            f"Ledger, page {i}.",
            *[FILLER] * 3,
            *(
                ["On the third morning the harbour master counted 42 fishing", "boats moored in the basin."]
                if i == 3
                else []
            ),
            *[FILLER] * 2,
        ]
    )
    for i in range(1, 6)
]  # small: the tiny model reads it in seconds
BOATS = "How many fishing boats did the harbour master count?"
CALM = "The sea lay flat and grey, and nothing moved on the water for hours. "
SECTIONS = [
    ("Chapter 1 · Calm", CALM * 10 + "\n\n"),  # long enough to be a passage of its own
    (
        "Chapter 2 · The Storm",
        "At dusk the wind rose, and the keeper climbed the tower and lit the great "
        "lamp. " + "Waves broke over the pier all night long, and the rain came "
        "down in sheets. " * 5 + "\n\n",
    ),
    ("Chapter 3 · Morning", "By morning the harbour was quiet again, and the fishing boats went out.\n"),
]
STORM = "What did the keeper do when the wind rose at dusk?"


def add_sectioned(home: Path, model_name: str) -> None:
    """A sectioned document ready for the app's model, put in the app's store before it starts
    (the EPUB / DOCX / HTML readers store their sections so)."""
    from homer import HomerConfig, build_document_cache
    from homer.models import load_model
    from storage import Store

    model, tokenizer = load_model(None if model_name == "embedded" else model_name)
    store = Store(home / "store")
    starts, offset = [], 0
    for _, body in SECTIONS:
        starts.append(offset)
        offset += len(body)
    text = "".join(body for _, body in SECTIONS)
    source = "".join(f"<h2>{label}</h2><p>{body}</p>" for label, body in SECTIONS).encode()
    doc = store.add_document(
        source, "storm.html", text, kind="html", page_starts=starts, locations=[label for label, _ in SECTIONS]
    )
    cache = build_document_cache(
        model, tokenizer, text, HomerConfig(significance="uncalibrated"), metadata={"document_id": doc["id"]}
    )
    store.save_cache(doc["id"], cache)


def ask(page, document: str, question: str, turn: int = 1) -> None:
    page.locator("#chat-doc input").click()
    page.get_by_role("option", name=document).first.click()
    page.wait_for_timeout(500)
    page.locator("#question textarea").fill(question)
    page.locator("#ask").click()
    deadline = time.monotonic() + 600
    while f"turn {turn} · time to first token" not in page.locator("#turn-stats").inner_text():
        assert time.monotonic() < deadline, page.locator("#turn-stats").inner_text()
        page.wait_for_timeout(100)


def open_first_source(page, expected: str):
    """Click the first source listed beside the chat (it names ``expected``)."""
    first = page.locator("#sources button").filter(has_text=expected).first
    first.wait_for(timeout=30_000)
    first.click()


def in_view(page, selector: str) -> bool:
    """Whether the element lies inside the reader's scrolled box."""
    return page.evaluate(
        """(selector) => {
        const body = document.querySelector('#reader .reader-body');
        const target = document.querySelector(selector);
        if (!body || !target) return false;
        const a = body.getBoundingClientRect(), b = target.getBoundingClientRect();
        return b.top >= a.top - 1 && b.bottom <= a.bottom + 1 && b.height > 0;
    }""",
        selector,
    )


@pytest.mark.e2e
def test_a_source_opens_in_the_reader_at_its_page_or_section(browser, tmp_path, model_dir, shots):  # noqa: F811
    model = os.environ.get("HOMER_BROWSER_MODEL") or str(model_dir)
    home = tmp_path / "home"
    add_sectioned(home, model)
    ledger = tmp_path / "ledger.pdf"
    ledger.write_bytes(text_pdf(LEDGER))
    with running_app(home, Path(model), env={"HOMER_FOCUS": "auto"}, timeout=600) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.get_by_text("HOMER Chat").first.wait_for()
        upload(page, ledger)
        wait_for_table(page, "ledger.pdf")
        deadline = time.monotonic() + 900
        while page.locator("#library-table").inner_text().count("ready") < 2:
            assert time.monotonic() < deadline, page.locator("#library-table").inner_text()
            page.wait_for_timeout(300)

        # --- a PDF: the cited page, rendered, the quote boxed and in view -----------------------
        open_tab(page, "Chat")
        assert "click a source" in page.locator("#reader").inner_text()
        ask(page, "ledger.pdf", BOATS)
        assert "p. 3: “" in page.locator("#chatbot").inner_text()  # the sources line under the answer
        open_first_source(page, "p. 3")
        page.locator("#reader img").wait_for(timeout=60_000)
        reader = page.locator("#reader")
        assert "ledger.pdf · p. 3 (page 3 of 5)" in reader.inner_text()
        assert "The quote is highlighted." in reader.inner_text()
        assert page.evaluate("document.querySelector('#reader img').naturalWidth") == 1000  # a real image
        assert reader.locator(".reader-mark").count() >= 2  # the quote runs over two lines of the page
        page.wait_for_timeout(500)
        assert in_view(page, "#reader .reader-mark")  # scrolled to the highlight
        page.screenshot(path=str(shots / "reader.png"), full_page=True)

        # --- a sectioned document: the cited section alone, the quote marked ------------------------
        ask(page, "storm.html", STORM)
        open_first_source(page, "Chapter 2 · The Storm")
        page.locator("#reader mark").wait_for(timeout=60_000)
        text = reader.inner_text()
        assert "storm.html · Chapter 2 · The Storm (section 2 of 3)" in text
        assert "The sea lay flat" not in text and "By morning" not in text
        assert "keeper" in reader.locator("mark").inner_text()
        page.locator("#reader-next").click()
        reader.get_by_text("By morning the harbour was quiet").wait_for(timeout=30_000)
        assert "Chapter 3 · Morning (section 3 of 3)" in reader.inner_text() and not reader.locator("mark").count()
        assert not errors, errors
        page.close()
    assert "Traceback" not in app_log(home), app_log(home)[-3000:]
