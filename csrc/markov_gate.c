/* markov_gate.c: see markov_gate.h. */
#include <math.h>
#include "markov_gate.h"

static inline float keep_prob(float a, int prob_type)
{
    if (prob_type == DMCP_PROB_EXP) return expf(-(a > 0.0f ? a : 0.0f));
    return 1.0f / (1.0f + expf(-a));
}

/* d log p / d alpha */
static inline float dlog_keep_prob(float a, int prob_type)
{
    if (prob_type == DMCP_PROB_EXP) return a >= 0.0f ? -1.0f : 0.0f;   /* inclusive, as torch.clamp passes it at the bound */
    return 1.0f - keep_prob(a, prob_type);
}

void markov_probs_forward(float *P, const float *alpha, int n, int prob_type)
{
    float acc = 1.0f;
    for (int k = 0; k < n; k++) {
        acc *= keep_prob(alpha[k], prob_type);
        P[k] = acc;
    }
}

void markov_probs_backward(float *dalpha, const float *dP, const float *P, const float *alpha,
                           int n, int prob_type)
{
    double tail = 0.0;                       /* sum_{k >= j} P_k dP_k */
    for (int j = n - 1; j >= 0; j--) {
        tail += (double)P[j] * dP[j];
        dalpha[j] += (float)(dlog_keep_prob(alpha[j], prob_type) * tail);
    }
}

/* inp, out (N, C, HW); P (ngroups) */
void gate_forward(float *out, const float *inp, const float *P,
                  int n, int c, int hw, int m, int g, int ngroups)
{
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < n; b++) {
        for (int ch = 0; ch < c; ch++) {
            const int k = ch < m ? -1 : (ch - m) / g;
            const float s = (k < 0 || k >= ngroups) ? 1.0f : P[k];
            const float *x = inp + ((size_t)b * c + ch) * hw;
            float *y = out + ((size_t)b * c + ch) * hw;
            for (int i = 0; i < hw; i++) y[i] = x[i] * s;
        }
    }
}

/* dout, inp, dinp (N, C, HW); P, dP (ngroups) */
void gate_backward(float *dinp, float *dP, const float *dout, const float *inp, const float *P,
                   int n, int c, int hw, int m, int g, int ngroups, int accumulate)
{
    if (dinp) {
        #pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < n; b++) {
            for (int ch = 0; ch < c; ch++) {
                const int k = ch < m ? -1 : (ch - m) / g;
                const float s = (k < 0 || k >= ngroups) ? 1.0f : P[k];
                const float *dy = dout + ((size_t)b * c + ch) * hw;
                float *dx = dinp + ((size_t)b * c + ch) * hw;
                if (accumulate)
                    for (int i = 0; i < hw; i++) dx[i] += dy[i] * s;
                else
                    for (int i = 0; i < hw; i++) dx[i] = dy[i] * s;
            }
        }
    }
    if (dP) {
        /* one group per iteration: every sum is owned by one thread */
        #pragma omp parallel for schedule(static)
        for (int k = 0; k < ngroups; k++) {
            const int c0 = m + k * g, c1 = DMCP_MIN(c0 + g, c);
            double acc = 0.0;
            for (int b = 0; b < n; b++) {
                for (int ch = c0; ch < c1; ch++) {
                    const float *x = inp + ((size_t)b * c + ch) * hw;
                    const float *dy = dout + ((size_t)b * c + ch) * hw;
                    float s = 0.0f;
                    for (int i = 0; i < hw; i++) s += x[i] * dy[i];
                    acc += s;
                }
            }
            dP[k] += (float)acc;
        }
    }
}
