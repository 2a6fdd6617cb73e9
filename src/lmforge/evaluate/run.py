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


# task name -> function(llm, cfg) -> result dict (see the module docstring); imported when run
TASKS: dict[str, Callable[[Any, Any], dict[str, Any]]] = {
    "mmlu": _mmlu,
    "mc": _mc,
    "perplexity": _perplexity,
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


def bar_chart(path: Path, labels: list[str], series: dict[str, list[tuple[float, float | None]]], title: str) -> None:
    """Grouped bars: one group per label, one bar per series (value, stderr as an error bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels) * max(1, len(series)) ** 0.5), 4.0))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, [v for v, _ in values], width, yerr=[se or 0.0 for _, se in values], capsize=3, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    rows = metric_rows(report)
    bar_chart(out.with_suffix(".png"), list(rows), {Path(cfg.source).name: list(rows.values())},
              f"lmforge evaluate: {Path(cfg.source).name}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return report
