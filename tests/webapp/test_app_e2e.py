"""The running app through its API (gradio_client), on a tiny random model saved as a local
folder: upload → ready → two questions (the second reuses the loaded cache) → export →
import into a second app instance; bad files; login keeps libraries apart."""

from __future__ import annotations

import hashlib
import time

import pytest
from app_helpers import app_log, running_app
from store_helpers import bad_uploads, story

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402


def library_rows(client) -> list[list]:
    return client.predict(api_name="/library")["data"]


def wait_ready(client, name: str, timeout: float = 240.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in library_rows(client):
            if row[0] == name and row[1].startswith(("ready", "failed")):
                return row
        time.sleep(0.5)
    raise AssertionError(f"{name} was not read in {timeout} s: {library_rows(client)}")


def ask(client, document_id: str, question: str) -> tuple[list, dict]:
    history, _, _, stats = client.predict(document_id, question, 0.0, 8, api_name="/ask")
    return history, stats


@pytest.mark.e2e
def test_upload_chat_export_and_import_into_another_app(tmp_path, model_dir):  # noqa: F811
    book = tmp_path / "lighthouse.txt"
    book.write_text(story(40))
    document_id = hashlib.sha256(book.read_bytes()).hexdigest()
    cache_path = {
        "HOMER_FOCUS": "cache"
    }  # answers from the stored cache (focused answers: tests/answering/test_focus.py)
    with running_app(tmp_path / "home-a", model_dir, env=cache_path) as url:
        client = Client(url, verbose=False)
        status, _ = client.predict([handle_file(str(book))], api_name="/upload")
        assert "lighthouse.txt: queued" in status
        row = wait_ready(client, "lighthouse.txt")
        assert row[1] == "ready", (row, app_log(tmp_path / "home-a"))
        assert row[3] == 1 and int(row[4]) > 2000  # pages, tokens

        history, first = ask(client, document_id, "Who kept the lamp?")
        assert [m["role"] for m in history] == ["user", "assistant"]
        assert first["cache_source"] == "disk" and first["turn"] == 1
        history, second = ask(client, document_id, "And what was her name?")
        assert len(history) == 4 and second["turn"] == 2
        # the second question reused the loaded cache: no disk read, no document tokens encoded again
        assert second["cache_reused"] and second["cache_source"] == "memory"
        assert second["appended_tokens"] < second["document_tokens"] / 20
        assert second["time_to_first_token"] < 2.0

        bundle, message = client.predict(document_id, api_name="/export")
        assert message.startswith("✓ exported") and bundle.endswith(".homer-bundle.zip")

        # the same upload again: ready at once, nothing queued
        status, _ = client.predict([handle_file(str(book))], api_name="/upload")
        assert "already read" in status

    with running_app(tmp_path / "home-b", model_dir, env=cache_path) as url:
        client = Client(url, verbose=False)
        assert library_rows(client) == []
        message = client.predict(handle_file(bundle), api_name="/import_bundle")
        assert message.startswith("✓ imported lighthouse.txt"), message
        [row] = library_rows(client)
        assert row[0] == "lighthouse.txt" and row[1] == "ready"
        _, stats = ask(client, document_id[:12], "Who kept the lamp?")  # a short id works too
        assert stats["cache_source"] == "disk" and stats["new_tokens"] >= 1
        # a damaged bundle is refused with a reason and changes nothing
        broken = tmp_path / "broken.homer-bundle.zip"
        broken.write_bytes(b"PK\x03\x04 not really a zip")
        message = client.predict(handle_file(str(broken)), api_name="/import_bundle")
        assert message.startswith("✗ refused") and "zip" in message
        assert len(library_rows(client)) == 1


@pytest.mark.e2e
def test_bad_files_show_a_reason_and_leave_the_library_intact(tmp_path, model_dir):  # noqa: F811
    """Refused at upload with the reason; a file refused only when it is read (over the token
    limit) shows the reason in the library, and a question about it gets that reason, not "no
    document"."""
    good = tmp_path / "good.txt"
    good.write_text(story(20))
    bad = bad_uploads(tmp_path)
    empty = bad[0][0]
    long = tmp_path / "long.txt"
    long.write_text(story(60))  # about 4 000 tokens: over the limit below, which only reading finds
    with running_app(tmp_path / "home", model_dir, env={"HOMER_MAX_TOKENS": "3000"}) as url:
        client = Client(url, verbose=False)
        client.predict([handle_file(str(good))], api_name="/upload")
        assert wait_ready(client, "good.txt")[1] == "ready"
        before = library_rows(client)
        for path, reason in bad:
            status, _ = client.predict([handle_file(str(path))], api_name="/upload")
            assert status.startswith("✗") and path.name in status and reason in status, status
        # several at once: the good one goes through, the bad one is reported
        other = tmp_path / "other.md"
        other.write_text("# Other\n\n" + story(20, "other"))
        status, _ = client.predict([handle_file(str(other)), handle_file(str(empty))], api_name="/upload")
        assert "✓ other.md: queued" in status and "✗ empty.txt: the file is empty" in status
        assert wait_ready(client, "other.md")[1] == "ready"
        after = library_rows(client)
        assert [r for r in after if r[0] != "other.md"] == before
        status, _ = client.predict([handle_file(str(long))], api_name="/upload")
        assert "✓ long.txt: queued" in status  # the upload's cheap checks pass
        row = wait_ready(client, "long.txt")
        assert row[1].startswith("failed") and "tokens" in row[1], row
        with pytest.raises(Exception) as refused:
            client.predict("long.txt", "Who kept the lamp?", 0.0, 8, api_name="/ask")
        assert "long.txt: reading failed" in str(refused.value) and "tokens" in str(refused.value)
        assert "no document" not in str(refused.value)


@pytest.mark.e2e
def test_with_login_each_user_sees_only_their_documents(tmp_path, model_dir):  # noqa: F811
    book = tmp_path / "ann.txt"
    book.write_text(story(20, "ann"))
    with running_app(tmp_path / "home", model_dir, "--auth", "ann:pw-a", "--auth", "bob:pw-b") as url:
        ann = Client(url, auth=("ann", "pw-a"), verbose=False)
        bob = Client(url, auth=("bob", "pw-b"), verbose=False)
        ann.predict([handle_file(str(book))], api_name="/upload")
        assert wait_ready(ann, "ann.txt")[1] == "ready"
        assert library_rows(bob) == []
        document_id = hashlib.sha256(book.read_bytes()).hexdigest()
        with pytest.raises(Exception, match="no document"):
            bob.predict(document_id, "Who?", 0.0, 8, api_name="/ask")
        with pytest.raises(Exception):
            Client(url, auth=("bob", "wrong"), verbose=False)


@pytest.mark.e2e
def test_builds_inside_the_upload_request_without_a_background_worker(tmp_path, model_dir):
    """The ZeroGPU mode: no build thread at all; the upload request itself reads the document."""
    book = tmp_path / "harbour.txt"
    book.write_text(story(12))
    with running_app(tmp_path / "home", model_dir, "--builds-in-requests") as url:
        client = Client(url, verbose=False)
        status, _ = client.predict([handle_file(str(book))], api_name="/upload")
        assert "harbour.txt: queued" in status and "reading finished" in status  # the request did the build
        row = library_rows(client)[0]
        assert row[0] == "harbour.txt" and row[1] == "ready", (row, app_log(tmp_path / "home"))


@pytest.mark.e2e
def test_deep_read_through_the_api_and_the_old_ask_arguments(tmp_path, model_dir):
    """``--deep-read``: builds keep leaf states; ``/ask`` takes a fifth argument (deep read),
    and callers passing the first four only get a normal answer as before."""
    book = tmp_path / "keeper.txt"
    book.write_text(story(12))
    document_id = hashlib.sha256(book.read_bytes()).hexdigest()
    with running_app(tmp_path / "home", model_dir, "--deep-read") as url:
        client = Client(url, verbose=False)
        client.predict([handle_file(str(book))], api_name="/upload")
        row = wait_ready(client, "keeper.txt")
        assert row[1] == "ready", (row, app_log(tmp_path / "home"))
        _, plain = ask(client, document_id, "Who kept the lamp?")  # four positional arguments, as before
        assert plain["deep_read"] is False and "deep_read_unavailable" not in plain
        history, _, status, deep = client.predict(document_id, "Who kept the lamp?", 0.0, 8, True, api_name="/ask")
        assert deep["deep_read"] is True and deep["deep_read_seconds"] > 0 and deep["turn"] == 2, status
        assert "deep read for this question" in status and len(history) == 4
