"""Batched decoding: one `lmf_decode_step` of M rows against the machine's measured GEMM peak.

    .venv/bin/python benchmarks/decode_step.py                       # SmolLM2-135M shape, fp32, M = 1, 4, 16
    .venv/bin/python benchmarks/decode_step.py --rows 16 --rounds 9 --model smollm2-gguf

At 16 rows a decode step is compute-bound: every weight is read once and used 16 times. So its
yardstick is the GEMM speed of the machine, measured in the same process on the same shapes:
`torch.mm` (MKL sgemm) of an (M, K) activation by each (K, N) weight matrix of the model, head
included, best of `--mm-repeats` calls each; the peak is the best GFLOP/s over those shapes (their
weights then sit in cache, so it is a generous peak: the step has to stream its 540 MB of weights).

Method: the step runs `DecodePlan.step` (what `GPT.forward` calls) for M sequences at position
`--position`, logits included; its FLOPs are 2 * M * (every matrix's weights, the head included),
attention not counted. Each round measures the peak, then every ISA variant in turn (A B A B ...):
`avx512` = the kernels' default on a CPU with AVX-512F, `avx2` = the same library with its AVX-512
paths off (`lmf_use_avx512(0)`); a step's time is the best of `--steps` steps. Reported: medians over
rounds of step time, GFLOP/s, % of that round's peak, and of the per-round ratio avx512 / avx2.
The CPU model is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as generate_speed.py: no spinning OpenMP team

import torch  # noqa: E402

from lmforge import cpu_kernels  # noqa: E402
from lmforge.config import Config  # noqa: E402
from lmforge.fast_decode import install_fast_decode  # noqa: E402
from lmforge.model import GPT  # noqa: E402


def cpu_model() -> str:
    """The CPU's model name and vector ISA, as /proc/cpuinfo and torch see them."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    family = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("cpu family")), "?")
    return f"{name} (family {family}), {os.cpu_count()} CPUs, torch capability {torch.backends.cpu.get_cpu_capability()}"


def load_model(name: str) -> GPT:
    if name == "smollm2-gguf":
        from lmforge.assets import fetch_asset
        from lmforge.convert.gguf import load_gguf

        path = fetch_asset("smollm2-135m-instruct")
        config, sd, _ = load_gguf(path, dtype=torch.float32)
        return GPT.from_state_dict(config, sd, source=str(path)).eval()
    torch.manual_seed(0)
    model = GPT(Config.from_name(name))
    model.init_weights(std=0.02)
    return model.eval()


def matrices(model: GPT) -> list[torch.Tensor]:
    """Every weight matrix a decode step multiplies by, each once (a tied head counts once)."""
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out.append(m.weight)
    return out


def best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def gemm_peak(weights: list[torch.Tensor], M: int, repeats: int) -> float:
    """Best GFLOP/s of torch.mm over the model's (M, K) x (K, N) shapes, best of `repeats` each."""
    best = 0.0
    for K, N in sorted({(w.size(1), w.size(0)) for w in weights}):
        x, w = torch.randn(M, K), torch.randn(N, K)
        best = max(best, 2 * M * K * N / best_time(lambda: torch.mm(x, w.t()), repeats) / 1e9)
    return best


@torch.inference_mode()
def step_time(model: GPT, M: int, position: int, steps: int) -> float:
    plan = model.runner.plan
    cache = model.new_kv_cache(M, position + 8)
    pos = torch.full((M, 1), position)
    x = torch.randn(M, 1, model.config.n_embd)
    cos, sin = model._rope(pos, torch.float32)
    assert plan.step(x, pos, cache, None, cos, sin) is not None
    return best_time(lambda: plan.step(x, pos, cache, None, cos, sin), steps)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="SmolLM2-135M", help="a named config (random weights) or smollm2-gguf")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16], help="sequences per step (M)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps per measurement (best taken)")
    p.add_argument("--mm-repeats", type=int, default=10)
    p.add_argument("--position", type=int, default=64, help="the rows' position in their sequences")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lib = cpu_kernels.load()
    model = load_model(args.model)
    if lib is None or not install_fast_decode(model):
        raise SystemExit("error: the CPU kernels cannot run this model on this machine")
    variants = ["avx512", "avx2"] if lib.lmf_use_avx512(-1) else ["avx2"]
    weights = matrices(model)
    n_weights = sum(w.numel() for w in weights)
    print(f"{cpu_model()}; {torch.get_num_threads()} threads; {args.model}: {n_weights / 1e6:.1f}M matrix weights; "
          f"position {args.position}; rounds {args.rounds}")
    rows = []
    for M in args.rows:
        runs: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}  # (seconds, peak GF/s)
        for _ in range(args.rounds):
            peak = gemm_peak(weights, M, args.mm_repeats)
            for v in variants:
                lib.lmf_use_avx512(int(v == "avx512"))
                runs[v].append((step_time(model, M, args.position, args.steps), peak))
        lib.lmf_use_avx512(1)
        for v in variants:
            t = statistics.median(s for s, _ in runs[v])
            gflops = [2 * M * n_weights / s / 1e9 for s, _ in runs[v]]
            row = {"rows": M, "isa": v, "step ms": 1e3 * t, "GFLOP/s": statistics.median(gflops),
                   "mm peak GFLOP/s": statistics.median(pk for _, pk in runs[v]),
                   "% peak": 100 * statistics.median(g / pk for g, (_, pk) in zip(gflops, runs[v]))}
            if v != variants[-1]:
                row["x avx2"] = statistics.median(b / a for (a, _), (b, _) in zip(runs[v], runs[variants[-1]]))
            rows.append(row)
            print("  ".join(f"{k} {val:.2f}" if isinstance(val, float) else f"{k} {val}" for k, val in row.items()),
                  flush=True)
    return rows


if __name__ == "__main__":
    main()
