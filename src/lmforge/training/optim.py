"""Optimizer and learning-rate schedule shared by the training verbs."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay only matrices that multiply activations.

    Norm weights and biases (1-D) and embedding tables are left undecayed: shrinking them toward zero
    only fights the normalisation or starves rare tokens. A tied head is its embedding: no decay.
    """
    decay, no_decay, seen = [], [], set()
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
               eps: float = 1e-8, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay over `param_groups(model)`.

    Args:
        fused: use torch's fused AdamW kernel (one pass over each parameter instead of a dozen
            `foreach` passes: ~6x faster steps on CPU, e.g. 0.92 s -> 0.14 s for a 160M model).
            Default: fused wherever every parameter is a floating-point tensor on a CPU or CUDA device.
    """
    groups = param_groups(model, weight_decay)
    if fused is None:
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup from ~0 to `lr` over `warmup_steps`, then cosine decay to `min_lr` at `max_steps`.

    A pure function of the step, so resuming needs no scheduler object: the step is the state.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
