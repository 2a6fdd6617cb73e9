"""Custom generation sets (`lmforge.evaluate.generation`): metrics on hand-checked replies, batched
replies equal to one-at-a-time generation, the verifiable-task metric equal to `lmforge.data.tasks.score`,
the JSONL boundary fuzzed, and bad input as one-line errors naming the line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import tiny_chat_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.api import LLM
from lmforge.data.tasks import make_tasks, score
from lmforge.errors import LmforgeError
from lmforge.evaluate.generation import matches, parse_number, read_set, run_generation, score_replies
from lmforge.sampling import SamplingParams


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


# (metric, reply, answer, right?) checked by hand
CASES = [
    ("exact", "Paris", "paris", True),
    ("exact", "  Paris.\nIt is the capital.", "Paris", True),   # the first line, without its full stop
    ("exact", "'PARIS'", "Paris", True),
    ("exact", "The answer is Paris", "Paris", False),
    ("exact", "", "Paris", False),
    ("contains", "The capital of France is Paris.", "paris", True),
    ("contains", "The capital\nof   France", "capital of france", True),  # lines and spaces collapse
    ("contains", "It is Lyon.", "Paris", False),
    ("regex", "I think 1984 was the year", r"\b19\d\d\b", True),
    ("regex", "in the year 2001", r"^19\d\d$", False),
    ("numeric", "The total is 1,234.5 dollars", "1234.5", True),
    ("numeric", "First 3, then 42", "42", True),        # the last number
    ("numeric", "42 apples, give or take 3", "42", False),
    ("numeric", "about 3.14159", "3.1416", False),
    ("numeric", "no number here", "7", False),
    ("numeric", "-17", "-17.0", True),
]


@pytest.mark.parametrize("metric,reply,answer,right", CASES)
def test_metrics_on_hand_checked_replies(metric, reply, answer, right):
    assert matches(metric, reply, answer) is right


def test_numeric_tolerance_and_number_parsing():
    assert matches("numeric", "about 3.14159", "3.1416", tolerance=1e-3)
    assert not matches("numeric", "about 3.14159", "3.1416", tolerance=1e-5)
    assert parse_number("1,234,567 and 8") == 8.0
    assert parse_number("costs 1,234,567") == 1234567.0
    assert parse_number("1.5e3") == 1500.0
    assert parse_number("none") is None


def test_task_metric_equals_the_task_scorer(tmp_path):
    # the verifiable-task checker through a generation set equals lmforge.data.tasks.score on the same replies
    _, test = make_tasks(n_train=0, n_test=60, seed=3)
    rng = np.random.default_rng(0)
    replies = [r["output"] if rng.random() < 0.5 else r["output"] + "0" for r in test]
    replies[0] = f"  {test[0]['output']}.\nbecause…"  # right after normalisation
    path = write_jsonl(tmp_path / "tasks.jsonl", test)   # `lmforge data tasks` lines, read as they are
    result = score_replies(read_set(path, "task"), replies, "task")
    want = score(test, replies)
    assert result["metrics"]["task"]["value"] == pytest.approx(want["overall"])
    for family, acc in want.items():
        if family != "overall":
            assert result["breakdown"][family]["value"] == pytest.approx(acc)


def test_any_of_several_answers_and_extract(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "colour of the sky?", "answer": ["blue", "azure"]},
                                              {"prompt": "2+2?", "answer": 4}])
    items = read_set(path, "exact")
    assert items[1].answers == ("4",)
    r = score_replies(items, ["Azure", "Answer: 4"], "exact", extract=r"(?:Answer: )?(\w+)")
    assert [s["correct"] for s in r["samples"]] == [True, True]
    assert r["samples"][1]["extracted"] == "4"
    r = score_replies(items, ["blue", "four"], "exact", extract=r"\d+")  # no match: wrong, not an error
    assert [s["correct"] for s in r["samples"]] == [False, False]


def test_stderr_is_the_sample_standard_error(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": "yes"} for i in range(7)]
    items = read_set(write_jsonl(tmp_path / "s.jsonl", rows))
    replies = ["yes", "no", "yes", "yes", "no", "yes", "no"]
    m = score_replies(items, replies)["metrics"]["exact"]
    hits = np.array([r == "yes" for r in replies], dtype=float)
    assert m["value"] == pytest.approx(hits.mean())
    assert m["stderr"] == pytest.approx(hits.std(ddof=1) / math.sqrt(len(hits)))


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> LLM:
    torch.set_num_threads(1)
    return LLM.load(tiny_chat_checkpoint(tmp_path_factory.mktemp("gen_ckpt")), device="cpu", dtype="float32")


@pytest.mark.parametrize("chat", [True, False])
def test_batched_replies_equal_one_at_a_time_generation(llm, tmp_path, chat):
    prompts = ["Hello", "The quick brown fox", "Score the answer", "x", "How are you today?"]
    one = [llm.chat([{"role": "user", "content": p}], max_new_tokens=6) if chat else
           llm.generate(p, max_new_tokens=6) for p in prompts]
    # the answers are the model's own one-at-a-time replies for the first three items, wrong for the rest
    rows = [{"prompt": p, "answer": one[i] if i < 3 else one[i] + " not this", "category": "c" + str(i % 2)}
            for i, p in enumerate(prompts)]
    r = run_generation(llm, write_jsonl(tmp_path / "s.jsonl", rows), metric="contains", chat=chat,
                       sampling=SamplingParams(max_new_tokens=6), batch_size=2)
    assert [s["reply"] for s in r["samples"]] == one
    assert [s["correct"] for s in r["samples"]] == [True, True, True, False, False]
    assert r["metrics"]["contains"]["value"] == pytest.approx(0.6)
    assert r["breakdown"]["c0"]["n"] == 3 and r["breakdown"]["c1"]["n"] == 2
    assert run_generation(llm, tmp_path / "s.jsonl", limit=2, sampling=SamplingParams(max_new_tokens=2),
                          chat=chat)["breakdown"]["c0"]["n"] == 1


def test_sampled_replies_are_seeded(llm, tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Hello", "answer": "x"}] * 3)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5)
    a = run_generation(llm, path, sampling=params)["samples"]
    b = run_generation(llm, path, sampling=params)["samples"]
    assert [s["reply"] for s in a] == [s["reply"] for s in b]


# ------------------------------------------------------------------------------------------------
# bad input: one line naming the culprit
BAD = [
    (['{"prompt": "a", "answer": "b"}', '{"prompt": "a", "answer": '], "exact", "s.jsonl:2: malformed JSON"),
    (['{"prompt": "a", "answer": "b"}', '', '[1, 2]'], "exact", "s.jsonl:3: expected a JSON object"),
    (['{"answer": "b"}'], "exact", "s.jsonl:1: missing field 'prompt'"),
    (['{"prompt": "a"}'], "exact", "s.jsonl:1: missing field 'answer'"),
    (['{"prompt": "", "answer": "b"}'], "exact", "s.jsonl:1: 'prompt' is empty"),
    (['{"prompt": "a", "answer": []}'], "exact", "s.jsonl:1: 'answer' is an empty list"),
    (['{"prompt": "a", "answer": {"x": 1}}'], "exact", "s.jsonl:1: 'answer' must be a string or a number"),
    (['{"prompt": "a", "answer": "b"}', '{"prompt": "a", "answer": "(unclosed"}'], "regex",
     "s.jsonl:2: bad regex '(unclosed'"),
    (['{"prompt": "a", "answer": "seven"}'], "numeric", "s.jsonl:1: 'answer' 'seven' has no number"),
    (['{"prompt": "a", "answer": "b", "family": "poetry"}'], "task", "s.jsonl:1: metric task needs a 'family'"),
    ([''], "exact", "s.jsonl: no items"),
    (['{"prompt": "a", "answer": "b"}'], "bleu", "unknown metric 'bleu'"),
]


@pytest.mark.parametrize("lines,metric,message", BAD)
def test_bad_sets_are_one_line_errors(tmp_path, lines, metric, message):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LmforgeError) as e:
        read_set(path, metric)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_options_are_one_line_errors(llm, tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "a", "answer": "b"}])
    for kwargs, message in [({"limit": 0}, "limit must be a positive integer"),
                            ({"extract": "(["}, "extract: bad regex"),
                            ({"tolerance": -1.0}, "tolerance must be >= 0")]:
        with pytest.raises(LmforgeError, match=message.replace("(", r"\(").replace("[", r"\[")):
            run_generation(llm, path, **kwargs)
    with pytest.raises(LmforgeError, match="nope.jsonl: file not found"):
        read_set(tmp_path / "nope.jsonl")


_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                            max_leaves=6)
_fields = st.fixed_dictionaries({}, optional={"prompt": _json_values, "answer": _json_values,
                                             "family": _json_values, "instruction": _json_values})
_lines = st.lists(st.one_of(_fields.map(json.dumps), st.text(max_size=20)), min_size=0, max_size=5)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_lines, metric=st.sampled_from(["exact", "contains", "regex", "numeric", "task"]))
def test_any_file_reads_or_fails_with_one_line(tmp_path, lines, metric):
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        items = read_set(path, metric)
    except LmforgeError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return
    assert items and all(it.prompt.strip() and it.answers for it in items)
    r = score_replies(items, [it.answers[0] for it in items], metric)  # scoring never fails either
    assert 0.0 <= r["metrics"][metric]["value"] <= 1.0


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries({"prompt": st.text(min_size=1).filter(str.strip),
                                            "answer": st.text(max_size=20) | st.integers()}), min_size=1, max_size=6))
def test_valid_lines_round_trip_and_own_answers_are_right(tmp_path, rows):
    items = read_set(write_jsonl(tmp_path / "ok.jsonl", rows))
    assert [it.prompt for it in items] == [r["prompt"] for r in rows]
    assert [it.answers for it in items] == [(str(r["answer"]),) for r in rows]
    r = score_replies(items, [str(r["answer"]) for r in rows], "exact")
    assert r["metrics"]["exact"]["value"] == 1.0
