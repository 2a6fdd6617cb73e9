"""Preference data: (prompt, chosen, rejected) pairs and KTO's (prompt, completion, label) -> token ids.

    pairs = read_pairs("pairs.jsonl")                         # checked: errors name the file and line
    encoded, report = encode_pairs(pairs, tokenizer, config, max_len=256)
    batch = collate_pairs(encoded[:4], pad_id)                # ids/targets (2B, T): chosen rows, then rejected
    pairs = task_pairs(records, seed=0)                       # from lmforge.data.tasks: checked vs plausible wrong

Formats (one JSON object a line):
- **paired**: `prompt`, `chosen`, `rejected`. Plain text (`"prompt": "..."`, the completions strings,
  each followed by EOS), or chat: `prompt` a list of `{role, content}` messages and `chosen` /
  `rejected` an assistant message list (TRL's conversational form) or a string, rendered with the
  model's chat template (the completion is what the assistant turn adds to the prompt).
- **unpaired (KTO)**: `prompt`, `completion`, `label` (true: desirable).

The prompt tokens are masked: a sequence's log-probability is the sum over its completion tokens. A
pair longer than `max_len` loses tokens from the start of its prompt (counted in the report); when the
completion alone does not fit, that is an error naming the line.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge._io import jsonl_objects, read_text
from lmforge.data.sft import IGNORE
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import torch

    from lmforge.config import Config
    from lmforge.tokenizer import Tokenizer


class PairsDataError(LmforgeError):
    """A bad preference-data file or record."""


# ---------------------------------------------------------------------------------------------
# records: read and check (every bad input is one line naming the file and line)
# ---------------------------------------------------------------------------------------------
def _text_of(value: Any, key: str, where: str, prompt: bool = False) -> str | list[dict]:
    """A checked field: a string, or a list of chat messages (the prompt: any roles; a completion:
    assistant turns)."""
    if isinstance(value, str):
        if not value.strip():
            raise PairsDataError(f"{where}: {key!r} is empty")
        return value
    if isinstance(value, list) and value:
        roles = ("system", "user", "assistant") if prompt else ("assistant",)
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in roles:
                raise PairsDataError(f"{where}: {key!r} message {i} must be {{\"role\": {'|'.join(roles)}, "
                                     f"\"content\": \"…\"}}")
        if not any(m["content"].strip() for m in value):
            raise PairsDataError(f"{where}: {key!r} is empty")
        return value
    raise PairsDataError(f"{where}: {key!r} must be a non-empty string or list of chat messages, "
                         f"got {type(value).__name__ if not isinstance(value, list) else 'an empty list'}")


def check_record(rec: Any, where: str, unpaired: bool = False) -> dict:
    """A checked pair (`prompt`, `chosen`, `rejected`) or, `unpaired`, KTO's (`prompt`, `completion`, `label`)."""
    if not isinstance(rec, dict):
        raise PairsDataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    keys = ("prompt", "completion", "label") if unpaired else ("prompt", "chosen", "rejected")
    missing = [k for k in keys if k not in rec]
    if missing:
        raise PairsDataError(f"{where}: missing key {missing[0]!r} (a {'KTO record' if unpaired else 'pair'} needs "
                             f"{', '.join(keys)}; this one has: {', '.join(sorted(rec)) or 'none'})")
    out = {"prompt": _text_of(rec["prompt"], "prompt", where, prompt=True)}
    if unpaired:
        if not isinstance(rec["label"], bool):
            raise PairsDataError(f"{where}: 'label' must be true (desirable) or false, got {json.dumps(rec['label'])}")
        out.update(completion=_text_of(rec["completion"], "completion", where), label=rec["label"])
        return out
    out.update(chosen=_text_of(rec["chosen"], "chosen", where), rejected=_text_of(rec["rejected"], "rejected", where))
    if out["chosen"] == out["rejected"]:
        raise PairsDataError(f"{where}: 'chosen' and 'rejected' are the same; a pair needs two different completions")
    return out


def read_pairs(path: str | Path, unpaired: bool = False) -> list[dict]:
    """Checked records of a JSONL file (see the module docstring)."""
    path = Path(path)
    text = read_text(path, PairsDataError)
    records = [check_record(rec, f"{path}:{n}", unpaired) for n, rec in jsonl_objects(text.splitlines(), path,
                                                                                       PairsDataError)]
    if not records:
        raise PairsDataError(f"{path}: no records")
    return records


def write_jsonl(path: str | Path, records: Sequence[dict]) -> None:
    from lmforge._io import atomic_write_text

    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# ---------------------------------------------------------------------------------------------
# records -> token ids (prompt masked, prompt truncated first)
# ---------------------------------------------------------------------------------------------
@dataclass
class EncodedRecord:
    """A prompt's ids and its completions' ids: [chosen, rejected] for a pair, [completion] (+ `label`) for KTO."""

    prompt: list[int]
    completions: list[list[int]]
    label: bool | None = None


@dataclass
class EncodeReport:
    """What encoding did: how many prompts lost tokens from their start to fit `max_len`."""

    records: int = 0
    truncated: int = 0
    tokens_cut: int = 0
    lines: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        cut = (f"; {self.truncated} prompts truncated from the start to fit ({self.tokens_cut} tokens cut)"
               if self.truncated else "")
        return f"{self.records} records{cut}"


def _encode_one(prompt: str | list[dict], completion: str | list[dict], tokenizer: Tokenizer,
                config: Config | None) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids): plain text gets the completion + EOS; chat goes through the template."""
    if isinstance(prompt, str) and isinstance(completion, str):
        ids = tokenizer.encode(completion, bos=False)
        return tokenizer.encode(prompt), ids + ([tokenizer.eos_id] if tokenizer.eos_id is not None else [])
    from lmforge.prompts import encode_chat

    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    reply = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else list(completion)
    head = encode_chat(turns, tokenizer, config, add_generation_prompt=True)
    full = encode_chat(turns + reply, tokenizer, config, add_generation_prompt=False)
    if full[:len(head)] != head:  # a template that re-renders earlier turns: fall back to the common prefix
        n = next((i for i, (a, b) in enumerate(zip(head, full)) if a != b), min(len(head), len(full)))
        head = full[:n]
    return head, full[len(head):]


def encode_records(records: Sequence[dict], tokenizer: Tokenizer, config: Config | None = None,
                   max_len: int | None = None, source: str = "data") -> tuple[list[EncodedRecord], EncodeReport]:
    """Tokenize checked records (pairs or KTO's); a prompt too long for `max_len` with its longest
    completion is cut from its start (reported); a completion with no room left is an error."""
    out, report = [], EncodeReport()
    for i, rec in enumerate(records):
        unpaired = "completion" in rec
        texts = [rec["completion"]] if unpaired else [rec["chosen"], rec["rejected"]]
        parts = [_encode_one(rec["prompt"], t, tokenizer, config) for t in texts]
        prompt = parts[0][0]
        completions = [c for _, c in parts]
        if not prompt:
            raise PairsDataError(f"{source}: record {i + 1}: the prompt encodes to no tokens")
        if max_len is not None:
            longest = max(len(c) for c in completions)
            if longest >= max_len:
                raise PairsDataError(f"{source}: record {i + 1}: a completion of {longest} tokens leaves no room for "
                                     f"the prompt in max_seq_length={max_len}; raise data.max_seq_length or shorten it")
            room = max_len - longest
            if len(prompt) > room:
                report.truncated += 1
                report.tokens_cut += len(prompt) - room
                prompt = prompt[len(prompt) - room:]
        out.append(EncodedRecord(prompt, completions, rec.get("label") if unpaired else None))
    report.records = len(out)
    return out, report


def data_hash(records: Sequence[EncodedRecord]) -> str:
    """A short hash of the token ids (the key of cached reference log-probs)."""
    h = hashlib.blake2b(digest_size=10)
    for r in records:
        h.update(json.dumps([r.prompt, r.completions, r.label]).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------
def collate_rows(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """`ids` and `targets` (N, T) of (prompt, completion) rows, right-padded: targets[t] is token t+1
    where it is a completion token, else IGNORE (so the prompt and the padding are never scored)."""
    import torch

    T = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for b, (p, c) in enumerate(rows):
        ids[b, :len(p) + len(c)] = torch.tensor(p + c)
        targets[b, len(p) - 1:len(p) + len(c) - 1] = torch.tensor(c)
    return {"ids": ids, "targets": targets}


def collate_pairs(records: Sequence[EncodedRecord], pad_id: int) -> dict[str, torch.Tensor]:
    """A batch of B pairs: rows 0..B-1 the chosen sequences, rows B..2B-1 the rejected ones."""
    rows = [(r.prompt, r.completions[0]) for r in records] + [(r.prompt, r.completions[1]) for r in records]
    return collate_rows(rows, pad_id)


def collate_unpaired(records: Sequence[EncodedRecord], kl_records: Sequence[EncodedRecord], pad_id: int,
                     ) -> dict[str, torch.Tensor]:
    """A KTO batch: the B completions, then the B mismatched (prompt, other completion) rows of the KL
    estimate; `labels` (B,) true for desirable."""
    import torch

    rows = [(r.prompt, r.completions[0]) for r in (*records, *kl_records)]
    return {**collate_rows(rows, pad_id), "labels": torch.tensor([bool(r.label) for r in records])}


def kl_partners(records: Sequence[EncodedRecord], max_len: int | None = None) -> list[EncodedRecord]:
    """KTO's mismatched pairs: record i's prompt with record i+1's completion (the KL estimate's samples)."""
    n = len(records)
    out = []
    for i, r in enumerate(records):
        c = records[(i + 1) % n].completions[0]
        p = r.prompt if max_len is None else r.prompt[max(0, len(r.prompt) + len(c) - max_len):]
        out.append(EncodedRecord(p or r.prompt[-1:], [c], None))
    return out


# ---------------------------------------------------------------------------------------------
# pairs from the verifiable tasks: chosen = the checked answer, rejected = a plausible wrong one
# ---------------------------------------------------------------------------------------------
def wrong_answer(family: str, answer: str, r: random.Random) -> str:
    """A plausible wrong answer to a task of `family`: an off-by-one, a wrong unit, a reversed order…
    (always one the checker rejects)."""
    from lmforge.data.tasks import WORDS, check

    for _ in range(20):
        if family in ("sort",):
            xs = answer.split(", ")
            cand = ", ".join(reversed(xs)) if r.random() < 0.5 else ", ".join(xs[1:] + xs[:1])
        elif family == "reverse":
            cand = answer[::-1] if r.random() < 0.5 else answer[1:] + answer[0]
        elif family == "uppercase":  # (the checker ignores case) a reversed word order, or a letter dropped
            words = answer.split()
            i = r.randrange(len(answer))
            cand = " ".join(reversed(words)) if len(words) > 1 and r.random() < 0.5 else answer[:i] + answer[i + 1:]
        elif family == "date_add":
            import datetime

            cand = (datetime.date.fromisoformat(answer) + datetime.timedelta(days=r.choice([-1, 1]))).isoformat()
        elif family == "json_field":
            cand = r.choice(WORDS)
        elif family == "thousands":
            digits = answer.replace(",", "")
            cand = digits if r.random() < 0.5 else f"{int(digits) + r.choice([-1, 1]):,}"
        elif family == "unit_conversion" and r.random() < 0.5:
            n = int(answer)
            cand = str(n * 10 if r.random() < 0.5 or n % 10 else n // 10)  # a wrong unit: off by a factor of 10
        else:  # the numeric families: off by one
            cand = str(int(answer.replace(",", "")) + r.choice([-1, 1]))
        if not check(family, cand, answer):
            return cand
    raise LmforgeError(f"no wrong answer found for {family} answer {answer!r}")


def task_pairs(records: Sequence[dict], seed: int = 0) -> list[dict]:
    """Pairs from checkable task records (`lmforge.data.tasks`): the prompt rendered as in SFT (Alpaca),
    chosen the checked answer, rejected a plausible wrong one; `family` kept for the report."""
    from lmforge.data.sft import alpaca_prompt

    r = random.Random(seed)
    return [{"prompt": alpaca_prompt(rec["instruction"], rec.get("input", "")), "chosen": rec["output"],
             "rejected": wrong_answer(rec["family"], rec["output"], r), "family": rec["family"]} for rec in records]


def write_task_pairs(out: str | Path, n_train: int = 2000, n_test: int = 300, seed: int = 0) -> dict[str, int]:
    """`train.jsonl` and `test.jsonl` of pairs from the generated tasks (test: phrasings unseen in training)."""
    from lmforge.data.tasks import make_tasks

    train, test = make_tasks(n_train, n_test, seed)
    for name, recs in (("train", train), ("test", test)):
        write_jsonl(Path(out) / f"{name}.jsonl", task_pairs(recs, seed))
    return {"train": len(train), "test": len(test)}


# ---------------------------------------------------------------------------------------------
# pairs from sampling twice and a judge (any OpenAI-compatible endpoint)
# ---------------------------------------------------------------------------------------------
JUDGE_PROMPT = ("You compare two answers to the same question. Reply with the single letter A or B: the better "
                "answer (correct, helpful, concise).\n\nQuestion:\n{prompt}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
                "The better answer is")


def rank_with_judge(url: str, model: str, prompt: str, a: str, b: str, api_key: str = "none",
                    timeout: float = 60.0) -> int:
    """0 if the judge at `url` (an OpenAI-compatible /v1 base URL) prefers `a`, 1 for `b`.

    The judge's reply is read for its first `A` or `B`; a reply with neither is an error."""
    import re

    from openai import OpenAI

    client = OpenAI(base_url=url, api_key=api_key, timeout=timeout, max_retries=0)
    reply = client.chat.completions.create(model=model, temperature=0.0, max_tokens=4, messages=[
        {"role": "user", "content": JUDGE_PROMPT.format(prompt=prompt, a=a, b=b)}]).choices[0].message.content or ""
    m = re.search(r"\b([AB])\b", reply.upper()) or re.search(r"([AB])", reply.upper())
    if m is None:
        raise LmforgeError(f"the judge {model!r} at {url} answered {reply!r}, neither A nor B")
    return 0 if m.group(1) == "A" else 1


def judged_pairs(url: str, model: str, prompts: Sequence[str], judge_url: str | None = None,
                 judge_model: str | None = None, max_tokens: int = 32, temperature: float = 1.0,
                 seed: int = 0) -> list[dict]:
    """Sample each prompt twice from `model` at `url` and let the judge rank the two samples: the
    preferred one is `chosen`. Prompts whose two samples are identical give no pair."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="none", max_retries=0)
    out = []
    for i, prompt in enumerate(prompts):
        samples = [client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                             temperature=temperature, seed=seed + 2 * i + k).choices[0].text
                   for k in range(2)]
        if samples[0].strip() == samples[1].strip() or not all(s.strip() for s in samples):
            continue
        best = rank_with_judge(judge_url or url, judge_model or model, prompt, *samples)
        out.append({"prompt": prompt, "chosen": samples[best], "rejected": samples[1 - best]})
    return out
