/* pool.c: see pool.h.  Planes (n, c) are independent: one OpenMP loop over them. */
#include <math.h>
#include "pool.h"

dmcp_status maxpool2d_forward(float *out, int32_t *argmax, const float *inp,
                              int n, int c, int h, int w, int k, int s, int p, int oh, int ow)
{
    if (oh <= 0 || ow <= 0 || k <= 0 || s <= 0 || p < 0 || 2 * p > k) return DMCP_ERR_SHAPE;
    const long planes = (long)n * c;
    #pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        const float *x = inp + pl * h * w;
        float *y = out + pl * oh * ow;
        int32_t *am = argmax + pl * oh * ow;
        for (int oy = 0; oy < oh; oy++) {
            for (int ox = 0; ox < ow; ox++) {
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
                y[oy * ow + ox] = best;
                am[oy * ow + ox] = bi;
            }
        }
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
