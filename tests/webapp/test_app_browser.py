"""The app in a real browser: the system's Chromium driven by Playwright (no browser
download). The app opens on the chat: a file dropped there is picked in the chat's document
picker as soon as its text is stored, its reading progress in the label, and a specific
question is answered from its passages with sources while it is still being read (expert
controls folded away under "Advanced"). Library upload → progress visible → ready; the chat
streams from the cache; the inspector renders; bad files show a reason and leave the library
intact. Screenshots of the library, a chat and the inspector are written to
``HOMER_SCREENSHOTS`` (default: the test's temp folder).

``HOMER_BROWSER_MODEL=<model>`` (``embedded``, or the embedded model's converted folder) runs
the same test on a real model with a longer PDF (minutes on a CPU; that is how the README's
screenshots were taken); by default a tiny random-weight model is used."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from app_helpers import app_log, running_app
from store_helpers import bad_uploads, story, text_pdf

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

FACT = "The harbour master counted 42 fishing boats in the basin."
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def system_chromium() -> str | None:
    for name in ("HOMER_CHROMIUM",):
        if os.environ.get(name) and Path(os.environ[name]).exists():
            return os.environ[name]
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"):
        if Path(candidate).exists():
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    executable = system_chromium()
    if executable is None:
        pytest.skip("no system Chromium found (bash run.sh installs Debian's chromium where apt-get exists)")
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:  # a browser that cannot start here (no display libraries, …)
            pytest.skip(f"Chromium at {executable} cannot be started: {str(exc).splitlines()[0]}")
        yield browser
        browser.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("HOMER_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def table_text(page) -> str:
    return page.locator("#library-table").inner_text()


def table_rows(page) -> list[str]:
    """The library's cells, row by row (the status overlay of a refresh left out)."""
    text = table_text(page)
    lines = [line.strip() for line in text[text.find("Documents") :].splitlines()]
    return [line for line in lines if line]


def wait_for_table(page, text: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in table_text(page):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared in the library:\n{table_text(page)}")
        page.wait_for_timeout(250)


def upload(page, *paths: Path) -> None:
    """Upload in the Library tab (opened first: a tab's content is drawn once it is opened)."""
    open_tab(page, "Library")
    page.locator("#upload input[type=file]").set_input_files([str(p) for p in paths])


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def picked(page) -> str:
    """The label of the document picked in the chat."""
    return page.locator("#chat-doc input").input_value()


def wait_for_turn(page, turn: int, timeout: float = 600.0) -> str:
    deadline = time.monotonic() + timeout
    while f"turn {turn} · time to first token" not in (line := page.locator("#turn-stats").inner_text()):
        assert time.monotonic() < deadline, line
        page.wait_for_timeout(100)
    return line


@pytest.mark.e2e
def test_drop_ask_while_reading_library_chat_inspector_and_bad_files(browser, tmp_path, model_dir, shots):  # noqa: F811
    real = os.environ.get("HOMER_BROWSER_MODEL")
    model = real or model_dir
    first = tmp_path / "lighthouse.txt"
    first.write_text(story(40))
    second = tmp_path / "harbour.pdf"
    pages = [
        f"Harbour log, page {i + 1}.\n"
        + "The gulls circled the quay, and the tide turned at noon.\n" * (40 if real else 6)
        for i in range(16 if real else 6)
    ]
    pages[2] = pages[2].replace("noon.\n", f"noon.\n{FACT}\n", 1)
    second.write_bytes(text_pdf(pages))
    too_long = tmp_path / "too-long.txt"  # passes the upload's checks; its reading finds it over the token limit
    too_long.write_text(story(60))
    # the tiny build slowed down (progress is visible); a token limit above these documents, below too_long's
    env = {} if real else {"HOMER_TEST_STEP_DELAY": "0.6", "HOMER_MAX_TOKENS": "3000"}
    home = tmp_path / "home"
    with running_app(home, model, env=env, timeout=600) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.get_by_text("HOMER Chat").first.wait_for()

        # --- the app opens on the chat: drop a file there and ask it while it is read --------------
        assert page.get_by_role("tab", name="Chat").get_attribute("aria-selected") == "true"
        page.get_by_text("Drop a document above (or pick one)").wait_for()
        assert not page.locator("#focus").is_visible() and not page.locator("#deep-read").is_visible()
        page.locator("#chat-upload input[type=file]").set_input_files([str(second)])
        deadline = time.monotonic() + 60
        while "harbour.pdf" not in picked(page):  # picked once its text is stored (seconds), with its progress
            assert time.monotonic() < deadline, (picked(page), page.locator("#chat-status").inner_text())
            page.wait_for_timeout(100)
        label = picked(page)
        assert "reading" in label and "%" in label or "queued for reading" in label, label
        assert "ask something specific now" in page.locator("#chat-status").inner_text()
        page.locator("#question textarea").fill("How many fishing boats did the harbour master count?")
        page.locator("#ask").click()
        line = wait_for_turn(page, 1)
        # its build may not have started yet on a busy machine: "queued for reading" then
        assert re.search(r"answered from the passages without the cache \((still reading|queued for reading)", line), (
            line
        )
        answer = page.locator("#chatbot").inner_text()
        assert "Sources:" in answer and "p. 3: “" in answer and "42 fishing boats" in answer, answer
        page.locator("#sources button").filter(has_text="p. 3").first.wait_for(timeout=30_000)  # listed beside it
        page.wait_for_timeout(500)
        page.screenshot(path=str(shots / "chat.png"), full_page=True)
        page.locator("#question textarea").fill("What is this document about?")
        page.locator("#ask").click()  # a whole-document question before its cache exists: the reading line
        line = wait_for_turn(page, 2)
        assert "nothing to answer a whole-document question from yet" in line, line
        assert (
            "a question about the whole document is answered once it has been read"
            in page.locator("#chatbot").inner_text()
        )
        deadline = time.monotonic() + 900
        while "reading" in picked(page) or "queued" in picked(page):  # the timer refreshes the label: read
            assert time.monotonic() < deadline, picked(page)
            page.wait_for_timeout(300)
        assert picked(page).startswith("harbour.pdf · "), picked(page)

        # --- the expert controls are under "Advanced" -------------------------------------------
        page.get_by_text("Advanced", exact=True).click()
        for control in ("#chat-docs", "#focus", "#deep-read", "#thread", "#turn-json"):
            page.locator(control).wait_for()
        assert "time_to_first_token" in page.locator("#turn-json").inner_text()
        page.get_by_text("Advanced", exact=True).click()
        page.locator("#focus").wait_for(state="hidden")

        # --- library: upload, live progress, ready -----------------------------------------
        upload(page, first)
        page.locator("#upload-status").get_by_text("lighthouse.txt: queued").wait_for(timeout=60_000)
        wait_for_table(page, "lighthouse.txt")
        if not real:  # a real model may read this short text between two timer ticks
            wait_for_table(page, "reading")  # the timer shows the build's progress
            wait_for_table(page, "ETA")  # progress with a time estimate
            assert "%" in table_text(page), table_text(page)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(shots / "library.png"), full_page=True)
        deadline = time.monotonic() + 900
        while table_text(page).count("ready") < 2:
            assert time.monotonic() < deadline, table_text(page)
            page.wait_for_timeout(300)

        # --- bad files through the UI: a reason each, the library unchanged --------------------
        before = table_rows(page)
        assert "lighthouse.txt" in " ".join(before) and "harbour.pdf" in " ".join(before), (before, table_text(page))
        for path, reason in bad_uploads(tmp_path):
            upload(page, path)
            page.locator("#upload-status").get_by_text(f"{path.name}: ").wait_for(timeout=60_000)
            status = page.locator("#upload-status").inner_text()
            assert reason in status, status
            page.wait_for_timeout(2500)  # a timer tick
            assert table_rows(page) == before
        if not real:  # dropped in the chat, refused when read: the chat says why (its text was never stored)
            open_tab(page, "Chat")
            page.locator("#chat-upload input[type=file]").set_input_files([str(too_long)])
            page.locator("#chat-status").get_by_text("✗ too-long.txt: reading failed").wait_for(timeout=60_000)
            assert "tokens" in page.locator("#chat-status").inner_text()

        # --- chat: streaming answer from the stored cache (focus "cache", under Advanced), then a
        # follow-up from memory ------------------------------------------------------------------
        open_tab(page, "Chat")
        page.locator("#chat-doc input").click()
        page.get_by_role("option", name="lighthouse.txt").first.click()
        page.get_by_text("Advanced", exact=True).click()
        page.locator("#focus").get_by_text("cache", exact=True).click()
        question = page.locator("#question textarea")
        question.fill("What was the name of the lighthouse keeper?")
        page.locator("#ask").click()
        bot = page.locator("#chatbot .message.bot, #chatbot [data-testid='bot']").last
        seen: list[str] = []
        deadline = time.monotonic() + 600
        while "turn 1 · time to first token" not in page.locator("#turn-stats").inner_text():
            assert time.monotonic() < deadline, "no answer"
            if bot.count():
                text = bot.inner_text()
                if text and (not seen or seen[-1] != text):
                    seen.append(text)
            page.wait_for_timeout(50)
        final = bot.inner_text()
        assert final.strip(), "empty answer"
        assert "loaded from disk" in page.locator("#turn-stats").inner_text()
        partial = [text for text in seen if text != final]
        assert partial and all(final.startswith(text.rstrip()[:20]) for text in partial[:3]), (seen, final)
        question.fill("And what did she keep burning?")
        page.locator("#ask").click()
        assert "reused from memory" in wait_for_turn(page, 2)  # no disk read, no re-encoding

        # --- inspector: the density plot and the tree render -----------------------------------
        open_tab(page, "Inspector")
        page.locator("#inspector-doc input").click()
        page.get_by_role("option", name="harbour.pdf").first.click()
        page.locator("#density-plot img").wait_for(timeout=120_000)
        page.locator("#tree-plot img").wait_for(timeout=120_000)
        assert "document tokens" in page.locator("#inspector-summary").inner_text()
        page.wait_for_timeout(500)
        page.screenshot(path=str(shots / "inspector.png"), full_page=True)
        assert not errors, errors
        page.close()
    assert "Traceback" not in app_log(home), app_log(home)[-3000:]
