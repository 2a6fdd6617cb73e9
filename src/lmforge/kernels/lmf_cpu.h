/* lmforge CPU kernels: the interface shared by the C code (lmf_cpu.c) and Python.
 *
 * This file is the one definition of these enums, structs and functions: `lmforge.cpu_kernels`
 * reads it at load time and derives the ctypes Structures, the enum tables and the functions'
 * argument types from it. Keep to the forms that reader understands (tests/test_cpu_kernels.py
 * checks the derived layouts against the compiler's): `enum name { NAME = value, ... };`,
 * `typedef struct { type a, *b; ... } name;` with fields of the types int, int64_t, float, a
 * pointer, an enum or a struct defined above, and prototypes of `void`/`int` functions. */
#ifndef LMF_CPU_H
#define LMF_CPU_H
#include <stdint.h>

/* how a projection's weights are stored: Python's table is {"fp32": 0, "bf16": 1, "int8": 2} */
enum lmf_mode { LMF_MODE_FP32 = 0, LMF_MODE_BF16 = 1, LMF_MODE_INT8 = 2 };
/* the MLP's activation */
enum lmf_act { LMF_ACT_SILU = 0, LMF_ACT_GELU = 1, LMF_ACT_GELU_TANH = 2, LMF_ACT_RELU = 3 };
enum lmf_norm { LMF_NORM_RMSNORM = 0, LMF_NORM_LAYERNORM = 1 };

/* one projection y = x W^T (* scale) + bias; W (N, K): fp32, bf16 bits, or int8 with a per-row
 * scale. N == 0: no projection. */
typedef struct {
    const void* w;
    const float* scale;
    const float* bias;
    int64_t N, K;
    int64_t mode;  /* an lmf_mode */
} lmf_lin;

/* one block. Outputs land side by side, q | k | v and gate | up, so a fused matrix may stand in
 * for its group as `q` (or `gate`) with the others' N = 0. */
typedef struct {
    lmf_lin q, k, v, o, gate, up, down;
    const float *n1_w, *n1_b, *n2_w, *n2_b, *qn_w, *kn_w;
} lmf_layer;

typedef struct {
    int64_t n_layer, d, nh, ng, hs, inter, n_rot;
    enum lmf_norm norm;
    enum lmf_act act;
    int gated, parallel, shared_norm;
    float eps, attn_scale;
    const lmf_layer* layers;
    const float *nf_w, *nf_b;  /* the final norm */
    lmf_lin head;              /* the output head (N == 0: none) */
} lmf_model;

/* y[M,N] = (x[M,K] @ w[N,K]^T) * scale[N] + bias[N]; w int8, K % 16 == 0. */
void lmf_linear_i8(const float* x, const int8_t* w, const float* scale, const float* bias, float* y,
                   int64_t M, int64_t N, int64_t K, int nthreads);
/* y[M,N] = x[M,K] @ w[N,K]^T + bias[N]; w bf16 (raw uint16 bits) or fp32, K % 8 == 0. */
void lmf_linear_bf16(const float* x, const uint16_t* w, const float* bias, float* y,
                     int64_t M, int64_t N, int64_t K, int nthreads);
void lmf_linear_f32(const float* x, const float* w, const float* bias, float* y,
                    int64_t M, int64_t N, int64_t K, int nthreads);

/* on: 1 use the AVX-512 paths where the CPU has AVX-512F (the default), 0 the AVX2 ones only, -1 keep;
 * returns whether AVX-512 paths are in use. For tests and benchmarks (not thread-safe against a
 * running kernel). */
int lmf_use_avx512(int on);

/* M tokens, each the next token of its own sequence (batch-row `rows[m]` of the caches, position
 * `pos[m]` < s_max), through every layer. x (M, d): the tokens' embeddings in (used as scratch);
 * out: the final-normed hidden states (M, d), or with `logits` the head's output (M, head.N).
 * k_ptrs/v_ptrs: per layer, the (B, ng, s_max, hs) fp32 caches. cos/sin_s (M, n_rot): rotary
 * factors of each token's position (sin with its first half negated). Returns 0, or -1 when
 * scratch memory is unavailable (nothing written then). */
int lmf_decode_step(const lmf_model* m, float* x, float* out, int logits, int64_t M, const int64_t* k_ptrs,
                    const int64_t* v_ptrs, int64_t s_max, const int64_t* rows, const int64_t* pos,
                    const float* cos, const float* sin_s, int nthreads);

/* Attention of T query rows per sequence against S cached keys: query (b, t) at position pos[b, t]
 * sees keys j with max(0, pos - window + 1) <= j <= pos (window 0: no window), j < S. hs % 8 == 0.
 * kt: scratch of B * ng * S16 * hs floats, S16 = S rounded up to 16. Writes y[b, t, h, :]. */
void lmf_attention(const float* q, int64_t q_sb, int64_t q_sh, int64_t q_st,
                   const float* k, int64_t k_sb, int64_t k_sg, int64_t k_ss,
                   const float* v, int64_t v_sb, int64_t v_sg, int64_t v_ss,
                   float* y, int64_t y_sb, int64_t y_st, int64_t y_sh, float* kt, const int64_t* pos,
                   int64_t B, int64_t T, int64_t nh, int64_t ng, int64_t hs, int64_t S, int64_t window,
                   float scale, int nthreads);

/* out[i] = x[i] where the hash of (seed, i) is >= threshold (p * 2^32), else 0; out may be x.
 * n < 2^32. The same (seed, threshold) gives the same mask at any thread count. */
void lmf_dropout(const float* x, float* out, int64_t n, int64_t seed, int64_t threshold, int nthreads);

#endif
