/* linear.c: see linear.h.  Threaded SGEMM, no OpenMP region around it. */
#include <cblas.h>
#include "linear.h"

void linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                    int n, int in_f, int out_f, int in_full)
{
    for (int b = 0; b < n; b++)
        for (int o = 0; o < out_f; o++) out[(size_t)b * out_f + o] = bias ? bias[o] : 0.0f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out_f, in_f,
                1.0f, inp, in_f, weight, in_full, 1.0f, out, out_f);
}

void linear_backward(float *dinp, float *dweight, float *dbias,
                     const float *dout, const float *inp, const float *weight,
                     int n, int in_f, int out_f, int in_full)
{
    if (dinp)      /* dinp (N,in) += dout (N,out) @ W (out,in) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in_f, out_f,
                    1.0f, dout, out_f, weight, in_full, 1.0f, dinp, in_f);
    if (dweight)   /* dW (out,in) += dout^T (out,N) @ inp (N,in) */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out_f, in_f, n,
                    1.0f, dout, out_f, inp, in_f, 1.0f, dweight, in_full);
    if (dbias)
        for (int o = 0; o < out_f; o++) {
            float s = 0.0f;
            for (int b = 0; b < n; b++) s += dout[(size_t)b * out_f + o];
            dbias[o] += s;
        }
}

void linear_forward_naive(float *out, const float *inp, const float *weight, const float *bias,
                          int n, int in_f, int out_f, int in_full)
{
    for (int b = 0; b < n; b++)
        for (int o = 0; o < out_f; o++) {
            double s = bias ? bias[o] : 0.0;
            for (int i = 0; i < in_f; i++)
                s += (double)inp[(size_t)b * in_f + i] * weight[(size_t)o * in_full + i];
            out[(size_t)b * out_f + o] = (float)s;
        }
}

void linear_backward_naive(float *dinp, float *dweight, float *dbias,
                           const float *dout, const float *inp, const float *weight,
                           int n, int in_f, int out_f, int in_full)
{
    for (int b = 0; b < n; b++)
        for (int o = 0; o < out_f; o++) {
            const float g = dout[(size_t)b * out_f + o];
            if (dbias) dbias[o] += g;
            for (int i = 0; i < in_f; i++) {
                if (dinp) dinp[(size_t)b * in_f + i] += g * weight[(size_t)o * in_full + i];
                if (dweight) dweight[(size_t)o * in_full + i] += g * inp[(size_t)b * in_f + i];
            }
        }
}
