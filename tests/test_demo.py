"""`lmforge demo`'s stage runner: complete stages are skipped on a re-run, --force redoes one, a failing
stage is reported while the others run, and the report follows (the stages themselves run for real in
the slow tier and in `make demo`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmforge import demo
from lmforge.errors import LmforgeError


@pytest.fixture
def counted(monkeypatch):
    """Each stage writes a file and reports a number; `evaluate` fails on its first call."""
    calls: dict[str, int] = {}

    def runner(name):
        def run(cycle):
            calls[name] = calls.get(name, 0) + 1
            if name == "evaluate" and calls[name] == 1:
                raise RuntimeError("the judge endpoint went away\nsecond line")
            (cycle.dir(name) / "out.txt").write_text(str(calls[name]))
            return {"metrics": [{"name": "score", "before": 1.0, "after": 2.0 + calls[name]}]}
        return run

    monkeypatch.setattr(demo, "RUNNERS", {n: runner(n) for n in demo.STAGES})
    return calls


def test_rerun_skips_complete_stages_force_redoes_one_and_a_failure_is_retried(counted, tmp_path, capsys):
    demo.run_demo(tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert list(status) == list(demo.STAGES)
    assert status.pop("evaluate") == "failed" and set(status.values()) == {"ok"}  # the others still ran
    failed = next(s for s in report["stages"] if s["name"] == "evaluate")
    assert failed["error"] == "RuntimeError: the judge endpoint went away"  # one line
    assert not (tmp_path / "evaluate" / demo.STAGE_FILE).exists()
    assert (tmp_path / "report.html").is_file()
    # again: only the failed stage runs; --force redoes sft
    demo.run_demo(tmp_path, force=["sft"])
    assert counted == {**{n: 1 for n in demo.STAGES}, "evaluate": 2, "sft": 2}
    report = json.loads((tmp_path / "report.json").read_text())
    assert {s["status"] for s in report["stages"]} == {"ok"}
    sft = next(s for s in report["stages"] if s["name"] == "sft")
    assert sft["metrics"][0]["after"] == 4.0 and (tmp_path / "sft" / "out.txt").read_text() == "2"
    assert "sft" in capsys.readouterr().out


def test_only_the_selected_stages_run(counted, tmp_path):
    demo.run_demo(tmp_path, stages=["spam", "export"])
    assert counted == {"spam": 1, "export": 1}
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["status"] for s in report["stages"]].count("skipped") == len(demo.STAGES) - 2


def test_unknown_stage_is_one_line(tmp_path):
    with pytest.raises(LmforgeError, match="unknown demo stage 'dpoo'; the stages are pretrain"):
        demo.run_demo(tmp_path, force=["dpoo"])
    p = subprocess.run([sys.executable, "-m", "lmforge", "demo", "--full", "--out", str(tmp_path), "--stages", "nope"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and p.stderr.strip().count("\n") == 0 and "unknown demo stage 'nope'" in p.stderr
