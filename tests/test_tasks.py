"""Verifiable instruction tasks: seeded, split by phrasing, answers right, checker strict but fair."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data.tasks import FAMILIES, check, make_tasks, normalize, score, write_tasks
from lmforge.errors import LmforgeError


def test_at_least_twelve_families_and_seeded():
    assert len(FAMILIES) >= 12
    assert make_tasks(200, 50, seed=3) == make_tasks(200, 50, seed=3)
    assert make_tasks(200, 50, seed=3) != make_tasks(200, 50, seed=4)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10**6))
def test_split_by_template_and_answers_check(seed):
    train, test = make_tasks(n_train=len(FAMILIES) * 6, n_test=len(FAMILIES) * 3, seed=seed)
    for name in FAMILIES:
        tr = {r["template"] for r in train if r["family"] == name}
        te = {r["template"] for r in test if r["family"] == name}
        assert tr and te and not tr & te, name  # test phrasings are unseen in training
    assert not {r["instruction"] for r in test} & {r["instruction"] for r in train}
    for r in train + test:
        assert check(r["family"], r["output"], r["output"])
        assert check(r["family"], f"  {r['output']}.\n(explanation)", r["output"])
        assert not check(r["family"], "I think " + r["output"], r["output"])


def _ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def test_answers_are_right():
    train, test = make_tasks(600, 0, seed=1)
    seen = set()
    for r in train:
        f, ins, out = r["family"], r["instruction"], r["output"]
        seen.add(f)
        if f in ("addition", "word_problem"):
            assert int(out) == sum(_ints(ins))
        elif f == "subtraction":
            a, b = _ints(ins)[:2]
            assert int(out) == abs(a - b)
        elif f == "multiplication":
            a, b = _ints(ins)[:2]
            assert int(out) == a * b
        elif f == "sort":
            assert _ints(out) == sorted(_ints(ins)) and out == ", ".join(map(str, sorted(_ints(ins))))
        elif f in ("maximum", "minimum"):
            assert int(out) == (max if f == "maximum" else min)(_ints(ins))
        elif f == "reverse":
            assert out[::-1] in ins
        elif f == "thousands":
            assert out.replace(",", "") == str(_ints(ins)[0]) and re.fullmatch(r"\d{1,3}(,\d{3})*", out)
        elif f == "json_field":
            obj = json.loads(re.search(r"\{.*\}", ins).group())
            rest = ins.replace(json.dumps(obj), "")
            assert [obj[k] for k in obj if re.search(rf"\b{k}\b", rest)] == [out]
    assert seen == set(FAMILIES)


def test_checker_normalisation():
    assert normalize('  "Paris."  \nmore') == "paris"
    assert check("addition", "1,234", "1234") and check("addition", "42.0", "42")
    assert not check("thousands", "1234567", "1,234,567") and check("thousands", "1,234,567.", "1,234,567")
    assert not check("reverse", "elppa!", "elppa")
    s = score([{"family": "addition", "output": "4"}, {"family": "reverse", "output": "ab"}], ["4", "ba"])
    assert s == {"addition": 1.0, "reverse": 0.0, "overall": 0.5}


def test_write_and_bad_input(tmp_path):
    counts = write_tasks(tmp_path, n_train=30, n_test=15, seed=0)
    assert counts["train"] == 30 and counts["test"] == 15
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"instruction", "input", "output", "family", "template"}
    with pytest.raises(LmforgeError, match="unknown task family 'poetry'"):
        make_tasks(families=["addition", "poetry"])
