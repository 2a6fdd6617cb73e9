"""The settings every training recipe shares: small typed groups, validated on construction.

A recipe's config (`PretrainConfig`, and later finetune/align ones) is a dataclass of such groups plus
its own fields; `load_config` reads one from YAML with dotted overrides. Field docstrings become
`--help` text and YAML documentation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lmforge.errors import LmforgeError

try:  # field docstrings become --help text and YAML documentation
    from jsonargparse import set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
except ImportError:  # pragma: no cover - jsonargparse is a dependency
    pass

T = TypeVar("T")


class TrainConfigError(LmforgeError, ValueError):
    """A training setting is missing or inconsistent."""


@dataclass
class TrainArgs:
    """Optimisation."""

    max_steps: int = 1000
    """Optimizer steps to train for (also the length of the cosine schedule)."""
    max_minutes: float | None = None
    """Stop (with a final eval and checkpoint) after this many minutes of training."""
    global_batch_size: int = 32
    """Sequences per optimizer step, over all processes."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass on one process (gradients accumulate up to the global batch)."""
    lr: float = 6e-4
    """Peak learning rate."""
    min_lr: float = 6e-5
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 100
    """Steps of linear warmup."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay (not applied to norms, biases and embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this (None: no clipping)."""
    seed: int = 42
    """Seed of the initialisation and of the data order."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        checks = [
            (self.max_steps >= 1, f"train.max_steps must be >= 1, got {self.max_steps}"),
            (self.micro_batch_size >= 1, f"train.micro_batch_size must be >= 1, got {self.micro_batch_size}"),
            (self.global_batch_size % max(self.micro_batch_size, 1) == 0,
             f"train.global_batch_size ({self.global_batch_size}) must be a multiple of train.micro_batch_size "
             f"({self.micro_batch_size})"),
            (self.global_batch_size >= 1, f"train.global_batch_size must be >= 1, got {self.global_batch_size}"),
            (self.lr > 0, f"train.lr must be > 0, got {self.lr}"),
            (0 <= self.min_lr <= self.lr, f"train.min_lr must be in [0, train.lr], got {self.min_lr}"),
            (self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"train.betas must be two numbers in [0, 1), got {self.betas}"),
            (self.grad_clip is None or self.grad_clip > 0, f"train.grad_clip must be > 0 or None, got {self.grad_clip}"),
            (self.max_minutes is None or self.max_minutes > 0, f"train.max_minutes must be > 0, got {self.max_minutes}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise TrainConfigError(msg)


@dataclass
class EvalArgs:
    """Periodic evaluation, sampling and checkpointing."""

    interval: int = 100
    """Every this many steps (and at the end): val loss + perplexity, a sample, a checkpoint."""
    val_batches: int = 8
    """Micro-batches of validation windows scored at each evaluation (the same windows every time)."""
    initial: bool = True
    """Also evaluate before the first step (the untrained baseline)."""
    sample_prompt: str = "The"
    """Prompt of the greedy sample printed at each evaluation ("" for none)."""
    sample_tokens: int = 40
    """Length of that sample."""
    sample_repetition_penalty: float = 1.0
    """Repetition penalty of the sample (>1 keeps an early model from looping on one token)."""

    def __post_init__(self) -> None:
        if self.interval < 1 or self.val_batches < 0 or self.sample_tokens < 0:
            raise TrainConfigError("eval.interval must be >= 1, eval.val_batches and eval.sample_tokens >= 0")


@dataclass
class LogArgs:
    """Logging."""

    interval: int = 10
    """Console and CSV line every this many steps."""
    tensorboard: bool = True
    """Write TensorBoard events under out_dir/tensorboard."""
    plot: bool = True
    """Keep out_dir/loss.png (train and val loss) up to date."""

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise TrainConfigError(f"log.interval must be >= 1, got {self.interval}")


def check_run_options(cfg: Any) -> None:
    """The options every recipe's run has (devices, strategy, precision, keep_checkpoints): one error
    line each for a bad value."""
    if cfg.devices < 1:
        raise TrainConfigError(f"devices must be >= 1, got {cfg.devices}")
    if cfg.strategy not in ("ddp", "fsdp"):
        raise TrainConfigError(f"strategy={cfg.strategy!r} is not one of ('ddp', 'fsdp')")
    if cfg.precision not in ("auto", "fp32", "bf16-mixed"):
        raise TrainConfigError(f"precision={cfg.precision!r} is not one of ('auto', 'fp32', 'bf16-mixed')")
    if cfg.keep_checkpoints < 1:
        raise TrainConfigError(f"keep_checkpoints must be >= 1, got {cfg.keep_checkpoints}")


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """`cls(**values)`, with an unknown key reported by name (and a close match)."""
    import difflib

    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {where + '.' if where else ''}{close[0]!r}?)" if close else ""
            raise TrainConfigError(f"unknown key {(where + '.' if where else '') + key!r}{hint}")
    return cls(**values)


def load_config(cls: type[T], path: str | Path | None = None, **overrides: Any) -> T:
    """A `cls` config from a YAML file or a packaged config name; `overrides` use dotted keys (`**{"train.lr": 1e-3}`)."""
    from lmforge._io import read_yaml
    from lmforge.configs import find_config

    data = read_yaml(find_config(path), TrainConfigError) if path is not None else {}
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return build(cls, data, "")
