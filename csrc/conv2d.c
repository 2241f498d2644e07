/* conv2d.c: 2-D convolution, float32, NCHW, forward and backward.
 *
 * Paths, picked from the shape alone (never from the thread count):
 *   tiled (dense and grouped, kernel larger than 1x1, per-group weights of at
 *     most CONV_TILED_MAX_W floats, batch >= 2): one OpenMP region over fixed
 *     batch slots; each slot copies an image into zero-padded, stride-phase
 *     planes and runs an implicit GEMM (no column matrix) with a
 *     register-blocked micro-kernel.  No OpenBLAS, one fork/join per call.
 *   GEMM (everything else dense or grouped: 1x1 kernels, large weights,
 *     batch 1, and backward-data of strided or few-channel convs): im2col of
 *     a chunk of images side by side, one OpenBLAS SGEMM per chunk and group.
 *     OpenMP loops for im2col/col2im/gather/scatter, threaded OpenBLAS for
 *     the GEMMs, never one inside the other.
 *   depthwise (groups == c == oc, w_cin_full == 1): flat direct loops over
 *     zero-padded planes, parallel over planes (channels for the weights).
 *   _naive: direct loops with double accumulators, the reference for tests.
 *
 * Weight indexing, shared by every path: output channel o of group g uses
 * weight[o*ldw + (ci*KH + ky)*KW + kx] for its ci < c/groups inputs, with
 * ldw = w_cin_full*KH*KW (rows of the full supernet buffer).
 */
#include "conv2d.h"

#include <cblas.h>
#include <omp.h>
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
 * place, as a per-image im2col + SGEMM would.  This path takes the layers
 * the tiled path below does not: 1x1 kernels, large weights, batch 1, and
 * backward-data of strided or few-channel convs. */

/* Images per chunk stop growing once their column matrix and outputs hold
 * this many floats (2 MB: the chunk stays in cache from im2col to col2im). */
#ifndef CONV_COL_CAP
#define CONV_COL_CAP (1 << 19)
#endif
/* Pointwise convs with at least this many output pixels per image run per
 * image on the image itself: the GEMM is wide enough and no copy is needed. */
#ifndef CONV_POINTWISE_DIRECT
#define CONV_POINTWISE_DIRECT 128
#endif

/* Below this many multiply-adds a whole layer runs image by image: its
 * small GEMMs stay single-threaded inside OpenBLAS and need no copies, which
 * beats one threaded GEMM plus gather and scatter. */
#ifndef CONV_GEMM_TINY
#define CONV_GEMM_TINY (16 << 20)
#endif

/* Images per GEMM chunk; depends on the shape only, never on the thread count. */
static int conv_chunk(const conv_shape *s)
{
    const ptrdiff_t ohw = (ptrdiff_t)s->oh * s->ow;
    const double macs = (double)s->n * s->oc * ohw * (s->c / s->groups) * s->kh * s->kw;
    if ((conv_is_pointwise(s) && ohw >= CONV_POINTWISE_DIRECT) || macs < CONV_GEMM_TINY)
        return 1;
    const ptrdiff_t per = ((ptrdiff_t)s->c * s->kh * s->kw + s->oc) * ohw;
    const ptrdiff_t nb = CONV_COL_CAP / per;
    return (int)DMCP_MAX(1, DMCP_MIN(nb, (ptrdiff_t)s->n));
}

#define CONV_SLOTS 8           /* batch slices; also the weight-gradient partial sums */
static ptrdiff_t conv_tiled_scratch(const conv_shape *s, bool *tiled, bool *data);
static ptrdiff_t dw_scratch(const conv_shape *s);
static bool conv_is_wino(const conv_shape *s);
static size_t wino_scratch(const conv_shape *s);
static bool conv_is_dw_direct(const conv_shape *s);

/* Scratch of the GEMM path. */
/* First image of slot i of `slots` over n images. */
static int slot_start(int i, int slots, int n) { return (int)((long long)n * i / slots); }

static bool conv_pointwise_images(const conv_shape *s)
{
    return conv_is_pointwise(s) && s->groups == 1 && s->n >= 2;
}

static size_t conv_gemm_scratch(const conv_shape *s)
{
    if (conv_pointwise_images(s))    /* per-slot weight-gradient partial sums */
        return (size_t)DMCP_MIN(s->n, CONV_SLOTS) * s->oc * s->c;
    const size_t nb = (size_t)conv_chunk(s), ohw = (size_t)s->oh * s->ow;
    const size_t rows = (size_t)s->c * s->kh * s->kw;
    if (nb == 1)   /* one image's column matrix (none for pointwise) */
        return conv_is_pointwise(s) ? 0 : rows * ohw;
    /* the chunk's columns, then its (oc, nb*OH*OW) outputs / output gradients */
    return (rows + (size_t)s->oc) * nb * ohw;
}

size_t conv2d_scratch_floats(const conv_shape *s)
{
    if (conv_check(s) != DMCP_OK)
        return 0;
    if (conv_is_dw_direct(s))
        return (size_t)dw_scratch(s);
    bool tiled, data;
    const ptrdiff_t t = conv_tiled_scratch(s, &tiled, &data);
    const size_t rest = !tiled ? conv_gemm_scratch(s)
                        : data ? (size_t)t : DMCP_MAX((size_t)t, conv_gemm_scratch(s));
    return conv_is_wino(s) ? DMCP_MAX(rest, wino_scratch(s)) : rest;
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

/* x (nb, oc, OH*OW) = bias[o]. */
static void fill_bias(float *x, const float *bias, int nb, int oc, ptrdiff_t ohw)
{
    const ptrdiff_t jobs = (ptrdiff_t)nb * oc;
    #pragma omp parallel for schedule(static) if (jobs * ohw > CONV_PAR_MIN)
    for (ptrdiff_t j = 0; j < jobs; j++) {
        float *restrict dst = x + j * ohw;
        const float bv = bias[j % oc];
        for (ptrdiff_t i = 0; i < ohw; i++)
            dst[i] = bv;
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
    if (conv_pointwise_images(s)) {
        /* images over threads, one single-threaded GEMM each: no fork/join
         * per image, no gather/scatter, every thread a whole GEMM */
        if (bias != NULL)
            fill_bias(out, bias, s->n, s->oc, ohw);
        const int blas_threads = openblas_get_num_threads();
        openblas_set_num_threads(1);
        #pragma omp parallel for schedule(dynamic, 1)
        for (int b = 0; b < s->n; b++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->oc, (int)ohw, k, 1.0f,
                        weight, ldw, inp + (ptrdiff_t)b * s->c * hw, (int)ohw,
                        bias != NULL ? 1.0f : 0.0f, out + (ptrdiff_t)b * s->oc * ohw, (int)ohw);
        openblas_set_num_threads(blas_threads);
        return;
    }
    const int chunk = conv_chunk(s);
    /* one image at a time writes in place, on top of the bias filled first */
    const bool in_place = chunk == 1;
    if (in_place && bias != NULL)
        fill_bias(out, bias, s->n, s->oc, ohw);
    const float beta = in_place && bias != NULL ? 1.0f : 0.0f;

    for (int n0 = 0; n0 < s->n; n0 += chunk) {
        const int nb = DMCP_MIN(chunk, s->n - n0);
        const ptrdiff_t ldc = nb * ohw;
        const float *img = inp + (ptrdiff_t)n0 * s->c * hw;
        float *out_n = out + (ptrdiff_t)n0 * s->oc * ohw;
        /* a chunk goes through res, then is scattered with its bias */
        float *res = in_place ? out_n : scratch + rows * ldc;
        const float *col = img;
        if (!(pointwise && chunk == 1)) {
            im2col(scratch, ldc, img, nb, s);
            col = scratch;
        }
        for (int g = 0; g < groups; g++) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ocg, (int)ldc, k,
                        1.0f, weight + (ptrdiff_t)g * ocg * ldw, ldw,
                        col + (ptrdiff_t)g * k * ldc, (int)ldc,
                        beta, res + (ptrdiff_t)g * ocg * ldc, (int)ldc);
        }
        if (!in_place)
            scatter_chunk(out_n, res, ldc, bias, nb, s->oc, ohw);
    }
}

/* Per chunk and group: dW_g += dout_g (oc/G, nb*OH*OW) @ col_g^T;
 * dcol_g = W_g^T @ dout_g, then col2im into dinp (pointwise, one image:
 * straight into dinp with beta = 1).  dcol_g overwrites col_g once dW_g has
 * used it. */
/* Pointwise convs, images over threads with one single-threaded GEMM each:
 * dinp[b] = W^T @ dout[b] (beta 1: accumulates); dW partial of slot i (a
 * fixed range of images, CONV_SLOTS at most) = sum of dout[b] @ inp[b]^T,
 * then dW += the partials in slot order, so no result depends on the thread
 * count. */
static void conv_pointwise_backward(float *dinp, float *dweight, const float *dout,
                                    const float *inp, const float *weight,
                                    const conv_shape *s, float *scratch)
{
    const int c = s->c, oc = s->oc, ldw = s->w_cin_full;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w;
    const int slots = DMCP_MIN(s->n, CONV_SLOTS);
    const int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    if (dinp != NULL) {
        #pragma omp parallel for schedule(dynamic, 1)
        for (int b = 0; b < s->n; b++)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c, (int)hw, oc, 1.0f, weight, ldw,
                        dout + (ptrdiff_t)b * oc * hw, (int)hw, 1.0f,
                        dinp + (ptrdiff_t)b * c * hw, (int)hw);
    }
    if (dweight != NULL) {
        #pragma omp parallel for schedule(dynamic, 1)
        for (int i = 0; i < slots; i++) {
            float *part = scratch + (ptrdiff_t)i * oc * c;
            const int b0 = slot_start(i, slots, s->n), b1 = slot_start(i + 1, slots, s->n);
            for (int b = b0; b < b1; b++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, oc, c, (int)hw, 1.0f,
                            dout + (ptrdiff_t)b * oc * hw, (int)hw, inp + (ptrdiff_t)b * c * hw,
                            (int)hw, b == b0 ? 0.0f : 1.0f, part, c);
        }
    }
    openblas_set_num_threads(blas_threads);
    if (dweight == NULL)
        return;
    #pragma omp parallel for schedule(static) if ((ptrdiff_t)oc * c * slots > CONV_PAR_MIN)
    for (int o = 0; o < oc; o++) {
        float *dw = dweight + (ptrdiff_t)o * ldw;
        for (int i = 0; i < slots; i++) {
            const float *part = scratch + ((ptrdiff_t)i * oc + o) * c;
            for (int ci = 0; ci < c; ci++)
                dw[ci] += part[ci];
        }
    }
}

static void conv_gemm_backward(float *dinp, float *dweight, const float *dout,
                               const float *inp, const float *weight,
                               const conv_shape *s, float *scratch)
{
    if (conv_pointwise_images(s)) {
        conv_pointwise_backward(dinp, dweight, dout, inp, weight, s, scratch);
        return;
    }
    const int groups = s->groups, cg = s->c / groups, ocg = s->oc / groups;
    const int ldw = s->w_cin_full * s->kh * s->kw, k = cg * s->kh * s->kw;
    const ptrdiff_t ohw = (ptrdiff_t)s->oh * s->ow, hw = (ptrdiff_t)s->h * s->w;
    const ptrdiff_t rows = (ptrdiff_t)s->c * s->kh * s->kw;
    const int chunk = conv_chunk(s);
    /* pointwise, one image at a time: the image is its column matrix */
    const bool in_place = conv_is_pointwise(s) && chunk == 1;

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

#define CONV_MR 6              /* micro-tile rows */
#define CONV_NR 16             /* micro-tile columns (two 8-float vectors) */
#define CONV_SLOTS_MAX 64      /* most threads that get their own Winograd block buffers */
#ifndef CONV_TILE_FLOATS
#define CONV_TILE_FLOATS (1 << 17)  /* target tile size, K x pixels (512 KB) */
#endif
#ifndef CONV_TILE_PX
#define CONV_TILE_PX 512       /* target output pixels per tile */
#endif
#ifndef CONV_TILED_MAX_W
#define CONV_TILED_MAX_W (1 << 16)  /* largest (oc/G)*(c/G)*KH*KW for the tiled path */
#endif
#define CONV_TILED_MAX_K 2048  /* longest micro-kernel reduction (offset tables live on the stack) */

static ptrdiff_t round_up(ptrdiff_t x, ptrdiff_t m) { return (x + m - 1) / m * m; }

/* Zero-padded, phase-split planes and the output grid that reads them. */
typedef struct {
    int sh, sw;                /* stride: sh*sw phase planes per channel */
    int hq, wq;                /* phase plane */
    ptrdiff_t pl;              /* phase plane stride: hq*wq plus zero slack */
    int top, left;             /* where the source sits in the padded plane */
    int orows, ocols;          /* output grid rows; valid columns of its wq */
    int trows, ntp;            /* output rows per tile; tile columns, a multiple of NR */
} pad_grid;

/* Sizes of the tiled path, all derived from the shape. */
typedef struct {
    int slots;                 /* batch slices */
    int k, kpad;               /* (c/G)*KH*KW, rounded up to CONV_MR */
    int ocg, ocpad, ocpad16;   /* oc/G, rounded up to CONV_MR and to CONV_NR */
    int cg, cgpad, kb;         /* c/G, rounded up to CONV_MR; (oc/G)*KH*KW */
    bool data;                 /* backward-data runs here too */
    pad_grid fg, bg;           /* forward/weight grid over inp; backward-data grid over dout */
    ptrdiff_t wpack;           /* floats of packed weights, all groups */
    ptrdiff_t src, pan, res, dwt;    /* floats of each per-slot buffer */
    ptrdiff_t srcf;            /* src: padded input first, then (data) padded dout */
} conv_tiling;

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
    t->ocpad16 = (int)round_up(t->ocg, CONV_NR);
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

/* GCC fuses a*b + c into FMA only with -ffp-contract=fast, which -std=c11
 * turns off; the micro-kernel asks for it (clang fuses within an expression). */
#if defined(__GNUC__) && !defined(__clang__)
#define CONV_FMA_CONTRACT __attribute__((optimize("fp-contract=fast")))
#else
#define CONV_FMA_CONTRACT
#endif

/* One vector register of floats (alignment 4, so any float pointer will do):
 * 8 with AVX, 4 otherwise (a 32-byte vector type on SSE is split through
 * memory, 14x slower); CONV_NR/CONV_VW of them span a micro-tile row. */
#ifdef __AVX__
#define CONV_VW 8
#else
#define CONV_VW 4
#endif
typedef float conv_vec __attribute__((vector_size(CONV_VW * 4), aligned(4)));
#define CONV_NV (CONV_NR / CONV_VW)

/* c (MR, NR) = or += A (MR, k) @ B (k, NR).  Row i of A is a + aoff[i] (k
 * consecutive floats), row p of B is b + boff[p] (NR consecutive floats); c
 * rows are ldc apart.  The MR x NR sums stay in registers. */
CONV_FMA_CONTRACT
static void conv_kernel(int k, const float *restrict a, const int *restrict aoff,
                        const float *restrict b, const int *restrict boff,
                        float *restrict c, ptrdiff_t ldc, bool add)
{
    const float *ar[CONV_MR];
    conv_vec acc[CONV_MR][CONV_NV];
    for (int i = 0; i < CONV_MR; i++) {
        ar[i] = a + aoff[i];
        for (int v = 0; v < CONV_NV; v++)
            acc[i][v] = (conv_vec){0};
    }
    for (int p = 0; p < k; p++) {
        const float *bp = b + boff[p];
        conv_vec bv[CONV_NV];
        for (int v = 0; v < CONV_NV; v++)
            bv[v] = *(const conv_vec *)(bp + v * CONV_VW);
        for (int i = 0; i < CONV_MR; i++) {
            const float ai = ar[i][p];
            for (int v = 0; v < CONV_NV; v++)
                acc[i][v] += ai * bv[v];
        }
    }
    for (int i = 0; i < CONV_MR; i++) {
        conv_vec *ci = (conv_vec *)(c + i * ldc);
        for (int v = 0; v < CONV_NV; v++)
            ci[v] = add ? ci[v] + acc[i][v] : acc[i][v];
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
                               const float *bias, const conv_shape *s, const conv_tiling *t,
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
                    const float bv = bias != NULL ? bias[oc_i] : 0.0f;
                    for (int y = 0; y < rows; y++) {
                        float *restrict dst = o + ((ptrdiff_t)b * s->oc + oc_i) * ohw
                                            + (ptrdiff_t)(oy0 + y) * s->ow;
                        const float *restrict sr = res + (ptrdiff_t)oo * g->ntp + (ptrdiff_t)y * g->wq;
                        for (int x = 0; x < s->ow; x++)
                            dst[x] = sr[x] + bv;
                    }
                }
            }
        }
    }
}

static void tiled_backward_slot(float *dimg, float *dwt, const float *dy, const float *img,
                                int nb, const float *wtpack, const conv_shape *s,
                                const conv_tiling *t, float *src, float *pan, float *res)
{
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    float *srcb = src + t->srcf;     /* padded dout, after the padded input */
    int offw[CONV_TILED_MAX_K + CONV_MR], offd[CONV_TILED_MAX_K + CONV_MR], lin[CONV_TILED_MAX_K];
    if (dwt != NULL) {
        tap_offsets(offw, t->cg, &t->fg, s);
        linear_offsets(lin, t->fg.ntp, CONV_NR);
    }
    if (dimg != NULL)
        tap_offsets(offd, t->ocg, &t->bg, s);
    for (int b = 0; b < nb; b++) {
        for (int gi = 0; gi < s->groups; gi++) {
            const float *dyg = dy + ((ptrdiff_t)b * s->oc + gi * t->ocg) * ohw;
            if (dwt != NULL) {
                /* dW^T (kpad, ocpad16) += taps (A rows at off) @ dout^T tile,
                 * packed as panels (ocpad16/NR, ntp, NR), zero off the image */
                const pad_grid *g = &t->fg;
                pad_planes(src, img + ((ptrdiff_t)b * s->c + gi * t->cg) * hw, t->cg, s->h, s->w, g, s,
                           b == 0 && gi == 0);
                float *dwg = dwt + (ptrdiff_t)gi * t->kpad * t->ocpad16;
                for (int oy0 = 0; oy0 < g->orows; oy0 += g->trows) {
                    const int rows = DMCP_MIN(g->trows, g->orows - oy0);
                    const int ntx = (int)round_up((ptrdiff_t)rows * g->wq, CONV_NR);
                    memset(pan, 0, (size_t)t->ocpad16 * g->ntp * sizeof *pan);
                    for (int oo = 0; oo < t->ocg; oo++) {
                        float *dst = pan + (ptrdiff_t)(oo / CONV_NR) * g->ntp * CONV_NR + oo % CONV_NR;
                        for (int y = 0; y < rows; y++) {
                            const float *sr = dyg + (ptrdiff_t)oo * ohw + (ptrdiff_t)(oy0 + y) * s->ow;
                            float *d = dst + (ptrdiff_t)y * g->wq * CONV_NR;
                            for (int x = 0; x < s->ow; x++)
                                d[(ptrdiff_t)x * CONV_NR] = sr[x];
                        }
                    }
                    const float *a = src + (ptrdiff_t)oy0 * g->wq;
                    for (int i0 = 0; i0 < t->kpad; i0 += CONV_MR)
                        for (int op = 0; op < t->ocpad16; op += CONV_NR)
                            conv_kernel(ntx, a, offw + i0, pan + (ptrdiff_t)op * g->ntp, lin,
                                        dwg + (ptrdiff_t)i0 * t->ocpad16 + op, t->ocpad16, true);
                }
            }
            if (dimg != NULL) {
                /* dinp (cg, H, W) += W' (cgpad, ocg*KH*KW) @ taps of padded dout */
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
                               const float *bias, const conv_shape *s, const conv_tiling *t,
                               float *scratch)
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
                           nb, wpack, bias, s, t, src, res);
    }
}

/* dinp only when t->data. */
static void conv_tiled_backward(float *dinp, float *dweight, const float *dout,
                                const float *inp, const float *weight,
                                const conv_shape *s, const conv_tiling *t, float *scratch)
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
                            nb, wtpack, s, t, src, pan, res);
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

/* ---- depthwise convs: zero-padded planes, flat direct loops ----
 *
 * Each plane (image n, channel ch) is copied into zero-padded phase planes as
 * in the tiled path; then the whole output plane is one flat loop over a grid
 * as wide as a padded phase row (its extra columns computed and dropped), a
 * sum of shifted input rows that the compiler vectorises even for 7x7 planes.
 * Backward-data splits the input into stride phases: input pixel
 * (i*sh + a, j*sw + b) receives the taps whose (a + ph - ky*dh,
 * b + pw - kx*dw) are multiples of the stride, each a shifted read of
 * zero-padded dout.  Backward-weight reads each plane once for all taps; a
 * channel's batch is reduced inside one work item, so no two threads share a
 * weight.  Work items (planes or channels) are cut into DW_SLOTS fixed ranges,
 * each with its own buffer. */

#define DW_SLOTS 32
#define DW_TAPS 64             /* taps per offset table; larger kernels take batches */

/* Geometry of the depthwise buffers. */
typedef struct {
    int slots;                 /* ranges of work items (and buffers) */
    pad_grid fg;               /* forward / backward-weight: padded input, phase split */
    pad_grid bg;               /* backward-data: padded dout, stride 1 */
    ptrdiff_t fgrid, bgrid;    /* floats of the flat output grids */
    ptrdiff_t buf;             /* floats per slot */
} dw_tiling;

/* Rows of dout reaching above (*lo < 0) or below (*hi > 0 past out-1) when
 * input phase a in [0, stride) gathers tap k: q = (a + pad - k*dil)/stride
 * for the taps that divide; rows i < ceil((in - a)/stride). */
static void dw_reach(int in, int out, int k, int stride, int pad, int dil, int *lo, int *hi)
{
    *lo = 0;
    *hi = 0;
    for (int a = 0; a < stride && a < in; a++) {
        const int rows = (in - a + stride - 1) / stride;
        for (int t = 0; t < k; t++) {
            const int num = a + pad - t * dil;
            if (((num % stride) + stride) % stride != 0)
                continue;
            const int q = num >= 0 ? num / stride : -((-num) / stride);
            *lo = DMCP_MIN(*lo, q);
            *hi = DMCP_MAX(*hi, rows - 1 + q - (out - 1));
        }
    }
}

static dw_tiling dw_tiling_of(const conv_shape *s, ptrdiff_t items)
{
    dw_tiling t;
    t.slots = (int)DMCP_MIN(items, (ptrdiff_t)DW_SLOTS);
    /* flat reads run up to a row past the last column read */
    pad_grid_init(&t.fg, s->h + 2 * s->ph, s->w + 2 * s->pw, s->sh, s->sw, s->ph, s->pw,
                  s->oh, s->ow, 0, CONV_MR);
    t.fg.pl += t.fg.wq;
    int ylo, yhi, xlo, xhi;
    dw_reach(s->h, s->oh, s->kh, s->sh, s->ph, s->dh, &ylo, &yhi);
    dw_reach(s->w, s->ow, s->kw, s->sw, s->pw, s->dw, &xlo, &xhi);
    pad_grid_init(&t.bg, -ylo + s->oh + yhi, -xlo + s->ow + xhi, 1, 1, -ylo, -xlo,
                  s->oh, s->ow, 0, CONV_MR);
    t.bg.pl += t.bg.wq;
    t.fgrid = round_up((ptrdiff_t)s->oh * t.fg.wq, CONV_NR);
    t.bgrid = round_up((ptrdiff_t)((s->h + s->sh - 1) / s->sh) * t.bg.wq, CONV_NR);
    t.buf = round_up(DMCP_MAX((ptrdiff_t)s->sh * s->sw * t.fg.pl + t.fgrid,
                              t.bg.pl + s->sw * t.bgrid), CONV_NR);
    return t;
}

static ptrdiff_t dw_scratch(const conv_shape *s)
{
    /* the most work items any call makes: planes */
    const dw_tiling t = dw_tiling_of(s, (ptrdiff_t)s->n * s->c);
    return t.slots * t.buf;
}

/* The depthwise path: groups == c == oc, and its buffers keep int offsets
 * (others take the GEMM path, one group at a time). */
static bool conv_is_dw_direct(const conv_shape *s)
{
    return conv_is_depthwise(s) && dw_tiling_of(s, 1).buf < INT_MAX;
}

/* First item of slot i of `slots` over n items. */
static ptrdiff_t range_start(int i, int slots, ptrdiff_t n) { return n * i / slots; }

/* off[t] for taps t0 .. t0+nt-1 of one channel in the phase planes of g. */
static void dw_tap_offsets(int *off, int t0, int nt, const pad_grid *g, const conv_shape *s)
{
    for (int t = 0; t < nt; t++) {
        const int ty = (t0 + t) / s->kw * s->dh, tx = (t0 + t) % s->kw * s->dw;
        off[t] = (int)(((ptrdiff_t)(ty % g->sh) * g->sw + tx % g->sw) * g->pl)
               + ty / g->sh * g->wq + tx / g->sw;
    }
}

/* grid[f] (=|+=) sum over nt taps of wk[t] * src[f + off[t]], f < n; 9 taps fused. */
CONV_FMA_CONTRACT
static void dw_grid_taps(float *restrict grid, ptrdiff_t n, const float *src, const int *off,
                         const float *wv, int nt, bool add)
{
    if (nt == 9) {
        const float *r0 = src + off[0], *r1 = src + off[1], *r2 = src + off[2];
        const float *r3 = src + off[3], *r4 = src + off[4], *r5 = src + off[5];
        const float *r6 = src + off[6], *r7 = src + off[7], *r8 = src + off[8];
        const float w0 = wv[0], w1 = wv[1], w2 = wv[2], w3 = wv[3], w4 = wv[4];
        const float w5 = wv[5], w6 = wv[6], w7 = wv[7], w8 = wv[8];
        if (!add) {
            for (ptrdiff_t f = 0; f < n; f++)
                grid[f] = w0 * r0[f] + w1 * r1[f] + w2 * r2[f] + w3 * r3[f] + w4 * r4[f]
                        + w5 * r5[f] + w6 * r6[f] + w7 * r7[f] + w8 * r8[f];
        } else {
            for (ptrdiff_t f = 0; f < n; f++)
                grid[f] += w0 * r0[f] + w1 * r1[f] + w2 * r2[f] + w3 * r3[f] + w4 * r4[f]
                         + w5 * r5[f] + w6 * r6[f] + w7 * r7[f] + w8 * r8[f];
        }
        return;
    }
    for (int t = 0; t < nt; t++) {
        const float w = wv[t], *restrict r = src + off[t];
        if (t == 0 && !add) {
            for (ptrdiff_t f = 0; f < n; f++)
                grid[f] = w * r[f];
        } else {
            for (ptrdiff_t f = 0; f < n; f++)
                grid[f] += w * r[f];
        }
    }
}

/* op (OH,OW) = b + conv(ip (H,W), wk (KH,KW)) for one channel; buf a slot buffer. */
static void dw_forward_plane(float *op, const float *ip, const float *wk, float b,
                             const conv_shape *s, const dw_tiling *t, float *buf, bool fresh)
{
    const pad_grid *g = &t->fg;
    const int khw = s->kh * s->kw;
    const ptrdiff_t n = (ptrdiff_t)s->oh * g->wq;
    float *src = buf, *grid = buf + (ptrdiff_t)s->sh * s->sw * g->pl;
    int off[DW_TAPS];
    pad_planes(src, ip, 1, s->h, s->w, g, s, fresh);
    for (int t0 = 0; t0 < khw; t0 += DW_TAPS) {
        const int nt = DMCP_MIN(DW_TAPS, khw - t0);
        dw_tap_offsets(off, t0, nt, g, s);
        dw_grid_taps(grid, n, src, off, wk + t0, nt, t0 > 0);
    }
    for (int oy = 0; oy < s->oh; oy++) {
        float *restrict orow = op + (ptrdiff_t)oy * s->ow;
        const float *restrict grow = grid + (ptrdiff_t)oy * g->wq;
        for (int ox = 0; ox < s->ow; ox++)
            orow[ox] = grow[ox] + b;
    }
}

/* dip (H,W) += conv_transpose(dop (OH,OW), wk) for one plane; buf a slot
 * buffer.  For each row phase a, the grids of all column phases b are summed
 * first, then added to the rows together (stride 2: one interleaving pass). */
static void dw_backward_input_plane(float *dip, const float *dop, const float *wk,
                                    const conv_shape *s, const dw_tiling *t, float *buf, bool fresh)
{
    const pad_grid *g = &t->bg;
    float *src = buf, *grids = buf + g->pl;
    pad_planes(src, dop, 1, s->oh, s->ow, g, s, fresh);
    for (int a = 0; a < s->sh && a < s->h; a++) {
        const int rows = (s->h - a + s->sh - 1) / s->sh;
        bool any[2] = {false, false};
        for (int b = 0; b < s->sw && b < s->w; b++) {
            float *grid = grids + (ptrdiff_t)b * t->bgrid;
            /* taps landing on input phase (a, b) and where they read dout, in
             * batches of the table */
            int off[DW_TAPS], nt = 0, batches = 0;
            float wv[DW_TAPS];
            for (int ky = 0; ky < s->kh; ky++) {
                const int ny = a + s->ph - ky * s->dh;
                if (((ny % s->sh) + s->sh) % s->sh != 0)
                    continue;
                const int qy = ny >= 0 ? ny / s->sh : -((-ny) / s->sh);
                for (int kx = 0; kx < s->kw; kx++) {
                    const int nx = b + s->pw - kx * s->dw;
                    if (((nx % s->sw) + s->sw) % s->sw != 0)
                        continue;
                    const int qx = nx >= 0 ? nx / s->sw : -((-nx) / s->sw);
                    off[nt] = (qy + g->top) * g->wq + qx + g->left;
                    wv[nt++] = wk[ky * s->kw + kx];
                    if (nt == DW_TAPS) {
                        dw_grid_taps(grid, (ptrdiff_t)rows * g->wq, src, off, wv, nt, batches++ > 0);
                        nt = 0;
                    }
                }
            }
            if (nt > 0)
                dw_grid_taps(grid, (ptrdiff_t)rows * g->wq, src, off, wv, nt, batches++ > 0);
            if (batches == 0)
                memset(grid, 0, (size_t)rows * g->wq * sizeof *grid);
            if (b < 2)
                any[b] = batches > 0;
        }
        for (int i = 0; i < rows; i++) {
            float *restrict irow = dip + (ptrdiff_t)(i * s->sh + a) * s->w;
            const float *restrict g0 = grids + (ptrdiff_t)i * g->wq;
            if (s->sw == 1) {
                if (any[0])
                    for (int x = 0; x < s->w; x++)
                        irow[x] += g0[x];
            } else if (s->sw == 2) {
                const float *restrict g1 = g0 + t->bgrid;
                const int pairs = s->w / 2;
                for (int j = 0; j < pairs; j++) {
                    irow[2 * j] += g0[j];
                    irow[2 * j + 1] += g1[j];
                }
                if (s->w % 2)
                    irow[2 * pairs] += g0[pairs];
            } else {
                for (int x = 0; x < s->w; x++)
                    irow[x] += grids[(ptrdiff_t)(x % s->sw) * t->bgrid + (ptrdiff_t)i * g->wq + x / s->sw];
            }
        }
    }
}

/* acc[t] += sum over f < n of d[f] * src[f + off[t]] for 9 taps. */
static void dw_dots9(double *acc, const float *restrict d, ptrdiff_t n, const float *src,
                     const int *off)
{
    const float *r0 = src + off[0], *r1 = src + off[1], *r2 = src + off[2];
    const float *r3 = src + off[3], *r4 = src + off[4], *r5 = src + off[5];
    const float *r6 = src + off[6], *r7 = src + off[7], *r8 = src + off[8];
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0, a8 = 0;
    #pragma omp simd reduction(+:a0, a1, a2, a3, a4, a5, a6, a7, a8)
    for (ptrdiff_t f = 0; f < n; f++) {
        const float v = d[f];
        a0 += v * r0[f]; a1 += v * r1[f]; a2 += v * r2[f];
        a3 += v * r3[f]; a4 += v * r4[f]; a5 += v * r5[f];
        a6 += v * r6[f]; a7 += v * r7[f]; a8 += v * r8[f];
    }
    acc[0] += a0; acc[1] += a1; acc[2] += a2; acc[3] += a3; acc[4] += a4;
    acc[5] += a5; acc[6] += a6; acc[7] += a7; acc[8] += a8;
}

/* dwk (KH,KW) += sum over the batch of dout_ch * taps of inp_ch for channel
 * ch; dout is laid on the flat grid with zeros in its extra columns. */
static void dw_backward_weight_channel(float *dwk, const float *dout, const float *inp, int ch,
                                       const conv_shape *s, const dw_tiling *t, float *buf,
                                       bool fresh)
{
    const pad_grid *g = &t->fg;
    const int khw = s->kh * s->kw, c = s->c, ow = s->ow;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * ow;
    const ptrdiff_t n = (ptrdiff_t)s->oh * g->wq;
    float *src = buf, *grid = buf + (ptrdiff_t)s->sh * s->sw * g->pl;
    for (int t0 = 0; t0 < khw; t0 += DW_TAPS) {
        const int nt = DMCP_MIN(DW_TAPS, khw - t0);
        int off[DW_TAPS];
        double acc[DW_TAPS];
        dw_tap_offsets(off, t0, nt, g, s);
        for (int i = 0; i < nt; i++)
            acc[i] = 0.0;
        for (int b = 0; b < s->n; b++) {
            const float *dop = dout + ((ptrdiff_t)b * c + ch) * ohw;
            pad_planes(src, inp + ((ptrdiff_t)b * c + ch) * hw, 1, s->h, s->w, g, s, fresh);
            fresh = false;
            for (int oy = 0; oy < s->oh; oy++) {
                float *grow = grid + (ptrdiff_t)oy * g->wq;
                memcpy(grow, dop + (ptrdiff_t)oy * ow, (size_t)ow * sizeof *grow);
                memset(grow + ow, 0, (size_t)(g->wq - ow) * sizeof *grow);
            }
            if (nt == 9) {
                dw_dots9(acc, grid, n, src, off);
                continue;
            }
            for (int i = 0; i < nt; i++) {
                const float *restrict r = src + off[i];
                float sum = 0.0f;
                #pragma omp simd reduction(+:sum)
                for (ptrdiff_t f = 0; f < n; f++)
                    sum += grid[f] * r[f];
                acc[i] += sum;
            }
        }
        for (int i = 0; i < nt; i++)
            dwk[t0 + i] += (float)acc[i];
    }
}

/* out (N,C,OH,OW), inp (N,C,H,W), weight rows of KH*KW, one per channel. */
static void dw_forward(float *out, const float *inp, const float *weight,
                       const float *bias, const conv_shape *s, float *scratch)
{
    const int khw = s->kh * s->kw, c = s->c;
    const ptrdiff_t planes = (ptrdiff_t)s->n * c;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    const dw_tiling t = dw_tiling_of(s, planes);
    #pragma omp parallel for schedule(dynamic, 1) if (planes * ohw * khw > CONV_PAR_MIN)
    for (int i = 0; i < t.slots; i++) {
        float *src = scratch + i * t.buf;
        const ptrdiff_t p0 = range_start(i, t.slots, planes);
        for (ptrdiff_t p = p0; p < range_start(i + 1, t.slots, planes); p++) {
            const int ch = (int)(p % c);
            dw_forward_plane(out + p * ohw, inp + p * hw, weight + (ptrdiff_t)ch * khw,
                             bias != NULL ? bias[ch] : 0.0f, s, &t, src, p == p0);
        }
    }
}

static void dw_backward(float *dinp, float *dweight, const float *dout,
                        const float *inp, const float *weight, const conv_shape *s,
                        float *scratch)
{
    const int khw = s->kh * s->kw, c = s->c;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    const ptrdiff_t planes = (ptrdiff_t)s->n * c;
    const ptrdiff_t work = planes * ohw * khw;
    if (dinp != NULL) {
        const dw_tiling t = dw_tiling_of(s, planes);
        #pragma omp parallel for schedule(dynamic, 1) if (work > CONV_PAR_MIN)
        for (int i = 0; i < t.slots; i++) {
            float *src = scratch + i * t.buf;
            const ptrdiff_t p0 = range_start(i, t.slots, planes);
            for (ptrdiff_t p = p0; p < range_start(i + 1, t.slots, planes); p++)
                dw_backward_input_plane(dinp + p * hw, dout + p * ohw, weight + (p % c) * khw,
                                        s, &t, src, p == p0);
        }
    }
    if (dweight != NULL) {
        const dw_tiling t = dw_tiling_of(s, c);
        #pragma omp parallel for schedule(dynamic, 1) if (work > CONV_PAR_MIN)
        for (int i = 0; i < t.slots; i++) {
            float *src = scratch + i * t.buf;
            const ptrdiff_t c0 = range_start(i, t.slots, c);
            for (ptrdiff_t ch = c0; ch < range_start(i + 1, t.slots, c); ch++)
                dw_backward_weight_channel(dweight + ch * khw, dout, inp, (int)ch, s, &t, src,
                                           ch == c0);
        }
    }
}

/* ---- public kernels ---- */

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
 * Taken when both channel counts are at least WINO_MIN_CH. */

#define WINO_MAX_ROW 4096      /* widest padded row of tiles the stack buffers hold */
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

/* Tiles per block for K inputs and R outputs. */
static int wino_block(int k, int r)
{
    const ptrdiff_t tb = WINO_BLOCK_FLOATS / ((ptrdiff_t)16 * (k + round_up(r, CONV_MR)));
    return (int)DMCP_MAX(CONV_NR, DMCP_MIN(256, tb / CONV_NR * CONV_NR));
}

/* Floats of U plus one block's V and M, for R outputs from K inputs. */
static ptrdiff_t wino_floats(int k, int r, int threads)
{
    const ptrdiff_t rp = round_up(r, CONV_MR);
    return 16 * rp * k + (ptrdiff_t)threads * 16 * (k + rp) * wino_block(k, r);
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
    const ptrdiff_t plane = (ptrdiff_t)rp * k_n;
    #pragma omp parallel for schedule(static) if (plane * 16 > CONV_PAR_MIN)
    for (int r = 0; r < rp; r++) {
        for (int k = 0; k < k_n; k++) {
            float g[3][3] = {{0}}, t[4][3];
            if (r < r_n) {
                const float *w = flip ? weight + (ptrdiff_t)k * ldw + r * 9
                                      : weight + (ptrdiff_t)r * ldw + k * 9;
                for (int y = 0; y < 3; y++)
                    for (int x = 0; x < 3; x++)
                        g[y][x] = flip ? w[(2 - y) * 3 + (2 - x)] : w[y * 3 + x];
            }
            for (int x = 0; x < 3; x++) {         /* t = G g */
                t[0][x] = g[0][x];
                t[1][x] = 0.5f * (g[0][x] + g[1][x] + g[2][x]);
                t[2][x] = 0.5f * (g[0][x] - g[1][x] + g[2][x]);
                t[3][x] = g[2][x];
            }
            float *u = U + (ptrdiff_t)r * k_n + k;
            for (int y = 0; y < 4; y++) {         /* U = t G^T */
                u[(y * 4 + 0) * plane] = t[y][0];
                u[(y * 4 + 1) * plane] = 0.5f * (t[y][0] + t[y][1] + t[y][2]);
                u[(y * 4 + 2) * plane] = 0.5f * (t[y][0] - t[y][1] + t[y][2]);
                u[(y * 4 + 3) * plane] = t[y][2];
            }
        }
    }
}

/* Geometry of one Winograd conv: in (N, K, H, W) -> out (N, R, OH, OW). */
typedef struct {
    int n, k, h, w, r, rp, oh, ow, ph, pw, th, tw, tb;
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

/* out (=|+=) A^T M A [+ bias] for tiles t0 .. t0 + cnt: a row of tiles at a
 * time into two full output rows on the stack, then copied (added) cropped. */
static void wino_outputs(float *out, const float *M, const float *bias, const wino_geom *g,
                         ptrdiff_t t0, int cnt, bool add)
{
    const ptrdiff_t plane = (ptrdiff_t)g->rp * g->tb;
    float rows[2][WINO_MAX_ROW], quad[4][WINO_MAX_ROW / 2];
    for (int r = 0; r < g->r; r++) {
        const float *m = M + (ptrdiff_t)r * g->tb;
        const float bv = bias != NULL ? bias[r] : 0.0f;
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
                y00[j] = s2[0][0] + s2[0][1] + s2[0][2] + bv;
                y01[j] = s2[0][1] - s2[0][2] - s2[0][3] + bv;
                y10[j] = s2[1][0] + s2[1][1] + s2[1][2] + bv;
                y11[j] = s2[1][1] - s2[1][2] - s2[1][3] + bv;
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
                if (add) {
                    for (int x = 0; x < len; x++) o[x] += yr[x];
                } else {
                    memcpy(o, yr, (size_t)len * sizeof *o);
                }
            }
        }
    }
}

/* out (=|+=) conv3x3(in) with U from wino_weights; work: one block's V and M per
 * thread (at most CONV_SLOTS_MAX threads, as wino_scratch counted them). */
static void wino_conv(float *out, const float *in, const float *U, const float *bias,
                      const wino_geom *g, bool add, float *work)
{
    const ptrdiff_t tiles = (ptrdiff_t)g->n * g->th * g->tw;
    const ptrdiff_t nblocks = (tiles + g->tb - 1) / g->tb;
    const ptrdiff_t vf = (ptrdiff_t)16 * g->k * g->tb, mf = (ptrdiff_t)16 * g->rp * g->tb;
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
            wino_inputs(V, in, g, t0, cnt);
            const int cols = (int)round_up(cnt, CONV_NR);
            for (int xi = 0; xi < 16; xi++) {
                const float *u = U + (ptrdiff_t)xi * g->rp * g->k;
                const float *v = V + (ptrdiff_t)xi * g->k * g->tb;
                float *m = M + (ptrdiff_t)xi * g->rp * g->tb;
                for (int i0 = 0; i0 < g->rp; i0 += CONV_MR)
                    for (int jp = 0; jp < cols; jp += CONV_NR)
                        conv_kernel(g->k, u + (ptrdiff_t)i0 * g->k, aoff, v + jp, boff,
                                    m + (ptrdiff_t)i0 * g->tb + jp, g->tb, false);
            }
            wino_outputs(out, M, bias, g, t0, cnt, add);
        }
    }
}

static wino_geom wino_geom_of(int n, int k, int h, int w, int r, int oh, int ow, int ph, int pw)
{
    wino_geom g = {n, k, h, w, r, (int)round_up(r, CONV_MR), oh, ow, ph, pw,
                   (oh + 1) / 2, (ow + 1) / 2, wino_block(k, r)};
    return g;
}

static void wino_forward(float *out, const float *inp, const float *weight, const float *bias,
                         const conv_shape *s, float *scratch)
{
    const wino_geom g = wino_geom_of(s->n, s->c, s->h, s->w, s->oc, s->oh, s->ow, s->ph, s->pw);
    wino_weights(scratch, weight, s->w_cin_full * 9, g.r, g.rp, g.k, false);
    wino_conv(out, inp, scratch, bias, &g, false, scratch + (ptrdiff_t)16 * g.rp * g.k);
}

/* dinp (N, c, H, W) += conv3x3(dout, flipped W^T), padding 2 - p. */
static void wino_backward_data(float *dinp, const float *dout, const float *weight,
                               const conv_shape *s, float *scratch)
{
    const wino_geom g = wino_geom_of(s->n, s->oc, s->oh, s->ow, s->c, s->h, s->w, 2 - s->ph,
                                     2 - s->pw);
    wino_weights(scratch, weight, s->w_cin_full * 9, g.r, g.rp, g.k, true);
    wino_conv(dinp, dout, scratch, NULL, &g, true, scratch + (ptrdiff_t)16 * g.rp * g.k);
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

static ptrdiff_t wino_dw_scratch(const conv_shape *s, int threads)
{
    if (!conv_is_wino_dw(s))
        return 0;
    const wino_geom g = wino_geom_of(s->n, s->c, s->h, s->w, s->oc, s->oh, s->ow, s->ph, s->pw);
    const ptrdiff_t tiles = (ptrdiff_t)g.n * g.th * g.tw;
    const int slots = (int)DMCP_MIN((tiles + g.tb - 1) / g.tb, (ptrdiff_t)WINO_DW_SLOTS);
    return wino_dw_floats(&g, slots, DMCP_MIN(slots, threads));
}

static void wino_backward_weight(float *dweight, const float *dout, const float *inp,
                                 const conv_shape *s, float *scratch)
{
    const wino_geom g = wino_geom_of(s->n, s->c, s->h, s->w, s->oc, s->oh, s->ow, s->ph, s->pw);
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
    /* dW[r][k] += G^T (sum over slots, in order, of dU) G */
    const int ldw = s->w_cin_full * 9;
    #pragma omp parallel for schedule(static) if ((ptrdiff_t)g.r * g.k * 16 * slots > CONV_PAR_MIN)
    for (int r = 0; r < g.r; r++) {
        for (int k = 0; k < g.k; k++) {
            float u[4][4];
            for (int xi = 0; xi < 16; xi++) {
                float acc = 0.0f;
                for (int slot = 0; slot < slots; slot++)
                    acc += dU[slot * dusz + ((ptrdiff_t)xi * g.rp + r) * kp + k];
                u[xi / 4][xi % 4] = acc;
            }
            float t3[3][4];
            for (int x = 0; x < 4; x++) {             /* t = G^T u */
                t3[0][x] = u[0][x] + 0.5f * (u[1][x] + u[2][x]);
                t3[1][x] = 0.5f * (u[1][x] - u[2][x]);
                t3[2][x] = 0.5f * (u[1][x] + u[2][x]) + u[3][x];
            }
            float *dw = dweight + (ptrdiff_t)r * ldw + k * 9;
            for (int y = 0; y < 3; y++) {             /* dg = t G */
                dw[y * 3 + 0] += t3[y][0] + 0.5f * (t3[y][1] + t3[y][2]);
                dw[y * 3 + 1] += 0.5f * (t3[y][1] - t3[y][2]);
                dw[y * 3 + 2] += 0.5f * (t3[y][1] + t3[y][2]) + t3[y][3];
            }
        }
    }
}

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
    conv_tiling t;
    if (conv_is_dw_direct(s))
        dw_forward(out, inp, weight, bias, s, scratch);
    else if (conv_is_wino(s))
        wino_forward(out, inp, weight, bias, s, scratch);
    else if (conv_tiling_of(s, &t))
        conv_tiled_forward(out, inp, weight, bias, s, &t, scratch);
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
    if (dinp != NULL && conv_is_wino(s)) {
        wino_backward_data(dinp, dout, weight, s, scratch);
        dinp = NULL;
        if (dweight == NULL)
            return DMCP_OK;
    }
    if (dweight != NULL && conv_is_wino_dw(s)) {
        wino_backward_weight(dweight, dout, inp, s, scratch);
        return DMCP_OK;
    }
    conv_tiling t;
    if (conv_is_dw_direct(s)) {
        dw_backward(dinp, dweight, dout, inp, weight, s, scratch);
    } else if (conv_tiling_of(s, &t)) {
        /* backward-data the tiled path cannot take goes through the GEMMs */
        if (dweight != NULL || (dinp != NULL && t.data))
            conv_tiled_backward(t.data ? dinp : NULL, dweight, dout, inp, weight, s, &t, scratch);
        if (dinp != NULL && !t.data)
            conv_gemm_backward(dinp, NULL, dout, inp, weight, s, scratch);
    } else {
        conv_gemm_backward(dinp, dweight, dout, inp, weight, s, scratch);
    }
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
