"""`lmforge finetune classify`: turn a pretrained LM into a text classifier.

    lmforge finetune classify --config spam-smollm2                       # SmolLM2-135M on SMS spam
    lmforge finetune classify --init CKPT --data.file x.csv --data.label_key y --method.name lora
    lmforge classify out/spam/final --text "WINNER! Claim your prize"

The output layer becomes `Linear(d_model, num_classes)`, read at each text's last token (the one
that has seen the whole text; right padding never reaches it, and left padding is masked out as a
document of its own, so both give the same logits). The data is deduplicated, optionally balanced
and split stratified (`lmforge.data.classify`). `method.name=head` trains the new layer alone: the
frozen trunk's features are computed once and cached, so training costs seconds.

The run writes, besides the loop's logs and checkpoints, `report.json` (test accuracy, per-class
precision/recall/F1, the confusion matrix, sizes, time) and `confusion.png` under out_dir.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lmforge.errors import LmforgeError
from lmforge.finetune.common import FinetuneArgs
from lmforge.training.config import TrainConfigError

if TYPE_CHECKING:
    import torch

    from lmforge.tokenizer import Tokenizer


@dataclass
class ClassifyDataArgs:
    """Labelled texts."""

    file: str = ""
    """A .csv (with a header row) or .jsonl file, or an asset name (sms-spam)."""
    text_key: str = "text"
    """Column (key) holding the text."""
    label_key: str = "label"
    """Column (key) holding the label."""
    classes: list[str] | None = None
    """Class names in index order (default: the sorted distinct labels, after `names`)."""
    names: dict[str, str] | None = None
    """Rename raw labels (`{"0": "ham", "1": "spam"}`)."""
    balance: bool = False
    """Down-sample every class to the smallest class's size."""
    val_fraction: float = 0.1
    """Share of each class held out for validation."""
    test_fraction: float = 0.2
    """Share of each class held out for the test report."""
    max_length: int | None = None
    """Longest text in tokens (default: the model's context); longer texts are an error unless `truncate`."""
    truncate: bool = False
    """Cut texts longer than max_length (to their first max_length tokens) instead of refusing them."""
    seed: int = 0
    """Seed of the split."""
    limit: int | None = None
    """Use at most this many texts (a seeded sample keeping each class's share); default: all."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 2:
            raise TrainConfigError(f"data.limit must be >= 2, got {self.limit}")
        if self.max_length is not None and self.max_length < 1:
            raise TrainConfigError(f"data.max_length must be >= 1, got {self.max_length}")


@dataclass
class ClassifyConfig(FinetuneArgs):
    """Everything `finetune classify` needs; the YAML schema of `lmforge finetune classify --config`."""

    data: ClassifyDataArgs = field(default_factory=ClassifyDataArgs)
    """Labelled texts."""
    pad_side: Literal["right", "left"] = "right"
    """Padding of a batch's shorter texts (the logits do not depend on it)."""

    def data_group(self) -> list[tuple[str, type]]:
        return [("data", ClassifyDataArgs)]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data.file:
            raise TrainConfigError("data.file is required: a .csv or .jsonl of texts and labels")
        if self.pad_side not in ("right", "left"):
            raise TrainConfigError(f"pad_side={self.pad_side!r} is not one of ('right', 'left')")


# ---------------------------------------------------------------------------------------------
# texts -> batches -> class logits (training, evaluation and `LLM.classify` share these)
# ---------------------------------------------------------------------------------------------
def encode_texts(tokenizer: Tokenizer, texts: list[str], max_length: int, truncate: bool = False,
                 source: str = "data") -> list[list[int]]:
    """Token ids of each text; texts longer than `max_length` are one error naming how many (or cut)."""
    ids = [tokenizer.encode(t) for t in texts]
    long = [len(x) for x in ids if len(x) > max_length]
    if long and not truncate:
        raise LmforgeError(f"{source}: {len(long)} of {len(ids)} texts are longer than {max_length} tokens (longest "
                           f"{max(long)}); raise data.max_length or pass --data.truncate true to cut them")
    return [x[:max_length] if x else [0] for x in ids]


def collate(rows: list[list[int]], pad_id: int, pad_side: str = "right", labels: list[int] | None = None,
            ) -> dict[str, torch.Tensor]:
    """A batch: `ids` (B, T), `last` (B,) the index of each row's last real token, `labels` (B,)
    when given, and for left padding `segments` (the padding is a document of its own, so the text
    neither attends to it nor has its positions shifted by it)."""
    import torch

    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    out: dict[str, torch.Tensor] = {}
    if pad_side == "left":
        segments = torch.ones((len(rows), T), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, T - len(r):] = torch.tensor(r)
            segments[b, :T - len(r)] = 0
        out["segments"] = segments
        last = torch.full((len(rows),), T - 1, dtype=torch.long)
    else:
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.tensor(r)
        last = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)
    out.update(ids=ids, last=last)
    if labels is not None:
        out["labels"] = torch.tensor(labels, dtype=torch.long)
    return out


def class_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], hidden: bool = False) -> torch.Tensor:
    """(B, C) logits at each row's last real token (`hidden`: the (B, d) final hidden states there).

    A batch of cached `features` goes straight through `model` (the head alone)."""
    import torch

    if "features" in batch:
        return model(batch["features"])
    out = model(batch["ids"], segments=batch.get("segments"), return_hidden=hidden)  # (B, T, C or d)
    return out[torch.arange(out.size(0), device=out.device), batch["last"]]


def classify_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy of the class logits; reports how many texts of the step were `correct`."""
    import torch.nn.functional as F

    logits = class_logits(model, batch).float()
    return F.cross_entropy(logits, batch["labels"]), {"correct": (logits.argmax(-1) == batch["labels"]).sum()}


def predict(model: torch.nn.Module, rows: list[list[int]], pad_id: int, batch_size: int = 32,
            pad_side: str = "right", hidden: bool = False) -> torch.Tensor:
    """Class logits (N, C) (or last hidden states (N, d)) for token rows, batched by similar length."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    outs = [None] * len(rows)
    with torch.no_grad():
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            batch = collate([rows[j] for j in idx], pad_id, pad_side)
            batch = {k: v.to(device) for k, v in batch.items()}
            for j, row in zip(idx, class_logits(model, batch, hidden=hidden).float().cpu()):
                outs[j] = row
    return torch.stack(outs)


def pad_id_of(tokenizer: Tokenizer) -> int:
    for tid in (getattr(tokenizer, "pad_id", None), tokenizer.eos_id, 0):
        if tid is not None:
            return int(tid)
    return 0


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def metrics(labels: list[int], preds: list[int], classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix (rows: true, columns: predicted)."""
    C = len(classes)
    cm = [[0] * C for _ in range(C)]
    for y, p in zip(labels, preds):
        cm[y][p] += 1
    per_class = {}
    for i, name in enumerate(classes):
        tp = cm[i][i]
        predicted = sum(cm[r][i] for r in range(C))
        actual = sum(cm[i])
        prec = tp / predicted if predicted else 0.0
        rec = tp / actual if actual else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[name] = {"precision": prec, "recall": rec, "f1": f1, "support": actual}
    acc = sum(cm[i][i] for i in range(C)) / max(len(labels), 1)
    return {"accuracy": acc, "per_class": per_class, "confusion": cm}


def draw_confusion(cm: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.2 * len(classes) + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(max(r) for r in cm) or 1
    for i, row in enumerate(cm):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------------
def classify(cfg: ClassifyConfig) -> dict[str, Any]:
    """Finetune a classifier as `cfg` says; returns the summary (with the test report)."""
    from lmforge.finetune.common import run

    return run(cfg, "finetune classify", _run)


def _head_model(head: torch.nn.Module) -> torch.nn.Module:
    """The classifier head alone, as the module the loop trains on cached features: its state dict
    keys (`lm_head.weight`) are those of the full model."""
    from torch import nn

    class CachedHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm_head = head

        def forward(self, features):  # (B, d) -> (B, C)
            return self.lm_head(features)

    return CachedHead()


def _run(cfg: ClassifyConfig, info: Any) -> dict[str, Any]:
    import torch

    from lmforge.data.classify import load_classification
    from lmforge.finetune import common
    from lmforge.finetune.method import describe
    from lmforge.training.loop import Hooks, train_loop
    from lmforge.training.state import find_resume, seed_everything

    t0 = time.perf_counter()
    d, t = cfg.data, cfg.train
    main = info.is_main
    # ---- everything the user can get wrong, checked before any training ----
    data = load_classification(common.local_path(d.file), d.text_key, d.label_key, d.classes, d.names, d.balance,
                               d.val_fraction, d.test_fraction, d.seed, d.limit)
    if main:
        print(f"data: {data.summary()}", flush=True)
    if not data.train:
        raise LmforgeError(f"{d.file}: no training rows left after the val/test split")
    common.check_batches(cfg, info.world_size)
    config, sd, tokenizer = common.load_pretrained(common.local_path(cfg.init))
    max_length = d.max_length or config.block_size
    if max_length > config.block_size:
        raise TrainConfigError(f"data.max_length={max_length} is larger than the model's context "
                               f"({config.block_size} tokens)")
    rows = {split: encode_texts(tokenizer, [x for x, _ in getattr(data, split)], max_length, d.truncate,
                                f"{d.file} ({split})") for split in ("train", "val", "test")}
    labels = {split: [y for _, y in getattr(data, split)] for split in ("train", "val", "test")}
    pad = pad_id_of(tokenizer)
    C = len(data.classes)
    seed_everything(t.seed)

    def fresh() -> torch.nn.Module:
        return common.build_model(config, sd, cfg.method, num_classes=C, seed=t.seed)[0]

    model, trainable = common.build_model(config, sd, cfg.method, num_classes=C, seed=t.seed)
    resume = find_resume(cfg.resume, Path(cfg.out_dir) / "checkpoints", main)
    if resume is not None:
        common.load_for_resume(model, resume, cfg.method)
    if main:
        print(f"model: {config.name} -> {C} classes {data.classes} | {describe(model, cfg.method)}", flush=True)
    save = common.model_saver(config, tokenizer, cfg.method, trainable, fresh, data.classes)

    cached = cfg.method.name == "head"
    if cached:
        # the trunk is frozen: its last-token features are the same every epoch, compute them once
        tc = time.perf_counter()
        model.eval()
        feats = {s: predict(model.to(info.device), rows[s], pad, hidden=True) for s in rows if rows[s]}
        if main:
            n = sum(len(r) for s in rows for r in rows[s])
            print(f"features of the frozen trunk cached: {n:,} tokens in {time.perf_counter() - tc:.1f}s", flush=True)
        full_sd = {k: v for k, v in model.cpu().state_dict().items() if not k.startswith("lm_head.")}
        trained = _head_model(model.lm_head)
        save_model = (lambda path, msd: save(path, {**full_sd, **msd}))

        def batch_of(idx: list[int], split: str) -> dict[str, torch.Tensor]:
            return {"features": feats[split][idx], "labels": torch.tensor([labels[split][i] for i in idx])}
    else:
        trained, save_model = model, save

        def batch_of(idx: list[int], split: str) -> dict[str, torch.Tensor]:
            return collate([rows[split][i] for i in idx], pad, cfg.pad_side, [labels[split][i] for i in idx])

    b = t.micro_batch_size

    def make_epoch(epoch: int) -> list[dict[str, torch.Tensor]]:
        order = torch.randperm(len(rows["train"]), generator=torch.Generator().manual_seed(t.seed * 1000 + epoch))
        order = order.tolist()
        return [batch_of(order[i:i + b], "train") for i in range(0, len(order) - b + 1, b)]

    batches = common.EpochBatches(make_epoch, info.rank, info.world_size)
    val_batches = [batch_of(list(range(i, min(i + b, len(rows["val"])))), "val") for i in range(0, len(rows["val"]), b)]

    def evaluate(m: torch.nn.Module, autocast: Any) -> float | None:
        if not val_batches:
            return None
        from lmforge.training.loop import _to_device

        was = m.training
        m.eval()
        loss = correct = n = 0.0
        with torch.no_grad(), autocast:
            for vb in val_batches:
                vb = _to_device(vb, info.device)
                logits = class_logits(m, vb).float()
                loss += float(torch.nn.functional.cross_entropy(logits, vb["labels"], reduction="sum"))
                correct += float((logits.argmax(-1) == vb["labels"]).sum())
                n += len(vb["labels"])
        m.train(was)
        if main:
            print(f"val accuracy {correct / n:.4f} ({int(correct)}/{int(n)})", flush=True)
        return loss / n

    def test_predictions(m: torch.nn.Module) -> list[int]:
        m.eval()
        m.to(info.device)
        if not rows["test"]:
            return []
        if cached:
            with torch.no_grad():
                return m(feats["test"].to(info.device)).float().argmax(-1).tolist()
        return predict(m, rows["test"], pad, pad_side=cfg.pad_side).argmax(-1).tolist()

    # the test accuracy of the untrained head (a fresh run only): the "before" of the report
    before = metrics(labels["test"], test_predictions(trained), data.classes)["accuracy"] \
        if main and resume is None and rows["test"] else None
    trained.train()
    mean_len = sum(map(len, rows["train"])) / len(rows["train"])
    summary = train_loop(
        trained, batches, classify_loss, save_model, seq_len=max(1, round(mean_len)),
        hooks=Hooks(evaluate=evaluate), title=f"finetune classify: {config.name} ({cfg.method.name})",
        data_note=f"{len(rows['train'])} train texts, {C} classes", **common.loop_kwargs(cfg, info, resume))

    # ---- the test report (rank 0), from the trained in-memory model ----
    if main:
        report = metrics(labels["test"], test_predictions(trained), data.classes)
        report.update(accuracy_before=before, classes=data.classes, sizes={s: len(rows[s]) for s in rows}, duplicates=data.duplicates,
                      method=cfg.method.name, seconds=round(time.perf_counter() - t0, 1),
                      train_seconds=summary["seconds"])
        out = Path(cfg.out_dir)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        if rows["test"]:
            draw_confusion(report["confusion"], data.classes, out / "confusion.png",
                           f"test accuracy {100 * report['accuracy']:.1f}%")
        print(format_report(report), flush=True)
        summary["test"] = report
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_report(report: dict[str, Any]) -> str:
    was = report.get("accuracy_before")
    lines = [f"test accuracy {'' if was is None else f'{100 * was:.2f}% (untrained head) -> '}"
             f"{100 * report['accuracy']:.2f}% on {report['sizes']['test']} texts "
             f"(train {report['sizes']['train']}, val {report['sizes']['val']}) in {report['seconds']:.0f}s"]
    for name, m in report["per_class"].items():
        lines.append(f"  {name:>12}: precision {m['precision']:.3f}  recall {m['recall']:.3f}  f1 {m['f1']:.3f}"
                     f"  ({m['support']} texts)")
    return "\n".join(lines)
