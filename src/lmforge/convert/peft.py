"""LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.

    save_peft_adapter(model, config, settings, "adapter/")     # loads with peft.PeftModel.from_pretrained
    load_peft_adapter(model, config, "adapter/")               # a PEFT adapter onto our GPT

Tensor names are PEFT's for the model's HF export (`base_model.model.model.layers.0.self_attn.q_proj
.lora_A.weight`), found through the HF weight map of `lmforge.convert.hf`. An adapted projection
must be a plain rename of an HF one: projections that HF stores fused (GPT-2's `c_attn`, GPT-NeoX's
`query_key_value`, Phi-3's `qkv_proj`) have no PEFT counterpart, and saving such an adapter is
refused in one line (keep it in lmforge's own format, or merge it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge._io import atomic_write, atomic_write_text, read_json
from lmforge.convert.hf import hf_key_for
from lmforge.errors import LmforgeError
from lmforge.lora import LoRASettings, apply_lora, lora_modules

if TYPE_CHECKING:
    import torch.nn as nn

    from lmforge.config import Config

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."


def _hf_module(name: str, config: Config) -> str:
    hf = hf_key_for(f"{name}.weight", config, renames_only=True)
    if hf is None:
        raise LmforgeError(f"{name}: {config.hf_architecture} stores this projection fused with others, so a "
                           "PEFT adapter cannot hold it; target other modules, or merge the adapter instead")
    return hf.removesuffix(".weight")


def save_peft_adapter(model: nn.Module, config: Config, settings: LoRASettings, out_dir: str | Path,
                      base_model: str | None = None) -> Path:
    """Write the model's adapters as a PEFT LoRA adapter directory; returns it."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    tensors, targets = {}, set()
    for name, m in lora_modules(model):
        hf = _hf_module(name, config)
        targets.add(hf.rpartition(".")[2])
        for part in ("lora_A", "lora_B"):
            tensors[f"{_PREFIX}{hf}.{part}.weight"] = getattr(m, part).weight.detach().contiguous().cpu()
    if not tensors:
        raise LmforgeError("the model has no LoRA adapters to save (apply_lora first)")
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": settings.r, "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout, "target_modules": sorted(targets), "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "base_model_name_or_path": base_model,
        "modules_to_save": None, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
    }
    atomic_write(out / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    atomic_write_text(out / CONFIG_FILE, json.dumps(adapter_config, indent=2) + "\n")
    return out


def load_peft_adapter(model: nn.Module, config: Config, adapter_dir: str | Path) -> LoRASettings:
    """Wrap `model`'s projections as the PEFT adapter in `adapter_dir` says and load its weights."""
    import torch
    from safetensors.torch import load_file

    path = Path(adapter_dir)
    cfg = read_json(path / CONFIG_FILE, LmforgeError)
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise LmforgeError(f"{path / CONFIG_FILE}: not a PEFT LoRA adapter (peft_type must be LORA)")
    if cfg.get("use_dora") or cfg.get("use_rslora") or cfg.get("fan_in_fan_out") or cfg.get("bias", "none") != "none":
        raise LmforgeError(f"{path / CONFIG_FILE}: DoRA, rsLoRA, fan_in_fan_out and trained biases are not supported")
    if not (path / WEIGHTS_FILE).is_file():
        raise LmforgeError(f"{path / WEIGHTS_FILE}: file not found")
    tensors = load_file(str(path / WEIGHTS_FILE))
    hf_modules = {k.removeprefix(_PREFIX).rsplit(".", 2)[0] for k in tensors}
    ours = {}
    for name in (n for n, m in model.named_modules() if hasattr(m, "in_features")):
        try:
            hf = _hf_module(name, config)
        except LmforgeError:
            continue
        if hf in hf_modules:
            ours[name] = hf
    missing = hf_modules - set(ours.values())
    if missing:
        raise LmforgeError(f"{path / WEIGHTS_FILE}: adapter modules {sorted(missing)[:3]} are not in this model")
    settings = LoRASettings(r=int(cfg["r"]), alpha=float(cfg["lora_alpha"]), dropout=float(cfg.get("lora_dropout", 0.0)),
                            targets=",".join(sorted(ours)))
    apply_lora(model, settings)
    with torch.no_grad():
        for name, m in lora_modules(model):
            for part in ("lora_A", "lora_B"):
                w = getattr(m, part).weight
                src = tensors[f"{_PREFIX}{ours[name]}.{part}.weight"]
                if src.shape != w.shape:
                    raise LmforgeError(f"{path / WEIGHTS_FILE}: {ours[name]}.{part} has shape {tuple(src.shape)}, "
                                       f"expected {tuple(w.shape)}")
                w.copy_(src)
    return settings
