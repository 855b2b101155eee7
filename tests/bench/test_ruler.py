"""The RULER runner's shared haystacks: every question's evidence is in its haystack, the
slices are disjoint, layouts are seeded, and answers are scored with RULER's own metrics."""

from __future__ import annotations

import pytest

pytest.importorskip("long_context_eval")

from benchmarks import ruler  # noqa: E402


class WordTokenizer:
    """Counts words as tokens (fast; the layout only needs a length)."""

    def __call__(self, text, add_special_tokens=False):
        class Out:
            input_ids = text.split()

        return Out()


def test_every_question_has_its_evidence_in_its_haystack_and_lengths_hold():
    stacks = ruler.haystacks(WordTokenizer(), 6000, 6, "dev", seed=1)
    assert sum(1 for s in stacks for q in s.questions if q.task != ruler.ABSENT) == 6 * len(ruler.TASKS)
    for stack in stacks:
        assert stack.tokens <= 6000 * 1.05
        for q in stack.questions:
            assert all(e in stack.text for e in q.evidence), q.qid
            if q.task == "qa_2":
                assert len(q.evidence) == 2  # both supporting paragraphs
            if q.task.startswith("niah"):
                assert all(a in stack.text for a in q.answers)


def test_layouts_are_seeded_and_the_eval_slice_is_not_the_dev_slice():
    a = ruler.haystacks(WordTokenizer(), 4000, 2, "eval", seed=0)
    b = ruler.haystacks(WordTokenizer(), 4000, 2, "eval", seed=0)
    assert [s.text for s in a] == [s.text for s in b]
    dev = ruler.draw_questions("dev", 40, seed=0)
    ev = ruler.draw_questions("eval", 40, seed=0)
    for task in ("qa_1", "qa_2", "qa_1_unanswerable"):
        assert not {q.qid for q in dev[task]} & {q.qid for q in ev[task]}
    assert all(int(q.qid.split(":")[1]) >= ruler.SQUAD_EVAL_FROM for q in ev["qa_1"])
    assert all(int(q.qid.split(":")[1]) < ruler.SQUAD_EVAL_FROM for q in dev["qa_1"])


def test_scores_are_rulers_string_matches():
    assert ruler.score("qa_1", "It was in France.", ["France", "Normandy"]) == 1.0
    assert ruler.score("qa_2", "no idea", ["journalist"]) == 0.0
    assert ruler.score("niah_multivalue", "1234567 and 7654321", ["1234567", "7654321", "1111111", "2222222"]) == 0.5
    assert ruler.score("qa_1_unanswerable", "I could not find this in the document.", []) == 1.0
    assert ruler.score("qa_1_unanswerable", "The document states it was 1854.", []) == 0.0
    assert ruler.score(ruler.ABSENT, "I could not find this in the document.", []) == 1.0


def test_absent_questions_are_not_in_their_haystack():
    stacks = ruler.haystacks(WordTokenizer(), 8000, 4, "dev", seed=2)
    absent = [q for s in stacks for q in s.questions if q.task == ruler.ABSENT]
    assert absent
    for stack in stacks:
        for q in stack.questions:
            if q.task == ruler.ABSENT:
                assert q.question not in stack.text


@pytest.mark.slow
def test_a_short_run_writes_its_table(model_dir, tmp_path):
    out = tmp_path / "ruler.json"
    assert (
        ruler.main(
            [
                "--model",
                str(model_dir),
                "--cells",
                "300:cache,passages",
                "--questions",
                "1",
                "--split",
                "dev",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    import json

    table = json.loads(out.read_text())["cells"]["300"]
    assert set(table) == {"cache", "passages"}
    assert set(table["passages"]) <= {*ruler.TASKS, ruler.ABSENT} and set(ruler.TASKS) <= set(table["passages"])
    assert all("score_with_not_found" in cell for cell in table["passages"].values())
    assert all(cell["n"] == 1 for cell in table["cache"].values())


def test_runs_merge_into_one_summary_with_the_ceiling_of_another(tmp_path):
    import json

    def run(name, rows, **meta):
        (tmp_path / f"{name}.json").write_text(json.dumps({"split": "eval", "seed": 0, "k": 3, **meta}))
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / f"{name}.json")

    def row(length, arm, qid, score):
        return {
            "length": length,
            "arm": arm,
            "task": "qa_1",
            "qid": qid,
            "question": "q",
            "refs": ["a"],
            "score": score,
            "answer": "a",
            "time_to_first_token": 1.0,
            "evidence_retrieved": 1.0,
        }

    ceiling = run("ceiling", [row(4000, "cache", "1", 0.0), row(4000, "cache", "2", 1.0)])
    app = run(
        "app", [row(32000, "passages", "1", 1.0), row(32000, "passages", "2", 1.0), row(4000, "cache", "1", 1.0)]
    )  # a later file's row replaces the earlier one's
    out = tmp_path / "summary.json"
    assert ruler.merge([ceiling, app], out) == 0
    summary = json.loads(out.read_text())
    assert summary["cells"]["4000"]["cache"]["qa_1"] == {
        **summary["cells"]["4000"]["cache"]["qa_1"],
        "n": 2,
        "score": 100.0,
    }
    assert summary["of_ceiling"]["32000"]["passages"]["qa_1"] == 1.0
    other = run("other", [], k=5)
    with pytest.raises(SystemExit, match="differ in k"):
        ruler.merge([ceiling, other], out)
