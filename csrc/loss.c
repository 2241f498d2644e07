/* loss.c: see loss.h.  Rows are independent; log-sum-exp in double. */
#include <math.h>
#include "loss.h"

/* probs[i,:] = softmax(x[i,:] / tau); returns log of the normaliser of x/tau. */
static double softmax_row(float *probs, const float *x, int k, float tau)
{
    float mx = x[0];
    for (int j = 1; j < k; j++) mx = x[j] > mx ? x[j] : mx;
    double z = 0.0;
    for (int j = 0; j < k; j++) z += exp((double)(x[j] - mx) / tau);
    const double lse = log(z) + (double)mx / tau;
    for (int j = 0; j < k; j++) probs[j] = (float)exp((double)x[j] / tau - lse);
    return lse;
}

dmcp_status crossentropy_forward(float *losses, float *probs, const float *logits,
                                 const int64_t *labels, int n, int k, float smoothing)
{
    for (int i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= k) return DMCP_ERR_VALUE;
    #pragma omp parallel for schedule(static) if (n * k > 65536)
    for (int i = 0; i < n; i++) {
        const float *x = logits + (size_t)i * k;
        const double lse = softmax_row(probs + (size_t)i * k, x, k, 1.0f);
        double sum_logp = 0.0;
        for (int j = 0; j < k; j++) sum_logp += (double)x[j] - lse;
        const double nll = lse - (double)x[labels[i]];
        losses[i] = (float)((1.0 - smoothing) * nll - smoothing * sum_logp / k);
    }
    return DMCP_OK;
}

dmcp_status crossentropy_backward(float *dlogits, const float *probs, const int64_t *labels,
                                  int n, int k, float smoothing, float scale)
{
    for (int i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= k) return DMCP_ERR_VALUE;
    const float off = smoothing / k;
    for (int i = 0; i < n; i++) {
        const float *p = probs + (size_t)i * k;
        float *d = dlogits + (size_t)i * k;
        for (int j = 0; j < k; j++) {
            const float t = off + (j == labels[i] ? 1.0f - smoothing : 0.0f);
            d[j] += scale * (p[j] - t);
        }
    }
    return DMCP_OK;
}

void kldiv_forward(float *losses, float *pstudent, float *pteacher,
                   const float *student, const float *teacher, int n, int k, float tau)
{
    #pragma omp parallel for schedule(static) if (n * k > 65536)
    for (int i = 0; i < n; i++) {
        const float *s = student + (size_t)i * k, *t = teacher + (size_t)i * k;
        float *ps = pstudent + (size_t)i * k, *pt = pteacher + (size_t)i * k;
        const double lse_s = softmax_row(ps, s, k, tau);
        const double lse_t = softmax_row(pt, t, k, tau);
        double kl = 0.0;
        for (int j = 0; j < k; j++) {
            const double logpt = (double)t[j] / tau - lse_t;
            const double logps = (double)s[j] / tau - lse_s;
            kl += exp(logpt) * (logpt - logps);
        }
        losses[i] = (float)(kl * tau * tau);
    }
}

void kldiv_backward(float *dstudent, const float *pstudent, const float *pteacher,
                    int n, int k, float tau, float scale)
{
    const size_t len = (size_t)n * k;
    for (size_t i = 0; i < len; i++)
        dstudent[i] += scale * tau * (pstudent[i] - pteacher[i]);
}
