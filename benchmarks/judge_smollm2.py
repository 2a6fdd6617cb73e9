"""SmolLM2-135M-Instruct judging SmolLM2-135M-Instruct: the README's "LLM-as-judge" figures.

    .venv/bin/python benchmarks/judge_smollm2.py --per-category 2 --out runs/judge-smollm2

The answerer is loaded in this process; the judge is the same model served by `lmforge serve` on
127.0.0.1 (a second copy, on a background thread). Three runs, each with its JSONL of judged items
under `--out`:
1. 0-100 scores of SmolLM2's greedy answers (`max_new_tokens` each) to the first `--per-category`
   instructions of each category of the shipped set;
2. the same with the answers cut to their first `--short-tokens` tokens (a worse answer: a judge worth
   the name scores it lower);
3. pairwise: full answers (a) against the cut ones (b), both orders.
Prints one JSON summary (figures, wall times).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> dict:
    import torch

    from lmforge.api import LLM
    from lmforge.assets import fetch_asset
    from lmforge.data.instructions import read_instructions
    from lmforge.evaluate.judge import JudgeArgs, judge_answers, run_judge, run_pairwise
    from lmforge.serve import Server

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--short-tokens", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/judge-smollm2")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    items = read_instructions()
    picked = [it for c in dict.fromkeys(it["category"] for it in items)
              for it in [x for x in items if x["category"] == c][:a.per_category]]
    (out / "instructions.jsonl").write_text("".join(json.dumps(it) + "\n" for it in picked))
    gguf = fetch_asset("smollm2-135m-instruct")
    answerer = LLM.load(gguf)
    report: dict = {"items": len(picked), "max_new_tokens": a.max_new_tokens, "threads": a.threads}
    with Server(LLM.load(gguf), max_batch_size=8, max_seq_length=2048) as server:
        cfg = {"url": server.url + "/v1", "instructions": str(out / "instructions.jsonl"), "resume": True,
               "max_new_tokens": a.max_new_tokens, "judge_max_tokens": 64, "batch_size": 8, "concurrency": 4}
        t = time.perf_counter()
        full = run_judge(answerer, JudgeArgs(out=str(out / "full.jsonl"), **cfg))
        report["full_s"] = round(time.perf_counter() - t, 1)

        # the same answers cut short, judged with the same prompt
        tok = answerer.tokenizer
        short = [{"id": s["id"], "category": s["category"], "instruction": s["instruction"],
                  "answer": tok.decode(tok.encode(s["answer"], bos=False)[:a.short_tokens])} for s in full["samples"]]
        (out / "short-answers.jsonl").write_text("".join(json.dumps(s) + "\n" for s in short))
        t = time.perf_counter()
        cut = judge_answers(out / "short-answers.jsonl", JudgeArgs(out=str(out / "short.jsonl"), **cfg))
        report["short_s"] = round(time.perf_counter() - t, 1)

        t = time.perf_counter()
        pair = run_pairwise(out / "full.jsonl", out / "short-answers.jsonl",
                            JudgeArgs(out=str(out / "pairwise.jsonl"), **cfg))
        report["pairwise_s"] = round(time.perf_counter() - t, 1)
    for name, r in (("full", full), ("short", cut), ("pairwise", pair)):
        report[name] = {k: v["value"] for k, v in r["metrics"].items()}
    report["pairwise"]["first_position_rate"] = pair["breakdown"]["first_position_rate"]
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
