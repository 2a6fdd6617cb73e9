"""MMLU 0-shot letter scoring: `lmforge evaluate` vs lm-eval's `hf` backend, and the compute roofline.

    PYTHONPATH=src python benchmarks/eval_speed.py --items 200            # the figures in README.md
    PYTHONPATH=src python benchmarks/eval_speed.py --items 14042 --hf_batch_sizes ""   # the full run

On the same items (a seeded subsample of the `mmlu` asset) with the same prompt, in one run:
1. the machine's fp32 matmul FLOP/s, measured now (before and after the model runs; the higher);
2. `lmforge evaluate` (SmolLM2-135M-Instruct, the registry's GGUF, fp32 on the CPU kernels):
   items/s and its % of the roofline, floor = prompt tokens x 2 x parameters / FLOP/s;
3. lm-eval's `hf` backend on our `lmforge convert --to hf` export at batch sizes 1, 8, 32, and
   lm-eval through our adapter (`--model lmforge`), both on a local task over the same items;
4. agreement: the predicted letter of every item, lmforge vs hf vs the adapter.
Each time is the model's own: lm-eval's calls of the model's loglikelihood (tokenizing and
scoring its requests; building the task is not counted), `lmforge evaluate`'s scoring. The full MMLU time is extrapolated
from the measured tokens/s over the full set's prompt tokens (counted with SmolLM2's tokenizer).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def fresh_peak(device) -> float:
    """The fp32 matmul FLOP/s measured now (not the best of earlier runs: an empty cache dir)."""
    import torch

    from lmforge.training.monitor import measured_peak_flops

    with tempfile.TemporaryDirectory() as d:
        return measured_peak_flops(device, torch.float32, cache_dir=Path(d))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--hf_batch_sizes", default="1,8,32")
    ap.add_argument("--adapter", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default="benchmarks/eval_speed.json")
    args = ap.parse_args()

    import torch

    from lmforge.api import LLM
    from lmforge.assets import fetch_asset
    from lmforge.conversion import convert_source
    from lmforge.evaluate import EvalConfig
    from lmforge.evaluate.multiple_choice import evaluate_items, is_header_row, prompt, read_items, select

    gguf, mmlu = str(fetch_asset("smollm2-135m-instruct")), fetch_asset("mmlu")
    lines = [ln for ln in Path(mmlu).read_text().splitlines() if ln.strip() and not is_header_row(json.loads(ln))]
    chosen = select(len(lines), None, args.items if args.items < len(lines) else None, args.seed)
    work = Path(tempfile.mkdtemp(prefix="eval_speed_"))
    data = work / "items.jsonl"
    data.write_text("".join(lines[i] + "\n" for i in chosen))
    items = read_items(data)

    report: dict = {"items": len(items), "seed": args.seed, "threads": torch.get_num_threads()}
    peak_before = fresh_peak(torch.device("cpu"))
    llm = LLM.load(gguf)
    params = llm.config.num_parameters()
    cfg = EvalConfig(gguf, data=str(data), batch_size=args.batch_size)
    res = evaluate_items(llm, items, cfg, "mmlu")
    peak = max(peak_before, fresh_peak(torch.device("cpu")))
    def prompt_tokens(some):
        return sum(len(llm.tokenizer.encode(prompt(it, [], "letter"), bos=False)) for it in some)

    tokens = prompt_tokens(items)
    floor = tokens * 2 * params / peak
    report["lmforge"] = {"seconds": res["seconds"], "items_per_s": len(items) / res["seconds"], "tokens": tokens,
                         "tokens_per_s": tokens / res["seconds"], "acc": res["metrics"]["acc"]["value"],
                         "batch_size": args.batch_size}
    report["roofline"] = {"fp32_matmul_flops": peak, "parameters": params, "floor_s": floor,
                          "pct_of_roofline": 100 * floor / res["seconds"]}
    print(f"lmforge evaluate: {len(items)} items, {tokens:,} prompt tokens in {res['seconds']:.1f}s = "
          f"{len(items) / res['seconds']:.2f} items/s, {tokens / res['seconds']:.0f} tok/s; "
          f"fp32 matmul {peak / 1e9:.0f} GFLOP/s -> floor {floor:.1f}s = {100 * floor / res['seconds']:.0f}% of roofline",
          flush=True)
    if len(items) < 14042:  # the full set's prompt tokens, and its time at this speed
        full = read_items(mmlu)
        full_tokens = prompt_tokens(full)
        report["full_mmlu_estimate"] = {"tokens": full_tokens, "seconds": full_tokens / report["lmforge"]["tokens_per_s"],
                                        "floor_s": full_tokens * 2 * params / peak}
        print(f"full MMLU: {full_tokens:,} prompt tokens -> ~{report['full_mmlu_estimate']['seconds'] / 60:.0f} min at "
              f"this speed (floor {report['full_mmlu_estimate']['floor_s'] / 60:.0f} min)", flush=True)

    sizes = [int(b) for b in args.hf_batch_sizes.split(",") if b]
    if sizes or args.adapter:
        from lmforge.evaluate.lm_eval_model import run_lm_eval, write_mmlu_task

        tasks = work / "tasks"
        write_mmlu_task(tasks, data, "mmlu_bench")
        hf = work / "hf"
        convert_source(gguf, str(hf), to="hf")
        letters = {"lmforge": [p["pred"] for p in res["items"]]}
        report["lm_eval_hf"] = {}
        for b in sizes:
            docs, seconds = run_lm_eval("hf", f"pretrained={hf},dtype=float32", tasks, "mmlu_bench", batch_size=b)
            report["lm_eval_hf"][b] = {"seconds": seconds, "items_per_s": len(items) / seconds}
            letters[f"hf/{b}"] = [max(range(4), key=lambda i, d=d: float(d["resps"][i][0])) for d in docs]
            print(f"lm-eval hf, batch {b}: {seconds:.1f}s = {len(items) / seconds:.2f} items/s", flush=True)
        if args.adapter:
            docs, seconds = run_lm_eval("lmforge", f"source={gguf}", tasks, "mmlu_bench", batch_size=args.batch_size)
            report["lm_eval_lmforge"] = {"seconds": seconds, "items_per_s": len(items) / seconds}
            letters["adapter"] = [max(range(4), key=lambda i, d=d: float(d["resps"][i][0])) for d in docs]
            print(f"lm-eval lmforge adapter, batch {args.batch_size}: {seconds:.1f}s = "
                  f"{len(items) / seconds:.2f} items/s", flush=True)
        if sizes:
            best = max(report["lm_eval_hf"].values(), key=lambda r: r["items_per_s"])
            report["speedup_vs_hf_best"] = {"lmforge_evaluate": report["lmforge"]["items_per_s"] / best["items_per_s"]}
            if args.adapter:
                report["speedup_vs_hf_best"]["adapter"] = report["lm_eval_lmforge"]["items_per_s"] / best["items_per_s"]
            print(f"speed-up over lm-eval hf at its best batch size: {report['speedup_vs_hf_best']}")
        report["differing_items"] = {k: sum(a != b for a, b in zip(letters["lmforge"], v))
                                     for k, v in letters.items() if k != "lmforge"}
        print(f"items whose predicted letter differs from lmforge evaluate's: {report['differing_items']}")
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f}s", file=sys.stderr)
