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


def pairwise(answers_a: str, answers_b: str, judge_url: str = "http://127.0.0.1:8000/v1", judge_model: str | None = None,
             judge_api_key_env: str = "OPENAI_API_KEY", out: str = "out/evaluate/pairwise.jsonl",
             resume: bool = False, seed: int = 0) -> None:
    """Model A's win rate over model B (AlpacaEval-style): each instruction judged twice, the answers in
    both orders (cancelling the judge's position bias); ties and unreadable verdicts are counted.

    Args:
        answers_a: model A's answers: a JSONL of `instruction` + `answer` lines (a judge run's .judge.jsonl works).
        answers_b: model B's answers, the same instructions.
        judge_url: the judge: an OpenAI-compatible endpoint's base URL ending in /v1.
        judge_model: the judge's model name there (default: the first it lists).
        judge_api_key_env: the environment variable holding the endpoint's API key.
        out: the verdicts, one JSONL line per judged pair (kept; --resume continues them).
        resume: continue from the verdicts already in --out.
        seed: seed of the bootstrap confidence interval.
    """
    import json

    from lmforge.evaluate.judge import JudgeArgs, run_pairwise

    result = run_pairwise(answers_a, answers_b, JudgeArgs(url=judge_url, model=judge_model, api_key_env=judge_api_key_env,
                                                          out=out, resume=resume, seed=seed))
    print(json.dumps({k: v["value"] for k, v in result["metrics"].items()}, indent=1))
