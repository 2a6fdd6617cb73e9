"""`evaluate(cfg)`: load the model once, run each task, print a table, write the JSON and a chart.

    from lmforge.evaluate import EvalConfig, evaluate
    report = evaluate(EvalConfig("SmolLM2-135M-Instruct.gguf", task="mmlu", subsample=200))

A task is a function `(llm: LLM, cfg: EvalConfig) -> dict` registered in `TASKS`. Its result is a
plain JSON-able dict:

    {
      "task": "mmlu",                                   # the TASKS key
      "metrics": {name: {"value": float, "stderr": float | None}, ...},   # shown in table and chart
      "breakdown": {group: {"n": int, metric: {"value", "stderr"}, ...}, ...},  # per topic; may be {}
      "n": int,                                         # items (questions, documents) evaluated
      "seconds": float,                                 # scoring time
      ...                                               # anything else: items, prompt_format, tokens
    }

The JSON file (`cfg.out`) holds {"lmforge_version", "model": {"source", "sha256", "parameters"},
"config": EvalConfig as a dict, "results": {task: result}, "created"}.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lmforge.evaluate.config import EvalConfig


def _mmlu(llm, cfg):
    from lmforge.evaluate.multiple_choice import mmlu

    return mmlu(llm, cfg)


def _mc(llm, cfg):
    from lmforge.evaluate.multiple_choice import mc

    return mc(llm, cfg)


def _perplexity(llm, cfg):
    from lmforge.evaluate.perplexity import perplexity

    return perplexity(llm, cfg)


def _generation(llm, cfg):
    from lmforge.evaluate.generation import run_generation
    from lmforge.sampling import SamplingParams

    sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed)
    return run_generation(llm, cfg.data, metric=cfg.metric, sampling=sampling, extract=cfg.extract,
                          tolerance=cfg.tolerance, limit=cfg.limit, batch_size=min(cfg.batch_size, 16))


def judge_args(cfg) -> Any:
    """The `JudgeArgs` an evaluation's flags describe (its verdicts go next to the JSON, .judge.jsonl)."""
    from lmforge.evaluate.judge import JudgeArgs

    return JudgeArgs(url=cfg.judge_url, model=cfg.judge_model, api_key_env=cfg.judge_api_key_env,
                     instructions=cfg.data, limit=cfg.limit, out=str(Path(cfg.out).with_suffix(".judge.jsonl")),
                     resume=cfg.resume, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                     seed=cfg.seed, batch_size=min(cfg.batch_size, 16))


def _judge(llm, cfg):
    from lmforge.evaluate.judge import run_judge

    return run_judge(llm, judge_args(cfg))


# task name -> function(llm, cfg) -> result dict (see the module docstring); imported when run
TASKS: dict[str, Callable[[Any, Any], dict[str, Any]]] = {
    "mmlu": _mmlu,
    "mc": _mc,
    "perplexity": _perplexity,
    "generation": _generation,
    "judge": _judge,
}


def model_sha256(model: torch.nn.Module) -> str:
    """sha256 of the weights as evaluated (names and bytes, in name order): the same for any file
    format holding the same numbers."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per (task, metric): value ± standard error, and the item count."""
    rows = [("task", "metric", "value", "± stderr", "n")]
    for task, res in results.items():
        for name, m in res["metrics"].items():
            se = "" if m.get("stderr") is None else f"{m['stderr']:.4f}"
            rows.append((task, name, f"{m['value']:.4f}", se, str(res.get("n", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def metric_rows(report: dict[str, Any]) -> dict[str, tuple[float, float | None]]:
    """`task/metric` -> (value, stderr) of one report."""
    return {f"{task}/{name}": (m["value"], m.get("stderr"))
            for task, res in report["results"].items() for name, m in res["metrics"].items()}


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run `cfg.tasks` on `cfg.source`; print the table; write `cfg.out` (JSON) and its .png chart.

    Returns:
        The report written to the JSON file.
    """
    from lmforge import __version__
    from lmforge._io import atomic_write_text
    from lmforge.api import LLM
    from lmforge.checkpoint import detect_source

    detect_source(cfg.source)  # a missing model fails before torch is imported
    llm = LLM.load(cfg.source, device=cfg.device, dtype=cfg.dtype, quantize=cfg.quantize)
    results = {task: TASKS[task](llm, cfg) for task in cfg.tasks}
    report = {
        "lmforge_version": __version__,
        "model": {"source": cfg.source, "sha256": model_sha256(llm.model),
                  "parameters": llm.config.num_parameters(), "name": llm.config.name},
        "config": cfg.to_dict(),
        "results": results,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(format_table(results))
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    from lmforge.plots import bar_chart

    rows = metric_rows(report)
    bar_chart(out.with_suffix(".png"), list(rows), {Path(cfg.source).name: list(rows.values())},
              f"lmforge evaluate: {Path(cfg.source).name}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return report
