/* conv2d_winograd.c: the Winograd path of conv2d (see conv2d_internal.h). */
#include "conv2d_internal.h"

/* ---- Winograd F(2x2, 3x3): 3x3, stride 1, dilation 1, dense convs ----
 *
 * Y = A^T [(G g G^T) . (B^T d B)] A per 2x2 output tile d: 16 products per
 * tile and channel pair instead of 36.  U[xi] (R, K), xi < 16, holds the
 * transformed weights (once per call, rows padded to CONV_MR with zeros).
 * The tiles of the whole batch are cut into blocks of `tb` (a multiple of
 * CONV_NR); one OpenMP region runs the blocks, and each thread, per block:
 *   V[xi] (K, tb)  <- B^T d B of the block's 4x4 input tiles
 *   M[xi] (R, tb)  =  U[xi] @ V[xi]   (conv_kernel, 16 small GEMMs in cache)
 *   out            <- A^T M A, 2x2 per tile, cropped at odd edges.
 * Forward: K = c inputs, R = oc outputs.  Backward-data is the same conv of
 * dout with the flipped, transposed kernel and padding 2 - p (so p <= 2):
 * K = oc, R = c.  The transforms only add and halve, so results differ from
 * the direct sums by float rounding (tests hold them to the naive kernel);
 * blocks depend on the shape only, so not on the thread count.
 * Taken when both channel counts are at least WINO_MIN_CH.
 *
 * F(4x4, 3x3) (wino4_*) is the same scheme with 6x6 input tiles and 36
 * transformed points per 4x4 output tile: 36 products where direct sums take
 * 144 (F(2x2): 16 for 36), for wide layers over many tiles (conv_wino_m).
 * Backward-weight of layers with 128+ channels each way takes F(4x4) too
 * (wino4_backward_weight, at the end). */

#define WINO_MAX_ROW 4096      /* widest padded row of tiles the stack buffers hold */
#define WINO_TB_MAX 256        /* most tiles in a block (F(4x4)'s buffers live on the stack) */
#ifndef WINO_MIN_CH
#define WINO_MIN_CH 16
#endif
/* Target floats of a block's V and M (512 KB: they stay in L2). */
#ifndef WINO_BLOCK_FLOATS
#define WINO_BLOCK_FLOATS (1 << 17)
#endif

static bool conv_is_wino(const conv_shape *s)
{
    return s->kh == 3 && s->kw == 3 && s->sh == 1 && s->sw == 1 && s->dh == 1 && s->dw == 1 &&
           s->groups == 1 && s->ph <= 2 && s->pw <= 2 && s->c >= WINO_MIN_CH &&
           s->oc >= WINO_MIN_CH && s->c <= CONV_TILED_MAX_K && s->oc <= CONV_TILED_MAX_K &&
           s->w + 6 <= WINO_MAX_ROW && s->ow + 6 <= WINO_MAX_ROW;
}

/* A call's tiles are its parallel work (blocks of them over the threads) and
 * amortise the weight transform: below these counts the tiled path or the
 * SGEMMs win, ResNet-50's 512-channel 7x7 layers at batch 1 by 3-5x (a sweep
 * of 512@7, 256@14, 128@28 and 64@56 at batches 1-32 in both ISA variants:
 * Winograd led from about 128 tiles forward and 384 backward-data). */
#ifndef WINO_MIN_TILES
#define WINO_MIN_TILES 128
#endif
#ifndef WINO_MIN_TILES_DATA
#define WINO_MIN_TILES_DATA 384
#endif

/* Whether an F(2x2) pass (0 forward, 1 backward-data, 2 backward-weight)
 * runs ahead of the tiled path or the SGEMMs for this shape.  Built for
 * AVX-512, the tiled micro-kernel (CONV_MR x 32 floats in twelve 16-float
 * registers) beats the transforms in every backward pass and in forward
 * passes with fewer than 64 channels each way or planes under 14x14
 * (ResNet-20 and ResNet-50 shapes), and OpenBLAS's AVX-512 SGEMMs beat the
 * backward-weight transforms where the tiled path cannot go (256 channels at
 * 14x14: 17 against 23 ms at batch 16). */
static bool conv_use_wino2(const conv_shape *s, int pass)
{
    if (!(pass == 2 ? conv_is_wino_dw(s) : conv_is_wino(s)))
        return false;
    /* forward tiles cover the output, backward-data tiles the input */
    const long long th = pass == 1 ? (s->h + 1) / 2 : (s->oh + 1) / 2;
    const long long tw = pass == 1 ? (s->w + 1) / 2 : (s->ow + 1) / 2;
    const long long tiles = s->n * th * tw;
    if ((pass == 0 && tiles < WINO_MIN_TILES) || (pass == 1 && tiles < WINO_MIN_TILES_DATA))
        return false;
#ifdef __AVX512F__
    if (pass == 2)
        return false;
    conv_tiling t;
    if (conv_tiling_of(s, &t) && (pass != 1 || t.data))
        return pass == 0 && s->c >= 64 && s->oc >= 64 && (long long)s->oh * s->ow >= 196;
#endif
    return true;
}

/* F(4x4) takes a forward or backward-data pass of at least WINO4_MIN_CH
 * channels each way over at least WINO4_MIN_TILES 4x4 tiles (forward tiles
 * cover the output, backward-data tiles the input).  A sweep of ResNet-50's
 * 3x3 layers at batch 1-32 and 64-channel layers at 7x7-56x56 on 2 threads,
 * both ISA variants: F(4x4) led the other paths by 1.2-1.9x from about 196
 * tiles (64@56 at batch 1, 256@14 at batch 16, 64@7 at batch 64); below that
 * the transform of its 36 weight planes is not amortised (512@7 at batch 16:
 * backward-data 0.75-0.95x), and with 16-32 channels its transforms cost more
 * than they save (ResNet-20: 0.75-0.85x of the tiled path). */
#ifndef WINO4_MIN_CH
#define WINO4_MIN_CH 64
#endif
#ifndef WINO4_MIN_TILES
#define WINO4_MIN_TILES 192
#endif
/* Backward-weight (wino4_backward_weight) takes 128+ channels each way over
 * as many tiles: on 2 threads it ran ResNet-50's 128@28, 256@14 and 512@7
 * layers (batch 16) at 1.15-1.25x the tiled path (AVX-512) and 1.1-1.5x
 * F(2x2) (AVX2), but 64@56 at 0.7x, its V and dM too large for the caches. */
#define WINO4_DW_MIN_CH 128
#define WINO4_DW_MIN_TILES 192

/* The output tile size of the Winograd pass (0 forward, 1 backward-data,
 * 2 backward-weight) for this shape: 4, 2, or 0 where another path runs. */
static int conv_wino_m(const conv_shape *s, int pass)
{
    const int min_ch = pass == 2 ? WINO4_DW_MIN_CH : WINO4_MIN_CH;
    if (conv_is_wino(s) && s->c >= min_ch && s->oc >= min_ch) {
        const long long th = pass == 1 ? (s->h + 3) / 4 : (s->oh + 3) / 4;
        const long long tw = pass == 1 ? (s->w + 3) / 4 : (s->ow + 3) / 4;
        if (s->n * th * tw >= (pass == 2 ? WINO4_DW_MIN_TILES : WINO4_MIN_TILES))
            return 4;
    }
    return conv_use_wino2(s, pass) ? 2 : 0;
}

static bool conv_use_wino(const conv_shape *s, int pass)
{
    return conv_wino_m(s, pass) != 0;
}

/* Tiles per block for K inputs and R outputs, nx transformed points per tile. */
static int wino_block(int k, int r, int nx)
{
    const ptrdiff_t tb = WINO_BLOCK_FLOATS / ((ptrdiff_t)nx * (k + round_up(r, CONV_MR)));
    return (int)DMCP_MAX(CONV_NR, DMCP_MIN(WINO_TB_MAX, tb / CONV_NR * CONV_NR));
}

/* Floats of U plus one block's V and M, for R outputs from K inputs, either tile size. */
static ptrdiff_t wino_floats(int k, int r, int threads)
{
    const ptrdiff_t rp = round_up(r, CONV_MR);
    ptrdiff_t most = 0;
    for (int nx = 16; nx <= 36; nx += 20)
        most = DMCP_MAX(most, nx * rp * k + (ptrdiff_t)threads * nx * (k + rp) * wino_block(k, r, nx));
    return most;
}

static ptrdiff_t wino_dw_scratch(const conv_shape *s, int threads);

static size_t wino_scratch(const conv_shape *s)
{
    const int threads = DMCP_MIN(omp_get_max_threads(), CONV_SLOTS_MAX);
    const ptrdiff_t f = DMCP_MAX(wino_floats(s->c, s->oc, threads), wino_floats(s->oc, s->c, threads));
    return (size_t)DMCP_MAX(f, wino_dw_scratch(s, threads));
}

/* U[xi][r][k] = (G g G^T)[xi] of the 3x3 kernel g linking input k to output r,
 * r < rp (rows past r_n zero): forward g = W[r][k]; flipped (backward-data)
 * g[y][x] = W[k][r][2-y][2-x]. */
static void wino_weights(float *U, const float *weight, int ldw, int r_n, int rp, int k_n,
                         bool flip)
{
    enum { KB = 64 };   /* inputs per pass: 16 contiguous runs, not 16 scattered floats */
    const ptrdiff_t plane = (ptrdiff_t)rp * k_n;
    #pragma omp parallel for schedule(static) if (plane * 16 > CONV_PAR_MIN)
    for (int r = 0; r < rp; r++) {
        for (int k0 = 0; k0 < k_n; k0 += KB) {
            const int kb = DMCP_MIN(KB, k_n - k0);
            float u[16][KB];
            for (int j = 0; j < kb; j++) {
                const int k = k0 + j;
                float g[3][3] = {{0}}, t[4][3];
                if (r < r_n) {
                    const float *w = flip ? weight + (ptrdiff_t)k * ldw + r * 9
                                          : weight + (ptrdiff_t)r * ldw + k * 9;
                    for (int y = 0; y < 3; y++)
                        for (int x = 0; x < 3; x++)
                            g[y][x] = flip ? w[(2 - y) * 3 + (2 - x)] : w[y * 3 + x];
                }
                for (int x = 0; x < 3; x++) {     /* t = G g */
                    t[0][x] = g[0][x];
                    t[1][x] = 0.5f * (g[0][x] + g[1][x] + g[2][x]);
                    t[2][x] = 0.5f * (g[0][x] - g[1][x] + g[2][x]);
                    t[3][x] = g[2][x];
                }
                for (int y = 0; y < 4; y++) {     /* U = t G^T */
                    u[y * 4 + 0][j] = t[y][0];
                    u[y * 4 + 1][j] = 0.5f * (t[y][0] + t[y][1] + t[y][2]);
                    u[y * 4 + 2][j] = 0.5f * (t[y][0] - t[y][1] + t[y][2]);
                    u[y * 4 + 3][j] = t[y][2];
                }
            }
            for (int xi = 0; xi < 16; xi++)
                memcpy(U + xi * plane + (ptrdiff_t)r * k_n + k0, u[xi], (size_t)kb * sizeof(float));
        }
    }
}

/* Geometry of one Winograd conv F(m x m, 3x3): in (N, K, H, W) -> out (N, R, OH, OW),
 * TH x TW tiles of m x m outputs per image, nx = (m + 2)^2 transformed points. */
typedef struct {
    int n, k, h, w, r, rp, oh, ow, ph, pw, th, tw, tb, m, nx;
} wino_geom;

/* The run of tiles starting at block tile t, within a row of tiles: image b,
 * tile row ty, columns tx0 .. tx1-1, ending at or before block tile `end`. */
typedef struct { int b, ty, tx0, tx1; } wino_run;

static wino_run wino_run_at(const wino_geom *g, ptrdiff_t t, ptrdiff_t end)
{
    const ptrdiff_t per = (ptrdiff_t)g->th * g->tw;
    wino_run r;
    r.b = (int)(t / per);
    r.ty = (int)(t % per / g->tw);
    r.tx0 = (int)(t % g->tw);
    r.tx1 = (int)DMCP_MIN((ptrdiff_t)g->tw, r.tx0 + end - t);
    return r;
}

/* V[xi][k][j] <- B^T d B of tile t0 + j, j < cnt (columns up to tb zero);
 * tile t = (b*TH + ty)*TW + tx reads rows 2ty - ph .. +3 and columns
 * 2tx - pw .. +3 of image b, zero outside.  Each row of tiles first copies
 * its 4 input rows into zero-padded rows, so the transform is one loop over
 * the tiles that vectorises. */
static void wino_inputs(float *V, const float *in, const wino_geom *g, ptrdiff_t t0, int cnt)
{
    const ptrdiff_t plane = (ptrdiff_t)g->k * g->tb;
    float rows[4][WINO_MAX_ROW];
    for (int k = 0; k < g->k; k++) {
        float *v = V + (ptrdiff_t)k * g->tb;
        for (ptrdiff_t t = t0; t < t0 + cnt;) {
            const wino_run run = wino_run_at(g, t, t0 + cnt);
            const int b = run.b, ty = run.ty, tx0 = run.tx0, tx1 = run.tx1, j0 = (int)(t - t0);
            t += tx1 - tx0;
            const float *src = in + ((ptrdiff_t)b * g->k + k) * g->h * g->w;
            const int x0 = 2 * tx0 - g->pw, len = 2 * (tx1 - tx0) + 2;
            for (int y = 0; y < 4; y++) {
                const int iy = 2 * ty - g->ph + y;
                float *row = rows[y];
                if (iy < 0 || iy >= g->h) {
                    memset(row, 0, (size_t)len * sizeof *row);
                    continue;
                }
                const float *sr = src + (ptrdiff_t)iy * g->w;
                const int lo = DMCP_MAX(0, -x0), hi = DMCP_MIN(len, g->w - x0);
                if (lo > 0) memset(row, 0, (size_t)lo * sizeof *row);
                if (hi > lo) memcpy(row + lo, sr + x0 + lo, (size_t)(hi - lo) * sizeof *row);
                if (hi < len) memset(row + DMCP_MAX(hi, lo), 0, (size_t)(len - DMCP_MAX(hi, lo)) * sizeof *row);
            }
            float *vj = v + j0;
            const float *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
            #pragma omp simd
            for (int j = 0; j < tx1 - tx0; j++) {
                const int x = 2 * j;
                float t4[4][4];                   /* t = B^T d, column by column */
                for (int c = 0; c < 4; c++) {
                    t4[0][c] = r0[x + c] - r2[x + c];
                    t4[1][c] = r1[x + c] + r2[x + c];
                    t4[2][c] = r2[x + c] - r1[x + c];
                    t4[3][c] = r1[x + c] - r3[x + c];
                }
                for (int y = 0; y < 4; y++) {     /* V = t B */
                    vj[(y * 4 + 0) * plane + j] = t4[y][0] - t4[y][2];
                    vj[(y * 4 + 1) * plane + j] = t4[y][1] + t4[y][2];
                    vj[(y * 4 + 2) * plane + j] = t4[y][2] - t4[y][1];
                    vj[(y * 4 + 3) * plane + j] = t4[y][1] - t4[y][3];
                }
            }
        }
        for (int xi = 0; xi < 16; xi++)
            memset(v + xi * plane + cnt, 0, (size_t)(g->tb - cnt) * sizeof *v);
    }
}

/* out (=|+=) A^T M A (=: then the epilogue ep) for tiles t0 .. t0 + cnt: a row of tiles at a
 * time into two full output rows on the stack, then copied (added) cropped. */
static void wino_outputs(float *out, const float *M, const conv_epilogue *ep, const wino_geom *g,
                         ptrdiff_t t0, int cnt, bool add)
{
    const ptrdiff_t plane = (ptrdiff_t)g->rp * g->tb;
    float rows[2][WINO_MAX_ROW], quad[4][WINO_MAX_ROW / 2];
    for (int r = 0; r < g->r; r++) {
        const float *m = M + (ptrdiff_t)r * g->tb;
        const conv_chan_ep e = conv_ep_of(ep, r);
        for (ptrdiff_t t = t0; t < t0 + cnt;) {
            const wino_run run = wino_run_at(g, t, t0 + cnt);
            const int b = run.b, ty = run.ty, tx0 = run.tx0, tx1 = run.tx1, j0 = (int)(t - t0);
            t += tx1 - tx0;
            const float *mj = m + j0;
            float *y00 = quad[0], *y01 = quad[1], *y10 = quad[2], *y11 = quad[3];
            const int nt = tx1 - tx0;
            #pragma omp simd
            for (int j = 0; j < nt; j++) {
                float q[4][4], s2[2][4];
                for (int xi = 0; xi < 16; xi++)
                    q[xi / 4][xi % 4] = mj[xi * plane + j];
                for (int x = 0; x < 4; x++) {     /* s = A^T q */
                    s2[0][x] = q[0][x] + q[1][x] + q[2][x];
                    s2[1][x] = q[1][x] - q[2][x] - q[3][x];
                }
                y00[j] = s2[0][0] + s2[0][1] + s2[0][2];
                y01[j] = s2[0][1] - s2[0][2] - s2[0][3];
                y10[j] = s2[1][0] + s2[1][1] + s2[1][2];
                y11[j] = s2[1][1] - s2[1][2] - s2[1][3];
            }
            for (int j = 0; j < nt; j++) {        /* interleave the columns */
                rows[0][2 * j] = y00[j];
                rows[0][2 * j + 1] = y01[j];
                rows[1][2 * j] = y10[j];
                rows[1][2 * j + 1] = y11[j];
            }
            float *dst = out + ((ptrdiff_t)b * g->r + r) * g->oh * g->ow;
            const int ox = 2 * tx0, len = DMCP_MIN(2 * (tx1 - tx0), g->ow - ox);
            for (int a = 0; a < 2 && 2 * ty + a < g->oh; a++) {
                float *restrict o = dst + (ptrdiff_t)(2 * ty + a) * g->ow + ox;
                const float *restrict yr = rows[a];
                if (add)
                    for (int x = 0; x < len; x++) o[x] += yr[x];
                else if (ep != NULL)
                    conv_ep_row(o, yr, len, e);
                else
                    memcpy(o, yr, (size_t)len * sizeof *o);
            }
        }
    }
}

/* ---- F(4x4, 3x3): 6x6 input tiles, 36 products per 4x4 output tile (36 for
 * 144 direct ones, against 16 for 36 in F(2x2)).  Interpolation points 0, +-1,
 * +-2 and infinity; the transforms scale by up to 8 and 1/24, so results round
 * a little further from the direct sums than F(2x2)'s (tests bound both). */

/* U[xi][r][k] = (G g G^T)[xi], xi < 36, as wino_weights does for F(2x2). */
static void wino4_weights(float *U, const float *weight, int ldw, int r_n, int rp, int k_n,
                          bool flip)
{
    enum { KB = 64 };
    const ptrdiff_t plane = (ptrdiff_t)rp * k_n;
    #pragma omp parallel for schedule(static) if (plane * 36 > CONV_PAR_MIN)
    for (int r = 0; r < rp; r++) {
        for (int k0 = 0; k0 < k_n; k0 += KB) {
            const int kb = DMCP_MIN(KB, k_n - k0);
            float u[36][KB];
            for (int j = 0; j < kb; j++) {
                const int k = k0 + j;
                float g[3][3] = {{0}}, t[6][3];
                if (r < r_n) {
                    const float *w = flip ? weight + (ptrdiff_t)k * ldw + r * 9
                                          : weight + (ptrdiff_t)r * ldw + k * 9;
                    for (int y = 0; y < 3; y++)
                        for (int x = 0; x < 3; x++)
                            g[y][x] = flip ? w[(2 - y) * 3 + (2 - x)] : w[y * 3 + x];
                }
                for (int x = 0; x < 3; x++) {     /* t = G g */
                    const float a = g[0][x], b = g[1][x], c = g[2][x];
                    t[0][x] = a * 0.25f;
                    t[1][x] = -(a + b + c) * (1.0f / 6);
                    t[2][x] = -(a - b + c) * (1.0f / 6);
                    t[3][x] = a * (1.0f / 24) + b * (1.0f / 12) + c * (1.0f / 6);
                    t[4][x] = a * (1.0f / 24) - b * (1.0f / 12) + c * (1.0f / 6);
                    t[5][x] = c;
                }
                for (int y = 0; y < 6; y++) {     /* U = t G^T */
                    const float a = t[y][0], b = t[y][1], c = t[y][2];
                    u[y * 6 + 0][j] = a * 0.25f;
                    u[y * 6 + 1][j] = -(a + b + c) * (1.0f / 6);
                    u[y * 6 + 2][j] = -(a - b + c) * (1.0f / 6);
                    u[y * 6 + 3][j] = a * (1.0f / 24) + b * (1.0f / 12) + c * (1.0f / 6);
                    u[y * 6 + 4][j] = a * (1.0f / 24) - b * (1.0f / 12) + c * (1.0f / 6);
                    u[y * 6 + 5][j] = c;
                }
            }
            for (int xi = 0; xi < 36; xi++)
                memcpy(U + xi * plane + (ptrdiff_t)r * k_n + k0, u[xi], (size_t)kb * sizeof(float));
        }
    }
}


/* The 1-D input transform B^T of 6 points, one per array, at each of n
 * positions; loops over positions so it vectorises. */
static inline void wino4_bt(float *const o[6], const float *d0, const float *d1, const float *d2,
                            const float *d3, const float *d4, const float *d5, int n)
{
    float *restrict o0 = o[0], *restrict o1 = o[1], *restrict o2 = o[2];
    float *restrict o3 = o[3], *restrict o4 = o[4], *restrict o5 = o[5];
    #pragma omp simd
    for (int j = 0; j < n; j++) {
        o0[j] = 4.0f * d0[j] - 5.0f * d2[j] + d4[j];
        o1[j] = -4.0f * (d1[j] + d2[j]) + (d3[j] + d4[j]);
        o2[j] = 4.0f * (d1[j] - d2[j]) + (d4[j] - d3[j]);
        o3[j] = 2.0f * (d3[j] - d1[j]) + (d4[j] - d2[j]);
        o4[j] = 2.0f * (d1[j] - d3[j]) + (d4[j] - d2[j]);
        o5[j] = 4.0f * d1[j] - 5.0f * d3[j] + d5[j];
    }
}

/* The 1-D output transform A^T of 6 points into 4, at each of n positions. */
static inline void wino4_at(float *const o[4], const float *q0, const float *q1, const float *q2,
                            const float *q3, const float *q4, const float *q5, int n)
{
    float *restrict o0 = o[0], *restrict o1 = o[1], *restrict o2 = o[2], *restrict o3 = o[3];
    #pragma omp simd
    for (int j = 0; j < n; j++) {
        const float p12 = q1[j] + q2[j], m12 = q1[j] - q2[j];
        const float p34 = q3[j] + q4[j], m34 = q3[j] - q4[j];
        o0[j] = q0[j] + p12 + p34;
        o1[j] = m12 + 2.0f * m34;
        o2[j] = p12 + 4.0f * p34;
        o3[j] = m12 + 8.0f * m34 + q5[j];
    }
}

/* V[xi][k][j] <- B^T d B of tile t0 + j (6x6 input tile at rows 4ty - ph, columns
 * 4tx - pw; zero outside the image), j < cnt, columns up to tb zero.  Per input
 * channel the block's tiles are gathered tap by tap (P[y][x][j] = row y, column
 * x of tile j), so both 1-D transforms run over all the block's tiles at once:
 * down the columns, then along the rows straight into V. */
static void wino4_inputs_ld(float *V, ptrdiff_t ld, bool pad, const float *in, const wino_geom *g,
                            ptrdiff_t t0, int cnt);

/* buf[0 .. len) <- columns x0 .. x0 + len - 1 of a row w floats wide, zero
 * outside it (F(4x4)'s tile gathers copy a row's span, then split it by phase). */
static void wino_row_span(float *buf, const float *row, int x0, int len, int w)
{
    const int lo = DMCP_MIN(len, DMCP_MAX(0, -x0)), hi = DMCP_MAX(lo, DMCP_MIN(len, w - x0));
    for (int x = 0; x < lo; x++)
        buf[x] = 0.0f;
    if (hi > lo)
        memcpy(buf + lo, row + (x0 + lo), (size_t)(hi - lo) * sizeof *buf);
    for (int x = hi; x < len; x++)
        buf[x] = 0.0f;
}

static void wino4_inputs(float *V, const float *in, const wino_geom *g, ptrdiff_t t0, int cnt)
{
    wino4_inputs_ld(V, g->tb, true, in, g, t0, cnt);
}

/* wino4_inputs with V[xi][k] rows ld floats apart (tile j at column j); `pad`
 * zeroes columns cnt .. tb. */
static void wino4_inputs_ld(float *V, ptrdiff_t ld, bool pad, const float *in, const wino_geom *g,
                            ptrdiff_t t0, int cnt)
{
    const ptrdiff_t plane = (ptrdiff_t)g->k * ld;
    float P[6][6][WINO_TB_MAX], T[6][6][WINO_TB_MAX];
    for (int k = 0; k < g->k; k++) {
        for (ptrdiff_t t = t0; t < t0 + cnt;) {
            const wino_run run = wino_run_at(g, t, t0 + cnt);
            const int b = run.b, ty = run.ty, tx0 = run.tx0, nt = run.tx1 - run.tx0;
            const int j0 = (int)(t - t0);
            t += nt;
            const float *src = in + ((ptrdiff_t)b * g->k + k) * g->h * g->w;
            const int x0 = 4 * tx0 - g->pw, len = 4 * nt + 4;
            for (int y = 0; y < 6; y++) {
                const int iy = 4 * ty - g->ph + y;
                float *p0 = P[y][0] + j0, *p1 = P[y][1] + j0, *p2 = P[y][2] + j0;
                float *p3 = P[y][3] + j0, *p4 = P[y][4] + j0, *p5 = P[y][5] + j0;
                if (iy < 0 || iy >= g->h) {
                    for (int x = 0; x < 6; x++)
                        memset(P[y][x] + j0, 0, (size_t)nt * sizeof(float));
                    continue;
                }
                /* the row's columns x0 .. x0 + len - 1, zero outside the image, then
                 * split by phase: p_c[j] = column 4j + c; taps 4 and 5 of tile j are
                 * phases 0 and 1 of tile j + 1 */
                float buf[4 * WINO_TB_MAX + 4];
                wino_row_span(buf, src + (ptrdiff_t)iy * g->w, x0, len, g->w);
                for (int j = 0; j < nt; j++) {
                    p0[j] = buf[4 * j];
                    p1[j] = buf[4 * j + 1];
                    p2[j] = buf[4 * j + 2];
                    p3[j] = buf[4 * j + 3];
                    p4[j] = buf[4 * j + 4];
                    p5[j] = buf[4 * j + 5];
                }
            }
        }
        for (int x = 0; x < 6; x++) {             /* T = B^T d, down each column */
            float *const o[6] = {T[0][x], T[1][x], T[2][x], T[3][x], T[4][x], T[5][x]};
            wino4_bt(o, P[0][x], P[1][x], P[2][x], P[3][x], P[4][x], P[5][x], cnt);
        }
        float *v = V + (ptrdiff_t)k * ld;
        for (int i = 0; i < 6; i++) {             /* V = T B, along the rows */
            float *const o[6] = {v + (i * 6 + 0) * plane, v + (i * 6 + 1) * plane,
                                 v + (i * 6 + 2) * plane, v + (i * 6 + 3) * plane,
                                 v + (i * 6 + 4) * plane, v + (i * 6 + 5) * plane};
            wino4_bt(o, T[i][0], T[i][1], T[i][2], T[i][3], T[i][4], T[i][5], cnt);
        }
        for (int xi = 0; pad && xi < 36; xi++)
            memset(v + xi * plane + cnt, 0, (size_t)(g->tb - cnt) * sizeof *v);
    }
}

/* out (=|+=) A^T M A (=: then the epilogue ep), 4x4 per tile, cropped at the edges:
 * both 1-D transforms over all the block's tiles, then row by row of tiles into
 * the output. */
static void wino4_outputs(float *out, const float *M, const conv_epilogue *ep, const wino_geom *g,
                          ptrdiff_t t0, int cnt, bool add)
{
    const ptrdiff_t plane = (ptrdiff_t)g->rp * g->tb;
    float S[4][6][WINO_TB_MAX], Y[4][4][WINO_TB_MAX], row[4 * WINO_TB_MAX];
    for (int r = 0; r < g->r; r++) {
        const float *m = M + (ptrdiff_t)r * g->tb;
        const conv_chan_ep e = conv_ep_of(ep, r);
        for (int x = 0; x < 6; x++) {             /* S = A^T q, down each column */
            float *const o[4] = {S[0][x], S[1][x], S[2][x], S[3][x]};
            wino4_at(o, m + x * plane, m + (6 + x) * plane, m + (12 + x) * plane,
                     m + (18 + x) * plane, m + (24 + x) * plane, m + (30 + x) * plane, cnt);
        }
        for (int a = 0; a < 4; a++) {             /* Y = S A, along the rows */
            float *const o[4] = {Y[a][0], Y[a][1], Y[a][2], Y[a][3]};
            wino4_at(o, S[a][0], S[a][1], S[a][2], S[a][3], S[a][4], S[a][5], cnt);
        }
        for (ptrdiff_t t = t0; t < t0 + cnt;) {
            const wino_run run = wino_run_at(g, t, t0 + cnt);
            const int b = run.b, ty = run.ty, tx0 = run.tx0, nt = run.tx1 - run.tx0;
            const int j0 = (int)(t - t0);
            t += nt;
            float *dst = out + ((ptrdiff_t)b * g->r + r) * g->oh * g->ow;
            const int ox = 4 * tx0, len = DMCP_MIN(4 * nt, g->ow - ox);
            for (int a = 0; a < 4 && 4 * ty + a < g->oh; a++) {
                for (int j = 0; j < nt; j++)      /* interleave the columns */
                    for (int x = 0; x < 4; x++)
                        row[4 * j + x] = Y[a][x][j0 + j];
                float *restrict o = dst + (ptrdiff_t)(4 * ty + a) * g->ow + ox;
                if (add)
                    for (int x = 0; x < len; x++) o[x] += row[x];
                else if (ep != NULL)
                    conv_ep_row(o, row, len, e);
                else
                    memcpy(o, row, (size_t)len * sizeof *o);
            }
        }
    }
}

/* out (=|+=) conv3x3(in) with U from wino_weights (m = 2) or wino4_weights (m = 4);
 * work: one block's V and M per thread (at most CONV_SLOTS_MAX threads, as
 * wino_scratch counted them). */
static void wino_conv(float *out, const float *in, const float *U, const conv_epilogue *ep,
                      const wino_geom *g, bool add, float *work)
{
    const ptrdiff_t tiles = (ptrdiff_t)g->n * g->th * g->tw;
    const ptrdiff_t nblocks = (tiles + g->tb - 1) / g->tb;
    const ptrdiff_t vf = (ptrdiff_t)g->nx * g->k * g->tb, mf = (ptrdiff_t)g->nx * g->rp * g->tb;
    const int nth = (int)DMCP_MIN(nblocks, (ptrdiff_t)DMCP_MIN(omp_get_max_threads(), CONV_SLOTS_MAX));
    #pragma omp parallel num_threads(nth)
    {
        const int me = omp_get_thread_num();
        float *V = work + (ptrdiff_t)me * (vf + mf), *M = V + vf;
        int aoff[CONV_MR], boff[CONV_TILED_MAX_K];
        linear_offsets(aoff, CONV_MR, g->k);
        linear_offsets(boff, g->k, g->tb);
        #pragma omp for schedule(dynamic, 1)
        for (ptrdiff_t blk = 0; blk < nblocks; blk++) {
            const ptrdiff_t t0 = blk * g->tb;
            const int cnt = (int)DMCP_MIN((ptrdiff_t)g->tb, tiles - t0);
            if (g->m == 4)
                wino4_inputs(V, in, g, t0, cnt);
            else
                wino_inputs(V, in, g, t0, cnt);
            const int cols = (int)round_up(cnt, CONV_NR);
            for (int xi = 0; xi < g->nx; xi++) {
                const float *u = U + (ptrdiff_t)xi * g->rp * g->k;
                const float *v = V + (ptrdiff_t)xi * g->k * g->tb;
                float *m = M + (ptrdiff_t)xi * g->rp * g->tb;
                for (int i0 = 0; i0 < g->rp; i0 += CONV_MR)
                    for (int jp = 0; jp < cols; jp += CONV_NR)
                        conv_kernel(g->k, u + (ptrdiff_t)i0 * g->k, aoff, v + jp, boff,
                                    m + (ptrdiff_t)i0 * g->tb + jp, g->tb, false);
            }
            if (g->m == 4)
                wino4_outputs(out, M, ep, g, t0, cnt, add);
            else
                wino_outputs(out, M, ep, g, t0, cnt, add);
        }
    }
}

static wino_geom wino_geom_of(int m, int n, int k, int h, int w, int r, int oh, int ow, int ph,
                              int pw)
{
    const int nx = (m + 2) * (m + 2);
    wino_geom g = {n, k, h, w, r, (int)round_up(r, CONV_MR), oh, ow, ph, pw,
                   (oh + m - 1) / m, (ow + m - 1) / m, wino_block(k, r, nx), m, nx};
    return g;
}

/* U for the geometry's tile size, into scratch; returns the work area after it. */
static float *wino_prepare(float *scratch, const float *weight, int ldw, const wino_geom *g,
                           bool flip)
{
    if (g->m == 4)
        wino4_weights(scratch, weight, ldw, g->r, g->rp, g->k, flip);
    else
        wino_weights(scratch, weight, ldw, g->r, g->rp, g->k, flip);
    return scratch + (ptrdiff_t)g->nx * g->rp * g->k;
}

static void wino_forward(float *out, const float *inp, const float *weight, const conv_epilogue *ep,
                         const conv_shape *s, float *scratch)
{
    const wino_geom g = wino_geom_of(conv_wino_m(s, 0), s->n, s->c, s->h, s->w, s->oc, s->oh,
                                     s->ow, s->ph, s->pw);
    float *work = wino_prepare(scratch, weight, s->w_cin_full * 9, &g, false);
    wino_conv(out, inp, scratch, ep, &g, false, work);
}

/* dinp (N, c, H, W) += (set: =) conv3x3(dout, flipped W^T), padding 2 - p;
 * the tiles cover dinp. */
static void wino_backward_data(float *dinp, const float *dout, const float *weight,
                               const conv_shape *s, float *scratch, bool set)
{
    const wino_geom g = wino_geom_of(conv_wino_m(s, 1), s->n, s->oc, s->oh, s->ow, s->c, s->h,
                                     s->w, 2 - s->ph, 2 - s->pw);
    float *work = wino_prepare(scratch, weight, s->w_cin_full * 9, &g, true);
    wino_conv(dinp, dout, scratch, NULL, &g, !set, work);
}

/* ---- Winograd backward-weight ----
 *
 * The adjoint of the forward: dU[xi] (R, K) = sum over tiles of dM[xi] (R, tiles)
 * @ V[xi]^T, dM = A dy A^T the 4x4 adjoint of a 2x2 output-gradient tile, V
 * the forward's input transform; then dW += G^T dU G per (r, k).  Blocks of
 * tiles go to WINO_DW_SLOTS fixed slots (block b to slot b % slots), each
 * slot sums its own dU over its blocks in order, and the slots are summed in
 * slot order: no result depends on the thread count.  Slot sums take
 * 16 R K floats each, so only layers with R K <= WINO_DW_MAX use this, and
 * only with at least WINO_DW_MIN_CH channels each way. */

#define WINO_DW_SLOTS 8
#define WINO_DW_MAX (256 * 256)
/* Below this many channels either way the tiled path's direct sums win
 * (ResNet-20's 16- and 32-channel layers: 0.8x of it). */
#ifndef WINO_DW_MIN_CH
#define WINO_DW_MIN_CH 64
#endif

static bool conv_is_wino_dw(const conv_shape *s)
{
    return conv_is_wino(s) && s->c >= WINO_DW_MIN_CH && s->oc >= WINO_DW_MIN_CH &&
           (ptrdiff_t)s->oc * s->c <= WINO_DW_MAX;
}

/* Floats of the backward-weight scratch: slot sums, then per thread V, V^T, dM. */
static ptrdiff_t wino_dw_floats(const wino_geom *g, int slots, int threads)
{
    const ptrdiff_t kp = round_up(g->k, CONV_NR);
    return (ptrdiff_t)slots * 16 * g->rp * kp +
           (ptrdiff_t)threads * 16 * g->tb * (g->k + kp + g->rp);
}

/* dM[xi][r][j] <- A dy A^T of the 2x2 output-gradient tile t0 + j of output r
 * (cells past the output's edge are 0), j < cnt. */
static void wino_dout_tiles(float *dM, const float *dout, const wino_geom *g, ptrdiff_t t0, int cnt)
{
    const ptrdiff_t plane = (ptrdiff_t)g->rp * g->tb;
    for (int r = 0; r < g->r; r++) {
        float *m = dM + (ptrdiff_t)r * g->tb;
        for (ptrdiff_t t = t0; t < t0 + cnt;) {
            const wino_run run = wino_run_at(g, t, t0 + cnt);
            const int j0 = (int)(t - t0), nt = run.tx1 - run.tx0;
            t += nt;
            const float *src = dout + ((ptrdiff_t)run.b * g->r + r) * g->oh * g->ow;
            const int oy = 2 * run.ty, ox0 = 2 * run.tx0;
            float rows[2][WINO_MAX_ROW];
            for (int a = 0; a < 2; a++) {
                const int len = 2 * nt, valid = oy + a < g->oh ? DMCP_MIN(len, g->ow - ox0) : 0;
                if (valid > 0)
                    memcpy(rows[a], src + (ptrdiff_t)(oy + a) * g->ow + ox0, (size_t)valid * sizeof(float));
                if (valid < len)
                    memset(rows[a] + DMCP_MAX(valid, 0), 0, (size_t)(len - DMCP_MAX(valid, 0)) * sizeof(float));
            }
            float *mj = m + j0;
            const float *r0 = rows[0], *r1 = rows[1];
            #pragma omp simd
            for (int j = 0; j < nt; j++) {
                const float a00 = r0[2 * j], a01 = r0[2 * j + 1], a10 = r1[2 * j], a11 = r1[2 * j + 1];
                /* t = A dy (4x2), then q = t A^T: row (u, v) -> (u, u+v, u-v, -v) */
                const float t4[4][2] = {{a00, a01}, {a00 + a10, a01 + a11},
                                        {a00 - a10, a01 - a11}, {-a10, -a11}};
                for (int y = 0; y < 4; y++) {
                    mj[(y * 4 + 0) * plane + j] = t4[y][0];
                    mj[(y * 4 + 1) * plane + j] = t4[y][0] + t4[y][1];
                    mj[(y * 4 + 2) * plane + j] = t4[y][0] - t4[y][1];
                    mj[(y * 4 + 3) * plane + j] = -t4[y][1];
                }
            }
        }
    }
}

static ptrdiff_t wino4_dw_floats(const wino_geom *g);

static ptrdiff_t wino_dw_scratch(const conv_shape *s, int threads)
{
    if (conv_wino_m(s, 2) == 4) {
        const wino_geom g = wino_geom_of(4, s->n, s->c, s->h, s->w, s->oc, s->oh, s->ow,
                                         s->ph, s->pw);
        return wino4_dw_floats(&g);
    }
    if (!conv_is_wino_dw(s))
        return 0;
    const wino_geom g = wino_geom_of(2, s->n, s->c, s->h, s->w, s->oc, s->oh, s->ow, s->ph, s->pw);
    const ptrdiff_t tiles = (ptrdiff_t)g.n * g.th * g.tw;
    const int slots = (int)DMCP_MIN((tiles + g.tb - 1) / g.tb, (ptrdiff_t)WINO_DW_SLOTS);
    return wino_dw_floats(&g, slots, DMCP_MIN(slots, threads));
}

static void wino4_backward_weight(float *dweight, const float *dout, const float *inp,
                                  const conv_shape *s, float *scratch);

static void wino_backward_weight(float *dweight, const float *dout, const float *inp,
                                 const conv_shape *s, float *scratch)
{
    if (conv_wino_m(s, 2) == 4) {
        wino4_backward_weight(dweight, dout, inp, s, scratch);
        return;
    }
    const wino_geom g = wino_geom_of(2, s->n, s->c, s->h, s->w, s->oc, s->oh, s->ow, s->ph, s->pw);
    const ptrdiff_t kp = round_up(g.k, CONV_NR), dusz = (ptrdiff_t)16 * g.rp * kp;
    const ptrdiff_t tiles = (ptrdiff_t)g.n * g.th * g.tw;
    const int nblocks = (int)((tiles + g.tb - 1) / g.tb);
    const int slots = DMCP_MIN(nblocks, WINO_DW_SLOTS);
    const int nth = DMCP_MIN(slots, DMCP_MIN(omp_get_max_threads(), CONV_SLOTS_MAX));
    const ptrdiff_t per_thread = (ptrdiff_t)16 * g.tb * (g.k + kp + g.rp);
    float *dU = scratch, *bufs = scratch + slots * dusz;
    #pragma omp parallel num_threads(nth)
    {
        const int me = omp_get_thread_num();
        float *V = bufs + me * per_thread, *Vt = V + (ptrdiff_t)16 * g.k * g.tb;
        float *dM = Vt + (ptrdiff_t)16 * g.tb * kp;
        /* never written below: V^T's columns past K and dM's rows past R */
        memset(Vt, 0, (size_t)(16 * g.tb * kp + 16 * g.rp * g.tb) * sizeof(float));
        int aoff[CONV_MR], boff[WINO_MAX_ROW];
        linear_offsets(aoff, CONV_MR, g.tb);
        linear_offsets(boff, g.tb, (int)kp);
        #pragma omp for schedule(dynamic, 1)
        for (int slot = 0; slot < slots; slot++) {
            float *du = dU + slot * dusz;
            memset(du, 0, (size_t)dusz * sizeof *du);
            for (int blk = slot; blk < nblocks; blk += slots) {
                const ptrdiff_t t0 = (ptrdiff_t)blk * g.tb;
                const int cnt = (int)DMCP_MIN((ptrdiff_t)g.tb, tiles - t0);
                wino_inputs(V, inp, &g, t0, cnt);
                for (int xi = 0; xi < 16; xi++)          /* V[xi] (K, tb) -> V^T (tb, kp) */
                    for (int k = 0; k < g.k; k++) {
                        const float *v = V + ((ptrdiff_t)xi * g.k + k) * g.tb;
                        float *vt = Vt + (ptrdiff_t)xi * g.tb * kp + k;
                        for (int j = 0; j < cnt; j++)
                            vt[(ptrdiff_t)j * kp] = v[j];
                    }
                wino_dout_tiles(dM, dout, &g, t0, cnt);
                for (int xi = 0; xi < 16; xi++) {
                    const float *a = dM + (ptrdiff_t)xi * g.rp * g.tb;
                    const float *b = Vt + (ptrdiff_t)xi * g.tb * kp;
                    float *c = du + (ptrdiff_t)xi * g.rp * kp;
                    for (int i0 = 0; i0 < g.rp; i0 += CONV_MR)
                        for (int op = 0; op < kp; op += CONV_NR)
                            conv_kernel(cnt, a + (ptrdiff_t)i0 * g.tb, aoff, b + op, boff,
                                        c + (ptrdiff_t)i0 * kp + op, kp, true);
                }
            }
        }
    }
    /* dW[r][k] += G^T (sum over slots, in order, of dU) G; inputs in runs of
     * KB, so each of the 16 planes is read contiguously */
    enum { KB = 64 };
    const int ldw = s->w_cin_full * 9;
    #pragma omp parallel for schedule(static) if ((ptrdiff_t)g.r * g.k * 16 * slots > CONV_PAR_MIN)
    for (int r = 0; r < g.r; r++) {
        for (int k0 = 0; k0 < g.k; k0 += KB) {
            const int kb = DMCP_MIN(KB, g.k - k0);
            float us[16][KB];
            for (int xi = 0; xi < 16; xi++) {
                const float *d = dU + ((ptrdiff_t)xi * g.rp + r) * kp + k0;
                for (int j = 0; j < kb; j++)
                    us[xi][j] = d[j];
                for (int slot = 1; slot < slots; slot++)
                    for (int j = 0; j < kb; j++)
                        us[xi][j] += d[slot * dusz + j];
            }
            for (int j = 0; j < kb; j++) {
                float t3[3][4];
                for (int x = 0; x < 4; x++) {         /* t = G^T u */
                    const float u0 = us[x][j], u1 = us[4 + x][j];
                    const float u2 = us[8 + x][j], u3 = us[12 + x][j];
                    t3[0][x] = u0 + 0.5f * (u1 + u2);
                    t3[1][x] = 0.5f * (u1 - u2);
                    t3[2][x] = 0.5f * (u1 + u2) + u3;
                }
                float *dw = dweight + (ptrdiff_t)r * ldw + (ptrdiff_t)(k0 + j) * 9;
                for (int y = 0; y < 3; y++) {         /* dg = t G */
                    dw[y * 3 + 0] += t3[y][0] + 0.5f * (t3[y][1] + t3[y][2]);
                    dw[y * 3 + 1] += 0.5f * (t3[y][1] - t3[y][2]);
                    dw[y * 3 + 2] += 0.5f * (t3[y][1] + t3[y][2]) + t3[y][3];
                }
            }
        }
    }
}

/* ---- F(4x4) backward-weight ----
 *
 * The adjoint of the F(4x4) forward: dU[xi] (R, K) = dM[xi] (R, tiles) @
 * V[xi]^T, V = B^T d B of the 6x6 input tiles (as the forward), dM = A dy A^T
 * of the 4x4 output-gradient tiles (6x6), then dW += G^T dU G per (r, k).
 * The tiles are cut into chunks of at most WINO4_DW_FLOATS floats of V and dM
 * (whole blocks).  Per chunk, the threads transform blocks of tiles straight
 * into the chunk's V and dM, then share out the 36 GEMMs, each one OpenBLAS
 * call over the whole chunk that adds into dU.  Chunks run in order and each
 * sum's order depends on the shape only, so not on the thread count. */

#define WINO4_DW_FLOATS ((ptrdiff_t)1 << 22)

/* Tiles per chunk: whole blocks, at least one. */
static ptrdiff_t wino4_dw_chunk(const wino_geom *g)
{
    const ptrdiff_t tiles = (ptrdiff_t)g->n * g->th * g->tw;
    const ptrdiff_t fit = WINO4_DW_FLOATS / (36 * (ptrdiff_t)(g->k + g->r)) / g->tb * g->tb;
    return DMCP_MIN(tiles, DMCP_MAX(fit, (ptrdiff_t)g->tb));
}

/* Floats of dU, then a chunk's V and dM. */
static ptrdiff_t wino4_dw_floats(const wino_geom *g)
{
    return 36 * (ptrdiff_t)g->r * g->k + 36 * wino4_dw_chunk(g) * (g->k + g->r);
}

/* The 1-D transform A of 4 points into 6, at each of n positions (the
 * adjoint of wino4_at). */
static inline void wino4_a(float *const o[6], const float *d0, const float *d1, const float *d2,
                           const float *d3, int n)
{
    float *restrict o0 = o[0], *restrict o1 = o[1], *restrict o2 = o[2];
    float *restrict o3 = o[3], *restrict o4 = o[4], *restrict o5 = o[5];
    #pragma omp simd
    for (int j = 0; j < n; j++) {
        const float a = d0[j], b = d1[j], c = d2[j], d = d3[j];
        const float even = a + c, odd = b + d;
        const float even4 = a + 4.0f * c, odd8 = 2.0f * b + 8.0f * d;
        o0[j] = a;
        o1[j] = even + odd;
        o2[j] = even - odd;
        o3[j] = even4 + odd8;
        o4[j] = even4 - odd8;
        o5[j] = d;
    }
}

/* dM[xi][r][j] (rows ld floats apart) <- A dy A^T of the 4x4 output-gradient
 * tile t0 + j of output r, cells past the output's edge 0, j < cnt: gathered
 * tap by tap, then both 1-D transforms over all the tiles at once. */
static void wino4_dout_tiles(float *dM, ptrdiff_t ld, const float *dout, const wino_geom *g,
                             ptrdiff_t t0, int cnt)
{
    const ptrdiff_t plane = (ptrdiff_t)g->r * ld;
    float P[4][4][WINO_TB_MAX], S[6][4][WINO_TB_MAX], buf[4 * WINO_TB_MAX];
    for (int r = 0; r < g->r; r++) {
        for (ptrdiff_t t = t0; t < t0 + cnt;) {
            const wino_run run = wino_run_at(g, t, t0 + cnt);
            const int b = run.b, ty = run.ty, tx0 = run.tx0, nt = run.tx1 - run.tx0;
            const int j0 = (int)(t - t0);
            t += nt;
            const float *src = dout + ((ptrdiff_t)b * g->r + r) * g->oh * g->ow;
            const int ox0 = 4 * tx0, len = 4 * nt;
            for (int y = 0; y < 4; y++) {
                const int oy = 4 * ty + y;
                if (oy < g->oh)
                    wino_row_span(buf, src + (ptrdiff_t)oy * g->ow, ox0, len, g->ow);
                else
                    memset(buf, 0, (size_t)len * sizeof *buf);
                for (int x = 0; x < 4; x++)
                    for (int j = 0; j < nt; j++)
                        P[y][x][j0 + j] = buf[4 * j + x];
            }
        }
        for (int x = 0; x < 4; x++) {             /* S = A dy, down each column */
            float *const o[6] = {S[0][x], S[1][x], S[2][x], S[3][x], S[4][x], S[5][x]};
            wino4_a(o, P[0][x], P[1][x], P[2][x], P[3][x], cnt);
        }
        float *m = dM + (ptrdiff_t)r * ld;
        for (int i = 0; i < 6; i++) {             /* dM = S A^T, along the rows */
            float *const o[6] = {m + (i * 6 + 0) * plane, m + (i * 6 + 1) * plane,
                                 m + (i * 6 + 2) * plane, m + (i * 6 + 3) * plane,
                                 m + (i * 6 + 4) * plane, m + (i * 6 + 5) * plane};
            wino4_a(o, S[i][0], S[i][1], S[i][2], S[i][3], cnt);
        }
    }
}

static void wino4_backward_weight(float *dweight, const float *dout, const float *inp,
                                  const conv_shape *s, float *scratch)
{
    const wino_geom g = wino_geom_of(4, s->n, s->c, s->h, s->w, s->oc, s->oh, s->ow, s->ph, s->pw);
    const ptrdiff_t tiles = (ptrdiff_t)g.n * g.th * g.tw, chunk = wino4_dw_chunk(&g);
    float *dU = scratch, *V = dU + 36 * (ptrdiff_t)g.r * g.k, *dM = V + 36 * chunk * g.k;
    const int nth = DMCP_MIN(omp_get_max_threads(), CONV_SLOTS_MAX);
    const int blas_threads = blas_solo_begin();
    for (ptrdiff_t c0 = 0; c0 < tiles; c0 += chunk) {
        const ptrdiff_t ct = DMCP_MIN(chunk, tiles - c0), nblocks = (ct + g.tb - 1) / g.tb;
        #pragma omp parallel num_threads(nth)
        {
            #pragma omp for schedule(dynamic, 1)
            for (ptrdiff_t blk = 0; blk < nblocks; blk++) {
                const ptrdiff_t j0 = blk * g.tb;
                const int cnt = (int)DMCP_MIN((ptrdiff_t)g.tb, ct - j0);
                wino4_inputs_ld(V + j0, ct, false, inp, &g, c0 + j0, cnt);
                wino4_dout_tiles(dM + j0, ct, dout, &g, c0 + j0, cnt);
            }
            #pragma omp for schedule(dynamic, 1)
            for (int xi = 0; xi < 36; xi++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g.r, g.k, (int)ct, 1.0f,
                            dM + (ptrdiff_t)xi * g.r * ct, (int)ct, V + (ptrdiff_t)xi * g.k * ct,
                            (int)ct, c0 > 0 ? 1.0f : 0.0f, dU + (ptrdiff_t)xi * g.r * g.k, g.k);
        }
    }
    blas_solo_end(blas_threads);
    /* dW[r][k] += G^T dU G, inputs in runs of KB so each of the 36 planes is
     * read contiguously */
    enum { KB = 64 };
    const int ldw = s->w_cin_full * 9;
    #pragma omp parallel for schedule(static) if ((ptrdiff_t)g.r * g.k * 36 > CONV_PAR_MIN)
    for (int r = 0; r < g.r; r++) {
        for (int k0 = 0; k0 < g.k; k0 += KB) {
            const int kb = DMCP_MIN(KB, g.k - k0);
            float us[36][KB];
            for (int xi = 0; xi < 36; xi++)
                memcpy(us[xi], dU + ((ptrdiff_t)xi * g.r + r) * g.k + k0, (size_t)kb * sizeof(float));
            for (int j = 0; j < kb; j++) {
                float t3[3][6];
                for (int x = 0; x < 6; x++) {         /* t = G^T u, down each column */
                    const float u0 = us[x][j], u1 = us[6 + x][j], u2 = us[12 + x][j];
                    const float u3 = us[18 + x][j], u4 = us[24 + x][j], u5 = us[30 + x][j];
                    t3[0][x] = 0.25f * u0 - (u1 + u2) * (1.0f / 6) + (u3 + u4) * (1.0f / 24);
                    t3[1][x] = (u2 - u1) * (1.0f / 6) + (u3 - u4) * (1.0f / 12);
                    t3[2][x] = (u3 + u4 - u1 - u2) * (1.0f / 6) + u5;
                }
                float *dw = dweight + (ptrdiff_t)r * ldw + (ptrdiff_t)(k0 + j) * 9;
                for (int y = 0; y < 3; y++) {         /* dg = t G, along the rows */
                    const float *q = t3[y];
                    dw[y * 3 + 0] += 0.25f * q[0] - (q[1] + q[2]) * (1.0f / 6) + (q[3] + q[4]) * (1.0f / 24);
                    dw[y * 3 + 1] += (q[2] - q[1]) * (1.0f / 6) + (q[3] - q[4]) * (1.0f / 12);
                    dw[y * 3 + 2] += (q[3] + q[4] - q[1] - q[2]) * (1.0f / 6) + q[5];
                }
            }
        }
    }
}
