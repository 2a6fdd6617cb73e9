"""fp32 matrix products on the CPU through the faster of PyTorch's two BLAS back-ends, chosen at run time.

PyTorch's CPU wheel runs an fp32 `F.linear` / `torch.mm` through Intel MKL. On AMD CPUs MKL takes its
AVX2 code even where the core has AVX-512 (Zen 4, Zen 5): on a 2-core Zen 5 VM it reaches ~212 GFLOP/s
on a model's shapes, where oneDNN (also inside PyTorch, `torch.ops.mkldnn._linear_pointwise`, the op
Inductor's CPU backend uses) reaches 450-500 GFLOP/s on the same products, in fp32 (IEEE: no bf16
rounding; results differ from MKL's by summation order only). On Intel CPUs and on AVX2-only ones the
two are close. So the choice is measured, once per process, the first time a product is big enough
to matter: `backend()` times both on one (512 x 576) @ (576 x 1536) product and keeps oneDNN only if
it is at least 1.25x faster and agrees with MKL. `LMFORGE_GEMM=torch|onednn|auto` forces the choice.

    from lmforge.gemm import linear
    y = linear(x, weight, bias)      # = F.linear(x, weight, bias), gradients included

Products that stay with `F.linear`: anything not fp32 on the CPU, under autocast, while compiling,
and small ones (fewer than `MIN_ROWS` rows or a side under `MIN_SIDE`), where a call's set-up costs
more than the kernel saves (a decoding step runs in lmforge's own C kernels anyway).
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

MIN_ROWS = 32
MIN_SIDE = 32
_choice: str | None = None  # "onednn" | "torch", decided on first use


def _onednn_op():
    try:
        op = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


def _time(fn, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _calibrate() -> str:
    op = _onednn_op()
    if op is None:
        return "torch"
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(512, 576, generator=g), torch.randn(1536, 576, generator=g)
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        try:
            ours = op(x, w, None, "none", [], "")
        except RuntimeError:
            return "torch"
        ref = F.linear(x, w)
        if not torch.allclose(ours, ref, rtol=1e-4, atol=1e-3):
            return "torch"
        t_torch = _time(lambda: F.linear(x, w))
        t_onednn = _time(lambda: op(x, w, None, "none", [], ""))
    return "onednn" if t_torch >= 1.25 * t_onednn else "torch"


def backend() -> str:
    """"onednn" or "torch" (MKL): `LMFORGE_GEMM` if set, else the faster on this CPU (measured once)."""
    global _choice
    if _choice is None:
        forced = os.environ.get("LMFORGE_GEMM", "auto").strip().lower()
        if forced == "torch" or (forced == "onednn" and _onednn_op() is not None):
            _choice = forced
        else:
            _choice = _calibrate()
    return _choice


def takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `x @ weight.T` runs on oneDNN here: fp32 on the CPU, big enough, no autocast or compiling,
    and oneDNN the chosen back-end. The one test `linear`, `mm_nt` and their callers share."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and weight.dim() == 2 and x.numel() >= MIN_ROWS * weight.shape[1]
            and min(weight.shape) >= MIN_SIDE and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and backend() == "onednn")


def mm_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T for 2-D fp32 CPU tensors (any strides), on the chosen back-end. A new tensor."""
    if takes(a, b):
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return a @ b.t()


class _Linear(torch.autograd.Function):
    """y = x @ W.T + b on oneDNN; the backward's two products (dx = g @ W, dW = g.T @ x) too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None,
                              weight if ctx.needs_input_grad[0] else None)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        op = torch.ops.mkldnn._linear_pointwise
        grad_x = op(g, weight.t(), None, "none", [], "") if ctx.needs_input_grad[0] else None
        grad_w = op(g.t(), x.t(), None, "none", [], "") if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` (x of any leading shape), on oneDNN where that is the faster back-end."""
    if not takes(x, weight) or (bias is not None and bias.dtype != torch.float32):
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    y = _Linear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.view(*lead, weight.shape[0])
