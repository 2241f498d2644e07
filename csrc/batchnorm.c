/* batchnorm.c: see batchnorm.h.  One OpenMP loop over channels; every sum in
 * double so the result does not depend on the thread count. */
#include <math.h>
#include "batchnorm.h"

/* inp (N,C,HW); out (N,C,HW); save_mean, save_invstd (C); running_* (>=C) */
dmcp_status batchnorm_forward_train(float *out, float *save_mean, float *save_invstd,
                                    float *running_mean, float *running_var,
                                    const float *inp, const float *gamma, const float *beta,
                                    int n, int c, int hw, float momentum, float eps)
{
    const size_t count = (size_t)n * hw;
    if (count < 1) return DMCP_ERR_SHAPE;
    #pragma omp parallel for schedule(static)
    for (int ch = 0; ch < c; ch++) {
        double sum = 0.0, sq = 0.0;
        for (int b = 0; b < n; b++) {
            const float *x = inp + ((size_t)b * c + ch) * hw;
            float s = 0.0f;
            for (int i = 0; i < hw; i++) s += x[i];
            sum += s;
        }
        const double mean = sum / (double)count;
        for (int b = 0; b < n; b++) {
            const float *x = inp + ((size_t)b * c + ch) * hw;
            const float m = (float)mean;
            float s = 0.0f;
            for (int i = 0; i < hw; i++) { float d = x[i] - m; s += d * d; }
            sq += s;
        }
        const double var = sq / (double)count;
        const float invstd = (float)(1.0 / sqrt(var + (double)eps));
        save_mean[ch] = (float)mean;
        save_invstd[ch] = invstd;
        if (momentum >= 0.0f) {
            const double unbiased = count > 1 ? sq / (double)(count - 1) : var;
            running_mean[ch] = (1.0f - momentum) * running_mean[ch] + momentum * (float)mean;
            running_var[ch] = (1.0f - momentum) * running_var[ch] + momentum * (float)unbiased;
        }
        const float scale = (gamma ? gamma[ch] : 1.0f) * invstd;
        const float shift = (beta ? beta[ch] : 0.0f) - (float)mean * scale;
        for (int b = 0; b < n; b++) {
            const float *x = inp + ((size_t)b * c + ch) * hw;
            float *y = out + ((size_t)b * c + ch) * hw;
            for (int i = 0; i < hw; i++) y[i] = x[i] * scale + shift;
        }
    }
    return DMCP_OK;
}

/* inp (N,C,HW); out (N,C,HW); gamma, beta, running_* (>=C) */
dmcp_status batchnorm_forward_eval(float *out, const float *inp,
                                   const float *gamma, const float *beta,
                                   const float *running_mean, const float *running_var,
                                   int n, int c, int hw, float eps)
{
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < n; b++) {
        for (int ch = 0; ch < c; ch++) {
            const float invstd = 1.0f / sqrtf(running_var[ch] + eps);
            const float scale = (gamma ? gamma[ch] : 1.0f) * invstd;
            const float shift = (beta ? beta[ch] : 0.0f) - running_mean[ch] * scale;
            const float *x = inp + ((size_t)b * c + ch) * hw;
            float *y = out + ((size_t)b * c + ch) * hw;
            for (int i = 0; i < hw; i++) y[i] = x[i] * scale + shift;
        }
    }
    return DMCP_OK;
}

/* dout, inp, dinp (N,C,HW); mean, invstd (C); gamma, dgamma, dbeta (>=C) */
dmcp_status batchnorm_backward(float *dinp, float *dgamma, float *dbeta,
                               const float *dout, const float *inp,
                               const float *mean, const float *invstd, const float *gamma,
                               int n, int c, int hw, int train, int accumulate)
{
    const double count = (double)n * hw;
    #pragma omp parallel for schedule(static)
    for (int ch = 0; ch < c; ch++) {
        const float m = mean[ch], is = invstd[ch];
        double sdy = 0.0, sdyx = 0.0;      /* sum dy, sum dy * xhat */
        for (int b = 0; b < n; b++) {
            const float *x = inp + ((size_t)b * c + ch) * hw;
            const float *dy = dout + ((size_t)b * c + ch) * hw;
            float s1 = 0.0f, s2 = 0.0f;
            for (int i = 0; i < hw; i++) { s1 += dy[i]; s2 += dy[i] * (x[i] - m); }
            sdy += s1; sdyx += (double)s2 * is;
        }
        if (dgamma) dgamma[ch] += (float)sdyx;
        if (dbeta) dbeta[ch] += (float)sdy;
        if (!dinp) continue;
        const float g = (gamma ? gamma[ch] : 1.0f) * is;
        const float mdy = train ? (float)(sdy / count) : 0.0f;
        const float mdyx = train ? (float)(sdyx / count) : 0.0f;
        for (int b = 0; b < n; b++) {
            const float *x = inp + ((size_t)b * c + ch) * hw;
            const float *dy = dout + ((size_t)b * c + ch) * hw;
            float *dx = dinp + ((size_t)b * c + ch) * hw;
            if (accumulate) {
                for (int i = 0; i < hw; i++) {
                    const float xhat = (x[i] - m) * is;
                    dx[i] += g * (dy[i] - mdy - xhat * mdyx);
                }
            } else {
                for (int i = 0; i < hw; i++) {
                    const float xhat = (x[i] - m) * is;
                    dx[i] = g * (dy[i] - mdy - xhat * mdyx);
                }
            }
        }
    }
    return DMCP_OK;
}
