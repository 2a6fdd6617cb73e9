"""The training loop every recipe runs: a model, a batch source, a loss function and hooks.

    summary = train_loop(model, loader, next_token_loss, save_model, train=TrainArgs(...), eval=EvalArgs(...),
                         log=LogArgs(...), out_dir="out/run", info=distributed.setup(device), seq_len=256,
                         hooks=Hooks(evaluate=val_loss, sample=greedy_sample), resume=latest_checkpoint(...))

Pretraining calls it with windows of prepared shards and next-token cross-entropy; finetuning
(classification, SFT with LoRA) and alignment (DPO) call it with their own batch source and loss.
The loop owns what they share: device placement, activation checkpointing, compile, DDP/FSDP, AdamW
over the trainable (requires_grad) parameters, the warmup-cosine schedule, gradient accumulation,
logging (console, CSV, TensorBoard, loss.png, MFU), periodic evaluation, atomic checkpoints, exact
resume (optimizer, data position, RNG states) and the final model + summary.json.

The batch source is an iterator of micro-batches (tuples/dicts of CPU tensors) with
`state_dict()` / `load_state_dict()` (its position, restored with this process's rank).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lmforge.training.config import EvalArgs, LogArgs, TrainArgs
from lmforge.training.state import (
    load_train_state,
    publish_final,
    remove_partials,
    save_train_checkpoint,
)
from lmforge.training.step import LossFn

if TYPE_CHECKING:
    import contextlib

    import torch

__all__ = ["Hooks", "train_loop"]


@dataclass
class Hooks:
    """What a recipe adds to the loop (each optional)."""

    evaluate: Callable[[torch.nn.Module, contextlib.AbstractContextManager],
                       float | tuple[float, dict[str, float | None]] | None] | None = None
    """`(model, autocast) -> val loss` (None: no val data), or `(val loss, {metric: value})` whose
    metrics are printed and logged with it. Called on every process (a collective under DDP/FSDP)."""
    sample: Callable[[dict[str, torch.Tensor], int], str | None] | None = None
    """`(full state dict, step) -> text` after each checkpoint, on rank 0: printed and logged."""
    columns: tuple[str, ...] = ()
    """log.csv columns besides the loop's own: the metrics the loss function and `evaluate` report."""


def train_loop(model: torch.nn.Module, batches: Iterator, loss_fn: LossFn,
               save_model: Callable[[Path, dict[str, torch.Tensor]], None], *,
               train: TrainArgs, eval: EvalArgs, log: LogArgs, out_dir: str | Path, info: Any,
               seq_len: int, hooks: Hooks | None = None, title: str = "train", data_note: str = "",
               bf16: bool = False, strategy: str = "ddp", compile: bool = False,
               activation_checkpointing: bool | Literal["mlp"] = False, keep_checkpoints: int = 2, resume: Path | None = None,
               run_config: dict[str, Any] | None = None, flops_per_token: float = 0.0) -> dict[str, Any]:
    """Train `model` for `train.max_steps` optimizer steps (or `train.max_minutes`); return the summary.

    Args:
        model: the plain model, on the CPU, with its initial (or resumed) weights; the loop moves,
            wraps (DDP/FSDP) and optionally compiles it. Frozen parameters (requires_grad False)
            are left out of the optimizer.
        batches: the micro-batch source (see the module docstring), already positioned for this rank.
        loss_fn: `(model, batch) -> (mean loss, metrics)`; metrics are summed over micro-batches,
            over processes, and logged with the loss.
        save_model: `(dir, full state dict)` writes the model files of a checkpoint dir.
        train: optimisation settings (batch sizes, schedule, AdamW, clipping, seed, limits).
        eval: when to evaluate, sample and checkpoint.
        log: console/CSV interval, TensorBoard, plot.
        out_dir: where log.csv, checkpoints/, final/ and summary.json go.
        info: the process group (`distributed.setup`).
        seq_len: tokens per sequence (tokens per step = global batch x seq_len).
        hooks: evaluation and sampling (see `Hooks`).
        title, data_note: the start-up line's model and data descriptions.
        bf16: bf16 autocast (fp32 weights) instead of fp32.
        strategy: "ddp" or "fsdp" with several processes.
        compile: torch.compile the model.
        activation_checkpointing: recompute each block's activations in the backward pass (True), or
            only each MLP's ("mlp"; see `checkpoint_blocks`).
        keep_checkpoints: training checkpoints kept under out_dir/checkpoints.
        resume: a training checkpoint to continue from (its model weights already loaded).
        run_config: the recipe's config, stored in each checkpoint.
        flops_per_token: training FLOPs per token, for MFU.
    """
    import torch

    from lmforge.training import distributed
    from lmforge.training.monitor import RunLog, format_duration, measured_peak_flops
    from lmforge.training.optim import lr_at, make_adamw
    from lmforge.training.state import get_rng_state, set_rng_state
    from lmforge.training.step import checkpoint_blocks, train_step

    hooks = hooks or Hooks()
    t, device, main, W = train, info.device, info.is_main, info.world_size
    state = load_train_state(resume) if resume is not None else {}
    model.to(device)
    if activation_checkpointing:
        checkpoint_blocks(model, "mlp" if activation_checkpointing == "mlp" else "block")
    if compile:
        model.compile()
    model = distributed.wrap(model, strategy, info)
    optimizer = make_adamw(model, t.lr, t.weight_decay, t.betas, t.eps)  # the trainable parameters only
    if state:
        distributed.load_optimizer_state(model, optimizer, state["optimizer"])
        batches.load_state_dict({**state["loader"], "rank": info.rank})

    # ---- the batch arithmetic, in one place ----
    # one optimizer step sees global_batch_size sequences: W processes x accum micro-batches x b sequences
    b = t.micro_batch_size
    accum = t.global_batch_size // (b * W)
    tokens_per_step = t.global_batch_size * seq_len
    step = int(state.get("step", 0))
    tokens = int(state.get("tokens", 0))
    elapsed_before = float(state.get("elapsed", 0.0))
    initial_val = state.get("initial_val_loss")
    # the latest val loss: a run resumed from its last checkpoint (killed while writing final/)
    # runs no step, and its summary still reports the loss that checkpoint was evaluated at
    val_loss = state.get("val_loss")

    out = Path(out_dir)
    ckpt_root = out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    if main:
        remove_partials(out)
    runlog = RunLog(out, log.tensorboard, log.plot, resume_step=step if state else None,
                    columns=hooks.columns) if main else None
    peak = measured_peak_flops(device, torch.bfloat16 if bf16 else torch.float32) * W
    if main:
        print(f"{title} on {W} x {device.type}, {'bf16-mixed' if bf16 else 'fp32'}{', ' + strategy if W > 1 else ''}"
              f"{' | ' + data_note if data_note else ''} | global batch {t.global_batch_size} x {seq_len} tokens = "
              f"{W} proc x {accum} accum x {b} micro"
              + (f" | resuming from step {step} ({resume})" if state else ""), flush=True)

    val_metrics: dict[str, float | None] = {}

    def evaluate() -> float | None:
        result = hooks.evaluate(model, autocast) if hooks.evaluate is not None else None
        if isinstance(result, tuple):
            result, more = result
            val_metrics.clear()
            val_metrics.update(more)
        return result

    def log_val(step: int, tokens: int, loss: float, elapsed: float, note: str = "") -> None:
        ppl = math.exp(min(loss, 50))
        print(f"step {step}: val loss {loss:.4f} (ppl {ppl:.1f})"
              + "".join(f" | {k} {v:.4g}" for k, v in val_metrics.items() if v is not None) + note, flush=True)
        runlog.log({"step": step, "tokens": tokens, "val_loss": loss, "val_ppl": ppl, "elapsed_s": elapsed,
                    **val_metrics})

    def checkpoint(step: int, tokens: int, elapsed: float) -> None:
        msd, osd = distributed.full_state_dicts(model, optimizer)  # collective under FSDP
        if main:
            train_state = {
                "step": step, "tokens": tokens, "elapsed": elapsed, "initial_val_loss": initial_val,
                "val_loss": val_loss, "optimizer": osd, "loader": batches.state_dict(), "rng": get_rng_state(device),
                "scheduler": {"kind": "warmup-cosine", "step": step}, "world_size": W,
                "config": json.dumps(run_config or {}),
            }
            save_train_checkpoint(ckpt_root, step, lambda d: save_model(d, msd), train_state, keep_checkpoints)
            text = hooks.sample(msd, step) if hooks.sample is not None else None
            if text is not None:
                print(f"sample @ {step}: {text!r}", flush=True)
                runlog.text("sample", text, step)
            runlog.draw()
        distributed.barrier(info)

    def next_batch() -> Any:
        return _to_device(next(batches), device)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    if state:
        # last, right before the first step: the set-up above draws random numbers (the matmul
        # peak measurement), which would shift a resumed run's dropout masks
        set_rng_state(state["rng"], device)
    model.train()
    if step == 0 and eval.initial:
        initial_val = evaluate()
        if main and initial_val is not None:
            log_val(0, 0, initial_val, 0.0, " before training")
    t_start = time.perf_counter() - elapsed_before
    t_session, start_step = time.perf_counter(), step
    t_window, tokens_window = time.perf_counter(), 0
    while step < t.max_steps:
        lr = lr_at(step, t.lr, t.min_lr, t.warmup_steps, t.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum, grad_norm, metrics = train_step(
            model, optimizer, next_batch, loss_fn, accum, t.grad_clip, autocast,
            grad_sync=lambda last: distributed.grad_sync(model, strategy, info, sync=last))
        step += 1
        tokens += tokens_per_step
        tokens_window += tokens_per_step

        out_of_time = False
        if t.max_minutes is not None:  # rank 0's clock decides for everyone
            out_of_time = distributed.broadcast_object((time.perf_counter() - t_start) > 60 * t.max_minutes, info)
        last = step >= t.max_steps or out_of_time
        if step % log.interval == 0 or last:
            train_loss = float(distributed.all_reduce_sum(loss_sum / accum, info)) / W
            extra = {k: float(distributed.all_reduce_sum(torch.as_tensor(v, dtype=torch.float64, device=device), info))
                     for k, v in metrics.items()}
            if grad_norm is not None:  # read only when logged: no device sync on the other steps
                grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            now = time.perf_counter()
            tok_s = tokens_window / max(now - t_window, 1e-9)
            t_window, tokens_window = now, 0
            if main:
                mfu = tok_s * flops_per_token / peak
                elapsed = now - t_start
                # from this session's pace (a resumed run's earlier sessions may have run elsewhere)
                eta = (t.max_steps - step) * (now - t_session) / max(step - start_step, 1)
                print(f"step {step}/{t.max_steps} | loss {train_loss:.4f} | lr {lr:.2e}"
                      + (f" | grad {grad_norm:.2f}" if grad_norm is not None else "")
                      + "".join(f" | {k} {v:.4g}" for k, v in extra.items())
                      + f" | {tok_s:,.0f} tok/s" + (f" | MFU {100 * mfu:.1f}%" if flops_per_token else "")
                      + f" | ETA {format_duration(eta)}", flush=True)
                runlog.log({"step": step, "tokens": tokens, "train_loss": train_loss, "lr": lr, "grad_norm": grad_norm,
                            "tokens_per_sec": tok_s, "mfu": mfu, "elapsed_s": elapsed, **extra})
        if step % eval.interval == 0 or last:
            val_loss = evaluate()
            elapsed = time.perf_counter() - t_start
            if main and val_loss is not None:
                log_val(step, tokens, val_loss, elapsed)
            checkpoint(step, tokens, elapsed)
            t_window, tokens_window = time.perf_counter(), 0  # eval time is not training throughput
        if last:
            break

    # ---- the end: final model + summary ----
    elapsed = time.perf_counter() - t_start
    summary = {
        "steps": step, "tokens": tokens, "seconds": round(elapsed, 2),
        "initial_val_loss": initial_val, "val_loss": val_loss,
        "val_ppl": math.exp(min(val_loss, 50)) if val_loss is not None else None,
        "final": str(out / "final"), "checkpoint": str(ckpt_root / f"step-{step:06d}"),
    }
    if main:
        from lmforge._io import atomic_write_text

        publish_final(ckpt_root / f"step-{step:06d}", out / "final")
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        before = f", {initial_val:.4f} before training" if initial_val is not None else ""
        vl = f"final val loss {val_loss:.4f} (ppl {summary['val_ppl']:.1f}){before}" if val_loss is not None else "no val split"
        print(f"done: {step} steps, {tokens:,} tokens in {format_duration(elapsed)} | {vl} | model: {out / 'final'}",
              flush=True)
        runlog.close()
    distributed.barrier(info)
    return summary


def _to_device(batch: Any, device: torch.device) -> Any:
    """A micro-batch (a tensor, or a tuple/list/dict of them) on `device`."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(x, device) for x in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True) if hasattr(batch, "to") else batch
