"""The HTML report of a run: `report.json` -> one self-contained `report.html` (`lmforge report RUN_DIR`).

    from lmforge.report import write_report, render_run
    write_report("out/demo", report)          # report.json + report.html (what `lmforge demo` does)
    render_run("out/sft-run")                 # report.html from a run folder: its report.json, or the recipe's files

The HTML inlines every plot as a base64 PNG and loads nothing from elsewhere: it opens offline.

The `report.json` schema (a run folder's report; every key but `stages` and a stage's `name` is optional):

    {"title": "lmforge demo",                      the page's heading
     "created": "2025-01-31 12:00:00",             when the run was made (free text)
     "machine": {"cpu": "...", "cores": 2,         facts of the machine that ran it: any name -> scalar
                 "threads": 2, "torch": "2.13.0"},
     "stages": [{
        "name": "pretrain",                        a short id (unique in the run): the HTML section's id
        "title": "Pretraining on Jane Austen",     the section's heading (default: the name)
        "command": "lmforge pretrain ...",         the command line that reproduces it
        "config": {...},                           the recipe's config (any JSON)
        "seconds": 182.4,                          its wall time
        "status": "ok" | "failed" | "skipped",
        "error": "...",                            why it failed (status failed)
        "metrics": [{"name": "val loss", "before": 8.31, "after": 5.02,   numbers or null
                     "unit": "nats", "target": "down >= 2 nats"}],        free text
        "plots": ["austen/run/loss.png"],          PNG files, relative to the run folder
        "tables": [{"title": "answers", "columns": ["question", "answer"], "rows": [["...", "..."]]}],
        "notes": "..."}]}                          free text shown under the stage

A single recipe's output folder renders too (`recipe_stage`): a folder without a report.json of this
schema (the finetune recipes write their own `report.json`, of another shape) becomes one stage, from
what the training loop and the recipe wrote there: `summary.json` (val loss before -> after, time),
the finetune `report.json` (test accuracy and per-class scores; exact match per family before -> after),
the config (`launch-config.yaml`, or the one stored in the newest checkpoint) and its PNG plots.
"""

from __future__ import annotations

import base64
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
STATUSES = ("ok", "failed", "skipped")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ReportError(LmforgeError):
    """A report.json that does not follow the schema (the message names the field)."""


# -----------------------------------------------------------------------------------------------
# reading and checking
# -----------------------------------------------------------------------------------------------
def check_report(report: Any, where: str = REPORT_JSON) -> dict[str, Any]:
    """`report` with every stage's optional fields filled in; a `ReportError` naming the first bad field."""

    def fail(path: str, what: str, value: Any) -> None:
        raise ReportError(f"{where}: {path} must be {what}, got {json.dumps(value)[:60]}")

    def text(path: str, value: Any, default: str | None = None) -> str | None:
        if value is None:
            return default
        if not isinstance(value, str):
            fail(path, "a string or null", value)
        return value

    def number(path: str, value: Any) -> float | int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            fail(path, "a finite number or null", value)
        return value

    def items(path: str, value: Any) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            fail(path, "a list", value)
        return value

    def scalar(path: str, value: Any) -> Any:
        if value is not None and not isinstance(value, str | int | float | bool):
            fail(path, "a string, number, boolean or null", value)
        return value

    if not isinstance(report, dict):
        fail("the report", "a JSON object with a 'stages' list", report)
    if not isinstance(report.get("stages"), list):
        fail("'stages'", "a list of stages", report.get("stages"))
    machine = report.get("machine") or {}
    if not isinstance(machine, dict):
        fail("'machine'", "an object of name -> value", machine)
    out = {"title": text("'title'", report.get("title"), "lmforge run"),
           "created": text("'created'", report.get("created")),
           "machine": {str(k): scalar(f"machine.{k}", v) for k, v in machine.items()}, "stages": []}
    names = set()
    for i, stage in enumerate(report["stages"]):
        at = f"stages[{i}]"
        if not isinstance(stage, dict):
            fail(at, "an object", stage)
        name = stage.get("name")
        if not isinstance(name, str) or not name.strip():
            fail(f"{at}.name", "a non-empty string", name)
        if name in names:
            fail(f"{at}.name", "unique in the run", name)
        names.add(name)
        status = stage.get("status", "ok")
        if status not in STATUSES:
            fail(f"{at}.status", " or ".join(map(repr, STATUSES)), status)
        metrics = []
        for j, m in enumerate(items(f"{at}.metrics", stage.get("metrics"))):
            if not isinstance(m, dict):
                fail(f"{at}.metrics[{j}]", "an object", m)
            mat = f"{at}.metrics[{j}]"
            metrics.append({"name": text(f"{mat}.name", m.get("name"), "") or f"metric {j + 1}",
                            "before": number(f"{mat}.before", m.get("before")),
                            "after": number(f"{mat}.after", m.get("after")),
                            "unit": text(f"{mat}.unit", m.get("unit"), ""),
                            "target": text(f"{mat}.target", m.get("target"), "")})
        tables = []
        for j, t in enumerate(items(f"{at}.tables", stage.get("tables"))):
            tat = f"{at}.tables[{j}]"
            if not isinstance(t, dict):
                fail(tat, "an object", t)
            rows = items(f"{tat}.rows", t.get("rows"))
            for k, row in enumerate(rows):
                for c, cell in enumerate(items(f"{tat}.rows[{k}]", row)):
                    scalar(f"{tat}.rows[{k}][{c}]", cell)
            tables.append({"title": text(f"{tat}.title", t.get("title"), ""),
                           "columns": [str(scalar(f"{tat}.columns", c)) for c in items(f"{tat}.columns",
                                                                                      t.get("columns"))],
                           "rows": rows})
        out["stages"].append({
            "name": name, "title": text(f"{at}.title", stage.get("title"), name),
            "command": text(f"{at}.command", stage.get("command")), "config": stage.get("config"),
            "seconds": number(f"{at}.seconds", stage.get("seconds")), "status": status,
            "error": text(f"{at}.error", stage.get("error")), "metrics": metrics,
            "plots": [text(f"{at}.plots[{j}]", p, "") for j, p in enumerate(items(f"{at}.plots", stage.get("plots")))],
            "tables": tables, "notes": text(f"{at}.notes", stage.get("notes"))})
    return out


def load_report(run_dir: str | Path) -> dict[str, Any]:
    """The checked report of `run_dir`: its report.json (this module's schema), or else one stage built
    from the recipe output found there (`recipe_stage`)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise LmforgeError(f"{run}: no such run folder (give the folder a run or `lmforge demo` wrote)")
    path = run / REPORT_JSON
    data = _read_json(path) if path.is_file() else None
    if isinstance(data, dict) and "stages" in data:
        return check_report(data, str(path))
    return check_report({"title": f"lmforge run: {run.resolve().name}", "stages": [recipe_stage(run)]})


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: not readable JSON ({e})") from None


# -----------------------------------------------------------------------------------------------
# a recipe's output folder as one stage
# -----------------------------------------------------------------------------------------------
def recipe_stage(run_dir: str | Path, name: str | None = None) -> dict[str, Any]:
    """One stage from what a recipe wrote under `run_dir` (pretrain, finetune classify / sft).

    Reads `summary.json` (the training loop's), the finetune recipes' `report.json`, the config, and
    lists the PNG plots. Raises `LmforgeError` when the folder holds none of them.
    """
    run = Path(run_dir)
    summary = _read_json(run / "summary.json") if (run / "summary.json").is_file() else {}
    test = _read_json(run / REPORT_JSON) if (run / REPORT_JSON).is_file() else {}
    plots = sorted(p.name for p in run.glob("*.png"))
    if not (summary or test or plots):
        raise LmforgeError(f"{run}: no {REPORT_JSON} and no recipe output (summary.json, *.png) to build a report "
                           "from; give a folder `lmforge demo`, pretrain or finetune wrote")
    if not isinstance(summary, dict) or not isinstance(test, dict):
        raise ReportError(f"{run}: summary.json and report.json must hold JSON objects")
    metrics, tables = [], []
    if summary.get("initial_val_loss") is not None or summary.get("val_loss") is not None:
        metrics.append({"name": "val loss", "before": summary.get("initial_val_loss"),
                        "after": summary.get("val_loss"), "unit": "nats"})
    if "accuracy" in test:  # finetune classify
        kind = "finetune classify"
        metrics.append({"name": "test accuracy", "before": _percent(test.get("accuracy_before")),
                        "after": _percent(test["accuracy"]), "unit": "%"})
        per_class = test.get("per_class") or {}
        tables.append({"title": "per class (test)", "columns": ["class", "precision", "recall", "F1", "support"],
                       "rows": [[c, *(_round(s.get(k)) for k in ("precision", "recall", "f1")), s.get("support")]
                                for c, s in per_class.items() if isinstance(s, dict)]})
    elif isinstance(test.get("after"), dict):  # finetune sft: exact match per family
        kind = "finetune sft"
        before = test.get("before") if isinstance(test.get("before"), dict) else {}
        families = sorted(f for f in test["after"] if f != "overall") + ["overall"] * ("overall" in test["after"])
        metrics += [{"name": f"exact match: {f}", "before": _percent(before.get(f)), "after": _percent(test["after"][f]),
                     "unit": "%"} for f in families]
    elif isinstance(test.get("heldout_after"), dict):  # align: held-out preference metrics, exact match
        kind = f"align {test.get('method', '')}".strip()
        hb = test.get("heldout_before") if isinstance(test.get("heldout_before"), dict) else {}
        ha = test["heldout_after"]
        for key, label, scale, unit in (("val_reward_acc", "preference accuracy (implicit reward, held-out)", 100, "%"),
                                        ("val_pref_acc", "policy prefers chosen (held-out)", 100, "%"),
                                        ("val_margin", "reward margin (held-out)", 1, None),
                                        ("val_kl", "KL to the reference (held-out prompts)", 1, "nats")):
            if key in ha:
                metrics.append({"name": label, "before": _round(_scaled(hb.get(key), scale)),
                                "after": _round(_scaled(ha[key], scale)), "unit": unit})
        eb, ea = test.get("exact_match_before"), test.get("exact_match_after")
        if isinstance(ea, dict) and "overall" in ea:
            metrics.append({"name": "exact match: overall (SFT test split)",
                            "before": _percent((eb or {}).get("overall")), "after": _percent(ea["overall"]), "unit": "%"})
    else:
        kind = "pretrain" if summary else "run"
    facts = {k: summary.get(k) for k in ("steps", "tokens", "val_ppl") if summary.get(k) is not None}
    facts.update({k: test.get(k) for k in ("method", "examples", "sizes") if test.get(k) is not None})
    if facts:
        tables.append({"title": "run", "columns": ["", "value"],
                       "rows": [[k, v if isinstance(v, str | int | float) else json.dumps(v)] for k, v in facts.items()]})
    seconds = test.get("seconds", summary.get("seconds"))
    return {"name": name or kind.replace(" ", "-"), "title": f"{kind}: {run.resolve().name}",
            "config": _recipe_config(run), "seconds": seconds, "status": "ok", "metrics": metrics,
            "plots": plots, "tables": tables}


def _scaled(x: Any, scale: float) -> float | None:
    return None if not isinstance(x, int | float) or isinstance(x, bool) else x * scale


def _percent(x: Any) -> float | None:
    return None if not isinstance(x, int | float) or isinstance(x, bool) else round(100 * x, 2)


def _round(x: Any) -> Any:
    return round(x, 4) if isinstance(x, float) else x


def _recipe_config(run: Path) -> dict[str, Any] | None:
    """The recipe's config: `launch-config.yaml` (multi-device runs), or the one the newest checkpoint stores."""
    launch = run / "launch-config.yaml"
    if launch.is_file():
        from lmforge._io import read_yaml

        return read_yaml(launch, ReportError)
    states = sorted((run / "checkpoints").glob("step-*/train_state.pt"))
    if not states:
        return None
    import torch

    # mmap: only the small config string is read, not the optimizer's tensors
    state = torch.load(states[-1], weights_only=True, map_location="cpu", mmap=True)
    try:
        return json.loads(state.get("config") or "null")
    except json.JSONDecodeError:
        return None


# -----------------------------------------------------------------------------------------------
# the machine
# -----------------------------------------------------------------------------------------------
def machine_facts() -> dict[str, Any]:
    """CPU model, cores, torch's threads and version, Python, OS: the facts a report's timings depend on."""
    import torch

    from lmforge._io import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}"}


# -----------------------------------------------------------------------------------------------
# rendering
# -----------------------------------------------------------------------------------------------
def format_number(x: float | None) -> str:
    """A metric as the page shows it: 4 significant digits ("—" for none)."""
    if x is None:
        return "—"
    return str(x) if isinstance(x, int) else f"{x:.4g}"


def format_seconds(s: float | None) -> str:
    """A duration as the page shows it: "12.5 s", "3 min 07 s", "1 h 05 min" ("—" for none)."""
    if s is None or not math.isfinite(s):
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(round(s), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _change(m: dict[str, Any]) -> str:
    if m["before"] is None or m["after"] is None:
        return ""
    return f"{m['after'] - m['before']:+.4g}"


def _inline_png(run: Path, rel: str) -> tuple[str | None, str | None]:
    """(data URL, None) for a PNG under `run`, or (None, why it is not shown)."""
    try:
        path = (run / rel).resolve()
        if Path(rel).is_absolute() or not path.is_relative_to(run.resolve()):
            return None, "outside the run folder"
        data = path.read_bytes()
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return None, "missing"
    if not data.startswith(PNG_MAGIC):
        return None, "not a PNG file"
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), None


def render_html(report: dict[str, Any], run_dir: str | Path) -> str:
    """The self-contained HTML page of a checked report (`check_report`); plots are read from `run_dir`."""
    import jinja2

    run = Path(run_dir)
    env = jinja2.Environment(loader=jinja2.PackageLoader("lmforge", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=format_number, seconds=format_seconds, change=_change,
                       cell=lambda x: format_number(x) if x is None or type(x) is float else str(x),
                       raw=lambda x: "" if x is None else json.dumps(x),
                       pretty=lambda x: json.dumps(x, indent=2, ensure_ascii=False, default=str))
    stages = [{**s, "images": [(p, *_inline_png(run, p)) for p in s["plots"]]} for s in report["stages"]]
    total = sum(s["seconds"] or 0 for s in stages)
    html = env.get_template("report.html.j2").render(report=report, stages=stages, total=total)
    # JSON may hold lone surrogates ("\\ud800"), which UTF-8 cannot encode: the page shows "?" instead
    return html.encode("utf-8", "replace").decode("utf-8")


def write_report(run_dir: str | Path, report: dict[str, Any]) -> Path:
    """Check `report`, write it as `run_dir/report.json`, and render `run_dir/report.html`; its path."""
    from lmforge._io import atomic_write_bytes

    run = Path(run_dir)
    checked = check_report(report)
    atomic_write_bytes(run / REPORT_JSON, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())
    html = run / REPORT_HTML
    atomic_write_bytes(html, render_html(checked, run).encode())
    return html


def render_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render `run_dir`'s report (`load_report`) to `out` (default run_dir/report.html); its path."""
    from lmforge._io import atomic_write_bytes

    html = Path(out) if out is not None else Path(run_dir) / REPORT_HTML
    atomic_write_bytes(html, render_html(load_report(run_dir), run_dir).encode())
    return html
