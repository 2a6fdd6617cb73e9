"""`lmforge evaluate SOURCE --tasks mmlu …` and `lmforge evaluate compare RUN1.json RUN2.json …`."""

from __future__ import annotations

from typing import Annotated

from lmforge.evaluate.config import EvalConfig
from lmforge.verbs.flags import Flat


def evaluate(cfg: Annotated[EvalConfig, Flat()]) -> None:
    """Evaluate a model: multiple choice (MMLU), perplexity, … ; prints a table, writes JSON + PNG.

    `lmforge evaluate compare RUN1.json RUN2.json …` puts earlier runs side by side.

    Args:
        cfg: what to evaluate and how.
    """
    from lmforge.evaluate.run import evaluate as run

    run(cfg)


def compare(runs: list[str], out: str = "out/evaluate/compare.png") -> None:
    """Put runs of `lmforge evaluate` side by side: a table of every task/metric, and a bar chart.

    Args:
        runs: the runs' JSON files (two or more).
        out: the chart (.png).
    """
    from lmforge.evaluate.compare import compare as run

    run(runs, out)
