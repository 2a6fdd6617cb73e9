"""The CPU kernels' build: sources, the header as the one interface definition, warnings, sanitizers, fallback."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge import cpu_kernels

ROOT = Path(__file__).resolve().parents[1]
needs_compiler = pytest.mark.skipif(not (cpu_kernels.supported() and (os.environ.get("CC") or shutil.which("cc"))),
                                    reason="needs x86-64 Linux with AVX2 and a C compiler")


def compile_and_run(tmp_path: Path, program: str) -> str:
    src = tmp_path / "probe.c"
    src.write_text(program)
    exe = tmp_path / "probe"
    subprocess.run([os.environ.get("CC") or "cc", f"-I{cpu_kernels.SOURCE_DIR}", str(src), "-o", str(exe)], check=True)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout


@needs_compiler
def test_ctypes_layouts_and_enums_equal_the_compilers(tmp_path):
    """What Python derives from lmf_cpu.h is what the C compiler makes of it: sizes, offsets, values."""
    h = cpu_kernels.header()
    lines, expected = [], []
    for name, struct in h.structs.items():
        lines.append(f'printf("%zu\\n", sizeof({name}));')
        expected.append(ctypes.sizeof(struct))
        for field, _ in struct._fields_:
            lines.append(f'printf("%zu\\n", offsetof({name}, {field}));')
            expected.append(getattr(struct, field).offset)
    for enum, members in h.enums.items():
        for member, value in members.items():
            lines.append(f'printf("%zu\\n", (size_t)LMF_{enum.upper()}_{member.upper()});')
            expected.append(value)
    program = "#include <stddef.h>\n#include <stdio.h>\n#include \"lmf_cpu.h\"\nint main(void) {\n" + "\n".join(lines) + "\nreturn 0; }\n"
    assert [int(v) for v in compile_and_run(tmp_path, program).split()] == expected
    assert set(h.enums["mode"]) == {"fp32", "bf16", "int8"} and len(h.structs["lmf_model"]._fields_) == 18


def test_every_prototype_is_read_with_its_argument_count():
    text = (cpu_kernels.SOURCE_DIR / "lmf_cpu.h").read_text()
    functions = cpu_kernels.header().functions
    assert set(functions) == {"lmf_linear_i8", "lmf_linear_bf16", "lmf_linear_f32", "lmf_use_avx512", "lmf_decode_step",
                              "lmf_attention", "lmf_dropout"}
    for name, (_, argtypes) in functions.items():
        params = text.split(name + "(", 1)[1].split(")", 1)[0]
        assert len(argtypes) == params.count(",") + 1


def test_a_type_the_reader_does_not_know_is_named():
    with pytest.raises(ValueError, match="double"):
        cpu_kernels.parse_header("typedef struct { double x; } s;")
    h = cpu_kernels.parse_header("enum lmf_x { LMF_X_A = 3, LMF_X_B };  /* c */ typedef struct { const float *a, *b; int n; } t;")
    assert h.enums == {"x": {"a": 3, "b": 4}} and [f for f, _ in h.structs["t"]._fields_] == ["a", "b", "n"]


@needs_compiler
def test_kernels_compile_without_warnings(tmp_path):
    warnings = cpu_kernels.build(tmp_path / "lmf_cpu.so", [*cpu_kernels.FLAGS])
    assert "-Wall" in cpu_kernels.FLAGS and "-Wextra" in cpu_kernels.FLAGS
    assert warnings == ""


def test_sources_ship_as_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lmforge"]
    assert {"kernels/*.c", "kernels/*.h"} <= set(data)
    assert all((cpu_kernels.SOURCE_DIR / name).is_file() for name in cpu_kernels.SOURCES)


def test_generation_without_kernels():
    """The PyTorch fallback (no compiler, no AVX2, LMFORGE_NO_KERNELS=1) passes the generation tests."""
    env = {**os.environ, "LMFORGE_NO_KERNELS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    check = "from lmforge import cpu_kernels; assert cpu_kernels.load() is None"
    subprocess.run([sys.executable, "-c", check], env=env, check=True, timeout=120)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-rs", "-p", "no:cacheprovider", "-o", "addopts=",
                           "-m", "not slow", str(ROOT / "tests" / "test_generate.py")],
                          env=env, capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
    # the only skips: the cases that exercise the kernel path itself
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("kernel path is not available" in line for line in skips), skips


# torch and its OpenMP runtime are not built for ThreadSanitizer: their own threads and locks look
# racy to it; only reports about our library count
TSAN_SUPPRESSIONS = """\
called_from_lib:libtorch_cpu.so
called_from_lib:libgomp.so.1
called_from_lib:libc10.so
race:libtorch_cpu.so
race:libgomp.so.1
"""


@pytest.mark.slow
@needs_compiler
def test_kernel_equality_tests_under_thread_sanitizer(tmp_path):
    """The thread pool and kernels under -fsanitize=thread: no data race while the equality tests run.

    A separate build (its own cache dir) in a subprocess with libtsan preloaded into Python.
    """
    libtsan = subprocess.run([os.environ.get("CC") or "cc", "-print-file-name=libtsan.so"], capture_output=True,
                             text=True).stdout.strip()
    if not os.path.isabs(libtsan):
        pytest.skip("the C compiler has no libtsan")
    (tmp_path / "suppressions").write_text(TSAN_SUPPRESSIONS)
    env = {**os.environ, "LMFORGE_HOME": str(tmp_path / "home"), "LMFORGE_KERNEL_CFLAGS": "-fsanitize=thread -g",
           "LD_PRELOAD": libtsan,
           "TSAN_OPTIONS": f"report_mutex_bugs=0 report_signal_unsafe=0 log_path={tmp_path / 'tsan'} "
                           f"suppressions={tmp_path / 'suppressions'}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-rs", "-p", "no:cacheprovider", "-o", "addopts=",
                           "tests/test_fast_decode.py", "tests/test_quantize.py", "-k", "not smollm2"],
                          env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    reports = "".join(p.read_text() for p in tmp_path.glob("tsan*"))
    assert "WARNING: ThreadSanitizer" not in reports, reports[:5000]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert list((tmp_path / "home" / "kernels").glob("lmf_cpu_*.so")), "the sanitized build was not used"
    assert " passed" in proc.stdout
    # the only skips: the cases that exercise the kernel path itself
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("kernel path is not available" in line for line in skips), skips
