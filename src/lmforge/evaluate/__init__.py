"""Evaluation: `evaluate(EvalConfig(...))` runs multiple choice (MMLU), perplexity and the other
`TASKS`; `compare` puts runs side by side; `lm_eval_model` plugs lmforge into lm-evaluation-harness.

Imported lazily: `from lmforge.evaluate import evaluate` does not import torch.
"""

from __future__ import annotations

from lmforge.evaluate.config import EvalConfig
from lmforge.evaluate.run import TASKS, evaluate

__all__ = ["TASKS", "EvalConfig", "evaluate"]
