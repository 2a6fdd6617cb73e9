"""Which parameters a finetune trains: `full`, `last_n` blocks, `lora` adapters, or the `head` alone.

    method = MethodArgs(name="lora", lora=LoRASettings(r=8, alpha=16, targets="all-linear"))
    trainable = apply_method(model, method, head_trains=True)    # freezes the rest; returns the names

Every method leaves the frozen parameters untouched (the optimizer never sees them: the training
loop builds AdamW over `requires_grad` parameters only). For a classifier (`head_trains=True`) the
new output layer always trains, whatever the method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from lmforge.lora import LoRASettings
from lmforge.training.config import TrainConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

METHODS = ("full", "last_n", "lora", "head")


@dataclass
class MethodArgs:
    """What trains."""

    name: Literal["full", "last_n", "lora", "head"] = "lora"
    """full: every weight; last_n: the last N blocks + final norm + head; lora: low-rank adapters
    (the base frozen); head: the classifier's new output layer alone (classification only)."""
    last_n: int = 2
    """Blocks trained by `last_n` (counted from the top)."""
    lora: LoRASettings = field(default_factory=LoRASettings)
    """LoRA rank, alpha, dropout and targets (module names or patterns, or all-linear)."""
    quantize: Literal["none", "int8"] = "none"
    """lora only: hold the frozen base in int8 (less memory; the adapters stay fp32)."""

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoRASettings(**self.lora)
        if self.name not in METHODS:
            raise TrainConfigError(f"method.name={self.name!r} is not one of {METHODS}")
        if self.last_n < 1:
            raise TrainConfigError(f"method.last_n must be >= 1, got {self.last_n}")
        if self.quantize not in ("none", "int8"):
            raise TrainConfigError(f"method.quantize={self.quantize!r} is not one of ('none', 'int8')")
        if self.quantize != "none" and self.name != "lora":
            raise TrainConfigError(f"method.quantize={self.quantize} needs method.name=lora (a quantized base is frozen)")


def apply_method(model: nn.Module, method: MethodArgs, head_trains: bool = False) -> list[str]:
    """Freeze `model` (in place) as `method` says, adding LoRA adapters for `lora`; returns the names
    of the trainable parameters. `head_trains`: the output layer trains too (a new classifier head)."""
    if method.name == "head" and not head_trains:
        raise TrainConfigError("method.name=head trains a classifier's new head only; use it with `finetune classify`")
    if method.name == "last_n" and method.last_n > len(model.layers):
        raise TrainConfigError(f"method.last_n={method.last_n} but the model has {len(model.layers)} blocks")
    if method.name == "lora":
        from lmforge.lora import apply_lora

        if method.quantize == "int8":
            from lmforge.quantize import quantize_model

            # the projections LoRA wraps become int8; the head of a classifier stays trainable fp32
            quantize_model(model, "int8", skip=("lm_head",))
            model.train()
        apply_lora(model, method.lora)  # freezes everything else
    else:
        for p in model.parameters():
            p.requires_grad_(method.name == "full")
        if method.name == "last_n":
            for module in (*model.layers[-method.last_n:], model.norm, model.lm_head):
                for p in module.parameters():
                    p.requires_grad_(True)
    if head_trains:
        for p in model.lm_head.parameters():
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def describe(model: nn.Module, method: MethodArgs) -> str:
    """`lora r=8 on 60 modules: 0.46M of 135M parameters train (0.34%)`-style summary."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    what = method.name
    if method.name == "lora":
        from lmforge.lora import lora_modules

        what += f" r={method.lora.r} alpha={method.lora.alpha:g} on {sum(1 for _ in lora_modules(model))} modules"
        what += " (int8 base)" if method.quantize == "int8" else ""
    elif method.name == "last_n":
        what += f"={method.last_n}"
    return f"{what}: {trainable / 1e6:.2f}M of {total / 1e6:.1f}M parameters train ({100 * trainable / total:.2f}%)"


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of `model` as a plain GPT's: LoRA adapters merged into their bases (an int8 base
    dequantized first), so the result loads with `GPT.from_state_dict`. `model` is not changed."""
    import copy

    import torch
    from torch import nn

    from lmforge.lora import lora_modules, merge_lora
    from lmforge.quantize import QuantizedLinear

    if not any(True for _ in lora_modules(model)) and not any(isinstance(m, QuantizedLinear) for m in model.modules()):
        return {k: v.detach() for k, v in model.state_dict().items()}
    model = copy.deepcopy(model).cpu()
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantizedLinear):  # the weights the adapters were trained on, in fp32
            plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            with torch.no_grad():
                plain.weight.copy_(m.dequantized().float())
                if m.bias is not None:
                    plain.bias.copy_(m.bias.float())
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
    merge_lora(model)
    return {k: v.detach() for k, v in model.state_dict().items()}
