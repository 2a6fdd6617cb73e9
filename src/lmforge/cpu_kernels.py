"""Small AVX2 kernels for CPU decoding (matrix-vector products) and prefill attention, compiled on first use.

Why our own kernels: decoding one token reads every weight once, so the speed of a batch-1 CPU
decoder is set by the bytes it reads per token. Storing weights as int8 or bf16 reads 4x / 2x fewer
bytes than fp32, but PyTorch's CPU kernels for such weights are slow on AVX2 machines
(`aten._weight_int8pack_mm` is ~10x slower than an fp32 GEMV here, `_int_mm` and inductor-generated
dequant-GEMVs too). The kernels are plain C with AVX2 intrinsics and their own small work-sharing
thread pool (`torch.get_num_threads()` threads in all): on a busy machine an OpenMP team waits at
every barrier for its slowest, descheduled thread, and a token runs 100+ matrix products; there the
caller never waits for a helper thread that has not started. `lmf_attention` is the one kernel for
many tokens: causal attention of a prompt's queries against the KV cache.

Sources: `kernels/lmf_cpu.c` and `kernels/lmf_cpu.h`, shipped as package data. The header is the one
definition of the interface: `header()` reads its enums, structs and prototypes and derives the
ctypes Structures, the enum tables (`header().enums["mode"] == {"fp32": 0, "bf16": 1, "int8": 2}`)
and the functions' argument types from it, so Python never restates a layout
(tests/test_cpu_kernels.py checks the derived layouts against the C compiler's `offsetof`).

The shared library is built once per source version and flags with the system C compiler (`$CC`,
else `cc`), `-Wall -Wextra` clean, and cached in `$LMFORGE_HOME/kernels/` under a digest of both.
`$LMFORGE_KERNEL_CFLAGS` adds compiler flags (e.g. `-fsanitize=thread` for a checked build, which
gets its own digest). The code picks its AVX-512 paths at run time where the CPU has AVX-512F
(`LMFORGE_NO_AVX512=1`, or `lmf_use_avx512(0)`, keeps it on the AVX2 ones, e.g. for an A/B). Without a
compiler or AVX2 (or with `LMFORGE_NO_KERNELS=1`), `load()` returns None and callers fall back to
plain PyTorch ops (correct, slower).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from lmforge._io import lmforge_home

SOURCE_DIR = Path(__file__).with_name("kernels")
SOURCES = ("lmf_cpu.c", "lmf_cpu.h")
FLAGS = ("-O3", "-mavx2", "-mfma", "-Wall", "-Wextra", "-pthread", "-shared", "-fPIC")
_lib: ctypes.CDLL | None = None
_tried = False


# ---------------------------------------------------------------------------------------------
# the header, read once: enums, structs and prototypes as Python sees them
# ---------------------------------------------------------------------------------------------
_SCALARS = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "float": ctypes.c_float}


@dataclass(frozen=True)
class Header:
    enums: dict[str, dict[str, int]]  # "mode" -> {"fp32": 0, ...} (enum lmf_mode, members LMF_MODE_*)
    structs: dict[str, type[ctypes.Structure]]  # "lmf_lin" -> a ctypes Structure of the same layout
    functions: dict[str, tuple[type | None, list[type]]]  # name -> (restype, argtypes)


def _ctype(decl: str, structs: dict[str, type[ctypes.Structure]]) -> type:
    """The ctypes type of a C type as the header writes it (`const float*`, `enum lmf_act`, `lmf_lin`)."""
    if "*" in decl:
        return ctypes.c_void_p
    words = [w for w in decl.split() if w != "const"]
    if words[0] == "enum":
        return ctypes.c_int  # enums are ints on the x86-64 ABIs
    name = words[-1]
    if name in structs:
        return structs[name]
    if name not in _SCALARS:
        raise ValueError(f"lmf_cpu.h: type {decl!r} is not one cpu_kernels.header() reads")
    return _SCALARS[name]


def parse_header(text: str) -> Header:
    """The enums, structs and function prototypes of `text` (the subset of C that lmf_cpu.h uses)."""
    text = re.sub(r"/\*.*?\*/|//[^\n]*", " ", text, flags=re.S)
    enums: dict[str, dict[str, int]] = {}
    for name, body in re.findall(r"enum\s+(\w+)\s*\{([^}]*)\}\s*;", text):
        prefix, value, members = name.upper() + "_", -1, {}
        for item in filter(None, (s.strip() for s in body.split(","))):
            member, _, given = (s.strip() for s in item.partition("="))
            value = int(given, 0) if given else value + 1
            members[member.removeprefix(prefix).lower()] = value
        enums[name.removeprefix("lmf_")] = members
    structs: dict[str, type[ctypes.Structure]] = {}
    for body, name in re.findall(r"typedef\s+struct\s*\{([^}]*)\}\s*(\w+)\s*;", text):
        fields = []
        for decl in filter(None, (s.strip() for s in body.split(";"))):
            base, first = re.match(r"((?:const\s+|enum\s+)*\w+)\s*(.*)", decl, flags=re.S).groups()
            for declarator in first.split(","):
                stars, field = re.match(r"\s*(\**)\s*(\w+)\s*$", declarator).groups()
                fields.append((field, _ctype(base + stars, structs)))
        structs[name] = type(name, (ctypes.Structure,), {"_fields_": fields})
    functions = {}
    for ret, name, params in re.findall(r"\b(void|int)\s+(lmf_\w+)\s*\(([^)]*)\)\s*;", text):
        argtypes = [_ctype(re.sub(r"\w+\s*$", "", p.strip()), structs) for p in params.split(",")]
        functions[name] = (None if ret == "void" else ctypes.c_int, argtypes)
    return Header(enums, structs, functions)


@functools.cache
def header() -> Header:
    """`parse_header` of the shipped lmf_cpu.h (cheap: no compiler, no library)."""
    return parse_header((SOURCE_DIR / "lmf_cpu.h").read_text())


# ---------------------------------------------------------------------------------------------
# building and loading the library
# ---------------------------------------------------------------------------------------------
def supported() -> bool:
    """True on x86-64 Linux with AVX2 (what the kernels are written for)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    import torch

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def extra_flags() -> list[str]:
    """Compiler flags added by `$LMFORGE_KERNEL_CFLAGS` (e.g. `-fsanitize=thread -g`)."""
    return shlex.split(os.environ.get("LMFORGE_KERNEL_CFLAGS", ""))


def library_path(flags: list[str]) -> Path:
    """Where the library built from the shipped sources with `flags` is cached."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((SOURCE_DIR / name).read_bytes())
    digest.update(" ".join(flags).encode())
    return lmforge_home() / "kernels" / f"lmf_cpu_{digest.hexdigest()[:16]}.so"


def build(out: Path, flags: list[str]) -> str:
    """Compile the shipped sources with `flags` into `out` (atomically); returns the compiler's warnings."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("no C compiler found (set $CC or install gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        so = Path(tmp) / out.name
        cmd = [*shlex.split(compiler), *flags, str(SOURCE_DIR / "lmf_cpu.c"), "-o", str(so), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[-500:]}")
        os.replace(so, out)  # atomic: a concurrent builder sees the old file or the whole new one
    return proc.stderr


def load() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None where they cannot run (warns once)."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("LMFORGE_NO_KERNELS") or not supported():
        return None
    flags = [*FLAGS, *extra_flags()]
    path = library_path(flags)
    try:
        if not path.is_file():
            build(path, flags)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError) as e:
        warnings.warn(f"lmforge: CPU kernels unavailable, using slower PyTorch ops ({e})", stacklevel=2)
        return None
    for name, (restype, argtypes) in header().functions.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    _lib = lib
    return lib
