"""lmforge: build, pretrain, load, finetune, align, evaluate and serve LLMs.

Public API (imported lazily so `import lmforge` and `lmforge --help` stay fast):
`LLM`, `GPT`, `Config`, `Tokenizer`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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
