/* Int8-weight matmul with int8 activations, as an ONNX Runtime custom op (domain "effserve", op
 * "MatMulW8"): the drop-in for MatMulNBits (bits 8, block 32, accuracy_level 4) on CPU.
 *
 * Why: MatMulNBits' int8 path reaches ~20% of this CPU's int8 multiply-add rate at 16 rows and
 * at prefill (bench/op_split.py: 75-84% of a step). Here the weights are packed once, when the
 * graph is built (core/quant/graph_edit.own_matmul), in the order AVX-512 VNNI's vpdpbusd reads
 * them: 16 output columns x 4 inputs per 64-byte register, so a block of 32 inputs is 8 loads and
 * 8 multiply-adds per 16 columns and row.
 *
 * The arithmetic is MatMulNBits' with accuracy_level 4: each row of A is quantized to int8 per
 * block of 32 inputs (scale = max|a| / 127, round to nearest even), and for every block
 *     out[m, n] += (sa * sw) * dot(qa, w) - (sw * zp) * (sa * sum(qa))
 * with w the stored uint8 weights, zp their zero point, sw their scale. Blocks add up in input
 * order, one fused multiply-add each: a row's result depends only on that row (batch-invariant:
 * alone, in a batch of any size, or as one of several query tokens, bit for bit), and the
 * portable path (no AVX-512 VNNI) does the same operations in the same order.
 *
 * Inputs  0 A [..., K] float
 *         1 W [N/16, K/32, 512] uint8: per 16 columns and block, 8 groups of (16 columns x 4 inputs)
 *         2 scales [N/16, K/32, 16] float
 *         3 scaled zero points [N/16, K/32, 16] float: scale * zero point
 * Output  0 [..., N] float
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "ort_api.h"
#include "pool.h"

#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define VNNI 1
#else
#define VNNI 0
#endif

enum { BLOCK = 32, TILE = 16, TILE_BYTES = TILE * BLOCK, TILES_PER_ITEM = 3, ROWS = 4 };

typedef struct {
    int64_t m, k, n, nb, n_tiles;
    const uint8_t *w;
    const float *ws, *wz;
    const int8_t *qa;       /* [m, k] */
    const float *sa, *sq;   /* [m, nb]: scale, scale * sum of the block's quantized values */
    float *out;
    atomic_long next;
    long items;
} Mm;

/* Row `a` to int8 per block of 32; sa[b] = scale, sq[b] = scale * sum(q). The vector path below
 * gives the same bytes (one rounding of x * inv, to nearest even, either way). */
#if VNNI
static void quantize_row(const float *a, int64_t k, int8_t *q, float *sa, float *sq) {
    for (int64_t b = 0; b < k / BLOCK; b++) {
        const __m512 x0 = _mm512_loadu_ps(a + b * BLOCK), x1 = _mm512_loadu_ps(a + b * BLOCK + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        const float scale = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        const __m512 iv = _mm512_set1_ps(inv);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, iv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, iv));
        const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
        const __m512i c0 = _mm512_max_epi32(_mm512_min_epi32(q0, lim), nlim);
        const __m512i c1 = _mm512_max_epi32(_mm512_min_epi32(q1, lim), nlim);
        _mm_storeu_si128((__m128i *)(q + b * BLOCK), _mm512_cvtepi32_epi8(c0));
        _mm_storeu_si128((__m128i *)(q + b * BLOCK + 16), _mm512_cvtepi32_epi8(c1));
        sa[b] = scale;
        sq[b] = scale * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(c0, c1));
    }
}
#else
static void quantize_row(const float *a, int64_t k, int8_t *q, float *sa, float *sq) {
    for (int64_t b = 0; b < k / BLOCK; b++) {
        const float *x = a + b * BLOCK;
        float amax = 0.0f;
        for (int i = 0; i < BLOCK; i++) amax = fmaxf(amax, fabsf(x[i]));
        const float scale = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int i = 0; i < BLOCK; i++) {
            const int v = (int)nearbyintf(x[i] * inv);  /* round half to even (default mode) */
            const int c = v > 127 ? 127 : v < -127 ? -127 : v;
            q[b * BLOCK + i] = (int8_t)c;
            sum += c;
        }
        sa[b] = scale;
        sq[b] = scale * (float)sum;
    }
}
#endif

#if VNNI
/* Rows [m0, m0 + R) x tiles [t0, t0 + T): R and T are constants where this is inlined. */
static inline __attribute__((always_inline)) void tile_rows(const Mm *c, int64_t m0, int64_t t0,
                                                            const int R, const int T) {
    __m512 acc[ROWS][TILES_PER_ITEM];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    const int64_t tile_stride = c->nb * TILE_BYTES;
    for (int64_t b = 0; b < c->nb; b++) {
        __m512i dot[ROWS][TILES_PER_ITEM];
        for (int r = 0; r < R; r++)
            for (int t = 0; t < T; t++) dot[r][t] = _mm512_setzero_si512();
        const uint8_t *w = c->w + t0 * tile_stride + b * TILE_BYTES;
        for (int g = 0; g < BLOCK / 4; g++) {
            __m512i wv[TILES_PER_ITEM];
            for (int t = 0; t < T; t++) wv[t] = _mm512_loadu_si512(w + t * tile_stride + g * 64);
            for (int r = 0; r < R; r++) {
                int32_t four;
                memcpy(&four, c->qa + (m0 + r) * c->k + b * BLOCK + g * 4, 4);
                const __m512i av = _mm512_set1_epi32(four);
                for (int t = 0; t < T; t++) dot[r][t] = _mm512_dpbusd_epi32(dot[r][t], wv[t], av);
            }
        }
        for (int t = 0; t < T; t++) {
            const int64_t at = ((t0 + t) * c->nb + b) * TILE;
            const __m512 sw = _mm512_loadu_ps(c->ws + at), zw = _mm512_loadu_ps(c->wz + at);
            for (int r = 0; r < R; r++) {
                const int64_t ab = (m0 + r) * c->nb + b;
                const __m512 scale = _mm512_mul_ps(sw, _mm512_set1_ps(c->sa[ab]));
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r][t]), scale, acc[r][t]);
                acc[r][t] = _mm512_fnmadd_ps(zw, _mm512_set1_ps(c->sq[ab]), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) _mm512_storeu_ps(c->out + (m0 + r) * c->n + (t0 + t) * TILE, acc[r][t]);
}

#define ROWS_FOR(T)                                                                 \
    static void rows_##T(const Mm *c, int64_t t0) {                                 \
        int64_t m0 = 0;                                                             \
        for (; m0 + ROWS <= c->m; m0 += ROWS) tile_rows(c, m0, t0, ROWS, T);       \
        switch (c->m - m0) {                                                        \
            case 3: tile_rows(c, m0, t0, 3, T); break;                              \
            case 2: tile_rows(c, m0, t0, 2, T); break;                              \
            case 1: tile_rows(c, m0, t0, 1, T); break;                              \
        }                                                                           \
    }
ROWS_FOR(1)
ROWS_FOR(2)
ROWS_FOR(3)

static void columns(const Mm *c, int64_t t0, int64_t tiles) {
    if (tiles == 3) rows_3(c, t0);
    else if (tiles == 2) rows_2(c, t0);
    else rows_1(c, t0);
}
#else
/* The same operations one lane at a time (float rounding identical: fmaf is fused). */
static void columns(const Mm *c, int64_t t0, int64_t tiles) {
    const int64_t tile_stride = c->nb * TILE_BYTES;
    for (int64_t m = 0; m < c->m; m++)
        for (int64_t col = t0 * TILE; col < (t0 + tiles) * TILE; col++) {
            const int64_t t = col / TILE, lane = col % TILE;
            float acc = 0.0f;
            for (int64_t b = 0; b < c->nb; b++) {
                const uint8_t *w = c->w + t * tile_stride + b * TILE_BYTES + lane * 4;
                const int8_t *q = c->qa + m * c->k + b * BLOCK;
                int32_t dot = 0;
                for (int g = 0; g < BLOCK / 4; g++)
                    for (int i = 0; i < 4; i++) dot += (int32_t)w[g * 64 + i] * q[g * 4 + i];
                const int64_t at = (t * c->nb + b) * TILE + lane, ab = m * c->nb + b;
                acc = fmaf((float)dot, c->ws[at] * c->sa[ab], acc);
                acc = fmaf(-c->wz[at], c->sq[ab], acc);
            }
            c->out[m * c->n + col] = acc;
        }
}
#endif

static void run_items(void *ctx) {
    Mm *c = ctx;
    for (long i; (i = atomic_fetch_add(&c->next, 1)) < c->items;) {
        const int64_t t0 = i * TILES_PER_ITEM;
        const int64_t tiles = c->n_tiles - t0 < TILES_PER_ITEM ? c->n_tiles - t0 : TILES_PER_ITEM;
        columns(c, t0, tiles);
    }
}

static void fail(float *out, size_t n) {  /* KernelCompute cannot return an error: poison */
    for (size_t i = 0; i < n; i++) out[i] = NAN;
}

static void compute(void *kernel, OrtKernelContext *ctx) {
    const int spin = *(const int *)kernel;
    const OrtValue *in[4] = {NULL};
    for (size_t i = 0; i < 4; i++)
        if (ORT(KernelContext_GetInput, GetInputFn)(ctx, i, &in[i]) || !in[i]) return;
    int64_t ad[8], wd[3], sd[3], zd[3];
    const size_t a_rank = dims_of(in[0], ad, 8);
    const int ok = a_rank >= 1 && dims_of(in[1], wd, 3) == 3 && dims_of(in[2], sd, 3) == 3 &&
                   dims_of(in[3], zd, 3) == 3;
    const int64_t n = ok ? wd[0] * TILE : 0, nb = ok ? wd[1] : 0, k = ok ? ad[a_rank - 1] : 0;
    int64_t m = 1, od[8];
    for (size_t i = 0; i + 1 < a_rank; i++) { m *= ad[i]; od[i] = ad[i]; }
    od[a_rank ? a_rank - 1 : 0] = n;
    OrtValue *o0;
    if (ORT(KernelContext_GetOutput, GetOutputFn)(ctx, 0, od, a_rank ? a_rank : 1, &o0)) return;
    float *out = data_of(o0);
    if (!ok || k != nb * BLOCK || wd[2] != TILE_BYTES || sd[0] != wd[0] || sd[1] != nb ||
        sd[2] != TILE || zd[0] != wd[0] || zd[1] != nb || zd[2] != TILE) {
        if (out) fail(out, (size_t)(m * n));
        return;
    }
    if (m == 0 || n == 0) return;
    int8_t *qa = malloc((size_t)(m * k));
    float *sa = malloc((size_t)(m * nb) * sizeof(float)), *sq = malloc((size_t)(m * nb) * sizeof(float));
    const float *a = data_of(in[0]);
    for (int64_t r = 0; r < m; r++) quantize_row(a + r * k, k, qa + r * k, sa + r * nb, sq + r * nb);
    Mm c = {m, k, n, nb, wd[0], data_of(in[1]), data_of(in[2]), data_of(in[3]), qa, sa, sq, out,
            0, (long)((wd[0] + TILES_PER_ITEM - 1) / TILES_PER_ITEM)};
    /* under ~256k multiply-adds per thread waking a helper costs more than it saves */
    pool_run(run_items, &c, m * k * n >= 262144L * pool_threads(), spin);
    free(qa);
    free(sa);
    free(sq);
}

static void *create_kernel(const OrtCustomOp *op, OrtApiTable table, const OrtKernelInfo *info) {
    (void)op; (void)table;
    int *spin = malloc(sizeof(int));  /* the pool spins after the call (pool.h) */
    if (spin) *spin = int_attribute(info, "pool_spin", 0) == 1;
    return spin;
}
static const char *op_name(const OrtCustomOp *op) { (void)op; return "MatMulW8"; }
static const char *op_provider(const OrtCustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static int input_type(const OrtCustomOp *op, size_t i) { (void)op; return i == 1 ? TYPE_UINT8 : TYPE_FLOAT; }
static size_t input_count(const OrtCustomOp *op) { (void)op; return 4; }
static int output_type(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return TYPE_FLOAT; }
static size_t output_count(const OrtCustomOp *op) { (void)op; return 1; }
static void destroy_kernel(void *k) { free(k); }
static int required(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; }
static int default_memory(const OrtCustomOp *op, size_t i) { (void)op; (void)i; return 0; }

static OrtCustomOp matmul_op = {
    API_VERSION, create_kernel, op_name, op_provider, input_type, input_count, output_type,
    output_count, compute, destroy_kernel, required, required, default_memory,
};

const OrtCustomOp *effserve_matmul_op(void) { return &matmul_op; }

/* 1 when this build has the vector path (core/llm/kernels/__init__.py asks through ctypes) */
__attribute__((visibility("default"))) int EffserveMatmulVectorized(void) { return VNNI; }
