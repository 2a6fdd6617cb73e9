"""The whole cycle in one command (`lmforge demo`, what `make demo` runs), with an HTML report.

Seven stages, each a call of the public recipe a user would run, with a budget fitted to a 2-core CPU
(`QUICK`, about 12 minutes; `--full`: `FULL`, about 30 minutes, reaching every numeric target of the
recipes), each with its metric before -> after:

1. pretrain  a byte-level BPE trained on Jane Austen, the novels prepared, a small model pretrained from
             scratch: val loss before -> after, a sample (`lmforge pretrain`).
2. smollm2   SmolLM2-135M-Instruct loaded from its GGUF: perplexity on an Austen chunk, two chat answers,
             generation tokens/s alone and batched (`lmforge convert`, `lmforge evaluate --task perplexity`).
3. spam      a classification head on SMS spam: test accuracy of the untrained head -> trained, the
             confusion matrix (`lmforge finetune classify`).
4. sft       LoRA instruction tuning on the checkable tasks: held-out exact match per family
             (`lmforge finetune sft`).
5. dpo       DPO on task pairs, from the SFT model: held-out preference accuracy and exact match
             (`lmforge align`).
6. evaluate  an MMLU subset, base vs tuned (`lmforge evaluate --task mmlu`), and an LLM judge scoring
             base and tuned answers 0-100 on the shipped instructions, the tuned model served by
             `lmforge serve` on 127.0.0.1 and everything going through the OpenAI client.
7. export    the tuned model `--to hf` (reloaded by transformers, logits compared) and `--to gguf`.

Everything lands under OUT (default out/demo): one folder per stage, `report.json` and the
self-contained `report.html` (rewritten after every stage). A stage that completes writes its
`stage.json` last; a re-run skips the stages that have one (`force` redoes the named ones). A stage
that fails is reported, and the others still run (a later stage falls back to an earlier model:
no SFT model -> DPO starts from the base).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

DEMO_CONFIG = "austen-tiny"  # lmforge/configs/pretrain/austen-tiny.yaml, shipped in the package
STAGES = ("pretrain", "smollm2", "spam", "sft", "dpo", "evaluate", "export")
STAGE_FILE = "stage.json"

QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
]
SAMPLE_PROMPT = "It is a truth universally acknowledged"


@dataclass(frozen=True)
class Budget:
    """How much each stage does."""

    pretrain_minutes: float
    spam_limit: int | None  # texts (None: all ~5,500)
    spam_steps: int
    sft_train: int  # generated task records
    sft_test: int
    sft_steps: int
    dpo_train: int  # pairs
    dpo_test: int
    dpo_steps: int
    mmlu_items: int
    judge_items: int
    answer_tokens: int


QUICK = Budget(pretrain_minutes=2.0, spam_limit=1000, spam_steps=200, sft_train=800, sft_test=60, sft_steps=22,
               dpo_train=400, dpo_test=100, dpo_steps=16, mmlu_items=100, judge_items=8, answer_tokens=96)
FULL = Budget(pretrain_minutes=3.0, spam_limit=None, spam_steps=600, sft_train=2000, sft_test=300, sft_steps=60,
              dpo_train=1000, dpo_test=200, dpo_steps=48, mmlu_items=300, judge_items=16, answer_tokens=128)


def _flags(overrides: dict[str, Any]) -> str:
    return " ".join(f"--{k} {v}" for k, v in overrides.items())


def _rel(path: Path, root: Path) -> str:
    return str(path.resolve().relative_to(root.resolve()))


class Cycle:
    """The run's folders and the models the stages hand on to each other."""

    def __init__(self, out: Path, budget: Budget) -> None:
        self.out, self.budget = out, budget

    def dir(self, stage: str) -> Path:
        d = self.out / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def base(self) -> Path:
        """SmolLM2-135M-Instruct as an lmforge checkpoint (converted from the GGUF asset once)."""
        from lmforge.assets import fetch_asset
        from lmforge.conversion import convert_source

        ckpt = self.out / "smollm2" / "model"
        if not (ckpt / "model.safetensors").is_file():
            print(convert_source(fetch_asset("smollm2-135m-instruct"), ckpt, to="lmforge"), flush=True)
        return ckpt

    def tuned(self) -> tuple[Path, str]:
        """The most tuned model the run has (DPO's, else SFT's, else the base) and its name."""
        for stage, name in (("dpo", "SFT + DPO"), ("sft", "SFT")):
            final = self.out / stage / "run" / "final"
            if (final / "model.safetensors").is_file():
                return final, name
        return self.base(), "base (no tuned model)"


# ---------------------------------------------------------------------------------------------------
# the stages: each returns its report fields (report.json's stage schema, `lmforge.report`)
# ---------------------------------------------------------------------------------------------------
def stage_pretrain(c: Cycle) -> dict[str, Any]:
    from lmforge.api import LLM
    from lmforge.report import recipe_stage

    work = c.dir("pretrain")
    summary = demo_pretrain(work, minutes=c.budget.pretrain_minutes)
    fields = recipe_stage(work / "run", name="pretrain")
    llm = LLM.load(work / "run" / "final")
    sample = llm.generate(SAMPLE_PROMPT, max_new_tokens=40, temperature=0.8, top_p=0.9, seed=0)
    return {**fields, "plots": [_rel(work / "run" / p, c.out) for p in fields["plots"]],
            "command": (work / "commands.sh").read_text().strip(),
            "tables": fields["tables"] + [{"title": "a sample (temperature 0.8)", "columns": ["prompt", "continuation"],
                                           "rows": [[SAMPLE_PROMPT, sample]]}],
            "notes": f"{summary['steps']} steps, {summary['tokens']:,} tokens in {summary['seconds']:.0f} s of "
                     "training, the cosine schedule fitted to the time budget. Target: val loss down >= 2 nats."}


def stage_smollm2(c: Cycle, max_new_tokens: int = 64) -> dict[str, Any]:
    from lmforge.api import LLM
    from lmforge.assets import fetch_asset
    from lmforge.evaluate import EvalConfig, evaluate
    from lmforge.plots import bar_chart

    work = c.dir("smollm2")
    gguf = fetch_asset("smollm2-135m-instruct")
    ckpt = c.base()
    # perplexity on a chunk of Austen the model never saw in this run
    novel = min(Path(fetch_asset("austen")).glob("*.txt"))
    chunk = work / "austen-chunk.txt"
    chunk.write_text(novel.read_text(encoding="utf-8")[20_000:36_000], encoding="utf-8")
    ppl = evaluate(EvalConfig(source=str(ckpt), task="perplexity", data=str(chunk), window=512, stride=256,
                              out=str(work / "perplexity.json")))["results"]["perplexity"]
    llm = LLM.load(ckpt)
    rows, speeds = [], []
    for q in QUESTIONS:
        t0 = time.perf_counter()
        answer = llm.chat([{"role": "user", "content": q}], max_new_tokens=max_new_tokens).strip()
        dt = time.perf_counter() - t0
        n = len(llm.tokenizer.encode(answer))
        rows.append([q, answer, n, round(dt, 2)])
        speeds.append(n / dt)
        print(f"\nuser: {q}\nSmolLM2: {answer}\n({n} tokens, {dt:.1f} s)", flush=True)
    # the same engine with 8 requests at once: continuous batching
    prompts = [[{"role": "user", "content": f"Write one sentence about the number {i}."}] for i in range(8)]
    t0 = time.perf_counter()
    answers = llm.chat(prompts, max_new_tokens=32, ignore_eos=True)
    batched = sum(len(llm.tokenizer.encode(a)) for a in answers) / (time.perf_counter() - t0)
    alone = sum(speeds) / len(speeds)
    bar_chart(work / "tokens_per_s.png", ["1 request (chat)", "8 requests batched"],
              {"tokens/s": [(alone, None), (batched, None)]}, "SmolLM2-135M generation speed (greedy, fp32)",
              ylabel="tokens/s")
    metrics = {k: v["value"] for k, v in ppl["metrics"].items()}
    return {"command": f"lmforge convert {gguf} --to lmforge --out {ckpt}\n"
                       f"lmforge evaluate {ckpt} --task perplexity --data {chunk} --window 512 --stride 256\n"
                       f"lmforge chat {ckpt}",
            "metrics": [{"name": "perplexity on an Austen chunk", "after": round(metrics["perplexity"], 2)},
                        {"name": "bits per byte", "after": round(metrics["bits_per_byte"], 3)},
                        {"name": "generation, 1 request", "after": round(alone, 1), "unit": "tokens/s"},
                        {"name": "generation, 8 requests batched", "after": round(batched, 1), "unit": "tokens/s"}],
            "plots": [_rel(work / "tokens_per_s.png", c.out)],
            "tables": [{"title": "answers", "columns": ["question", "answer", "tokens", "seconds"], "rows": rows}],
            "notes": "The real SmolLM2-135M-Instruct weights, read from the GGUF file of a registry package."}


def stage_spam(c: Cycle) -> dict[str, Any]:
    from lmforge.finetune.classification import ClassifyConfig, classify
    from lmforge.report import recipe_stage
    from lmforge.training.config import load_config

    run = c.dir("spam") / "run"
    o = {"init": str(c.base()), "out_dir": str(run), "train.max_steps": c.budget.spam_steps}
    if c.budget.spam_limit:
        o["data.limit"] = c.budget.spam_limit
    shutil.rmtree(run, ignore_errors=True)
    classify(load_config(ClassifyConfig, "spam-smollm2", **o))
    fields = recipe_stage(run, name="spam")
    metrics = sorted(fields["metrics"], key=lambda m: m["name"] != "test accuracy")  # the headline first
    return {**fields, "metrics": metrics, "command": f"lmforge finetune classify --config spam-smollm2 {_flags(o)}",
            "plots": [_rel(run / p, c.out) for p in fields["plots"]],
            "notes": "The trunk frozen, its last-token features cached once; the head alone trains. "
                     "Before: the untrained head on the same test texts. Target (--full): >= 95%."}


def stage_sft(c: Cycle) -> dict[str, Any]:
    from lmforge.finetune.instruction import SFTConfig, sft
    from lmforge.report import recipe_stage
    from lmforge.training.config import load_config

    run = c.dir("sft") / "run"
    b = c.budget
    o = {"init": str(c.base()), "out_dir": str(run), "data.n_train": b.sft_train, "data.n_test": b.sft_test,
         "train.max_steps": b.sft_steps, "eval.interval": max(1, b.sft_steps // 2)}
    shutil.rmtree(run, ignore_errors=True)
    sft(load_config(SFTConfig, "tasks-smollm2", **o))
    fields = recipe_stage(run, name="sft")
    overall = [m for m in fields["metrics"] if m["name"].endswith(": overall")]
    others = [m for m in fields["metrics"] if m not in overall]
    return {**fields, "command": f"lmforge finetune sft --config tasks-smollm2 {_flags(o)}",
            "metrics": overall + others, "plots": [_rel(run / p, c.out) for p in fields["plots"]],
            "notes": "LoRA (r 16, all linear layers) on generated checkable tasks; the test split uses "
                     "phrasings unseen in training. Target (--full): +30 points overall."}


def stage_dpo(c: Cycle) -> dict[str, Any]:
    from lmforge.align import align, load_config
    from lmforge.report import recipe_stage

    run = c.dir("dpo") / "run"
    b = c.budget
    sft_final = c.out / "sft" / "run" / "final"
    init = sft_final if (sft_final / "model.safetensors").is_file() else c.base()
    o = {"init": str(init), "out_dir": str(run), "data.n_train": b.dpo_train, "data.n_test": b.dpo_test,
         "train.max_steps": b.dpo_steps, "eval.interval": max(1, b.dpo_steps // 2)}
    shutil.rmtree(run, ignore_errors=True)
    summary = align(load_config("dpo-smollm2", **o))
    fields = recipe_stage(run, name="dpo")
    metrics = fields["metrics"] or _align_metrics(summary)
    metrics = [m for m in metrics if m["name"] != "val loss"] + [
        {**m, "name": "DPO loss (held-out)"} for m in metrics if m["name"] == "val loss"]
    return {**fields, "command": f"lmforge align --method dpo --config dpo-smollm2 {_flags(o)}",
            "metrics": metrics,
            "plots": [_rel(run / p, c.out) for p in fields["plots"]],
            "notes": f"Starts from {'the SFT model' if init == sft_final else 'the base model (no SFT model)'}; "
                     "the reference is the starting model, its log-probs cached once. Target (--full): held-out "
                     "preference accuracy +20 points, exact match not down by more than 1 point."}


def _align_metrics(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """before -> after metrics from an align summary (when the report module does not know the folder)."""
    out = []
    for key, value in summary.items():
        if isinstance(value, dict) and {"before", "after"} <= set(value):
            b, a = value["before"], value["after"]
            if isinstance(b, int | float) and isinstance(a, int | float):
                out.append({"name": key, "before": b, "after": a})
    return out


def stage_evaluate(c: Cycle) -> dict[str, Any]:
    from lmforge.evaluate import EvalConfig, evaluate
    from lmforge.evaluate.compare import compare
    from lmforge.plots import bar_chart

    work = c.dir("evaluate")
    b = c.budget
    base = c.base()
    tuned, tuned_name = c.tuned()
    reports = {}
    for name, src in (("base", base), ("tuned", tuned)):
        reports[name] = evaluate(EvalConfig(source=str(src), task="mmlu", subsample=b.mmlu_items, seed=0,
                                            out=str(work / f"mmlu-{name}.json")))["results"]["mmlu"]
    compare([str(work / "mmlu-base.json"), str(work / "mmlu-tuned.json")], out=str(work / "mmlu-compare.png"))
    # per-topic accuracy, the topics with the most items in the subsample
    topics = sorted(reports["base"]["breakdown"], key=lambda t: -reports["base"]["breakdown"][t]["n"])[:12]
    bar_chart(work / "mmlu-topics.png", topics,
              {n: [(100 * r["breakdown"][t]["acc"]["value"], None) for t in topics] for n, r in reports.items()},
              f"MMLU per topic ({b.mmlu_items} items, 0-shot, letter)", ylabel="accuracy (%)")
    judged = judge_stage(c, work, base, tuned)
    acc = {n: 100 * r["metrics"]["acc"]["value"] for n, r in reports.items()}
    metrics = [{"name": f"MMLU accuracy ({b.mmlu_items} items)", "before": round(acc["base"], 2),
                "after": round(acc["tuned"], 2), "unit": "%", "target": "chance is 25%"},
               *judged["metrics"]]
    return {"command": f"lmforge evaluate {base} --task mmlu --subsample {b.mmlu_items} --out {work}/mmlu-base.json\n"
                       f"lmforge evaluate {tuned} --task mmlu --subsample {b.mmlu_items} --out {work}/mmlu-tuned.json\n"
                       f"lmforge evaluate compare {work}/mmlu-base.json {work}/mmlu-tuned.json\n" + judged["command"],
            "metrics": metrics,
            "plots": [_rel(work / p, c.out) for p in ("mmlu-topics.png", "mmlu-compare.png", "judge-scores.png")],
            "tables": judged["tables"],
            "notes": f"Before: SmolLM2-135M-Instruct; after: the tuned model ({tuned_name}). " + judged["notes"]}


def judge_stage(c: Cycle, work: Path, base: Path, tuned: Path) -> dict[str, Any]:
    """Base and tuned answers to the shipped instructions, scored 0-100 by a judge model behind
    `lmforge serve` (the tuned model, served on 127.0.0.1), all through the OpenAI client."""
    from openai import OpenAI

    from lmforge.api import LLM
    from lmforge.data.instructions import read_instructions
    from lmforge.evaluate.judge import JudgeArgs, judge_answers
    from lmforge.plots import histogram

    b = c.budget
    items = read_instructions()
    step = max(1, len(items) // b.judge_items)
    items = items[::step][:b.judge_items]  # spread over the categories
    convo = [[{"role": "user", "content": it["instruction"]}] for it in items]
    base_answers = LLM.load(base).chat(convo, max_new_tokens=b.answer_tokens)
    with served(tuned) as url:
        client = OpenAI(base_url=url, api_key="none", max_retries=2, timeout=300)
        model = client.models.list().data[0].id
        t0, tokens, tuned_answers = time.perf_counter(), 0, []
        for it in items:
            r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": it["instruction"]}],
                                               max_tokens=b.answer_tokens, temperature=0.0)
            tuned_answers.append(r.choices[0].message.content or "")
            tokens += r.usage.completion_tokens if r.usage else 0
        served_speed = tokens / (time.perf_counter() - t0)
        results = {}
        for name, answers in (("base", base_answers), ("tuned", tuned_answers)):
            rows = [{"id": it["id"], "instruction": it["instruction"], "category": it["category"], "answer": a}
                    for it, a in zip(items, answers)]
            results[name] = judge_answers(rows, JudgeArgs(url=url, model=model, out=str(work / f"judge-{name}.jsonl"),
                                                          seed=0))
    scores = {n: [s["score"] for s in r["samples"] if s["score"] is not None] for n, r in results.items()}
    histogram(work / "judge-scores.png", scores, "judge scores (0-100)", bins=[0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    m = {n: r["metrics"] for n, r in results.items()}

    def mean(n: str) -> float | None:
        v = m[n]["judge_score"]["value"]
        return None if v is None or math.isnan(v) else round(v, 1)

    table_rows = [[it["instruction"][:80], a[:160], bt[:160]] for it, a, bt in zip(items, base_answers, tuned_answers)]
    return {"command": f"lmforge serve {tuned} --host 127.0.0.1\n"
                       f"lmforge evaluate judge (base and tuned answers, judge {model} at {url})",
            "metrics": [{"name": "judge score (mean 0-100)", "before": mean("base"), "after": mean("tuned")},
                        {"name": "judge replies without a score", "before": int(m["base"]["parse_failures"]["value"]),
                         "after": int(m["tuned"]["parse_failures"]["value"]), "unit": f"of {len(items)}"},
                        {"name": "served generation (tuned, 1 request at a time)", "after": round(served_speed, 1),
                         "unit": "tokens/s"}],
            "tables": [{"title": "answers (first characters)", "columns": ["instruction", "base", "tuned"],
                        "rows": table_rows}],
            "notes": f"The judge is the tuned SmolLM2-135M itself ({model}, served by lmforge serve). It is a weak "
                     "judge: a 135M-parameter model follows the grading format loosely (replies without a score are "
                     "counted above, never dropped), cannot check facts or code, and favours its own style; the "
                     "scores show the plumbing, not answer quality."}


class served:
    """`lmforge serve MODEL` on a free 127.0.0.1 port for the `with` block; yields its /v1 base URL."""

    def __init__(self, model: Path, timeout: float = 180.0) -> None:
        self.model, self.timeout = model, timeout

    def __enter__(self) -> str:
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", str(self.model), "--host", "127.0.0.1",
                                      "--port", str(port), "--log-level", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LmforgeError(f"lmforge serve {self.model} exited: {(self.proc.stderr.read() or '').strip()[-300:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    return f"http://127.0.0.1:{port}/v1"
            except OSError:
                time.sleep(0.3)
        self.__exit__()
        raise LmforgeError(f"lmforge serve {self.model} did not answer /health within {self.timeout:.0f} s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def stage_export(c: Cycle) -> dict[str, Any]:
    import torch

    from lmforge.api import LLM
    from lmforge.conversion import convert_source

    work = c.dir("export")
    tuned, name = c.tuned()
    hf_dir, gguf = work / "hf", work / "model.gguf"
    convert_source(tuned, hf_dir, to="hf")
    convert_source(tuned, gguf, to="gguf", gguf_type="f16")
    from transformers import AutoModelForCausalLM

    ours = LLM.load(tuned)
    ids = torch.tensor([ours.tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        want = ours.model(ids).float()
        got = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()(ids).logits.float()
    diff = float((want - got).abs().max())
    from_gguf = LLM.load(gguf).generate("The capital of France is", max_new_tokens=8)
    size = lambda p: sum(f.stat().st_size for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
    mib = lambda n: round(n / 2**20, 1)
    return {"command": f"lmforge convert {tuned} --to hf --out {hf_dir}\n"
                       f"lmforge convert {tuned} --to gguf --out {gguf} --gguf_type f16",
            "metrics": [{"name": "HF export: max |logit difference| vs lmforge (transformers reload)",
                         "after": diff, "target": "< 1e-3"},
                        {"name": "lmforge checkpoint size", "after": mib(size(tuned)), "unit": "MiB"},
                        {"name": "HF export size", "after": mib(size(hf_dir)), "unit": "MiB"},
                        {"name": "GGUF (f16) size", "after": mib(size(gguf)), "unit": "MiB"}],
            "tables": [{"title": "the GGUF file reloaded", "columns": ["prompt", "greedy continuation"],
                        "rows": [["The capital of France is", from_gguf]]}],
            "notes": f"The exported model is the tuned one ({name}); transformers' from_pretrained reads the HF "
                     "folder as it is, and lmforge (or llama.cpp) reads the GGUF file."}


RUNNERS: dict[str, Callable[[Cycle], dict[str, Any]]] = {
    "pretrain": stage_pretrain, "smollm2": stage_smollm2, "spam": stage_spam, "sft": stage_sft,
    "dpo": stage_dpo, "evaluate": stage_evaluate, "export": stage_export,
}
TITLES = {
    "pretrain": "1. Tokenizer, data and pretraining on Jane Austen",
    "smollm2": "2. SmolLM2-135M-Instruct from its GGUF: perplexity, chat, speed",
    "spam": "3. Classification finetune: SMS spam",
    "sft": "4. Instruction SFT (LoRA) on checkable tasks",
    "dpo": "5. Preference tuning (DPO)",
    "evaluate": "6. Evaluation: MMLU subset and an LLM judge",
    "export": "7. Export: HF and GGUF",
}


def run_demo(out: str | Path = "out/demo", full: bool = False, force: Sequence[str] = (),
             stages: Sequence[str] | None = None) -> Path:
    """Run the cycle's stages, skipping those an earlier run completed; returns report.html's path.

    Args:
        out: directory for everything the demo writes.
        full: the `FULL` budgets (every recipe's numeric target; ~30 min on 2 cores) instead of `QUICK`.
        force: stages to redo even when complete.
        stages: run only these (default: all, in order).
    """
    from lmforge.report import machine_facts, write_report

    unknown = [s for s in [*force, *(stages or ())] if s not in STAGES]
    if unknown:
        raise LmforgeError(f"unknown demo stage {unknown[0]!r}; the stages are {', '.join(STAGES)}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cycle = Cycle(out_dir, FULL if full else QUICK)
    t_start = time.perf_counter()
    report: dict[str, Any] = {"title": f"lmforge demo{' --full' if full else ''}: the whole cycle",
                              "created": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_facts(),
                              "budget": dataclasses.asdict(cycle.budget), "stages": []}
    for i, name in enumerate(STAGES, 1):
        done = out_dir / name / STAGE_FILE
        if stages and name not in stages:
            entry = _read_stage(done) or {"name": name, "title": TITLES[name], "status": "skipped",
                                          "notes": "not selected in this run"}
        elif done.is_file() and name not in force and (entry := _read_stage(done)) is not None:
            print(f"\n== {i}/{len(STAGES)}  {TITLES[name]}: complete in an earlier run ({done}); "
                  f"--force {name} redoes it", flush=True)
        else:
            print(f"\n== {i}/{len(STAGES)}  {TITLES[name]}", flush=True)
            entry = _run_stage(cycle, name)
            if entry["status"] == "ok":
                from lmforge._io import atomic_write_text

                atomic_write_text(done, json.dumps(entry, indent=1) + "\n")
        report["stages"].append(entry)
        write_report(out_dir, report)
    html = write_report(out_dir, report)
    failed = [s["name"] for s in report["stages"] if s["status"] == "failed"]
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s"
          f"{'; failed: ' + ', '.join(failed) if failed else ''}; report: {html}", flush=True)
    print(summary_table(report), flush=True)
    return html


def _read_stage(path: Path) -> dict[str, Any] | None:
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("status") == "ok" else None


def _run_stage(cycle: Cycle, name: str) -> dict[str, Any]:
    """One stage, timed; a failure is recorded (one line), never raised: the other stages still run."""
    t0 = time.perf_counter()
    try:
        fields, status, error = RUNNERS[name](cycle), "ok", None
    except Exception as e:  # noqa: BLE001 - a failing stage is reported and the others still run
        fields, status, error = {}, "failed", f"{type(e).__name__}: {e}".splitlines()[0][:500]
        print(f"error: stage {name} failed: {error}", file=sys.stderr, flush=True)
    return {**fields, "name": name, "title": TITLES[name], "status": status, "error": error,
            "seconds": round(time.perf_counter() - t0, 1)}


def summary_table(report: dict[str, Any]) -> str:
    """Each stage's status, time and main metric before -> after, for the console."""
    from lmforge.report import format_number

    lines = [f"{'stage':<10} {'status':<8} {'time':>7}  metric: before -> after"]
    for s in report["stages"]:
        m = (s.get("metrics") or [{}])[0]
        metric = (f"{m.get('name')}: {format_number(m.get('before'))} -> {format_number(m.get('after'))} "
                  f"{m.get('unit') or ''}" if m else s.get("error") or "")
        secs = s.get("seconds")
        lines.append(f"{s['name']:<10} {s['status']:<8} {'' if secs is None else f'{secs:.0f} s':>7}  {metric}")
    return "\n".join(lines)


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
