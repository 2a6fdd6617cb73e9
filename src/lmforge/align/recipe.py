"""`lmforge align`: preference tuning (DPO, IPO, SimPO, ORPO, KTO) on the one training loop.

    lmforge align --method dpo --config dpo-smollm2                # SmolLM2-135M-Instruct, pairs from the tasks
    lmforge align --method kto --init CKPT --data.train_file kto.jsonl --trainable.name full

A micro-batch of B pairs is one forward of 2B sequences (chosen rows, then rejected rows); the loss is
a function of their completion log-probs (`lmforge.align.losses`). What trains is `trainable` (full,
last_n or lora, as in `finetune`); the reference (DPO, IPO, KTO) is the initial model: with LoRA the
base through `disable_adapters`, else a frozen copy, or (`reference: cached`) its log-probs computed
once and cached on disk.

Logged (console, log.csv, TensorBoard, loss.png) each interval: the loss, the chosen and rejected
rewards and their margin, the implicit-reward accuracy; each eval: on held-out pairs, the loss, the
preference accuracy (the model gives the chosen completion the higher log-prob), and the KL to the
reference at the held-out completions' positions. `report.json` and `align.png` hold the before/after
figures (with `data.train_file: tasks`, also the exact match on the tasks' test split).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.align.losses import METHODS, NEEDS_REFERENCE
from lmforge.align.reference import REFERENCE_KINDS
from lmforge.finetune.common import FinetuneArgs
from lmforge.finetune.method import MethodArgs
from lmforge.training.config import TrainConfigError

if TYPE_CHECKING:
    import torch


@dataclass
class AlignDataArgs:
    """Preference data."""

    train_file: str = ""
    """JSONL of (prompt, chosen, rejected) pairs, or KTO's (prompt, completion, label); `tasks`: pairs
    from the checkable task families (chosen: the checked answer, rejected: a plausible wrong one)."""
    val_file: str | None = None
    """Held-out records (default: with tasks, pairs from the test split's unseen phrasings; else
    val_fraction of the training records)."""
    val_fraction: float = 0.1
    """Share of the training records held out when there is no val_file."""
    max_seq_length: int | None = None
    """Longest prompt + completion in tokens (default: the model's context, at most 1024); longer
    prompts are cut from their start."""
    n_train: int = 2000
    """train_file=tasks: training records (as in the SFT recipe, so the test split is the same)."""
    n_test: int = 300
    """train_file=tasks: test records (phrasings unseen in training): the held-out pairs and the exact-match split."""
    seed: int = 0
    """Seed of the generated tasks, their wrong answers and the val split."""
    exact_match: bool = True
    """train_file=tasks: greedy exact match on the test split before and after training."""
    test_max_new_tokens: int = 24
    """Tokens generated per test prompt for the exact-match check."""
    kl_prompts: int = 64
    """Held-out prompts whose completion positions the KL to the reference is measured at."""

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise TrainConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_seq_length is not None and self.max_seq_length < 2:
            raise TrainConfigError(f"data.max_seq_length must be >= 2, got {self.max_seq_length}")


@dataclass
class LossArgs:
    """The preference loss's hyper-parameters."""

    beta: float = 0.1
    """β: the inverse temperature of the implicit reward (DPO, IPO, KTO), SimPO's reward scale, ORPO's λ."""
    label_smoothing: float = 0.0
    """DPO: the assumed share of flipped labels ε (conservative DPO), in [0, 0.5)."""
    gamma: float = 0.5
    """SimPO: the target reward margin γ."""
    desirable_weight: float = 1.0
    """KTO: the weight λ_D of desirable completions."""
    undesirable_weight: float = 1.0
    """KTO: the weight λ_U of undesirable completions."""
    rpo_alpha: float = 0.0
    """DPO/IPO: the weight α of the chosen completion's token-mean NLL added to each pair's loss (RPO,
    Pang et al. 2024, "Iterative Reasoning Preference Optimization"; TRL's `rpo_alpha`): it keeps the
    chosen answers likely while the margin grows (0: plain DPO/IPO)."""

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise TrainConfigError(f"loss.beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise TrainConfigError(f"loss.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if not self.rpo_alpha >= 0:
            raise TrainConfigError(f"loss.rpo_alpha must be >= 0, got {self.rpo_alpha}")
        if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            raise TrainConfigError("loss.desirable_weight and loss.undesirable_weight must be > 0")


@dataclass
class AlignConfig(FinetuneArgs):
    """Everything `lmforge align` needs; the YAML schema of `lmforge align --config`."""

    out_dir: str = "out/align"
    """Directory for checkpoints, logs, the final model, report.json and align.png."""
    method: str = "dpo"  # type: ignore[assignment]  # the loss here; what trains is `trainable`
    """The preference loss: dpo, ipo, simpo, orpo or kto."""
    trainable: MethodArgs = field(default_factory=MethodArgs)
    """What trains: full, last_n or lora (as in finetune)."""
    data: AlignDataArgs = field(default_factory=AlignDataArgs)
    """Preference data."""
    loss: LossArgs = field(default_factory=LossArgs)
    """The loss's hyper-parameters."""
    reference: str = "auto"
    """The reference model (dpo, ipo, kto): lora (the base through disable_adapters), copy (a frozen
    copy), cached (its log-probs computed once, cached on disk) or auto (lora with LoRA, else copy)."""

    def data_group(self) -> list[tuple[str, type]]:
        return [("data", AlignDataArgs), ("loss", LossArgs), ("trainable", MethodArgs)]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in METHODS:
            raise TrainConfigError(f"method={self.method!r} is not one of {', '.join(METHODS)}")
        if self.reference not in REFERENCE_KINDS:
            raise TrainConfigError(f"reference={self.reference!r} is not one of {', '.join(REFERENCE_KINDS)}")
        if self.reference == "lora" and self.trainable.name != "lora":
            raise TrainConfigError("reference=lora needs trainable.name=lora (the reference is the base under the adapters)")
        if self.trainable.name == "head":
            raise TrainConfigError("trainable.name=head is for `finetune classify`; use lora, last_n or full")
        if not self.data.train_file:
            raise TrainConfigError("data.train_file is required: a JSONL of preference pairs (or KTO records), or `tasks`")

    @property
    def reference_kind(self) -> str:
        """The reference actually used: none for SimPO/ORPO, auto resolved."""
        if self.method not in NEEDS_REFERENCE:
            return "none"
        if self.reference == "auto":
            return "lora" if self.trainable.name == "lora" else "copy"
        return self.reference


# ---------------------------------------------------------------------------------------------
# the loss of a batch, and what is logged with it
# ---------------------------------------------------------------------------------------------
def batch_terms(cfg: AlignConfig, model: torch.nn.Module, batch: dict[str, torch.Tensor],
                reference: Any) -> dict[str, torch.Tensor]:
    """Per-example `loss` (B,) and the rewards and log-probs of one batch under `cfg.method`."""
    from lmforge.align import losses as L
    from lmforge.align.reference import sequence_logps

    m, a = cfg.method, cfg.loss
    logps, counts = sequence_logps(model, batch["ids"], batch["targets"])
    ref = reference(model, batch) if m in L.NEEDS_REFERENCE else None
    if m == "kto":
        B = batch["labels"].numel()
        pol, kl_rows = logps[:B], logps[B:].detach()  # the KL rows only set the (detached) reference point
        kl = L.kto_kl(kl_rows, ref[B:])
        loss = L.kto_loss(pol, ref[:B], batch["labels"], kl, a.beta, a.desirable_weight, a.undesirable_weight)
        reward = a.beta * (pol - ref[:B]).detach()
        return {"loss": loss, "reward": reward, "desirable": batch["labels"], "logps": pol.detach()}
    B = logps.shape[0] // 2
    c, r, nc, nr = logps[:B], logps[B:], counts[:B].clamp(min=1), counts[B:].clamp(min=1)
    if m == "dpo":
        loss = L.dpo_loss(c, r, ref[:B], ref[B:], a.beta, a.label_smoothing)
    elif m == "ipo":
        loss = L.ipo_loss(c / nc, r / nr, ref[:B] / nc, ref[B:] / nr, a.beta)
    elif m == "simpo":
        loss = L.simpo_loss(c / nc, r / nr, a.beta, a.gamma)
    else:  # orpo: the SFT term is the chosen completions' token-mean NLL
        loss = L.orpo_loss(c / nc, r / nr, -c.sum() / nc.sum(), a.beta)
    if a.rpo_alpha and m in ("dpo", "ipo"):
        loss = loss + a.rpo_alpha * (-c / nc)
    if ref is not None:
        rc, rr = a.beta * (c - ref[:B]).detach(), a.beta * (r - ref[B:]).detach()
    else:  # SimPO/ORPO's reward is the (scaled) average log-prob itself, as in TRL
        rc, rr = a.beta * (c / nc).detach(), a.beta * (r / nr).detach()
    return {"loss": loss, "reward_chosen": rc, "reward_rejected": rr, "chosen": c.detach(), "rejected": r.detach()}


def make_loss(cfg: AlignConfig, reference: Any, pairs_per_step: int):
    """The loop's `loss_fn`: the mean loss, and metrics that sum to their means over a step's pairs."""

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        t = batch_terms(cfg, model, batch, reference)
        s = 1.0 / pairs_per_step
        if cfg.method == "kto":
            d = t["desirable"]
            metrics = {"reward_desirable": (t["reward"] * d).sum() * s, "reward_undesirable": (t["reward"] * ~d).sum() * s}
        else:
            margin = t["reward_chosen"] - t["reward_rejected"]
            metrics = {"reward_chosen": t["reward_chosen"].sum() * s, "reward_rejected": t["reward_rejected"].sum() * s,
                       "reward_margin": margin.sum() * s, "reward_acc": (margin > 0).float().sum() * s}
        return t["loss"].mean(), metrics

    return loss_fn


TRAIN_COLUMNS = ("reward_chosen", "reward_rejected", "reward_margin", "reward_acc", "reward_desirable",
                 "reward_undesirable")
EVAL_COLUMNS = ("val_pref_acc", "val_reward_acc", "val_margin", "val_kl")
REWARD_TIE = 1e-5  # implicit-reward margins this small are ties (float noise of a policy equal to its reference)


# ---------------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------------
def align(cfg: AlignConfig) -> dict[str, Any]:
    """Preference-tune as `cfg` says; returns the summary (with the before/after report)."""
    from lmforge.finetune.common import run

    return run(cfg, "align", _run)


def _records(cfg: AlignConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, held-out, exact-match test) records, checked before anything else."""
    import random

    from lmforge.data.pairs import read_pairs, task_pairs

    d, unpaired = cfg.data, cfg.method == "kto"
    test: list[dict] = []
    if d.train_file == "tasks":
        if unpaired:
            raise TrainConfigError("data.train_file=tasks makes pairs; KTO needs (prompt, completion, label) records")
        from lmforge.data.tasks import make_tasks

        train_tasks, test = make_tasks(d.n_train, d.n_test, d.seed)
        train, val = task_pairs(train_tasks, d.seed), task_pairs(test, d.seed + 1)
    else:
        train = read_pairs(d.train_file, unpaired)
        val = []
    if d.val_file:
        val = read_pairs(d.val_file, unpaired)
    elif not val:
        order = list(range(len(train)))
        random.Random(d.seed).shuffle(order)
        n_val = round(len(train) * d.val_fraction)
        val, train = [train[i] for i in order[:n_val]], [train[i] for i in order[n_val:]]
    if not train:
        raise TrainConfigError(f"{d.train_file}: no training records left after the held-out split")
    return train, val, test if d.exact_match else []


def _run(cfg: AlignConfig, info: Any) -> dict[str, Any]:
    import random

    import torch

    from lmforge.align.reference import Reference, cache_path, cached_reference_logps, model_hash
    from lmforge.data import pairs as P
    from lmforge.finetune import common
    from lmforge.finetune.instruction import exact_match, format_report
    from lmforge.finetune.method import describe, plain_state_dict
    from lmforge.model import GPT
    from lmforge.training.loop import Hooks, train_loop
    from lmforge.training.state import find_resume, seed_everything

    t0 = time.perf_counter()
    d, t, main, unpaired = cfg.data, cfg.train, info.is_main, cfg.method == "kto"
    # ---- everything the user can get wrong, checked before any training ----
    train_recs, val_recs, test_recs = _records(cfg)
    common.check_batches(cfg, info.world_size)
    config, sd, tokenizer = common.load_pretrained(common.local_path(cfg.init))
    L = d.max_seq_length or min(config.block_size, 1024)
    if L > config.block_size:
        raise TrainConfigError(f"data.max_seq_length={L} is larger than the model's context ({config.block_size} tokens)")
    train_ex, rep = P.encode_records(train_recs, tokenizer, config, L, source=d.train_file)
    val_ex, vrep = P.encode_records(val_recs, tokenizer, config, L, source=d.val_file or f"{d.train_file} (held out)")
    pad = tokenizer.eos_id if tokenizer.eos_id is not None else 0
    kl_train = P.kl_partners(train_ex, L) if unpaired else []
    kl_val = P.kl_partners(val_ex, L) if unpaired else []
    seed_everything(t.seed)

    def fresh() -> torch.nn.Module:
        return common.build_model(config, sd, cfg.trainable, seed=t.seed)[0]

    model, trainable = common.build_model(config, sd, cfg.trainable, seed=t.seed)
    resume = find_resume(cfg.resume, Path(cfg.out_dir) / "checkpoints", main)
    kind = cfg.reference_kind
    if main:
        print(f"data: {len(train_ex)} train / {len(val_ex)} held-out {'records' if unpaired else 'pairs'} "
              f"({rep}; held out: {vrep}) | model: {config.name} | {describe(model, cfg.trainable)} | "
              f"{cfg.method}, reference: {kind}", flush=True)

    def rows_of(recs: list, kl: list) -> list[tuple[list[int], list[int]]]:
        # the row layout of a batch: pairs -> chosen then rejected; KTO -> completion then its KL partner
        if unpaired:
            return [(r.prompt, r.completions[0]) for r in recs] + [(r.prompt, r.completions[0]) for r in kl]
        return [(r.prompt, r.completions[0]) for r in recs] + [(r.prompt, r.completions[1]) for r in recs]

    # ---- the reference: the initial model (SimPO / ORPO: none) ----
    base = GPT.from_state_dict(config, {k: v.clone() for k, v in sd.items()}).eval() if kind != "none" else None
    for p in base.parameters() if base is not None else ():
        p.requires_grad_(False)
    ref_table = None
    if kind == "cached":
        # keyed by the data's token ids and the weights: a re-run (or resume) reads it back
        key = f"{P.data_hash(train_ex + val_ex + kl_train + kl_val)}-{model_hash(sd)}"
        tc = time.perf_counter()
        table, hit = cached_reference_logps(base.to(info.device), rows_of(train_ex, kl_train) + rows_of(val_ex, kl_val),
                                            key, pad, device=info.device)
        n = len(train_ex)
        ref_table = {"train": table[:2 * n].view(2, n).t(), "val": table[2 * n:].view(2, -1).t()}
        if main:
            print(f"reference log-probs: {'read from' if hit else 'computed and cached in'} {cache_path(key)} "
                  f"({time.perf_counter() - tc:.1f}s)", flush=True)
    reference = Reference(kind, base.to(info.device) if kind == "copy" else None)

    def collate(recs: list, idx: list[int], split: str) -> dict[str, torch.Tensor]:
        chunk = [recs[i] for i in idx]
        if unpaired:
            kl = kl_train if split == "train" else kl_val
            batch = P.collate_unpaired(chunk, [kl[i] for i in idx], pad)
        else:
            batch = P.collate_pairs(chunk, pad)
        if ref_table is not None:
            tab = ref_table[split][idx]  # (b, 2): the two rows of each record
            batch["ref"] = torch.cat([tab[:, 0], tab[:, 1]])
        return batch

    b = t.micro_batch_size

    def make_epoch(epoch: int) -> list[dict[str, torch.Tensor]]:
        order = list(range(len(train_ex)))
        random.Random(f"{t.seed}-{epoch}").shuffle(order)
        return [collate(train_ex, order[i:i + b], "train") for i in range(0, len(order) - b + 1, b)]

    batches = common.EpochBatches(make_epoch, info.rank, info.world_size)
    val_batches = [collate(val_ex, list(range(i, min(i + b, len(val_ex)))), "val") for i in range(0, len(val_ex), b)]

    # ---- held-out: loss, preference accuracy, KL to the reference ----
    kl_n = min(d.kl_prompts, len(val_ex))
    kl_batch = P.collate_rows([(r.prompt, r.completions[0]) for r in val_ex[:kl_n]], pad) if kl_n else None
    ref_token_logp = None
    if kl_batch is not None:
        from lmforge.align.reference import completion_logits

        with torch.no_grad():
            source = base if base is not None else GPT.from_state_dict(config, sd).eval()
            ref_token_logp = completion_logits(source.to(info.device), kl_batch["ids"].to(info.device),
                                               kl_batch["targets"].to(info.device))[0].log_softmax(-1)

    def heldout(m: torch.nn.Module, autocast: Any) -> dict[str, float]:
        from lmforge.align.reference import completion_logits
        from lmforge.training.loop import _to_device

        was = m.training
        m.eval()
        loss = pref = racc = margin = n = 0.0
        with torch.no_grad(), autocast:
            for vb in val_batches:
                terms = batch_terms(cfg, m, _to_device(vb, info.device), reference)
                loss += float(terms["loss"].sum())
                if unpaired:
                    d_ = terms["desirable"]
                    racc += float(((terms["reward"] > 0) == d_).sum())
                    margin += float(terms["reward"][d_].sum() - terms["reward"][~d_].sum())
                else:
                    pref += float((terms["chosen"] > terms["rejected"]).sum())
                    mg = terms["reward_chosen"] - terms["reward_rejected"]
                    # a tie counts half: before training the policy is its reference and every implicit
                    # reward is 0 (up to float noise), so held-out accuracy starts from chance, 50%
                    racc += float((mg > REWARD_TIE).sum()) + 0.5 * float((mg.abs() <= REWARD_TIE).sum())
                    margin += float(mg.sum())
                n += terms["loss"].numel()
            kl = None
            if kl_batch is not None:
                logits = completion_logits(m, kl_batch["ids"].to(info.device), kl_batch["targets"].to(info.device))[0]
                logp = logits.log_softmax(-1)
                kl = float((logp.exp() * (logp - ref_token_logp)).sum(-1).mean())
        m.train(was)
        n = max(n, 1)
        out = {"val_loss": loss / n, "val_reward_acc": racc / n, "val_margin": margin / n, "val_kl": kl}
        if not unpaired:
            out["val_pref_acc"] = pref / n
        return out

    def evaluate(m: torch.nn.Module, autocast: Any) -> tuple[float, dict[str, float]] | None:
        if not val_batches:
            return None
        out = heldout(m, autocast)
        return out.pop("val_loss"), out

    report: dict[str, Any] = {"method": cfg.method, "reference": kind}
    no_autocast = torch.autocast(info.device.type, enabled=False)
    if main and resume is None:
        if val_batches:
            report["heldout_before"] = heldout(model.to(info.device), no_autocast)
            print(f"held-out before training: {_fmt_heldout(report['heldout_before'])}", flush=True)
        if test_recs:
            tb = time.perf_counter()
            report["exact_match_before"], _ = exact_match(GPT.from_state_dict(config, sd), tokenizer, config,
                                                          test_recs, d.test_max_new_tokens)
            print(f"exact match before training: {100 * report['exact_match_before']['overall']:.1f}% "
                  f"({time.perf_counter() - tb:.0f}s)", flush=True)
    if resume is not None:
        common.load_for_resume(model, resume, cfg.trainable)

    rows_per_step = 2 * t.global_batch_size
    tokens_per_row = sum(len(r.prompt) + sum(map(len, r.completions)) / len(r.completions) for r in train_ex)
    summary = train_loop(
        model, batches, make_loss(cfg, reference, t.global_batch_size),
        common.model_saver(config, tokenizer, cfg.trainable, trainable, fresh),
        seq_len=round(tokens_per_row / max(len(train_ex), 1) * rows_per_step / t.global_batch_size),
        hooks=Hooks(evaluate=evaluate, columns=TRAIN_COLUMNS + EVAL_COLUMNS),
        title=f"align {cfg.method}: {config.name} ({cfg.trainable.name})",
        data_note=f"{len(train_ex)} {'records' if unpaired else 'pairs'}", **common.loop_kwargs(cfg, info, resume))

    if main:
        out = Path(cfg.out_dir)
        final = GPT.from_state_dict(config, plain_state_dict(model.cpu()))
        if val_batches:
            report["heldout_after"] = heldout(model.to(info.device), no_autocast)
            print(f"held-out after training: {_fmt_heldout(report['heldout_after'])}", flush=True)
        if test_recs:
            ta = time.perf_counter()
            report["exact_match_after"], _ = exact_match(final, tokenizer, config, test_recs, d.test_max_new_tokens)
            print(f"exact match after training: {100 * report['exact_match_after']['overall']:.1f}% "
                  f"({time.perf_counter() - ta:.0f}s)", flush=True)
            if "exact_match_before" in report:
                print(format_report({"before": report["exact_match_before"], "after": report["exact_match_after"]}),
                      flush=True)
        report.update(seconds=round(time.perf_counter() - t0, 1), train_seconds=summary["seconds"],
                      trainable=cfg.trainable.name, records=len(train_ex), truncated_prompts=rep.truncated)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        if cfg.log.plot:
            draw_report(report, out / "log.csv", out / "align.png", f"align {cfg.method}: {config.name}")
        summary["report"] = report
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _fmt_heldout(h: dict[str, float | None]) -> str:
    parts = [f"loss {h['val_loss']:.4f}"]
    if "val_pref_acc" in h:
        parts.append(f"preference accuracy {100 * h['val_pref_acc']:.1f}%")
    parts.append(f"reward accuracy {100 * h['val_reward_acc']:.1f}%")
    parts.append(f"margin {h['val_margin']:.3f}")
    if h.get("val_kl") is not None:
        parts.append(f"KL to reference {h['val_kl']:.4f}")
    return " | ".join(parts)


def draw_report(report: dict[str, Any], log_csv: Path, path: Path, title: str) -> None:
    """align.png: the before/after bars (held-out preference accuracy, exact match) and the reward
    margin and held-out KL against step."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    bars = []
    for key, label in (("val_pref_acc", "held-out preference acc."), ("val_reward_acc", "held-out reward acc.")):
        if key in report.get("heldout_before", {}) and "heldout_after" in report:
            bars.append((label, report["heldout_before"][key], report["heldout_after"][key]))
    if "exact_match_after" in report and "exact_match_before" in report:
        bars.append(("exact match (tasks test)", report["exact_match_before"]["overall"],
                     report["exact_match_after"]["overall"]))
    for i, (label, before, after) in enumerate(bars):
        ax.bar(i - 0.2, 100 * before, 0.4, color="#999", label="before" if i == 0 else None)
        ax.bar(i + 0.2, 100 * after, 0.4, color="#2a7", label="after" if i == 0 else None)
        ax.text(i - 0.2, 100 * before + 1, f"{100 * before:.1f}", ha="center", fontsize=8)
        ax.text(i + 0.2, 100 * after + 1, f"{100 * after:.1f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend()
    ax.set_title(title)
    for key, style in (("reward_margin", "-"), ("val_margin", "o-"), ("val_kl", "s--")):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in ("", None)]
        if pts:
            ax2.plot(*zip(*pts), style, label=key.replace("_", " "), markersize=3)
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
