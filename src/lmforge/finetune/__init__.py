"""Finetuning recipes: a classifier head or instruction SFT, with full / last_n / lora / head methods.

    from lmforge.finetune import classify, sft, load_config
    classify(load_config("classify", "spam-smollm2"))      # or ClassifyConfig(...)
    sft(load_config("sft", "tasks-smollm2", **{"train.max_steps": 100}))

Both run on the one training loop (`lmforge.training.loop.train_loop`), as pretraining does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmforge.finetune.classification import ClassifyConfig
    from lmforge.finetune.instruction import SFTConfig


def classify(cfg: ClassifyConfig) -> dict[str, Any]:
    """Finetune a text classifier (see `lmforge.finetune.classification`); returns the run summary."""
    from lmforge.finetune.classification import classify as run

    return run(cfg)


def sft(cfg: SFTConfig) -> dict[str, Any]:
    """Instruction-finetune a language model (see `lmforge.finetune.instruction`); returns the run summary."""
    from lmforge.finetune.instruction import sft as run

    return run(cfg)


def load_config(task: str, path: str | Path | None = None, **overrides: Any) -> ClassifyConfig | SFTConfig:
    """A `ClassifyConfig` (task "classify") or `SFTConfig` ("sft") from YAML (a file or a packaged
    name such as `spam-smollm2`); `overrides` use dotted keys (`**{"train.lr": 1e-3}`)."""
    from lmforge.training import config as _config

    if task == "classify":
        from lmforge.finetune.classification import ClassifyConfig as cls
    else:
        from lmforge.finetune.instruction import SFTConfig as cls
    return _config.load_config(cls, path, **overrides)
