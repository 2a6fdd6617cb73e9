"""lmforge checkpoints, and loading a model from any SOURCE.

An lmforge checkpoint is a directory:
    model.safetensors        weights, our key names (a tied head is stored once)
    config.json              `Config.to_dict()` (has "lmforge_config_version")
    tokenizer files          tokenizer.json / tokenizer.model + tokenizer_config.json (chat template)
    generation_config.json   default sampling settings and eos ids (optional)

A SOURCE is any of: an lmforge checkpoint dir, an HF model dir (safetensors, sharded, or .bin),
a `.gguf` file, or an HF hub repo id (`org/name`, downloaded with huggingface_hub and converted).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lmforge._io import atomic_write, atomic_write_text, lmforge_home, parse_dtype, read_json
from lmforge.config import Config
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import torch

    from lmforge.model import GPT
    from lmforge.tokenizer import Tokenizer

SourceKind = Literal["lmforge", "hf", "gguf", "repo"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def detect_source(source: str | Path) -> SourceKind:
    """Tell what kind of SOURCE this is, or raise a one-line error saying why it is none."""
    path = Path(source)
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF" or path.suffix == ".gguf":
            return "gguf"
        raise LmforgeError(f"{path}: not a model (expected a .gguf file or a checkpoint directory)")
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return "gguf"
            raise LmforgeError(f"{path}: not a model directory (no config.json; expected an lmforge or HF checkpoint)")
        data = read_json(cfg, LmforgeError)
        return "lmforge" if "lmforge_config_version" in data else "hf"
    if isinstance(source, str) and _REPO_ID.match(source) and not source.startswith((".", "/")):
        return "repo"
    raise LmforgeError(f"{source}: no such file or directory (pass a checkpoint dir, a .gguf file or an HF repo id)")


def resolve_device(device: str | torch.device | None) -> torch.device:
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise LmforgeError(f"device {device!r} is not valid (use cpu, cuda, cuda:N or auto)") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated/corrupt file is a one-line error naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise LmforgeError(f"{path}: file not found") from None
    except Exception as e:  # safetensors raises SafetensorError / OSError on bad headers and short files
        raise LmforgeError(f"{path}: truncated or corrupt safetensors file ({e}); re-create or re-download it") from None


def save_checkpoint(
    out_dir: str | Path,
    model_or_state_dict: GPT | dict[str, torch.Tensor],
    config: Config,
    tokenizer: Tokenizer | None = None,
    generation: dict[str, Any] | None = None,
) -> Path:
    """Write an lmforge checkpoint directory (each file atomically).

    Args:
        out_dir: target directory (created).
        model_or_state_dict: a `GPT` or its state dict (our key names).
        config: the model's config.
        tokenizer: written next to the weights when given.
        generation: extra generation defaults for generation_config.json.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = model_or_state_dict if isinstance(model_or_state_dict, dict) else model_or_state_dict.state_dict()
    # safetensors refuses shared storage: a tied head is stored once, as embed_tokens.weight
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()
          if not (config.tie_embeddings and k == "lm_head.weight")}
    atomic_write(out / "model.safetensors", lambda p: save_file(sd, str(p), metadata={"format": "pt"}))
    config.save(out / "config.json")
    gen = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id, **(generation or {})}
    atomic_write_text(out / "generation_config.json", json.dumps(gen, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(out)
    return out


def load_tokenizer(path: Path) -> Tokenizer | None:
    """The tokenizer saved in a checkpoint dir, or None when it holds no tokenizer files."""
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        return None
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.from_dir(path)


def load_lmforge_checkpoint(path: str | Path) -> tuple[Config, dict[str, torch.Tensor]]:
    path = Path(path)
    config = Config.from_file(path / "config.json")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise LmforgeError(f"{path}: no model.safetensors in this lmforge checkpoint")
    return config, load_weights(weights)


def download(repo_id: str, revision: str | None = None, token: str | None = None) -> Path:
    """Download an HF hub repo's model files (safetensors preferred) and return the local dir."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency
        raise LmforgeError("huggingface_hub is not installed (pip install huggingface_hub)") from None
    patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
    try:
        local = snapshot_download(repo_id, revision=revision, token=token, allow_patterns=patterns,
                                  cache_dir=str(lmforge_home() / "hub"))
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LmforgeError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {reason[:160]}); "
            "check the network, the repo id and HF_TOKEN, or pass a local checkpoint path"
        ) from None
    local = Path(local)
    if not any(local.glob("*.safetensors")):
        # older repos only ship pytorch_model.bin; read later with weights_only=True
        try:
            local = Path(snapshot_download(repo_id, revision=revision, token=token,
                                           allow_patterns=["*.bin", "*.json"], cache_dir=str(lmforge_home() / "hub")))
        except Exception as e:
            raise LmforgeError(f"could not download the weights of {repo_id!r} ({type(e).__name__})") from None
    return local


def load_source_parts(
    source: str | Path, tokenizer_pre: str | None = None
) -> tuple[Config, dict[str, torch.Tensor], Tokenizer | None]:
    """Read any SOURCE into (config, state dict with our key names, tokenizer or None); `tokenizer_pre`
    as in `load_source`."""
    kind = detect_source(source)
    if kind == "repo":
        source = download(str(source))
        kind = detect_source(source)
    path = Path(source)
    if kind == "gguf":
        from lmforge.convert.gguf import load_gguf

        if path.is_dir():
            path = next(path.glob("*.gguf"))
        return load_gguf(path, tokenizer_pre=tokenizer_pre)
    if kind == "hf":
        from lmforge.convert.hf import load_hf_checkpoint

        config, sd = load_hf_checkpoint(path)
    else:
        config, sd = load_lmforge_checkpoint(path)
    return config, sd, load_tokenizer(path)


def load_source(
    source: str | Path, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
    tokenizer_pre: str | None = None,
) -> tuple[GPT, Tokenizer | None, Config]:
    """Load a model from any SOURCE (see module docstring), as a plain `GPT` in eval mode.

    Args:
        source: lmforge dir, HF dir, .gguf file or HF repo id.
        device: "cpu", "cuda", "auto" (default: cuda when available).
        dtype: "float32", "bfloat16", "float16" (default: float32 on CPU, bfloat16 on CUDA).
        tokenizer_pre: a GGUF's llama.cpp pre-tokenizer name, over its `tokenizer.ggml.pre`.

    How it then runs (kernels, int8/bf16 weights) is `lmforge.inference.prepare_for_inference`'s
    choice; `LLM.load` makes both calls.
    """
    import torch

    from lmforge.model import GPT

    device = resolve_device(device)
    dtype = parse_dtype(dtype, LmforgeError) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    config, sd, tokenizer = load_source_parts(source, tokenizer_pre)
    sd = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in sd.items()}
    model = GPT.from_state_dict(config, sd, source=str(source))
    model.eval()
    return model, tokenizer, config
