"""lmforge: build, pretrain, load, finetune, align, evaluate and serve LLMs.

Public API (imported lazily so `import lmforge` and `lmforge --help` stay fast):
`LLM`, `GPT`, `Config`, `Tokenizer`.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

# OpenMP threads that sleep instead of spinning while they wait. lmforge's C kernels run on their
# own thread pool between PyTorch's operations; with spinning OpenMP workers the two pools fight
# for the cores, and on a 2-core machine a 16-sequence decoding step took 610 ms instead of 40 ms.
# Read once, when PyTorch loads OpenMP: import lmforge before torch (or set the variable yourself).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_EXPORTS = {
    "LLM": "lmforge.api",
    "GPT": "lmforge.model",
    "Config": "lmforge.config",
    "Tokenizer": "lmforge.tokenizer",
    "LmforgeError": "lmforge.errors",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from lmforge.api import LLM
    from lmforge.config import Config
    from lmforge.errors import LmforgeError
    from lmforge.model import GPT
    from lmforge.tokenizer import Tokenizer


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
