"""Open instructions for LLM-as-judge evaluation: 240 hand-written, varied requests shipped with lmforge.

    from lmforge.data.instructions import read_instructions
    items = read_instructions()            # [{"id": "writing-01", "category": "writing", "instruction": …}, …]
    items = read_instructions("mine.jsonl", limit=50)

Twelve categories of twenty: writing, advice, explanation, coding, math word problems, summarising a
given paragraph, classification, brainstorming, rewriting, reasoning, planning and general knowledge.
They were written for lmforge (no third-party data); an open instruction has no one right answer, so a
judge model scores the replies (`lmforge.evaluate.judge`). `lmforge data instructions --out FILE`
writes them as JSONL.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import LmforgeError

SHIPPED = "instructions.jsonl"  # package data beside this module


def _shipped_text() -> str:
    from importlib.resources import files

    return files("lmforge.data").joinpath(SHIPPED).read_text(encoding="utf-8")


def read_instructions(path: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """Instructions as `{"id", "category", "instruction"}` dicts: the shipped set, or a JSONL file's.

    A file's line needs `instruction` (with an optional `input` appended) or `prompt`; `id` defaults to
    the line number and `category` to None. Bad lines raise a one-line `LmforgeError` naming the line.
    """
    from lmforge._io import jsonl_objects, read_text

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise LmforgeError(f"limit must be a positive integer, got {limit!r}")
    name = SHIPPED if path is None else str(path)
    text = _shipped_text() if path is None else read_text(Path(path), LmforgeError)
    out: list[dict] = []
    seen: set[str] = set()
    for lineno, obj in jsonl_objects(text.splitlines(), name, LmforgeError):
        key = "instruction" if "instruction" in obj else "prompt"
        instruction = obj.get(key)
        if not isinstance(instruction, str) or not instruction.strip():
            raise LmforgeError(f"{name}:{lineno}: missing field 'instruction' (a non-empty string)")
        extra = obj.get("input")
        if isinstance(extra, str) and extra.strip():
            instruction += "\n\n" + extra
        ident = str(obj.get("id", lineno))
        if ident in seen:
            raise LmforgeError(f"{name}:{lineno}: id {ident!r} appears twice")
        seen.add(ident)
        category = obj.get("category")
        out.append({"id": ident, "category": None if category is None else str(category), "instruction": instruction})
        if limit is not None and len(out) == limit:
            break
    if not out:
        raise LmforgeError(f"{name}: no instructions")
    return out


def write_instructions(out: str | Path) -> int:
    """Write the shipped instructions to `out` (JSONL, atomically); returns how many."""
    from lmforge._io import atomic_write_text

    text = _shipped_text()
    atomic_write_text(Path(out), text)
    return sum(1 for line in text.splitlines() if line.strip())
