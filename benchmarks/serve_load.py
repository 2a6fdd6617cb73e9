"""Load test of `lmforge serve`: 1, 4, 16 concurrent streaming clients on loopback.

Serves SmolLM2-135M-Instruct (fetched by `lmforge.assets`) in a `lmforge serve` subprocess and
runs, for each concurrency level, that many asyncio clients, each sending `--requests-per-client`
streaming chat requests one after another (greedy, EOS ignored, so every request generates exactly
`--max-tokens` tokens). Reports aggregate tokens/s, p50/p95 time to first token and inter-token
latency, then generates the same requests one at a time with HF transformers (same GGUF weights) as
a baseline. Every phase is bounded in count and in time (`--max-seconds`).

    python benchmarks/serve_load.py                       # 1, 4, 16 clients; prints a table
    python benchmarks/serve_load.py --clients 1 16 --max-tokens 32 --out results.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lmforge import _io

QUESTIONS = [
    "What is the capital of France?", "Name three primary colours.", "Why is the sky blue?",
    "Write a haiku about the sea.", "What is 17 times 3?", "Give me a synonym for happy.",
    "Explain photosynthesis in one sentence.", "What is the boiling point of water?",
    "Who wrote Pride and Prejudice?", "List the planets of the solar system.", "What does a CPU do?",
    "Translate 'good morning' into French.", "What is a prime number?", "Describe a cat in five words.",
    "How many legs does a spider have?", "What is the opposite of cold?",
]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# the server under test
# ------------------------------------------------------------------------------------------------
def start_server(source: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    import requests

    port = free_port()
    cmd = [sys.executable, "-m", "lmforge", "serve", str(source), "--port", str(port), "--host", "127.0.0.1",
           "--max-batch-size", str(max(args.clients)), "--max-queue", str(4 * max(args.clients)),
           "--max-seq-length", str(args.max_seq_length), "--device", args.device, "--log-level", "warning"]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_API_KEY"}
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if requests.get(url + "/health", timeout=1).ok:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start within 300 s")


async def one_request(client, url: str, question: str, max_tokens: int, sampling: dict) -> dict:
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}, **sampling}
    t0 = time.perf_counter()
    stamps: list[float] = []
    usage = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
    if not stamps or usage is None:
        raise RuntimeError(f"request {question!r} returned no tokens")
    return {"ttft": stamps[0] - t0, "gaps": [b - a for a, b in itertools.pairwise(stamps)],
            "tokens": usage["completion_tokens"], "seconds": stamps[-1] - t0}


async def run_level(url: str, clients: int, per_client: int, max_tokens: int, budget: float,
                    sampling: dict) -> dict:
    import httpx

    async def client_loop(i: int, client) -> list[dict]:
        out = []
        for j in range(per_client):
            out.append(await one_request(client, url, QUESTIONS[(i * per_client + j) % len(QUESTIONS)], max_tokens,
                                              sampling))
        return out

    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(budget), limits=limits) as client:
        t0 = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*(client_loop(i, client) for i in range(clients))), budget)
        wall = time.perf_counter() - t0
    reqs = [r for rs in results for r in rs]
    tokens = sum(r["tokens"] for r in reqs)
    ttft = [r["ttft"] for r in reqs]
    gaps = [g for r in reqs for g in r["gaps"]]
    return {"clients": clients, "requests": len(reqs), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft_p50_s": percentile(ttft, 0.5), "ttft_p95_s": percentile(ttft, 0.95),
            "itl_p50_s": percentile(gaps, 0.5), "itl_p95_s": percentile(gaps, 0.95)}


# ------------------------------------------------------------------------------------------------
# the baseline: HF transformers, one request at a time
# ------------------------------------------------------------------------------------------------
def hf_baseline(gguf: Path, n_requests: int, max_tokens: int, budget: float) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ttft, per_token, tokens, total = [], [], 0, 0.0
    end = time.monotonic() + budget
    for i in range(n_requests):
        if time.monotonic() > end:
            break
        ids = tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                      add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(**ids, max_new_tokens=1, do_sample=False)
            ttft.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = model.generate(**ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
            dt = time.perf_counter() - t0
        n = out.shape[1] - ids["input_ids"].shape[1]
        tokens += n
        total += dt
        per_token.append(dt / n)
    return {"clients": 1, "requests": len(ttft), "tokens": tokens, "wall_s": total, "tokens_per_s": tokens / total,
            "ttft_p50_s": percentile(ttft, 0.5), "ttft_p95_s": percentile(ttft, 0.95),
            "itl_p50_s": percentile(per_token, 0.5), "itl_p95_s": percentile(per_token, 0.95)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrency levels")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1,
                   help="run the levels this many times, alternating (1, 16, 1, 16, ...); the speed-up is the "
                        "median of the rounds' ratios (the machine is shared: one round's ratio swings)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    p.add_argument("--max-seq-length", type=int, default=256, help="KV-cache length per slot")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; > 0 samples (with --top-p)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads, for the server and the baseline")
    p.add_argument("--hf-requests", type=int, default=4, help="requests for the transformers baseline (0: skip)")
    p.add_argument("--max-seconds", type=float, default=900, help="time budget of the whole run")
    p.add_argument("--source", default=None,
                   help="model to serve (default: the SmolLM2-135M-Instruct GGUF asset, also the baseline's model)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    from lmforge.assets import fetch_asset

    gguf = fetch_asset("smollm2-135m-instruct")  # the baseline always reads the GGUF asset
    deadline = time.monotonic() + args.max_seconds
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "seed": 0} if args.temperature else {}
    proc, url = start_server(Path(args.source) if args.source else gguf, args)
    rows = []
    try:
        # one warm-up request: the first forward pays one-off costs
        asyncio.run(run_level(url, 1, 1, 4, 120, sampling))
        for rnd in range(args.rounds):
            for c in args.clients:
                left = deadline - time.monotonic()
                if left < 10:
                    print(f"time budget spent; skipping {c} clients", file=sys.stderr)
                    break
                row = asyncio.run(run_level(url, c, args.requests_per_client, args.max_tokens, left, sampling))
                rows.append({"system": "lmforge serve", "round": rnd, **row})
                print(f"lmforge serve, round {rnd}, {c:>2} clients: {row['tokens_per_s']:.1f} tok/s", file=sys.stderr,
                      flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.hf_requests and (left := deadline - time.monotonic()) > 10:
        rows.append({"system": "HF transformers (sequential)",
                     **hf_baseline(gguf, args.hf_requests, args.max_tokens, left)})

    print(f"\n{'system':<30} {'clients':>7} {'reqs':>5} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} "
          f"{'ITL p50':>8} {'ITL p95':>8}")
    for r in rows:
        print(f"{r['system']:<30} {r['clients']:>7} {r['requests']:>5} {r['tokens_per_s']:>8.1f} "
              f"{r['ttft_p50_s'] * 1e3:>7.0f}ms {r['ttft_p95_s'] * 1e3:>7.0f}ms "
              f"{r['itl_p50_s'] * 1e3:>6.1f}ms {r['itl_p95_s'] * 1e3:>6.1f}ms")
    summary = {"rows": rows, "max_tokens": args.max_tokens, "threads": args.threads, "cpu_count": os.cpu_count(),
               "cpu": _io.cpu_model()}
    by_round: dict[int, dict[int, float]] = {}
    for r in rows:
        if r["system"] == "lmforge serve":
            by_round.setdefault(r["round"], {})[r["clients"]] = r["tokens_per_s"]
    top = max(args.clients)
    ratios = [lv[top] / lv[1] for lv in by_round.values() if 1 in lv and top in lv and top > 1]
    if ratios:
        speedup = statistics.median(ratios)
        summary["speedup"] = {"clients": top, "x": speedup, "rounds": ratios}
        print(f"\naggregate tokens/s at {top} clients / 1 client, per round: "
              f"{', '.join(f'{x:.2f}x' for x in ratios)}; median {speedup:.2f}x (target >= 6x)  [{summary['cpu']}]")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
