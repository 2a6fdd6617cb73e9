"""What a training run keeps on disk to resume exactly, and how it writes it without half-files.

    out_dir/checkpoints/step-000200/    the model files (the recipe's `save_model`) + train_state.pt:
                                        step, tokens, elapsed, val losses, optimizer, data position,
                                        RNG states, schedule, world size, the run's config
    out_dir/final/                      the last checkpoint's model files
A checkpoint is written to `.step-N.partial/` and renamed: a directory is either complete or absent.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

TRAIN_STATE = "train_state.pt"


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's `random` (the initial weights, and anything else drawn)."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def get_rng_state(device: Any) -> dict[str, Any]:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "python": list(random.getstate()[1]),
        "python_version": int(random.getstate()[0]),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: Any) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete training checkpoint under `root` (partial ones are ignored)."""
    done = [p for p in sorted(Path(root).glob("step-*")) if (p / TRAIN_STATE).is_file()]
    return done[-1] if done else None


def find_resume(resume: bool | str, root: Path, is_main: bool) -> Path | None:
    """The checkpoint `--resume` names: None (false), the latest under `root` (true) or a directory."""
    from lmforge.training.config import TrainConfigError

    if resume is False or resume in ("false", "False"):
        return None
    if resume is True or resume in ("true", "True"):
        found = latest_checkpoint(root)
        if found is None and is_main:
            print(f"resume: no checkpoint under {root} yet; starting from step 0", flush=True)
        return found
    path = Path(resume)
    if not (path / TRAIN_STATE).is_file():
        raise TrainConfigError(f"resume: {path} is not a training checkpoint (no {TRAIN_STATE})")
    return path


def load_train_state(checkpoint: Path) -> dict[str, Any]:
    import torch

    return torch.load(Path(checkpoint) / TRAIN_STATE, weights_only=True, map_location="cpu")


def remove_partials(out: Path) -> None:
    """Delete the half-written `.step-N.partial` / `.final.partial` dirs a killed run left behind."""
    for tmp in [*Path(out).glob(".final.partial"), *(Path(out) / "checkpoints").glob(".step-*.partial")]:
        shutil.rmtree(tmp, ignore_errors=True)


def save_train_checkpoint(root: Path, step: int, save_model: Callable[[Path], None], state: dict[str, Any],
                          keep: int) -> Path:
    """Write `root/step-N/` (model files + train_state.pt) atomically; keep only the newest `keep`."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    tmp = root / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(tmp)
    torch.save(state, tmp / TRAIN_STATE)
    shutil.rmtree(root / name, ignore_errors=True)
    os.replace(tmp, root / name)  # a checkpoint dir is either complete or absent
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return root / name


def publish_final(checkpoint: Path, final: Path) -> None:
    """Copy a training checkpoint's model files (not its train state) to `final`, atomically."""
    tmp = final.parent / f".{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns(TRAIN_STATE))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
