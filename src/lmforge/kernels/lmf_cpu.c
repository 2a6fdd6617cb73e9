/* lmforge's CPU kernels: weight-streaming matrix products, one decoding step through every layer,
 * prefill attention, and the thread pool they share. Built by lmforge.cpu_kernels (-Wall -Wextra,
 * no warnings); the interface, and the one definition of its structs and enums, is lmf_cpu.h. */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "lmf_cpu.h"

/* ---- a work-sharing pool that never waits for a helper that has not started -------------------
 * The caller publishes a job of `n` chunks and starts claiming chunks itself; helper threads claim
 * chunks too when they get a CPU. The caller waits only for chunks a helper has already claimed.
 * On a busy machine an OpenMP team waits at its barrier for every thread to be scheduled, 100+
 * times per token; here a descheduled helper costs nothing. A chunk is claimed with one CAS on
 * `ticket` = (job sequence << 24) | next chunk, so a late helper cannot claim a chunk of a newer
 * job with the arguments of an older one (nor the reverse: see the end of run_job). */
typedef void (*chunk_fn)(const void* args, int64_t chunk);
#define MAX_HELPERS 63
#define CHUNK_BITS 24
#define CHUNK_MASK ((1L << CHUNK_BITS) - 1)
static pthread_mutex_t job_lock = PTHREAD_MUTEX_INITIALIZER;  /* one job at a time */
static pthread_mutex_t wake_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake_cv = PTHREAD_COND_INITIALIZER;
static _Atomic long ticket;
static _Atomic long done;
static _Atomic(chunk_fn) job_fn;
static _Atomic(const void*) job_args;
static _Atomic long job_n;
static _Atomic int job_helpers;
static long job_seq;
static int n_helpers;

static int claim(long* t_seen, chunk_fn* fn, const void** args, long* chunk, int id) {
    for (;;) {
        long t = atomic_load(&ticket);
        *fn = atomic_load(&job_fn);
        *args = atomic_load(&job_args);
        long n = atomic_load(&job_n);
        int helpers = atomic_load(&job_helpers);
        *t_seen = t;
        if ((t & CHUNK_MASK) >= n || id > helpers) return 0;
        if (atomic_compare_exchange_weak(&ticket, &t, t + 1)) {
            *chunk = t & CHUNK_MASK;
            return 1;
        }
    }
}

static void* helper_main(void* arg) {
    int id = (int)(intptr_t)arg, spins = 0;
    for (;;) {
        long t, chunk;
        chunk_fn fn;
        const void* args;
        while (claim(&t, &fn, &args, &chunk, id)) {
            fn(args, chunk);
            atomic_fetch_add(&done, 1);
            spins = 0;
        }
        if (++spins < 2000) { _mm_pause(); continue; }  /* a few microseconds: the next call is near */
        pthread_mutex_lock(&wake_mu);
        while (atomic_load(&ticket) == t) pthread_cond_wait(&wake_cv, &wake_mu);
        pthread_mutex_unlock(&wake_mu);
        spins = 0;
    }
    return 0;
}

static void run_job(chunk_fn fn, const void* args, long n, int nthreads) {
    int helpers = nthreads - 1 < MAX_HELPERS ? nthreads - 1 : MAX_HELPERS;
    if (helpers <= 0 || n <= 1 || n >= CHUNK_MASK || pthread_mutex_trylock(&job_lock) != 0) {
        for (long c = 0; c < n; c++) fn(args, c);  /* serial, or another thread holds the pool */
        return;
    }
    while (n_helpers < helpers) {
        pthread_t th;
        if (pthread_create(&th, 0, helper_main, (void*)(intptr_t)(n_helpers + 1)) != 0) break;
        pthread_detach(th);
        n_helpers++;
    }
    job_seq++;
    atomic_store(&done, 0);
    atomic_store(&job_fn, fn);
    atomic_store(&job_args, args);
    atomic_store(&job_n, n);
    atomic_store(&job_helpers, helpers);
    atomic_store(&ticket, job_seq << CHUNK_BITS);  /* publish */
    pthread_mutex_lock(&wake_mu);
    pthread_cond_broadcast(&wake_cv);
    pthread_mutex_unlock(&wake_mu);
    long t, chunk, mine = 0;
    chunk_fn f;
    const void* a;
    while (claim(&t, &f, &a, &chunk, 0)) { fn(args, chunk); mine++; }
    for (int spin = 0; atomic_load(&done) + mine < n; spin++) {  /* only chunks a helper is running */
        if (spin < 1000) _mm_pause(); else sched_yield();  /* a descheduled helper needs our CPU */
    }
    /* close the job before its arguments go out of scope: a helper that read `ticket` earlier can
     * no longer claim with it, and the closed value's chunk index is past any job's last chunk, so
     * a helper pairing it with the next job's fields claims nothing either */
    atomic_store(&ticket, (job_seq << CHUNK_BITS) | CHUNK_MASK);
    pthread_mutex_unlock(&job_lock);
}

/* software prefetch distance (bytes ahead in the weight stream): short per-layer matrices do not run
 * long enough for the hardware prefetcher to ramp up; measured ~2x on int8 rows from DRAM */
#ifndef PF_DIST_I8
#define PF_DIST_I8 4096
#endif
#ifndef CHUNK_BYTES
#define CHUNK_BYTES 32768
#endif
#ifndef CHUNK_BYTES_FLOAT
#define CHUNK_BYTES_FLOAT 131072
#endif
/* ---- kernels ---------------------------------------------------------------------------------- */
static inline float hsum_ps(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

typedef struct {
    const float* x; const void* w; const float* scale; const float* bias; float* y;
    const int16_t* xq; const float* xs; int64_t M, N, K, rows;
    int64_t ldy;  /* output row stride (0: N) */
} linear_args;

static inline void store_rows(const linear_args* a, int64_t m, int64_t n0, int64_t nr, const float* r, float xs) {
    for (int64_t i = 0; i < nr; i++) {
        float v = r[i] * xs;
        if (a->scale) v *= a->scale[n0 + i];
        if (a->bias) v += a->bias[n0 + i];
        a->y[m * (a->ldy ? a->ldy : a->N) + n0 + i] = v;
    }
}

/* int8 weights, int16 activations: 16 products per vpmaddwd; int32 sums flushed to fp32 every
 * 2048 columns so they cannot overflow. Rows [chunk*rows, +rows), 4 at a time. */
static void i8_chunk(const void* args, int64_t chunk) {
    const linear_args* a = (const linear_args*)args;
    const int64_t K = a->K, lo = chunk * a->rows, hi = lo + a->rows < a->N ? lo + a->rows : a->N;
    for (int64_t n0 = lo; n0 < hi; n0 += 4) {
        int64_t nr = hi - n0 < 4 ? hi - n0 : 4;
        const int8_t* w0 = (const int8_t*)a->w + n0 * K;
        const int8_t* w1 = nr > 1 ? w0 + K : w0;
        const int8_t* w2 = nr > 2 ? w0 + 2 * K : w0;
        const int8_t* w3 = nr > 3 ? w0 + 3 * K : w0;
        for (int64_t m = 0; m < a->M; m++) {
            const int16_t* xm = a->xq + m * K;
            __m256 f0 = _mm256_setzero_ps(), f1 = f0, f2 = f0, f3 = f0;
            for (int64_t c = 0; c < K; c += 2048) {
                int64_t end = c + 2048 < K ? c + 2048 : K;
                __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
                for (int64_t k = c; k < end; k += 16) {
                    _mm_prefetch((const char*)w0 + PF_DIST_I8 + 4 * k, _MM_HINT_T0);
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
            store_rows(a, m, n0, nr, r, a->xs[m]);
        }
    }
}

static inline __m256 ld_bf16(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
static inline __m256 ld_f32(const float* p) { return _mm256_loadu_ps(p); }

/* Several input rows run over each 4-row group of weights (group_bytes long) once per pair of
 * rows: the first pass waits for memory, the later ones only compute. So that the two overlap,
 * the j-th inner step of all passes together fetches line j of the *next* group, one line a step
 * (batched decoding of SmolLM2, in-process A/B: 1.11x at 4 rows, 1.02x at 16, against fetching
 * ahead within the first pass only). */
static inline void prefetch_group(const void* w0, int64_t j, int64_t group_bytes) {
    if (j * 64 < group_bytes) _mm_prefetch((const char*)w0 + group_bytes + j * 64, _MM_HINT_T0);
}

/* fp32 accumulation over bf16 or fp32 weights. One input row (batch-1 decoding, bound by how fast
 * the weights stream in): one weight row at a time, so a chunk is a single sequential read that the
 * hardware prefetcher follows on its own (measured ~20% faster than 4 interleaved rows with
 * software prefetch). Several input rows: 4 weight rows at a time, applied to 2 input rows at once
 * (each weight load serves two FMAs; 8 independent sums keep both FMA pipes busy), then the odd
 * input row alone. */
#define FLOAT_CHUNK(NAME, T, LD)                                                                      \
static void NAME(const void* args, int64_t chunk) {                                                  \
    const linear_args* a = (const linear_args*)args;                                                 \
    const int64_t K = a->K, lo = chunk * a->rows, hi = lo + a->rows < a->N ? lo + a->rows : a->N;     \
    if (a->M == 1) {                                                                                 \
        const float* x = a->x;                                                                       \
        for (int64_t n = lo; n < hi; n++) {                                                          \
            const T* w = (const T*)a->w + n * K;                                                     \
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                              \
            int64_t k = 0;                                                                           \
            for (; k + 32 <= K; k += 32) {                                                           \
                a0 = _mm256_fmadd_ps(LD(w + k), _mm256_loadu_ps(x + k), a0);                         \
                a1 = _mm256_fmadd_ps(LD(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);                 \
                a2 = _mm256_fmadd_ps(LD(w + k + 16), _mm256_loadu_ps(x + k + 16), a2);               \
                a3 = _mm256_fmadd_ps(LD(w + k + 24), _mm256_loadu_ps(x + k + 24), a3);               \
            }                                                                                        \
            for (; k < K; k += 8) a0 = _mm256_fmadd_ps(LD(w + k), _mm256_loadu_ps(x + k), a0);        \
            float r = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));          \
            store_rows(a, 0, n, 1, &r, 1.f);                                                         \
        }                                                                                            \
        return;                                                                                      \
    }                                                                                                \
    for (int64_t n0 = lo; n0 < hi; n0 += 4) {                                                        \
        int64_t nr = hi - n0 < 4 ? hi - n0 : 4;                                                      \
        const T* w0 = (const T*)a->w + n0 * K;                                                       \
        const T* w1 = nr > 1 ? w0 + K : w0;                                                          \
        const T* w2 = nr > 2 ? w0 + 2 * K : w0;                                                      \
        const T* w3 = nr > 3 ? w0 + 3 * K : w0;                                                      \
        int64_t m = 0;                                                                               \
        for (; m + 2 <= a->M; m += 2) {                                                              \
            const float* xm = a->x + m * K;                                                          \
            const float* xn = xm + K;                                                                \
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                              \
            __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;                                               \
            for (int64_t k = 0; k < K; k += 8) {                                                     \
                prefetch_group(w0, (m / 2) * (K / 8) + k / 8, 4 * K * (int64_t)sizeof(T));          \
                __m256 xv = _mm256_loadu_ps(xm + k), yv = _mm256_loadu_ps(xn + k);                   \
                __m256 v0 = LD(w0 + k), v1 = LD(w1 + k), v2 = LD(w2 + k), v3 = LD(w3 + k);           \
                a0 = _mm256_fmadd_ps(v0, xv, a0); b0 = _mm256_fmadd_ps(v0, yv, b0);                  \
                a1 = _mm256_fmadd_ps(v1, xv, a1); b1 = _mm256_fmadd_ps(v1, yv, b1);                  \
                a2 = _mm256_fmadd_ps(v2, xv, a2); b2 = _mm256_fmadd_ps(v2, yv, b2);                  \
                a3 = _mm256_fmadd_ps(v3, xv, a3); b3 = _mm256_fmadd_ps(v3, yv, b3);                  \
            }                                                                                        \
            float r[4] = {hsum_ps(a0), hsum_ps(a1), hsum_ps(a2), hsum_ps(a3)};                       \
            float q[4] = {hsum_ps(b0), hsum_ps(b1), hsum_ps(b2), hsum_ps(b3)};                       \
            store_rows(a, m, n0, nr, r, 1.f);                                                        \
            store_rows(a, m + 1, n0, nr, q, 1.f);                                                    \
        }                                                                                            \
        for (; m < a->M; m++) {                                                                      \
            const float* xm = a->x + m * K;                                                          \
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                              \
            for (int64_t k = 0; k < K; k += 8) {                                                     \
                prefetch_group(w0, (m / 2) * (K / 8) + k / 8, 4 * K * (int64_t)sizeof(T));          \
                __m256 xv = _mm256_loadu_ps(xm + k);                                                 \
                a0 = _mm256_fmadd_ps(LD(w0 + k), xv, a0);                                            \
                a1 = _mm256_fmadd_ps(LD(w1 + k), xv, a1);                                            \
                a2 = _mm256_fmadd_ps(LD(w2 + k), xv, a2);                                            \
                a3 = _mm256_fmadd_ps(LD(w3 + k), xv, a3);                                            \
            }                                                                                        \
            float r[4] = {hsum_ps(a0), hsum_ps(a1), hsum_ps(a2), hsum_ps(a3)};                       \
            store_rows(a, m, n0, nr, r, 1.f);                                                        \
        }                                                                                            \
    }                                                                                                \
}
FLOAT_CHUNK(bf16_chunk, uint16_t, ld_bf16)
FLOAT_CHUNK(f32_chunk, float, ld_f32)

/* ---- several input rows on AVX-512 (chosen at run time: see lmf_use_avx512) ---------------------
 * With 2+ input rows a product is compute-bound once the weights are in cache, and 512-bit FMAs
 * do twice the work of the AVX2 path's per instruction. A register tile of R <= 4 input rows x 4
 * weight rows (16 accumulators of 16 lanes) runs over K once; the 4 weight rows stay in L1 for the
 * ceil(M / 4) passes, and the passes together fetch the next group, evenly spread over their steps
 * (sizeof(T) / passes lines a step: without it a 4-row step streamed the head 1.6x slower). */
#define TGT512 __attribute__((target("avx512f,avx2,fma")))
static int use_avx512;

static void __attribute__((constructor)) detect_isa(void) {  /* LMFORGE_NO_AVX512=1: AVX2 paths only */
    const char* off = getenv("LMFORGE_NO_AVX512");
    __builtin_cpu_init();
    use_avx512 = !(off && *off && *off != '0') && __builtin_cpu_supports("avx512f");
}

int lmf_use_avx512(int on) {
    if (on >= 0) use_avx512 = on && __builtin_cpu_supports("avx512f");
    return use_avx512;
}

static inline TGT512 __m512 ld512_f32(const float* p) { return _mm512_loadu_ps(p); }
static inline TGT512 __m512 ld512_bf16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

/* the four sums of a, b, c, d, in that order */
static inline TGT512 __m128 hsum4_512(__m512 a, __m512 b, __m512 c, __m512 d) {
#define HALF_SUM(v) _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))
    __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(HALF_SUM(a), HALF_SUM(b)), _mm256_hadd_ps(HALF_SUM(c), HALF_SUM(d)));
#undef HALF_SUM
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

#define TILE512_CHUNK(NAME, T, LD)                                                                   \
static inline __attribute__((always_inline)) TGT512 void NAME##_tile(const linear_args* a, int64_t n0, int64_t nr, \
                                                                   int64_t m, int64_t pass, int64_t per, const int R) { \
    const int64_t K = a->K;                                                                          \
    const T* w0 = (const T*)a->w + n0 * K;                                                           \
    const T* w1 = nr > 1 ? w0 + K : w0;                                                              \
    const T* w2 = nr > 2 ? w0 + 2 * K : w0;                                                          \
    const T* w3 = nr > 3 ? w0 + 3 * K : w0;                                                          \
    const float* x = a->x + m * K;                                                                   \
    const char* next = (const char*)(w0 + 4 * K);  /* prefetching past the matrix end is harmless */ \
    __m512 acc[4][4];                                                                                \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)                                              \
        _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();         \
    for (int64_t k = 0; k < K; k += 16) {                                                            \
        for (int64_t i = 0; i < per; i++)  /* the next group's lines, spread over all passes */     \
            _mm_prefetch(next + ((pass * (K / 16) + k / 16) * per + i) * 64, _MM_HINT_T0);           \
        __m512 v0 = LD(w0 + k), v1 = LD(w1 + k), v2 = LD(w2 + k), v3 = LD(w3 + k);                   \
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {                                        \
            __m512 xv = _mm512_loadu_ps(x + r * K + k);                                              \
            acc[r][0] = _mm512_fmadd_ps(v0, xv, acc[r][0]);                                          \
            acc[r][1] = _mm512_fmadd_ps(v1, xv, acc[r][1]);                                          \
            acc[r][2] = _mm512_fmadd_ps(v2, xv, acc[r][2]);                                          \
            acc[r][3] = _mm512_fmadd_ps(v3, xv, acc[r][3]);                                          \
        }                                                                                            \
    }                                                                                                \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {                                            \
        float out[4];                                                                                \
        _mm_storeu_ps(out, hsum4_512(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));                   \
        store_rows(a, m + r, n0, nr, out, 1.f);                                                      \
    }                                                                                                \
}                                                                                                    \
static TGT512 void NAME(const void* args, int64_t chunk) {                                           \
    const linear_args* a = (const linear_args*)args;                                                 \
    const int64_t lo = chunk * a->rows, hi = lo + a->rows < a->N ? lo + a->rows : a->N;              \
    const int64_t passes = (a->M + 3) / 4, per = ((int64_t)sizeof(T) + passes - 1) / passes;         \
    for (int64_t n0 = lo; n0 < hi; n0 += 4) {                                                        \
        int64_t nr = hi - n0 < 4 ? hi - n0 : 4, m = 0, pass = 0;                                     \
        for (; m + 4 <= a->M; m += 4, pass++) NAME##_tile(a, n0, nr, m, pass, per, 4);               \
        switch (a->M - m) {                                                                          \
        case 3: NAME##_tile(a, n0, nr, m, pass, per, 3); break;                                      \
        case 2: NAME##_tile(a, n0, nr, m, pass, per, 2); break;                                      \
        case 1: NAME##_tile(a, n0, nr, m, pass, per, 1); break;                                      \
        default: break;                                                                              \
        }                                                                                            \
    }                                                                                                \
}
TILE512_CHUNK(f32_chunk512, float, ld512_f32)
TILE512_CHUNK(bf16_chunk512, uint16_t, ld512_bf16)

/* the chunk function for float (fp32 / bf16) weights and this many input rows */
static chunk_fn float_chunk(int64_t mode, int64_t M, int64_t K) {
    int wide = use_avx512 && M > 1 && K % 16 == 0;
    if (mode == LMF_MODE_BF16) return wide ? bf16_chunk512 : bf16_chunk;
    return wide ? f32_chunk512 : f32_chunk;
}

/* rows per chunk: ~`bytes` of weights, a multiple of 4 */
static int64_t chunk_rows(int64_t K, int64_t elt, int64_t bytes) {
    int64_t r = (bytes / (K * elt) + 3) & ~3L;
    return r < 4 ? 4 : r;
}

static void run_linear(chunk_fn fn, linear_args* a, int64_t elt, int nthreads) {
    /* fp32/bf16: longer sequential runs per chunk read faster (a chunk boundary restarts the
     * prefetchers, and the next-group prefetch of the last group is wasted); measured best at
     * ~128 KB. int8 keeps ~32 KB: its matrices are 4x smaller, and fewer chunks balance worse. */
    a->rows = chunk_rows(a->K, elt, elt > 1 ? CHUNK_BYTES_FLOAT : CHUNK_BYTES);
    run_job(fn, a, (a->N + a->rows - 1) / a->rows, nthreads);
}

/* Each row of x rounded to int16 with its own scale (max|x| / 32767: error <= 1.5e-5 of the row's
 * largest value). xq: 32-byte aligned, M*K int16. */
static void quant_rows(const float* x, int64_t M, int64_t K, int16_t* xq, float* xs) {
    for (int64_t m = 0; m < M; m++) {
        const float* xm = x + m * K;
        float amax = 0.f;
        for (int64_t k = 0; k < K; k++) amax = fmaxf(amax, fabsf(xm[k]));
        float s = amax > 0.f ? amax / 32767.f : 1.f, inv = 1.f / s;
        xs[m] = s;
        for (int64_t k = 0; k < K; k++) xq[m * K + k] = (int16_t)lrintf(xm[k] * inv);
    }
}

/* the public functions: see lmf_cpu.h */
void lmf_linear_i8(const float* x, const int8_t* w, const float* scale, const float* bias, float* y,
                   int64_t M, int64_t N, int64_t K, int nthreads) {
    int16_t* xq = (int16_t*)aligned_alloc(32, (size_t)((M * K * 2 + 31) & ~31L));
    float* xs = (float*)malloc((size_t)M * sizeof(float));
    quant_rows(x, M, K, xq, xs);
    linear_args a = {x, w, scale, bias, y, xq, xs, M, N, K, 0, 0};
    run_linear(i8_chunk, &a, 1, nthreads);
    free(xq);
    free(xs);
}

void lmf_linear_bf16(const float* x, const uint16_t* w, const float* bias, float* y,
                     int64_t M, int64_t N, int64_t K, int nthreads) {
    linear_args a = {x, w, 0, bias, y, 0, 0, M, N, K, 0, 0};
    run_linear(float_chunk(LMF_MODE_BF16, M, K), &a, 2, nthreads);
}

void lmf_linear_f32(const float* x, const float* w, const float* bias, float* y,
                    int64_t M, int64_t N, int64_t K, int nthreads) {
    linear_args a = {x, w, 0, bias, y, 0, 0, M, N, K, 0, 0};
    run_linear(float_chunk(LMF_MODE_FP32, M, K), &a, 4, nthreads);
}

/* ---- one batch-1 decoding step through every layer ---------------------------------------------
 * What GPT.forward does for one token of one sequence, for the common block shapes (pre-norm,
 * RMSNorm or LayerNorm, rotary or none, optional per-head q/k RMSNorm, GQA, gated or plain MLP,
 * sequential or parallel residual, biases anywhere). One call per token: no Python between the
 * ~200 small operations, and the pool's helpers stay awake between matrix products. */

typedef struct {
    const float* q; int64_t ldq;          /* queries of token m, head h: q + m*ldq + h*hs */
    const int64_t* kv_off;                /* per token: element offset of its cache row */
    const float* kc; const float* vc;     /* this layer's caches, (B, ng, s_max, hs) */
    const int64_t* pos; float* y; float* scores; int64_t score_stride;
    int64_t nh, hs, s_max, q_per_kv; float scale;
} attn_args;

/* one query head of one token over the pos+1 cached positions of its kv group */
static void attn_head(const void* args, int64_t c) {
    const attn_args* a = (const attn_args*)args;
    const int64_t m = c / a->nh, h = c % a->nh, hs = a->hs, g = h / a->q_per_kv, n = a->pos[m] + 1;
    const float* q = a->q + m * a->ldq + h * hs;
    const float* kc = a->kc + a->kv_off[m] + g * a->s_max * hs;
    const float* vc = a->vc + a->kv_off[m] + g * a->s_max * hs;
    float* sc = a->scores + c * a->score_stride;
    float mx = -INFINITY;
    for (int64_t s = 0; s < n; s++) {
        const float* k = kc + s * hs;
        __m256 acc = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 8 <= hs; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), _mm256_loadu_ps(k + j), acc);
        float dot = hsum_ps(acc);
        for (; j < hs; j++) dot += q[j] * k[j];
        sc[s] = dot * a->scale;
        mx = fmaxf(mx, sc[s]);
    }
    float sum = 0.f;
    for (int64_t s = 0; s < n; s++) { sc[s] = expf(sc[s] - mx); sum += sc[s]; }
    float inv = 1.f / sum;
    float* y = a->y + m * a->nh * hs + h * hs;
    for (int64_t j = 0; j < hs; j++) y[j] = 0.f;
    for (int64_t s = 0; s < n; s++) {
        const float* v = vc + s * hs;
        float p = sc[s] * inv;
        int64_t j = 0;
        __m256 pv = _mm256_set1_ps(p);
        for (; j + 8 <= hs; j += 8) _mm256_storeu_ps(y + j, _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + j), _mm256_loadu_ps(y + j)));
        for (; j < hs; j++) y[j] += p * v[j];
    }
}

static void norm_row(const lmf_model* m, const float* x, const float* w, const float* b, float* out, int64_t n) {
    if (m->norm == LMF_NORM_RMSNORM) {
        float ss = 0.f;
        for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
        float r = 1.f / sqrtf(ss / (float)n + m->eps);
        for (int64_t i = 0; i < n; i++) out[i] = x[i] * r * w[i];
        return;
    }
    float mean = 0.f, var = 0.f;
    for (int64_t i = 0; i < n; i++) mean += x[i];
    mean /= (float)n;
    for (int64_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float r = 1.f / sqrtf(var / (float)n + m->eps);
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] - mean) * r * w[i] + (b ? b[i] : 0.f);
}

static void norm_rows(const lmf_model* m, int64_t M, const float* x, const float* w, const float* b, float* out, int64_t n) {
    for (int64_t r = 0; r < M; r++) norm_row(m, x + r * n, w, b, out + r * n, n);
}

static inline float act_fn(enum lmf_act act, float v) {
    switch (act) {
    case LMF_ACT_SILU: return v / (1.f + expf(-v));
    case LMF_ACT_GELU: return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    case LMF_ACT_GELU_TANH: return 0.5f * v * (1.f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
    default: return v > 0.f ? v : 0.f;
    }
}

static void rope_heads(float* x, int64_t n_heads, int64_t hs, int64_t n_rot, const float* cos, const float* sin_s) {
    const int64_t half = n_rot / 2;
    float tmp[512];
    for (int64_t h = 0; h < n_heads; h++) {
        float* v = x + h * hs;
        for (int64_t i = 0; i < n_rot; i++) tmp[i] = v[i] * cos[i] + v[i < half ? i + half : i - half] * sin_s[i];
        for (int64_t i = 0; i < n_rot; i++) v[i] = tmp[i];
    }
}

static void rms_heads(float* x, int64_t n_heads, int64_t hs, const float* w, float eps) {
    for (int64_t h = 0; h < n_heads; h++) {
        float* v = x + h * hs;
        float ss = 0.f;
        for (int64_t i = 0; i < hs; i++) ss += v[i] * v[i];
        float r = 1.f / sqrtf(ss / (float)hs + eps);
        for (int64_t i = 0; i < hs; i++) v[i] = v[i] * r * w[i];
    }
}

/* y[M, :N] (row stride ldy) = x[M, K] @ W^T on the pool; xq/xs: scratch for the int8 path */
static void lin(const lmf_lin* L, int64_t M, const float* x, float* y, int64_t ldy, int16_t* xq, float* xs,
                int nthreads) {
    linear_args a = {x, L->w, L->scale, L->bias, y, xq, xs, M, L->N, L->K, 0, ldy};
    if (L->N == 0) return;
    if (L->mode == LMF_MODE_INT8) {
        quant_rows(x, M, L->K, xq, xs);
        run_linear(i8_chunk, &a, 1, nthreads);
    } else {
        run_linear(float_chunk(L->mode, M, L->K), &a, L->mode == LMF_MODE_BF16 ? 2 : 4, nthreads);
    }
}

int lmf_decode_step(const lmf_model* m, float* x, float* out_, int logits, int64_t M, const int64_t* k_ptrs,
                    const int64_t* v_ptrs, int64_t s_max, const int64_t* rows, const int64_t* pos,
                    const float* cos, const float* sin_s, int nthreads) {
    const int64_t d = m->d, nh = m->nh, ng = m->ng, hs = m->hs, n_rot = m->n_rot, inter = m->inter;
    const int64_t qkv_n = (nh + 2 * ng) * hs, up_n = m->gated ? 2 * inter : inter;
    int64_t widest = d > qkv_n ? d : qkv_n, max_n = 0;
    if (up_n > widest) widest = up_n;
    if (nh * hs > widest) widest = nh * hs;
    for (int64_t r = 0; r < M; r++) max_n = pos[r] + 1 > max_n ? pos[r] + 1 : max_n;
    size_t fl = (size_t)(4 * M * widest + M * nh * max_n + 64);
    float* buf = (float*)aligned_alloc(32, ((fl * sizeof(float)) + 31) & ~(size_t)31);
    int16_t* xq = (int16_t*)aligned_alloc(32, ((size_t)(M * widest) * 2 + 31) & ~(size_t)31);
    float* xs = (float*)malloc((size_t)M * sizeof(float));
    int64_t* kv_off = (int64_t*)malloc((size_t)M * sizeof(int64_t));
    if (!buf || !xq || !xs || !kv_off) { free(buf); free(xq); free(xs); free(kv_off); return -1; }
    float *h = buf, *t1 = h + M * widest, *t2 = t1 + M * widest, *t3 = t2 + M * widest, *scores = t3 + M * widest;
    for (int64_t r = 0; r < M; r++) kv_off[r] = rows[r] * ng * s_max * hs;
    for (int64_t l = 0; l < m->n_layer; l++) {
        const lmf_layer* L = m->layers + l;
        float* kc = (float*)(intptr_t)k_ptrs[l];
        float* vc = (float*)(intptr_t)v_ptrs[l];
        /* attention: t1 = [q | k | v] per token (row stride qkv_n) */
        norm_rows(m, M, x, L->n1_w, L->n1_b, h, d);
        lin(&L->q, M, h, t1, qkv_n, xq, xs, nthreads);
        lin(&L->k, M, h, t1 + nh * hs, qkv_n, xq, xs, nthreads);
        lin(&L->v, M, h, t1 + (nh + ng) * hs, qkv_n, xq, xs, nthreads);
        for (int64_t r = 0; r < M; r++) {
            float *q = t1 + r * qkv_n, *k = q + nh * hs, *v = k + ng * hs;
            if (L->qn_w) { rms_heads(q, nh, hs, L->qn_w, m->eps); rms_heads(k, ng, hs, L->kn_w, m->eps); }
            if (n_rot) {
                rope_heads(q, nh, hs, n_rot, cos + r * n_rot, sin_s + r * n_rot);
                rope_heads(k, ng, hs, n_rot, cos + r * n_rot, sin_s + r * n_rot);
            }
            for (int64_t g = 0; g < ng; g++)
                for (int64_t j = 0; j < hs; j++) {
                    kc[kv_off[r] + (g * s_max + pos[r]) * hs + j] = k[g * hs + j];
                    vc[kv_off[r] + (g * s_max + pos[r]) * hs + j] = v[g * hs + j];
                }
        }
        attn_args aa = {t1, qkv_n, kv_off, kc, vc, pos, t2, scores, max_n, nh, hs, s_max, nh / ng, m->attn_scale};
        run_job(attn_head, &aa, M * nh, nthreads);           /* t2 = attention output (M, nh*hs) */
        lin(&L->o, M, t2, t3, d, xq, xs, nthreads);           /* t3 = o_proj (M, d) */
        /* MLP */
        const float* mlp_in;
        if (m->parallel) {
            if (m->shared_norm) mlp_in = h; else { norm_rows(m, M, x, L->n2_w, L->n2_b, t2, d); mlp_in = t2; }
        } else {
            for (int64_t i = 0; i < M * d; i++) x[i] += t3[i];
            norm_rows(m, M, x, L->n2_w, L->n2_b, t2, d);
            mlp_in = t2;
        }
        if (m->gated) {                                       /* t1 = [gate | up] per token */
            lin(&L->gate, M, mlp_in, t1, up_n, xq, xs, nthreads);
            lin(&L->up, M, mlp_in, t1 + inter, up_n, xq, xs, nthreads);
            for (int64_t r = 0; r < M; r++)  /* compacted in place to (M, inter): row r's inputs lie at or after r*inter */
                for (int64_t i = 0; i < inter; i++)
                    t1[r * inter + i] = act_fn(m->act, t1[r * up_n + i]) * t1[r * up_n + inter + i];
        } else {
            lin(&L->up, M, mlp_in, t1, inter, xq, xs, nthreads);
            for (int64_t i = 0; i < M * inter; i++) t1[i] = act_fn(m->act, t1[i]);
        }
        float* out = m->parallel ? h : t2;   /* h (the shared norm) is no longer needed here */
        lin(&L->down, M, t1, out, d, xq, xs, nthreads);
        if (m->parallel) for (int64_t i = 0; i < M * d; i++) x[i] = x[i] + t3[i] + out[i];
        else for (int64_t i = 0; i < M * d; i++) x[i] += out[i];
    }
    if (logits) {
        norm_rows(m, M, x, m->nf_w, m->nf_b, h, d);
        lin(&m->head, M, h, out_, m->head.N, xq, xs, nthreads);
    } else {
        norm_rows(m, M, x, m->nf_w, m->nf_b, out_, d);
    }
    free(buf);
    free(xq);
    free(xs);
    free(kv_off);
    return 0;
}

/* ---- prefill attention: many query rows against the cached keys, causal/windowed by position ---- */
static inline __m256 exp256_ps(__m256 x) {
    /* Cephes-style expf: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial; ~1 ulp over [-87, 88] */
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

#define ATT_ROWS 6   /* query rows per task (score tile 6 x 16) */
#define ATT_KEYS 16  /* keys per panel of the transposed key copy */
typedef struct {
    const float* q; int64_t q_sb, q_sh, q_st;   /* q[b, h, t, :] */
    const float* k; int64_t k_sb, k_sg, k_ss;   /* k[b, g, s, :] */
    const float* v; int64_t v_sb, v_sg, v_ss;   /* v[b, g, s, :] */
    float* y; int64_t y_sb, y_st, y_sh;         /* y[b, t, h, :] */
    float* kt;                                  /* scratch: (B, ng, S16 / 16, hs, 16) */
    const int64_t* pos;                         /* (B, T) */
    int64_t B, T, nh, ng, hs, S, S16, window, nblk;
    float scale;
} prefill_attn_args;

static void attn_transpose_keys(const void* args, int64_t c) {  /* one (b, g) per chunk */
    const prefill_attn_args* a = (const prefill_attn_args*)args;
    int64_t b = c / a->ng, g = c % a->ng, hs = a->hs;
    const float* k = a->k + b * a->k_sb + g * a->k_sg;
    float* kt = a->kt + c * a->S16 * hs;
    for (int64_t j = 0; j < a->S16; j++) {
        float* dst = kt + (j / ATT_KEYS) * hs * ATT_KEYS + (j % ATT_KEYS);
        if (j < a->S) for (int64_t d = 0; d < hs; d++) dst[d * ATT_KEYS] = k[j * a->k_ss + d];
        else for (int64_t d = 0; d < hs; d++) dst[d * ATT_KEYS] = 0.f;
    }
}

static __thread float* att_scratch;
static __thread int64_t att_cap;

static void attn_rows(const void* args, int64_t c) {
    const prefill_attn_args* a = (const prefill_attn_args*)args;
    int64_t qpk = a->nh / a->ng, hs = a->hs;
    int64_t blk = a->nblk - 1 - c % a->nblk;  /* the longest rows first: better balance */
    int64_t bg = c / a->nblk, b = bg / a->ng, g = bg % a->ng;
    int64_t rows = qpk * a->T, r0 = blk * ATT_ROWS;
    int64_t nr = rows - r0 < ATT_ROWS ? rows - r0 : ATT_ROWS;
    const float* qr[ATT_ROWS];
    float* yr[ATT_ROWS];
    int64_t lo[ATT_ROWS], hi[ATT_ROWS], jlo = a->S16, jhi = 0;
    for (int64_t r = 0; r < ATT_ROWS; r++) {
        int64_t rr = r0 + (r < nr ? r : nr - 1);  /* a short last block repeats its last row */
        int64_t t = rr / qpk, h = g * qpk + rr % qpk;
        qr[r] = a->q + b * a->q_sb + h * a->q_sh + t * a->q_st;
        yr[r] = a->y + b * a->y_sb + t * a->y_st + h * a->y_sh;
        int64_t p = a->pos[b * a->T + t];
        hi[r] = p + 1 < a->S ? p + 1 : a->S;
        lo[r] = a->window > 0 && p - a->window + 1 > 0 ? p - a->window + 1 : 0;
        if (lo[r] > hi[r]) lo[r] = hi[r];
        if (lo[r] < jlo) jlo = lo[r];
        if (hi[r] > jhi) jhi = hi[r];
    }
    jlo -= jlo % ATT_KEYS;
    int64_t jend = (jhi + ATT_KEYS - 1) / ATT_KEYS * ATT_KEYS, width = jend - jlo;
    if (att_cap < ATT_ROWS * width) {
        free(att_scratch);
        att_cap = ATT_ROWS * width;
        att_scratch = (float*)malloc(sizeof(float) * att_cap);
    }
    float* sc = att_scratch;  /* sc[r * width + (j - jlo)] */
    /* scores: a 6 x 16 tile per key panel, q rows broadcast along the 16 keys */
    const float* kt = a->kt + bg * a->S16 * hs;
    __m256 vs = _mm256_set1_ps(a->scale);
    for (int64_t j = jlo; j < jend; j += ATT_KEYS) {
        const float* kp = kt + (j / ATT_KEYS) * hs * ATT_KEYS;
        __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
               c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
        for (int64_t d = 0; d < hs; d++) {
            __m256 k0 = _mm256_loadu_ps(kp + d * ATT_KEYS), k1 = _mm256_loadu_ps(kp + d * ATT_KEYS + 8), x;
            x = _mm256_broadcast_ss(qr[0] + d); c00 = _mm256_fmadd_ps(x, k0, c00); c01 = _mm256_fmadd_ps(x, k1, c01);
            x = _mm256_broadcast_ss(qr[1] + d); c10 = _mm256_fmadd_ps(x, k0, c10); c11 = _mm256_fmadd_ps(x, k1, c11);
            x = _mm256_broadcast_ss(qr[2] + d); c20 = _mm256_fmadd_ps(x, k0, c20); c21 = _mm256_fmadd_ps(x, k1, c21);
            x = _mm256_broadcast_ss(qr[3] + d); c30 = _mm256_fmadd_ps(x, k0, c30); c31 = _mm256_fmadd_ps(x, k1, c31);
            x = _mm256_broadcast_ss(qr[4] + d); c40 = _mm256_fmadd_ps(x, k0, c40); c41 = _mm256_fmadd_ps(x, k1, c41);
            x = _mm256_broadcast_ss(qr[5] + d); c50 = _mm256_fmadd_ps(x, k0, c50); c51 = _mm256_fmadd_ps(x, k1, c51);
        }
        float* s = sc + (j - jlo);
        _mm256_storeu_ps(s, _mm256_mul_ps(c00, vs)); _mm256_storeu_ps(s + 8, _mm256_mul_ps(c01, vs)); s += width;
        _mm256_storeu_ps(s, _mm256_mul_ps(c10, vs)); _mm256_storeu_ps(s + 8, _mm256_mul_ps(c11, vs)); s += width;
        _mm256_storeu_ps(s, _mm256_mul_ps(c20, vs)); _mm256_storeu_ps(s + 8, _mm256_mul_ps(c21, vs)); s += width;
        _mm256_storeu_ps(s, _mm256_mul_ps(c30, vs)); _mm256_storeu_ps(s + 8, _mm256_mul_ps(c31, vs)); s += width;
        _mm256_storeu_ps(s, _mm256_mul_ps(c40, vs)); _mm256_storeu_ps(s + 8, _mm256_mul_ps(c41, vs)); s += width;
        _mm256_storeu_ps(s, _mm256_mul_ps(c50, vs)); _mm256_storeu_ps(s + 8, _mm256_mul_ps(c51, vs));
    }
    /* softmax of each row over its own keys [lo, hi); zero elsewhere in the tile */
    float inv[ATT_ROWS];
    for (int64_t r = 0; r < ATT_ROWS; r++) {
        float* s = sc + r * width - jlo;  /* s[j] for absolute key j */
        int64_t l = lo[r], h = hi[r], j;
        for (j = jlo; j < l; j++) s[j] = 0.f;
        for (j = h; j < jend; j++) s[j] = 0.f;
        if (h <= l) { inv[r] = 0.f; continue; }
        __m256 vmx = _mm256_set1_ps(-INFINITY);
        for (j = l; j + 8 <= h; j += 8) vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(s + j));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmx), _mm256_extractf128_ps(vmx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float mx = _mm_cvtss_f32(m4);
        for (; j < h; j++) mx = s[j] > mx ? s[j] : mx;
        __m256 vm = _mm256_set1_ps(mx), vsum = _mm256_setzero_ps();
        for (j = l; j + 8 <= h; j += 8) {
            __m256 e = exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
            _mm256_storeu_ps(s + j, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        float sum = hsum_ps(vsum);
        for (; j < h; j++) { s[j] = expf(s[j] - mx); sum += s[j]; }
        inv[r] = 1.f / sum;
    }
    /* out = P V: three rows x 32 columns of accumulators per pass over the keys */
    const float* v = a->v + b * a->v_sb + g * a->v_sg;
    int64_t vss = a->v_ss;
    for (int64_t r = 0; r < ATT_ROWS; r += 3) {
        const float *p0 = sc + r * width - jlo, *p1 = p0 + width, *p2 = p1 + width;
        int64_t l = lo[r] < lo[r + 1] ? lo[r] : lo[r + 1];
        l = l < lo[r + 2] ? l : lo[r + 2];
        int64_t h = hi[r] > hi[r + 1] ? hi[r] : hi[r + 1];
        h = h > hi[r + 2] ? h : hi[r + 2];
        int64_t c0 = 0;
        for (; c0 + 32 <= hs; c0 += 32) {
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00,
                   a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00;
            const float* vj = v + l * vss + c0;
            for (int64_t j = l; j < h; j++, vj += vss) {
                __m256 v0 = _mm256_loadu_ps(vj), v1 = _mm256_loadu_ps(vj + 8), v2 = _mm256_loadu_ps(vj + 16),
                       v3 = _mm256_loadu_ps(vj + 24), x;
                x = _mm256_broadcast_ss(p0 + j);
                a00 = _mm256_fmadd_ps(x, v0, a00); a01 = _mm256_fmadd_ps(x, v1, a01);
                a02 = _mm256_fmadd_ps(x, v2, a02); a03 = _mm256_fmadd_ps(x, v3, a03);
                x = _mm256_broadcast_ss(p1 + j);
                a10 = _mm256_fmadd_ps(x, v0, a10); a11 = _mm256_fmadd_ps(x, v1, a11);
                a12 = _mm256_fmadd_ps(x, v2, a12); a13 = _mm256_fmadd_ps(x, v3, a13);
                x = _mm256_broadcast_ss(p2 + j);
                a20 = _mm256_fmadd_ps(x, v0, a20); a21 = _mm256_fmadd_ps(x, v1, a21);
                a22 = _mm256_fmadd_ps(x, v2, a22); a23 = _mm256_fmadd_ps(x, v3, a23);
            }
            float* y0 = yr[r] + c0;
            __m256 s0 = _mm256_set1_ps(inv[r]);
            _mm256_storeu_ps(y0, _mm256_mul_ps(a00, s0)); _mm256_storeu_ps(y0 + 8, _mm256_mul_ps(a01, s0));
            _mm256_storeu_ps(y0 + 16, _mm256_mul_ps(a02, s0)); _mm256_storeu_ps(y0 + 24, _mm256_mul_ps(a03, s0));
            if (r + 1 < nr) {
                float* y1 = yr[r + 1] + c0;
                __m256 s1 = _mm256_set1_ps(inv[r + 1]);
                _mm256_storeu_ps(y1, _mm256_mul_ps(a10, s1)); _mm256_storeu_ps(y1 + 8, _mm256_mul_ps(a11, s1));
                _mm256_storeu_ps(y1 + 16, _mm256_mul_ps(a12, s1)); _mm256_storeu_ps(y1 + 24, _mm256_mul_ps(a13, s1));
            }
            if (r + 2 < nr) {
                float* y2 = yr[r + 2] + c0;
                __m256 s2 = _mm256_set1_ps(inv[r + 2]);
                _mm256_storeu_ps(y2, _mm256_mul_ps(a20, s2)); _mm256_storeu_ps(y2 + 8, _mm256_mul_ps(a21, s2));
                _mm256_storeu_ps(y2 + 16, _mm256_mul_ps(a22, s2)); _mm256_storeu_ps(y2 + 24, _mm256_mul_ps(a23, s2));
            }
        }
        for (; c0 < hs; c0 += 8) {  /* head sizes not a multiple of 32: 8 columns at a time */
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0;
            const float* vj = v + l * vss + c0;
            for (int64_t j = l; j < h; j++, vj += vss) {
                __m256 vv = _mm256_loadu_ps(vj);
                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + j), vv, a0);
                a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + j), vv, a1);
                a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(p2 + j), vv, a2);
            }
            _mm256_storeu_ps(yr[r] + c0, _mm256_mul_ps(a0, _mm256_set1_ps(inv[r])));
            if (r + 1 < nr) _mm256_storeu_ps(yr[r + 1] + c0, _mm256_mul_ps(a1, _mm256_set1_ps(inv[r + 1])));
            if (r + 2 < nr) _mm256_storeu_ps(yr[r + 2] + c0, _mm256_mul_ps(a2, _mm256_set1_ps(inv[r + 2])));
        }
    }
}

void lmf_attention(const float* q, int64_t q_sb, int64_t q_sh, int64_t q_st,
                   const float* k, int64_t k_sb, int64_t k_sg, int64_t k_ss,
                   const float* v, int64_t v_sb, int64_t v_sg, int64_t v_ss,
                   float* y, int64_t y_sb, int64_t y_st, int64_t y_sh, float* kt, const int64_t* pos,
                   int64_t B, int64_t T, int64_t nh, int64_t ng, int64_t hs, int64_t S, int64_t window,
                   float scale, int nthreads) {
    prefill_attn_args a = {q, q_sb, q_sh, q_st, k, k_sb, k_sg, k_ss, v, v_sb, v_sg, v_ss, y, y_sb, y_st, y_sh, kt, pos,
                   B, T, nh, ng, hs, S, (S + ATT_KEYS - 1) / ATT_KEYS * ATT_KEYS, window,
                   (nh / ng * T + ATT_ROWS - 1) / ATT_ROWS, scale};
    run_job(attn_transpose_keys, &a, B * ng, nthreads);
    run_job(attn_rows, &a, B * ng * a.nblk, nthreads);
}

/* ---- dropout from a counter-based hash (LoRA's adapter inputs) -------------------------------
 * Element i is kept where lowbias32(lowbias32(i ^ k1) + k2) >= threshold, so the mask is a pure
 * function of (seed, i): the backward pass draws it again instead of keeping it, and the result
 * does not depend on the thread count. lowbias32 is Chris Wellons' 32-bit integer hash (bias
 * 0.17, "hash-prospector"); two rounds keyed by the two halves of the seed. The loop is plain C
 * that the compiler vectorises (32-bit multiplies: AVX2's vpmulld). */
static inline uint32_t lowbias32(uint32_t x) {
    x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16;
    return x;
}

typedef struct { const float* x; float* out; int64_t n, chunk; uint32_t k1, k2, threshold; } dropout_args;

static void dropout_chunk(const void* args, int64_t c) {
    const dropout_args* a = args;
    const uint32_t k1 = a->k1, k2 = a->k2, threshold = a->threshold;
    int64_t lo = c * a->chunk, hi = lo + a->chunk < a->n ? lo + a->chunk : a->n;
    if (a->out == a->x) {  /* in place: one pointer, so the loop vectorises without an overlap check */
        float* y = a->out;
        for (int64_t i = lo; i < hi; i++)
            if (lowbias32(lowbias32((uint32_t)i ^ k1) + k2) < threshold) y[i] = 0.0f;
        return;
    }
    const float* restrict x = a->x;
    float* restrict out = a->out;
    for (int64_t i = lo; i < hi; i++) {
        uint32_t h = lowbias32(lowbias32((uint32_t)i ^ k1) + k2);
        out[i] = h >= threshold ? x[i] : 0.0f;
    }
}

void lmf_dropout(const float* x, float* out, int64_t n, int64_t seed, int64_t threshold, int nthreads) {
    int64_t chunks = nthreads > 1 && n >= 65536 ? nthreads : 1;  /* one contiguous share per thread */
    dropout_args a = {x, out, n, ((n + chunks - 1) / chunks + 63) / 64 * 64,
                      (uint32_t)seed, (uint32_t)((uint64_t)seed >> 32), (uint32_t)threshold};
    run_job(dropout_chunk, &a, (long)chunks, nthreads);
}
