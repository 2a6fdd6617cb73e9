"""Training speed of lmforge's real training step vs HF transformers' GPTNeoXForCausalLM, side by side in one process.

    .venv/bin/python benchmarks/train_speed.py                      # pythia-14m and pythia-160m, fp32 + bf16
    .venv/bin/python benchmarks/train_speed.py --models pythia-14m --rounds 3 --steps 2
    .venv/bin/python benchmarks/train_speed.py --compile            # adds an "ours+compile" row

The lmforge side runs `lmforge.training.step.train_step` — exactly what `lmforge pretrain` does
per optimizer step: forward to the final hidden states, the fused chunked head + cross-entropy, backward,
gradient clipping (1.0), AdamW over pretrain's parameter groups (fused kernel), zero_grad. The HF side is
the plain loop a user writes: forward, `F.cross_entropy` on the full logits, backward,
`torch.optim.AdamW` with its defaults, zero_grad. Both train on the same random batches of micro-batch
4 x 256 tokens. Method: alternate A/B timing rounds (ours, theirs, ours, …) so machine noise hits both
sides alike, and report the *median of the pairwise ratios*; never an absolute time as a pass/fail.
Reported per row: tokens/s, MFU against the measured matmul peak (lmforge.training.monitor), peak memory
(CUDA: max allocated; CPU: not separable per model, so "-").

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
    """One optimizer step on one micro-batch: lmforge's `train_step`, or HF's plain loop."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    if not hf:
        from lmforge.training.config import TrainArgs
        from lmforge.training.optim import make_adamw
        from lmforge.training.step import next_token_loss, train_step

        t = TrainArgs()  # pretrain's defaults: lr, betas, weight decay, eps, grad_clip
        opt = make_adamw(model, t.lr, t.weight_decay, t.betas, t.eps)

        def step(x: torch.Tensor, y: torch.Tensor) -> float:
            loss_sum, _, _ = train_step(model, opt, lambda: (x, y), next_token_loss, 1, t.grad_clip, autocast)
            return float(loss_sum)

        return step
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with autocast:
            logits = model(input_ids=x).logits
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
            from lmforge.training.step import cpu_has_bf16

            if not cpu_has_bf16():
                print(f"{name} bf16: skipped (this CPU has no native bf16; pass --allow-emulated-bf16 to time it anyway)")
                continue
        steps = {"ours": make_step(ours, False, bf16, device), "hf": make_step(theirs, True, bf16, device)}
        first = {}
        for who in ("ours", "hf"):  # warm-up (allocator, kernels)
            first[who] = timed(steps[who], batches[:1], device)
        if args.compile:
            import copy

            compiled = copy.deepcopy(ours)
            compiled.compile()
            steps["ours+compile"] = make_step(compiled, False, bf16, device)
            first["ours+compile"] = timed(steps["ours+compile"], batches[:1], device)  # compiles
            print(f"  {name} {prec}: first step (compile included) {first['ours+compile']:.1f} s "
                  f"vs {first['ours']:.1f} s eager", flush=True)
        times = {who: [] for who in steps}
        peaks = dict.fromkeys(steps, 0.0)
        for r in range(args.rounds):
            order = list(steps) if r % 2 == 0 else list(reversed(steps))  # alternate who goes first
            for who in order:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times[who].append(timed(steps[who], batches, device))
                if device.type == "cuda":
                    peaks[who] = max(peaks[who], torch.cuda.max_memory_allocated() / 2**30)
        peak = measured_peak_flops(device, torch.bfloat16 if bf16 else torch.float32)
        new_rows = []
        for who in steps:
            tok_s = B * T * args.steps / statistics.median(times[who])
            row = {"model": name, "precision": prec, "impl": who, "tokens_per_sec": tok_s, "mfu": tok_s * fpt / peak}
            if who != "hf":
                # > 1: ours is faster; per-round ratios against the HF round timed next to it
                row["ratio_vs_hf_same_precision"] = statistics.median(
                    h / o for o, h in zip(times[who], times["hf"]))
            if device.type == "cuda":
                row["peak_mem_gib"] = peaks[who]
            new_rows.append(row)
        if prec == "fp32":
            base = next(r["tokens_per_sec"] for r in new_rows if r["impl"] == "hf")
        if base is not None:
            for row in new_rows:
                if row["impl"] != "hf":
                    row["ratio_vs_hf_fp32"] = row["tokens_per_sec"] / base
        rows += new_rows
        show(new_rows)  # as soon as measured: a long run cut short still reports
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
    p.add_argument("--compile", action="store_true", help="also time lmforge's step with the model torch.compile'd")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads, micro-batch {args.batch}x{args.seq}, "
          f"{args.rounds} A/B rounds of {args.steps} steps")
    for name in args.models:
        bench(name, args, device)


if __name__ == "__main__":
    main()
