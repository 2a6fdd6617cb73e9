"""Read the header of a GGUF file (llama.cpp's format): its key/value metadata and tensor directory.

The one GGUF header reader of lmforge: the tokenizer reads `tokenizer.*` keys with it and
`lmforge.convert.gguf` reads the whole header and the tensor directory. `gguf.GGUFReader` parses
every array element into numpy objects, which takes seconds for a 50k-token vocabulary (a minute
for 128k); this reads the same header in a tenth of a second.

Layout (little-endian): "GGUF", version u32, n_tensors u64, n_kv u64; n_kv times (key string,
value type u32, value); n_tensors times (name string, n_dims u32, dims u64 x n_dims, ggml type
u32, data offset u64); tensor data from the next multiple of `general.alignment` (default 32).
A string is a u64 length and that many UTF-8 bytes.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError


class GGUFError(LmforgeError):
    """A GGUF file cannot be read, is not supported, or a model cannot be written as GGUF."""


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor directory."""

    name: str
    shape: tuple[int, ...]
    """ggml order: the fastest-varying dimension first (an `nn.Linear` weight is (in, out))."""
    ggml_type: int
    """A `gguf.GGMLQuantizationType` value (0 F32, 1 F16, ...)."""
    offset: int
    """Where the data starts, in bytes from the start of the file."""


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    file_size: int


def read_gguf_metadata(path: str | os.PathLike, prefix: str = "") -> dict[str, Any]:
    """Read the key/value metadata of a GGUF file (no tensors).

    Args:
        path: the .gguf file.
        prefix: keep only keys starting with this (e.g. "tokenizer."); others are skipped cheaply.

    Returns:
        {key: value}: strings as `str`, numeric arrays as Python lists, string arrays as lists of `str`.

    Raises:
        GGUFError: a missing, non-GGUF, too old, truncated or corrupt file (the message names it).
    """
    return _read(Path(path), prefix, with_tensors=False).metadata


def read_gguf_header(path: str | os.PathLike) -> GGUFHeader:
    """All metadata and the tensor directory of a GGUF file (the tensor data is not read).

    Raises:
        GGUFError: a missing, non-GGUF, too old, truncated or corrupt file (the message names it).
    """
    return _read(Path(path), "", with_tensors=True)


def _read(path: Path, prefix: str, with_tensors: bool) -> GGUFHeader:
    if not path.is_file():
        raise GGUFError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise GGUFError(f"{path}: cannot open GGUF file ({e.strerror})") from None
    with f:
        magic = f.read(4)
        if magic != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                return _parse(buf, path, prefix, with_tensors)
            except (struct.error, ValueError, TypeError, IndexError, OverflowError, KeyError, ZeroDivisionError) as e:
                raise GGUFError(f"{path}: truncated or corrupt GGUF file ({type(e).__name__}: {e})") from None


def _parse(buf: mmap.mmap, path: Path, prefix: str, with_tensors: bool) -> GGUFHeader:
    import numpy as np

    version = struct.unpack_from("<I", buf, 4)[0]
    if version < 2:
        raise GGUFError(f"{path}: GGUF version {version} is too old (need 2 or later)")
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
    pos = 24

    def take(n: int) -> int:
        """Advance over n bytes; return where they start."""
        nonlocal pos
        if pos + n > len(buf):
            raise ValueError(f"{n} bytes at byte {pos} run past the end of the file ({len(buf)} bytes)")
        start, pos = pos, pos + n
        return start

    def unpack(fmt: str) -> tuple:
        return struct.unpack_from(fmt, buf, take(struct.calcsize(fmt)))

    def string(keep: bool = True) -> str | None:
        (n,) = unpack("<Q")
        start = take(n)
        return buf[start : start + n].decode("utf-8", errors="replace") if keep else None

    def value(vtype: int, keep: bool) -> Any:
        if vtype == _STRING:
            return string(keep)
        if vtype == _ARRAY:
            etype, count = unpack("<IQ")
            if etype in (_STRING, _ARRAY):
                items = [value(etype, keep) for _ in range(count)]
                return items if keep else None
            dt = np.dtype(_NUMPY[etype])
            start = take(dt.itemsize * count)
            if not keep:
                return None
            arr = np.frombuffer(buf, dtype=dt, count=count, offset=start)
            return arr.astype(bool).tolist() if etype == 7 else arr.tolist()
        fmt = _SCALARS.get(vtype)
        if fmt is None:
            raise ValueError(f"unknown GGUF value type {vtype} at byte {pos - 4}")
        return unpack(fmt)[0]

    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        (vtype,) = unpack("<I")
        keep = key.startswith(prefix)
        v = value(vtype, keep)
        if keep:
            meta[key] = v
    tensors: list[TensorInfo] = []
    if with_tensors:
        infos = []
        for _ in range(n_tensors):
            name = string()
            (n_dims,) = unpack("<I")
            shape = unpack(f"<{n_dims}Q")
            ggml_type, offset = unpack("<IQ")
            infos.append((name, shape, ggml_type, offset))
        align = int(meta.get("general.alignment", 32))
        data_start = -(-pos // align) * align
        tensors = [TensorInfo(n, tuple(s), t, data_start + o) for n, s, t, o in infos]
    return GGUFHeader(version=version, metadata=meta, tensors=tensors, file_size=len(buf))
