"""Small file helpers shared by every layer: atomic writes (temp file + rename), reading JSON/YAML files
with one-line errors that name the file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


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
