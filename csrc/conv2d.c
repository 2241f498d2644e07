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
#define CONV_COL_CAP (2 << 20)
/* Pointwise convs with at least this many output pixels per image run per
 * image on the image itself: the GEMM is wide enough and no copy is needed. */
#define CONV_POINTWISE_DIRECT 1024

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

size_t conv2d_scratch_floats(const conv_shape *s)
{
    if (conv_check(s) != DMCP_OK || conv_is_depthwise(s))
        return 0;
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
