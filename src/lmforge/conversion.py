"""Convert any SOURCE (lmforge dir, HF dir, .gguf file, HF repo id) to an lmforge, HF or GGUF checkpoint.

    from lmforge.conversion import convert_source
    print(convert_source("model.gguf", "out/ckpt", to="lmforge"))

What `lmforge convert` and `lmforge download` run, and the demo's GGUF -> lmforge step. It sits above
`lmforge.checkpoint` (which reads any SOURCE through the per-format converters in `lmforge.convert`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmforge.errors import LmforgeError

Format = Literal["lmforge", "hf", "gguf"]
GgufType = Literal["f32", "f16"]


@dataclass
class Converted:
    """What `convert_source` wrote; its `str` is the one-line report the verbs print."""

    source: str
    out: Path
    to: Format
    name: str
    """The model config's name."""
    parameters: int
    """Parameters, a tied lm_head counted once."""
    dtypes: list[str]
    tokenizer: bool
    """Whether a tokenizer was found and written."""

    def __str__(self) -> str:
        tok = "with tokenizer" if self.tokenizer else "no tokenizer found"
        return (f"converted {self.source} -> {self.out} ({self.to}; {self.name}, {self.parameters:,} parameters, "
                f"{'/'.join(self.dtypes)}, {tok})")


def convert_source(source: str | Path, out: str | Path, to: Format = "lmforge",
                   dtype: Literal["float32", "bfloat16", "float16"] | None = None,
                   gguf_type: GgufType = "f16") -> Converted:
    """Read any SOURCE and write it as `to`.

    Args:
        source: an lmforge checkpoint dir, an HF model dir (safetensors, sharded or .bin), a .gguf file,
            or an HF repo id.
        out: output directory (for `to="gguf"`: a .gguf file path, or a directory to write model.gguf into).
        to: lmforge (model.safetensors + config.json + tokenizer), hf (loads with transformers'
            from_pretrained), or gguf (loads with the gguf reader and llama.cpp).
        dtype: cast floating-point weights to this dtype (default: keep the source's).
        gguf_type: tensor type for `to="gguf"`.
    """
    import torch

    from lmforge._io import parse_dtype
    from lmforge.checkpoint import load_source_parts

    if to not in ("lmforge", "hf", "gguf"):
        raise LmforgeError(f"--to {to!r} is not one of lmforge, hf, gguf")
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
    else:
        from lmforge.convert.gguf import export_gguf

        if out_path.suffix != ".gguf":
            out_path = out_path / "model.gguf"
        export_gguf(sd, config, out_path, tokenizer=tokenizer, dtype=gguf_type)
    n = sum(v.numel() for k, v in sd.items() if not (config.tie_embeddings and k == "lm_head.weight"))
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in sd.values() if isinstance(v, torch.Tensor)})
    return Converted(str(source), out_path, to, config.name, n, dtypes, tokenizer is not None)
