/* conv2d.c: 2-D convolution, float32, NCHW, forward and backward.
 *
 * Three paths, picked from the shape:
 *   dense (groups == 1) and grouped: im2col per image, then one SGEMM per
 *     group; 1x1 stride-1 pad-0 convs skip im2col (the image is the column
 *     matrix).  OpenMP loops for im2col/col2im/bias, threaded OpenBLAS for the
 *     GEMMs, never one inside the other.
 *   depthwise (groups == c == oc, w_cin_full == 1): direct loops parallel over
 *     planes, with a fused 9-tap inner loop for 3x3.
 *   _naive: direct loops with double accumulators, the reference for tests.
 *
 * Weight indexing, shared by every path: output channel o of group g uses
 * weight[o*ldw + (ci*KH + ky)*KW + kx] for its ci < c/groups inputs, with
 * ldw = w_cin_full*KH*KW (rows of the full supernet buffer).
 */
#include "conv2d.h"

#include <cblas.h>
#include <limits.h>
#include <stdbool.h>
#include <string.h>

/* Below this many floats of work an OpenMP region costs more than it saves. */
#define CONV_PAR_MIN 16384

/* ---- shape checks and small helpers ---- */

/* Output length along one axis, or 0 when the (dilated) kernel does not fit. */
static long long conv_out_len(long long in, long long k, long long stride,
                              long long pad, long long dil)
{
    long long span = in + 2 * pad - dil * (k - 1) - 1;
    return span < 0 ? 0 : span / stride + 1;
}

/* Everything but oh/ow: positive sizes, group divisibility, slicing rules,
 * and products handed to BLAS as int staying in range. */
static dmcp_status conv_check_sizes(const conv_shape *s)
{
    if (s == NULL)
        return DMCP_ERR_SHAPE;
    if (s->n < 1 || s->c < 1 || s->h < 1 || s->w < 1 || s->oc < 1 ||
        s->kh < 1 || s->kw < 1 || s->sh < 1 || s->sw < 1 ||
        s->ph < 0 || s->pw < 0 || s->dh < 1 || s->dw < 1 ||
        s->groups < 1 || s->w_cin_full < 1)
        return DMCP_ERR_SHAPE;
    if (s->groups == 1) {
        if (s->c > s->w_cin_full)
            return DMCP_ERR_SHAPE;
    } else if (s->c % s->groups != 0 || s->oc % s->groups != 0 ||
               s->c / s->groups != s->w_cin_full) {
        return DMCP_ERR_SHAPE;
    }
    if ((long long)s->h * s->w > INT_MAX ||
        (long long)s->w_cin_full * s->kh * s->kw > INT_MAX)
        return DMCP_ERR_SHAPE;
    return DMCP_OK;
}

dmcp_status conv2d_shape_finish(conv_shape *s)
{
    dmcp_status st = conv_check_sizes(s);
    if (st != DMCP_OK)
        return st;
    long long oh = conv_out_len(s->h, s->kh, s->sh, s->ph, s->dh);
    long long ow = conv_out_len(s->w, s->kw, s->sw, s->pw, s->dw);
    if (oh < 1 || ow < 1 || oh > INT_MAX || ow > INT_MAX || oh * ow > INT_MAX)
        return DMCP_ERR_SHAPE;
    s->oh = (int)oh;
    s->ow = (int)ow;
    return DMCP_OK;
}

/* A kernel's own check: sizes valid and oh/ow what conv2d_shape_finish gives. */
static dmcp_status conv_check(const conv_shape *s)
{
    if (s == NULL)
        return DMCP_ERR_SHAPE;
    conv_shape t = *s;
    dmcp_status st = conv2d_shape_finish(&t);
    if (st != DMCP_OK)
        return st;
    return (t.oh == s->oh && t.ow == s->ow) ? DMCP_OK : DMCP_ERR_SHAPE;
}

static bool conv_is_depthwise(const conv_shape *s)
{
    return s->groups > 1 && s->groups == s->c && s->groups == s->oc &&
           s->w_cin_full == 1;
}

/* 1x1, stride 1, no padding: the image (C, H*W) is already its column matrix. */
static bool conv_is_pointwise(const conv_shape *s)
{
    return s->kh == 1 && s->kw == 1 && s->sh == 1 && s->sw == 1 &&
           s->ph == 0 && s->pw == 0;
}

/* Output positions o in [*lo, *hi) whose input index o*stride + off lies in
 * [0, in); *lo == *hi == 0 when there are none. */
static void tap_range(int off, int stride, int in, int out, int *lo, int *hi)
{
    int a = off >= 0 ? 0 : (-off + stride - 1) / stride;
    int b = in - 1 - off < 0 ? 0 : DMCP_MIN((in - 1 - off) / stride + 1, out);
    if (a >= b)
        a = b = 0;
    *lo = a;
    *hi = b;
}

/* ---- dense and grouped convs: batched im2col + SGEMM ----
 *
 * A chunk of nb images shares one GEMM per group: their column matrices sit
 * side by side in col (rows, nb*OH*OW), rows = c*KH*KW, and the GEMM gives
 * (oc, nb*OH*OW), scattered into NCHW.  Small layers take the whole batch in
 * one chunk, so one GEMM (and one packing of the weights) replaces N small
 * ones; large layers take one image per chunk and read and write NCHW in
 * place, as a per-image im2col + SGEMM would. */

/* Images per chunk stop growing once their column matrix holds this many
 * floats (8 MB). */
#ifndef CONV_COL_CAP
#define CONV_COL_CAP (2 << 20)
#endif
/* Pointwise convs with at least this many output pixels per image run per
 * image on the image itself: the GEMM is wide enough and no copy is needed. */
#ifndef CONV_POINTWISE_DIRECT
#define CONV_POINTWISE_DIRECT 1024
#endif

/* Images per GEMM chunk; depends on the shape only, never on the thread count. */
static int conv_chunk(const conv_shape *s)
{
    const ptrdiff_t ohw = (ptrdiff_t)s->oh * s->ow;
    if (conv_is_pointwise(s) && ohw >= CONV_POINTWISE_DIRECT)
        return 1;
    const ptrdiff_t per = (ptrdiff_t)s->c * s->kh * s->kw * ohw;
    const ptrdiff_t nb = CONV_COL_CAP / per;
    return (int)DMCP_MAX(1, DMCP_MIN(nb, (ptrdiff_t)s->n));
}

static bool conv_is_tiled(const conv_shape *s);
static ptrdiff_t conv_tiled_scratch(const conv_shape *s);

size_t conv2d_scratch_floats(const conv_shape *s)
{
    if (conv_check(s) != DMCP_OK || conv_is_depthwise(s))
        return 0;
    if (conv_is_tiled(s))
        return (size_t)conv_tiled_scratch(s);
    const size_t nb = (size_t)conv_chunk(s), ohw = (size_t)s->oh * s->ow;
    const size_t rows = (size_t)s->c * s->kh * s->kw;
    if (nb == 1)   /* one image's column matrix (none for pointwise) */
        return conv_is_pointwise(s) ? 0 : rows * ohw;
    /* the chunk's columns, then its (oc, nb*OH*OW) outputs / output gradients */
    return (rows + (size_t)s->oc) * nb * ohw;
}

/* ---- im2col / col2im ---- */

/* col (C*KH*KW, ldc) <- nb images img (nb, C, H, W) side by side, image b in
 * columns [b*OH*OW, (b+1)*OH*OW); taps landing in the padding are zero. */
static void im2col(float *col, ptrdiff_t ldc, const float *img, int nb, const conv_shape *s)
{
    const int kh = s->kh, kw = s->kw, khw = kh * kw;
    const int oh = s->oh, ow = s->ow, h = s->h, w = s->w;
    const ptrdiff_t ohw = (ptrdiff_t)oh * ow, hw = (ptrdiff_t)h * w;
    const ptrdiff_t rows = (ptrdiff_t)s->c * khw, jobs = rows * nb;
    const bool pointwise = conv_is_pointwise(s);
    #pragma omp parallel for schedule(static) if (jobs * ohw > CONV_PAR_MIN)
    for (ptrdiff_t j = 0; j < jobs; j++) {
        const ptrdiff_t r = j / nb, b = j % nb;
        const int ci = (int)(r / khw), ky = (int)(r % khw) / kw, kx = (int)(r % kw);
        const float *plane = img + (b * s->c + ci) * hw;
        float *dst = col + r * ldc + b * ohw;
        if (pointwise) {
            memcpy(dst, plane, (size_t)hw * sizeof *dst);
            continue;
        }
        const int xoff = kx * s->dw - s->pw;
        int xlo, xhi;
        tap_range(xoff, s->sw, w, ow, &xlo, &xhi);
        for (int oy = 0; oy < oh; oy++, dst += ow) {
            const int iy = oy * s->sh - s->ph + ky * s->dh;
            if (iy < 0 || iy >= h || xlo == xhi) {
                memset(dst, 0, (size_t)ow * sizeof *dst);
                continue;
            }
            const float *row = plane + (ptrdiff_t)iy * w;
            memset(dst, 0, (size_t)xlo * sizeof *dst);
            if (s->sw == 1) {
                memcpy(dst + xlo, row + xlo + xoff, (size_t)(xhi - xlo) * sizeof *dst);
            } else {
                for (int ox = xlo; ox < xhi; ox++)
                    dst[ox] = row[ox * s->sw + xoff];
            }
            memset(dst + xhi, 0, (size_t)(ow - xhi) * sizeof *dst);
        }
    }
}

/* img (nb, C, H, W) += col2im(col (C*KH*KW, ldc)), image b from columns
 * [b*OH*OW, (b+1)*OH*OW); one thread per (image, channel) plane. */
static void col2im_add(float *img, const float *col, ptrdiff_t ldc, int nb, const conv_shape *s)
{
    const int kh = s->kh, kw = s->kw, khw = kh * kw;
    const int oh = s->oh, ow = s->ow, h = s->h, w = s->w;
    const ptrdiff_t ohw = (ptrdiff_t)oh * ow, hw = (ptrdiff_t)h * w;
    const ptrdiff_t jobs = (ptrdiff_t)nb * s->c;
    const bool pointwise = conv_is_pointwise(s);
    #pragma omp parallel for schedule(static) if (jobs * khw * ohw > CONV_PAR_MIN)
    for (ptrdiff_t j = 0; j < jobs; j++) {
        const ptrdiff_t b = j / s->c, ci = j % s->c;
        float *restrict plane = img + j * hw;
        const float *src_b = col + ci * khw * ldc + b * ohw;
        if (pointwise) {
            for (ptrdiff_t i = 0; i < hw; i++)
                plane[i] += src_b[i];
            continue;
        }
        for (int ky = 0; ky < kh; ky++) {
            for (int kx = 0; kx < kw; kx++) {
                const int xoff = kx * s->dw - s->pw;
                const float *src = src_b + (ptrdiff_t)(ky * kw + kx) * ldc;
                int xlo, xhi;
                tap_range(xoff, s->sw, w, ow, &xlo, &xhi);
                for (int oy = 0; oy < oh; oy++) {
                    const int iy = oy * s->sh - s->ph + ky * s->dh;
                    if (iy < 0 || iy >= h)
                        continue;
                    float *restrict row = plane + (ptrdiff_t)iy * w;
                    const float *restrict srow = src + (ptrdiff_t)oy * ow;
                    if (s->sw == 1) {
                        for (int ox = xlo; ox < xhi; ox++)
                            row[ox + xoff] += srow[ox];
                    } else {
                        for (int ox = xlo; ox < xhi; ox++)
                            row[ox * s->sw + xoff] += srow[ox];
                    }
                }
            }
        }
    }
}

/* mat (oc, ldm) <- nb images x (nb, oc, OH*OW) side by side. */
static void gather_chunk(float *mat, ptrdiff_t ldm, const float *x, int nb, int oc, ptrdiff_t ohw)
{
    const ptrdiff_t jobs = (ptrdiff_t)oc * nb;
    #pragma omp parallel for schedule(static) if (jobs * ohw > CONV_PAR_MIN)
    for (ptrdiff_t j = 0; j < jobs; j++) {
        const ptrdiff_t o = j / nb, b = j % nb;
        memcpy(mat + o * ldm + b * ohw, x + (b * oc + o) * ohw, (size_t)ohw * sizeof *mat);
    }
}

/* x (nb, oc, OH*OW) <- mat (oc, ldm) [+ bias], the inverse of gather_chunk. */
static void scatter_chunk(float *x, const float *mat, ptrdiff_t ldm, const float *bias,
                          int nb, int oc, ptrdiff_t ohw)
{
    const ptrdiff_t jobs = (ptrdiff_t)nb * oc;
    #pragma omp parallel for schedule(static) if (jobs * ohw > CONV_PAR_MIN)
    for (ptrdiff_t j = 0; j < jobs; j++) {
        const ptrdiff_t b = j / oc, o = j % oc;
        float *restrict dst = x + j * ohw;
        const float *restrict src = mat + o * ldm + b * ohw;
        if (bias == NULL) {
            memcpy(dst, src, (size_t)ohw * sizeof *dst);
        } else {
            const float bv = bias[o];
            for (ptrdiff_t i = 0; i < ohw; i++)
                dst[i] = src[i] + bv;
        }
    }
}

/* x (nb, oc, OH*OW) += bias[o], in place. */
static void add_bias(float *x, const float *bias, int nb, int oc, ptrdiff_t ohw)
{
    const ptrdiff_t jobs = (ptrdiff_t)nb * oc;
    #pragma omp parallel for schedule(static) if (jobs * ohw > CONV_PAR_MIN)
    for (ptrdiff_t j = 0; j < jobs; j++) {
        float *restrict dst = x + j * ohw;
        const float bv = bias[j % oc];
        for (ptrdiff_t i = 0; i < ohw; i++)
            dst[i] += bv;
    }
}

/* out (N,oc,OH,OW) = per chunk and group g: W_g (oc/G, K) @ col_g (K, nb*OH*OW)
 * [+ bias], K = (c/G)*KH*KW, W_g rows ldw = w_cin_full*KH*KW apart. */
static void conv_gemm_forward(float *out, const float *inp, const float *weight,
                              const float *bias, const conv_shape *s, float *scratch)
{
    const int groups = s->groups, cg = s->c / groups, ocg = s->oc / groups;
    const int ldw = s->w_cin_full * s->kh * s->kw, k = cg * s->kh * s->kw;
    const ptrdiff_t ohw = (ptrdiff_t)s->oh * s->ow, hw = (ptrdiff_t)s->h * s->w;
    const ptrdiff_t rows = (ptrdiff_t)s->c * s->kh * s->kw;
    const bool pointwise = conv_is_pointwise(s);
    const int chunk = conv_chunk(s);

    for (int n0 = 0; n0 < s->n; n0 += chunk) {
        const int nb = DMCP_MIN(chunk, s->n - n0);
        const ptrdiff_t ldc = nb * ohw;
        const float *img = inp + (ptrdiff_t)n0 * s->c * hw;
        float *out_n = out + (ptrdiff_t)n0 * s->oc * ohw;
        /* one image writes its output in place; a chunk goes through res */
        float *res = chunk == 1 ? out_n : scratch + rows * ldc;
        const float *col = img;
        if (!(pointwise && chunk == 1)) {
            im2col(scratch, ldc, img, nb, s);
            col = scratch;
        }
        for (int g = 0; g < groups; g++) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ocg, (int)ldc, k,
                        1.0f, weight + (ptrdiff_t)g * ocg * ldw, ldw,
                        col + (ptrdiff_t)g * k * ldc, (int)ldc,
                        0.0f, res + (ptrdiff_t)g * ocg * ldc, (int)ldc);
        }
        if (chunk != 1)
            scatter_chunk(out_n, res, ldc, bias, nb, s->oc, ohw);
        else if (bias != NULL)
            add_bias(out_n, bias, 1, s->oc, ohw);
    }
}

/* Per chunk and group: dW_g += dout_g (oc/G, nb*OH*OW) @ col_g^T;
 * dcol_g = W_g^T @ dout_g, then col2im into dinp (pointwise, one image:
 * straight into dinp with beta = 1).  dcol_g overwrites col_g once dW_g has
 * used it. */
static void conv_gemm_backward(float *dinp, float *dweight, const float *dout,
                               const float *inp, const float *weight,
                               const conv_shape *s, float *scratch)
{
    const int groups = s->groups, cg = s->c / groups, ocg = s->oc / groups;
    const int ldw = s->w_cin_full * s->kh * s->kw, k = cg * s->kh * s->kw;
    const ptrdiff_t ohw = (ptrdiff_t)s->oh * s->ow, hw = (ptrdiff_t)s->h * s->w;
    const ptrdiff_t rows = (ptrdiff_t)s->c * s->kh * s->kw;
    const bool pointwise = conv_is_pointwise(s);
    const bool in_place = pointwise && conv_chunk(s) == 1;
    const int chunk = conv_chunk(s);

    for (int n0 = 0; n0 < s->n; n0 += chunk) {
        const int nb = DMCP_MIN(chunk, s->n - n0);
        const ptrdiff_t ldc = nb * ohw;
        const float *img = inp != NULL ? inp + (ptrdiff_t)n0 * s->c * hw : NULL;
        float *dinp_n = dinp != NULL ? dinp + (ptrdiff_t)n0 * s->c * hw : NULL;
        const float *dy = dout + (ptrdiff_t)n0 * s->oc * ohw;
        if (chunk != 1) {
            float *dmat = scratch + rows * ldc;
            gather_chunk(dmat, ldc, dy, nb, s->oc, ohw);
            dy = dmat;
        }
        const float *col = in_place ? img : scratch;
        if (dweight != NULL && !in_place)
            im2col(scratch, ldc, img, nb, s);
        for (int g = 0; g < groups; g++) {
            const float *dy_g = dy + (ptrdiff_t)g * ocg * ldc;
            const ptrdiff_t col_off = (ptrdiff_t)g * k * ldc;
            if (dweight != NULL) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ocg, k, (int)ldc,
                            1.0f, dy_g, (int)ldc, col + col_off, (int)ldc,
                            1.0f, dweight + (ptrdiff_t)g * ocg * ldw, ldw);
            }
            if (dinp_n != NULL) {
                float *dst = in_place ? dinp_n + col_off : scratch + col_off;
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, (int)ldc, ocg,
                            1.0f, weight + (ptrdiff_t)g * ocg * ldw, ldw, dy_g, (int)ldc,
                            in_place ? 1.0f : 0.0f, dst, (int)ldc);
            }
        }
        if (dinp_n != NULL && !in_place)
            col2im_add(dinp_n, scratch, ldc, nb, s);
    }
}

/* ---- small convs: tiles in cache + register-blocked micro-kernel ----
 *
 * For layers whose per-group weights fit in cache, one OpenMP region runs the
 * whole call without OpenBLAS.  The batch is cut into a fixed number of slots
 * (CONV_SLOTS, independent of the thread count); each slot walks its images'
 * output pixels in tiles and multiplies them with conv_kernel, whose operands
 * are rows found through offset tables.  Two ways to form the tiles:
 *   stride 1 ("padded"): the slot copies one image's group into zero-padded
 *     planes; output pixel f of a grid as wide as a padded row reads tap r at
 *     plane + f + off[r], so the column matrix is never built (implicit GEMM;
 *     the grid's columns past OW are computed and dropped).  Backward-data is
 *     the same kind of conv over zero-padded dout with flipped weights.
 *   otherwise ("im2col"): the tile's column matrix is built in cache, packed
 *     into CONV_NR-wide panels, and backward-data goes through col2im.
 *   forward        out (oc, px) = W (oc, K) @ col (K, px)
 *   backward-data  dinp = W'(c, oc*KH*KW) @ dout_padded  |  col2im(W^T @ dout)
 *   backward-weight dW^T_slot (K, oc) += col (K, px) @ dout^T (px, oc)
 * Weight gradients are summed per slot, then over the slots in a fixed order,
 * so no result depends on the thread count. */

#define CONV_MR 6              /* micro-tile rows */
#define CONV_NR 16             /* micro-tile columns (two 8-float vectors) */
#define CONV_SLOTS 8           /* batch slices; also the weight-gradient partial sums */
#ifndef CONV_TILE_FLOATS
#define CONV_TILE_FLOATS (1 << 16)  /* target column-tile size (256 KB) */
#endif
#ifndef CONV_TILE_PX
#define CONV_TILE_PX 512       /* target output pixels per tile */
#endif
#ifndef CONV_TILED_MAX_W
#define CONV_TILED_MAX_W (1 << 16)  /* largest (oc/G)*(c/G)*KH*KW for the tiled path */
#endif
#define CONV_TILED_MAX_K 2048  /* longest micro-kernel reduction (offset tables live on the stack) */

static ptrdiff_t round_up(ptrdiff_t x, ptrdiff_t m) { return (x + m - 1) / m * m; }

/* Zero-padded planes and the output grid that reads them (padded mode). */
typedef struct {
    int hp, wp;                /* padded plane */
    ptrdiff_t pl;              /* plane stride: hp*wp plus zero slack */
    int top, left;             /* where the source sits in the plane */
    int orows, ocols;          /* output grid rows; valid columns of its wp */
    int trows, ntp;            /* output rows per tile; tile columns, a multiple of NR */
} pad_grid;

/* Sizes of the tiled path, all derived from the shape. */
typedef struct {
    int slots;                 /* batch slices */
    int k, kpad;               /* (c/G)*KH*KW, rounded up to CONV_MR */
    int ocg, ocpad, ocpad16;   /* oc/G, rounded up to CONV_MR and to CONV_NR */
    int cg, cgpad, kb;         /* c/G, rounded up to CONV_MR; (oc/G)*KH*KW */
    bool padded;               /* padded mode, else im2col mode */
    pad_grid fg, bg;           /* padded: forward/weight grid over inp, backward-data over dout */
    int ntp;                   /* im2col mode: pixels per tile */
    ptrdiff_t wpack;           /* floats of packed weights, all groups */
    ptrdiff_t src, col, pan, res, dwt;   /* floats of each per-slot buffer */
} conv_tiling;

/* Grid of `orows` x wp outputs over planes hp x wp; tiles of whole rows. */
static bool pad_grid_init(pad_grid *g, int hp, int wp, int top, int left, int orows, int ocols,
                          int kw, int dw, int kpad)
{
    g->hp = hp;
    g->wp = wp;
    g->top = top;
    g->left = left;
    g->orows = orows;
    g->ocols = ocols;
    g->pl = (ptrdiff_t)hp * wp + (ptrdiff_t)(kw - 1) * dw + CONV_NR;
    const ptrdiff_t nt = DMCP_MIN((ptrdiff_t)CONV_TILE_PX, CONV_TILE_FLOATS / kpad);
    int rows = (int)DMCP_MAX(1, DMCP_MIN(nt / wp, (ptrdiff_t)orows));
    const int tiles = (orows + rows - 1) / rows;
    g->trows = (orows + tiles - 1) / tiles;
    g->ntp = (int)round_up((ptrdiff_t)g->trows * wp, CONV_NR);
    return g->ntp <= CONV_TILED_MAX_K;
}

static conv_tiling conv_tiling_of(const conv_shape *s)
{
    conv_tiling t;
    const ptrdiff_t ohw = (ptrdiff_t)s->oh * s->ow;
    const int khw = s->kh * s->kw;
    t.slots = DMCP_MIN(s->n, CONV_SLOTS);
    t.cg = s->c / s->groups;
    t.cgpad = (int)round_up(t.cg, CONV_MR);
    t.k = t.cg * khw;
    t.kpad = (int)round_up(t.k, CONV_MR);
    t.ocg = s->oc / s->groups;
    t.ocpad = (int)round_up(t.ocg, CONV_MR);
    t.ocpad16 = (int)round_up(t.ocg, CONV_NR);
    t.kb = t.ocg * khw;

    /* padded mode: stride 1, the dout placement of backward-data inside its
     * plane (ph <= (KH-1)*dh, same for w), tables and offsets in range */
    t.padded = s->sh == 1 && s->sw == 1 && s->ph <= (s->kh - 1) * s->dh &&
               s->pw <= (s->kw - 1) * s->dw && t.kb <= CONV_TILED_MAX_K;
    if (t.padded) {
        t.padded = pad_grid_init(&t.fg, s->h + 2 * s->ph, s->w + 2 * s->pw, s->ph, s->pw,
                                 s->oh, s->ow, s->kw, s->dw, t.kpad) &&
                   pad_grid_init(&t.bg, s->h + (s->kh - 1) * s->dh, s->w + (s->kw - 1) * s->dw,
                                 (s->kh - 1) * s->dh - s->ph, (s->kw - 1) * s->dw - s->pw,
                                 s->h, s->w, s->kw, s->dw, (int)round_up(t.kb, CONV_MR)) &&
                   (ptrdiff_t)t.cg * t.fg.pl < INT_MAX && (ptrdiff_t)t.ocg * t.bg.pl < INT_MAX;
    }
    if (t.padded) {
        t.ntp = 0;
        t.src = round_up(DMCP_MAX((ptrdiff_t)t.cg * t.fg.pl, (ptrdiff_t)t.ocg * t.bg.pl), CONV_NR);
        t.col = 0;
        t.pan = (ptrdiff_t)t.ocpad16 * t.fg.ntp;
        t.res = DMCP_MAX((ptrdiff_t)t.ocpad * t.fg.ntp, (ptrdiff_t)t.cgpad * t.bg.ntp);
    } else {
        /* pixels of a slot: the largest slot holds ceil(n/slots) images */
        const ptrdiff_t q = (ptrdiff_t)((s->n + t.slots - 1) / t.slots) * ohw;
        ptrdiff_t nt = DMCP_MIN((ptrdiff_t)CONV_TILE_PX, CONV_TILE_FLOATS / t.kpad);
        nt = DMCP_MAX(CONV_NR, nt / CONV_NR * CONV_NR);
        if (nt >= q) {
            nt = round_up(q, CONV_NR);
        } else {               /* even tiles, so the last one is not a sliver */
            const ptrdiff_t tiles = (q + nt - 1) / nt;
            nt = round_up((q + tiles - 1) / tiles, CONV_NR);
        }
        t.ntp = (int)nt;
        t.src = 0;
        t.col = (ptrdiff_t)DMCP_MAX(t.kpad, t.ocg) * t.ntp;
        t.pan = (ptrdiff_t)DMCP_MAX(t.kpad, t.ocpad16) * t.ntp;
        t.res = (ptrdiff_t)DMCP_MAX(t.ocpad, t.kpad) * t.ntp;
    }
    t.wpack = (ptrdiff_t)s->groups * DMCP_MAX(DMCP_MAX((ptrdiff_t)t.ocpad * t.k,
                                                       (ptrdiff_t)t.kpad * t.ocg),
                                              (ptrdiff_t)t.cgpad * t.kb);
    t.wpack = round_up(t.wpack, CONV_NR);
    t.res = round_up(t.res, CONV_NR);
    t.dwt = (ptrdiff_t)s->groups * t.kpad * t.ocpad16;
    return t;
}

static bool conv_is_tiled(const conv_shape *s)
{
    const ptrdiff_t k = (ptrdiff_t)(s->c / s->groups) * s->kh * s->kw;
    if (s->n < 2 || k > CONV_TILED_MAX_K || s->oc / s->groups > CONV_TILED_MAX_K ||
        (ptrdiff_t)(s->oc / s->groups) * k > CONV_TILED_MAX_W)
        return false;
    const conv_tiling t = conv_tiling_of(s);
    return t.padded || t.ntp <= CONV_TILED_MAX_K;
}

static ptrdiff_t conv_slot_floats(const conv_tiling *t)
{
    return t->src + t->col + t->pan + t->res + t->dwt;
}

static ptrdiff_t conv_tiled_scratch(const conv_shape *s)
{
    const conv_tiling t = conv_tiling_of(s);
    return t.wpack + t.slots * conv_slot_floats(&t);
}

/* GCC fuses a*b + c into FMA only with -ffp-contract=fast, which -std=c11
 * turns off; the micro-kernel asks for it (clang fuses within an expression). */
#if defined(__GNUC__) && !defined(__clang__)
#define CONV_FMA_CONTRACT __attribute__((optimize("fp-contract=fast")))
#else
#define CONV_FMA_CONTRACT
#endif

/* 8 floats in one vector register; alignment 4, so any float pointer will do. */
typedef float conv_v8 __attribute__((vector_size(32), aligned(4)));

/* c (MR, NR) = or += A (MR, k) @ B (k, NR).  Row i of A is a + aoff[i] (k
 * consecutive floats), row p of B is b + boff[p] (NR consecutive floats); c
 * rows are ldc apart.  The MR x NR sums stay in registers. */
CONV_FMA_CONTRACT
static void conv_kernel(int k, const float *restrict a, const int *restrict aoff,
                        const float *restrict b, const int *restrict boff,
                        float *restrict c, ptrdiff_t ldc, bool add)
{
    const float *ar[CONV_MR];
    conv_v8 acc[CONV_MR][2];
    for (int i = 0; i < CONV_MR; i++) {
        ar[i] = a + aoff[i];
        acc[i][0] = acc[i][1] = (conv_v8){0};
    }
    for (int p = 0; p < k; p++) {
        const float *bp = b + boff[p];
        const conv_v8 b0 = *(const conv_v8 *)bp, b1 = *(const conv_v8 *)(bp + 8);
        for (int i = 0; i < CONV_MR; i++) {
            const float ai = ar[i][p];
            acc[i][0] += ai * b0;
            acc[i][1] += ai * b1;
        }
    }
    for (int i = 0; i < CONV_MR; i++) {
        conv_v8 *ci = (conv_v8 *)(c + i * ldc);
        if (add) {
            ci[0] += acc[i][0];
            ci[1] += acc[i][1];
        } else {
            ci[0] = acc[i][0];
            ci[1] = acc[i][1];
        }
    }
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
                      const float *src, const int *boff, const int *aoff)
{
    for (int jp = 0; jp < nt; jp += CONV_NR)
        for (int i0 = 0; i0 < mpad; i0 += CONV_MR)
            conv_kernel(k, wp + (ptrdiff_t)i0 * k, aoff, src + jp, boff,
                        res + (ptrdiff_t)i0 * ntp + jp, ntp, false);
}

/* ---- padded mode ---- */

/* planes (np, grid) <- src planes (np, h, w) placed at (top, left), zeros elsewhere. */
static void pad_planes(float *dst, const float *src, int np, int h, int w, const pad_grid *g)
{
    for (int i = 0; i < np; i++) {
        float *pd = dst + (ptrdiff_t)i * g->pl;
        const float *ps = src + (ptrdiff_t)i * h * w;
        memset(pd, 0, (size_t)g->top * g->wp * sizeof *pd);
        for (int y = 0; y < h; y++) {
            float *row = pd + (ptrdiff_t)(g->top + y) * g->wp;
            memset(row, 0, (size_t)g->left * sizeof *row);
            memcpy(row + g->left, ps + (ptrdiff_t)y * w, (size_t)w * sizeof *row);
            memset(row + g->left + w, 0, (size_t)(g->wp - g->left - w) * sizeof *row);
        }
        const ptrdiff_t used = (ptrdiff_t)(g->top + h) * g->wp;
        memset(pd + used, 0, (size_t)(g->pl - used) * sizeof *pd);
    }
}

/* off[r] for r = (ci*KH + ky)*KW + kx < np*KH*KW: ci*pl + ky*dh*wp + kx*dw;
 * entries up to round_up(n, MR) are 0. */
static void tap_offsets(int *off, int np, const pad_grid *g, const conv_shape *s)
{
    const int khw = s->kh * s->kw, n = np * khw;
    for (int r = 0; r < n; r++) {
        const int ci = r / khw, ky = (r % khw) / s->kw, kx = r % s->kw;
        off[r] = (int)(ci * g->pl) + ky * s->dh * g->wp + kx * s->dw;
    }
    for (int r = n; r < round_up(n, CONV_MR); r++)
        off[r] = 0;
}

static void padded_forward_slot(float *o, const float *img, int nb, const float *wpack,
                                const float *bias, const conv_shape *s, const conv_tiling *t,
                                float *src, float *res)
{
    const pad_grid *g = &t->fg;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    int boff[CONV_TILED_MAX_K + CONV_MR], aoff[CONV_MR];
    tap_offsets(boff, t->cg, g, s);
    linear_offsets(aoff, CONV_MR, t->k);
    for (int b = 0; b < nb; b++) {
        for (int gi = 0; gi < s->groups; gi++) {
            pad_planes(src, img + ((ptrdiff_t)b * s->c + gi * t->cg) * hw, t->cg, s->h, s->w, g);
            for (int oy0 = 0; oy0 < g->orows; oy0 += g->trows) {
                const int rows = DMCP_MIN(g->trows, g->orows - oy0);
                tile_gemm(res, g->ntp, rows * g->wp, wpack + (ptrdiff_t)gi * t->ocpad * t->k,
                          t->ocpad, t->k, src + (ptrdiff_t)oy0 * g->wp, boff, aoff);
                for (int oo = 0; oo < t->ocg; oo++) {
                    const int oc_i = gi * t->ocg + oo;
                    const float bv = bias != NULL ? bias[oc_i] : 0.0f;
                    for (int y = 0; y < rows; y++) {
                        float *restrict dst = o + ((ptrdiff_t)b * s->oc + oc_i) * ohw
                                            + (ptrdiff_t)(oy0 + y) * s->ow;
                        const float *restrict sr = res + (ptrdiff_t)oo * g->ntp + (ptrdiff_t)y * g->wp;
                        for (int x = 0; x < s->ow; x++)
                            dst[x] = sr[x] + bv;
                    }
                }
            }
        }
    }
}

static void padded_backward_slot(float *dimg, float *dwt, const float *dy, const float *img,
                                 int nb, const float *wtpack, const conv_shape *s,
                                 const conv_tiling *t, float *src, float *pan, float *res)
{
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    int off[CONV_TILED_MAX_K + CONV_MR], lin[CONV_TILED_MAX_K];
    for (int b = 0; b < nb; b++) {
        for (int gi = 0; gi < s->groups; gi++) {
            const float *dyg = dy + ((ptrdiff_t)b * s->oc + gi * t->ocg) * ohw;
            if (dwt != NULL) {
                /* dW^T (kpad, ocpad16) += taps of the padded input (A rows at
                 * off) @ dout^T tile as panels (ocpad16/NR, ntp, NR) */
                const pad_grid *g = &t->fg;
                tap_offsets(off, t->cg, g, s);
                linear_offsets(lin, g->ntp, CONV_NR);
                pad_planes(src, img + ((ptrdiff_t)b * s->c + gi * t->cg) * hw, t->cg, s->h, s->w, g);
                float *dwg = dwt + (ptrdiff_t)gi * t->kpad * t->ocpad16;
                for (int oy0 = 0; oy0 < g->orows; oy0 += g->trows) {
                    const int rows = DMCP_MIN(g->trows, g->orows - oy0);
                    const int ntx = (int)round_up((ptrdiff_t)rows * g->wp, CONV_NR);
                    memset(pan, 0, (size_t)t->ocpad16 * g->ntp * sizeof *pan);
                    for (int oo = 0; oo < t->ocg; oo++) {
                        float *dst = pan + (ptrdiff_t)(oo / CONV_NR) * g->ntp * CONV_NR + oo % CONV_NR;
                        for (int y = 0; y < rows; y++) {
                            const float *sr = dyg + (ptrdiff_t)oo * ohw + (ptrdiff_t)(oy0 + y) * s->ow;
                            float *d = dst + (ptrdiff_t)y * g->wp * CONV_NR;
                            for (int x = 0; x < s->ow; x++)
                                d[(ptrdiff_t)x * CONV_NR] = sr[x];
                        }
                    }
                    const float *a = src + (ptrdiff_t)oy0 * g->wp;
                    for (int i0 = 0; i0 < t->kpad; i0 += CONV_MR)
                        for (int op = 0; op < t->ocpad16; op += CONV_NR)
                            conv_kernel(ntx, a, off + i0, pan + (ptrdiff_t)op * g->ntp, lin,
                                        dwg + (ptrdiff_t)i0 * t->ocpad16 + op, t->ocpad16, true);
                }
            }
            if (dimg != NULL) {
                /* dinp (cg, H, W) += W' (cgpad, ocg*KH*KW) @ taps of padded dout */
                const pad_grid *g = &t->bg;
                int aoff[CONV_MR];
                tap_offsets(off, t->ocg, g, s);
                linear_offsets(aoff, CONV_MR, t->kb);
                pad_planes(src, dyg, t->ocg, s->oh, s->ow, g);
                for (int iy0 = 0; iy0 < g->orows; iy0 += g->trows) {
                    const int rows = DMCP_MIN(g->trows, g->orows - iy0);
                    tile_gemm(res, g->ntp, rows * g->wp, wtpack + (ptrdiff_t)gi * t->cgpad * t->kb,
                              t->cgpad, t->kb, src + (ptrdiff_t)iy0 * g->wp, off, aoff);
                    for (int ci = 0; ci < t->cg; ci++) {
                        for (int y = 0; y < rows; y++) {
                            float *restrict dst = dimg + ((ptrdiff_t)b * s->c + gi * t->cg + ci) * hw
                                                + (ptrdiff_t)(iy0 + y) * s->w;
                            const float *restrict sr = res + (ptrdiff_t)ci * g->ntp + (ptrdiff_t)y * g->wp;
                            for (int x = 0; x < s->w; x++)
                                dst[x] += sr[x];
                        }
                    }
                }
            }
        }
    }
}

/* ---- im2col mode ---- */

/* A run of output pixels of one output row of one image, inside a tile that
 * starts at flat pixel q0 (flat over the slot's images): tile columns
 * [j, j+len) are pixels (b, oy, ox .. ox+len-1). */
typedef struct { int b, oy, ox, len, j, nt; } px_run;

static px_run run_first(ptrdiff_t q0, int nt, const conv_shape *s)
{
    const ptrdiff_t ohw = (ptrdiff_t)s->oh * s->ow;
    const int p = (int)(q0 % ohw);
    px_run u = {(int)(q0 / ohw), p / s->ow, p % s->ow, 0, 0, nt};
    u.len = DMCP_MIN(s->ow - u.ox, nt);
    return u;
}

static void run_next(px_run *u, const conv_shape *s)
{
    u->j += u->len;
    u->ox += u->len;
    if (u->ox == s->ow) {
        u->ox = 0;
        if (++u->oy == s->oh) {
            u->oy = 0;
            u->b++;
        }
    }
    u->len = DMCP_MIN(s->ow - u->ox, u->nt - u->j);
}

#define FOR_RUNS(u, q0, nt, s) for (px_run u = run_first(q0, nt, s); u.j < (nt); run_next(&u, s))

/* col (k, ldc) <- column tile of one group: row r = (ci*KH + ky)*KW + kx for
 * channels c0 + ci, columns j < nt the tile's pixels, [nt, ntp) zero.
 * img holds the slot's images (nb, C, H, W). */
static void im2col_tile(float *col, ptrdiff_t ldc, const float *img, int c0,
                        ptrdiff_t q0, int nt, int ntp, int k, const conv_shape *s)
{
    const int khw = s->kh * s->kw;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w;
    for (int r = 0; r < k; r++) {
        const int ci = c0 + r / khw, ky = (r % khw) / s->kw, kx = r % s->kw;
        const int xoff = kx * s->dw - s->pw;
        int xlo, xhi;
        tap_range(xoff, s->sw, s->w, s->ow, &xlo, &xhi);
        float *crow = col + (ptrdiff_t)r * ldc;
        FOR_RUNS(u, q0, nt, s) {
            float *restrict dst = crow + u.j;
            const int iy = u.oy * s->sh - s->ph + ky * s->dh;
            const int a = DMCP_MIN(DMCP_MAX(xlo - u.ox, 0), u.len);
            const int e = (iy < 0 || iy >= s->h) ? a : DMCP_MIN(DMCP_MAX(xhi - u.ox, a), u.len);
            const float *restrict row = img + ((ptrdiff_t)u.b * s->c + ci) * hw + (ptrdiff_t)iy * s->w;
            for (int i = 0; i < a; i++)
                dst[i] = 0.0f;
            if (s->sw == 1) {
                const float *restrict sp = row + u.ox + xoff;
                for (int i = a; i < e; i++)
                    dst[i] = sp[i];
            } else {
                for (int i = a; i < e; i++)
                    dst[i] = row[(u.ox + i) * s->sw + xoff];
            }
            for (int i = e; i < u.len; i++)
                dst[i] = 0.0f;
        }
        for (int j = nt; j < ntp; j++)
            crow[j] = 0.0f;
    }
}

/* dimg (slot's images, channels from c0) += col2im(dcol (k, ldd)). */
static void col2im_tile_add(float *dimg, int c0, const float *dcol, ptrdiff_t ldd,
                            ptrdiff_t q0, int nt, int k, const conv_shape *s)
{
    const int khw = s->kh * s->kw;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w;
    for (int r = 0; r < k; r++) {
        const int ci = c0 + r / khw, ky = (r % khw) / s->kw, kx = r % s->kw;
        const int xoff = kx * s->dw - s->pw;
        int xlo, xhi;
        tap_range(xoff, s->sw, s->w, s->ow, &xlo, &xhi);
        FOR_RUNS(u, q0, nt, s) {
            const int iy = u.oy * s->sh - s->ph + ky * s->dh;
            if (iy < 0 || iy >= s->h)
                continue;
            const int a = DMCP_MIN(DMCP_MAX(xlo - u.ox, 0), u.len);
            const int e = DMCP_MIN(DMCP_MAX(xhi - u.ox, a), u.len);
            const float *restrict sp = dcol + (ptrdiff_t)r * ldd + u.j;
            float *restrict row = dimg + ((ptrdiff_t)u.b * s->c + ci) * hw + (ptrdiff_t)iy * s->w;
            if (s->sw == 1) {
                float *restrict dst = row + u.ox + xoff;
                for (int i = a; i < e; i++)
                    dst[i] += sp[i];
            } else {
                for (int i = a; i < e; i++)
                    row[(u.ox + i) * s->sw + xoff] += sp[i];
            }
        }
    }
}

/* pan (ntp/NR panels of (rows, NR)) <- mat (rows, ldm), ntp columns. */
static void pack_panels(float *restrict pan, const float *restrict mat, ptrdiff_t ldm,
                        int rows, int ntp)
{
    for (int jp = 0; jp < ntp; jp += CONV_NR)
        for (int r = 0; r < rows; r++)
            memcpy(pan + (ptrdiff_t)jp * rows + (ptrdiff_t)r * CONV_NR, mat + r * ldm + jp,
                   CONV_NR * sizeof *pan);
}

/* Forward over one slot: images img (nb, c, H, W) -> o (nb, oc, OH, OW). */
static void tiled_forward_slot(float *o, const float *img, int nb, const float *wpack,
                               const float *bias, const conv_shape *s, const conv_tiling *t,
                               float *col, float *pan, float *res)
{
    const ptrdiff_t ohw = (ptrdiff_t)s->oh * s->ow, q = nb * ohw;
    const int k = t->k, ntp = t->ntp;
    int boff[CONV_TILED_MAX_K], aoff[CONV_MR];
    linear_offsets(boff, k, CONV_NR);
    linear_offsets(aoff, CONV_MR, k);
    for (ptrdiff_t q0 = 0; q0 < q; q0 += ntp) {
        const int nt = (int)DMCP_MIN((ptrdiff_t)ntp, q - q0);
        for (int g = 0; g < s->groups; g++) {
            im2col_tile(col, ntp, img, g * t->cg, q0, nt, ntp, k, s);
            pack_panels(pan, col, ntp, k, ntp);
            /* panel jp starts at pan + jp*k: B rows there are NR apart */
            for (int jp = 0; jp < ntp; jp += CONV_NR)
                for (int i0 = 0; i0 < t->ocpad; i0 += CONV_MR)
                    conv_kernel(k, wpack + ((ptrdiff_t)g * t->ocpad + i0) * k, aoff,
                                pan + (ptrdiff_t)jp * k, boff,
                                res + (ptrdiff_t)i0 * ntp + jp, ntp, false);
            for (int oo = 0; oo < t->ocg; oo++) {
                const int oc_i = g * t->ocg + oo;
                const float bv = bias != NULL ? bias[oc_i] : 0.0f;
                const float *sr = res + (ptrdiff_t)oo * ntp;
                FOR_RUNS(u, q0, nt, s) {
                    float *restrict dst = o + ((ptrdiff_t)u.b * s->oc + oc_i) * ohw
                                        + (ptrdiff_t)u.oy * s->ow + u.ox;
                    for (int i = 0; i < u.len; i++)
                        dst[i] = sr[u.j + i] + bv;
                }
            }
        }
    }
}

/* Backward over one slot: dout dy (nb, oc, OH, OW); dimg (nb, c, H, W) += when
 * not NULL; dwt (G, kpad, ocpad16) += dW^T when not NULL. */
static void tiled_backward_slot(float *dimg, float *dwt, const float *dy, const float *img,
                                int nb, const float *wtpack, const conv_shape *s,
                                const conv_tiling *t, float *col, float *pan, float *res)
{
    const ptrdiff_t ohw = (ptrdiff_t)s->oh * s->ow, q = nb * ohw;
    const int k = t->k, ocg = t->ocg, ntp = t->ntp;
    int lin[CONV_TILED_MAX_K], aoff[CONV_MR], aoff_w[CONV_MR];
    linear_offsets(lin, DMCP_MAX(ntp, ocg), CONV_NR);
    linear_offsets(aoff, CONV_MR, ntp);
    linear_offsets(aoff_w, CONV_MR, ocg);
    for (ptrdiff_t q0 = 0; q0 < q; q0 += ntp) {
        const int nt = (int)DMCP_MIN((ptrdiff_t)ntp, q - q0);
        for (int g = 0; g < s->groups; g++) {
            if (dwt != NULL) {
                /* col tile (kpad, ntp), rows past k zero; dout tile transposed
                 * as panels (ocpad16/NR, ntp, NR), zero past ocg */
                im2col_tile(col, ntp, img, g * t->cg, q0, nt, ntp, k, s);
                memset(col + (ptrdiff_t)k * ntp, 0, (size_t)(t->kpad - k) * ntp * sizeof *col);
                memset(pan, 0, (size_t)t->ocpad16 * ntp * sizeof *pan);
                for (int oo = 0; oo < ocg; oo++) {
                    float *dst = pan + (ptrdiff_t)(oo / CONV_NR) * ntp * CONV_NR + oo % CONV_NR;
                    FOR_RUNS(u, q0, nt, s) {
                        const float *sr = dy + ((ptrdiff_t)u.b * s->oc + g * ocg + oo) * ohw
                                        + (ptrdiff_t)u.oy * s->ow + u.ox;
                        for (int i = 0; i < u.len; i++)
                            dst[(ptrdiff_t)(u.j + i) * CONV_NR] = sr[i];
                    }
                }
                float *dwg = dwt + (ptrdiff_t)g * t->kpad * t->ocpad16;
                for (int i0 = 0; i0 < t->kpad; i0 += CONV_MR)
                    for (int op = 0; op < t->ocpad16; op += CONV_NR)
                        conv_kernel(ntp, col + (ptrdiff_t)i0 * ntp, aoff, pan + (ptrdiff_t)op * ntp,
                                    lin, dwg + (ptrdiff_t)i0 * t->ocpad16 + op, t->ocpad16, true);
            }
            if (dimg != NULL) {
                /* dout tile (ocg, ntp) packed in panels; dcol = W^T @ it; col2im */
                for (int oo = 0; oo < ocg; oo++) {
                    float *dst = col + (ptrdiff_t)oo * ntp;
                    FOR_RUNS(u, q0, nt, s) {
                        memcpy(dst + u.j, dy + ((ptrdiff_t)u.b * s->oc + g * ocg + oo) * ohw
                                          + (ptrdiff_t)u.oy * s->ow + u.ox,
                               (size_t)u.len * sizeof *dst);
                    }
                    for (int j = nt; j < ntp; j++)
                        dst[j] = 0.0f;
                }
                pack_panels(pan, col, ntp, ocg, ntp);
                for (int jp = 0; jp < ntp; jp += CONV_NR)
                    for (int i0 = 0; i0 < t->kpad; i0 += CONV_MR)
                        conv_kernel(ocg, wtpack + ((ptrdiff_t)g * t->kpad + i0) * ocg, aoff_w,
                                    pan + (ptrdiff_t)jp * ocg, lin,
                                    res + (ptrdiff_t)i0 * ntp + jp, ntp, false);
                col2im_tile_add(dimg, g * t->cg, res, ntp, q0, nt, k, s);
            }
        }
    }
}

/* ---- tiled drivers ---- */

/* First image of slot i of `slots` over n images. */
static int slot_start(int i, int slots, int n) { return (int)((long long)n * i / slots); }

static void conv_tiled_forward(float *out, const float *inp, const float *weight,
                               const float *bias, const conv_shape *s, float *scratch)
{
    const conv_tiling t = conv_tiling_of(s);
    const int ldw = s->w_cin_full * s->kh * s->kw;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    const ptrdiff_t per_slot = conv_slot_floats(&t);
    float *wpack = scratch;
    /* W per group, (ocpad, k) with zero rows past ocg */
    for (int g = 0; g < s->groups; g++)
        for (int i = 0; i < t.ocpad; i++) {
            float *dst = wpack + ((ptrdiff_t)g * t.ocpad + i) * t.k;
            if (i < t.ocg)
                memcpy(dst, weight + (ptrdiff_t)(g * t.ocg + i) * ldw, (size_t)t.k * sizeof *dst);
            else
                memset(dst, 0, (size_t)t.k * sizeof *dst);
        }
    #pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < t.slots; i++) {
        float *buf = scratch + t.wpack + i * per_slot;
        float *src = buf, *col = src + t.src, *pan = col + t.col, *res = pan + t.pan;
        const int n0 = slot_start(i, t.slots, s->n), nb = slot_start(i + 1, t.slots, s->n) - n0;
        float *o = out + (ptrdiff_t)n0 * s->oc * ohw;
        const float *img = inp + (ptrdiff_t)n0 * s->c * hw;
        if (t.padded)
            padded_forward_slot(o, img, nb, wpack, bias, s, &t, src, res);
        else
            tiled_forward_slot(o, img, nb, wpack, bias, s, &t, col, pan, res);
    }
}

static void conv_tiled_backward(float *dinp, float *dweight, const float *dout,
                                const float *inp, const float *weight,
                                const conv_shape *s, float *scratch)
{
    const conv_tiling t = conv_tiling_of(s);
    const int ldw = s->w_cin_full * s->kh * s->kw, khw = s->kh * s->kw;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    const ptrdiff_t per_slot = conv_slot_floats(&t);
    float *wtpack = scratch;
    if (dinp != NULL && t.padded) {
        /* W' per group, (cgpad, ocg*KH*KW): W'[ci][(o*KH + ky)*KW + kx] =
         * W[o][ci][KH-1-ky][KW-1-kx], zero rows past cg */
        for (int g = 0; g < s->groups; g++) {
            float *wt = wtpack + (ptrdiff_t)g * t.cgpad * t.kb;
            for (int ci = 0; ci < t.cgpad; ci++)
                for (int r = 0; r < t.kb; r++) {
                    const int oo = r / khw, tap = khw - 1 - r % khw;
                    wt[(ptrdiff_t)ci * t.kb + r] = ci < t.cg
                        ? weight[(ptrdiff_t)(g * t.ocg + oo) * ldw + ci * khw + tap] : 0.0f;
                }
        }
    } else if (dinp != NULL) {
        /* W^T per group, (kpad, ocg) with zero rows past k */
        for (int g = 0; g < s->groups; g++) {
            float *wt = wtpack + (ptrdiff_t)g * t.kpad * t.ocg;
            for (int r = 0; r < t.kpad; r++)
                for (int oo = 0; oo < t.ocg; oo++)
                    wt[(ptrdiff_t)r * t.ocg + oo] =
                        r < t.k ? weight[(ptrdiff_t)(g * t.ocg + oo) * ldw + r] : 0.0f;
        }
    }
    #pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < t.slots; i++) {
        float *buf = scratch + t.wpack + i * per_slot;
        float *src = buf, *col = src + t.src, *pan = col + t.col, *res = pan + t.pan;
        float *dwt = dweight != NULL ? res + t.res : NULL;
        if (dwt != NULL)
            memset(dwt, 0, (size_t)t.dwt * sizeof *dwt);
        const int n0 = slot_start(i, t.slots, s->n), nb = slot_start(i + 1, t.slots, s->n) - n0;
        float *di = dinp != NULL ? dinp + (ptrdiff_t)n0 * s->c * hw : NULL;
        const float *dy = dout + (ptrdiff_t)n0 * s->oc * ohw;
        const float *img = inp != NULL ? inp + (ptrdiff_t)n0 * s->c * hw : NULL;
        if (t.padded)
            padded_backward_slot(di, dwt, dy, img, nb, wtpack, s, &t, src, pan, res);
        else
            tiled_backward_slot(di, dwt, dy, img, nb, wtpack, s, &t, col, pan, res);
    }
    if (dweight == NULL)
        return;
    /* dW[o][r] += sum over slots, in slot order, of dW^T_slot[r][o] */
    const ptrdiff_t dwt_at = t.wpack + t.src + t.col + t.pan + t.res;
    #pragma omp parallel for schedule(static) if ((ptrdiff_t)s->oc * t.k * t.slots > CONV_PAR_MIN)
    for (int o = 0; o < s->oc; o++) {
        const int g = o / t.ocg, oo = o % t.ocg;
        float *dst = dweight + (ptrdiff_t)o * ldw;
        for (int r = 0; r < t.k; r++) {
            float acc = 0.0f;
            for (int i = 0; i < t.slots; i++)
                acc += scratch[dwt_at + i * per_slot + ((ptrdiff_t)g * t.kpad + r) * t.ocpad16 + oo];
            dst[r] += acc;
        }
    }
}

/* ---- depthwise convs: direct loops ---- */

/* orow[ox] += sum over taps of wk * input, for output columns [xa, xb) of row oy
 * of one plane; ip (H,W), wk (KH,KW). */
static void dw_row_taps(float *restrict orow, const float *restrict ip,
                        const float *restrict wk, int oy, int xa, int xb,
                        const conv_shape *s)
{
    const int sw = s->sw;
    for (int ky = 0; ky < s->kh; ky++) {
        const int iy = oy * s->sh - s->ph + ky * s->dh;
        if (iy < 0 || iy >= s->h)
            continue;
        const float *irow = ip + (ptrdiff_t)iy * s->w;
        for (int kx = 0; kx < s->kw; kx++) {
            const int xoff = kx * s->dw - s->pw;
            const float wv = wk[ky * s->kw + kx];
            int lo, hi;
            tap_range(xoff, sw, s->w, s->ow, &lo, &hi);
            lo = DMCP_MAX(lo, xa);
            hi = DMCP_MIN(hi, xb);
            if (sw == 1) {
                for (int ox = lo; ox < hi; ox++)
                    orow[ox] += wv * irow[ox + xoff];
            } else {
                for (int ox = lo; ox < hi; ox++)
                    orow[ox] += wv * irow[ox * sw + xoff];
            }
        }
    }
}

/* op (OH,OW) = b + conv(ip (H,W), wk (KH,KW)) for one channel.  3x3 rows whose
 * three input rows exist take a fused 9-tap loop over the columns where every
 * tap is inside the image; the borders go through dw_row_taps. */
static void dw_forward_plane(float *restrict op, const float *restrict ip,
                             const float *restrict wk, float b, const conv_shape *s)
{
    const int ow = s->ow, w = s->w, sw = s->sw, dw = s->dw;
    int xl = 0, xr = 0;
    if (s->kh == 3 && s->kw == 3) {
        int lo0, hi0, lo2, hi2;
        tap_range(-s->pw, sw, w, ow, &lo0, &hi0);
        tap_range(2 * dw - s->pw, sw, w, ow, &lo2, &hi2);
        xl = lo0;
        xr = hi2;
    }
    for (int oy = 0; oy < s->oh; oy++) {
        float *restrict orow = op + (ptrdiff_t)oy * ow;
        for (int ox = 0; ox < ow; ox++)
            orow[ox] = b;
        const int iy0 = oy * s->sh - s->ph;
        const bool fused = xl < xr && iy0 >= 0 && iy0 + 2 * s->dh < s->h;
        if (!fused) {
            dw_row_taps(orow, ip, wk, oy, 0, ow, s);
            continue;
        }
        const int pw = s->pw;
        const float *r0 = ip + (ptrdiff_t)iy0 * w;
        const float *r1 = r0 + (ptrdiff_t)s->dh * w;
        const float *r2 = r1 + (ptrdiff_t)s->dh * w;
        const float w0 = wk[0], w1 = wk[1], w2 = wk[2];
        const float w3 = wk[3], w4 = wk[4], w5 = wk[5];
        const float w6 = wk[6], w7 = wk[7], w8 = wk[8];
        dw_row_taps(orow, ip, wk, oy, 0, xl, s);
        if (sw == 1) {
            for (int ox = xl; ox < xr; ox++) {
                const int x = ox - pw;
                orow[ox] += w0 * r0[x] + w1 * r0[x + dw] + w2 * r0[x + 2 * dw]
                          + w3 * r1[x] + w4 * r1[x + dw] + w5 * r1[x + 2 * dw]
                          + w6 * r2[x] + w7 * r2[x + dw] + w8 * r2[x + 2 * dw];
            }
        } else {
            for (int ox = xl; ox < xr; ox++) {
                const int x = ox * sw - pw;
                orow[ox] += w0 * r0[x] + w1 * r0[x + dw] + w2 * r0[x + 2 * dw]
                          + w3 * r1[x] + w4 * r1[x + dw] + w5 * r1[x + 2 * dw]
                          + w6 * r2[x] + w7 * r2[x + dw] + w8 * r2[x + 2 * dw];
            }
        }
        dw_row_taps(orow, ip, wk, oy, xr, ow, s);
    }
}

/* out (N,C,OH,OW), inp (N,C,H,W), weight rows of KH*KW, one per channel. */
static void dw_forward(float *out, const float *inp, const float *weight,
                       const float *bias, const conv_shape *s)
{
    const int khw = s->kh * s->kw, c = s->c;
    const ptrdiff_t planes = (ptrdiff_t)s->n * c;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    #pragma omp parallel for schedule(static) if (planes * ohw * khw > CONV_PAR_MIN)
    for (ptrdiff_t p = 0; p < planes; p++) {
        const int ch = (int)(p % c);
        dw_forward_plane(out + p * ohw, inp + p * hw, weight + (ptrdiff_t)ch * khw,
                         bias != NULL ? bias[ch] : 0.0f, s);
    }
}

/* dip (H,W) += conv_transpose(dop (OH,OW), wk) for one plane. */
static void dw_backward_input_plane(float *restrict dip, const float *restrict dop,
                                    const float *restrict wk, const conv_shape *s)
{
    const int sw = s->sw;
    for (int oy = 0; oy < s->oh; oy++) {
        const float *drow = dop + (ptrdiff_t)oy * s->ow;
        for (int ky = 0; ky < s->kh; ky++) {
            const int iy = oy * s->sh - s->ph + ky * s->dh;
            if (iy < 0 || iy >= s->h)
                continue;
            float *irow = dip + (ptrdiff_t)iy * s->w;
            for (int kx = 0; kx < s->kw; kx++) {
                const int xoff = kx * s->dw - s->pw;
                const float wv = wk[ky * s->kw + kx];
                int lo, hi;
                tap_range(xoff, sw, s->w, s->ow, &lo, &hi);
                if (sw == 1) {
                    for (int ox = lo; ox < hi; ox++)
                        irow[ox + xoff] += wv * drow[ox];
                } else {
                    for (int ox = lo; ox < hi; ox++)
                        irow[ox * sw + xoff] += wv * drow[ox];
                }
            }
        }
    }
}

/* dwk (KH,KW) += sum over the batch of dout_c * inp_c for channel ch; the
 * batch is reduced inside one thread, so no two threads share a weight. */
static void dw_backward_weight_channel(float *dwk, const float *dout, const float *inp,
                                       int ch, const conv_shape *s)
{
    const int sw = s->sw, c = s->c;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    for (int ky = 0; ky < s->kh; ky++) {
        for (int kx = 0; kx < s->kw; kx++) {
            const int xoff = kx * s->dw - s->pw;
            int lo, hi;
            tap_range(xoff, sw, s->w, s->ow, &lo, &hi);
            double acc = 0.0;
            for (int n = 0; n < s->n; n++) {
                const float *dop = dout + ((ptrdiff_t)n * c + ch) * ohw;
                const float *ip = inp + ((ptrdiff_t)n * c + ch) * hw;
                for (int oy = 0; oy < s->oh; oy++) {
                    const int iy = oy * s->sh - s->ph + ky * s->dh;
                    if (iy < 0 || iy >= s->h)
                        continue;
                    const float *drow = dop + (ptrdiff_t)oy * s->ow;
                    const float *irow = ip + (ptrdiff_t)iy * s->w;
                    float r = 0.0f;
                    if (sw == 1) {
                        #pragma omp simd reduction(+:r)
                        for (int ox = lo; ox < hi; ox++)
                            r += drow[ox] * irow[ox + xoff];
                    } else {
                        #pragma omp simd reduction(+:r)
                        for (int ox = lo; ox < hi; ox++)
                            r += drow[ox] * irow[ox * sw + xoff];
                    }
                    acc += r;
                }
            }
            dwk[ky * s->kw + kx] += (float)acc;
        }
    }
}

static void dw_backward(float *dinp, float *dweight, const float *dout,
                        const float *inp, const float *weight, const conv_shape *s)
{
    const int khw = s->kh * s->kw, c = s->c;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    const ptrdiff_t work = (ptrdiff_t)s->n * c * ohw * khw;
    if (dinp != NULL) {
        const ptrdiff_t planes = (ptrdiff_t)s->n * c;
        #pragma omp parallel for schedule(static) if (work > CONV_PAR_MIN)
        for (ptrdiff_t p = 0; p < planes; p++) {
            dw_backward_input_plane(dinp + p * hw, dout + p * ohw,
                                    weight + (p % c) * khw, s);
        }
    }
    if (dweight != NULL) {
        #pragma omp parallel for schedule(static) if (work > CONV_PAR_MIN)
        for (int ch = 0; ch < c; ch++)
            dw_backward_weight_channel(dweight + (ptrdiff_t)ch * khw, dout, inp, ch, s);
    }
}

/* ---- public kernels ---- */

/* inp (N,c,H,W); weight (OC_full, w_cin_full, KH, KW), rows [:oc], inputs [:c/groups];
 * bias (OC_full) or NULL, [:oc] used; out (N,oc,OH,OW);
 * scratch conv2d_scratch_floats(s) floats (may be NULL when that is 0). */
dmcp_status conv2d_forward(float *out, const float *inp, const float *weight,
                           const float *bias, const conv_shape *s, float *scratch)
{
    dmcp_status st = conv_check(s);
    if (st != DMCP_OK)
        return st;
    if (out == NULL || inp == NULL || weight == NULL ||
        (scratch == NULL && conv2d_scratch_floats(s) > 0))
        return DMCP_ERR_VALUE;
    if (conv_is_depthwise(s))
        dw_forward(out, inp, weight, bias, s);
    else if (conv_is_tiled(s))
        conv_tiled_forward(out, inp, weight, bias, s, scratch);
    else
        conv_gemm_forward(out, inp, weight, bias, s, scratch);
    return DMCP_OK;
}

/* dout (N,oc,OH,OW); inp (N,c,H,W); weight as in conv2d_forward;
 * dinp (N,c,H,W) +=, dweight (full buffer, active slice) +=, dbias[:oc] +=,
 * each may be NULL; scratch conv2d_scratch_floats(s) floats. */
dmcp_status conv2d_backward(float *dinp, float *dweight, float *dbias,
                            const float *dout, const float *inp, const float *weight,
                            const conv_shape *s, float *scratch)
{
    dmcp_status st = conv_check(s);
    if (st != DMCP_OK)
        return st;
    if (dout == NULL || (dweight != NULL && inp == NULL) ||
        (dinp != NULL && weight == NULL))
        return DMCP_ERR_VALUE;
    if ((dinp != NULL || dweight != NULL) && scratch == NULL &&
        conv2d_scratch_floats(s) > 0)
        return DMCP_ERR_VALUE;

    if (dbias != NULL) {
        const ptrdiff_t ohw = (ptrdiff_t)s->oh * s->ow;
        #pragma omp parallel for schedule(static) if ((ptrdiff_t)s->n * s->oc * ohw > CONV_PAR_MIN)
        for (int o = 0; o < s->oc; o++) {
            double acc = 0.0;
            for (int n = 0; n < s->n; n++) {
                const float *d = dout + ((ptrdiff_t)n * s->oc + o) * ohw;
                float r = 0.0f;
                #pragma omp simd reduction(+:r)
                for (ptrdiff_t i = 0; i < ohw; i++)
                    r += d[i];
                acc += r;
            }
            dbias[o] += (float)acc;
        }
    }
    if (dinp == NULL && dweight == NULL)
        return DMCP_OK;
    if (conv_is_depthwise(s))
        dw_backward(dinp, dweight, dout, inp, weight, s);
    else if (conv_is_tiled(s))
        conv_tiled_backward(dinp, dweight, dout, inp, weight, s, scratch);
    else
        conv_gemm_backward(dinp, dweight, dout, inp, weight, s, scratch);
    return DMCP_OK;
}

/* ---- naive references ---- */

/* Same contract as conv2d_forward; direct loops, double accumulators, no scratch. */
dmcp_status conv2d_forward_naive(float *out, const float *inp, const float *weight,
                                 const float *bias, const conv_shape *s)
{
    dmcp_status st = conv_check(s);
    if (st != DMCP_OK)
        return st;
    if (out == NULL || inp == NULL || weight == NULL)
        return DMCP_ERR_VALUE;
    const int cg = s->c / s->groups, ocg = s->oc / s->groups;
    const ptrdiff_t ldw = (ptrdiff_t)s->w_cin_full * s->kh * s->kw;
    for (int n = 0; n < s->n; n++)
    for (int o = 0; o < s->oc; o++)
    for (int oy = 0; oy < s->oh; oy++)
    for (int ox = 0; ox < s->ow; ox++) {
        const int g = o / ocg;
        double acc = bias != NULL ? bias[o] : 0.0;
        for (int ci = 0; ci < cg; ci++)
        for (int ky = 0; ky < s->kh; ky++)
        for (int kx = 0; kx < s->kw; kx++) {
            const int iy = oy * s->sh - s->ph + ky * s->dh;
            const int ix = ox * s->sw - s->pw + kx * s->dw;
            if (iy < 0 || iy >= s->h || ix < 0 || ix >= s->w)
                continue;
            const int ic = g * cg + ci;
            acc += (double)inp[(((ptrdiff_t)n * s->c + ic) * s->h + iy) * s->w + ix]
                 * weight[o * ldw + ((ptrdiff_t)ci * s->kh + ky) * s->kw + kx];
        }
        out[(((ptrdiff_t)n * s->oc + o) * s->oh + oy) * s->ow + ox] = (float)acc;
    }
    return DMCP_OK;
}

/* Same contract as conv2d_backward; every gradient entry is gathered in a
 * double accumulator, then added once. */
dmcp_status conv2d_backward_naive(float *dinp, float *dweight, float *dbias,
                                  const float *dout, const float *inp, const float *weight,
                                  const conv_shape *s)
{
    dmcp_status st = conv_check(s);
    if (st != DMCP_OK)
        return st;
    if (dout == NULL || (dweight != NULL && inp == NULL) ||
        (dinp != NULL && weight == NULL))
        return DMCP_ERR_VALUE;
    const int cg = s->c / s->groups, ocg = s->oc / s->groups;
    const ptrdiff_t ldw = (ptrdiff_t)s->w_cin_full * s->kh * s->kw;
#define DOUT(n_, o_, y_, x_) dout[(((ptrdiff_t)(n_) * s->oc + (o_)) * s->oh + (y_)) * s->ow + (x_)]
#define INP(n_, c_, y_, x_) inp[(((ptrdiff_t)(n_) * s->c + (c_)) * s->h + (y_)) * s->w + (x_)]

    if (dbias != NULL) {
        for (int o = 0; o < s->oc; o++) {
            double acc = 0.0;
            for (int n = 0; n < s->n; n++)
            for (int oy = 0; oy < s->oh; oy++)
            for (int ox = 0; ox < s->ow; ox++)
                acc += DOUT(n, o, oy, ox);
            dbias[o] += (float)acc;
        }
    }
    if (dweight != NULL) {
        for (int o = 0; o < s->oc; o++)
        for (int ci = 0; ci < cg; ci++)
        for (int ky = 0; ky < s->kh; ky++)
        for (int kx = 0; kx < s->kw; kx++) {
            const int ic = (o / ocg) * cg + ci;
            double acc = 0.0;
            for (int n = 0; n < s->n; n++)
            for (int oy = 0; oy < s->oh; oy++)
            for (int ox = 0; ox < s->ow; ox++) {
                const int iy = oy * s->sh - s->ph + ky * s->dh;
                const int ix = ox * s->sw - s->pw + kx * s->dw;
                if (iy < 0 || iy >= s->h || ix < 0 || ix >= s->w)
                    continue;
                acc += (double)DOUT(n, o, oy, ox) * INP(n, ic, iy, ix);
            }
            dweight[o * ldw + ((ptrdiff_t)ci * s->kh + ky) * s->kw + kx] += (float)acc;
        }
    }
    if (dinp != NULL) {
        for (int n = 0; n < s->n; n++)
        for (int ic = 0; ic < s->c; ic++)
        for (int iy = 0; iy < s->h; iy++)
        for (int ix = 0; ix < s->w; ix++) {
            const int g = ic / cg, ci = ic % cg;
            double acc = 0.0;
            for (int o = g * ocg; o < (g + 1) * ocg; o++)
            for (int ky = 0; ky < s->kh; ky++)
            for (int kx = 0; kx < s->kw; kx++) {
                /* output (oy, ox) reads this pixel through tap (ky, kx) iff
                 * oy*sh = iy + ph - ky*dh, likewise for x */
                const int ty = iy + s->ph - ky * s->dh, tx = ix + s->pw - kx * s->dw;
                if (ty < 0 || tx < 0 || ty % s->sh != 0 || tx % s->sw != 0)
                    continue;
                const int oy = ty / s->sh, ox = tx / s->sw;
                if (oy >= s->oh || ox >= s->ow)
                    continue;
                acc += (double)DOUT(n, o, oy, ox)
                     * weight[o * ldw + ((ptrdiff_t)ci * s->kh + ky) * s->kw + kx];
            }
            dinp[(((ptrdiff_t)n * s->c + ic) * s->h + iy) * s->w + ix] += (float)acc;
        }
    }
#undef DOUT
#undef INP
    return DMCP_OK;
}
