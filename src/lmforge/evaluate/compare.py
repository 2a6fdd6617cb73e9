"""`lmforge evaluate compare RUN1.json RUN2.json …`: the runs' metrics side by side, and a chart.

Rows are `task/metric` (those of any run; a run without one shows "-"), columns the runs, named
by their JSON files; a column after the first also shows its change from the first run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError


def read_report(path: str | Path) -> dict[str, Any]:
    """A run's JSON (what `evaluate` writes), or a one-line error naming the file."""
    from lmforge._io import read_json

    report = read_json(Path(path), LmforgeError)
    if not isinstance(report, dict) or not isinstance(report.get("results"), dict):
        raise LmforgeError(f"{path}: no 'results' (expected what `lmforge evaluate` writes)")
    return report


def compare(runs: list[str], out: str = "out/evaluate/compare.png") -> str:
    """Print the side-by-side table of `runs` and write the chart to `out`; returns the table."""
    from lmforge.evaluate.run import metric_rows
    from lmforge.plots import bar_chart

    if len(runs) < 2:
        raise LmforgeError("compare needs two or more run JSON files")
    if not out.endswith(".png"):
        raise LmforgeError(f"--out {out!r} must be a .png path")
    names = [Path(r).stem for r in runs]
    if len(set(names)) < len(names):
        names = [str(r) for r in runs]
    per_run = [metric_rows(read_report(r)) for r in runs]
    keys = list(dict.fromkeys(k for rows in per_run for k in rows))
    table = [["metric", *names]]
    for key in keys:
        base = per_run[0].get(key)
        cells = [key]
        for i, rows in enumerate(per_run):
            if key not in rows:
                cells.append("-")
                continue
            value, se = rows[key]
            cell = f"{value:.4f}" + (f" ± {se:.4f}" if se is not None else "")
            if i and base is not None:
                cell += f" ({value - base[0]:+.4f})"
            cells.append(cell)
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table)
    print(text)
    bar_chart(Path(out), keys, {n: [rows.get(k, (0.0, None)) for k in keys] for n, rows in zip(names, per_run)},
              "lmforge evaluate compare")
    print(f"wrote {out}")
    return text
