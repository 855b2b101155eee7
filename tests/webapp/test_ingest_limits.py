"""Ingestion is bounded: a PDF's pages (before extraction), each page's content stream and
text, the extracted characters, the tokens and the seconds — each refusal one line, on the
job when it happens in the worker, with nothing stored and the queue going on. Pathological
text (one 10 MB line) is split in linear work; the upload request only runs cheap checks;
a PDF whose user password is empty is read, one with a real password refused."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from conftest import tiny_tokenizer
from store_helpers import FAST, ROOT, consumer_in_process, story, text_pdf

from app import library
from app.ingest import IngestError, count_tokens, ingest_bytes, split_passages
from app.tasks import wait_for
from storage import Store

LINE = "The keeper trimmed the wick and watched the grey sea roll in."  # 62 characters


def shared_stream_pdf(pages: int, lines: int = 100) -> bytes:
    """``pages`` pages whose /Contents all point at one content stream of ``lines`` lines of
    text: a small file that extracts to ``pages × lines`` lines."""
    from pypdf import PdfWriter
    from pypdf.generic import DictionaryObject, NameObject, StreamObject

    writer = PdfWriter()
    font = writer._add_object(
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
    )
    content = StreamObject()
    content.set_data(
        ("BT /F1 10 Tf 50 750 Td 12 TL " + " ".join(f"({LINE}) '" for _ in range(lines)) + " ET").encode("latin-1")
    )
    shared = writer._add_object(content)
    for _ in range(pages):
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        page[NameObject("/Contents")] = shared
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def encrypted_pdf(pages: list[str], user_password: str, owner_password: str = "owner-secret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(text_pdf(pages))))
    writer.encrypt(user_password=user_password, owner_password=owner_password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def refusal(call) -> str:
    with pytest.raises(IngestError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# --- PDF passwords -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_pdf_with_an_empty_user_password_is_read():
    data = encrypted_pdf(["The keeper was Ada.", "She kept the lamp."], user_password="")
    from pypdf import PdfReader

    assert PdfReader(io.BytesIO(data)).is_encrypted  # really encrypted, with an owner password
    library.check_upload(data, "owner-only.pdf")  # not refused at upload
    doc = ingest_bytes(data, "owner-only.pdf", tiny_tokenizer())
    assert doc.kind == "pdf" and len(doc.page_starts) == 2
    assert "Ada" in doc.text and doc.page_of(doc.text.index("lamp")) == 2


def test_a_pdf_with_a_real_user_password_is_still_refused():
    data = encrypted_pdf(["secret text"], user_password="letmein")
    for call in (lambda: library.check_upload(data, "locked.pdf"), lambda: ingest_bytes(data, "locked.pdf")):
        assert refusal(call) == "locked.pdf: the PDF is encrypted (password-protected)"


# --- PDF bounds ---------------------------------------------------------------------------
def test_too_many_pages_are_refused_before_extraction(configure):
    configure(ingest={"max_pages": 20})
    data = text_pdf([f"Page {i}." for i in range(30)])
    for call in (lambda: library.check_upload(data, "long.pdf"), lambda: ingest_bytes(data, "long.pdf")):
        assert refusal(call) == "long.pdf: the PDF has 30 pages, over the limit of 20"
    assert len(ingest_bytes(text_pdf(["One.", "Two."]), "short.pdf").page_starts) == 2


def test_pages_sharing_one_content_stream_stop_at_the_character_limit(configure):
    """A few KB of PDF whose 400 pages reuse one 6 000-character content stream: counted per
    page, repeats included, and stopped once the total passes the limit."""
    data = shared_stream_pdf(400)
    assert len(data) < 100_000
    configure(ingest={"max_chars": 100_000})
    library.check_upload(data, "copies.pdf")  # its structure is fine: the worker finds the size
    message = refusal(lambda: ingest_bytes(data, "copies.pdf"))
    assert message.startswith("copies.pdf: the PDF holds over 100,000 characters of text (the limit; stopped at page ")
    stopped = int(message.split("stopped at page ")[1].split()[0])
    assert 10 < stopped < 30  # it stopped early, not after reading all 400 pages


def test_one_huge_page_is_bounded_by_its_text_and_by_its_content_stream(configure):
    data = text_pdf(["\n".join([LINE] * 400)], font_size=8)  # one page, about 25 000 characters
    assert len(ingest_bytes(data, "dense.pdf").text) > 20_000  # within the defaults
    configure(ingest={"max_page_chars": 10_000})
    assert refusal(lambda: ingest_bytes(data, "dense.pdf")).startswith("dense.pdf: page 1 holds 2")
    configure(ingest={"max_page_chars": 100_000, "max_page_content_mb": 10 / 1024})  # 10 KB
    message = refusal(lambda: ingest_bytes(data, "dense.pdf"))
    assert message.startswith("dense.pdf: page 1 has ") and message.endswith(
        "of content, over the limit of 10 KB per page"
    )


def test_the_time_limit_stops_a_pdf_between_pages_and_a_text_after_reading(configure):
    configure(ingest={"ingest_seconds": 0.000001})
    message = refusal(lambda: ingest_bytes(text_pdf(["One.", "Two.", "Three."]), "slow.pdf"))
    assert message.startswith("slow.pdf: reading the PDF took too long (stopped at page ")
    message = refusal(lambda: ingest_bytes(story(20).encode(), "slow.txt", tiny_tokenizer()))
    assert message == "slow.txt: reading the file took longer than the limit of 0 s"


# --- text bounds --------------------------------------------------------------------------
def test_the_token_limit_is_counted_in_pieces_and_refuses_early(configure):
    tokenizer = tiny_tokenizer()  # one token per character
    text = story(2000)  # about 140 000 characters, several counting pieces
    assert count_tokens(text, tokenizer) == len(tokenizer(text, add_special_tokens=False).input_ids)
    configure(ingest={"max_tokens": 70_000})
    message = refusal(lambda: ingest_bytes(text.encode(), "book.txt", tokenizer))
    assert message.startswith("book.txt: the document is over 70,000 tokens (the limit; counted ")
    counted = int(message.split("in its first ")[1].split()[0].replace(",", ""))
    assert counted <= 2 * 65_536 < len(text)  # stopped after the second piece, not at the end


def test_a_text_over_the_character_limit_is_refused_at_upload_and_in_the_worker(configure):
    configure(ingest={"max_chars": 50_000})
    data = story(1000).encode()
    expected = f"prose.txt: the file holds at least {len(data):,} characters of text, over the limit of 50,000"
    assert refusal(lambda: library.check_upload(data, "prose.txt")) == expected
    assert refusal(lambda: ingest_bytes(data, "prose.txt")) == expected
    # UTF-8 counted by characters, not bytes: 40 000 two-byte characters pass a 50 000 limit
    library.check_upload(("é" * 40_000).encode(), "accents.txt")


@pytest.mark.slow
def test_a_10_mb_markdown_line_is_refused_at_upload_and_split_linearly_when_allowed(configure):
    line = ("word " * (2 * 2**20)).encode()  # 10 MB, one line
    assert refusal(lambda: library.check_upload(line, "line.md")).startswith(
        "line.md: the file holds at least 10,485,760 characters of text, over the limit of"
    )
    configure(ingest={"max_chars": 20_000_000})
    library.check_upload(line, "line.md")  # the request checks bytes and a prefix only
    doc = ingest_bytes(line, "line.md")  # no tokenizer: what the upload request used to run whole
    spans = [(s, e) for s, e, _, _ in doc.passages]
    assert spans[0][0] == 0 and spans[-1][1] == len(doc.text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous
    assert all(e - s <= 512 * 4 for s, e in spans) and all(doc.text[e - 1] == " " for s, e in spans[:-1])
    # with the model's tokenizer: passages within the token budget, cut at spaces
    tokenizer, text = tiny_tokenizer(), "word " * 400_000
    spans = split_passages(text, tokenizer)
    assert "".join(text[s:e] for s, e in spans) == text
    assert all(len(tokenizer.tokenize(text[s:e])) <= 512 for s, e in spans)
    assert all(text[s:e].endswith(" ") for s, e in spans[:-1])


def test_a_run_without_any_separator_is_cut_by_tokens():
    tokenizer, text = tiny_tokenizer(), "Intro paragraph.\n\n" + "x" * 300_000 + "\n\nOutro."
    spans = split_passages(text, tokenizer)
    assert "".join(text[s:e] for s, e in spans) == text
    assert all(len(tokenizer.tokenize(text[s:e])) <= 512 for s, e in spans)


def test_prose_is_still_cut_between_paragraphs_across_blocks():
    tokenizer = tiny_tokenizer()
    paragraphs = [
        f"Paragraph {i}. " + "The keeper trimmed the wick and watched the sea. " * (1 + i % 5) for i in range(1500)
    ]
    text = "\n\n".join(paragraphs)  # about 230 000 characters: several splitting blocks
    spans = split_passages(text, tokenizer)
    assert "".join(text[s:e] for s, e in spans) == text
    assert all(len(tokenizer.tokenize(text[s:e])) <= 512 for s, e in spans)
    assert all(text[s:e].endswith("\n\n") for s, e in spans[:-1])


PEAK = """
import sys, json
sys.path.insert(0, "tests")
from conftest import tiny_tokenizer
from store_helpers import peak_rss_bytes
from app.ingest import ingest_bytes
data = open(sys.argv[1], "rb").read()
before = peak_rss_bytes() // 1024
doc = ingest_bytes(data, "book.txt", tiny_tokenizer())
print(json.dumps({"before_kib": before, "peak_kib": peak_rss_bytes() // 1024,
                  "chars": len(doc.text), "tokens": doc.token_count, "passages": len(doc.passages)}))
"""


@pytest.mark.e2e
def test_ingesting_a_large_prose_file_has_bounded_peak_memory(tmp_path):
    """A 3.9 M-character prose file (just under the default character limit) ingests in a fresh process whose
    peak resident memory stays under 1 GiB."""
    book = tmp_path / "book.txt"
    book.write_bytes(story(60_000).encode()[:3_900_000])
    env = {**os.environ, "HOMER_MAX_TOKENS": "5000000"}  # the test tokenizer spends a token per character
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(book)], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["chars"] == figures["tokens"] == 3_900_000
    assert figures["peak_kib"] < 2**20, figures  # KiB: under 1 GiB


# --- in the worker ------------------------------------------------------------------------
@pytest.fixture
def consumer(tmp_path):
    with consumer_in_process(Store(tmp_path / "store"), workers=1) as queue:
        yield queue


def test_refusals_in_the_worker_fail_the_job_store_nothing_and_the_queue_goes_on(consumer, model_dir, configure):
    configure(ingest={"max_pages": 20, "max_chars": 100_000, "max_tokens": 5000})
    queue, store = consumer, consumer.store
    bad = {
        "long.pdf": text_pdf([f"Page {i}." for i in range(30)]),
        "copies.pdf": shared_stream_pdf(20),
        "wordy.txt": story(100, "wordy").encode(),
    }  # 7 000 tokens with the test model's tokenizer
    bad_jobs = {name: queue.submit_file(data, name, str(model_dir), FAST) for name, data in bad.items()}
    good = queue.submit_file(story(20).encode(), "keeper.txt", str(model_dir), FAST)
    for name, job in bad_jobs.items():
        job = wait_for(store, job["id"], timeout=120)
        assert job["state"] == "failed" and job["error"].startswith(f"{name}: ") and "\n" not in job["error"], job
        assert job["attempts"] == 1  # deterministic: not retried
    assert "30 pages" in store.jobs.get(bad_jobs["long.pdf"]["id"])["error"]
    assert "100,000 characters" in store.jobs.get(bad_jobs["copies.pdf"]["id"])["error"]
    assert "5,000 tokens" in store.jobs.get(bad_jobs["wordy.txt"]["id"])["error"]
    assert wait_for(store, good["id"], timeout=120)["state"] == "done"
    assert [d["file_name"] for d in store.documents()] == ["keeper.txt"]
    assert list((store.root / "uploads").iterdir()) == []


def test_an_oversized_upload_is_refused_before_it_is_read(tmp_path):
    """The web server accepts files up to the (larger) bundle limit, so the upload handler
    checks a file's size on disk before reading it into memory."""
    from app import library
    from app.worker import queue_for
    from storage import Store

    queue = queue_for(Store(tmp_path / "store"))
    big = tmp_path / "big.txt"
    with open(big, "wb") as fh:  # sparse: 60 MB on paper, nothing to read if it is not read
        fh.truncate(60 * 2**20)
    lines = library.submit_upload_file(queue, big, "embedded")
    assert lines == ["✗ big.txt: the file is 60.0 MB, over the limit of 50.0 MB"]
    assert queue.store.jobs.list() == [] and not list((queue.store.root / "uploads").iterdir())
    small = tmp_path / "small.txt"
    small.write_text("The keeper was named Ada.\n" * 20)
    assert library.submit_upload_file(queue, small, "embedded") == ["✓ small.txt: queued for reading"]
