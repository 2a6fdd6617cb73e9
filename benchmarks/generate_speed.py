"""Batch-1 CPU decode speed: lmforge vs transformers, same weights, side by side in one run.

    .venv/bin/python benchmarks/generate_speed.py                      # random SmolLM2-135M + Pythia-160M shapes
    .venv/bin/python benchmarks/generate_speed.py --models smollm2-gguf --rounds 5
    .venv/bin/python benchmarks/generate_speed.py --variants hf,raw,int8 --new-tokens 32   # quick look

Method (the machine is shared, so speed swings minute to minute): `torch.set_num_threads(--threads)`,
`OMP_WAIT_POLICY=PASSIVE` unless set otherwise (see below),
one untimed warm-up of every variant, then `--rounds` rounds; in each round every variant runs once,
in turn (A B C A B C …), and a large-tensor copy measures the memory bandwidth of that moment.
Reported: medians over rounds of tokens/s and of the per-round ratio to transformers, and the
roofline = copy bandwidth / weight bytes read per token (one read of every matrix, the head included).
The copy bandwidth (STREAM convention: bytes read + bytes written per second) is measured right
before and right after every timed run, and the larger of the two sets that run's roofline (the
bandwidth swings with the neighbours' load; taking the larger never flatters the % roofline).
Beside it, `% read` divides the bytes the run read per second by a read-only stream (`torch.sum`
over the same 256 MB, measured the same way): a decoder only reads its weights.

Variants:
    hf      transformers `model.generate(do_sample=False)`, fp32 (the reference)
    loop    lmforge `model.forward` loop with a KVCache, greedy, `logits_to_keep=1`, fp32, through
            GPT's own Python layer loop (the one-call decoder `lmforge.fast_decode` switched off)
    raw     the same loop as `LLM.load` sets the model up on CPU: fp32 weights as they are, each
            step's layers in one `lmforge.fast_decode` kernel call
    engine  lmforge `generate.generate` (Engine, SamplingParams, ignore_eos), fp32 (fast_decode on)
    fp32k   raw loop after `quantize_model(model, "fp32")` (same fp32 weights, lmforge's CPU kernels)
    int8    raw loop after `quantize_model(model, "int8")` (weight-only int8, per-channel scales)
    bf16    raw loop after `quantize_model(model, "bf16")` (bf16 weights, fp32 activations)
tokens/s counts the new tokens over the whole call (prefill of the short prompt included) for every
variant alike; TTFT (`--ttft-prompt` tokens, one new token) is timed separately.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning. Must be set before torch loads libgomp; it applies
# to transformers and lmforge alike (same process). On a busy machine the default (spin) makes
# every 2-thread parallel region wait for a descheduled spinner: prefill was 15x slower here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from lmforge.config import Config  # noqa: E402
from lmforge.model import GPT  # noqa: E402

VARIANTS = ("hf", "loop", "raw", "engine", "fp32k", "int8", "bf16")


# ---------------------------------------------------------------------------------------------
# models: the same weights in lmforge and transformers
# ---------------------------------------------------------------------------------------------
def random_pair(name: str, tmp: Path):
    """A random-weight lmforge model of the named shape and the same weights in transformers."""
    from transformers import AutoModelForCausalLM

    from lmforge.convert.hf import export_hf

    torch.manual_seed(0)
    config = Config.from_name(name)
    model = GPT(config)
    model.init_weights(std=0.02)
    out = export_hf(model.state_dict(), config, tmp / name)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    return model.eval(), hf.eval()


def gguf_pair(tmp: Path):
    """SmolLM2-135M-Instruct real weights (GGUF, dequantized to fp32) in both libraries."""
    from transformers import AutoModelForCausalLM

    from lmforge.assets import fetch_asset
    from lmforge.convert.gguf import load_gguf

    path = fetch_asset("smollm2-135m-instruct")
    config, sd, _ = load_gguf(path, dtype=torch.float32)
    model = GPT.from_state_dict(config, sd, source=str(path)).eval()
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model, hf.eval()


MODELS: dict[str, Callable[[Path], tuple]] = {
    "smollm2-random": lambda tmp: random_pair("SmolLM2-135M", tmp),
    "pythia-random": lambda tmp: random_pair("pythia-160m", tmp),
    "smollm2-gguf": gguf_pair,
}


# ---------------------------------------------------------------------------------------------
# what each variant runs
# ---------------------------------------------------------------------------------------------
@torch.inference_mode()
def raw_decode(model: GPT, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    """Greedy decoding with the bare model: prefill, then one `forward` per token."""
    P = prompt.numel()
    cache = model.new_kv_cache(1, P + new_tokens)
    logits = model(prompt[None], input_pos=torch.arange(P), cache=cache, logits_to_keep=1)
    tok = logits[0, -1].argmax()
    out = [int(tok)]
    pos = torch.tensor([P])
    for _ in range(new_tokens - 1):
        logits = model(tok.view(1, 1), input_pos=pos, cache=cache, logits_to_keep=1)
        tok = logits[0, -1].argmax()
        out.append(int(tok))
        pos += 1
    return out


def engine_decode(model: GPT, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    from lmforge.generate import generate
    from lmforge.sampling import SamplingParams

    with torch.inference_mode():
        done = generate(model, None, prompt.tolist(), SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
    return list(done.token_ids)


@torch.inference_mode()
def hf_decode(hf, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    out = hf.generate(prompt[None], attention_mask=torch.ones(1, prompt.numel(), dtype=torch.long),
                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                      pad_token_id=0, eos_token_id=None)
    return out[0, prompt.numel():].tolist()


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes read per decoded token: every parameter/buffer once, except embedding tables (one row)."""
    seen: set[int] = set()
    total = 0
    embeds = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Embedding)}
    heads = {id(p) for n, p in module.named_parameters(remove_duplicate=False) if n.endswith("lm_head.weight")}
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen or t.dim() < 1:
            continue
        seen.add(id(t))
        if id(t) in embeds and id(t) not in heads:  # a tied head is read whole by the head
            continue
        total += t.numel() * t.element_size()
    return total


def copy_bandwidth(buf: tuple[torch.Tensor, torch.Tensor]) -> float:
    """STREAM-style copy bandwidth, bytes read + bytes written per second (best of 3)."""
    src, dst = buf
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * src.element_size() / best


def read_bandwidth(buf: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Read-only streaming bandwidth: bytes summed per second by `torch.sum` (best of 3). A decoder
    only reads its weights, so this is the tighter ceiling; it lands close to the copy figure here."""
    src = buf[0]
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        src.sum()
        best = min(best, time.perf_counter() - t)
    return src.numel() * src.element_size() / best


def timed(fn: Callable[[], list[int]]) -> tuple[float, list[int]]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def bench_model(name: str, args, tmp: Path, buf) -> list[dict]:
    from lmforge.fast_decode import install_fast_decode
    from lmforge.inference import prepare_for_inference
    from lmforge.quantize import fuse_projections, quantize_model

    t0 = time.perf_counter()
    model, hf = MODELS[name](tmp)
    print(f"\n## {name}  ({model.config.name}, loaded in {time.perf_counter() - t0:.0f}s)", flush=True)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (args.prompt_tokens,), generator=g)
    long_prompt = torch.randint(0, model.config.vocab_size, (args.ttft_prompt,), generator=g)

    loop = copy.deepcopy(model)
    loop.runner = None  # GPT's own layer loop
    prepare_for_inference(model)  # what LLM.load does on CPU
    models = {"hf": hf, "loop": loop, "raw": model, "engine": model}
    for variant in ("int8", "bf16"):
        if variant in args.variants:
            models[variant] = prepare_for_inference(copy.deepcopy(loop), variant)
    if "fp32k" in args.variants:  # the same fp32 weights as QuantizedLinear, q/k/v and gate/up fused
        fp32k = quantize_model(copy.deepcopy(loop), "fp32")
        install_fast_decode(fp32k, fuse_projections(fp32k))
        models["fp32k"] = fp32k
    runners = {
        "hf": lambda m, p, n: hf_decode(m, p, n),
        "loop": raw_decode, "raw": raw_decode, "engine": engine_decode, "fp32k": raw_decode, "int8": raw_decode, "bf16": raw_decode,
    }
    variants = [v for v in args.variants if v in models]
    nbytes = {v: weight_bytes(models[v]) for v in variants}

    # warm-up (allocator, MKL, oneDNN, kernel compilation) and a parity check of greedy tokens
    outs = {v: runners[v](models[v], prompt, args.new_tokens) for v in variants}
    for v in variants:
        same = sum(a == b for a, b in zip(outs[v], outs["hf"])) if "hf" in outs else -1
        print(f"  warm-up {v:6s}: {same}/{args.new_tokens} greedy tokens equal to transformers'", flush=True)

    tps = {v: [] for v in variants}
    ttft = {v: [] for v in variants}
    bw = {v: [] for v in variants}  # copy bandwidth around each timed run
    rbw = {v: [] for v in variants}  # read-only bandwidth, likewise
    for r in range(args.rounds):
        for v in variants:
            before, rbefore = copy_bandwidth(buf), read_bandwidth(buf)
            dt, out = timed(lambda: runners[v](models[v], prompt, args.new_tokens))
            tps[v].append(len(out) / dt)
            bw[v].append(max(before, copy_bandwidth(buf)))
            rbw[v].append(max(rbefore, read_bandwidth(buf)))
        if args.ttft_prompt:
            for v in variants:
                dt, _ = timed(lambda: runners[v](models[v], long_prompt, 1))
                ttft[v].append(dt)
        line = "  ".join(f"{v} {tps[v][-1]:5.1f}" for v in variants)
        copy_bw = statistics.median(b[-1] for b in bw.values())
        read_bw = statistics.median(b[-1] for b in rbw.values())
        print(f"  round {r + 1}: copy {copy_bw / 1e9:5.1f} GB/s, read {read_bw / 1e9:5.1f} GB/s  tok/s: {line}",
              flush=True)

    rows = []
    for v in variants:
        roof = [b / nbytes[v] for b in bw[v]]
        row = {
            "model": name, "variant": v, "MB/token": nbytes[v] / 1e6,
            "tok/s": statistics.median(tps[v]),
            "x hf": statistics.median(a / b for a, b in zip(tps[v], tps["hf"])) if "hf" in tps else float("nan"),
            "roofline tok/s": statistics.median(roof),
            "% roofline": 100 * statistics.median(a / b for a, b in zip(tps[v], roof)),
            "ttft ms": 1e3 * statistics.median(ttft[v]) if ttft[v] else float("nan"),
            "ttft x hf": (statistics.median(b / a for a, b in zip(ttft[v], ttft["hf"]))
                          if ttft[v] and "hf" in ttft else float("nan")),
            "GB/s copy": statistics.median(bw[v]) / 1e9,
            "GB/s read": statistics.median(rbw[v]) / 1e9,
            "% read": 100 * statistics.median(t * nbytes[v] / b for t, b in zip(tps[v], rbw[v])),
        }
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="smollm2-random,pythia-random", help=f"comma list of {list(MODELS)}")
    p.add_argument("--variants", default="hf,loop,raw,engine,fp32k,int8,bf16", help=f"comma list of {VARIANTS}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--ttft-prompt", type=int, default=512, help="prompt length for time-to-first-token (0: skip)")
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    if unknown := set(args.variants) - set(VARIANTS):
        sys.exit(f"unknown variants {sorted(unknown)} (choose from {VARIANTS})")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}; prompt {args.prompt_tokens}, "
          f"new {args.new_tokens}, rounds {args.rounds}, ttft prompt {args.ttft_prompt}")
    src = torch.ones(64 * 2**20)  # 256 MB, touched (an untouched buffer reads the zero page)
    buf = (src, torch.zeros_like(src))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += bench_model(name, args, Path(tmp), buf)
    print_table(rows)


if __name__ == "__main__":
    main()
