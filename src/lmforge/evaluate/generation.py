"""Custom generation sets: a JSONL of prompts and answers; the model's replies are checked by a metric.

    from lmforge.evaluate.generation import run_generation
    result = run_generation(llm, "set.jsonl", metric="numeric", tolerance=0.01)
    result["metrics"]["numeric"]   # -> {"value": 0.62, "stderr": 0.04}

A line is `{"prompt": "…", "answer": "…"}`; an answer may be a number, or a list of acceptable answers
(any one counts). The files `lmforge data tasks` writes (`instruction`, `input`, `output`, `family`)
read as they are. An optional `family` (or `category`) field groups the items in the breakdown.

Metrics (`metric=`):
- `exact`: the reply's first line equals the answer after normalisation (case, outer whitespace and
  quotes, a final full stop: `lmforge.data.tasks.normalize`);
- `contains`: the normalised answer occurs in the normalised reply (all of it);
- `regex`: the answer is a Python regular expression, searched for in the reply;
- `numeric`: the last number in the reply (thousands separators ignored) is within `tolerance` of the
  answer;
- `task`: the verifiable-task checker of `lmforge data tasks` (`lmforge.data.tasks.check`), by each
  line's `family`.

`extract`, a regular expression, first cuts the reply down to its group 1 (or its whole match); a reply
it does not match is wrong. Replies are greedy by default, or sampled with the settings given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.api import LLM
    from lmforge.sampling import SamplingParams

Metric = Literal["exact", "contains", "regex", "numeric", "task"]
METRICS: tuple[str, ...] = ("exact", "contains", "regex", "numeric", "task")
# a number as people write it: sign, thousands separators, decimals, an exponent
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Item:
    """One line of a generation set."""

    line: int
    """Its line number in the file (1-based)."""
    prompt: str
    answers: tuple[str, ...]
    """The acceptable answers (any one counts)."""
    group: str | None = None
    """Its `family` or `category`, for the breakdown."""


def parse_number(text: str) -> float | None:
    """The last number in `text` (`1,234.5` is 1234.5), or None when it has none."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as e:
        raise LmforgeError(f"{where}: bad regex {pattern!r} ({e}); write a Python regular expression") from None


def matches(metric: str, reply: str, answer: str, group: str | None = None, tolerance: float = 1e-6) -> bool:
    """Whether `reply` is right for `answer` under `metric` (see the module docstring)."""
    from lmforge.data.tasks import check, normalize

    if metric == "exact":
        return normalize(reply) == normalize(answer)
    if metric == "contains":
        return normalize(answer) in normalize(" ".join(reply.split()))
    if metric == "regex":
        return re.search(answer, reply) is not None
    if metric == "numeric":
        got, want = parse_number(reply), parse_number(answer)
        return got is not None and want is not None and abs(got - want) <= tolerance
    if metric == "task":
        return check(group, reply, answer)
    raise LmforgeError(f"unknown metric {metric!r} (choose one of: {', '.join(METRICS)})")


def _text(value: Any, where: str, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise LmforgeError(f"{where}: {field!r} must be a string or a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise LmforgeError(f"{where}: {field!r} must be a finite number, got {value}")
    return str(value)


def _item(lineno: int, obj: dict, where: str, metric: str) -> Item:
    """An `Item` from one JSONL object, or a one-line error naming the line and the field."""
    from lmforge.data.tasks import FAMILIES

    key = "prompt" if "prompt" in obj else "instruction"
    if key not in obj:
        raise LmforgeError(f"{where}: missing field 'prompt' (each line needs 'prompt' and 'answer')")
    prompt = _text(obj[key], where, key)
    if key == "instruction" and str(obj.get("input") or "").strip():
        prompt += "\n\n" + _text(obj["input"], where, "input")
    if not prompt.strip():
        raise LmforgeError(f"{where}: {key!r} is empty")
    key = "answer" if "answer" in obj else "output"
    if key not in obj:
        raise LmforgeError(f"{where}: missing field 'answer' (each line needs 'prompt' and 'answer')")
    raw = obj[key] if isinstance(obj[key], list) else [obj[key]]
    if not raw:
        raise LmforgeError(f"{where}: {key!r} is an empty list; give at least one acceptable answer")
    answers = tuple(_text(a, where, key) for a in raw)
    group = obj.get("family", obj.get("category"))
    group = None if group is None else _text(group, where, "family" if "family" in obj else "category")
    if metric == "regex":
        for a in answers:
            _compile(a, where)
    elif metric == "numeric":
        bad = [a for a in answers if parse_number(a) is None]
        if bad:
            raise LmforgeError(f"{where}: {key!r} {bad[0]!r} has no number (metric numeric)")
    elif metric == "task" and group not in FAMILIES:
        raise LmforgeError(f"{where}: metric task needs a 'family' field naming a task family "
                           f"(one of: {', '.join(FAMILIES)}), got {group!r}")
    return Item(lineno, prompt, answers, group)


def read_set(path: str | Path, metric: str = "exact", limit: int | None = None) -> list[Item]:
    """The items of a generation-set JSONL (the first `limit`), checked for `metric`.

    Raises:
        LmforgeError: one line naming the file, the line number and what is wrong (malformed JSON, a
            missing field, a bad regex, an answer with no number for `numeric`, an unknown family).
    """
    from lmforge._io import jsonl_objects, read_text

    if metric not in METRICS:
        raise LmforgeError(f"unknown metric {metric!r} (choose one of: {', '.join(METRICS)})")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise LmforgeError(f"limit must be a positive integer, got {limit!r}")
    items = []
    for lineno, obj in jsonl_objects(read_text(Path(path), LmforgeError).splitlines(), path, LmforgeError):
        items.append(_item(lineno, obj, f"{path}:{lineno}", metric))
        if limit is not None and len(items) == limit:
            break
    if not items:
        raise LmforgeError(f"{path}: no items (write one JSON object per line with 'prompt' and 'answer')")
    return items


def score_replies(items: list[Item], replies: list[str], metric: str = "exact", tolerance: float = 1e-6,
                  extract: str | None = None) -> dict[str, Any]:
    """The result dict of `run_generation` for replies already generated (one per item)."""
    from collections import defaultdict

    from lmforge.evaluate.stats import mean_stderr

    cut: Callable[[str], str | None] = lambda r: r
    if extract is not None:
        pattern = _compile(extract, "extract")

        def cut(reply: str) -> str | None:
            m = pattern.search(reply)
            return None if m is None else m.group(1 if pattern.groups else 0) or ""

    samples, groups = [], defaultdict(list)
    for item, reply in zip(items, replies, strict=True):
        got = cut(reply)
        ok = got is not None and any(matches(metric, got, a, item.group, tolerance) for a in item.answers)
        samples.append({"line": item.line, "prompt": item.prompt, "answer": list(item.answers), "reply": reply,
                        "extracted": got, "correct": ok})
        groups[item.group or "all"].append(float(ok))
    def summary(values: list[float]) -> dict[str, Any]:
        value, stderr = mean_stderr(values)
        return {"value": value, "stderr": stderr, "n": len(values)}

    value, stderr = mean_stderr([float(s["correct"]) for s in samples])
    return {"task": "generation", "metrics": {metric: {"value": value, "stderr": stderr}},
            "breakdown": {g: summary(v) for g, v in sorted(groups.items())}, "samples": samples}


def run_generation(llm: LLM, path: str | Path, metric: Metric = "exact", sampling: SamplingParams | None = None,
                   chat: bool = True, tolerance: float = 1e-6, extract: str | None = None,
                   limit: int | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Generate a reply to each prompt of a generation set and score it.

    Args:
        llm: the model.
        path: the JSONL set (`prompt` + `answer` per line; see the module docstring).
        metric: exact, contains, regex, numeric or task.
        sampling: how replies are generated (default: greedy, 64 new tokens).
        chat: wrap each prompt in the model's chat template (one user turn); False: the raw prompt.
        tolerance: the largest difference that still counts as equal (metric numeric).
        extract: a regex that cuts each reply down to its group 1 (or its match) before the metric.
        limit: score the first `limit` items only.
        batch_size: replies generated together.

    Returns:
        `{"task": "generation", "metrics": {metric: {"value", "stderr"}}, "breakdown": {group: …},
        "samples": [{"line", "prompt", "answer", "reply", "extracted", "correct"}, …]}`.
    """
    import dataclasses

    from lmforge.sampling import SamplingParams

    if extract is not None:
        _compile(extract, "extract")
    if not tolerance >= 0:
        raise LmforgeError(f"tolerance must be >= 0, got {tolerance}")
    items = read_set(path, metric, limit)
    params = sampling or SamplingParams(max_new_tokens=64)
    kwargs = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    if chat:
        replies = llm.chat([[{"role": "user", "content": it.prompt}] for it in items], max_batch_size=batch_size,
                           **kwargs)
    else:
        replies = llm.generate([it.prompt for it in items], max_batch_size=batch_size, **kwargs)
    return score_replies(items, replies, metric, tolerance, extract)
