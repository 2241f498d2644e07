/* pool.c: see pool.h.  Planes (n, c) are independent: one OpenMP loop over them. */
#include <math.h>
#include "pool.h"

/* One output (oy, ox), every tap checked against the borders.  The first
 * valid tap starts the max; a later one replaces it when larger or NaN. */
static void maxpool_one(float *y, int32_t *am, const float *x, int h, int w, int k, int s, int p,
                        int oy, int ox)
{
    float best = -INFINITY;
    int32_t bi = -1;
    for (int ky = 0; ky < k; ky++) {
        const int iy = oy * s - p + ky;
        if (iy < 0 || iy >= h) continue;
        for (int kx = 0; kx < k; kx++) {
            const int ix = ox * s - p + kx;
            if (ix < 0 || ix >= w) continue;
            const float v = x[iy * w + ix];
            if (v > best || bi < 0 || isnan(v)) { best = v; bi = iy * w + ix; }
        }
    }
    *y = best;
    *am = bi;
}

/* Output row oy of one plane: the columns whose taps all lie inside the row
 * run tap by tap across the row (vectorised, same order and rule as
 * maxpool_one, so the same max and argmax); the border columns one by one. */
static void maxpool_row(float *restrict y, int32_t *restrict am, const float *restrict x,
                        int h, int w, int k, int s, int p, int oy, int ow)
{
    int lo = (p + s - 1) / s, hi = w - k + p >= 0 ? (w - k + p) / s + 1 : 0;
    lo = lo < ow ? lo : ow;
    hi = hi < ow ? hi : ow;
    if (hi < lo) hi = lo;
    for (int ox = 0; ox < lo; ox++) maxpool_one(y + ox, am + ox, x, h, w, k, s, p, oy, ox);
    for (int ox = hi; ox < ow; ox++) maxpool_one(y + ox, am + ox, x, h, w, k, s, p, oy, ox);
    int first = 1;
    for (int ky = 0; ky < k && lo < hi; ky++) {
        const int iy = oy * s - p + ky;
        if (iy < 0 || iy >= h) continue;
        for (int kx = 0; kx < k; kx++) {
            const int base = iy * w - p + kx;       /* input index of column ox: base + ox*s */
            const float *r = x + base;
            if (first) {
                #pragma omp simd
                for (int ox = lo; ox < hi; ox++) {
                    y[ox] = r[ox * s];
                    am[ox] = base + ox * s;
                }
                first = 0;
                continue;
            }
            #pragma omp simd
            for (int ox = lo; ox < hi; ox++) {
                const float v = r[ox * s];
                const int take = v > y[ox] || v != v;
                y[ox] = take ? v : y[ox];
                am[ox] = take ? base + ox * s : am[ox];
            }
        }
    }
}

dmcp_status maxpool2d_forward(float *out, int32_t *argmax, const float *inp,
                              int n, int c, int h, int w, int k, int s, int p, int oh, int ow)
{
    if (oh <= 0 || ow <= 0 || k <= 0 || s <= 0 || p < 0 || 2 * p > k) return DMCP_ERR_SHAPE;
    const long planes = (long)n * c;
    #pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        const float *x = inp + pl * h * w;
        for (int oy = 0; oy < oh; oy++)
            maxpool_row(out + pl * oh * ow + (long)oy * ow, argmax + pl * oh * ow + (long)oy * ow,
                        x, h, w, k, s, p, oy, ow);
    }
    return DMCP_OK;
}

dmcp_status maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax,
                               int n, int c, int h, int w, int oh, int ow)
{
    const long planes = (long)n * c;
    int bad = 0;
    #pragma omp parallel for schedule(static) reduction(|:bad)
    for (long pl = 0; pl < planes; pl++) {
        float *dx = dinp + pl * h * w;
        const float *dy = dout + pl * oh * ow;
        const int32_t *am = argmax + pl * oh * ow;
        for (int i = 0; i < oh * ow; i++) {
            if (am[i] < 0 || am[i] >= h * w) { bad = 1; continue; }
            dx[am[i]] += dy[i];
        }
    }
    return bad ? DMCP_ERR_VALUE : DMCP_OK;
}

void avgpool_global_forward(float *out, const float *inp, int n, int c, int hw)
{
    const long planes = (long)n * c;
    const float inv = 1.0f / (float)hw;
    #pragma omp parallel for schedule(static) if (planes * hw > 32768)
    for (long pl = 0; pl < planes; pl++) {
        const float *x = inp + pl * hw;
        float s = 0.0f;
        for (int i = 0; i < hw; i++) s += x[i];
        out[pl] = s * inv;
    }
}

void avgpool_global_backward(float *dinp, const float *dout, int n, int c, int hw)
{
    const long planes = (long)n * c;
    const float inv = 1.0f / (float)hw;
    #pragma omp parallel for schedule(static) if (planes * hw > 32768)
    for (long pl = 0; pl < planes; pl++) {
        float *dx = dinp + pl * hw;
        const float g = dout[pl] * inv;
        for (int i = 0; i < hw; i++) dx[i] += g;
    }
}
