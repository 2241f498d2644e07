/* conv2d.c: 2-D convolution, float32, NCHW: shape checks, the dispatch to the
 * paths (conv2d_gemm.c, conv2d_tiled.c, conv2d_depthwise.c, conv2d_winograd.c;
 * described in conv2d_internal.h) and the naive references. */
#include "conv2d_internal.h"

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
    /* the Winograd buffers only where some pass of this variant runs there */
    const bool wino = conv_use_wino(s, 0) || conv_use_wino(s, 1) || conv_use_wino(s, 2);
    return wino ? DMCP_MAX(rest, wino_scratch(s)) : rest;
}

/* ---- public kernels ---- */

/* inp (N,c,H,W); weight (OC_full, w_cin_full, KH, KW), rows [:oc], inputs [:c/groups];
 * bias (OC_full) or NULL, [:oc] used; out (N,oc,OH,OW);
 * scratch conv2d_scratch_floats(s) floats (may be NULL when that is 0). */
dmcp_status conv2d_forward(float *out, const float *inp, const float *weight,
                           const conv_epilogue *ep, const conv_shape *s, float *scratch)
{
    dmcp_status st = conv_check(s);
    if (st != DMCP_OK)
        return st;
    if (out == NULL || inp == NULL || weight == NULL ||
        (scratch == NULL && conv2d_scratch_floats(s) > 0))
        return DMCP_ERR_VALUE;
    if (ep != NULL && ep->scale == NULL && ep->shift == NULL && !(ep->act >= 0.0f))
        ep = NULL;
    conv_tiling t;
    if (conv_is_dw_direct(s))
        dw_forward(out, inp, weight, ep, s, scratch);
    else if (conv_use_wino(s, 0))
        wino_forward(out, inp, weight, ep, s, scratch);
    else if (conv_tiling_of(s, &t))
        conv_tiled_forward(out, inp, weight, ep, s, &t, scratch);
    else
        conv_gemm_forward(out, inp, weight, ep, s, scratch);
    return DMCP_OK;
}

/* dout (N,oc,OH,OW); inp (N,c,H,W); weight as in conv2d_forward;
 * dinp (N,c,H,W) += (with dinp_set: =), dweight (full buffer, active slice)
 * +=, dbias[:oc] +=, each may be NULL; scratch conv2d_scratch_floats(s) floats.
 * With dinp_set the Winograd, tiled and pointwise paths write dinp as they
 * form it, where a zero-fill first added a pass over the whole tensor; the
 * col2im and depthwise paths, which add overlapping taps, zero it first. */
dmcp_status conv2d_backward(float *dinp, float *dweight, float *dbias,
                            const float *dout, const float *inp, const float *weight,
                            const conv_shape *s, float *scratch, bool dinp_set)
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
    if (dinp != NULL && conv_use_wino(s, 1)) {
        wino_backward_data(dinp, dout, weight, s, scratch, dinp_set);
        dinp = NULL;
        if (dweight == NULL)
            return DMCP_OK;
    }
    if (dweight != NULL && conv_use_wino(s, 2)) {
        wino_backward_weight(dweight, dout, inp, s, scratch);
        dweight = NULL;
        if (dinp == NULL)
            return DMCP_OK;
    }
    conv_tiling t;
    if (conv_is_dw_direct(s)) {
        if (dinp != NULL && dinp_set)   /* the depthwise kernels accumulate */
            fill_zero(dinp, (size_t)s->n * s->c * s->h * s->w);
        dw_backward(dinp, dweight, dout, inp, weight, s, scratch);
    } else if (conv_tiling_of(s, &t)) {
        /* backward-data the tiled path cannot take goes through the GEMMs */
        if (dweight != NULL || (dinp != NULL && t.data))
            conv_tiled_backward(t.data ? dinp : NULL, dweight, dout, inp, weight, s, &t, scratch,
                                dinp_set);
        if (dinp != NULL && !t.data)
            conv_gemm_backward(dinp, NULL, dout, inp, weight, s, scratch, dinp_set);
    } else {
        conv_gemm_backward(dinp, dweight, dout, inp, weight, s, scratch, dinp_set);
    }
    return DMCP_OK;
}

/* ---- naive references ---- */

/* Same contract as conv2d_forward; direct loops, double accumulators, no scratch. */
dmcp_status conv2d_forward_naive(float *out, const float *inp, const float *weight,
                                 const conv_epilogue *ep, const conv_shape *s)
{
    const float *bias = ep != NULL && ep->scale == NULL ? ep->shift : NULL;
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
        double y = acc;
        if (ep != NULL && ep->scale != NULL)
            y = acc * ep->scale[o] + (ep->shift != NULL ? ep->shift[o] : 0.0);
        if (ep != NULL && ep->act >= 0.0f)
            y = y < 0.0 ? 0.0 : ep->act > 0.0f && y > ep->act ? ep->act : y;
        out[(((ptrdiff_t)n * s->oc + o) * s->oh + oy) * s->ow + ox] = (float)y;
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
