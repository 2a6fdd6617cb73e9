"""`lmforge finetune sft`: instruction-finetune a language model (full, last_n or LoRA).

    lmforge finetune sft --config tasks-smollm2                   # SmolLM2-135M + LoRA on generated tasks
    lmforge finetune sft --init CKPT --data.train_file chat.jsonl --method.name full

Data (`lmforge.data.sft`): Alpaca records (`instruction`, `input`, `output`, rendered with the Alpaca
template) or chat records (`messages`, rendered with the model's own chat template); the loss is on
the response only (every assistant turn of a chat) unless `data.mask_prompt` is false; examples are
packed into rows of `data.max_seq_length` tokens with correct document boundaries.
`data.train_file: tasks` trains on `lmforge.data.tasks`'s generated tasks.

Every eval interval: the val loss and a greedy sample. With a test file of checkable records (as
`lmforge data tasks` writes, with `family`), the held-out exact match per family is measured
before and after training and written to `out_dir/report.json`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.finetune.common import FinetuneArgs
from lmforge.training.config import TrainConfigError

if TYPE_CHECKING:
    import torch

    from lmforge.config import Config
    from lmforge.tokenizer import Tokenizer


@dataclass
class SFTDataArgs:
    """Instruction data."""

    train_file: str = ""
    """Alpaca/chat JSONL (or a JSON list); `tasks`: generate the checkable task families."""
    val_file: str | None = None
    """Validation records (default: val_fraction of the training records)."""
    test_file: str | None = None
    """Records with `family` whose answers are checked (exact match before/after); with
    train_file=tasks, the generated test split."""
    val_fraction: float = 0.05
    """Share of the training records held out for the val loss when there is no val_file."""
    max_seq_length: int | None = None
    """Longest example (and packed row) in tokens (default: the model's context, at most 1024)."""
    truncate: bool = False
    """Cut examples longer than max_seq_length instead of refusing them."""
    mask_prompt: bool = True
    """Loss on the responses only (assistant turns of a chat); false: on every token."""
    pack: bool = True
    """Pack several examples per row (no attention across them, positions restart)."""
    n_train: int = 2000
    """train_file=tasks: generated training records."""
    n_test: int = 300
    """train_file=tasks: generated test records (phrasings unseen in training)."""
    seed: int = 0
    """Seed of the generated tasks and of the val split."""
    test_max_new_tokens: int = 24
    """Tokens generated per test prompt for the exact-match check."""

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise TrainConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_seq_length is not None and self.max_seq_length < 2:
            raise TrainConfigError(f"data.max_seq_length must be >= 2, got {self.max_seq_length}")


@dataclass
class SFTConfig(FinetuneArgs):
    """Everything `finetune sft` needs; the YAML schema of `lmforge finetune sft --config`."""

    data: SFTDataArgs = field(default_factory=SFTDataArgs)
    """Instruction data."""

    def data_group(self) -> list[tuple[str, type]]:
        return [("data", SFTDataArgs)]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data.train_file:
            raise TrainConfigError("data.train_file is required: an Alpaca/chat JSONL file, or `tasks`")
        if self.method.name == "head":
            raise TrainConfigError("method.name=head is for `finetune classify`; use lora, last_n or full")


def sft(cfg: SFTConfig) -> dict[str, Any]:
    """Instruction-finetune as `cfg` says; returns the summary (with the exact-match report)."""
    from lmforge.finetune.common import run

    return run(cfg, "finetune sft", _run)


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Mean next-token cross-entropy over the unmasked targets of a (packed) batch."""
    from lmforge.training.step import lm_loss

    return lm_loss(model, batch["ids"], batch["targets"], segments=batch.get("segments")), {}


def _records(cfg: SFTConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, val, test) records, checked (bad records: one line naming the file and line)."""
    import random

    from lmforge.data.sft import read_records

    d = cfg.data
    test: list[dict] = []
    if d.train_file == "tasks":
        from lmforge.data.tasks import make_tasks

        train, test = make_tasks(d.n_train, d.n_test, d.seed)
    else:
        train = _with_extras(d.train_file, read_records(d.train_file))
    if d.test_file:
        test = _with_extras(d.test_file, read_records(d.test_file))
    if d.val_file:
        val = read_records(d.val_file)
    else:
        order = list(range(len(train)))
        random.Random(d.seed).shuffle(order)
        n_val = round(len(train) * d.val_fraction)
        val = [train[i] for i in order[:n_val]]
        train = [train[i] for i in order[n_val:]]
    return train, val, test


def _with_extras(path: str, checked: list[dict]) -> list[dict]:
    """The checked records plus the `family` each raw line carries (for the exact-match checker)."""
    text = Path(path).read_text(encoding="utf-8")
    raw = json.loads(text) if path.endswith(".json") else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    return [{**rec, **({"family": r["family"]} if isinstance(r, dict) and "family" in r else {})}
            for rec, r in zip(checked, raw)]


def prompt_ids(rec: dict, tokenizer: Tokenizer, config: Config) -> list[int]:
    """The prompt a record's answer is generated after (the training rendering, minus the answer)."""
    from lmforge.data.sft import alpaca_prompt
    from lmforge.prompts import encode_chat

    if "messages" in rec:
        turns = rec["messages"][:-1] if rec["messages"][-1]["role"] == "assistant" else rec["messages"]
        return encode_chat(turns, tokenizer, config, add_generation_prompt=True)
    return tokenizer.encode(alpaca_prompt(rec["instruction"], rec.get("input", "")))


def answer(rec: dict) -> str:
    return rec["messages"][-1]["content"] if "messages" in rec else rec["output"]


def exact_match(model: torch.nn.Module, tokenizer: Tokenizer, config: Config, records: list[dict],
                max_new_tokens: int) -> tuple[dict[str, float], list[str]]:
    """Greedy answers to the records' prompts, scored per family (`lmforge.data.tasks.score`)."""
    from lmforge.data.tasks import score
    from lmforge.generate import generate
    from lmforge.inference import prepare_for_inference
    from lmforge.sampling import SamplingParams

    prepare_for_inference(model)
    outs = generate(model, tokenizer, [prompt_ids(r, tokenizer, config) for r in records],
                    SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=["\n"]), max_batch_size=16)
    preds = [o.text for o in outs]
    scored = [{"family": r.get("family", "all"), "output": answer(r)} for r in records]
    return score(scored, preds), preds


def _run(cfg: SFTConfig, info: Any) -> dict[str, Any]:
    import torch

    from lmforge.data.sft import batches as sft_batches
    from lmforge.data.sft import encode_records
    from lmforge.finetune import common
    from lmforge.finetune.method import describe, plain_state_dict
    from lmforge.model import GPT
    from lmforge.training.loop import Hooks, _to_device, train_loop
    from lmforge.training.state import find_resume, seed_everything

    t0 = time.perf_counter()
    d, t, main = cfg.data, cfg.train, info.is_main
    # ---- everything the user can get wrong, checked before any training ----
    train_recs, val_recs, test_recs = _records(cfg)
    common.check_batches(cfg, info.world_size)
    config, sd, tokenizer = common.load_pretrained(common.local_path(cfg.init))
    L = d.max_seq_length or min(config.block_size, 1024)
    if L > config.block_size:
        raise TrainConfigError(f"data.max_seq_length={L} is larger than the model's context ({config.block_size} tokens)")

    def encode(recs: list[dict], name: str) -> list:
        clean = [{k: v for k, v in r.items() if k in ("instruction", "input", "output", "messages")} for r in recs]
        return encode_records(clean, tokenizer, config, mask_prompt=d.mask_prompt, max_len=L, truncate=d.truncate,
                              source=name)

    train_ex = encode(train_recs, d.train_file)
    val_ex = encode(val_recs, d.val_file or f"{d.train_file} (val)") if val_recs else []
    seed_everything(t.seed)

    def fresh() -> torch.nn.Module:
        return common.build_model(config, sd, cfg.method, seed=t.seed)[0]

    model, trainable = common.build_model(config, sd, cfg.method, seed=t.seed)
    resume = find_resume(cfg.resume, Path(cfg.out_dir) / "checkpoints", main)
    report: dict[str, Any] = {}
    if main:
        print(f"data: {len(train_ex)} train / {len(val_ex)} val examples, {len(test_recs)} test records | "
              f"model: {config.name} | {describe(model, cfg.method)}", flush=True)
    if main and test_recs and resume is None:
        tb = time.perf_counter()
        before, _ = exact_match(GPT.from_state_dict(config, sd), tokenizer, config, test_recs, d.test_max_new_tokens)
        report["before"] = before
        print(f"exact match before training: {_fmt(before)} ({time.perf_counter() - tb:.0f}s)", flush=True)
    if resume is not None:
        common.load_for_resume(model, resume, cfg.method)
    pad = tokenizer.eos_id if tokenizer.eos_id is not None else 0
    b = t.micro_batch_size

    def make_epoch(epoch: int) -> list[dict[str, torch.Tensor]]:
        return list(sft_batches(train_ex, b, L, pack_rows=d.pack, seed=t.seed, pad_id=pad, epoch=epoch))

    batches = common.EpochBatches(make_epoch, info.rank, info.world_size)
    val_batches = list(sft_batches(val_ex, b, L, pack_rows=d.pack, seed=0, pad_id=pad)) if val_ex else []
    val_batches = val_batches[:cfg.eval.val_batches] if cfg.eval.val_batches else val_batches

    def evaluate(m: torch.nn.Module, autocast: Any) -> float | None:
        if not val_batches:
            return None
        from lmforge.data.sft import IGNORE
        from lmforge.training.step import lm_loss

        was = m.training
        m.eval()
        total = n = 0.0
        with torch.no_grad(), autocast:
            for vb in val_batches:
                vb = _to_device(vb, info.device)
                total += float(lm_loss(m, vb["ids"], vb["targets"], reduction="sum", segments=vb.get("segments")))
                n += int((vb["targets"] != IGNORE).sum())
        m.train(was)
        return total / max(n, 1)

    sample_rec = (test_recs or val_recs or train_recs)[0]

    def sample(msd: dict[str, torch.Tensor], step: int) -> str | None:
        from lmforge.generate import generate
        from lmforge.sampling import SamplingParams

        copy = fresh()
        copy.load_state_dict(msd)
        plain = GPT.from_state_dict(config, plain_state_dict(copy)).eval()
        with torch.no_grad():
            out = generate(plain, tokenizer, prompt_ids(sample_rec, tokenizer, config),
                           SamplingParams(max_new_tokens=cfg.eval.sample_tokens, temperature=0.0))
        return f"{_prompt_text(sample_rec)} -> {out.text}"

    tokens_per_row = sum(len(e.ids) for e in train_ex) / max(len(train_ex), 1) if not d.pack else L
    summary = train_loop(
        model, batches, sft_loss, common.model_saver(config, tokenizer, cfg.method, trainable, fresh),
        seq_len=round(tokens_per_row), hooks=Hooks(evaluate=evaluate, sample=sample if cfg.eval.sample_tokens else None),
        title=f"finetune sft: {config.name} ({cfg.method.name})",
        data_note=f"{len(train_ex)} examples{', packed' if d.pack else ''}", **common.loop_kwargs(cfg, info, resume))

    if main:
        out = Path(cfg.out_dir)
        if test_recs:
            ta = time.perf_counter()
            final = GPT.from_state_dict(config, plain_state_dict(model.cpu()))
            after, preds = exact_match(final, tokenizer, config, test_recs, d.test_max_new_tokens)
            report["after"] = after
            print(f"exact match after training: {_fmt(after)} ({time.perf_counter() - ta:.0f}s)", flush=True)
            if "before" in report:
                print(format_report(report), flush=True)
            draw_exact_match(report, out / "exact_match.png", f"{config.name}: exact match per family (test)")
            (out / "predictions.jsonl").write_text("".join(
                json.dumps({"prompt": _prompt_text(r), "answer": answer(r), "prediction": p,
                            "family": r.get("family")}) + "\n" for r, p in zip(test_recs, preds)))
        report.update(seconds=round(time.perf_counter() - t0, 1), train_seconds=summary["seconds"],
                      method=cfg.method.name, examples=len(train_ex))
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        summary["exact_match"] = report
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def draw_exact_match(report: dict[str, Any], path: Path, title: str) -> None:
    """Bars of exact match per family (and overall), before and after training when both are known."""
    from lmforge.plots import bar_chart

    after = report["after"]
    families = sorted(k for k in after if k != "overall") + ["overall"]
    series = {"after": [(100 * after.get(f, 0.0), None) for f in families]}
    if "before" in report:
        series = {"before": [(100 * report["before"].get(f, 0.0), None) for f in families], **series}
    bar_chart(path, families, series, title, ylabel="exact match (%)")


def _prompt_text(rec: dict) -> str:
    return rec["messages"][-2]["content"] if "messages" in rec and len(rec["messages"]) > 1 else rec.get("instruction", "")


def _fmt(scores: dict[str, float]) -> str:
    return f"{100 * scores['overall']:.1f}% overall"


def format_report(report: dict[str, Any]) -> str:
    """A table of exact match per family, before and after."""
    before, after = report["before"], report["after"]
    lines = [f"{'family':>14}  before  after   gain"]
    for fam in sorted(k for k in after if k != "overall") + ["overall"]:
        b, a = 100 * before.get(fam, 0.0), 100 * after[fam]
        lines.append(f"{fam:>14}  {b:6.1f}  {a:5.1f}  {a - b:+5.1f}")
    return "\n".join(lines)
