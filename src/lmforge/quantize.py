"""Weight-only int8 / bf16 inference modes for CPU decoding.

    from lmforge.quantize import quantize_model
    quantize_model(model, "int8")      # every nn.Linear -> QuantizedLinear, names unchanged
    LLM.load(source, quantize="int8")  # the same at load time

Batch-1 decoding reads every weight once per token, so its speed is memory bandwidth divided by
the bytes of the weights. int8 weights (one fp32 scale per output channel, symmetric, round to
nearest) read 4x fewer bytes than fp32; bf16 weights read 2x fewer and keep 8 bits of mantissa.
Activations stay fp32 at the module boundary. Decoding steps (a few rows) run on the AVX2 kernels of
`lmforge.cpu_kernels`; long prompts (many rows) dequantize the weight once and use PyTorch's GEMM.

Module and parameter names do not change (`layers.0.self_attn.q_proj.weight` is still there, now
int8, with a `scale` buffer beside it), so code that walks the model by name keeps working. A
quantized model is for inference only; quantize at load time rather than saving it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge import cpu_kernels
from lmforge.errors import LmforgeError

Mode = Literal["int8", "bf16", "fp32"]
MODES: tuple[str, ...] = ("int8", "bf16", "fp32")
# Up to this many rows (tokens x batch) the kernel's weight-streaming GEMV wins; above, the work is
# compute-bound and MKL's blocked GEMM on a dequantized copy is faster.
KERNEL_MAX_ROWS = 16


class _FrozenLinear(torch.autograd.Function):
    """`x @ (weight * scale[:, None]).T + bias` for a frozen stored weight: the gradient of x only, from
    the stored (int8/bf16) weight, dequantized to fp32 just for the backward matrix product."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
                bias: torch.Tensor | None) -> torch.Tensor:
        y = F.linear(x, weight.float())
        if scale is not None:
            y.mul_(scale)
        if bias is not None:
            y.add_(bias)
        ctx.save_for_backward(weight, scale)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple:
        weight, scale = ctx.saved_tensors
        g = g * scale if scale is not None else g
        return g @ weight.float(), None, None, None


class QuantizedLinear(nn.Module):
    """A drop-in `nn.Linear` replacement holding its weight as int8 (+ per-row scale), bf16 or fp32.

    "fp32" keeps the weight as it is and only routes the few-rows case to the CPU kernels (their
    thread pool copes better with a busy machine than MKL's OpenMP GEMV).

    Attributes:
        weight: (out, in) int8, bf16 or fp32, a frozen parameter (same name as in `nn.Linear`).
        scale: (out,) fp32 per-output-channel scale (int8 only): `w ≈ weight * scale[:, None]`.
        bias: fp32 or None.
    """

    def __init__(self, linear: nn.Linear, mode: Mode) -> None:
        super().__init__()
        if mode not in MODES:
            raise LmforgeError(f"quantize mode {mode!r} is not supported (use one of: {', '.join(MODES)})")
        self.mode = mode
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        if mode == "int8":
            # symmetric per-output-channel: the largest |w| of each row maps to 127
            scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
            self.weight = nn.Parameter(q.contiguous(), requires_grad=False)
            self.register_buffer("scale", scale.contiguous())
        else:
            dtype = torch.bfloat16 if mode == "bf16" else torch.float32
            self.weight = nn.Parameter(w.to(dtype).contiguous(), requires_grad=False)
            self.scale = None
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().contiguous(), requires_grad=False)

    def dequantized(self) -> torch.Tensor:
        """The fp32 weight this module computes with (for checks and the many-rows path)."""
        w = self.weight.float()
        return w * self.scale[:, None] if self.scale is not None else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, self.in_features)
        lib = cpu_kernels.load() if x.device.type == "cpu" else None
        # (the kernels compute outside autograd: an input that needs a gradient, as under a trained
        # LoRA adapter on a frozen int8 base, takes the PyTorch path)
        if lib is not None and x2.size(0) <= KERNEL_MAX_ROWS and self.in_features % 16 == 0 and not (
                x.requires_grad and torch.is_grad_enabled()):
            y = self._kernel(lib, x2.float().contiguous())
        elif x.requires_grad and torch.is_grad_enabled():
            # training through the frozen base (LoRA on int8): the backward keeps the stored weight,
            # not an fp32 copy of it per layer (which made an int8 base use more memory than fp32)
            y = _FrozenLinear.apply(x2.float(), self.weight, self.scale, self.bias)
        elif self.scale is not None:  # scale the (N-wide) output, not the (N x K) weight
            y = torch.addcmul(self.bias, F.linear(x2.float(), self.weight.float()), self.scale) \
                if self.bias is not None else F.linear(x2.float(), self.weight.float()) * self.scale
        else:
            y = F.linear(x2.float(), self.weight.float(), self.bias)
        return y.to(dtype).view(*shape[:-1], self.out_features)

    def _kernel(self, lib, x: torch.Tensor) -> torch.Tensor:
        M = x.size(0)
        y = torch.empty(M, self.out_features, dtype=torch.float32)
        bias = self.bias.data_ptr() if self.bias is not None else None
        threads = torch.get_num_threads()
        if self.mode == "int8":
            lib.lmf_linear_i8(x.data_ptr(), self.weight.data_ptr(), self.scale.data_ptr(), bias, y.data_ptr(),
                              M, self.out_features, self.in_features, threads)
        else:
            fn = lib.lmf_linear_bf16 if self.mode == "bf16" else lib.lmf_linear_f32
            fn(x.data_ptr(), self.weight.data_ptr(), bias, y.data_ptr(), M, self.out_features, self.in_features,
               threads)
        return y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}"


class FusedLinear(QuantizedLinear):
    """Several `QuantizedLinear`s on the same input as one matrix product (q/k/v, gate/up).

    The members keep their modules and names; their weights (and scales, biases) become views into
    this module's concatenated tensors, so nothing is stored twice. `covers` tells the model whether
    the members are still the ones fused (a swapped or re-loaded module makes it fall back).
    """

    def __init__(self, members: list[QuantizedLinear]) -> None:
        nn.Module.__init__(self)
        first = members[0]
        self.mode, self.in_features = first.mode, first.in_features
        self.sizes = [m.out_features for m in members]
        self.out_features = sum(self.sizes)
        self.weight = nn.Parameter(torch.cat([m.weight for m in members]), requires_grad=False)
        self.scale = torch.cat([m.scale for m in members]) if first.scale is not None else None
        self.bias = (nn.Parameter(torch.cat([m.bias for m in members]), requires_grad=False)
                     if first.bias is not None else None)
        start = 0
        for m, n in zip(members, self.sizes):
            m.weight = nn.Parameter(self.weight.data[start:start + n], requires_grad=False)
            if self.scale is not None:
                m.scale = self.scale[start:start + n]
            if self.bias is not None:
                m.bias = nn.Parameter(self.bias.data[start:start + n], requires_grad=False)
            start += n
        self._members = tuple(members)
        self._ptrs = tuple(m.weight.data_ptr() for m in members)

    @staticmethod
    def fusable(members: list[nn.Module]) -> bool:
        first = members[0]
        return all(isinstance(m, QuantizedLinear) and not isinstance(m, FusedLinear) for m in members) and all(
            m.mode == first.mode and m.in_features == first.in_features and (m.bias is None) == (first.bias is None)
            and m.weight.device == first.weight.device for m in members)

    def covers(self, *members: nn.Module) -> bool:
        return members == self._members and all(m.weight.data_ptr() == p for m, p in zip(members, self._ptrs))


Fusion = dict[nn.Module, "FusedLinear"]
"""Fused products by the module that owns the members: an attention's q/k/v, an MLP's gate/up."""


def fuse_projections(model: nn.Module) -> Fusion:
    """Fuse q/k/v and gate/up of every `QuantizedLinear` attention/MLP in `model`.

    Fewer, larger matrix products per token: one kernel call instead of three (two). The model's
    modules, names and state_dict stay as they are (the members' weights become views into the fused
    tensors); the fused products are returned, for the inference runner that uses them.
    """
    fusion: Fusion = {}
    groups = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
    for module in model.modules():
        for names in groups:
            members = [getattr(module, n, None) for n in names]
            if all(m is not None for m in members) and FusedLinear.fusable(members):
                fusion[module] = FusedLinear(members)
    return fusion


def quantize_model(model: nn.Module, mode: Mode | str | None = "int8", skip: tuple[str, ...] = ()) -> nn.Module:
    """Replace every `nn.Linear` of `model` (in place) by a `QuantizedLinear` of the same name.

    A tied output head gets its own quantized copy; the embedding table it shares stays as it is
    (a token reads one row of it, so its size does not slow decoding).

    Args:
        model: a model in eval mode (e.g. `lmforge.model.GPT`); any nn.Module works.
        mode: "int8" (per-channel scales), "bf16", or "fp32" (weights unchanged, CPU kernels only);
            None or "none" leaves the model unchanged.
        skip: module names (as in `named_modules`) to leave in full precision, e.g. `("lm_head",)`.

    Returns:
        The same model object, for chaining.

    Raises:
        LmforgeError: an unknown mode.
    """
    if mode in (None, "none"):
        return model
    if mode not in MODES:
        raise LmforgeError(f"quantize mode {mode!r} is not supported (use one of: {', '.join(MODES)}, none)")
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in skip]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantizedLinear(linear, mode))  # type: ignore[arg-type]
    model.eval()
    return model
