"""Training speed of lmforge's GPT vs HF transformers' GPTNeoXForCausalLM, side by side in one process.

    .venv/bin/python benchmarks/train_speed.py                      # pythia-14m and pythia-160m, fp32 + bf16
    .venv/bin/python benchmarks/train_speed.py --models pythia-14m --rounds 3 --steps 2

Both sides run the same plain loop (forward, cross-entropy, backward, AdamW step) on the same random
batches of micro-batch 4 x 256 tokens. Method: alternate A/B timing rounds (ours, theirs, ours, …) so
machine noise hits both sides alike, and report the *median of the pairwise ratios*; never an
absolute time as a pass/fail. Reported per row: tokens/s, MFU against the measured matmul peak
(lmforge.training.monitor), peak memory (CUDA: max allocated; CPU: not separable per model, so "-").

Targets (from the issue): ours fp32 >= 1.15x transformers fp32; ours bf16 autocast >= 1.8x
transformers fp32, with a bf16 loss curve that tracks fp32's (`--track-steps`: both precisions trained
from the same init on the same batches, max |loss difference| reported).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def build_pair(name: str, device: torch.device):
    """Our GPT and the HF GPTNeoX model for one registry config (same shapes, random init)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from lmforge.config import Config
    from lmforge.model import GPT

    config = Config.from_name(name)
    torch.manual_seed(0)
    ours = GPT(config)
    ours.init_weights()
    hf_cfg = GPTNeoXConfig(**{k: v for k, v in config.to_hf().items() if k not in ("architectures", "model_type")})
    hf_cfg._attn_implementation = "sdpa"
    theirs = GPTNeoXForCausalLM(hf_cfg)
    return config, ours.to(device).train(), theirs.to(device).train()


def make_step(model, hf: bool, bf16: bool, device: torch.device):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=x).logits if hf else model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def timed(step, batches, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for x, y in batches:
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench(name: str, args, device: torch.device) -> list[dict]:
    from lmforge.training.monitor import flops_per_token, measured_peak_flops

    config, ours, theirs = build_pair(name, device)
    B, T = args.batch, args.seq
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(args.steps):
        ids = torch.randint(0, config.vocab_size, (B, T + 1), generator=g)
        batches.append((ids[:, :-1].to(device), ids[:, 1:].to(device)))
    rows = []
    fpt = flops_per_token(config, T)
    base = None  # HF fp32 tokens/s: the reference of every ratio
    for prec in args.precisions:
        bf16 = prec == "bf16"
        if bf16 and device.type == "cpu" and not args.allow_emulated_bf16:
            from lmforge.training.pretrain import cpu_has_bf16

            if not cpu_has_bf16():
                print(f"{name} bf16: skipped (this CPU has no native bf16; pass --allow-emulated-bf16 to time it anyway)")
                continue
        steps = {"ours": make_step(ours, False, bf16, device), "hf": make_step(theirs, True, bf16, device)}
        steps["ours"](*batches[0])  # warm-up both (allocator, kernels)
        steps["hf"](*batches[0])
        times = {"ours": [], "hf": []}
        for r in range(args.rounds):
            order = ("ours", "hf") if r % 2 == 0 else ("hf", "ours")  # alternate who goes first
            for who in order:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times[who].append(timed(steps[who], batches, device))
        ratios = [h / o for o, h in zip(times["ours"], times["hf"])]  # > 1: ours is faster
        peak = measured_peak_flops(device, torch.bfloat16 if bf16 else torch.float32)
        for who in ("ours", "hf"):
            tok_s = B * T * args.steps / statistics.median(times[who])
            rows.append({"model": name, "precision": prec, "impl": who, "tokens_per_sec": tok_s,
                         "mfu": tok_s * fpt / peak})
        if prec == "fp32":
            base = rows[-1]["tokens_per_sec"]
        rows[-2]["ratio_vs_hf_same_precision"] = statistics.median(ratios)
        if base is not None:
            rows[-2]["ratio_vs_hf_fp32"] = rows[-2]["tokens_per_sec"] / base
        if device.type == "cuda":
            rows[-2]["peak_mem_gib"] = rows[-1]["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        show(rows[-2:])  # as soon as measured: a long run cut short still reports
    if args.track_steps:
        rows.append({"model": name, "bf16_vs_fp32_max_loss_diff": track(name, args, device, config)})
        show(rows[-1:])
    return rows


def show(rows: list[dict]) -> None:
    for row in rows:
        print("  " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)


def track(name: str, args, device: torch.device, config) -> float:
    """Train ours in fp32 and in bf16 autocast from the same init on the same batches; max |loss diff|."""
    from lmforge.model import GPT

    curves = []
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = GPT(config)
        model.init_weights()
        model.to(device).train()
        step = make_step(model, False, bf16, device)
        g = torch.Generator().manual_seed(2)
        # a learnable stream (repeated random phrases), so the loss really moves
        phrase = torch.randint(0, config.vocab_size, (64,), generator=g)
        curve = []
        for _ in range(args.track_steps):
            starts = torch.randint(0, 64, (args.batch,), generator=g)
            ids = torch.stack([phrase.roll(-int(s)).repeat((args.seq + 1) // 64 + 1)[: args.seq + 1] for s in starts])
            curve.append(step(ids[:, :-1].to(device), ids[:, 1:].to(device)))
        curves.append(curve)
    print(f"{name}: fp32 loss {curves[0][0]:.3f} -> {curves[0][-1]:.3f}, bf16 {curves[1][0]:.3f} -> {curves[1][-1]:.3f}")
    return max(abs(a - b) for a, b in zip(*curves))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["pythia-14m", "pythia-160m"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per timing round")
    p.add_argument("--rounds", type=int, default=5, help="A/B rounds (the median of pairwise ratios is reported)")
    p.add_argument("--track-steps", type=int, default=0, help="also compare bf16 and fp32 loss curves over N steps")
    p.add_argument("--allow-emulated-bf16", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads, micro-batch {args.batch}x{args.seq}, "
          f"{args.rounds} A/B rounds of {args.steps} steps")
    for name in args.models:
        bench(name, args, device)


if __name__ == "__main__":
    main()
