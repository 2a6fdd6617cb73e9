"""A DPO step with a cached reference vs an SFT step on the same pairs' tokens (issue 15: <= 1.1x).

    .venv/bin/python benchmarks/align_speed.py                    # SmolLM2-135M-Instruct, LoRA, 9 rounds
    .venv/bin/python benchmarks/align_speed.py --rounds 5 --trainable full

Both sides run `lmforge.training.step.train_step` over the same micro-batch of 4 pairs from the
checkable tasks (8 rows: the chosen and the rejected sequences, prompt masked): the DPO side with
`lmforge.align.recipe.make_loss` (reference log-probs cached, as `reference: cached` gives them), the
SFT side with `lm_loss` on the very same ids and targets (what `finetune sft` would train on those
rows). Rounds alternate (dpo, sft, sft, dpo, ...) and the median of the per-round ratios is reported,
with the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per side per round")
    ap.add_argument("--trainable", default="lora", choices=["lora", "full"])
    ap.add_argument("--pairs", type=int, default=4, help="pairs per micro-batch")
    args = ap.parse_args()

    from lmforge.align.recipe import AlignConfig, make_loss
    from lmforge.align.reference import Reference, sequence_logps
    from lmforge.data.pairs import collate_pairs, encode_records, task_pairs
    from lmforge.data.tasks import make_tasks
    from lmforge.finetune.common import build_model, load_pretrained, local_path
    from lmforge.model import GPT
    from lmforge.training.optim import make_adamw
    from lmforge.training.step import lm_loss, train_step

    config, sd, tok = load_pretrained(local_path("smollm2-135m-instruct"))
    cfg = AlignConfig(init="x", data={"train_file": "tasks"}, reference="cached",
                      trainable={"name": args.trainable, "lora": {"r": 16, "alpha": 32, "targets": "all-linear"}})
    enc, _ = encode_records(task_pairs(make_tasks(args.pairs, 0, 0)[0]), tok, config, 256)
    batch = collate_pairs(enc, tok.eos_id)
    with torch.no_grad():  # the cached reference: computed once, carried by the batch
        batch["ref"] = sequence_logps(GPT.from_state_dict(config, sd).eval(), batch["ids"], batch["targets"])[0]
    dpo = make_loss(cfg, Reference("cached"), args.pairs)

    def sft(model, b):
        return lm_loss(model, b["ids"], b["targets"]), {}

    models = {}
    for name in ("dpo", "sft"):
        model = build_model(config, sd, cfg.trainable)[0]
        models[name] = (model, make_adamw(model, 1e-4, 0.0, (0.9, 0.95), 1e-8))

    def timed(name: str) -> float:
        model, opt = models[name]
        fn = dpo if name == "dpo" else sft
        t0 = time.perf_counter()
        for _ in range(args.steps):
            train_step(model, opt, lambda: batch, fn, 1, 1.0)
        return (time.perf_counter() - t0) / args.steps

    timed("dpo"), timed("sft")  # warm-up
    ratios, times = [], {"dpo": [], "sft": []}
    for r in range(args.rounds):
        order = ("dpo", "sft") if r % 2 == 0 else ("sft", "dpo")
        got = {name: timed(name) for name in order}
        for k, v in got.items():
            times[k].append(v)
        ratios.append(got["dpo"] / got["sft"])
    tokens = int(batch["ids"].numel())
    out = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "trainable": args.trainable,
           "rows": int(batch["ids"].shape[0]), "tokens_per_step": tokens,
           "scored_tokens": int((batch["targets"] != -100).sum()),
           "dpo_step_s": round(statistics.median(times["dpo"]), 4), "sft_step_s": round(statistics.median(times["sft"]), 4),
           "median_ratio_dpo_over_sft": round(statistics.median(ratios), 3), "ratios": [round(x, 3) for x in ratios]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
