"""LLM-as-judge (`lmforge.evaluate.judge`) against a real `lmforge serve` on 127.0.0.1.

The judges are tiny models served by `lmforge.serve.Server`: a random one (its replies hold no score:
every parse failure must be counted and kept), and ones whose output head always picks the same token
("Score: 87", "[[A]]": a judge that always prefers the first position, which the position swap must
cancel). Also: score and verdict parsing (hand-picked and hypothesis), the seeded bootstrap against
scipy's, an unreachable endpoint (one line after bounded retries) and `--resume` keeping every judged item.
"""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
import torch
from helpers import tiny_chat_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.api import LLM
from lmforge.data.instructions import read_instructions, write_instructions
from lmforge.errors import ConfigError, LmforgeError
from lmforge.evaluate.judge import (
    JudgeArgs,
    fill,
    item_score,
    judge_answers,
    parse_score,
    parse_verdict,
    run_judge,
    run_pairwise,
    swapped_prompts,
    votes,
)
from lmforge.evaluate.stats import bootstrap_ci
from lmforge.serve import Server

# ------------------------------------------------------------------------------------------------
# parsing the judge's replies
SCORES = [
    ("Score: 87", 87.0), ("87/100", 87.0), ("I'd give it 87.", 87.0), ("", None), ("87", 87.0),
    ("The answer is clear and correct.\nScore: 92", 92.0), ("**Score**: 75", 75.0), ("Rating: 4.5/5", 90.0),
    ("Score: 8/10", 80.0), ("I rate this answer 72 out of 100.", 72.0), ("score 87.5", 87.5),
    ("It has 3 errors. Score: 60", 60.0),   # the labelled number, not the first one
    ("Score: 150", None),                    # out of range: a failure, not clipped
    ("It has 3 errors, 60 overall", None),   # two bare numbers: ambiguous
    ("No score, sorry.", None), (None, None), ("Score: 0", 0.0), ("Score: -5", None), ("-5", None),
]


@pytest.mark.parametrize("reply,want", SCORES)
def test_parse_score_hand_picked(reply, want):
    assert parse_score(reply) == want


PHRASES = ["Score: {s}", "score: {s}", "Score = {s}", "{s}/100", "{s} / 100", "{s} out of 100", "I'd give it {s}.",
           "I would rate it {s}", "Rating: {s}", "**Score:** {s}", "{s}", "Final score: {s}/100", "Grade: {s}."]
filler = st.text(st.characters(blacklist_categories=("Nd", "No", "Cs"), blacklist_characters="/"), max_size=40)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(score=st.integers(0, 100), phrase=st.sampled_from(PHRASES), before=filler)
def test_parse_score_reads_every_phrasing(score, phrase, before):
    # reasons before the verdict, on their own line(s), with no digits in them
    assert parse_score(before + "\n" + phrase.format(s=score)) == score


@settings(max_examples=300, deadline=None, derandomize=True)
@given(text=st.text(max_size=80))
def test_parse_score_never_raises_and_stays_in_range(text):
    value = parse_score(text)
    assert value is None or 0.0 <= value <= 100.0


@settings(max_examples=200, deadline=None, derandomize=True)
@given(text=filler)
def test_a_reply_without_a_number_is_a_failure(text):
    assert parse_score(text) is None


@pytest.mark.parametrize("reply,want", [
    ("[[A]]", "A"), ("Reasons… [[B]]", "B"), ("[[C]]", "tie"), ("[[tie]]", "tie"), ("B.", "B"), ("Tie", "tie"),
    ("Answer A is better.", "A"), ("Response B is the better one", "B"), ("A and B are both fine", None),
    ("", None), ("[[A]] at first, but on reflection [[B]]", "B")])
def test_parse_verdict(reply, want):
    assert parse_verdict(reply) == want


# ------------------------------------------------------------------------------------------------
# the position swap
def test_position_swap_swaps_the_answers():
    template = "Q: {instruction}\nA: {answer_a}\nB: {answer_b}\n{\"json\": {braces stay}}"
    first, second = swapped_prompts(template, "Which?", "apple", "pear")
    assert first == 'Q: Which?\nA: apple\nB: pear\n{"json": {braces stay}}'
    assert second == 'Q: Which?\nA: pear\nB: apple\n{"json": {braces stay}}'
    # a verdict for position A in the second prompt is a vote for model b
    assert votes(["A", "A"]) == ["a", "b"] and votes(["B", "A"]) == ["b", "b"] and votes(["tie", None]) == ["tie", None]
    assert item_score(votes(["A", "A"])) == 0.5      # a position-biased judge: a tie
    assert item_score(votes(["A", "B"])) == 1.0      # consistent: model a wins
    assert item_score(votes(["B", None])) == 0.0 and item_score([None, None]) is None


def test_a_judge_of_content_is_not_fooled_by_order():
    # a judge function that prefers the answer mentioning "good", whichever position it is in
    def judge(prompt: str) -> str:
        a = prompt.split("A: ")[1].split("\n")[0]
        return "[[A]]" if "good" in a else "[[B]]"

    template = "{instruction}\nA: {answer_a}\nB: {answer_b}"
    for a, b, want in [("good", "bad", 1.0), ("bad", "good", 0.0)]:
        verdicts = [parse_verdict(judge(p)) for p in swapped_prompts(template, "i", a, b)]
        assert item_score(votes(verdicts)) == want


# ------------------------------------------------------------------------------------------------
# the bootstrap
def test_bootstrap_is_seeded_reproducible_and_agrees_with_scipy():
    from scipy.stats import bootstrap

    x = np.random.default_rng(1).integers(0, 101, size=60).astype(float)
    a, b = bootstrap_ci(x, 2000, seed=7), bootstrap_ci(list(x), 2000, seed=7)
    assert a == b
    assert bootstrap_ci(x, 2000, seed=8) != a
    std, low, high = a
    assert low < x.mean() < high
    ref = bootstrap((x,), np.mean, n_resamples=20000, confidence_level=0.95, method="percentile",
                    random_state=np.random.default_rng(0))
    assert low == pytest.approx(ref.confidence_interval.low, abs=1.5)
    assert high == pytest.approx(ref.confidence_interval.high, abs=1.5)
    assert std == pytest.approx(ref.standard_error, rel=0.1)
    assert bootstrap_ci([87.0] * 5, 100, seed=0) == (0.0, 87.0, 87.0)


# ------------------------------------------------------------------------------------------------
# against a real `lmforge serve`
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the machines are shared: a tiny model runs fastest on one thread
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> LLM:
    return LLM.load(tiny_chat_checkpoint(tmp_path_factory.mktemp("answerer")), device="cpu", dtype="float32")


def _serve(tmp_path_factory, always: str | None):
    ckpt = tiny_chat_checkpoint(tmp_path_factory.mktemp("judge"), always=always, seed=1)
    return Server(LLM.load(ckpt, device="cpu", dtype="float32"), max_batch_size=4, max_seq_length=1024)


@pytest.fixture(scope="module")
def random_judge(tmp_path_factory):
    with _serve(tmp_path_factory, None) as srv:
        yield srv


@pytest.fixture(scope="module")
def judge_87(tmp_path_factory):
    with _serve(tmp_path_factory, "Score: 87") as srv:
        yield srv


@pytest.fixture(scope="module")
def judge_first(tmp_path_factory):
    with _serve(tmp_path_factory, "[[A]]") as srv:
        yield srv


def args(server, tmp_path, **kw) -> JudgeArgs:
    return JudgeArgs(**{"url": server.url + "/v1" if server else "http://127.0.0.1:9/v1",
                        "out": str(tmp_path / "judged.jsonl"), "max_new_tokens": 8, "judge_max_tokens": 6,
                        "batch_size": 3, "concurrency": 2, "retries": 1, "retry_wait": 0.05, "timeout": 30.0, **kw})


def lines(path) -> list[dict]:
    return [json.loads(x) for x in open(path, encoding="utf-8")]


def test_judge_scores_through_a_real_server(llm, judge_87, tmp_path):
    r = run_judge(llm, args(judge_87, tmp_path, limit=5))
    assert r["metrics"]["judge_score"]["value"] == 87.0
    assert r["metrics"]["judge_score_ci_low"]["value"] == r["metrics"]["judge_score_ci_high"]["value"] == 87.0
    assert r["metrics"]["parse_failures"]["value"] == 0
    assert r["breakdown"]["judge_model"] == "tiny-chat"          # asked of /v1/models
    want = read_instructions(limit=5)
    saved = lines(tmp_path / "judged.jsonl")
    assert sorted(s["id"] for s in saved) == sorted(w["id"] for w in want)
    # the answers are the model's own greedy chat replies
    answers = llm.chat([[{"role": "user", "content": w["instruction"]}] for w in want], max_new_tokens=8)
    assert [s["answer"] for s in r["samples"]] == answers
    assert all(s["reply"].startswith("Score: 87") for s in saved)
    # answers written elsewhere: judged as they are, with the same result
    given = [{"id": s["id"], "instruction": s["instruction"], "answer": s["answer"]} for s in saved[:3]]
    again = judge_answers(given, args(judge_87, tmp_path, out=str(tmp_path / "again.jsonl")))
    assert [s["answer"] for s in again["samples"]] == [g["answer"] for g in given]
    assert again["metrics"]["judge_score"]["value"] == 87.0


def test_parse_failures_are_counted_shown_and_kept(llm, random_judge, tmp_path, capsys):
    r = run_judge(llm, args(random_judge, tmp_path, limit=6))
    failed = [s for s in r["samples"] if s["score"] is None]
    assert len(r["samples"]) == 6 == len(lines(tmp_path / "judged.jsonl"))   # none dropped
    assert failed, "a random model's replies should hold no score"
    assert r["metrics"]["parse_failures"]["value"] == len(failed) == r["breakdown"]["parse_failures"]
    assert r["breakdown"]["failed_ids"] == [s["id"] for s in failed]
    assert f"{len(failed)} of 6 replies had no readable verdict" in capsys.readouterr().err


def test_pairwise_position_swap_cancels_a_first_position_judge(judge_first, tmp_path):
    items = read_instructions(limit=4)
    a = [{"id": it["id"], "instruction": it["instruction"], "answer": "a careful answer"} for it in items]
    b = [{"id": it["id"], "instruction": it["instruction"], "answer": "a sloppy answer"} for it in items]
    a_path = tmp_path / "a.jsonl"
    a_path.write_text("".join(json.dumps(x) + "\n" for x in a))
    r = run_pairwise(a_path, b, args(judge_first, tmp_path))
    m = r["metrics"]
    assert (m["wins"]["value"], m["ties"]["value"], m["losses"]["value"]) == (0, 4, 0)
    assert m["win_rate"]["value"] == 0.5 and m["position_agreement"]["value"] == 0.0
    assert r["breakdown"]["first_position_rate"] == 1.0
    for s in lines(tmp_path / "judged.jsonl"):
        assert s["verdicts"] == ["A", "A"] and s["votes"] == ["a", "b"] and s["score"] == 0.5


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_is_one_line_after_bounded_retries(llm, tmp_path):
    cfg = args(None, tmp_path, url=f"http://127.0.0.1:{_closed_port()}/v1", retries=2, limit=2)
    start = time.monotonic()
    with pytest.raises(LmforgeError) as e:
        run_judge(llm, cfg)
    msg = str(e.value)
    assert "\n" not in msg and "unreachable" in msg and "failed 3 times" in msg and cfg.url in msg
    assert time.monotonic() - start < 10


def test_partial_results_are_kept_and_resumed(llm, tmp_path_factory, tmp_path):
    ckpt = tiny_chat_checkpoint(tmp_path_factory.mktemp("judge_resume"), always="Score: 87", seed=1)
    judge_llm = LLM.load(ckpt, device="cpu", dtype="float32")
    out = tmp_path / "judged.jsonl"
    with Server(judge_llm, max_batch_size=4, max_seq_length=1024) as srv:
        run_judge(llm, args(srv, tmp_path, limit=4))
    first = out.read_text()
    assert len(first.splitlines()) == 4
    # the judge is gone: one line naming what is kept; nothing judged is lost
    with pytest.raises(LmforgeError) as e:
        run_judge(llm, args(srv, tmp_path, limit=8, resume=True))
    msg = str(e.value)
    assert "\n" not in msg and f"4 judged items are kept in {out}" in msg and "--resume" in msg
    assert out.read_text() == first
    # an existing file is never overwritten without --resume
    with Server(judge_llm, max_batch_size=4, max_seq_length=1024) as srv:
        with pytest.raises(LmforgeError, match="already holds judged items; pass --resume"):
            run_judge(llm, args(srv, tmp_path, limit=8))
        out.write_text(first + first.splitlines()[0][:20])  # a crash cut the last line short: dropped
        r = run_judge(llm, args(srv, tmp_path, limit=8, resume=True))
    text = out.read_text()
    assert text.startswith(first) and len(text.splitlines()) == 8
    assert [s["id"] for s in r["samples"]] == [it["id"] for it in read_instructions(limit=8)]
    assert r["metrics"]["judge_score"]["value"] == 87.0


def test_the_api_key_comes_from_the_named_env_var(llm, tmp_path_factory, tmp_path, monkeypatch):
    ckpt = tiny_chat_checkpoint(tmp_path_factory.mktemp("judge_key"), always="Score: 87", seed=1)
    with Server(LLM.load(ckpt, device="cpu", dtype="float32"), api_key="s3cret", max_batch_size=2,
                max_seq_length=1024) as srv:
        monkeypatch.setenv("MY_JUDGE_KEY", "wrong")
        with pytest.raises(LmforgeError) as e:
            run_judge(llm, args(srv, tmp_path, api_key_env="MY_JUDGE_KEY", limit=1))
        assert "\n" not in str(e.value) and "answered GET /models with 401" in str(e.value)
        assert "$MY_JUDGE_KEY" in str(e.value)
        monkeypatch.setenv("MY_JUDGE_KEY", "s3cret")
        r = run_judge(llm, args(srv, tmp_path, api_key_env="MY_JUDGE_KEY", limit=1))
    assert r["metrics"]["judge_score"]["value"] == 87.0


_values = st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.lists(st.integers(), max_size=2)
_records = st.fixed_dictionaries({}, optional={"id": _values, "instruction": _values, "answer": _values,
                                               "prompt": _values, "input": _values, "category": _values})
_lines = st.lists(st.one_of(_records.map(json.dumps), st.text(max_size=20)), max_size=5)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(lines=_lines)
def test_instruction_and_answer_files_read_or_fail_with_one_line(lines):
    import tempfile
    from pathlib import Path

    from lmforge.evaluate.judge import read_answers

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.jsonl"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        for read in (read_instructions, read_answers):
            try:
                got = read(path)
            except LmforgeError as e:
                assert "\n" not in str(e) and str(path) in str(e)
                continue
            assert got and all(isinstance(k, str) for k in (got if isinstance(got, dict) else
                                                            [it["id"] for it in got]))


def test_resume_refuses_a_file_of_other_instructions(llm, tmp_path):
    out = tmp_path / "judged.jsonl"
    out.write_text(json.dumps({"id": "writing-01", "instruction": "something else", "score": 3}) + "\n")
    with pytest.raises(LmforgeError, match=r"judged.jsonl:1: item 'writing-01' is not one of this run's"):
        run_judge(llm, args(None, tmp_path, resume=True, limit=2))


# ------------------------------------------------------------------------------------------------
# settings and files: one-line errors
@pytest.mark.parametrize("kw,message", [
    ({"url": "127.0.0.1:8000"}, "is not an http(s) URL"), ({"retries": -1}, "retries must be an integer >= 0"),
    ({"concurrency": 0}, "concurrency must be an integer >= 1"), ({"limit": 0}, "limit must be an integer >= 1"),
    ({"confidence": 1.5}, "confidence must be between 0 and 1"), ({"timeout": -1.0}, "timeout must be >= 0")])
def test_bad_settings_are_one_line_errors(kw, message):
    with pytest.raises(ConfigError) as e:
        JudgeArgs(**kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_templates_override_and_are_checked(llm, judge_87, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Rate {answer} from 0 to 100.")
    with pytest.raises(ConfigError, match=r"bad.txt: no \{instruction\} in it"):
        run_judge(llm, args(judge_87, tmp_path, template=str(bad)))
    good = tmp_path / "good.txt"
    good.write_text('Instruction: {instruction}\nAnswer: {answer}\nReply as JSON {"score": N}.')
    with pytest.raises(ConfigError, match=r"no \{answer_a\} in it \(a pairwise template needs"):
        run_pairwise([{"instruction": "i", "answer": "x"}], [{"instruction": "i", "answer": "y"}],
                     args(judge_87, tmp_path, template=str(good)))
    filled = fill(good.read_text(), instruction="i", answer="x")
    assert filled == 'Instruction: i\nAnswer: x\nReply as JSON {"score": N}.'
    r = run_judge(llm, args(judge_87, tmp_path, template=str(good), limit=2))
    assert r["metrics"]["judge_score"]["value"] == 87.0


def test_answer_files_are_checked(tmp_path):
    cfg = args(None, tmp_path)
    with pytest.raises(LmforgeError, match="a.jsonl:2: missing field 'answer'"):
        (tmp_path / "a.jsonl").write_text('{"instruction": "i", "answer": "x"}\n{"instruction": "j"}\n')
        run_pairwise(tmp_path / "a.jsonl", [], cfg)
    with pytest.raises(LmforgeError, match="share no item ids"):
        run_pairwise([{"id": "1", "instruction": "i", "answer": "x"}],
                     [{"id": "2", "instruction": "i", "answer": "y"}], cfg)


def test_shipped_instructions(tmp_path):
    items = read_instructions()
    assert len(items) >= 200
    assert len({it["id"] for it in items}) == len(items) == len({it["instruction"] for it in items})
    cats = {it["category"] for it in items}
    assert len(cats) >= 10 and all(sum(it["category"] == c for it in items) >= 10 for c in cats)
    assert write_instructions(tmp_path / "i.jsonl") == len(items)
    assert read_instructions(tmp_path / "i.jsonl") == items
    (tmp_path / "bad.jsonl").write_text('{"instruction": "a"}\n{"prompt": 3}\n')
    with pytest.raises(LmforgeError, match="bad.jsonl:2: missing field 'instruction'"):
        read_instructions(tmp_path / "bad.jsonl")


def test_data_instructions_verb(tmp_path):
    from lmforge.cli import run

    run(["data", "instructions", "--out", str(tmp_path / "x.jsonl")])
    assert read_instructions(tmp_path / "x.jsonl") == read_instructions()


@pytest.mark.slow
def test_smollm2_judges_smollm2_through_lmforge_serve(tmp_path):
    from helpers import asset

    gguf = asset("smollm2-135m-instruct")
    answerer = LLM.load(gguf)
    with Server(LLM.load(gguf), max_batch_size=4, max_seq_length=2048) as srv:
        common = {"url": srv.url + "/v1", "max_new_tokens": 48, "judge_max_tokens": 48, "batch_size": 4, "retries": 1}
        r = run_judge(answerer, JudgeArgs(out=str(tmp_path / "scores.jsonl"), limit=4, **common))
        saved = lines(tmp_path / "scores.jsonl")
        short = [{**s, "answer": s["answer"][:20]} for s in saved]
        p = run_pairwise(tmp_path / "scores.jsonl", short, JudgeArgs(out=str(tmp_path / "pairs.jsonl"), **common))
    assert r["breakdown"]["judge_model"] == answerer.config.name
    assert len(saved) == 4 and all(s["answer"] and s["reply"] for s in saved)
    failed = [s for s in saved if s["score"] is None]
    assert r["metrics"]["parse_failures"]["value"] == len(failed)
    assert all(0 <= s["score"] <= 100 for s in saved if s["score"] is not None)
    m = p["metrics"]
    assert len(lines(tmp_path / "pairs.jsonl")) == 4
    assert m["wins"]["value"] + m["ties"]["value"] + m["losses"]["value"] == p["breakdown"]["scored"]
    assert m["parse_failures"]["value"] == sum(v is None for s in p["samples"] for v in s["votes"])
