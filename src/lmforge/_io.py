"""Small helpers shared by every layer: atomic writes (temp file + rename), JSON files, the cache
home and dtype names. Nothing here imports torch at module level."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
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


def read_json(path: Path, error: type[Exception] = ValueError) -> object:
    """Parse a JSON file; a missing or malformed file raises `error` with one line naming it."""
    import json

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
