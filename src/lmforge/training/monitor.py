"""What a training run reports: console lines, CSV, TensorBoard, a loss plot, MFU.

MFU (model FLOPs utilisation) compares the model's training FLOPs per second with the device's
*measured* matmul peak (a short timed matmul at start-up, cached per device, dtype and thread count
in `$LMFORGE_HOME/matmul_peak.json`), not with a datasheet number.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from lmforge._io import atomic_write, atomic_write_text, lmforge_home

CSV_FIELDS = ["step", "tokens", "train_loss", "val_loss", "val_ppl", "lr", "grad_norm",
              "tokens_per_sec", "mfu", "elapsed_s"]


def flops_per_token(config: Any, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), PaLM appendix B counting.

    6 per matmul weight (2 forward, 4 backward) plus attention scores and values,
    12 * n_layer * n_head * head_size * T. Embedding lookups do no matmul and are not counted.
    """
    n = config.num_parameters() - config.vocab_size * config.n_embd  # drop the input embedding table
    if config.tie_embeddings:
        n += config.vocab_size * config.n_embd  # ... but a tied head still multiplies
    if config.position_embedding == "learned":
        n -= config.block_size * config.n_embd
    attn = 12 * config.n_layer * config.n_head * config.head_size * seq_len
    return 6.0 * n + attn


def _device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from lmforge._io import cpu_model

    return cpu_model()


def measured_peak_flops(device: Any, dtype: Any, cache_dir: Path | None = None) -> float:
    """Matmul FLOP/s of this device in `dtype`: the best of this measurement and earlier ones.

    Measured at every start (well under a second) because a shared machine's speed swings: a value
    taken while the machine was busy would make MFU read above 100% later. The cache keeps the best.
    """
    import torch

    threads = torch.get_num_threads() if device.type == "cpu" else 0
    key = f"{_device_name(device)}|{dtype}|threads={threads}"
    cache = (cache_dir or lmforge_home()) / "matmul_peak.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, json.JSONDecodeError):
        known = {}
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    reps = 20 if device.type == "cuda" else 4

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    from lmforge import gemm  # the back-end the model's products run on (oneDNN where faster, else a @ b.T)

    def product():
        return gemm.mm_nt(a, b)

    product()  # warm-up (kernel selection, allocation)
    sync()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            product()
        sync()
        best = min(best, (time.perf_counter() - t0) / reps)
    peak = max(2 * n**3 / best, float(known.get(key, 0.0)))
    known[key] = peak
    try:
        atomic_write_text(cache, json.dumps(known, indent=2) + "\n")
    except OSError:
        pass  # a read-only home only costs a re-measure next time
    return peak


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class RunLog:
    """CSV + TensorBoard + loss.png for one run (rank 0 only).

    On resume, rows logged after the checkpoint's step (a killed run may have got further) are dropped,
    so the CSV of a resumed run reads like an uninterrupted one.
    """

    def __init__(self, out_dir: Path, tensorboard: bool = True, plot: bool = True, resume_step: int | None = None,
                 columns: tuple[str, ...] = ()) -> None:
        self.out_dir = out_dir
        self.fields = CSV_FIELDS + [c for c in columns if c not in CSV_FIELDS]  # a recipe's metrics after ours
        self.csv_path = out_dir / "log.csv"
        self.plot_path = out_dir / "loss.png"
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self._write_csv()
        self.plot = plot
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def _write_csv(self) -> None:
        def write(p: Path) -> None:
            with open(p, "w", newline="") as f:
                w = csv.DictWriter(f, self.fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(self.rows)

        atomic_write(self.csv_path, write)

    def log(self, row: dict[str, Any]) -> None:
        """One CSV row (the fields); TensorBoard also gets a recipe's extra metrics (other keys)."""
        extra = {k: v for k, v in row.items() if k not in CSV_FIELDS and v is not None}
        row = {k: ("" if row.get(k) is None else row[k]) for k in self.fields}
        self.rows.append(row)
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(row)
        if self.tb is not None:
            for key in ("train_loss", "val_loss", "val_ppl", "lr", "grad_norm", "tokens_per_sec", "mfu"):
                if row[key] != "":
                    self.tb.add_scalar(key, float(row[key]), int(row["step"]))
            for key, value in extra.items():
                self.tb.add_scalar(key, float(value), int(row["step"]))

    def text(self, tag: str, text: str, step: int) -> None:
        if self.tb is not None:
            self.tb.add_text(tag, text, step)

    def history(self, key: str) -> list[tuple[int, float]]:
        return [(int(r["step"]), float(r[key])) for r in self.rows if r.get(key) not in ("", None)]

    def draw(self) -> None:
        """Rewrite loss.png (train + val loss against step)."""
        if not self.plot:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for key, style in (("train_loss", "-"), ("val_loss", "o-")):
            pts = self.history(key)
            if pts:
                ax.plot(*zip(*pts), style, label=key.replace("_", " "), markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        atomic_write(self.plot_path, lambda p: fig.savefig(p, format="png", dpi=100))
        plt.close(fig)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
