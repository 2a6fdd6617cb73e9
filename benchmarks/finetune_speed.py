"""Finetuning speed and memory: lmforge's LoRA and full steps vs transformers (+ peft), side by side.

    .venv/bin/python benchmarks/finetune_speed.py                       # speed (A/B rounds) + memory
    .venv/bin/python benchmarks/finetune_speed.py --rounds 3 --skip-memory
    .venv/bin/python benchmarks/finetune_speed.py --skip-speed          # peak RSS per variant only

Model: SmolLM2-135M-Instruct, the real weights (`fetch_asset`), fp32 on the CPU. The transformers
side is `LlamaForCausalLM` holding the very same weights (lmforge's `convert_to_hf` of our state dict,
as `--to hf` writes them), SDPA attention; its LoRA is `peft.get_peft_model` with the same rank,
alpha, dropout and targets (`all-linear`) as lmforge's recipe (`configs/finetune/tasks-smollm2.yaml`).

The lmforge side runs `lmforge.training.step.train_step` with `lm_loss`, exactly what `lmforge
finetune sft` runs per micro-batch (fused chunked head + cross-entropy, backward, clipping at 1.0,
fused AdamW over the trainable parameters). The transformers side is the plain loop a user writes:
forward, `F.cross_entropy` on the logits, backward, `torch.optim.AdamW` over the trainable parameters,
zero_grad. Both train on the same random batches (micro-batch 4 x 256 tokens).

Speed: alternating rounds (ours, theirs, theirs, ours, ...) so machine noise hits both alike; the
*median of the per-round ratios* is reported, never an absolute time as a pass/fail.
Memory: each variant trains in a fresh subprocess (glibc's mmap threshold fixed at 1 MiB, so freed
tensors leave the RSS); after the model is built (its source tensors freed), the process's peak-RSS
counter (VmHWM) is reset and 2 steps run; the figure is that peak, so it is the training footprint
(weights, gradients, optimizer state, activations), not the loading.

Targets (issue 14): LoRA step >= 1.3x transformers + peft tokens/s; full step >= 1.2x transformers;
peak memory LoRA <= 0.5x full; LoRA on an int8 base lower still.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

LORA = {"r": 16, "alpha": 32.0, "dropout": 0.05, "targets": "all-linear"}
VARIANTS = ("ours-lora", "hf-lora", "ours-full", "hf-full", "ours-lora-int8", "ours-lora-ckpt", "ours-lora-ckpt-mlp",
            "ours-lora-int8-ckpt", "ours-full-ckpt-mlp")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load():
    """(config, fp32 state dict) of SmolLM2-135M-Instruct."""
    from lmforge.finetune.common import load_pretrained, local_path

    config, sd, _ = load_pretrained(local_path("smollm2-135m-instruct"))
    return config, sd


def build(variant: str, config, sd):
    """(model, step) for one variant; `step(x, y)` runs one optimizer step on one micro-batch."""
    if variant.startswith("ours"):
        from lmforge.finetune.common import build_model
        from lmforge.finetune.method import MethodArgs
        from lmforge.training.optim import make_adamw
        from lmforge.training.step import lm_loss, train_step

        if variant.startswith("ours-full"):
            method = MethodArgs(name="full")
        else:
            method = MethodArgs(name="lora", lora=dict(LORA), quantize="int8" if "int8" in variant else "none")
        model, _ = build_model(config, sd, method)
        if "ckpt" in variant:  # activation checkpointing, as `train_loop(activation_checkpointing=True or "mlp")`
            from lmforge.training.step import checkpoint_blocks

            checkpoint_blocks(model, "mlp" if variant.endswith("mlp") else "block")
        opt = make_adamw(model, 1e-4, 0.0, (0.9, 0.95), 1e-8)

        def loss_fn(m, batch):
            return lm_loss(m, batch[0], batch[1]), {}

        def step(x: torch.Tensor, y: torch.Tensor) -> float:
            loss_sum, _, _ = train_step(model, opt, lambda: (x, y), loss_fn, 1, 1.0)
            return float(loss_sum)

        return model, step
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.convert.hf import convert_to_hf

    hf_cfg = LlamaConfig(**{k: v for k, v in config.to_hf().items() if k not in ("architectures", "model_type")})
    hf_cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(hf_cfg)
    missing, unexpected = model.load_state_dict(convert_to_hf(sd, config), strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    model.tie_weights()
    if variant == "hf-lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                 target_modules="all-linear"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return model, step


def batches(config, n: int, B: int, T: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, config.vocab_size, (B, T + 1), generator=g)
        out.append((ids[:, :-1], ids[:, 1:]))
    return out


def timed(step, data) -> float:
    t0 = time.perf_counter()
    for x, y in data:
        step(x, y)
    return time.perf_counter() - t0


def speed(args) -> list[dict]:
    config, sd = load()
    data = batches(config, args.steps, args.batch, args.seq)
    rows = []
    for ours, theirs in ((f"ours-{p}", f"hf-{p.partition('-')[0]}") for p in args.pairs):
        steps = {v: build(v, config, sd)[1] for v in (ours, theirs)}
        first = {v: timed(steps[v], data[:1]) for v in steps}  # warm-up
        times = {v: [] for v in steps}
        for r in range(args.rounds):
            for v in (ours, theirs) if r % 2 == 0 else (theirs, ours):
                times[v].append(timed(steps[v], data))
                print(f"  round {r}: {v} {times[v][-1]:.2f} s", flush=True)
        tokens = args.batch * args.seq * args.steps
        row = {"pair": f"{ours} vs {theirs}", "ours_tok_s": tokens / statistics.median(times[ours]),
               "theirs_tok_s": tokens / statistics.median(times[theirs]),
               "ratio": statistics.median(h / o for o, h in zip(times[ours], times[theirs])),
               "warmup_s": {v: round(s, 2) for v, s in first.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del steps
    return rows


def _reset_peak() -> bool:
    """Reset this process's peak RSS counter (Linux: `5` into /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mib(field: str) -> float | None:
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def _rss_mib() -> float:
    return _status_mib("VmRSS") or 0.0


def _peak_rss_mib() -> float:
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(variant: str, args) -> None:
    import gc

    config, sd = load()
    _, step = build(variant, config, sd)
    del sd
    gc.collect()
    try:  # hand the loading's freed memory back to the OS, so the peak below is the training's
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    start = _rss_mib()
    data = batches(config, 2, args.batch, args.seq)
    exact = _reset_peak()
    for x, y in data:
        step(x, y)
    print(json.dumps({"variant": variant, "peak_rss_mib": _peak_rss_mib(), "start_rss_mib": start, "reset": exact}),
          flush=True)


def memory(args) -> dict[str, float]:
    out = {}
    for v in args.variants:
        cmd = [sys.executable, __file__, "--memory-child", v, "--batch", str(args.batch), "--seq", str(args.seq)]
        # glibc keeps freed blocks below its (growing) mmap threshold in the heap, so RSS would count
        # the allocator's cache; a fixed 1 MiB threshold returns every large tensor to the OS when freed
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "1048576")}
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        rec = json.loads(res.stdout.strip().splitlines()[-1])
        out[v] = rec["peak_rss_mib"]
        print(f"  {v}: peak RSS while training {rec['peak_rss_mib']:.0f} MiB (model built: {rec['start_rss_mib']:.0f} MiB)"
              + ("" if rec["reset"] else " (process peak: the counter could not be reset)"), flush=True)
    for v in [v for v in VARIANTS if "lora" in v]:
        full = out.get("ours-full" if v.startswith("ours") else "hf-full")
        if v in out and full:
            print(f"  {v} / full: {out[v] / full:.2f}x", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=1, help="optimizer steps per timing round")
    p.add_argument("--rounds", type=int, default=4, help="A/B rounds (the median of pairwise ratios is reported)")
    p.add_argument("--pairs", nargs="+", default=["lora", "full"], choices=["lora", "full", "lora-ckpt-mlp"],
                   help="speed pairs to time (lora-ckpt-mlp: ours with MLP checkpointing vs transformers + peft)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="memory variants")
    p.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__} | micro-batch "
          f"{args.batch}x{args.seq}, fp32 | LoRA {LORA} | {args.rounds} A/B rounds of {args.steps} steps", flush=True)
    if not args.skip_speed:
        speed(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
