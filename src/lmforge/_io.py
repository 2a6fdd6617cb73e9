"""Small helpers shared by every layer: atomic writes (temp file + rename), reading JSON/YAML files
with one-line errors that name the file, the cache home and dtype names. Nothing here imports torch at
module level."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


def lmforge_home() -> Path:
    """`$LMFORGE_HOME`, default `~/.cache/lmforge` (read at each call, so tests can redirect it);
    `~` is expanded and an empty value means the default."""
    return Path(os.environ.get("LMFORGE_HOME") or Path.home() / ".cache" / "lmforge").expanduser()


_DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16",
                  "half": "float16"}


def parse_dtype(dtype: Any, error: type[Exception] = ValueError):
    """A torch floating-point dtype from a dtype or a name (`float32`, `bf16`, `torch.float16`…);
    None stays None. Anything else raises `error` with one line listing the accepted names."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    value = getattr(torch, _DTYPE_ALIASES.get(name, name), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise error(f"dtype {dtype!r} is not supported (use one of: float32, bfloat16, float16)")
    return value


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` then rename the temp file onto `path`, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


def read_text(path: Path, error: type[Exception] = ValueError) -> str:
    """A UTF-8 text file's content; a missing, unreadable or binary file raises `error` naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}); is it a binary file?") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None


def read_json(path: Path, error: type[Exception] = ValueError) -> dict:
    """A JSON object from a file; a missing, malformed or non-object file raises `error` naming it."""
    import json

    text = read_text(path, error)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise error(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {_kind(data)}")
    return data


def jsonl_objects(lines: Iterable[str], path: Path | str, error: type[Exception] = ValueError
                  ) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank JSONL line; a line that is not a JSON object raises
    `error` naming `path:line`. The one JSONL reader (corpora, instruction data, labelled texts)."""
    import json

    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise error(f"{path}:{lineno}: malformed JSON (nested too deeply)") from None
        if not isinstance(obj, dict):
            raise error(f"{path}:{lineno}: expected a JSON object, got {_kind(obj)}")
        yield lineno, obj


def read_yaml(path: Path, error: type[Exception] = ValueError) -> dict:
    """A YAML mapping from a file (an empty file is `{}`); anything else raises `error` naming the file."""
    import yaml

    text = read_text(path, error)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{path}: not valid YAML ({problem}{where})") from None
    except (ValueError, RecursionError) as e:  # e.g. a date-like value that is no date (2001-13-01)
        raise error(f"{path}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: expected a YAML mapping of options (key: value lines), got {_kind(data)}")
    return data


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC ...", from /proc/cpuinfo; elsewhere what `platform` knows): the
    fact printed beside every benchmark figure and report timing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"
