"""Training windows from prepared shards: `(inputs, targets)` pairs, targets shifted by one.

    data = TokenData("data/austen", "train")          # memory-maps the shards of one split
    loader = WindowLoader(data, block_size=256, batch_size=8, seed=0, rank=0, world_size=1)
    inputs, targets = next(loader)                     # (8, 256) int64 each

A split is one token stream (its shards concatenated, documents separated by EOS). Window `w`
covers tokens `[w * stride, w * stride + block_size + 1)`: `stride == block_size` gives disjoint
samples, a smaller stride overlapping ones. Each epoch visits the windows in a seeded permutation;
rank `r` of `world_size` takes every `world_size`-th window of it, so the ranks together see the
same windows, in the same optimizer steps, as a single process does. `state_dict()` records the
position so a resumed run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data.prepare import FORMAT, MANIFEST, DataError


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared directory, or a one-line error saying what to run."""
    path = Path(data_dir) / MANIFEST
    if not Path(data_dir).is_dir():
        raise DataError(f"{data_dir}: no such data directory (create it with `lmforge prepare`)")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{data_dir}: no {MANIFEST} (not prepared, or interrupted: run `lmforge prepare` again)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}); run `lmforge prepare` again") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not an lmforge prepared-data manifest")
    return manifest


class TokenData:
    """The token stream of one split, memory-mapped (nothing is read until sliced)."""

    def __init__(self, data_dir: str | Path, split: str = "train") -> None:
        self.dir = Path(data_dir)
        self.manifest = read_manifest(self.dir)
        if split not in self.manifest["splits"]:
            raise DataError(f"{self.dir}: no split {split!r} (have {sorted(self.manifest['splits'])})")
        self.split = split
        dtype = np.dtype(self.manifest["dtype"])
        self.arrays: list[np.ndarray] = []
        for shard in self.manifest["splits"][split]["shards"]:
            path = self.dir / shard["file"]
            if not path.is_file():
                raise DataError(f"{path}: shard missing; run `lmforge prepare` again")
            if path.stat().st_size != shard["tokens"] * dtype.itemsize:
                raise DataError(f"{path}: size does not match the manifest (truncated?); run `lmforge prepare` again")
            if shard["tokens"]:
                self.arrays.append(np.memmap(path, dtype=dtype, mode="r"))
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])  # start of each shard in the stream

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def eos_id(self) -> int:
        return int(self.manifest["tokenizer"]["eos_id"])

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Tokens `[start, stop)` of the stream as int64 (a window may span two shards)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"slice [{start}, {stop}) outside a stream of {len(self)} tokens")
        parts = []
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            lo = start - int(self.offsets[i])
            hi = min(stop - int(self.offsets[i]), len(self.arrays[i]))
            parts.append(self.arrays[i][lo:hi])
            start += hi - lo
            i += 1
        return np.concatenate(parts).astype(np.int64) if len(parts) != 1 else parts[0].astype(np.int64)


class WindowLoader:
    """Endless (or one-epoch) iterator of `(inputs, targets)` batches, each `(batch_size, block_size)`.

    Args:
        data: A `TokenData` split.
        block_size: Tokens per sample.
        batch_size: Samples per batch (per rank).
        stride: Tokens between consecutive window starts (default `block_size`: disjoint windows).
        shuffle: Visit windows in a seeded permutation per epoch (else in order).
        seed: Seed of the permutation.
        rank: This process's rank; it takes windows `rank, rank + world_size, …` of each epoch's order.
        world_size: Number of ranks sharing the data.
        cycle: Start a new epoch when one ends (training); else stop after one, the last batch
            possibly short (evaluation).
    """

    def __init__(self, data: TokenData, block_size: int, batch_size: int, stride: int | None = None,
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1, cycle: bool = True) -> None:
        self.data = data
        self.block_size = block_size
        self.batch_size = batch_size
        self.stride = stride or block_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.cycle = cycle
        if block_size < 1 or batch_size < 1 or self.stride < 1:
            raise DataError("block_size, batch_size and stride must be positive")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, {world_size})")
        n_tokens = len(data)
        # window w needs tokens [w*stride, w*stride + block_size + 1): the +1 is the last target
        self.n_windows = (n_tokens - block_size - 1) // self.stride + 1 if n_tokens > block_size else 0
        self.per_rank = self.n_windows // world_size  # the tail is dropped so every rank has as many
        if self.per_rank == 0:
            raise DataError(
                f"{data.dir} ({data.split}): {n_tokens:,} tokens are too few for one window of block_size "
                f"{block_size} per rank ({world_size} rank(s)); use more data or a smaller block_size"
            )
        self.epoch = 0
        self.index = 0  # position in this rank's share of the current epoch
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    def __len__(self) -> int:
        """Batches in one epoch on this rank (the last one may be short)."""
        return -(-self.per_rank // self.batch_size)

    def __iter__(self) -> WindowLoader:
        return self

    def _rank_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_windows)
            else:
                order = np.arange(self.n_windows)
            self._order = order[: self.per_rank * self.world_size][self.rank :: self.world_size]
            self._order_epoch = self.epoch
        return self._order

    def __next__(self):
        import torch

        windows: list[int] = []
        while len(windows) < self.batch_size:
            if self.index >= self.per_rank:
                if not self.cycle:
                    break
                self.epoch += 1
                self.index = 0
            order = self._rank_order()
            take = min(self.batch_size - len(windows), self.per_rank - self.index)
            windows.extend(order[self.index : self.index + take].tolist())
            self.index += take
        if not windows:
            raise StopIteration
        T = self.block_size
        rows = np.stack([self.data.slice(w * self.stride, w * self.stride + T + 1) for w in windows])
        batch = torch.from_numpy(rows)  # (B, T + 1)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: enough to continue with exactly the next batch."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "n_windows": self.n_windows,
                "block_size": self.block_size, "stride": self.stride, "batch_size": self.batch_size,
                "rank": self.rank, "world_size": self.world_size, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`; the data and settings must be the same as when it was taken."""
        for key in ("seed", "n_windows", "block_size", "stride", "batch_size", "rank", "world_size", "shuffle"):
            if state.get(key) != getattr(self, key):
                raise DataError(
                    f"cannot resume the data position: {key} was {state.get(key)!r}, now {getattr(self, key)!r} "
                    "(resume with the same data, block_size, stride, batch sizes, seed and number of processes)"
                )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
