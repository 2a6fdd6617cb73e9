"""Process groups, DDP / FSDP wrapping, full state dicts and self-launching for the training verbs.

`torchrun --nproc-per-node N -m lmforge pretrain …` sets RANK/WORLD_SIZE/LOCAL_RANK; `setup()` then
joins the group (gloo on CPU, nccl on GPU). `launch()` is what `--devices N` does: it runs the same
verb under `torch.distributed.run` and waits.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from lmforge.errors import LmforgeError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def in_distributed_env() -> bool:
    """True when started by torchrun (or any launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun; pick this rank's device."""
    if not in_distributed_env():
        return DistInfo(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    if device.type == "cpu":
        # the ranks share the machine's cores (torchrun defaults OMP_NUM_THREADS to 1)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return DistInfo(rank, world, local, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def wrap(model: nn.Module, strategy: str, info: DistInfo) -> nn.Module:
    """DDP or FSDP (`fully_shard` per block, then the root) when distributed; else the model itself."""
    if not info.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for block in model.layers:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (FSDP2 shards in place: nothing to unwrap)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def grad_sync(model: nn.Module, strategy: str, info: DistInfo, sync: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    if not info.enabled or sync:
        if info.enabled and strategy == "fsdp":
            model.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if strategy == "fsdp":
        model.set_requires_gradient_sync(False)
        return contextlib.nullcontext()
    return model.no_sync()


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """Full (unsharded, CPU) model and optimizer state dicts keyed by parameter names.

    Collective under FSDP: every rank must call it. Keys do not depend on the wrapper, so a checkpoint
    from a 2-process FSDP run resumes in a 1-process run and the other way round.
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, osd: dict) -> None:
    """Load a full optimizer state dict from `full_state_dicts` (every rank passes the full dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))


def launch(verb_args: list[str], nproc: int) -> None:
    """Run `lmforge <verb_args>` in `nproc` processes under torch.distributed.run and wait for them."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "lmforge", *verb_args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    src = str(Path(__file__).resolve().parents[2])  # the children import the same lmforge as we do
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        raise LmforgeError(f"distributed run with {nproc} processes failed (exit code {rc}); see the output above")


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
