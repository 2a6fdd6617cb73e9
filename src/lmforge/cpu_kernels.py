"""Small AVX2 matrix-vector kernels for batch-1 CPU decoding, compiled on first use.

Why our own kernels: decoding one token reads every weight once, so the speed of a batch-1 CPU
decoder is set by the bytes it reads per token. Storing weights as int8 or bf16 reads 4x / 2x fewer
bytes than fp32, but PyTorch's CPU kernels for such weights are slow on AVX2 machines
(`aten._weight_int8pack_mm` is ~10x slower than an fp32 GEMV here, `_int_mm` and inductor-generated
dequant-GEMVs too). The kernels below are plain C with AVX2 intrinsics; they run on torch's own
OpenMP runtime (the library links `libgomp.so.1`, which resolves to the copy torch already loaded).

The shared library is built once per source version with the system C compiler (`$CC`, else `cc`)
and cached in `$LMFORGE_HOME/kernels/`. Without a compiler or AVX2, `load()` returns None and
callers fall back to plain PyTorch ops (correct, slower).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

_SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>

static inline float hsum_ps(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

static inline void store_rows(float* y, const float* r, int64_t n0, int64_t nr, float xs,
                              const float* scale, const float* bias) {
    for (int64_t i = 0; i < nr; i++) {
        float v = r[i] * xs;
        if (scale) v *= scale[n0 + i];
        if (bias) v += bias[n0 + i];
        y[n0 + i] = v;
    }
}

/* y[M,N] = (x[M,K] @ w[N,K]^T) * scale[N] + bias[N], w int8, K % 16 == 0.
 * Each row of x is rounded to int16 with its own scale (max|x| / 32767: relative error <= 1.5e-5 of
 * the row's largest value), so the products run as 16-bit integer multiply-adds (vpmaddwd), about
 * half the instructions of int8 -> fp32 conversion + FMA. int32 sums are flushed to fp32 every
 * 2048 columns, so they cannot overflow. */
void lmf_linear_i8(const float* x, const int8_t* w, const float* scale, const float* bias, float* y,
                   int64_t M, int64_t N, int64_t K, int nthreads) {
    int16_t* xq = (int16_t*)aligned_alloc(32, (size_t)(M * K * 2 + 32));
    float* xs = (float*)malloc((size_t)M * sizeof(float));
    for (int64_t m = 0; m < M; m++) {
        const float* xm = x + m * K;
        float amax = 0.f;
        for (int64_t k = 0; k < K; k++) amax = fmaxf(amax, fabsf(xm[k]));
        float s = amax > 0.f ? amax / 32767.f : 1.f, inv = 1.f / s;
        xs[m] = s;
        for (int64_t k = 0; k < K; k++) xq[m * K + k] = (int16_t)lrintf(xm[k] * inv);
    }
    int64_t nblk = (N + 3) / 4;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < nblk; b++) {
        int64_t n0 = b * 4, nr = N - n0 < 4 ? N - n0 : 4;
        const int8_t* w0 = w + n0 * K;
        const int8_t* w1 = nr > 1 ? w0 + K : w0;
        const int8_t* w2 = nr > 2 ? w0 + 2 * K : w0;
        const int8_t* w3 = nr > 3 ? w0 + 3 * K : w0;
        for (int64_t m = 0; m < M; m++) {
            const int16_t* xm = xq + m * K;
            __m256 f0 = _mm256_setzero_ps(), f1 = f0, f2 = f0, f3 = f0;
            for (int64_t c = 0; c < K; c += 2048) {
                int64_t end = c + 2048 < K ? c + 2048 : K;
                __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
                for (int64_t k = c; k < end; k += 16) {
                    __m256i xv = _mm256_load_si256((const __m256i*)(xm + k));
                    a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w0 + k))), xv));
                    a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w1 + k))), xv));
                    a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w2 + k))), xv));
                    a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w3 + k))), xv));
                }
                f0 = _mm256_add_ps(f0, _mm256_cvtepi32_ps(a0));
                f1 = _mm256_add_ps(f1, _mm256_cvtepi32_ps(a1));
                f2 = _mm256_add_ps(f2, _mm256_cvtepi32_ps(a2));
                f3 = _mm256_add_ps(f3, _mm256_cvtepi32_ps(a3));
            }
            float r[4] = {hsum_ps(f0), hsum_ps(f1), hsum_ps(f2), hsum_ps(f3)};
            store_rows(y + m * N, r, n0, nr, xs[m], scale, bias);
        }
    }
    free(xq);
    free(xs);
}

/* 8 weights -> 8 floats */
static inline __m256 ld_bf16(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
static inline __m256 ld_f32(const float* p) { return _mm256_loadu_ps(p); }

/* y[M,N] = x[M,K] @ w[N,K]^T + bias[N] with fp32 accumulation, K % 8 == 0. */
#define FLOAT_GEMV(NAME, T, LD)                                                                       \
void NAME(const float* x, const T* w, const float* bias, float* y, int64_t M, int64_t N, int64_t K,  \
          int nthreads) {                                                                             \
    int64_t nblk = (N + 3) / 4;                                                                       \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                                \
    for (int64_t b = 0; b < nblk; b++) {                                                              \
        int64_t n0 = b * 4, nr = N - n0 < 4 ? N - n0 : 4;                                             \
        const T* w0 = w + n0 * K;                                                                     \
        const T* w1 = nr > 1 ? w0 + K : w0;                                                           \
        const T* w2 = nr > 2 ? w0 + 2 * K : w0;                                                       \
        const T* w3 = nr > 3 ? w0 + 3 * K : w0;                                                       \
        for (int64_t m = 0; m < M; m++) {                                                             \
            const float* xm = x + m * K;                                                              \
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                               \
            for (int64_t k = 0; k < K; k += 8) {                                                      \
                __m256 xv = _mm256_loadu_ps(xm + k);                                                  \
                a0 = _mm256_fmadd_ps(LD(w0 + k), xv, a0);                                             \
                a1 = _mm256_fmadd_ps(LD(w1 + k), xv, a1);                                             \
                a2 = _mm256_fmadd_ps(LD(w2 + k), xv, a2);                                             \
                a3 = _mm256_fmadd_ps(LD(w3 + k), xv, a3);                                             \
            }                                                                                         \
            float r[4] = {hsum_ps(a0), hsum_ps(a1), hsum_ps(a2), hsum_ps(a3)};                        \
            store_rows(y + m * N, r, n0, nr, 1.f, 0, bias);                                           \
        }                                                                                             \
    }                                                                                                 \
}

FLOAT_GEMV(lmf_linear_bf16, uint16_t, ld_bf16)
FLOAT_GEMV(lmf_linear_f32, float, ld_f32)
"""

_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
_lib: ctypes.CDLL | None = None
_tried = False


def _cache_dir() -> Path:
    home = os.environ.get("LMFORGE_HOME")
    return Path(home) if home else Path.home() / ".cache" / "lmforge"


def supported() -> bool:
    """True on x86-64 Linux with AVX2 (what the kernels are written for)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    import torch

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _build(out: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("no C compiler found (set $CC or install gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / "lmf_cpu.c"
        src.write_text(_SOURCE)
        so = Path(tmp) / out.name
        proc = subprocess.run([compiler, *_FLAGS, str(src), "-o", str(so)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[-500:]}")
        os.replace(so, out)  # atomic: a concurrent builder sees the old file or the whole new one


def load() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None where they cannot run (warns once)."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("LMFORGE_NO_KERNELS") or not supported():
        return None
    import torch  # noqa: F401  (torch's libgomp must be loaded before ours resolves libgomp.so.1)

    digest = hashlib.sha256((_SOURCE + " ".join(_FLAGS)).encode()).hexdigest()[:16]
    path = _cache_dir() / "kernels" / f"lmf_cpu_{digest}.so"
    try:
        if not path.is_file():
            _build(path)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError) as e:
        warnings.warn(f"lmforge: CPU kernels unavailable, using slower PyTorch ops ({e})", stacklevel=2)
        return None
    P, I64, INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.lmf_linear_i8.argtypes = [P, P, P, P, P, I64, I64, I64, INT]
    lib.lmf_linear_bf16.argtypes = [P, P, P, P, I64, I64, I64, INT]
    lib.lmf_linear_f32.argtypes = [P, P, P, P, I64, I64, I64, INT]
    for f in (lib.lmf_linear_i8, lib.lmf_linear_bf16, lib.lmf_linear_f32):
        f.restype = None
    _lib = lib
    return lib
