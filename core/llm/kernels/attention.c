/* Grouped-query causal attention over in-place KV slots, as an ONNX Runtime custom op
 * (domain "effserve", op "Attention"): the drop-in for the graph's GroupQueryAttention on CPU.
 *
 * Why: ORT's CPU GroupQueryAttention runs QK' and PV as two small GEMMs per row and per query
 * head, packing the row's keys/values again for each of the query heads that share them; at 16
 * decode rows that is 144 GEMM pairs a layer and ~45% of the step (bench/op_split.py). Here each
 * (row, KV head) reads its keys and values once for all of its query heads and query tokens.
 *
 * Batch invariance by construction: every query (row, token, head) runs the same instructions in
 * the same order over its own causal span, whatever else shares the call, so a row's output is
 * bit-identical alone, in a batch of any size, or as one of several query tokens (speculative
 * verification). No extra zero query token is needed (the GQA graph's trick, core/build/llama.py).
 *
 * Inputs  0 qkv [B,S,(H+2KV)*D] float: packed projections, before rotary
 *         1 past_key, 2 past_value [B,KV,CAP,D] float: slots, each row's valid tokens first
 *         3 seqlens_k [B] int32: cached + valid new tokens - 1, per row
 *         4 total_seq_len [] int32: max over rows of seqlens_k + 1
 *         5 cos_cache, 6 sin_cache [MAXPOS,D/2] float: rotary tables (interleaved pairs)
 *         7 query_lens [B] int32: valid new tokens per row (the rest of S is padding); optional:
 *           without it every row takes all S tokens, padding included (the "padded" graph flavor
 *           of ONNX Runtime 1.31, where seqlens_k counts them too)
 * effserve.AttentionHalfKV: the same with past/present in float16 (half the KV bytes to read at
 * each step; keys and values are rounded to half precision once, when they are appended).
 * Outputs 0 [B,S,H*D] float (padding positions zero)
 *         1 present_key, 2 present_value [B,KV,max(CAP,total_seq_len),D]: bound to past's buffers
 *           (the engine's slots), the new tokens' keys/values are written in place; otherwise
 *           past is copied over first and the positions after it are zero.
 *
 * ONNX Runtime's C API: ort_api.h. Registered with the other ops by register.c.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ort_api.h"
#include "pool.h"

enum { MAX_HEAD_DIM = 256 };

/* x' = rotate(x) at position pos, GGUF's interleaved pairs (x[2i], x[2i+1]) */
static void rotary(float *dst, const float *x, const float *cos_row, const float *sin_row, int64_t d) {
    for (int64_t i = 0; i < d / 2; i++) {
        float a = x[2 * i], b = x[2 * i + 1], c = cos_row[i], s = sin_row[i];
        dst[2 * i] = a * c - b * s;
        dst[2 * i + 1] = a * s + b * c;
    }
}

/* Every query's arithmetic below depends only on its own vector, its causal span and the keys
 * and values in that span: blocks are aligned to key positions (t / 8), never to the call. */
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* the 8 horizontal sums of a[0..7], as one vector (a fixed tree of adds) */
static inline __m256 sums8(const __m256 *a) {
    __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
    __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
    __m256 lo = _mm256_hadd_ps(s01, s23), hi = _mm256_hadd_ps(s45, s67);
    /* lo = [0l 1l 2l 3l | 0h 1h 2h 3h] (l, h: halves of each vector), hi alike for 4..7 */
    return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
}

/* exp(x) for x <= 0 (softmax arguments), 8 at a time: 2^n * p(r), degree-6 polynomial */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* 8 KV elements as floats, from float or float16 storage */
static inline __m256 kv8(const void *base, int64_t at, int half) {
    return half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + at)))
                : _mm256_loadu_ps((const float *)base + at);
}

static void store_kv(void *base, int64_t at, const float *x, int64_t d, int half) {
    if (!half) { memcpy((float *)base + at, x, (size_t)d * sizeof(float)); return; }
    for (int64_t i = 0; i < d; i += 8)
        _mm_storeu_si128((__m128i *)((uint16_t *)base + at + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

static inline __m256 tail_mask(int64_t valid) {  /* lanes < valid all ones */
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)valid), lanes));
}

/* scores[t] = q . keys[t] for t in [0, span), written in blocks of 8 (lanes past span: 0).
 * D is a compile-time constant so the 8 accumulators stay in registers. */
#define QK_FOR(D)                                                                                \
    static void qk_##D(const float *q, const void *keys, int64_t span, int half, float *scores) { \
        for (int64_t t0 = 0; t0 < span; t0 += 8) {                                               \
            __m256 acc[8];                                                                       \
            if (span - t0 >= 8) {                                                                \
                for (int u = 0; u < 8; u++) acc[u] = _mm256_setzero_ps();                        \
                for (int i = 0; i < D; i += 8) {                                                 \
                    const __m256 qv = _mm256_loadu_ps(q + i);                                    \
                    for (int u = 0; u < 8; u++)                                                  \
                        acc[u] = _mm256_fmadd_ps(qv, kv8(keys, (t0 + u) * D + i, half), acc[u]); \
                }                                                                                \
            } else {                                                                             \
                for (int u = 0; u < 8; u++) {                                                    \
                    acc[u] = _mm256_setzero_ps();                                                \
                    if (t0 + u >= span) continue;                                                \
                    for (int i = 0; i < D; i += 8)                                               \
                        acc[u] = _mm256_fmadd_ps(_mm256_loadu_ps(q + i),                         \
                                                 kv8(keys, (t0 + u) * D + i, half), acc[u]);     \
                }                                                                                \
            }                                                                                    \
            _mm256_storeu_ps(scores + t0, sums8(acc));                                           \
        }                                                                                        \
    }
QK_FOR(64)
QK_FOR(128)

/* the same for any D (multiple of 8): accumulators in memory, slower */
static void qk_any(const float *q, const void *keys, int64_t span, int64_t d, int half, float *scores) {
    for (int64_t t0 = 0; t0 < span; t0 += 8) {
        __m256 acc[8];
        for (int u = 0; u < 8; u++) {
            acc[u] = _mm256_setzero_ps();
            if (t0 + u >= span) continue;
            for (int64_t i = 0; i < d; i += 8)
                acc[u] = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), kv8(keys, (t0 + u) * d + i, half), acc[u]);
        }
        _mm256_storeu_ps(scores + t0, sums8(acc));
    }
}

#if defined(__AVX512F__)
/* Head size 64 on AVX-512: a key or value row is 4 registers, half the instructions. */
static inline __m512 kv16(const void *base, int64_t at, int half) {
    return half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + at)))
                : _mm512_loadu_ps((const float *)base + at);
}

static void qk_64_wide(const float *q, const void *keys, int64_t span, int half, float *scores) {
    const __m512 q0 = _mm512_loadu_ps(q), q1 = _mm512_loadu_ps(q + 16), q2 = _mm512_loadu_ps(q + 32),
                 q3 = _mm512_loadu_ps(q + 48);
    for (int64_t t0 = 0; t0 < span; t0 += 8) {
        __m256 acc[8];
        for (int u = 0; u < 8; u++) {
            if (t0 + u >= span) { acc[u] = _mm256_setzero_ps(); continue; }
            const int64_t at = (t0 + u) * 64;
            __m512 a = _mm512_mul_ps(q0, kv16(keys, at, half));
            a = _mm512_fmadd_ps(q1, kv16(keys, at + 16, half), a);
            a = _mm512_fmadd_ps(q2, kv16(keys, at + 32, half), a);
            a = _mm512_fmadd_ps(q3, kv16(keys, at + 48, half), a);
            acc[u] = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
        }
        _mm256_storeu_ps(scores + t0, sums8(acc));
    }
}

static void pv_64_wide(const float *p, const void *values, int64_t span, int half, float inv, float *out) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t t = 0; t < span; t++) {
        const __m512 pt = _mm512_set1_ps(p[t]);
        a0 = _mm512_fmadd_ps(pt, kv16(values, t * 64, half), a0);
        a1 = _mm512_fmadd_ps(pt, kv16(values, t * 64 + 16, half), a1);
        a2 = _mm512_fmadd_ps(pt, kv16(values, t * 64 + 32, half), a2);
        a3 = _mm512_fmadd_ps(pt, kv16(values, t * 64 + 48, half), a3);
    }
    const __m512 iv = _mm512_set1_ps(inv);
    _mm512_storeu_ps(out, _mm512_mul_ps(a0, iv));
    _mm512_storeu_ps(out + 16, _mm512_mul_ps(a1, iv));
    _mm512_storeu_ps(out + 32, _mm512_mul_ps(a2, iv));
    _mm512_storeu_ps(out + 48, _mm512_mul_ps(a3, iv));
}
#define WIDE_64 1
#else
#define WIDE_64 0
#endif

static void qk(const float *q, const void *keys, int64_t span, int64_t d, int half, float *scores) {
#if WIDE_64
    if (d == 64) { qk_64_wide(q, keys, span, half, scores); return; }
#endif
    if (d == 64) qk_64(q, keys, span, half, scores);
    else if (d == 128) qk_128(q, keys, span, half, scores);
    else qk_any(q, keys, span, d, half, scores);
}

/* softmax over scores[0, span) in place (lanes past span zero); returns 1 / sum */
static float softmax(float *s, int64_t span) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    for (int64_t t = 0; t < span; t += 8)
        m = _mm256_max_ps(m, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_loadu_ps(s + t),
                                              tail_mask(span - t)));
    float lanes[8], top = -INFINITY;
    _mm256_storeu_ps(lanes, m);
    for (int l = 0; l < 8; l++) top = lanes[l] > top ? lanes[l] : top;
    const __m256 mv = _mm256_set1_ps(top);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t t = 0; t < span; t += 8) {
        __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t), mv)), tail_mask(span - t));
        _mm256_storeu_ps(s + t, e);
        sum = _mm256_add_ps(sum, e);
    }
    _mm256_storeu_ps(lanes, sum);
    return 1.0f / (((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) +
                   ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7])));
}

/* out = inv * sum_t p[t] values[t], t in key order; 64 dims at a time in 8 registers */
static void pv(const float *p, const void *values, int64_t span, int64_t d, int half, float inv,
               float *out) {
#if WIDE_64
    if (d == 64) { pv_64_wide(p, values, span, half, inv, out); return; }
#endif
    const __m256 iv = _mm256_set1_ps(inv);
    int64_t i0 = 0;
    for (; i0 + 64 <= d; i0 += 64) {
        __m256 acc[8];
        for (int u = 0; u < 8; u++) acc[u] = _mm256_setzero_ps();
        for (int64_t t = 0; t < span; t++) {
            const __m256 pt = _mm256_set1_ps(p[t]);
            for (int u = 0; u < 8; u++)
                acc[u] = _mm256_fmadd_ps(pt, kv8(values, t * d + i0 + 8 * u, half), acc[u]);
        }
        for (int u = 0; u < 8; u++) _mm256_storeu_ps(out + i0 + 8 * u, _mm256_mul_ps(acc[u], iv));
    }
    for (; i0 < d; i0 += 8) {  /* a head size that is not a multiple of 64 */
        __m256 acc = _mm256_setzero_ps();
        for (int64_t t = 0; t < span; t++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(p[t]), kv8(values, t * d + i0, half), acc);
        _mm256_storeu_ps(out + i0, _mm256_mul_ps(acc, iv));
    }
}
#else
/* Without AVX2 (and its F16C) only float KV: AttentionHalfKV is not registered. */
static inline float kv1(const void *base, int64_t at, int half) { (void)half; return ((const float *)base)[at]; }

static void store_kv(void *base, int64_t at, const float *x, int64_t d, int half) {
    (void)half;
    memcpy((float *)base + at, x, (size_t)d * sizeof(float));
}

static void qk(const float *q, const void *keys, int64_t span, int64_t d, int half, float *scores) {
    for (int64_t t = 0; t < span; t++) {
        float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t i = 0; i < d; i += 8)
            for (int l = 0; l < 8; l++) part[l] += q[i + l] * kv1(keys, t * d + i + l, half);
        scores[t] = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
    }
}

static float softmax(float *s, int64_t span) {
    float m = -INFINITY, sum = 0.0f;
    for (int64_t t = 0; t < span; t++) m = s[t] > m ? s[t] : m;
    for (int64_t t = 0; t < span; t++) { s[t] = expf(s[t] - m); sum += s[t]; }
    return 1.0f / sum;
}

static void pv(const float *p, const void *values, int64_t span, int64_t d, int half, float inv,
               float *out) {
    memset(out, 0, (size_t)d * sizeof(float));
    for (int64_t t = 0; t < span; t++)
        for (int64_t i = 0; i < d; i++) out[i] += p[t] * kv1(values, t * d + i, half);
    for (int64_t i = 0; i < d; i++) out[i] *= inv;
}
#endif

/* ------------------------------------------------------------------ one call */
typedef struct {
    int64_t b_n, s_n, h_n, kv_n, d, cap, group, width, max_pos;
    float scale;
    const float *qkv, *cos_c, *sin_c;
    const int32_t *seqlens, *qlens;
    float *out;
    void *kc, *vc;  /* float or float16 (half) */
    int half;
} Call;

static inline int64_t new_tokens(const Call *c, int64_t b) { return c->qlens ? c->qlens[b] : c->s_n; }

static int row_ok(const Call *c, int64_t b) {
    const int64_t n = new_tokens(c, b), total = (int64_t)c->seqlens[b] + 1;
    return n >= 0 && n <= c->s_n && total - n >= 0 && total <= c->cap && total <= c->max_pos;
}

/* The new tokens' keys (rotated) and values of row b, written in place. */
static void append_row(const Call *c, int64_t b) {
    const int64_t n = new_tokens(c, b), past = c->seqlens[b] + 1 - n, d = c->d;
    for (int64_t s = 0; s < n; s++) {
        const float *tok = c->qkv + (b * c->s_n + s) * c->width;
        const int64_t pos = past + s;
        for (int64_t h = 0; h < c->kv_n; h++) {
            const int64_t at = ((b * c->kv_n + h) * c->cap + pos) * d;
            float key[MAX_HEAD_DIM];
            rotary(key, tok + (c->h_n + h) * d, c->cos_c + pos * (d / 2), c->sin_c + pos * (d / 2), d);
            store_kv(c->kc, at, key, d, c->half);
            store_kv(c->vc, at, tok + (c->h_n + c->kv_n + h) * d, d, c->half);
        }
    }
}

/* Row b, KV head h: every query head of the group, every valid new token. */
static void attend_item(const Call *c, int64_t b, int64_t h, float *q, float *scores) {
    const int64_t n = new_tokens(c, b), past = c->seqlens[b] + 1 - n, d = c->d;
    const size_t elem = c->half ? 2 : 4, at = (size_t)((b * c->kv_n + h) * c->cap * d) * elem;
    const void *keys = (const char *)c->kc + at, *values = (const char *)c->vc + at;
    for (int64_t s = 0; s < n; s++) {
        const float *tok = c->qkv + (b * c->s_n + s) * c->width;
        const int64_t pos = past + s, span = pos + 1;
        for (int64_t g = 0; g < c->group; g++) {
            const int64_t head = h * c->group + g;
            rotary(q, tok + head * d, c->cos_c + pos * (d / 2), c->sin_c + pos * (d / 2), d);
            for (int64_t i = 0; i < d; i++) q[i] *= c->scale;
            qk(q, keys, span, d, c->half, scores);
            const float inv = softmax(scores, span);
            pv(scores, values, span, d, c->half, inv, c->out + ((b * c->s_n + s) * c->h_n + head) * d);
        }
    }
}

/* ------------------------------------------------------------------ threads
 * Items (row, KV head) go out one at a time from a shared counter (pool.h). */

typedef struct {
    const Call *call;
    atomic_long next;
    long items;
} Work;

static void run_items(void *ctx) {
    Work *w = ctx;
    const Call *c = w->call;
    float *q = malloc((size_t)c->d * sizeof(float));
    float *scores = malloc((size_t)(c->cap + 8) * sizeof(float));
    for (long i; (i = atomic_fetch_add(&w->next, 1)) < w->items;) {
        const int64_t b = i / c->kv_n, h = i % c->kv_n;
        if (row_ok(c, b)) attend_item(c, b, h, q, scores);
    }
    free(q);
    free(scores);
}

static void run_parallel(const Call *c, long items, int64_t work, int spin) {
    Work w = {c, 0, items};
    /* under ~64k multiply-adds per thread waking a helper costs more than it saves */
    pool_run(run_items, &w, work >= 65536L * pool_threads(), spin);
}

typedef struct {
    int half, spin;  /* float16 KV; the pool spins after the call (pool.h) */
} Kernel;

static void fail(float *out, size_t n) {  /* KernelCompute cannot return an error: poison */
    for (size_t i = 0; i < n; i++) out[i] = NAN;
}

static void compute(void *kernel, OrtKernelContext *ctx) {
    const int half = ((const Kernel *)kernel)->half, spin = ((const Kernel *)kernel)->spin;
    const OrtValue *in[8] = {NULL};
    size_t n_in = 0;
    if (ORT(KernelContext_GetInputCount, InputCountFn)(ctx, &n_in) || n_in < 7) return;
    for (size_t i = 0; i < n_in && i < 8; i++)
        if (ORT(KernelContext_GetInput, GetInputFn)(ctx, i, &in[i])) return;
    int64_t qd[3], kd[4], cd[2];
    const int ok_dims = dims_of(in[0], qd, 3) == 3 && dims_of(in[1], kd, 4) == 4 &&
                        dims_of(in[5], cd, 2) == 2;
    const int64_t b_n = qd[0], s_n = qd[1], width = qd[2], kv_n = kd[1], d = kd[3], cap = kd[2];
    const int64_t h_n = ok_dims && d > 0 ? width / d - 2 * kv_n : 0;
    const int32_t *total_max = data_of(in[4]);
    const int64_t out_cap = total_max && *total_max > cap ? *total_max : cap;
    int64_t od[3] = {b_n, s_n, h_n * d}, pd[4] = {kd[0], kv_n, out_cap, d};
    OrtValue *o0, *o1, *o2;
    if (ORT(KernelContext_GetOutput, GetOutputFn)(ctx, 0, od, 3, &o0)) return;
    if (ORT(KernelContext_GetOutput, GetOutputFn)(ctx, 1, pd, 4, &o1)) return;
    if (ORT(KernelContext_GetOutput, GetOutputFn)(ctx, 2, pd, 4, &o2)) return;
    Call c = {b_n, s_n, h_n, kv_n, d, out_cap, kv_n > 0 ? h_n / kv_n : 0, width, cd[0],
              d > 0 ? 1.0f / sqrtf((float)d) : 0.0f, data_of(in[0]), data_of(in[5]), data_of(in[6]),
              data_of(in[3]), in[7] ? data_of(in[7]) : NULL, data_of(o0), data_of(o1), data_of(o2), half};
    const char *pk = data_of(in[1]), *pv_in = data_of(in[2]);
    const size_t elem = half ? 2 : 4;
    const size_t out_n = (size_t)(b_n * s_n * h_n * d);
    if (!ok_dims || h_n <= 0 || h_n % kv_n || d % 8 || d > MAX_HEAD_DIM || kd[0] != b_n ||
        cd[1] * 2 != d || width != (h_n + 2 * kv_n) * d) {
        if (c.out) fail(c.out, out_n);
        return;
    }
    if ((const char *)c.kc != pk || (const char *)c.vc != pv_in) {  /* not in place: past, then zeros */
        memset(c.kc, 0, (size_t)(b_n * kv_n * out_cap * d) * elem);
        memset(c.vc, 0, (size_t)(b_n * kv_n * out_cap * d) * elem);
        for (int64_t r = 0; r < b_n * kv_n && cap > 0; r++) {
            memcpy((char *)c.kc + r * out_cap * d * elem, pk + r * cap * d * elem, (size_t)(cap * d) * elem);
            memcpy((char *)c.vc + r * out_cap * d * elem, pv_in + r * cap * d * elem, (size_t)(cap * d) * elem);
        }
    }
    memset(c.out, 0, out_n * sizeof(float));
    int64_t work = 0;
    for (int64_t b = 0; b < b_n; b++) {
        if (!row_ok(&c, b)) {
            fail(c.out + b * s_n * h_n * d, (size_t)(s_n * h_n * d));
            continue;
        }
        append_row(&c, b);
        work += new_tokens(&c, b) * (c.seqlens[b] + 1) * h_n * d;
    }
    run_parallel(&c, (long)(b_n * kv_n), work, spin);
}

static OrtCustomOp attention_op, attention_half_op;

static void *create_kernel(const OrtCustomOp *op, OrtApiTable table, const OrtKernelInfo *info) {
    (void)table;
    Kernel *k = malloc(sizeof(Kernel));
    if (k) *k = (Kernel){op == &attention_half_op, int_attribute(info, "pool_spin", 0) == 1};
    return k;
}
static const char *op_name(const OrtCustomOp *op) {
    return op == &attention_half_op ? "AttentionHalfKV" : "Attention";
}
static const char *op_provider(const OrtCustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static int input_type(const OrtCustomOp *op, size_t i) {
    if (i == 3 || i == 4 || i == 7) return TYPE_INT32;
    return (op == &attention_half_op && (i == 1 || i == 2)) ? TYPE_FLOAT16 : TYPE_FLOAT;
}
static size_t input_count(const OrtCustomOp *op) { (void)op; return 8; }
static int output_type(const OrtCustomOp *op, size_t i) {
    return (op == &attention_half_op && i > 0) ? TYPE_FLOAT16 : TYPE_FLOAT;
}
static size_t output_count(const OrtCustomOp *op) { (void)op; return 3; }
static void destroy_kernel(void *k) { free(k); }
static int required(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; }
static int input_characteristic(const OrtCustomOp *op, size_t i) { (void)op; return i == 7; }
static int default_memory(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; }

static OrtCustomOp attention_op = {
    API_VERSION, create_kernel, op_name, op_provider, input_type, input_count, output_type,
    output_count, compute, destroy_kernel, input_characteristic, required, default_memory,
};
static OrtCustomOp attention_half_op = {
    API_VERSION, create_kernel, op_name, op_provider, input_type, input_count, output_type,
    output_count, compute, destroy_kernel, input_characteristic, required, default_memory,
};

const OrtCustomOp *effserve_attention_op(int half_kv) {
    return half_kv ? &attention_half_op : &attention_op;
}
