"""Multiple choice by log-likelihood: MMLU (the `mmlu` asset) and any JSONL of the same shape.

A line is one question, in one of these shapes (all read into an `Item`):
- MMLU (the asset): `question`, `answer_a` … `answer_d`, `correct_answer` ("A"), `topic`;
- generic: `question`, `choices` (a list), `answer` (an index or a letter), optional `topic`/`subject`;
- ARC: `question`, `choices: {"text": […], "label": ["A", …]}`, `answerKey`;
- HellaSwag: `ctx`, `endings`, `label` (the ending continues the context: no "Question:" wrapper).

Two scorings (`EvalConfig.scoring`):
- letter: MMLU's standard prompt (Hendrycks et al.; lm-eval's `mmlu` task), the letter scored after
  "Answer:" -> acc
      The following are multiple choice questions (with answers) about {topic}.\\n\\n
      {question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:          + " A" | " B" | " C" | " D"
- options: each option's own text after "Question: {question}\\nAnswer:" (HellaSwag: after the
  context) -> acc (sum of log-probs) and acc_norm (divided by the option's length in characters, as lm-eval).
k shots (solved examples, answer filled in, "\\n\\n" apart) go between the header and the question.
"""

from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError
from lmforge.evaluate.stats import mean_stderr

if TYPE_CHECKING:
    from lmforge.api import LLM
    from lmforge.evaluate.config import EvalConfig

LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class Item:
    """One question: its text, the options, the index of the right one, its topic."""

    question: str
    choices: tuple[str, ...]
    answer: int
    topic: str = ""
    continues: bool = False
    """The options continue `question` (HellaSwag) rather than answer it."""


def _answer_index(value: Any, n: int, where: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in LETTERS[:n]:
        return LETTERS.index(value.strip().upper())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n:
        return value
    raise LmforgeError(f"{where}: answer {value!r} names none of the {n} choices (an index 0..{n - 1} or a letter)")


def is_header_row(record: Any) -> bool:
    """A CSV header read as data (`{"question": "question", …, "correct_answer": "answer"}`): the
    `mmlu` asset has two (its 14,044 lines hold 14,042 questions)."""
    return isinstance(record, dict) and record.get("question") == "question" and record.get("correct_answer") == "answer"


def parse_item(record: Any, where: str) -> Item:
    """An `Item` from one JSON record in any of the module's shapes; one-line error otherwise."""
    if not isinstance(record, dict):
        raise LmforgeError(f"{where}: expected a JSON object, got {type(record).__name__}")
    topic = str(record.get("topic", record.get("subject", ""))).replace("_", " ")
    continues = False
    if "answer_a" in record:  # the MMLU asset
        keys = sorted(k for k in record if k.startswith("answer_") and len(k) == 8)
        choices, answer = [record[k] for k in keys], record.get("correct_answer")
        question = record.get("question")
    elif "endings" in record:  # HellaSwag
        choices, answer, question, continues = record["endings"], record.get("label"), record.get("ctx"), True
    elif isinstance(record.get("choices"), dict):  # ARC
        choices, question = record["choices"].get("text"), record.get("question")
        labels = record["choices"].get("label") or []
        key = record.get("answerKey")
        answer = labels.index(key) if key in labels else key
    else:
        choices, answer, question = record.get("choices"), record.get("answer"), record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise LmforgeError(f"{where}: no question text (expected a 'question' string field)")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise LmforgeError(f"{where}: 'choices' must be a list of two or more strings")
    if answer is None:
        raise LmforgeError(f"{where}: no answer (expected 'answer', 'correct_answer', 'answerKey' or 'label')")
    return Item(question, tuple(choices), _answer_index(answer, len(choices), where), topic, continues)


def read_items(path: str | Path) -> list[Item]:
    """The questions of a JSONL file; a malformed line or a choice count unlike the first item's
    is one error naming the line."""
    from lmforge._io import jsonl_objects, read_text

    items: list[Item] = []
    for n, record in jsonl_objects(read_text(Path(path), LmforgeError).splitlines(), path, LmforgeError):
        where = f"{path}:{n}"
        if is_header_row(record):
            continue
        item = parse_item(record, where)
        if items and len(item.choices) != len(items[0].choices):
            raise LmforgeError(f"{where}: {len(item.choices)} choices, but the first item has "
                               f"{len(items[0].choices)}; every item needs the same number")
        items.append(item)
    if not items:
        raise LmforgeError(f"{path}: no questions in this file")
    return items


def select(n: int, limit: int | None, subsample: int | None, seed: int) -> list[int]:
    """Indices of the items evaluated: a seeded random `subsample` (kept in file order), then the first `limit`."""
    chosen = list(range(n))
    if subsample is not None and subsample < n:
        chosen = sorted(random.Random(seed).sample(chosen, subsample))
    return chosen[:limit] if limit is not None else chosen


# ---------------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------------
def header(topic: str) -> str:
    return f"The following are multiple choice questions (with answers) about {topic}.\n\n" if topic else ""


def question_text(item: Item, scoring: str) -> str:
    """The item as it is shown, up to where the answer goes."""
    if scoring == "letter":
        listed = "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
        return f"{item.question.strip()}{listed}\nAnswer:"
    return item.question if item.continues else f"Question: {item.question}\nAnswer:"


def continuations(item: Item, scoring: str) -> list[str]:
    if scoring == "letter":
        return [f" {LETTERS[i]}" for i in range(len(item.choices))]
    return [f" {c}" for c in item.choices]


def prompt(item: Item, shots: list[Item], scoring: str) -> str:
    """The context scored before each continuation: header (letter scoring), shots, the question."""
    solved = "".join(question_text(s, scoring) + continuations(s, scoring)[s.answer] + "\n\n" for s in shots)
    return (header(item.topic) if scoring == "letter" else "") + solved + question_text(item, scoring)


def pick_shots(items: list[Item], index: int, k: int, pool: list[Item] | None, seed: int) -> list[Item]:
    """k solved examples for `items[index]` of its topic: the first k of `pool` (a separate split),
    or k others from `items` drawn with a per-item seed (never the item itself)."""
    if k == 0:
        return []
    topic = items[index].topic
    if pool is not None:
        return [s for s in pool if s.topic == topic][:k]
    others = [j for j, it in enumerate(items) if it.topic == topic and j != index]
    return [items[j] for j in random.Random(f"{seed}:{index}").sample(others, min(k, len(others)))]


# ---------------------------------------------------------------------------------------------
# scoring and metrics
# ---------------------------------------------------------------------------------------------
def predictions(llm: LLM, items: list[Item], contexts: list[str], scoring: str,
                batch_size: int) -> list[dict[str, Any]]:
    """Per item: the log-likelihood of each option, the predicted option (and length-normalised)."""
    from lmforge.evaluate.scoring import encode_pair, loglikelihoods

    tok = llm._require_tokenizer()
    requests, spans = [], []
    for item, ctx in zip(items, contexts):
        conts = continuations(item, scoring)
        spans.append((len(requests), conts))
        requests += [encode_pair(tok, ctx, c) for c in conts]
    lls = [ll for ll, _ in loglikelihoods(llm.model, requests, batch_size)]
    out = []
    for item, (start, conts) in zip(items, spans):
        ll = lls[start:start + len(conts)]
        norm = [x / len(c) for x, c in zip(ll, conts)]
        out.append({"loglikelihoods": ll, "pred": max(range(len(ll)), key=ll.__getitem__),
                    "pred_norm": max(range(len(norm)), key=norm.__getitem__), "gold": item.answer,
                    "topic": item.topic})
    return out


def metrics_of(preds: list[dict[str, Any]], scoring: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, per-topic breakdown): acc (micro: over items), acc_macro (mean over topics), and
    with options scoring acc_norm; each {"value", "stderr"}."""
    names = {"acc": "pred"} | ({"acc_norm": "pred_norm"} if scoring == "options" else {})
    metrics, breakdown = {}, {}
    topics = sorted({p["topic"] for p in preds})
    for name, key in names.items():
        hits = [float(p[key] == p["gold"]) for p in preds]
        value, se = mean_stderr(hits)
        metrics[name] = {"value": value, "stderr": se}
        per_topic = {t: mean_stderr([h for h, p in zip(hits, preds) if p["topic"] == t]) for t in topics}
        for t, (v, s) in per_topic.items():
            breakdown.setdefault(t or "(none)", {"n": sum(p["topic"] == t for p in preds)})[name] = {"value": v, "stderr": s}
        if len(topics) > 1:
            # the mean of per-topic means; its error from theirs (independent topics)
            macro = sum(v for v, _ in per_topic.values()) / len(topics)
            macro_se = math.sqrt(sum((s or 0.0) ** 2 for _, s in per_topic.values())) / len(topics)  # (one-item topics: 0)
            metrics[f"{name}_macro"] = {"value": macro, "stderr": macro_se}
    return metrics, breakdown


def evaluate_items(llm: LLM, items: list[Item], cfg: EvalConfig, task: str) -> dict[str, Any]:
    """The task result (see `lmforge.evaluate.run`) of `items` under `cfg`'s selection, shots and scoring."""
    import time

    pool = read_items(cfg.fewshot_data) if cfg.fewshot_data else None
    chosen = select(len(items), cfg.limit, cfg.subsample, cfg.seed)
    contexts = [prompt(items[i], pick_shots(items, i, cfg.num_fewshot, pool, cfg.seed), cfg.scoring) for i in chosen]
    t0 = time.perf_counter()
    preds = predictions(llm, [items[i] for i in chosen], contexts, cfg.scoring, cfg.batch_size)
    seconds = time.perf_counter() - t0
    metrics, breakdown = metrics_of(preds, cfg.scoring)
    for i, p in zip(chosen, preds):
        p["index"] = i
    return {"task": task, "metrics": metrics, "breakdown": breakdown, "n": len(chosen), "seconds": seconds,
            "items_per_s": len(chosen) / seconds if seconds else None,
            "prompt_format": {"scoring": cfg.scoring, "num_fewshot": cfg.num_fewshot,
                              "example": contexts[0]}, "items": preds}


def mmlu(llm: LLM, cfg: EvalConfig) -> dict[str, Any]:
    """MMLU (the `mmlu` asset, or --data in its shape)."""
    from lmforge.assets import fetch_asset

    return evaluate_items(llm, read_items(cfg.data or fetch_asset("mmlu")), cfg, "mmlu")


def mc(llm: LLM, cfg: EvalConfig) -> dict[str, Any]:
    """Any multiple-choice JSONL (--data)."""
    if not cfg.data:
        raise LmforgeError("task mc needs --data FILE.jsonl (multiple-choice questions)")
    return evaluate_items(llm, read_items(cfg.data), cfg, "mc")
