"""`lmforge convert SOURCE --out DIR [--to lmforge|hf|gguf]`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lmforge.errors import LmforgeError


def convert(
    source: str,
    *,
    out: str,
    to: Literal["lmforge", "hf", "gguf"] = "lmforge",
    dtype: Literal["float32", "bfloat16", "float16"] | None = None,
    gguf_type: Literal["f32", "f16"] = "f16",
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
    import torch

    from lmforge._io import parse_dtype
    from lmforge.checkpoint import load_source_parts

    config, sd, tokenizer = load_source_parts(source)
    if dtype is not None:
        cast = parse_dtype(dtype, LmforgeError)
        sd = {k: v.to(cast) if v.is_floating_point() else v for k, v in sd.items()}
    out_path = Path(out)
    if out_path.exists() and out_path.is_file() and to != "gguf":
        raise LmforgeError(f"{out_path}: exists and is a file; --out must be a directory for --to {to}")
    if to == "lmforge":
        from lmforge.checkpoint import save_checkpoint

        save_checkpoint(out_path, sd, config, tokenizer)
    elif to == "hf":
        from lmforge.convert.hf import export_hf

        export_hf(sd, config, out_path, tokenizer=tokenizer)
    elif to == "gguf":
        from lmforge.convert.gguf import export_gguf

        if out_path.suffix != ".gguf":
            out_path = out_path / "model.gguf"
        export_gguf(sd, config, out_path, tokenizer=tokenizer, dtype=gguf_type)
    else:
        raise LmforgeError(f"--to {to!r} is not one of lmforge, hf, gguf")
    n = sum(v.numel() for k, v in sd.items() if not (config.tie_embeddings and k == "lm_head.weight"))
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in sd.values() if isinstance(v, torch.Tensor)})
    tok = "with tokenizer" if tokenizer is not None else "no tokenizer found"
    print(f"converted {source} -> {out_path} ({to}; {config.name}, {n:,} parameters, {'/'.join(dtypes)}, {tok})")
    return out_path
