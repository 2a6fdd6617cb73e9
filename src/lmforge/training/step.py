"""One optimizer step, and the losses it runs (benchmarks/train_speed.py times exactly `train_step`).

A loss function is `loss_fn(model, batch) -> (loss, metrics)`: the mean loss of one micro-batch (a
0-dim tensor to backpropagate) and a dict of extra tensors/numbers to report (summed over the
micro-batches of a step; `{}` for none). `next_token_loss` is pretraining's; finetuning and alignment
recipes bring their own (classification, SFT with masked prompts, DPO) and reuse the same step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

LossFn = Callable[["torch.nn.Module", Any], "tuple[torch.Tensor, dict[str, Any]]"]


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
            reduction: Literal["mean", "sum"] = "mean", segments: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy of `model` (plain, DDP/FSDP-wrapped or compiled) on inputs x, targets y.

    A plain `nn.Linear` head over the vocabulary (tied or not, without logit softcapping) goes through
    `fused_linear_cross_entropy`: the (b, T, vocab) logits tensor is never built, which on CPU is what
    most of a small model's step time went to. Any other head (a replaced `lm_head`) gets the plain
    `F.cross_entropy` of the model's logits. Run it inside the autocast context of the precision.

    Args:
        model: the model being trained.
        x: (b, T) input ids.
        y: (b, T) target ids (`-100`: not scored).
        reduction: "mean" over the scored tokens, or "sum".
        segments: (b, T) document ids of packed rows (SFT packing; `GPT.forward(segments=)`), or None.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    from lmforge.training.distributed import unwrap
    from lmforge.training.loss import fused_linear_cross_entropy

    inner = getattr(unwrap(model), "_orig_mod", unwrap(model))
    head, config = getattr(inner, "lm_head", None), getattr(inner, "config", None)
    if (isinstance(head, nn.Linear) and config is not None and head.out_features == config.vocab_size
            and getattr(config, "final_logit_softcap", None) is None):
        hidden = model(x, return_hidden=True, segments=segments)  # (b, T, d)
        # the head runs inside the loss, chunk by chunk (in the autocast dtype, softmax in fp32)
        return fused_linear_cross_entropy(hidden, head.weight, y, bias=head.bias, reduction=reduction)
    logits = model(x, segments=segments)  # (b, T, V)
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()  # the softmax of low-precision logits in fp32
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction=reduction)


def next_token_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Pretraining's loss function: `batch` is `(inputs, targets)`, the mean next-token cross-entropy."""
    x, y = batch
    return lm_loss(model, x, y), {}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, next_batch: Callable[[], Any],
               loss_fn: LossFn, accum: int, grad_clip: float | None,
               autocast: contextlib.AbstractContextManager | None = None,
               grad_sync: Callable[[bool], contextlib.AbstractContextManager] | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """One optimizer step over `accum` micro-batches: forward, loss, backward, clip, AdamW, zero grads.

    Args:
        model: the model being trained (plain, DDP/FSDP-wrapped or compiled).
        optimizer: its optimizer (learning rate already set for this step).
        next_batch: callable returning the next micro-batch, already on the model's device.
        loss_fn: `(model, batch) -> (mean loss, metrics)`; see the module docstring.
        accum: micro-batches per optimizer step (gradient accumulation).
        grad_clip: clip the global gradient norm to this (None: no clipping).
        autocast: the autocast context of the forward passes (None: none).
        grad_sync: callable `(last: bool) -> context manager` around each micro-batch's backward
            (DDP/FSDP: skip the gradient all-reduce on all but the last).

    Returns:
        The sum of the micro-batch mean losses, the gradient norm before clipping (tensors, not read
        here, so no device sync per step) and the metrics summed over the micro-batches.
    """
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    loss_sum, metrics = None, {}
    for micro in range(accum):
        batch = next_batch()
        with grad_sync(micro == accum - 1) if grad_sync is not None else contextlib.nullcontext():
            with autocast:
                loss, extra = loss_fn(model, batch)
            # dividing by accum makes the summed gradient the mean over this process's accum
            # micro-batches; DDP/FSDP then average over the W processes: the mean over the global batch
            (loss / accum).backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        for key, value in extra.items():
            value = value.detach() if hasattr(value, "detach") else value
            metrics[key] = value if key not in metrics else metrics[key] + value
    grad_norm = None
    if grad_clip is not None:
        grad_norm = _clip_grad_norm(model, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm, metrics


def _clip_grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_`, minus its multiply-every-gradient-by-1.0 pass when the norm is already small.

    When the norm is below `max_norm` the clipping factor is clamped to exactly 1.0, so skipping the
    multiply changes nothing; deciding needs the norm on the host, which is free on a CPU (elsewhere,
    and for sharded gradients, every step clips as torch does).
    """
    import torch

    params = [p for p in model.parameters() if p.grad is not None]
    if not params or params[0].device.type != "cpu" or hasattr(params[0].grad, "full_tensor"):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if not float(norm) + 1e-6 <= max_norm:  # (a nan norm clips too, as in torch)
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def checkpoint_blocks(model: Any, part: Literal["block", "mlp"] = "block") -> None:
    """Activation checkpointing: each block (or only each block's MLP) recomputes its forward during
    backward. The MLPs hold most of a step's activations (gate, up and down's input are the widest
    tensors) for about three quarters of a block's matrix products, so `mlp` keeps most of the
    memory saving at less recompute; the random state is replayed, so LoRA's dropout draws the same."""
    import functools

    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        module = block.mlp if part == "mlp" else block
        module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); else autocast would emulate it slowly."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether `precision` ("auto", "fp32", "bf16-mixed") trains in bf16 autocast on `device`."""
    import torch

    from lmforge.training.config import TrainConfigError

    if precision != "auto":
        if precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainConfigError("precision=bf16-mixed: this GPU has no bfloat16 support; use fp32")
        return precision == "bf16-mixed"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()
