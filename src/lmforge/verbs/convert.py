"""`lmforge convert SOURCE --out DIR [--to lmforge|hf|gguf]`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lmforge.conversion import Format, GgufType


def convert(
    source: str,
    *,
    out: str,
    to: Format = "lmforge",
    dtype: Literal["float32", "bfloat16", "float16"] | None = None,
    gguf_type: GgufType = "f16",
) -> Path:
    """Convert a checkpoint between formats.

    Args:
        source: an lmforge checkpoint dir, an HF model dir (safetensors, sharded or .bin), a .gguf file, or an HF repo id.
        out: output directory (for --to gguf: a .gguf file path, or a directory to write model.gguf into).
        to: output format: lmforge (model.safetensors + config.json + tokenizer), hf (loads with
            transformers' from_pretrained), or gguf (loads with the gguf reader and llama.cpp).
        dtype: cast floating-point weights to this dtype (default: keep the source's).
        gguf_type: tensor type for --to gguf.
    """
    from lmforge.conversion import convert_source

    done = convert_source(source, out, to=to, dtype=dtype, gguf_type=gguf_type)
    print(done)
    return done.out
