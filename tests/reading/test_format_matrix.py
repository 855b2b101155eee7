"""Every format end to end: the same chapters as PDF, EPUB, DOCX, HTML, TXT and Markdown —
made by real tools (pandoc; a PDF printed by headless Chromium) — are ingested, indexed
and asked a focused question whose answer lies in one known section (or page); the
answer's sources name that place. On a tiny random model: what is checked is retrieval and
the sources line, not the model's words."""

from __future__ import annotations

import format_fixtures as fx
import pytest

from app.chat import ChatService
from app.ingest import add_to_store, ingest_bytes
from homer import HomerConfig, build_document_cache
from homer.generation import GenerationSettings
from storage import Store

pytestmark = fx.needs_pandoc

# Melville, Moby-Dick (1851), chapters 1-3 shortened; public domain. Plain ASCII (the tiny
# tokenizer knows only ASCII), every paragraph over 60 words so that passages start at
# paragraphs, the answer in the last sub-section, after more than a passage of its page.
CHAPTERS = [
    (
        "Chapter 1. Loomings",
        None,
        [
            "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and "
            "nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of "
            "the world. It is a way I have of driving off the spleen and regulating the circulation. Whenever I find "
            "myself growing grim about the mouth, I account it high time to get to sea as soon as I can.",
            "There now is your insular city of the Manhattoes, belted round by wharves as Indian isles by coral reefs; "
            "commerce surrounds it with her surf. Right and left, the streets take you waterward. Its extreme downtown is "
            "the battery, where that noble mole is washed by waves, and cooled by breezes, which a few hours previous were "
            "out of sight of land. Look at the crowds of water-gazers there.",
        ],
    ),
    (
        "Chapter 2. The Carpet-Bag",
        None,
        [
            "I stuffed a shirt or two into my old carpet-bag, tucked it under my arm, and started for Cape Horn and the "
            "Pacific. Quitting the good city of old Manhatto, I duly arrived in New Bedford. It was a Saturday night in "
            "December. Much was I disappointed upon learning that the little packet for Nantucket had already sailed, and "
            "that no way of reaching that place would offer, till the following Monday.",
            "As most young candidates for the pains and penalties of whaling stop at this same New Bedford, thence to "
            "embark on their voyage, it may as well be related that I, for one, had no idea of so doing. For my mind was "
            "made up to sail in no other than a Nantucket craft, because there was a fine, boisterous something about "
            "everything connected with that famous old island.",
        ],
    ),
    (
        "Chapter 3. The Spouter-Inn",
        None,
        [
            "Entering that gable-ended Spouter-Inn, you found yourself in a wide, low, straggling entry with "
            "old-fashioned wainscots, reminding one of the bulwarks of some condemned old craft. On one side hung a very "
            "large oil-painting so thoroughly besmoked, and every way defaced, that in the unequal crosslights by which "
            "you viewed it, it was only by diligent study and a series of systematic visits to it, that you could any way "
            "arrive at an understanding of its purpose.",
            "Such unaccountable masses of shades and shadows, that at first you almost thought some ambitious young "
            "artist, in the time of the New England hags, had endeavored to delineate chaos bewitched. But by dint of much "
            "and earnest contemplation, and oft repeated ponderings, you at last come to the conclusion that such an idea, "
            "however wild, might not be altogether unwarranted.",
        ],
    ),
    (
        "The Storm",
        2,
        [
            "The final theory of my own, partly based upon the aggregated opinions of many aged persons with whom I "
            "conversed upon the subject, is this: the picture represents a Cape-Horner in a great hurricane; the "
            "half-foundered ship weltering there with its three dismantled masts alone visible; and an exasperated whale, "
            "purposing to spring clean over the craft, is in the enormous act of impaling himself upon the three "
            "mast-heads."
        ],
    ),
]
QUESTION = "What does the picture of the Cape-Horner in the hurricane show?"
ANSWER_WORD = "exasperated whale"
SECTION = "Chapter 3. The Spouter-Inn · The Storm"
PAGE = "p. 4"  # the title block on page 1, each chapter on a page of its own


def markdown() -> str:
    lines = ["---", "title: Moby-Dick", "author: Herman Melville", "---", ""]
    for title, level, paragraphs in CHAPTERS:
        lines += ["#" * (level or 1) + " " + title, ""]
        for paragraph in paragraphs:
            lines += [paragraph, ""]
    return "\n".join(lines)


def plain_text() -> str:
    lines = ["Moby-Dick", "", "Herman Melville", ""]
    for title, _, paragraphs in CHAPTERS:
        lines += [title, ""] + [p + "\n" for p in paragraphs]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix")
    made = {"moby.txt": plain_text().encode(), "moby.md": markdown().encode()}
    for kind in ("epub", "docx", "html"):
        made[f"moby.{kind}"] = fx.pandoc(markdown(), kind, folder)
    if fx.CHROMIUM is not None:
        made["moby.pdf"] = fx.pdf_from_html(made["moby.html"], folder)
    return made


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,where",
    [
        pytest.param("moby.pdf", PAGE, marks=fx.needs_chromium),
        ("moby.epub", SECTION),
        ("moby.docx", SECTION),
        ("moby.html", SECTION),
        ("moby.txt", None),  # one location: the source is quoted, no place named
        ("moby.md", SECTION),  # its "#" headings are sections
    ],
)
def test_a_focused_answer_names_the_section_or_page_of_its_source(files, tiny, tmp_path, name, where):
    model, tokenizer, _ = tiny
    store = Store(tmp_path / "store")
    service = ChatService(store, loader=lambda model_name: tiny)
    doc = add_to_store(store, ingest_bytes(files[name], name, tokenizer))
    text = store.document_text(doc["id"])
    locations = store.location_map(doc["id"])
    if where is not None:  # the answer lies where the test says: checked on the stored text first
        assert locations.label_at(text.index(ANSWER_WORD)) == where, (name, locations.labels)
    cache = build_document_cache(
        model, tokenizer, text, HomerConfig(significance="uncalibrated"), metadata={"document_id": doc["id"]}
    )
    store.save_cache(doc["id"], cache)
    *_, (shown, stats) = service.ask(
        "s", doc["id"], QUESTION, "tiny", GenerationSettings(max_new_tokens=2), focus="passages"
    )
    assert stats["focus"] == "passages" and stats["passages"], stats
    best = stats["passages"][0]
    assert ANSWER_WORD in " ".join(text[best["start"] : best["end"]].split())  # retrieval found the answer
    first_source = stats["sources"].splitlines()[0]
    if where is None:
        assert first_source.startswith("- “"), first_source
    else:
        assert first_source.startswith(f"- {where}: “"), first_source
    assert "\n\nSources:\n" + first_source in shown
