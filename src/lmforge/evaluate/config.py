"""`EvalConfig`: what `lmforge evaluate` runs, checked before any model is loaded (no torch here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from lmforge.errors import LmforgeError
from lmforge.inference import Quantize, check_quantize


@dataclass
class EvalConfig:
    """An evaluation run: a model, the tasks, and how much of each to run."""

    source: str
    """The model: an lmforge checkpoint dir, an HF model dir, a .gguf file or an HF repo id."""
    task: str = "mmlu"
    """Tasks to run, comma-separated (see `lmforge.evaluate.run.TASKS`): mmlu, mc (a multiple-choice JSONL in --data),
    perplexity (--data), generation (a prompt + answer JSONL in --data), judge (answers to the shipped
    instructions, or --data's, scored 0-100 by the model at --judge_url)."""
    data: str | None = None
    """The task's file: a multiple-choice JSONL (mc; mmlu: default the `mmlu` asset), or text files /
    JSONL / a prepared dir (perplexity)."""
    scoring: Literal["letter", "options"] = "letter"
    """Multiple choice by the letter after the listed choices (MMLU's prompt: acc), or by each option's
    own text (acc and the length-normalised acc_norm)."""
    num_fewshot: int = 0
    """Solved examples before each question (multiple choice)."""
    fewshot_data: str | None = None
    """A separate split to draw the shots from (the first k of the item's topic, as MMLU's dev split);
    default: k items of the same topic drawn with --seed from the evaluated file, never the item itself."""
    limit: int | None = None
    """Evaluate only the first N items of each task (after --subsample)."""
    subsample: int | None = None
    """Evaluate a random N items of each task, drawn with --seed."""
    seed: int = 0
    """Seed of --subsample and of the shots."""
    batch_size: int = 32
    """Contexts (questions, windows) scored in one forward."""
    window: int | None = None
    """Perplexity: tokens the model sees at once (default: its block size)."""
    stride: int | None = None
    """Perplexity: tokens the window advances by; each token is scored once, with up to `window`
    tokens of context (default: half the window)."""
    text_key: str = "text"
    """Perplexity: the JSONL field holding the text."""
    out: str = "out/evaluate/results.json"
    """The JSON written (scores, standard errors, config, model hash, lmforge version); the chart
    goes next to it with a .png suffix."""
    metric: Literal["exact", "contains", "regex", "numeric", "task"] = "exact"
    """Generation sets (task generation): how a reply is checked against the answer."""
    extract: str | None = None
    """Generation sets: a regex cutting each reply down to its group 1 before the metric."""
    tolerance: float = 1e-6
    """Generation sets, metric numeric: the largest difference that still counts as equal."""
    max_new_tokens: int = 64
    """Generation sets and the judge: tokens generated per reply."""
    temperature: float = 0.0
    """Generation sets and the judge: 0 is greedy; > 0 samples (seeded by --seed)."""
    judge_url: str | None = None
    """The judge (task judge): an OpenAI-compatible endpoint's base URL ending in /v1 (an `lmforge
    serve` prints its own); its API key is read from --judge_api_key_env."""
    judge_model: str | None = None
    """The judge's model name at that endpoint (default: the first one it lists)."""
    judge_api_key_env: str = "OPENAI_API_KEY"
    """The environment variable holding the judge endpoint's API key."""
    resume: bool = False
    """The judge: continue from the verdicts already in the run's .judge.jsonl (never overwritten otherwise)."""
    quantize: Quantize = "none"
    """Weight format on CPU: none, int8 or bf16."""
    device: str | None = None
    """cpu, cuda or auto."""
    dtype: str | None = None
    """float32, bfloat16 or float16 (default: float32 on CPU)."""

    def __post_init__(self) -> None:
        from lmforge.evaluate.run import TASKS

        if not self.tasks:
            raise LmforgeError(f"no task given: pass --task with one or more of {', '.join(TASKS)}")
        for task in self.tasks:
            if task not in TASKS:
                raise LmforgeError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
        for name in ("limit", "subsample", "batch_size", "window", "stride"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LmforgeError(f"--{name} must be at least 1, got {value}")
        if self.num_fewshot < 0:
            raise LmforgeError(f"--num_fewshot must be 0 or more, got {self.num_fewshot}")
        if self.scoring not in ("letter", "options"):
            raise LmforgeError(f"--scoring must be letter or options, got {self.scoring!r}")
        if self.window is not None and self.stride is not None and self.stride > self.window:
            raise LmforgeError(f"--stride {self.stride} is larger than --window {self.window}: tokens would be skipped")
        if "judge" in self.tasks and not self.judge_url:
            raise LmforgeError("--task judge needs --judge_url: an OpenAI-compatible endpoint, e.g. an `lmforge serve` "
                               "at http://127.0.0.1:8000/v1")
        if "generation" in self.tasks and not self.data:
            raise LmforgeError("--task generation needs --data: a JSONL file of prompt + answer lines")
        if self.max_new_tokens < 1:
            raise LmforgeError(f"--max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise LmforgeError(f"--temperature must be >= 0, got {self.temperature}")
        if not self.out.endswith(".json"):
            raise LmforgeError(f"--out {self.out!r} must be a .json path (the chart goes next to it as .png)")
        self.quantize = check_quantize(self.quantize)

    @property
    def tasks(self) -> list[str]:
        """The tasks of `task`, in order."""
        return [t.strip() for t in self.task.split(",") if t.strip()]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
