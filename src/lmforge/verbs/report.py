"""`lmforge report RUN_DIR`: render a run folder's report.json (or a recipe's output) as one HTML file."""

from __future__ import annotations


def report(run_dir: str, out: str | None = None) -> None:
    """Render a run's report as one self-contained HTML file (plots inlined, opens offline).

    RUN_DIR is a folder `lmforge demo` wrote (its report.json), or any single recipe's output folder
    (pretrain, finetune classify / sft): its summary.json, report.json and plots make one stage.

    Args:
        run_dir: The run folder.
        out: Where to write the HTML (default: RUN_DIR/report.html).
    """
    from lmforge.report import render_run

    print(render_run(run_dir, out))
