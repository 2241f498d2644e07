/* activation.c: see activation.h. */
#include "activation.h"

void fill_zero(float *x, size_t len)
{
    #pragma omp parallel for schedule(static) if (len > 32768)
    for (size_t i = 0; i < len; i++) x[i] = 0.0f;
}

void relu_forward(float *out, const float *inp, size_t len, float cap)
{
    const float hi = cap > 0.0f ? cap : 3.402823466e38f;
    #pragma omp parallel for schedule(static) if (len > 32768)
    for (size_t i = 0; i < len; i++) {
        float x = inp[i];
        x = x > 0.0f ? x : 0.0f;
        out[i] = x < hi ? x : hi;
    }
}

void relu_backward(float *dinp, const float *dout, const float *out, size_t len, float cap,
                   int accumulate)
{
    const float hi = cap > 0.0f ? cap : 3.402823466e38f;
    if (accumulate) {
        #pragma omp parallel for schedule(static) if (len > 32768)
        for (size_t i = 0; i < len; i++)
            dinp[i] += (out[i] > 0.0f && out[i] < hi) ? dout[i] : 0.0f;
    } else {
        #pragma omp parallel for schedule(static) if (len > 32768)
        for (size_t i = 0; i < len; i++)
            dinp[i] = (out[i] > 0.0f && out[i] < hi) ? dout[i] : 0.0f;
    }
}

void add_forward(float *out, const float *a, const float *b, size_t len, float act)
{
    if (act < 0.0f) {
        #pragma omp parallel for schedule(static) if (len > 32768)
        for (size_t i = 0; i < len; i++) out[i] = a[i] + b[i];
        return;
    }
    const float hi = act > 0.0f ? act : 3.402823466e38f;
    #pragma omp parallel for schedule(static) if (len > 32768)
    for (size_t i = 0; i < len; i++) {
        float x = a[i] + b[i];
        x = x > 0.0f ? x : 0.0f;
        out[i] = x < hi ? x : hi;
    }
}

void add_backward(float *dinp, const float *dout, size_t len)
{
    #pragma omp parallel for schedule(static) if (len > 32768)
    for (size_t i = 0; i < len; i++) dinp[i] += dout[i];
}

/* splitmix64 of (seed, index): a counter-based generator, so the mask does
 * not depend on how the loop is split across threads. */
static inline uint64_t mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void dropout_forward(float *out, float *mask, const float *inp, size_t len, float p, uint64_t seed)
{
    const float keep = 1.0f - p;
    const float scale = keep > 0.0f ? 1.0f / keep : 0.0f;
    const uint64_t key = mix64(seed);
    #pragma omp parallel for schedule(static) if (len > 32768)
    for (size_t i = 0; i < len; i++) {
        const double u = (double)(mix64(key ^ (uint64_t)i) >> 11) * 0x1.0p-53;
        mask[i] = u < (double)keep ? scale : 0.0f;
        out[i] = inp[i] * mask[i];
    }
}

void dropout_backward(float *dinp, const float *dout, const float *mask, size_t len)
{
    #pragma omp parallel for schedule(static) if (len > 32768)
    for (size_t i = 0; i < len; i++) dinp[i] += dout[i] * mask[i];
}
