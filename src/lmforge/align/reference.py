"""Completion log-probs of a policy, and where the reference model's come from.

    logps, counts = sequence_logps(model, batch["ids"], batch["targets"])   # (R,) sums over completion tokens
    ref = Reference("lora")            # the base through disable_adapters: no second copy in memory
    ref = Reference("copy", frozen)    # a frozen copy of the initial model
    table = cached_reference_logps(frozen, rows, key, pad_id)               # once, on disk; batches carry "ref"

The reference of DPO, IPO and KTO is the model training starts from. Its log-probs of the training
sequences never change, so they can be computed once and cached on disk under
`$LMFORGE_HOME/align-ref/<data hash>-<model hash>.pt`: later epochs and re-runs skip its forward.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

REFERENCE_KINDS = ("auto", "copy", "lora", "cached")


def completion_logits(model: nn.Module, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, V) fp32 logits at the M scored positions (targets != IGNORE) and their (M,) row numbers.

    Only those rows go through the output head (the prompt's and padding's hidden states are never
    projected onto the vocabulary): for short answers that is a few percent of the positions."""
    import torch.nn.functional as F
    from torch import nn

    from lmforge.data.sft import IGNORE
    from lmforge.training.distributed import unwrap

    inner = getattr(unwrap(model), "_orig_mod", unwrap(model))
    head, config = getattr(inner, "lm_head", None), getattr(inner, "config", None)
    mask = targets != IGNORE
    rows = mask.nonzero()[:, 0]
    if isinstance(head, nn.Linear) and getattr(config, "final_logit_softcap", None) is None:
        hidden = model(ids, return_hidden=True)  # (R, T, d)
        logits = F.linear(hidden[mask], head.weight, head.bias)  # (M, V)
    else:
        logits = model(ids)[mask]
    return logits.float(), rows


def sequence_logps(model: nn.Module, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R,) log-probability of each row's completion (summed over its scored tokens) and (R,) the counts."""
    import torch

    from lmforge.data.sft import IGNORE

    logits, rows = completion_logits(model, ids, targets)
    picked = targets[targets != IGNORE]
    token_logps = logits.log_softmax(-1).gather(1, picked.unsqueeze(1)).squeeze(1)  # (M,)
    sums = torch.zeros(ids.shape[0], dtype=token_logps.dtype, device=ids.device).index_add(0, rows, token_logps)
    counts = (targets != IGNORE).sum(1)
    return sums, counts


class Reference:
    """The reference log-probs of a batch: the batch's cached `ref`, the base model under
    `disable_adapters` ("lora"), or a frozen copy ("copy")."""

    def __init__(self, kind: str, model: nn.Module | None = None) -> None:
        self.kind, self.model = kind, model

    def __call__(self, policy: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        from lmforge.lora import disable_adapters
        from lmforge.training.distributed import unwrap

        if "ref" in batch:
            return batch["ref"]
        with torch.no_grad():
            if self.kind == "lora":
                base = unwrap(policy)
                with disable_adapters(base):
                    return sequence_logps(base, batch["ids"], batch["targets"])[0]
            return sequence_logps(self.model, batch["ids"], batch["targets"])[0]


def model_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """A short hash of a model's weights (the cache key's model part)."""
    import hashlib

    import torch

    h = hashlib.blake2b(digest_size=10)
    for k in sorted(state_dict):
        v = state_dict[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(v.view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def cache_path(key: str) -> Path:
    from lmforge._io import lmforge_home

    return lmforge_home() / "align-ref" / f"{key}.pt"


def cached_reference_logps(model: nn.Module, rows: list[tuple[list[int], list[int]]], key: str, pad_id: int,
                           batch_size: int = 16, device: Any = None) -> tuple[torch.Tensor, bool]:
    """(N,) reference log-probs of (prompt, completion) rows, from the cache file of `key` or computed
    (in batches of similar length) and written there; and whether the cache was hit."""
    import torch

    from lmforge._io import atomic_write
    from lmforge.data.pairs import collate_rows

    path = cache_path(key)
    if path.is_file():
        table = torch.load(path, weights_only=True)
        if table.shape == (len(rows),):
            return table, True
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    table = torch.empty(len(rows), dtype=torch.float32)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            b = collate_rows([rows[i] for i in idx], pad_id)
            table[idx] = sequence_logps(model, b["ids"].to(device), b["targets"].to(device))[0].float().cpu()
    model.train(was)
    atomic_write(path, lambda p: torch.save(table, p))
    return table, False
