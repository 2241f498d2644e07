/* batchnorm.c: see batchnorm.h.  One OpenMP loop over channels; the per-channel
 * sums run in double (vectorised with `omp simd`), so results do not depend on
 * the thread count.
 *
 * With an epilogue, channel ch's output is z = s * (xhat * gamma + beta),
 * y = act(z), s the gate of ch's group.  Forward and backward both compute z
 * as fmaf(x, a, b) with the same a, b, so backward recovers the activation
 * mask from x exactly and keeps neither z nor y. */
#include <math.h>
#include <stdlib.h>
#include "batchnorm.h"

static float gate_of(const bn_epilogue *ep, int ch)
{
    if (!ep || !ep->P || ch < ep->m) return 1.0f;
    const int k = (ch - ep->m) / ep->g;
    return k < ep->ngroups ? ep->P[k] : 1.0f;
}

static float act_hi(const bn_epilogue *ep)
{
    return ep && ep->act > 0.0f ? ep->act : INFINITY;
}

static int act_on(const bn_epilogue *ep) { return ep && ep->act >= 0.0f; }

/* y = act(x * a + b) over one channel's n rows. */
static void channel_apply(float *out, const float *inp, int n, int c, int hw, int ch,
                          float a, float b, int act, float hi)
{
    for (int r = 0; r < n; r++) {
        const float *x = inp + ((size_t)r * c + ch) * hw;
        float *y = out + ((size_t)r * c + ch) * hw;
        if (act) {
            #pragma omp simd
            for (int i = 0; i < hw; i++) {
                const float z = fmaf(x[i], a, b);
                y[i] = fminf(fmaxf(z, 0.0f), hi);
            }
        } else {
            #pragma omp simd
            for (int i = 0; i < hw; i++) y[i] = fmaf(x[i], a, b);
        }
    }
}

/* inp (N,C,HW); out (N,C,HW); save_mean, save_invstd (C); running_* (>=C) */
dmcp_status batchnorm_forward_train(float *out, float *save_mean, float *save_invstd,
                                    float *running_mean, float *running_var,
                                    const float *inp, const float *gamma, const float *beta,
                                    int n, int c, int hw, float momentum, float eps,
                                    const bn_epilogue *ep)
{
    const size_t count = (size_t)n * hw;
    if (count < 1) return DMCP_ERR_SHAPE;
    const int act = act_on(ep);
    const float hi = act_hi(ep);
    #pragma omp parallel for schedule(static)
    for (int ch = 0; ch < c; ch++) {
        /* one pass: sum and sum of squares about the channel's first value */
        const float x0 = inp[(size_t)ch * hw];
        double sum = 0.0, sq = 0.0;
        for (int r = 0; r < n; r++) {
            const float *x = inp + ((size_t)r * c + ch) * hw;
            #pragma omp simd reduction(+:sum, sq)
            for (int i = 0; i < hw; i++) {
                const double d = (double)x[i] - (double)x0;
                sum += d;
                sq += d * d;
            }
        }
        const double dmean = sum / (double)count;
        const double ss = fmax(sq - sum * dmean, 0.0);   /* sum of (x - mean)^2 */
        const double var = ss / (double)count;
        const double mean = (double)x0 + dmean;
        const float invstd = (float)(1.0 / sqrt(var + (double)eps));
        save_mean[ch] = (float)mean;
        save_invstd[ch] = invstd;
        if (momentum >= 0.0f) {
            const double unbiased = count > 1 ? ss / (double)(count - 1) : var;
            running_mean[ch] = (1.0f - momentum) * running_mean[ch] + momentum * (float)mean;
            running_var[ch] = (1.0f - momentum) * running_var[ch] + momentum * (float)unbiased;
        }
        const float s = gate_of(ep, ch);
        const float scale = (gamma ? gamma[ch] : 1.0f) * invstd;
        const float shift = (beta ? beta[ch] : 0.0f) - (float)mean * scale;
        channel_apply(out, inp, n, c, hw, ch, scale * s, shift * s, act, hi);
    }
    return DMCP_OK;
}

/* inp (N,C,HW); out (N,C,HW); gamma, beta, running_* (>=C) */
dmcp_status batchnorm_forward_eval(float *out, const float *inp,
                                   const float *gamma, const float *beta,
                                   const float *running_mean, const float *running_var,
                                   int n, int c, int hw, float eps, const bn_epilogue *ep)
{
    const int act = act_on(ep);
    const float hi = act_hi(ep);
    #pragma omp parallel for schedule(static)
    for (int ch = 0; ch < c; ch++) {
        const float invstd = 1.0f / sqrtf(running_var[ch] + eps);
        const float s = gate_of(ep, ch);
        const float scale = (gamma ? gamma[ch] : 1.0f) * invstd;
        const float shift = (beta ? beta[ch] : 0.0f) - running_mean[ch] * scale;
        channel_apply(out, inp, n, c, hw, ch, scale * s, shift * s, act, hi);
    }
    return DMCP_OK;
}

/* dout, inp, dinp (N,C,HW); mean, invstd (C); gamma, beta, dgamma, dbeta (>=C);
 * with a gated epilogue, ep->dP (ngroups) */
dmcp_status batchnorm_backward(float *dinp, float *dgamma, float *dbeta,
                               const float *dout, const float *inp,
                               const float *mean, const float *invstd,
                               const float *gamma, const float *beta,
                               int n, int c, int hw, int train, int accumulate,
                               const bn_epilogue *ep)
{
    const double count = (double)n * hw;
    const int act = act_on(ep);
    const float hi = act_hi(ep);
    const int want_dP = ep && ep->P && ep->dP && ep->ngroups > 0;
    double *dPc = NULL;                      /* each channel's share of dP, summed in order */
    if (want_dP && !(dPc = malloc((size_t)c * sizeof *dPc))) return DMCP_ERR_NOMEM;
    #pragma omp parallel for schedule(static)
    for (int ch = 0; ch < c; ch++) {
        const float m = mean[ch], is = invstd[ch];
        const float gm = gamma ? gamma[ch] : 1.0f, bt = beta ? beta[ch] : 0.0f;
        const float s = gate_of(ep, ch);
        const float a = gm * is * s, b = (bt - m * (gm * is)) * s;
        double s1 = 0.0, s2 = 0.0;           /* sum dz, sum dz * (x - mean); dz = dL/dz */
        for (int r = 0; r < n; r++) {
            const float *x = inp + ((size_t)r * c + ch) * hw;
            const float *dy = dout + ((size_t)r * c + ch) * hw;
            if (act) {
                #pragma omp simd reduction(+:s1, s2)
                for (int i = 0; i < hw; i++) {
                    const float z = fmaf(x[i], a, b);
                    const float dz = (z > 0.0f && z < hi) ? dy[i] : 0.0f;
                    s1 += dz;
                    s2 += (double)dz * (x[i] - m);
                }
            } else {
                #pragma omp simd reduction(+:s1, s2)
                for (int i = 0; i < hw; i++) {
                    s1 += dy[i];
                    s2 += (double)dy[i] * (x[i] - m);
                }
            }
        }
        const double sxh = s2 * is;          /* sum dz * xhat */
        if (dPc) dPc[ch] = gm * sxh + bt * s1;
        if (dgamma) dgamma[ch] += (float)(s * sxh);
        if (dbeta) dbeta[ch] += (float)(s * s1);
        if (!dinp) continue;
        /* dx = g * (dbn - mean(dbn) - xhat * mean(dbn * xhat)), dbn = s * dz */
        const float g = gm * is * s;
        const float k1 = train ? (float)(s1 / count) : 0.0f;
        const float k2 = train ? (float)(sxh / count) * is : 0.0f;
        for (int r = 0; r < n; r++) {
            const float *x = inp + ((size_t)r * c + ch) * hw;
            const float *dy = dout + ((size_t)r * c + ch) * hw;
            float *dx = dinp + ((size_t)r * c + ch) * hw;
            if (accumulate) {
                #pragma omp simd
                for (int i = 0; i < hw; i++) {
                    const float z = fmaf(x[i], a, b);
                    const float dz = (!act || (z > 0.0f && z < hi)) ? dy[i] : 0.0f;
                    dx[i] += g * (dz - k1 - (x[i] - m) * k2);
                }
            } else {
                #pragma omp simd
                for (int i = 0; i < hw; i++) {
                    const float z = fmaf(x[i], a, b);
                    const float dz = (!act || (z > 0.0f && z < hi)) ? dy[i] : 0.0f;
                    dx[i] = g * (dz - k1 - (x[i] - m) * k2);
                }
            }
        }
    }
    if (dPc) {
        for (int k = 0; k < ep->ngroups; k++) {
            const int c0 = ep->m + k * ep->g, c1 = DMCP_MIN(c0 + ep->g, c);
            double acc = 0.0;
            for (int ch = c0; ch < c1; ch++) acc += dPc[ch];
            ep->dP[k] += (float)acc;
        }
        free(dPc);
    }
    return DMCP_OK;
}
