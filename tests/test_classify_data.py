"""Classification data: dedupe, stratified seeded split, balance, one-line errors for bad files."""

from __future__ import annotations

import json

import pytest
from helpers import asset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.data.classify import ClassifyDataError, load_classification


def test_sms_spam_split():
    d = load_classification(asset("sms-spam"), label_key="spam", names={"0": "ham", "1": "spam"})
    assert d.classes == ["ham", "spam"] and d.duplicates == 315
    splits = [d.train, d.val, d.test]
    assert sum(map(len, splits)) == 4837 - 315
    texts = [{t for t, _ in s} for s in splits]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    share = [sum(lab for _, lab in s) / len(s) for s in splits]  # spam share is the same in each split
    assert max(share) - min(share) < 0.01
    assert d.test == load_classification(asset("sms-spam"), label_key="spam",
                                         names={"0": "ham", "1": "spam"}).test  # seeded
    b = load_classification(asset("sms-spam"), label_key="spam", balance=True)
    counts = [sum(1 for s in (b.train, b.val, b.test) for _, lab in s if lab == i) for i in (0, 1)]
    assert counts[0] == counts[1]
    assert "train" in d.summary() and "315 duplicate" in d.summary()


def _jsonl(tmp_path, rows):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("rows,kw,match", [
    ([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}], {}, "every row has the label 'x'"),
    ([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], {"classes": ["x", "z"]},
     r"d.jsonl:2: label 'y' is not among the classes"),
    ([{"txt": "a", "label": "x"}], {}, r"no column 'text' \(columns: label, txt\)"),
    ([{"text": "", "label": "x"}], {}, r"d.jsonl:1: the text"),
    ([{"text": "a"}, {"text": "b", "label": "y"}], {}, r"d.jsonl:1: the label"),
])
def test_bad_input_is_one_line(tmp_path, rows, kw, match):
    with pytest.raises(ClassifyDataError, match=match):
        load_classification(_jsonl(tmp_path, rows), **kw)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(rows=st.lists(st.fixed_dictionaries({}, optional={"text": st.one_of(st.text(max_size=6), st.integers()),
                                                         "label": st.one_of(st.sampled_from("ab"), st.none(),
                                                                            st.integers(0, 2))}), max_size=8))
def test_any_file_splits_or_fails_in_one_line(tmp_path_factory, rows):
    path = _jsonl(tmp_path_factory.mktemp("c"), rows)
    try:
        d = load_classification(path, val_fraction=0.2, test_fraction=0.2)
    except ClassifyDataError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    else:
        assert len(d.classes) >= 2 and sum(map(len, (d.train, d.val, d.test))) + d.duplicates == len(rows)


@pytest.mark.parametrize("limit", [2, 37, 1000])
def test_limit_keeps_each_class_share(limit):
    kw = dict(label_key="spam", names={"0": "ham", "1": "spam"})
    full = load_classification(asset("sms-spam"), **kw)
    d = load_classification(asset("sms-spam"), limit=limit, **kw)
    rows = d.train + d.val + d.test
    assert abs(len(rows) - limit) <= 1 and {lab for _, lab in rows} == {0, 1}  # every class kept
    share = lambda rs: sum(lab for _, lab in rs) / len(rs)  # noqa: E731
    if limit >= 1000:
        assert abs(share(rows) - share(full.train + full.val + full.test)) < 0.01
    assert d.test == load_classification(asset("sms-spam"), limit=limit, **kw).test  # seeded
    with pytest.raises(ClassifyDataError, match="limit must be >= 2"):
        load_classification(asset("sms-spam"), limit=1, **kw)
