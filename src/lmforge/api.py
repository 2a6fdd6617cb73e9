"""The Python API: `LLM.load(SOURCE)` gives a model, its tokenizer and config in one object.

    from lmforge import LLM
    llm = LLM.load("path/to/checkpoint")     # lmforge dir, HF dir, .gguf file or HF repo id
    logits = llm.model(ids)                  # [B, T, vocab]
    llm.save("out/dir")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from lmforge.config import Config
    from lmforge.model import GPT
    from lmforge.tokenizer import Tokenizer


class LLM:
    """A loaded model with its tokenizer and config."""

    def __init__(self, model: GPT, tokenizer: Tokenizer | None, config: Config, source: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.source = source

    @classmethod
    def load(cls, source: str | Path, device: str | torch.device | None = None,
             dtype: str | torch.dtype | None = None) -> LLM:
        """Load from an lmforge checkpoint dir, an HF model dir, a .gguf file or an HF repo id."""
        from lmforge.checkpoint import load_source

        model, tokenizer, config = load_source(source, device=device, dtype=dtype)
        return cls(model, tokenizer, config, source=str(source))

    @property
    def device(self) -> torch.device:
        return self.model.device

    def save(self, out_dir: str | Path) -> Path:
        """Write an lmforge checkpoint (model.safetensors + config.json + tokenizer files)."""
        from lmforge.checkpoint import save_checkpoint

        return save_checkpoint(out_dir, self.model, self.config, self.tokenizer)

    def __repr__(self) -> str:
        return f"LLM({self.config.name!r}, {self.config.num_parameters():,} params, device={self.device})"
