"""`lmforge report`: report.json -> one self-contained report.html, from a demo-style run folder (real
training run + real matplotlib plots) and from a single recipe's output folder; bad input is one line."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_prepare import DOCS, make_tokenizer
from test_pretrain import tiny_config

from lmforge.report import (
    ReportError,
    check_report,
    format_number,
    load_report,
    recipe_stage,
    render_html,
    write_report,
)


# ---------------------------------------------------------------------------------------------
# a run folder as `lmforge demo` writes one: a real (tiny) pretraining run, real PNG plots
# ---------------------------------------------------------------------------------------------
def bar_chart(path: Path, values: dict[str, float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(list(values), list(values.values()))
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def make_run(root: Path) -> dict:
    """Write a run folder under `root`: a tiny real pretrain run + plots + report.json; returns the report."""
    from lmforge.data.prepare import prepare
    from lmforge.report import machine_facts
    from lmforge.training.pretrain import pretrain

    tok = make_tokenizer(root / "work" / "tok", DOCS, vocab_size=300)
    corpus = root / "work" / "corpus"
    corpus.mkdir(parents=True)
    for i, doc in enumerate(DOCS * 3):
        (corpus / f"d{i:02d}.txt").write_text(doc.replace("Chapter", f"Part {i}"), encoding="utf-8")
    prepare(str(corpus), tokenizer=str(tok), out_dir=str(root / "work" / "data"), val_fraction=0.15, progress=False)
    pretrain(tiny_config(root / "work" / "data", root / "pretrain", **{"log.plot": True}))
    bar_chart(root / "plots" / "exact_match.png", {"add": 0.42, "sort": 0.9}, "exact match per family")
    bar_chart(root / "plots" / "tokens_per_s.png", {"batch 1": 31.5, "batch 8": 118.0}, "tokens/s")
    pre = recipe_stage(root / "pretrain", name="pretrain")
    report = {
        "title": "a test run <i>with markup</i>", "created": "2025-01-31 12:00:00", "machine": machine_facts(),
        "stages": [
            {**pre, "plots": [f"pretrain/{p}" for p in pre["plots"]], "command": "lmforge pretrain --config x.yaml"},
            {"name": "sft", "title": "Instruction SFT", "command": "lmforge finetune sft --config tasks-smollm2",
             "config": {"method": {"name": "lora", "r": 8}}, "seconds": 312.25, "status": "ok",
             "metrics": [{"name": "exact match: add", "before": 0.0, "after": 42.0, "unit": "%", "target": "+30 points"},
                         {"name": "exact match: sort", "before": 12.5, "after": 90.0, "unit": "%"}],
             "plots": ["plots/exact_match.png"],
             "tables": [{"title": "answers", "columns": ["question", "answer"],
                         "rows": [["What is 2+3?", "5"], ["<script>alert(1)</script>", None]]}],
             "notes": "held-out tasks"},
            {"name": "serve", "title": "Generation speed", "seconds": 4.5, "status": "ok",
             "metrics": [{"name": "tokens/s", "before": 31.5, "after": 118.0, "unit": "tokens/s"}],
             "plots": ["plots/tokens_per_s.png"]},
            {"name": "dpo", "title": "DPO", "seconds": 0.3, "status": "failed", "error": "LmforgeError: no pairs"},
            {"name": "export", "title": "Export", "status": "skipped", "notes": "skipped (--skip export)"},
        ]}
    write_report(root, report)
    return report


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("report_run")
    return root, make_run(root)


class Page(HTMLParser):
    """The parts of a report page the tests check: sections, images, metric cells, links."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.cells: dict[tuple[str, str, str], str] = {}  # (stage, metric, before|after) -> text
        self._stage = self._metric = self._cell = None
        self._text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-stage" in a:
            self._stage = a["data-stage"]
            self.sections.append(self._stage)
        if tag == "tr" and "data-metric" in a:
            self._metric = a["data-metric"]
        if tag == "td" and self._metric and (a.get("class") or "-").split()[-1] in ("before", "after"):
            self._cell, self._text = a["class"].split()[-1], []
        if tag == "img":
            self.images.append(a.get("src", ""))
        self.links += [v for k, v in attrs if k in ("href", "src") and v and not v.startswith(("#", "data:"))]

    def handle_data(self, data):
        if self._cell:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell:
            self.cells[(self._stage, self._metric, self._cell)] = "".join(self._text)
            self._cell = None


def test_report_html_is_self_contained_and_shows_report_json(run):
    root, report = run
    html = (root / "report.html").read_text(encoding="utf-8")
    page = Page(html)
    saved = json.loads((root / "report.json").read_text())
    assert saved == report
    assert page.sections == [s["name"] for s in report["stages"]]
    assert page.links == []  # nothing fetched from elsewhere: it opens offline
    # every plot inlined, byte for byte
    plots = [p for s in report["stages"] for p in s.get("plots", [])]
    assert len(page.images) == len(plots) == 3
    for src, rel in zip(page.images, plots):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (root / rel).read_bytes()
    # every metric's before and after, as report.json has them
    n = 0
    for s in report["stages"]:
        for m in s.get("metrics", []):
            for side in ("before", "after"):
                assert page.cells[(s["name"], m["name"], side)] == format_number(m[side])
                n += 1
    assert n == 8
    pre = report["stages"][0]["metrics"][0]
    summary = json.loads((root / "pretrain" / "summary.json").read_text())
    assert (pre["before"], pre["after"]) == (summary["initial_val_loss"], summary["val_loss"])
    # text from the report is escaped, never markup
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<i>with markup</i>" not in html
    assert "LmforgeError: no pairs" in html and "skipped (--skip export)" in html
    import torch

    assert f"<td data-key=\"torch\">{torch.__version__}</td>" in html


def test_a_recipe_folder_renders_alone(run, tmp_path):
    root, _ = run
    folder = root / "pretrain"
    html = Path(subprocess.run([sys.executable, "-m", "lmforge", "report", str(folder), "--out", str(tmp_path / "r.html")],
                               capture_output=True, text=True, timeout=120, check=True).stdout.strip())
    assert html == tmp_path / "r.html"
    page = Page(html.read_text(encoding="utf-8"))
    assert page.sections == ["pretrain"] and len(page.images) == 1 and page.links == []
    report = load_report(folder)
    stage = report["stages"][0]
    summary = json.loads((folder / "summary.json").read_text())
    assert stage["metrics"][0] == {"name": "val loss", "before": summary["initial_val_loss"],
                                   "after": summary["val_loss"], "unit": "nats", "target": ""}
    assert stage["seconds"] == summary["seconds"] and stage["plots"] == ["loss.png"]
    # the config the run stored in its newest checkpoint: the one it ran with
    assert stage["config"]["train"]["max_steps"] == 8 and stage["config"]["model"]["n_layer"] == 2
    assert not (folder / "report.json").exists()  # a recipe folder is read, not written to


def test_finetune_reports_become_metrics(tmp_path):
    """The finetune recipes' own report.json shapes (classify: accuracy, per class; sft: exact match per family)."""
    cls = tmp_path / "cls"
    cls.mkdir()
    (cls / "report.json").write_text(json.dumps({
        "accuracy": 0.975, "per_class": {"ham": {"precision": 0.98, "recall": 0.99, "f1": 0.985, "support": 483},
                                         "spam": {"precision": 0.93, "recall": 0.9, "f1": 0.915, "support": 75}},
        "confusion": [[478, 5], [7, 68]], "method": "head", "seconds": 12.5}))
    stage = load_report(cls)["stages"][0]
    assert stage["name"] == "finetune-classify" and stage["seconds"] == 12.5
    assert stage["metrics"] == [{"name": "test accuracy", "before": None, "after": 97.5, "unit": "%", "target": ""}]
    assert stage["tables"][0]["rows"][1] == ["spam", 0.93, 0.9, 0.915, 75]
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "report.json").write_text(json.dumps({"before": {"add": 0.0, "overall": 0.1},
                                                 "after": {"add": 0.5, "overall": 0.6}, "seconds": 3}))
    metrics = load_report(sft)["stages"][0]["metrics"]
    assert [(m["name"], m["before"], m["after"]) for m in metrics] == [("exact match: add", 0.0, 50.0),
                                                                      ("exact match: overall", 10.0, 60.0)]


@pytest.mark.parametrize("content, culprit", [
    ("{not json", "not readable JSON"),
    ('{"stages": "x"}', "'stages' must be a list of stages"),
    ('{"stages": [{"title": "no name"}]}', "stages[0].name must be a non-empty string"),
    ('{"stages": [{"name": "a", "status": "done"}]}', "stages[0].status must be 'ok' or 'failed' or 'skipped'"),
    ('{"stages": [{"name": "a", "metrics": [{"before": "8.1"}]}]}', "stages[0].metrics[0].before must be a finite number"),
    ('{"stages": [{"name": "a"}, {"name": "a"}]}', "stages[1].name must be unique in the run"),
])
def test_bad_report_json_is_one_line_naming_the_field(tmp_path, content, culprit):
    (tmp_path / "report.json").write_text(content)
    proc = subprocess.run([sys.executable, "-m", "lmforge", "report", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "LMFORGE_DEBUG": ""}, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'report.json'}: ") and culprit in lines[0]


def test_missing_or_empty_folder_is_one_line(tmp_path):
    for folder, culprit in ((tmp_path / "nope", "no such run folder"), (tmp_path, "no report.json and no recipe output")):
        proc = subprocess.run([sys.executable, "-m", "lmforge", "report", str(folder)], capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and culprit in proc.stderr, proc.stderr


# any JSON at all: a clear ReportError or a page; text is always escaped. Mostly well-typed reports
# (so rendering is exercised), with any JSON value in places.
EVIL = "<x-evil>"
json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                           | st.text(max_size=8) | st.just(EVIL),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=12)
texts = st.none() | st.text(max_size=8) | st.just(EVIL)
numbers = st.none() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False) | st.just(1.7e308)  # 2 of them: inf
scalars = texts | numbers | st.booleans()
metric = st.fixed_dictionaries({}, optional={"name": texts, "before": numbers, "after": numbers, "unit": texts,
                                             "target": texts})
table = st.fixed_dictionaries({}, optional={"title": texts, "columns": st.lists(texts, max_size=3),
                                            "rows": st.lists(st.lists(scalars, max_size=3), max_size=3)})
stage = st.fixed_dictionaries({"name": st.text(min_size=1, max_size=8) | st.just(EVIL)}, optional={
    "title": texts, "status": st.sampled_from(["ok", "failed", "skipped"]), "seconds": numbers,
    "metrics": st.lists(metric, max_size=3), "plots": st.lists(st.text(max_size=8) | st.just("../x.png"), max_size=2),
    "tables": st.lists(table, max_size=2), "notes": texts, "command": texts, "config": json_values, "error": texts})
reports = st.fixed_dictionaries({"stages": st.lists(stage, max_size=4)}, optional={
    "machine": st.dictionaries(st.text(max_size=6) | st.just(EVIL), scalars, max_size=3), "title": texts})


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(report=reports | json_values | st.builds(lambda r, k, v: {**r, k: v}, reports, st.text(max_size=8), json_values))
@example(report={"stages": [{"name": "a", "seconds": 1.7e308}, {"name": "b", "seconds": 1.7e308}]})  # total: inf
@example(report={"stages": [{"name": "a", "plots": ["x\x00.png"], "notes": "\ud800"}]})  # NUL, lone surrogate
def test_any_report_json_renders_or_is_a_report_error(tmp_path_factory, report):
    try:
        checked = check_report(report)
    except ReportError as e:
        assert str(e).startswith("report.json: ") and "\n" not in str(e)
        return
    html = render_html(checked, tmp_path_factory.getbasetemp())
    html.encode("utf-8")  # written as UTF-8
    assert EVIL not in html and (EVIL not in json.dumps(checked) or "&lt;x-evil&gt;" in html)
    assert Page(html).sections == [s["name"] for s in checked["stages"]]


def test_page_and_template_ship_as_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lmforge"]
    shipped = {p for g in globs for p in (root / "src" / "lmforge").glob(g)}
    for name in ("serve/static/chat.html", "templates/report.html.j2"):
        assert root / "src" / "lmforge" / name in shipped, name


@pytest.mark.slow
def test_demo_writes_its_report(tmp_path):
    """`lmforge demo --stages smollm2` on the real SmolLM2: report.json + report.html, that stage ok, the
    others shown as not run; a second run reuses the complete stage."""
    from helpers import asset

    asset("smollm2-135m-instruct")
    asset("austen")
    cmd = [sys.executable, "-m", "lmforge", "demo", "--out", str(tmp_path), "--stages", "smollm2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    assert "report:" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    chat = stages.pop("smollm2")
    assert chat["status"] == "ok" and chat["seconds"] > 0
    metrics = {m["name"]: m["after"] for m in chat["metrics"]}
    assert 5 < metrics["perplexity on an Austen chunk"] < 200 and metrics["generation, 1 request"] > 0
    assert "Paris" in chat["tables"][0]["rows"][0][1]
    assert {s["status"] for s in stages.values()} == {"skipped"}
    assert report["machine"]["cores"] == os.cpu_count()
    assert Page((tmp_path / "report.html").read_text(encoding="utf-8")).sections == [
        "pretrain", "smollm2", "spam", "sft", "dpo", "evaluate", "export"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    assert "complete in an earlier run" in again.stdout
