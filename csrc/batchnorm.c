/* batchnorm.c: see batchnorm.h.
 *
 * Work is split into blocks of whole channels, small enough that a block's
 * activations (all N images) stay in cache between its passes: per-row sums
 * over the block's rows of HW values, the block's per-channel reduction of
 * those sums in image order, then the elementwise pass over the same rows.
 * Sums run in double (vectorised with `omp simd`) and every partial sum is
 * owned by one row, so results do not depend on the thread count or the
 * blocking.
 *
 * With an epilogue, channel ch's output is z = s * (xhat * gamma + beta),
 * y = act(z), s the gate of ch's group.  Forward and backward both compute z
 * as fmaf(x, a, b) with the same a, b, so backward recovers the activation
 * mask from x exactly and keeps neither z nor y. */
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include "batchnorm.h"
#if defined(__SSE__)
#include <immintrin.h>
#endif

/* z = x*a + b, the same expression in forward and backward: fused where the
 * ISA has FMA (without it fmaf is a slow library call that stops
 * vectorisation), unfused otherwise (-std=c11 keeps GCC from contracting). */
#if defined(__FMA__) || !(defined(__x86_64__) || defined(__i386__))
#define BN_AFFINE(x, a, b) fmaf((x), (a), (b))
#else
#define BN_AFFINE(x, a, b) ((x) * (a) + (b))
#endif

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

/* Channels per block: about BN_BLOCK_FLOATS activations (all images) per
 * block, and at least 4 blocks per thread when there are enough channels. */
enum { BN_BLOCK_FLOATS = 1 << 17 };

static int channel_block(int n, int c, int hw)
{
    const size_t per_channel = (size_t)n * hw;
    const int fit = (int)DMCP_MIN((size_t)c, DMCP_MAX((size_t)1, BN_BLOCK_FLOATS / per_channel));
    const int spread = DMCP_MAX(1, c / (4 * omp_get_max_threads()));
    return DMCP_MIN(fit, spread);
}

/* Channel ch's two sums over the images, in image order, from the per-row
 * pairs part[2 * (b * c + ch) + {0, 1}]. */
static void channel_sums(const double *part, int n, int c, int ch, double *s1, double *s2)
{
    double a = 0.0, b2 = 0.0;
    for (int b = 0; b < n; b++) {
        a += part[2 * ((size_t)b * c + ch)];
        b2 += part[2 * ((size_t)b * c + ch) + 1];
    }
    *s1 = a;
    *s2 = b2;
}

/* Outputs of tensors this large are written with streaming stores: they go
 * to memory without first reading each line in, and the next layer reads
 * them from memory either way. */
#define BN_STREAM_MIN_BYTES ((size_t)32 << 20)

/* y[i] = src[i], i < len, streaming where y is 16-byte aligned.  The caller
 * fences (_mm_sfence) before anything else reads y. */
static void stream_copy(float *restrict y, const float *restrict src, int len)
{
    int i = 0;
#if defined(__SSE__)
    for (; i < len && ((uintptr_t)(y + i) & 15) != 0; i++)
        y[i] = src[i];
    for (; i + 4 <= len; i += 4)
        _mm_stream_ps(y + i, _mm_loadu_ps(src + i));
#endif
    for (; i < len; i++)
        y[i] = src[i];
}

static void stream_fence(void)
{
#if defined(__SSE__)
    _mm_sfence();
#endif
}

/* y = act(x * a + b) over one row of hw values. */
static void row_apply(float *restrict y, const float *restrict x, int hw, float a, float b,
                      int act, float hi)
{
    if (act) {
        #pragma omp simd
        for (int i = 0; i < hw; i++) {
            float z = BN_AFFINE(x[i], a, b);
            z = z > 0.0f ? z : 0.0f;          /* not fmaxf/fminf: those do not vectorise */
            y[i] = z < hi ? z : hi;
        }
    } else {
        #pragma omp simd
        for (int i = 0; i < hw; i++) y[i] = BN_AFFINE(x[i], a, b);
    }
}

enum { BN_CHUNK = 256 };

/* row_apply through a chunk on the stack and streaming stores. */
static void row_apply_stream(float *restrict y, const float *restrict x, int hw, float a,
                             float b, int act, float hi)
{
    float t[BN_CHUNK];
    for (int i0 = 0; i0 < hw; i0 += BN_CHUNK) {
        const int len = DMCP_MIN(BN_CHUNK, hw - i0);
        row_apply(t, x + i0, len, a, b, act, hi);
        stream_copy(y + i0, t, len);
    }
}

/* The forward's a, b of every channel in [c0, c1): z = fmaf(x, a, b). */
static void channel_coefs(float *a, float *b, int c0, int c1, const float *mean,
                          const float *invstd, const float *gamma, const float *beta,
                          const bn_epilogue *ep)
{
    for (int ch = c0; ch < c1; ch++) {
        const float s = gate_of(ep, ch);
        const float scale = (gamma ? gamma[ch] : 1.0f) * invstd[ch];
        const float shift = (beta ? beta[ch] : 0.0f) - mean[ch] * scale;
        a[ch] = scale * s;
        b[ch] = shift * s;
    }
}

/* Up to BN_CHUNK masked gradients are formed in float on the stack, then
 * summed in double: two loops that each vectorise on any ISA (one loop with
 * both fell back to a branchy scalar loop on AVX2, 5x slower).
 * s1 = sum dz, s2 = sum dz * (x - m) over one row, dz = dy where
 * 0 < fmaf(x, a, b) < hi, else 0. */
static void masked_row_sums(const float *restrict x, const float *restrict dy, int hw,
                            float a, float b, float hi, float m, double *s1, double *s2)
{
    double t1 = 0.0, t2 = 0.0;
    float dz[BN_CHUNK];
    for (int i0 = 0; i0 < hw; i0 += BN_CHUNK) {
        const int len = DMCP_MIN(BN_CHUNK, hw - i0);
        const float *xs = x + i0, *ds = dy + i0;
        #pragma omp simd
        for (int i = 0; i < len; i++) {
            /* load, then select: a conditional load becomes vmaskmovps,
             * microcoded and slow on AMD Zen */
            const float z = BN_AFFINE(xs[i], a, b), d = ds[i];
            dz[i] = ((z > 0.0f) & (z < hi)) ? d : 0.0f;
        }
        #pragma omp simd reduction(+:t1, t2)
        for (int i = 0; i < len; i++) {
            t1 += dz[i];
            t2 += (double)dz[i] * (xs[i] - m);
        }
    }
    *s1 = t1;
    *s2 = t2;
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
    const int act = act_on(ep), cb = channel_block(n, c, hw), nblocks = (c + cb - 1) / cb;
    const float hi = act_hi(ep);
    const bool stream = count * c * sizeof(float) >= BN_STREAM_MIN_BYTES;
    double *part = malloc((size_t)n * c * 2 * sizeof *part);  /* per row: sum, sum of squares */
    float *ab = malloc((size_t)c * 2 * sizeof *ab);            /* per channel: a, b */
    if (!part || !ab) { free(part); free(ab); return DMCP_ERR_NOMEM; }
    #pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        const int c0 = blk * cb, c1 = DMCP_MIN(c0 + cb, c);
        /* one pass: sums about the channel's first value, which keeps the
         * sum-of-squares difference below well conditioned */
        for (int b = 0; b < n; b++) {
            for (int ch = c0; ch < c1; ch++) {
                const float *x = inp + ((size_t)b * c + ch) * hw;
                const double x0 = inp[(size_t)ch * hw];
                double sum = 0.0, sq = 0.0;
                #pragma omp simd reduction(+:sum, sq)
                for (int i = 0; i < hw; i++) {
                    const double d = (double)x[i] - x0;
                    sum += d;
                    sq += d * d;
                }
                part[2 * ((size_t)b * c + ch)] = sum;
                part[2 * ((size_t)b * c + ch) + 1] = sq;
            }
        }
        for (int ch = c0; ch < c1; ch++) {
            double sum, sq;
            channel_sums(part, n, c, ch, &sum, &sq);
            const double dmean = sum / (double)count;
            const double ss = fmax(sq - sum * dmean, 0.0);   /* sum of (x - mean)^2 */
            const double var = ss / (double)count;
            const double mean = (double)inp[(size_t)ch * hw] + dmean;
            save_mean[ch] = (float)mean;
            save_invstd[ch] = (float)(1.0 / sqrt(var + (double)eps));
            if (momentum >= 0.0f) {
                const double unbiased = count > 1 ? ss / (double)(count - 1) : var;
                running_mean[ch] = (1.0f - momentum) * running_mean[ch] + momentum * (float)mean;
                running_var[ch] = (1.0f - momentum) * running_var[ch] + momentum * (float)unbiased;
            }
        }
        channel_coefs(ab, ab + c, c0, c1, save_mean, save_invstd, gamma, beta, ep);
        for (int b = 0; b < n; b++)
            for (int ch = c0; ch < c1; ch++)
                (stream ? row_apply_stream : row_apply)(out + ((size_t)b * c + ch) * hw,
                                                        inp + ((size_t)b * c + ch) * hw, hw,
                                                        ab[ch], ab[c + ch], act, hi);
        if (stream)
            stream_fence();
    }
    free(part);
    free(ab);
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
    float *ab = malloc((size_t)c * 3 * sizeof *ab);            /* per channel: a, b, invstd */
    if (!ab) return DMCP_ERR_NOMEM;
    for (int ch = 0; ch < c; ch++) ab[2 * c + ch] = 1.0f / sqrtf(running_var[ch] + eps);
    channel_coefs(ab, ab + c, 0, c, running_mean, ab + 2 * c, gamma, beta, ep);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < n; b++)
        for (int ch = 0; ch < c; ch++)
            row_apply(out + ((size_t)b * c + ch) * hw, inp + ((size_t)b * c + ch) * hw, hw,
                      ab[ch], ab[c + ch], act, hi);
    free(ab);
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
    const int act = act_on(ep), cb = channel_block(n, c, hw), nblocks = (c + cb - 1) / cb;
    const float hi = act_hi(ep);
    const bool stream = !accumulate && (size_t)count * c * sizeof(float) >= BN_STREAM_MIN_BYTES;
    double *part = malloc((size_t)n * c * 2 * sizeof *part);  /* per row: S1, S2 below */
    float *coef = malloc((size_t)c * 5 * sizeof *coef);        /* per channel: a, b, g, k1, k2 */
    double *dPc = malloc((size_t)c * sizeof *dPc);             /* each channel's share of dP */
    if (!part || !coef || !dPc) { free(part); free(coef); free(dPc); return DMCP_ERR_NOMEM; }
    float *ca = coef, *cb_ = coef + c, *cg = coef + 2 * c, *k1 = coef + 3 * c, *k2 = coef + 4 * c;
    #pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        const int c0 = blk * cb, c1 = DMCP_MIN(c0 + cb, c);
        channel_coefs(ca, cb_, c0, c1, mean, invstd, gamma, beta, ep);
        /* S1 = sum dz, S2 = sum dz * (x - mean) per row; dz = dL/dz */
        for (int b = 0; b < n; b++) {
            for (int ch = c0; ch < c1; ch++) {
                const float *x = inp + ((size_t)b * c + ch) * hw;
                const float *dy = dout + ((size_t)b * c + ch) * hw;
                const float a = ca[ch], bb = cb_[ch], m = mean[ch];
                double s1 = 0.0, s2 = 0.0;
                if (act) {
                    masked_row_sums(x, dy, hw, a, bb, hi, m, &s1, &s2);
                } else {
                    #pragma omp simd reduction(+:s1, s2)
                    for (int i = 0; i < hw; i++) {
                        s1 += dy[i];
                        s2 += (double)dy[i] * (x[i] - m);
                    }
                }
                part[2 * ((size_t)b * c + ch)] = s1;
                part[2 * ((size_t)b * c + ch) + 1] = s2;
            }
        }
        for (int ch = c0; ch < c1; ch++) {
            double s1, s2;
            channel_sums(part, n, c, ch, &s1, &s2);
            const float is = invstd[ch], gm = gamma ? gamma[ch] : 1.0f;
            const float s = gate_of(ep, ch);
            const double sxh = s2 * is;       /* sum dz * xhat */
            dPc[ch] = gm * sxh + (beta ? beta[ch] : 0.0f) * s1;
            if (dgamma) dgamma[ch] += (float)(s * sxh);
            if (dbeta) dbeta[ch] += (float)(s * s1);
            /* dx = g * (dbn - mean(dbn) - xhat * mean(dbn * xhat)), dbn = s * dz */
            cg[ch] = gm * is * s;
            k1[ch] = train ? (float)(s1 / count) : 0.0f;
            k2[ch] = train ? (float)(sxh / count) * is : 0.0f;
        }
        if (!dinp) continue;
        for (int b = 0; b < n; b++) {
            for (int ch = c0; ch < c1; ch++) {
                const float *x = inp + ((size_t)b * c + ch) * hw;
                const float *dy = dout + ((size_t)b * c + ch) * hw;
                float *dx = dinp + ((size_t)b * c + ch) * hw;
                const float a = ca[ch], bb = cb_[ch], m = mean[ch];
                const float g = cg[ch], q1 = k1[ch], q2 = k2[ch];
                if (accumulate) {
                    #pragma omp simd
                    for (int i = 0; i < hw; i++) {
                        const float z = BN_AFFINE(x[i], a, bb), d = dy[i];
                        const float dz = (!act || ((z > 0.0f) & (z < hi))) ? d : 0.0f;
                        dx[i] += g * (dz - q1 - (x[i] - m) * q2);
                    }
                } else {
                    float t[BN_CHUNK];
                    for (int i0 = 0; i0 < hw; i0 += BN_CHUNK) {
                        const int len = DMCP_MIN(BN_CHUNK, hw - i0);
                        const float *xs = x + i0, *ds = dy + i0;
                        float *out = stream ? t : dx + i0;
                        #pragma omp simd
                        for (int i = 0; i < len; i++) {
                            const float z = BN_AFFINE(xs[i], a, bb), d = ds[i];
                            const float dz = (!act || ((z > 0.0f) & (z < hi))) ? d : 0.0f;
                            out[i] = g * (dz - q1 - (xs[i] - m) * q2);
                        }
                        if (stream)
                            stream_copy(dx + i0, t, len);
                    }
                }
            }
        }
        if (stream)
            stream_fence();
    }
    if (ep && ep->P && ep->dP) {
        for (int k = 0; k < ep->ngroups; k++) {
            const int c0 = ep->m + k * ep->g, c1 = DMCP_MIN(c0 + ep->g, c);
            double acc = 0.0;
            for (int ch = c0; ch < c1; ch++) acc += dPc[ch];
            ep->dP[k] += (float)acc;
        }
    }
    free(part);
    free(coef);
    free(dPc);
    return DMCP_OK;
}
