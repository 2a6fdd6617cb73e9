"""LoRA: low-rank adapters on a model's linear layers (Hu et al., 2021, arXiv:2106.09685).

    from lmforge.lora import LoRASettings, apply_lora, merge_lora, disable_adapters
    apply_lora(model, LoRASettings(r=8, alpha=16, targets="q_proj,v_proj"))   # or "all-linear"
    ...train: only the adapters' parameters require gradients...
    with disable_adapters(model):
        ref_logits = model(ids)                  # the base model, no second copy in memory
    merge_lora(model)                            # W += (alpha / r) * B @ A; plain nn.Linear again

Each targeted projection becomes a `LoRALinear` holding the frozen original as `base_layer` and two
small matrices `lora_A` (r x in, Kaiming-uniform init) and `lora_B` (out x r, zeros), so that at
init the model computes exactly what it did. The layout and initialisation are PEFT's, so an
adapter saved by `lmforge.convert.peft` loads with `peft.PeftModel.from_pretrained` on the model's
HF export and gives the same logits. The base may be an int8/bf16 `QuantizedLinear` (LoRA on a
frozen quantized base: lower memory); such a base cannot be merged into.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from lmforge import cpu_kernels
from lmforge.errors import LmforgeError

# the projections "all-linear" targets (PEFT's choice: every linear layer but the output head)
_EXCLUDED_FROM_ALL = ("lm_head",)


@dataclass
class LoRASettings:
    """How to adapt a model.

    Attributes:
        r: Rank of the update (the inner size of B @ A).
        alpha: Scale numerator: the update is multiplied by alpha / r.
        dropout: Dropout on the adapter's input while training (0: none).
        targets: Comma-separated module names or shell patterns matched against each linear layer's
            short name (`q_proj`) and full name (`layers.0.self_attn.q_proj`); `all-linear` adapts
            every linear layer except the output head.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = "q_proj,v_proj"

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise LmforgeError(f"lora r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise LmforgeError(f"lora alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LmforgeError(f"lora dropout must be in [0, 1), got {self.dropout!r}")
        if not self.target_list:
            raise LmforgeError("lora targets is empty (e.g. 'q_proj,v_proj' or 'all-linear')")

    @property
    def target_list(self) -> list[str]:
        return [t.strip() for t in str(self.targets).split(",") if t.strip()]

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def _dropped(x: torch.Tensor, seed: int, p: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """x with the elements of dropout mask `(seed, p)` zeroed (not rescaled): the same mask for the same seed.

    The mask is a pure function of the seed, so a backward pass draws it again instead of keeping it.
    On the CPU it comes from `lmf_dropout` (a counter-based hash, the same at any thread count, ~30x
    faster than `bernoulli_`); elsewhere, or without the kernels, from `bernoulli_` on a generator
    seeded with `seed`. `out` (may be x itself) receives the result.
    """
    x = x.contiguous()
    lib = cpu_kernels.load() if x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() < 2**32 else None
    if out is None:
        out = torch.empty_like(x)
    if lib is not None:
        lib.lmf_dropout(x.data_ptr(), out.data_ptr(), x.numel(), seed, min(int(p * 2**32), 2**32 - 1),
                        torch.get_num_threads())
        return out
    g = torch.Generator(device=x.device).manual_seed(seed)
    keep = torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(1 - p, generator=g)
    return torch.mul(x, keep, out=out)


class _LoRAUpdate(torch.autograd.Function):
    """`y += scaling * dropout(x) @ A.T @ B.T`, in place on the base output y.

    What autograd would keep for the plain formula is, per adapter, the dropped copy of x (the input
    of A's matrix product) and dropout's scaled float mask: two (N, in) float tensors. This keeps x
    itself, which the adapters sharing an input (q/k/v, gate/up) save once between them, the small
    (N, r) product h, and no mask at all: the mask is a function of a seed drawn from PyTorch's
    generator (`_dropped`), drawn again in the backward. The scale 1 / (1 - p) is applied to h, not
    to the (N, in) input. Dropout keeps each element with probability 1 - p, independently, as
    `nn.Dropout` does, but not with `nn.Dropout`'s random numbers. The base's own backward (a frozen
    weight: the gradient of x only) is the base layer's.

    Shapes: y (N, out) contiguous, x (N, in), A (r, in), B (out, r); computed in y's dtype.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float,
                p: float) -> torch.Tensor:
        dtype = y.dtype
        # one draw from PyTorch's generator per call: torch.manual_seed, a resumed run's restored RNG
        # state and activation checkpointing's replay all give the same mask
        seed = int(torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64)) if p else 0
        # autocast off: every operand is cast to y's dtype here, so the in-place addmm_ sees one dtype
        with torch.autocast(y.device.type, enabled=False):
            h = (_dropped(x, seed, p) if p else x).to(dtype) @ a.to(dtype).t()  # (N, r)
            if p:
                h.mul_(1 / (1 - p))
            y.addmm_(h, b.to(dtype).t(), alpha=scaling)
        ctx.mark_dirty(y)
        ctx.save_for_backward(x, a, b, h)
        ctx.scaling, ctx.p, ctx.seed = scaling, p, seed
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple:
        x, a, b, h = ctx.saved_tensors
        dtype, p = g.dtype, ctx.p
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[3]:
            grad_b = (g.t() @ h).mul_(ctx.scaling).to(b.dtype)
        gh = (g @ b.to(dtype)).mul_(ctx.scaling / (1 - p))  # (N, r): the gradient of dropped(x) @ A.T
        if ctx.needs_input_grad[2]:
            grad_a = (gh.t() @ (_dropped(x, ctx.seed, p) if p else x).to(dtype)).to(a.dtype)
        if ctx.needs_input_grad[1]:
            grad_x = (gh @ a.to(dtype)).to(x.dtype)
            if p:
                grad_x = _dropped(grad_x, ctx.seed, p, out=grad_x)
        return g, grad_x, grad_a, grad_b, None, None


class LoRALinear(nn.Module):
    """`base_layer(x) + (alpha / r) * lora_B(lora_A(dropout(x)))`, with the base frozen."""

    def __init__(self, base: nn.Module, settings: LoRASettings) -> None:
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        weight = base.weight
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        self.lora_A = nn.Linear(self.in_features, settings.r, bias=False, device=weight.device, dtype=dtype)
        self.lora_B = nn.Linear(settings.r, self.out_features, bias=False, device=weight.device, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as PEFT does
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = settings.dropout  # on A's input while training, as PEFT's `lora_dropout`
        self.scaling = settings.scaling
        self.enabled = True
        for p in base.parameters():
            p.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (code that reads `.weight` of a projection keeps working)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base_layer(x)
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, in)
        # a 2-D input gives a fresh (N, out) output: adding into a view of it instead would make
        # autograd copy its gradient (CopySlices) in the backward
        y = self.base_layer(x).contiguous()
        p = self.dropout if self.training else 0.0
        y = _LoRAUpdate.apply(y, x, self.lora_A.weight, self.lora_B.weight, self.scaling, p)
        return y.view(*shape[:-1], self.out_features)

    def delta_weight(self) -> torch.Tensor:
        """The update (out, in) this adapter adds to the base weight."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.lora_A.out_features}"


def _linear_names(model: nn.Module) -> list[str]:
    from lmforge.quantize import QuantizedLinear

    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantizedLinear))
            and not isinstance(m, LoRALinear) and not n.endswith((".lora_A", ".lora_B"))]


def _matches(name: str, pattern: str) -> bool:
    short = name.rpartition(".")[2]
    return fnmatch.fnmatchcase(short, pattern) or fnmatch.fnmatchcase(name, pattern)


def target_names(model: nn.Module, settings: LoRASettings) -> list[str]:
    """The linear layers `settings.targets` selects; a pattern that matches nothing is an error."""
    names = _linear_names(model)
    patterns = settings.target_list
    if patterns == ["all-linear"]:
        return [n for n in names if n.rpartition(".")[2] not in _EXCLUDED_FROM_ALL]
    for p in patterns:
        if not any(_matches(n, p) for n in names):
            shorts = sorted({n.rpartition(".")[2] for n in names})
            raise LmforgeError(f"lora target {p!r} matches no linear layer of this model "
                               f"(its linear layers: {', '.join(shorts)}; or use all-linear)")
    return [n for n in names if any(_matches(n, p) for p in patterns)]


def apply_lora(model: nn.Module, settings: LoRASettings) -> list[str]:
    """Wrap the targeted linear layers of `model` in `LoRALinear`s (in place) and freeze everything
    else; returns the adapted module names. At init the model's outputs do not change."""
    names = target_names(model, settings)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), settings))
    return names


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            yield name, m


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors by our names (`layers.0.self_attn.q_proj.lora_A.weight`, …)."""
    return {f"{name}.{part}.weight": getattr(m, part).weight.detach()
            for name, m in lora_modules(model) for part in ("lora_A", "lora_B")}


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model computes as its base (DPO's reference model without a copy)."""
    mods = [m for _, m in lora_modules(model)]
    before = [m.enabled for m in mods]
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m, was in zip(mods, before):
            m.enabled = was


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain layer back (in place)."""
    for name, m in list(lora_modules(model)):
        base = m.base_layer
        if not isinstance(base, nn.Linear):
            raise LmforgeError(f"{name}: cannot merge LoRA into a {type(base).__name__} base "
                               "(a quantized base stays as it is: load the model unquantized to merge)")
        with torch.no_grad():
            base.weight += m.delta_weight().to(base.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, base)
    return model
