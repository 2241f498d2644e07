/* conv2d_gemm.c: the GEMM path of conv2d (see conv2d_internal.h). */
#include "conv2d_internal.h"

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
/* Output planes under CONV_SMALL_PLANE pixels give one image GEMMs too narrow
 * for OpenBLAS (ResNet-50's 256x196x2304: 150 GFLOP/s); their chunks may hold
 * CONV_COL_CAP_SMALL floats (8 MB).  ResNet-50 b16: the 3x3 and 1x1 stride-2
 * layers at 14x14 and 7x7 run 1.15-1.4x faster, a step 6-11%; at 1<<23 the
 * 128-channel one at 28x28 lost 20%. */
#ifndef CONV_SMALL_PLANE
#define CONV_SMALL_PLANE 1024
#endif
#ifndef CONV_COL_CAP_SMALL
#define CONV_COL_CAP_SMALL (1 << 21)
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

/* Images per GEMM chunk; depends on the shape only, never on the thread count. */
static int conv_chunk(const conv_shape *s)
{
    const ptrdiff_t ohw = (ptrdiff_t)s->oh * s->ow;
    const double macs = (double)s->n * s->oc * ohw * (s->c / s->groups) * s->kh * s->kw;
    if ((conv_is_pointwise(s) && ohw >= CONV_POINTWISE_DIRECT) || macs < CONV_GEMM_TINY)
        return 1;
    const ptrdiff_t per = ((ptrdiff_t)s->c * s->kh * s->kw + s->oc) * ohw;
    const ptrdiff_t nb = (ohw < CONV_SMALL_PLANE ? CONV_COL_CAP_SMALL : CONV_COL_CAP) / per;
    return (int)DMCP_MAX(1, DMCP_MIN(nb, (ptrdiff_t)s->n));
}

static bool conv_pointwise_images(const conv_shape *s)
{
    return conv_is_pointwise(s) && s->groups == 1 && s->n >= 2;
}

/* Scratch of the GEMM path. */
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

/* x (nb, oc, OH*OW) <- epilogue(mat (oc, ldm)), the inverse of gather_chunk. */
static void scatter_chunk(float *x, const float *mat, ptrdiff_t ldm, const conv_epilogue *ep,
                          int nb, int oc, ptrdiff_t ohw)
{
    const ptrdiff_t jobs = (ptrdiff_t)nb * oc;
    #pragma omp parallel for schedule(static) if (jobs * ohw > CONV_PAR_MIN)
    for (ptrdiff_t j = 0; j < jobs; j++) {
        const ptrdiff_t b = j / oc, o = j % oc;
        float *restrict dst = x + j * ohw;
        const float *restrict src = mat + o * ldm + b * ohw;
        if (ep == NULL)
            memcpy(dst, src, (size_t)ohw * sizeof *dst);
        else
            conv_ep_row(dst, src, ohw, conv_ep_of(ep, (int)o));
    }
}

/* out (N,oc,OH,OW) = per chunk and group g: W_g (oc/G, K) @ col_g (K, nb*OH*OW),
 * then the epilogue, K = (c/G)*KH*KW, W_g rows ldw = w_cin_full*KH*KW apart. */
static void conv_gemm_forward(float *out, const float *inp, const float *weight,
                              const conv_epilogue *ep, const conv_shape *s, float *scratch)
{
    const int groups = s->groups, cg = s->c / groups, ocg = s->oc / groups;
    const int ldw = s->w_cin_full * s->kh * s->kw, k = cg * s->kh * s->kw;
    const ptrdiff_t ohw = (ptrdiff_t)s->oh * s->ow, hw = (ptrdiff_t)s->h * s->w;
    const ptrdiff_t rows = (ptrdiff_t)s->c * s->kh * s->kw;
    const bool pointwise = conv_is_pointwise(s);
    if (conv_pointwise_images(s)) {
        /* images over threads, one single-threaded GEMM each: no fork/join
         * per image, no gather/scatter, every thread a whole GEMM, then the
         * epilogue on its image while it is in cache */
        const int blas_threads = blas_solo_begin();
        #pragma omp parallel for schedule(dynamic, 1)
        for (int b = 0; b < s->n; b++) {
            float *ob = out + (ptrdiff_t)b * s->oc * ohw;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->oc, (int)ohw, k, 1.0f,
                        weight, ldw, inp + (ptrdiff_t)b * s->c * hw, (int)ohw, 0.0f, ob, (int)ohw);
            for (int o = 0; ep != NULL && o < s->oc; o++)
                conv_ep_row(ob + o * ohw, ob + o * ohw, ohw, conv_ep_of(ep, o));
        }
        blas_solo_end(blas_threads);
        return;
    }
    const int chunk = conv_chunk(s);
    /* one image at a time writes in place, then gets its epilogue */
    const bool in_place = chunk == 1;

    for (int n0 = 0; n0 < s->n; n0 += chunk) {
        const int nb = DMCP_MIN(chunk, s->n - n0);
        const ptrdiff_t ldc = nb * ohw;
        const float *img = inp + (ptrdiff_t)n0 * s->c * hw;
        float *out_n = out + (ptrdiff_t)n0 * s->oc * ohw;
        /* a chunk goes through res, then is scattered with its epilogue */
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
                        0.0f, res + (ptrdiff_t)g * ocg * ldc, (int)ldc);
        }
        if (!in_place)
            scatter_chunk(out_n, res, ldc, ep, nb, s->oc, ohw);
        else if (ep != NULL)
            conv_ep_images(out_n, ep, 1, s->oc, ohw);
    }
}

/* Per chunk and group: dW_g += dout_g (oc/G, nb*OH*OW) @ col_g^T;
 * dcol_g = W_g^T @ dout_g, then col2im into dinp (pointwise, one image:
 * straight into dinp with beta = 1).  dcol_g overwrites col_g once dW_g has
 * used it. */
/* Pointwise convs, images over threads with one single-threaded GEMM each:
 * dinp[b] (+)= W^T @ dout[b] (beta 1 accumulates, 0 with set); dW partial of slot i (a
 * fixed range of images, CONV_SLOTS at most) = sum of dout[b] @ inp[b]^T,
 * then dW += the partials in slot order, so no result depends on the thread
 * count. */
static void conv_pointwise_backward(float *dinp, float *dweight, const float *dout,
                                    const float *inp, const float *weight,
                                    const conv_shape *s, float *scratch, bool set)
{
    const int c = s->c, oc = s->oc, ldw = s->w_cin_full;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w;
    const int slots = DMCP_MIN(s->n, CONV_SLOTS);
    const int blas_threads = blas_solo_begin();
    if (dinp != NULL) {
        #pragma omp parallel for schedule(dynamic, 1)
        for (int b = 0; b < s->n; b++)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c, (int)hw, oc, 1.0f, weight, ldw,
                        dout + (ptrdiff_t)b * oc * hw, (int)hw, set ? 0.0f : 1.0f,
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
    blas_solo_end(blas_threads);
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
                               const conv_shape *s, float *scratch, bool set)
{
    if (conv_pointwise_images(s)) {
        conv_pointwise_backward(dinp, dweight, dout, inp, weight, s, scratch, set);
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
                            in_place && !set ? 1.0f : 0.0f, dst, (int)ldc);
            }
        }
        if (dinp_n != NULL && !in_place) {
            if (set)    /* col2im adds overlapping taps (and skips pixels no tap reads) */
                fill_zero(dinp_n, (size_t)nb * s->c * hw);
            col2im_add(dinp_n, scratch, ldc, nb, s);
        }
    }
}
