/* conv2d_tiled.c: the tiled path of conv2d and its micro-kernel, which the
 * depthwise and Winograd paths share (see conv2d_internal.h). */
#include "conv2d_internal.h"

/* ---- small convs: implicit GEMM in cache, register-blocked micro-kernel ----
 *
 * For layers whose per-group weights fit in cache, one OpenMP region runs the
 * whole call without OpenBLAS.  The batch is cut into a fixed number of slots
 * (CONV_SLOTS, independent of the thread count).  A slot copies one image's
 * group into zero-padded planes, split into stride phases (plane (py, px)
 * holds padded rows py, py+sh, ... and columns px, px+sw, ...), so that the
 * output pixel f of a grid as wide as a phase row reads tap r at
 * plane + f + off[r]: the column matrix is never built (implicit GEMM; the
 * grid's columns past OW are computed and dropped).  conv_kernel multiplies
 * packed weights with those rows, tile by tile of whole output rows:
 *   forward          out (oc, px) = W (oc, K) @ taps (K, px)
 *   backward-weight  dW^T_slot (K, oc) += taps (K, px) @ dout^T (px, oc)
 *   backward-data    dinp (c, px) = W' (c, oc*KH*KW) @ taps of zero-padded dout,
 *                    W' the flipped kernel (stride 1 only, and c/G >= CONV_MR;
 *                    otherwise backward-data takes the GEMM path)
 * Weight gradients are summed per slot, then over the slots in a fixed order,
 * so no result depends on the thread count. */

#ifndef CONV_TILE_FLOATS
#define CONV_TILE_FLOATS (1 << 17)  /* target tile size, K x pixels (512 KB) */
#endif
#ifndef CONV_TILE_PX
#define CONV_TILE_PX 512       /* target output pixels per tile */
#endif
#ifndef CONV_TILED_MAX_W
#define CONV_TILED_MAX_W (1 << 16)  /* largest (oc/G)*(c/G)*KH*KW for the tiled path */
#endif

/* Grid of `orows` outputs over planes hp x wp (before the phase split) with
 * the given stride; tiles of whole rows, about CONV_TILE_PX pixels or
 * CONV_TILE_FLOATS/kpad.  False when a tile would outgrow the offset tables. */
static bool pad_grid_init(pad_grid *g, int hp, int wp, int sh, int sw, int top, int left,
                          int orows, int ocols, int reach, int kpad)
{
    g->sh = sh;
    g->sw = sw;
    g->hq = (hp + sh - 1) / sh;
    g->wq = (wp + sw - 1) / sw;
    g->top = top;
    g->left = left;
    g->orows = orows;
    g->ocols = ocols;
    g->pl = (ptrdiff_t)g->hq * g->wq + reach + CONV_NR;
    const ptrdiff_t nt = DMCP_MIN((ptrdiff_t)CONV_TILE_PX, CONV_TILE_FLOATS / kpad);
    const int rows = (int)DMCP_MAX(1, DMCP_MIN(nt / g->wq, (ptrdiff_t)orows));
    const int tiles = (orows + rows - 1) / rows;
    g->trows = (orows + tiles - 1) / tiles;
    g->ntp = (int)round_up((ptrdiff_t)g->trows * g->wq, CONV_NR);
    return g->ntp <= CONV_TILED_MAX_K;
}

/* The tiling, or false when the tiled path does not take this shape. */
static bool conv_tiling_of(const conv_shape *s, conv_tiling *t)
{
    const int khw = s->kh * s->kw;
    t->slots = DMCP_MIN(s->n, CONV_SLOTS);
    t->cg = s->c / s->groups;
    t->cgpad = (int)round_up(t->cg, CONV_MR);
    t->k = t->cg * khw;
    t->kpad = (int)round_up(t->k, CONV_MR);
    t->ocg = s->oc / s->groups;
    t->ocpad = (int)round_up(t->ocg, CONV_MR);
    t->wnr = CONV_NR > 16 && t->ocg <= 16 ? 16 : CONV_NR;
    t->ocpad16 = (int)round_up(t->ocg, t->wnr);
    t->kb = t->ocg * khw;
    /* 1x1 kernels reduce too little per pixel: plain GEMMs do better */
    if (s->n < 2 || khw == 1 || t->k > CONV_TILED_MAX_K || t->ocg > CONV_TILED_MAX_K ||
        (ptrdiff_t)t->ocg * t->k > CONV_TILED_MAX_W)
        return false;
    if (!pad_grid_init(&t->fg, s->h + 2 * s->ph, s->w + 2 * s->pw, s->sh, s->sw, s->ph, s->pw,
                       s->oh, s->ow, (s->kw - 1) * s->dw / s->sw, t->kpad) ||
        (ptrdiff_t)t->cg * s->sh * s->sw * t->fg.pl > INT_MAX)
        return false;
    /* backward-data: stride 1, dout inside its padded plane (ph <= (KH-1)*dh,
     * likewise for w), and enough input channels to fill micro-tile rows */
    t->data = s->sh == 1 && s->sw == 1 && s->ph <= (s->kh - 1) * s->dh &&
              s->pw <= (s->kw - 1) * s->dw && t->cg >= CONV_MR && t->kb <= CONV_TILED_MAX_K &&
              pad_grid_init(&t->bg, s->h + (s->kh - 1) * s->dh, s->w + (s->kw - 1) * s->dw, 1, 1,
                            (s->kh - 1) * s->dh - s->ph, (s->kw - 1) * s->dw - s->pw,
                            s->h, s->w, (s->kw - 1) * s->dw, (int)round_up(t->kb, CONV_MR)) &&
              (ptrdiff_t)t->ocg * t->bg.pl <= INT_MAX;
    t->srcf = round_up((ptrdiff_t)t->cg * s->sh * s->sw * t->fg.pl, CONV_NR);
    t->src = t->srcf;
    t->res = (ptrdiff_t)t->ocpad * t->fg.ntp;
    t->wpack = (ptrdiff_t)t->ocpad * t->k;
    if (t->data) {
        t->src += (ptrdiff_t)t->ocg * t->bg.pl;
        t->res = DMCP_MAX(t->res, (ptrdiff_t)t->cgpad * t->bg.ntp);
        t->wpack = DMCP_MAX(t->wpack, (ptrdiff_t)t->cgpad * t->kb);
    }
    t->src = round_up(t->src, CONV_NR);
    t->res = round_up(t->res, CONV_NR);
    t->wpack = round_up((ptrdiff_t)s->groups * t->wpack, CONV_NR);
    t->pan = (ptrdiff_t)t->ocpad16 * t->fg.ntp;
    t->dwt = (ptrdiff_t)s->groups * t->kpad * t->ocpad16;
    return true;
}

static ptrdiff_t conv_slot_floats(const conv_tiling *t)
{
    return t->src + t->pan + t->res + t->dwt;
}

/* Scratch floats of the tiled path; *tiled: whether it takes the shape,
 * *data: whether its backward-data does too. */
static ptrdiff_t conv_tiled_scratch(const conv_shape *s, bool *tiled, bool *data)
{
    conv_tiling t;
    *tiled = conv_tiling_of(s, &t);
    *data = *tiled && t.data;
    return *tiled ? t.wpack + t.slots * conv_slot_floats(&t) : 0;
}

/* One vector register of floats (alignment 4, so any float pointer will do):
 * 16 with AVX-512, 8 with AVX, 4 otherwise (a 32-byte vector type on SSE is
 * split through memory, 14x slower); CONV_NR/CONV_VW of them span a
 * micro-tile row.  (The AVX-512 variant ran 8-wide until 2026-12-05: half its
 * registers' width, and ResNet-20's step at 0.65x PyTorch.) */
#ifdef __AVX512F__
#define CONV_VW 16
#elif defined(__AVX__)
#define CONV_VW 8
#else
#define CONV_VW 4
#endif
typedef float conv_vec __attribute__((vector_size(CONV_VW * 4), aligned(4)));
#define CONV_NV (CONV_NR / CONV_VW)

/* c (MR, nv*VW) = or += A (MR, k) @ B (k, nv*VW).  Row i of A is a + aoff[i]
 * (k consecutive floats), row p of B is b + boff[p] (nv*VW consecutive
 * floats); c rows are ldc apart.  The sums stay in registers; nv is a
 * constant at every call, so each caller gets its own unrolled copy. */
CONV_FMA_CONTRACT
static inline __attribute__((always_inline))
void conv_kernel_nv(int nv, int k, const float *restrict a, const int *restrict aoff,
                    const float *restrict b, const int *restrict boff,
                    float *restrict c, ptrdiff_t ldc, bool add)
{
    const float *ar[CONV_MR];
    conv_vec acc[CONV_MR][CONV_NV];
    for (int i = 0; i < CONV_MR; i++) {
        ar[i] = a + aoff[i];
        for (int v = 0; v < nv; v++)
            acc[i][v] = (conv_vec){0};
    }
    for (int p = 0; p < k; p++) {
        const float *bp = b + boff[p];
        conv_vec bv[CONV_NV];
        for (int v = 0; v < nv; v++)
            bv[v] = *(const conv_vec *)(bp + v * CONV_VW);
        for (int i = 0; i < CONV_MR; i++) {
            const float ai = ar[i][p];
            for (int v = 0; v < nv; v++)
                acc[i][v] += ai * bv[v];
        }
    }
    for (int i = 0; i < CONV_MR; i++) {
        conv_vec *ci = (conv_vec *)(c + i * ldc);
        for (int v = 0; v < nv; v++)
            ci[v] = add ? ci[v] + acc[i][v] : acc[i][v];
    }
}

/* The MR x NR micro-kernel. */
CONV_FMA_CONTRACT
static void conv_kernel(int k, const float *restrict a, const int *restrict aoff,
                        const float *restrict b, const int *restrict boff,
                        float *restrict c, ptrdiff_t ldc, bool add)
{
    conv_kernel_nv(CONV_NV, k, a, aoff, b, boff, c, ldc, add);
}

/* MR x 16: backward-weight panels of layers with at most 16 output channels,
 * where a 32-wide AVX-512 tile would compute half zeros (conv_tiling.wnr). */
CONV_FMA_CONTRACT
static void conv_kernel16(int k, const float *restrict a, const int *restrict aoff,
                          const float *restrict b, const int *restrict boff,
                          float *restrict c, ptrdiff_t ldc, bool add)
{
    conv_kernel_nv(16 / CONV_VW, k, a, aoff, b, boff, c, ldc, add);
}

/* off[i] = i*step for i < n. */
static void linear_offsets(int *off, int n, int step)
{
    for (int i = 0; i < n; i++)
        off[i] = i * step;
}

/* res (mpad, ntp) = A (mpad, k) packed rows @ B (k rows at src + boff[p]),
 * columns [0, round_up(nt, NR)). */
static void tile_gemm(float *res, int ntp, int nt, const float *wp, int mpad, int k,
                      const float *src, const int *boff)
{
    int aoff[CONV_MR];
    linear_offsets(aoff, CONV_MR, k);
    for (int jp = 0; jp < nt; jp += CONV_NR)
        for (int i0 = 0; i0 < mpad; i0 += CONV_MR)
            conv_kernel(k, wp + (ptrdiff_t)i0 * k, aoff, src + jp, boff,
                        res + (ptrdiff_t)i0 * ntp + jp, ntp, false);
}

/* Whether some tap k < KW (or KH) lands on this phase of the stride. */
static bool phase_used(int phase, int k, int dil, int stride)
{
    for (int i = 0; i < k; i++)
        if (i * dil % stride == phase)
            return true;
    return false;
}

/* Phase planes (np*sh*sw, grid) <- source planes (np, h, w) placed at (top,
 * left) of the zero-padded plane: phase (py, px) element (i, j) is padded
 * element (i*sh + py, j*sw + px).  Only the source cells are written unless
 * `zero`: a buffer refilled with the same grid keeps its zeros. */
static void pad_planes(float *dst, const float *src, int np, int h, int w, const pad_grid *g,
                       const conv_shape *s, bool zero)
{
    const int sh = g->sh, sw = g->sw;
    if (zero)
        memset(dst, 0, (size_t)np * sh * sw * g->pl * sizeof *dst);
    for (int ci = 0; ci < np; ci++)
    for (int py = 0; py < sh; py++)
    for (int px = 0; px < sw; px++) {
        if (!phase_used(py, s->kh, s->dh, sh) || !phase_used(px, s->kw, s->dw, sw))
            continue;       /* no tap reads this phase */
        float *pd = dst + ((ptrdiff_t)(ci * sh + py) * sw + px) * g->pl;
        const float *ps = src + (ptrdiff_t)ci * h * w;
        /* rows i and columns j with 0 <= i*sh + py - top < h, likewise for j */
        const int i0 = DMCP_MIN(g->hq, (DMCP_MAX(g->top - py, 0) + sh - 1) / sh);
        const int i1 = DMCP_MAX(i0, DMCP_MIN(g->hq, (h + g->top - py + sh - 1) / sh));
        const int j0 = DMCP_MIN(g->wq, (DMCP_MAX(g->left - px, 0) + sw - 1) / sw);
        const int j1 = DMCP_MAX(j0, DMCP_MIN(g->wq, (w + g->left - px + sw - 1) / sw));
        for (int i = i0; i < i1; i++) {
            float *restrict row = pd + (ptrdiff_t)i * g->wq;
            const float *restrict srow = ps + (ptrdiff_t)(i * sh + py - g->top) * w + px - g->left;
            if (sw == 1) {
                for (int j = j0; j < j1; j++)
                    row[j] = srow[j];
            } else if (sw == 2) {       /* a constant stride vectorises */
                for (int j = j0; j < j1; j++)
                    row[j] = srow[2 * j];
            } else {
                for (int j = j0; j < j1; j++)
                    row[j] = srow[j * sw];
            }
        }
    }
}

/* off[r] for r = (ci*KH + ky)*KW + kx < np*KH*KW: where tap (ky, kx) of
 * channel ci reads, relative to the output pixel, in the phase planes;
 * entries up to round_up(n, MR) are 0. */
static void tap_offsets(int *off, int np, const pad_grid *g, const conv_shape *s)
{
    const int khw = s->kh * s->kw, n = np * khw;
    for (int r = 0; r < n; r++) {
        const int ci = r / khw, ty = (r % khw) / s->kw * s->dh, tx = r % s->kw * s->dw;
        const int plane = (ci * g->sh + ty % g->sh) * g->sw + tx % g->sw;
        off[r] = (int)(plane * g->pl) + ty / g->sh * g->wq + tx / g->sw;
    }
    for (int r = n; r < round_up(n, CONV_MR); r++)
        off[r] = 0;
}

static void tiled_forward_slot(float *o, const float *img, int nb, const float *wpack,
                               const conv_epilogue *ep, const conv_shape *s, const conv_tiling *t,
                               float *src, float *res)
{
    const pad_grid *g = &t->fg;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    int boff[CONV_TILED_MAX_K + CONV_MR];
    tap_offsets(boff, t->cg, g, s);
    for (int b = 0; b < nb; b++) {
        for (int gi = 0; gi < s->groups; gi++) {
            pad_planes(src, img + ((ptrdiff_t)b * s->c + gi * t->cg) * hw, t->cg, s->h, s->w, g, s,
                       b == 0 && gi == 0);
            for (int oy0 = 0; oy0 < g->orows; oy0 += g->trows) {
                const int rows = DMCP_MIN(g->trows, g->orows - oy0);
                tile_gemm(res, g->ntp, rows * g->wq, wpack + (ptrdiff_t)gi * t->ocpad * t->k,
                          t->ocpad, t->k, src + (ptrdiff_t)oy0 * g->wq, boff);
                for (int oo = 0; oo < t->ocg; oo++) {
                    const int oc_i = gi * t->ocg + oo;
                    const conv_chan_ep e = conv_ep_of(ep, oc_i);
                    for (int y = 0; y < rows; y++)
                        conv_ep_row(o + ((ptrdiff_t)b * s->oc + oc_i) * ohw + (ptrdiff_t)(oy0 + y) * s->ow,
                                    res + (ptrdiff_t)oo * g->ntp + (ptrdiff_t)y * g->wq, s->ow, e);
                }
            }
        }
    }
}

static void tiled_backward_slot(float *dimg, float *dwt, const float *dy, const float *img,
                                int nb, const float *wtpack, const conv_shape *s,
                                const conv_tiling *t, float *src, float *pan, float *res, bool set)
{
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    float *srcb = src + t->srcf;     /* padded dout, after the padded input */
    int offw[CONV_TILED_MAX_K + CONV_MR], offd[CONV_TILED_MAX_K + CONV_MR], lin[CONV_TILED_MAX_K];
    if (dwt != NULL) {
        tap_offsets(offw, t->cg, &t->fg, s);
        linear_offsets(lin, t->fg.ntp, t->wnr);
    }
    if (dimg != NULL)
        tap_offsets(offd, t->ocg, &t->bg, s);
    for (int b = 0; b < nb; b++) {
        for (int gi = 0; gi < s->groups; gi++) {
            const float *dyg = dy + ((ptrdiff_t)b * s->oc + gi * t->ocg) * ohw;
            if (dwt != NULL) {
                /* dW^T (kpad, ocpad16) += taps (A rows at off) @ dout^T tile,
                 * packed as panels (ocpad16/wnr, ntp, wnr), zero off the image */
                const int nr = t->wnr;
                const pad_grid *g = &t->fg;
                pad_planes(src, img + ((ptrdiff_t)b * s->c + gi * t->cg) * hw, t->cg, s->h, s->w, g, s,
                           b == 0 && gi == 0);
                float *dwg = dwt + (ptrdiff_t)gi * t->kpad * t->ocpad16;
                for (int oy0 = 0; oy0 < g->orows; oy0 += g->trows) {
                    const int rows = DMCP_MIN(g->trows, g->orows - oy0);
                    const int ntx = (int)round_up((ptrdiff_t)rows * g->wq, CONV_NR);
                    memset(pan, 0, (size_t)t->ocpad16 * g->ntp * sizeof *pan);
                    for (int oo = 0; oo < t->ocg; oo++) {
                        float *dst = pan + (ptrdiff_t)(oo / nr) * g->ntp * nr + oo % nr;
                        for (int y = 0; y < rows; y++) {
                            const float *sr = dyg + (ptrdiff_t)oo * ohw + (ptrdiff_t)(oy0 + y) * s->ow;
                            float *d = dst + (ptrdiff_t)y * g->wq * nr;
                            for (int x = 0; x < s->ow; x++)
                                d[(ptrdiff_t)x * nr] = sr[x];
                        }
                    }
                    const float *a = src + (ptrdiff_t)oy0 * g->wq;
                    for (int i0 = 0; i0 < t->kpad; i0 += CONV_MR)
                        for (int op = 0; op < t->ocpad16; op += nr)
                            (nr == CONV_NR ? conv_kernel : conv_kernel16)(
                                ntx, a, offw + i0, pan + (ptrdiff_t)op * g->ntp, lin,
                                dwg + (ptrdiff_t)i0 * t->ocpad16 + op, t->ocpad16, true);
                }
            }
            if (dimg != NULL) {
                /* dinp (cg, H, W) += (set: =) W' (cgpad, ocg*KH*KW) @ taps of padded dout */
                const pad_grid *g = &t->bg;
                pad_planes(srcb, dyg, t->ocg, s->oh, s->ow, g, s, b == 0 && gi == 0);
                for (int iy0 = 0; iy0 < g->orows; iy0 += g->trows) {
                    const int rows = DMCP_MIN(g->trows, g->orows - iy0);
                    tile_gemm(res, g->ntp, rows * g->wq, wtpack + (ptrdiff_t)gi * t->cgpad * t->kb,
                              t->cgpad, t->kb, srcb + (ptrdiff_t)iy0 * g->wq, offd);
                    for (int ci = 0; ci < t->cg; ci++) {
                        for (int y = 0; y < rows; y++) {
                            float *restrict dst = dimg + ((ptrdiff_t)b * s->c + gi * t->cg + ci) * hw
                                                + (ptrdiff_t)(iy0 + y) * s->w;
                            const float *restrict sr = res + (ptrdiff_t)ci * g->ntp + (ptrdiff_t)y * g->wq;
                            if (set)
                                memcpy(dst, sr, (size_t)s->w * sizeof *dst);
                            else
                                for (int x = 0; x < s->w; x++)
                                    dst[x] += sr[x];
                        }
                    }
                }
            }
        }
    }
}


static void conv_tiled_forward(float *out, const float *inp, const float *weight,
                               const conv_epilogue *ep, const conv_shape *s,
                               const conv_tiling *t, float *scratch)
{
    const int ldw = s->w_cin_full * s->kh * s->kw;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    const ptrdiff_t per_slot = conv_slot_floats(t);
    float *wpack = scratch;
    /* W per group, (ocpad, k) with zero rows past ocg */
    for (int g = 0; g < s->groups; g++)
        for (int i = 0; i < t->ocpad; i++) {
            float *dst = wpack + ((ptrdiff_t)g * t->ocpad + i) * t->k;
            if (i < t->ocg)
                memcpy(dst, weight + (ptrdiff_t)(g * t->ocg + i) * ldw, (size_t)t->k * sizeof *dst);
            else
                memset(dst, 0, (size_t)t->k * sizeof *dst);
        }
    #pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < t->slots; i++) {
        float *src = scratch + t->wpack + i * per_slot, *res = src + t->src + t->pan;
        const int n0 = slot_start(i, t->slots, s->n), nb = slot_start(i + 1, t->slots, s->n) - n0;
        tiled_forward_slot(out + (ptrdiff_t)n0 * s->oc * ohw, inp + (ptrdiff_t)n0 * s->c * hw,
                           nb, wpack, ep, s, t, src, res);
    }
}

/* dinp only when t->data; += into it, or = with set. */
static void conv_tiled_backward(float *dinp, float *dweight, const float *dout,
                                const float *inp, const float *weight,
                                const conv_shape *s, const conv_tiling *t, float *scratch,
                                bool set)
{
    const int ldw = s->w_cin_full * s->kh * s->kw, khw = s->kh * s->kw;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    const ptrdiff_t per_slot = conv_slot_floats(t);
    float *wtpack = scratch;
    if (dinp != NULL) {
        /* W' per group, (cgpad, ocg*KH*KW): W'[ci][(o*KH + ky)*KW + kx] =
         * W[o][ci][KH-1-ky][KW-1-kx], zero rows past cg */
        for (int g = 0; g < s->groups; g++) {
            float *wt = wtpack + (ptrdiff_t)g * t->cgpad * t->kb;
            for (int ci = 0; ci < t->cgpad; ci++)
                for (int r = 0; r < t->kb; r++) {
                    const int oo = r / khw, tap = khw - 1 - r % khw;
                    wt[(ptrdiff_t)ci * t->kb + r] = ci < t->cg
                        ? weight[(ptrdiff_t)(g * t->ocg + oo) * ldw + ci * khw + tap] : 0.0f;
                }
        }
    }
    #pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < t->slots; i++) {
        float *src = scratch + t->wpack + i * per_slot, *pan = src + t->src, *res = pan + t->pan;
        float *dwt = dweight != NULL ? res + t->res : NULL;
        if (dwt != NULL)
            memset(dwt, 0, (size_t)t->dwt * sizeof *dwt);
        const int n0 = slot_start(i, t->slots, s->n), nb = slot_start(i + 1, t->slots, s->n) - n0;
        tiled_backward_slot(dinp != NULL ? dinp + (ptrdiff_t)n0 * s->c * hw : NULL, dwt,
                            dout + (ptrdiff_t)n0 * s->oc * ohw,
                            inp != NULL ? inp + (ptrdiff_t)n0 * s->c * hw : NULL,
                            nb, wtpack, s, t, src, pan, res, set);
    }
    if (dweight == NULL)
        return;
    /* dW[o][r] += sum over slots, in slot order, of dW^T_slot[r][o] */
    const ptrdiff_t dwt_at = t->wpack + t->src + t->pan + t->res;
    const int rows = s->groups * t->k;
    #pragma omp parallel for schedule(static) if ((ptrdiff_t)rows * t->ocg * t->slots > CONV_PAR_MIN)
    for (int gr = 0; gr < rows; gr++) {
        const int g = gr / t->k, r = gr % t->k;
        const float *part = scratch + dwt_at + ((ptrdiff_t)g * t->kpad + r) * t->ocpad16;
        for (int oo = 0; oo < t->ocg; oo++) {
            float acc = 0.0f;
            for (int i = 0; i < t->slots; i++)
                acc += part[i * per_slot + oo];
            dweight[(ptrdiff_t)(g * t->ocg + oo) * ldw + r] += acc;
        }
    }
}
