"""Instruction-finetuning data: records -> token ids with a loss mask -> (packed) batches.

    records = read_records("train.jsonl")          # Alpaca ({instruction, input, output}) or chat ({messages})
    examples = encode_records(records, tokenizer, config, style="alpaca", mask_prompt=True)
    for batch in batches(examples, batch_size=4, max_len=512, pack=True, seed=0): ...

Formats:
- **Alpaca**: `instruction`, optional `input`, `output`, rendered with the Alpaca template (the one
  LLMs-from-scratch uses: the preamble, `### Instruction:`, `### Input:` when there is an input,
  `### Response:`), the output followed by the tokenizer's EOS.
- **Chat**: `messages` (`system`/`user`/`assistant` turns) rendered with the model's own chat
  template (the text equals transformers' `apply_chat_template`), or a built-in style.

Loss: with `mask_prompt` (the default) only response tokens count: Alpaca's output + EOS, and in
a chat every assistant turn (its content and its end-of-turn marker), never the user's or system's
text. A label of -100 marks a masked position (`ignore_index`).

Packing puts several examples in one row of `max_len` tokens; `segments` tells the model where each
starts, so no token attends across examples and positions restart (`GPT.forward(segments=)`): the
loss of a packed batch equals the loss of the same examples unpacked.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge._io import jsonl_objects, read_text
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import torch

    from lmforge.config import Config
    from lmforge.tokenizer import Tokenizer

IGNORE = -100
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")


class SFTDataError(LmforgeError):
    """A bad instruction-data file or record."""


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt up to and including `### Response:\\n` (the response follows it)."""
    text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}"
    if input:
        text += f"\n\n### Input:\n{input}"
    return text + "\n\n### Response:\n"


def _check_record(rec: Any, where: str) -> dict:
    if not isinstance(rec, dict):
        raise SFTDataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise SFTDataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                    "system", "user", "assistant"):
                raise SFTDataError(f"{where}: message {i} must be {{\"role\": system|user|assistant, "
                                   f"\"content\": \"…\"}}, got {json_preview(m)}")
        if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
            raise SFTDataError(f"{where}: the conversation has no non-empty assistant turn to learn from")
        return {"messages": msgs}
    missing = [k for k in ("instruction", "output") if k not in rec]
    if missing:
        keys = ", ".join(sorted(rec)) or "none"
        raise SFTDataError(f"{where}: missing key {missing[0]!r} (an Alpaca record needs instruction, output and "
                           f"optionally input; a chat record needs messages; this one has: {keys})")
    for k in ("instruction", "input", "output"):
        if k in rec and not isinstance(rec[k], str):
            raise SFTDataError(f"{where}: {k!r} must be a string, got {type(rec[k]).__name__}")
    if not rec["output"].strip():
        raise SFTDataError(f"{where}: 'output' is empty (nothing to learn)")
    if not rec["instruction"].strip():
        raise SFTDataError(f"{where}: 'instruction' is empty")
    return {"instruction": rec["instruction"], "input": rec.get("input", ""), "output": rec["output"]}


def json_preview(value: Any, limit: int = 60) -> str:
    import json

    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "…"


def read_records(path: str | Path) -> list[dict]:
    """Alpaca or chat records from a JSONL file or a JSON list; errors name the file and line."""
    import json

    path = Path(path)
    text = read_text(path, SFTDataError)
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SFTDataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise SFTDataError(f"{path}: expected a JSON list of records")
        records = [_check_record(r, f"{path}: record {i}") for i, r in enumerate(data)]
    else:
        records = [_check_record(rec, f"{path}:{n}") for n, rec in jsonl_objects(text.splitlines(), path, SFTDataError)]
    if not records:
        raise SFTDataError(f"{path}: no records")
    return records


@dataclass
class Example:
    """One tokenized record: ids and per-token labels (`IGNORE` where the loss is masked).

    `labels[t]` is the target for predicting token t from tokens < t, i.e. `labels == ids` except
    masked positions; the loss shifts them (predict ids[t+1] from position t)."""

    ids: list[int]
    labels: list[int]


def _encode_alpaca(rec: dict, tokenizer: Tokenizer, mask_prompt: bool) -> Example:
    prompt = tokenizer.encode(alpaca_prompt(rec["instruction"], rec["input"]))
    response = tokenizer.encode(rec["output"], bos=False)
    if tokenizer.eos_id is not None:
        response = response + [tokenizer.eos_id]
    labels = ([IGNORE] * len(prompt) if mask_prompt else list(prompt)) + response
    return Example(prompt + response, labels)


def _encode_chat(rec: dict, tokenizer: Tokenizer, config: Config | None, style: str | None,
                 mask_prompt: bool) -> Example:
    from lmforge.prompts import encode_chat

    msgs = rec["messages"]
    ids = encode_chat(msgs, tokenizer, config, style, add_generation_prompt=False)
    if not mask_prompt:
        return Example(ids, list(ids))
    labels = [IGNORE] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        # the turn's tokens: what the conversation up to and including it adds to the prompt before it
        start = len(encode_chat(msgs[:i], tokenizer, config, style, add_generation_prompt=True)) if i else 0
        end = len(encode_chat(msgs[: i + 1], tokenizer, config, style, add_generation_prompt=False))
        labels[start:end] = ids[start:end]
    return Example(ids, labels)


def encode_records(records: Sequence[dict], tokenizer: Tokenizer, config: Config | None = None,
                   style: str | None = None, mask_prompt: bool = True, max_len: int | None = None,
                   truncate: bool = False, source: str = "data") -> list[Example]:
    """Tokenize records; examples longer than `max_len` are an error naming how many (or, with
    `truncate`, are cut to it). Chat records use `style` (None: the model's template or its style)."""
    records = [_check_record(r, f"{source}: record {i}") for i, r in enumerate(records)]
    out = [_encode_alpaca(r, tokenizer, mask_prompt) if "instruction" in r
           else _encode_chat(r, tokenizer, config, style, mask_prompt) for r in records]
    if max_len is not None:
        long = [len(e.ids) for e in out if len(e.ids) > max_len]
        if long and not truncate:
            raise SFTDataError(f"{source}: {len(long)} of {len(out)} examples are longer than {max_len} tokens "
                               f"(longest {max(long)}); raise max_seq_length or pass --data.truncate true to cut them")
        out = [Example(e.ids[:max_len], e.labels[:max_len]) for e in out]
    out = [e for e in out if any(t != IGNORE for t in e.labels[1:])]
    if not out:
        raise SFTDataError(f"{source}: no example has a response token left to learn from")
    return out


def pack(examples: Sequence[Example], max_len: int) -> list[list[Example]]:
    """Group examples into rows of at most `max_len` tokens (first fit, in the given order)."""
    rows: list[list[Example]] = []
    room: list[int] = []
    for e in examples:
        n = len(e.ids)
        for i, free in enumerate(room):
            if n <= free:
                rows[i].append(e)
                room[i] -= n
                break
        else:
            rows.append([e])
            room.append(max_len - n)
    return rows


def collate(rows: Sequence[Sequence[Example]], pad_id: int = 0, packed: bool = True) -> dict[str, torch.Tensor]:
    """A batch: `ids` and `targets` (B, T) with targets shifted (predict token t+1 at t, IGNORE where
    masked, across example boundaries and on padding); `segments` (B, T) when `packed`."""
    import torch

    T = max(sum(len(e.ids) for e in row) for row in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    segments = torch.full((len(rows), T), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        t = 0
        for s, e in enumerate(row):
            n = len(e.ids)
            ids[b, t:t + n] = torch.tensor(e.ids)
            targets[b, t:t + n - 1] = torch.tensor(e.labels[1:])
            segments[b, t:t + n] = s
            t += n
        segments[b, t:] = len(row)  # padding: a document of its own
    out = {"ids": ids, "targets": targets}
    if packed:
        out["segments"] = segments
    return out


def batches(examples: Sequence[Example], batch_size: int, max_len: int, pack_rows: bool = True, seed: int = 0,
            pad_id: int = 0, epoch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of batches in a seeded order (a different order each `epoch`)."""
    order = list(examples)
    random.Random(f"{seed}-{epoch}").shuffle(order)
    rows = pack(order, max_len) if pack_rows else [[e] for e in order]
    for i in range(0, len(rows), batch_size):
        yield collate(rows[i:i + batch_size], pad_id, packed=pack_rows)
