"""The not-found check (homer.answering.grounding) and passage excerpts (homer.answering.focus.excerpt)."""

from __future__ import annotations

from homer.answering import grounding
from homer.answering.focus import STRATEGIES, excerpt

PASSAGES = [
    "Methuselah lived an hundred eighty and seven years, and begat Lamech. And all the days of "
    "Methuselah were nine hundred sixty and nine years: and he died.",
    "And Noah was six hundred years old when the flood of waters was upon the earth.",
    "The ark rested in the seventh month upon the mountains of Ararat.",
    "And the LORD spake unto Moses in mount Sinai, saying, Speak unto the children of Israel.",
]


def test_a_question_the_passages_hold_is_covered_and_one_they_do_not_is_not():
    df, total = grounding.document_frequencies(PASSAGES)
    held = grounding.coverage("How old was Methuselah when he died?", PASSAGES[:1], df, total)
    absent = grounding.coverage("Which physicist discovered the positron in 1932?", PASSAGES[2:], df, total)
    assert held > 0.5  # "old" is not in the passage: the answer says "years"
    assert absent < grounding.MIN_COVERAGE
    assert grounding.found("How old was Methuselah when he died?", PASSAGES[:1], df, total)
    assert not grounding.found("Which physicist discovered the positron in 1932?", PASSAGES[2:], df, total)
    assert not grounding.found("How old was Methuselah?", [], df, total)  # nothing retrieved
    assert grounding.found("And then?", [], df, total)  # about the conversation: nothing to check


def test_rare_words_weigh_more_than_common_ones():
    df, total = grounding.document_frequencies(PASSAGES)
    # "years" is in two passages, "Lamech" in one: missing the rare word costs more
    without_rare = grounding.coverage("years Lamech", [PASSAGES[1]], df, total)
    without_common = grounding.coverage("years Lamech", [PASSAGES[0]], df, total)
    assert without_common > without_rare


def test_function_words_alone_are_not_checked():
    df, total = grounding.document_frequencies(PASSAGES)
    assert grounding.coverage("What is it?", PASSAGES[2:3], df, total) == 1.0
    assert grounding.content_words("How did they die?") == {"die"}


def test_the_pipeline_plans_not_found_unless_turned_off():
    from homer.answering import AnswerSettings, DocumentChat, DocumentText

    text = "\n\n".join(["The keeper rowed out to the reef at dawn."] * 3 + ["The harbour cat was named Biscuit."])
    document = DocumentText.of_text(text)
    plan = DocumentChat(None, None, document).plan("Which violin did the admiral play?", STRATEGIES["passages"])
    assert plan.not_found and plan.coverage < 0.3
    assert (
        not DocumentChat(None, None, document).plan("What was the harbour cat named?", STRATEGIES["passages"]).not_found
    )
    quiet = DocumentChat(None, None, document, settings=AnswerSettings(not_found=False))
    assert not quiet.plan("Which violin did the admiral play?", STRATEGIES["passages"]).not_found


def test_an_excerpt_is_the_window_holding_the_question_widened_to_its_sentences():
    text = (
        " ".join(f"Filler sentence number {i} goes here." for i in range(40))
        + (" And all the days of Methuselah were nine hundred sixty and nine years: and he died. ")
        + " ".join(f"More filler {i} follows." for i in range(40))
    )
    cut = excerpt(text, "How old was Methuselah when he died?", 30)
    assert "Methuselah were nine hundred sixty and nine years" in cut
    assert len(cut.split()) <= 40
    assert cut[0].isupper() and cut.rstrip().endswith(".")  # whole sentences where they fit
    assert excerpt("short text", "anything", 30) == "short text"
    assert excerpt(text, "q", 0) == text


def test_an_excerpt_keeps_the_value_after_a_hyphenated_key():
    filler = " ".join(f"Essay sentence {i} about startups and hackers." for i in range(12))
    text = (
        filler + " One of the special magic numbers for yielding-communist is: 1101083. "
        "The answer is: any company. One of the special magic numbers for evanescent-dealing is: 9563068. " + filler
    )
    cut = excerpt(text, "What is the special magic number for evanescent-dealing mentioned in the provided text?", 40)
    assert "evanescent-dealing is: 9563068." in cut
    assert grounding.content_words("Abram's evanescent-dealing") == {"abram", "evanescent", "deal"}  # stemmed
