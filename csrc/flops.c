/* flops.c: see flops.h.  One pass over layers forward, one back: O(layers + alphas). */
#include <string.h>
#include "flops.h"
#include "markov_gate.h"

double flops_of_widths(double *dE, const double *E, int nunits,
                       const flops_term *terms, int nterms)
{
    double total = 0.0;
    for (int t = 0; t < nterms; t++) {
        const flops_term *T = terms + t;
        const double a = T->unit_a >= 0 ? E[T->unit_a] : T->const_a;
        const double b = T->unit_b >= 0 ? E[T->unit_b] : T->const_b;
        total += T->coef * a * b;
        if (dE) {
            if (T->unit_a >= 0) dE[T->unit_a] += T->coef * b;
            if (T->unit_b >= 0) dE[T->unit_b] += T->coef * a;
        }
    }
    (void)nunits;
    return total;
}

size_t flops_work_bytes(int nalpha, int nunits)
{
    return (size_t)2 * nalpha * sizeof(float) + (size_t)2 * nunits * sizeof(double);
}

dmcp_status flops_expected(double *flops, float *dalpha, const float *alpha,
                           const flops_unit *units, int nunits,
                           const flops_term *terms, int nterms,
                           int prob_type, double scale, void *work)
{
    int nalpha = 0;
    for (int u = 0; u < nunits; u++) {
        if (units[u].offset < 0 || units[u].ngroups < 0) return DMCP_ERR_SHAPE;
        nalpha = DMCP_MAX(nalpha, units[u].offset + units[u].ngroups);
    }
    double *E = (double *)work;
    double *dE = E + nunits;
    float *P = (float *)(dE + nunits);
    float *dP = P + nalpha;
    for (int u = 0; u < nunits; u++) {
        const flops_unit *U = units + u;
        markov_probs_forward(P + U->offset, alpha + U->offset, U->ngroups, prob_type);
        double s = 0.0;
        for (int k = 0; k < U->ngroups; k++) s += P[U->offset + k];
        E[u] = U->min_ch + (double)U->group_size * s;
    }
    memset(dE, 0, sizeof(double) * nunits);
    *flops = flops_of_widths(dalpha ? dE : NULL, E, nunits, terms, nterms);
    if (!dalpha) return DMCP_OK;
    for (int u = 0; u < nunits; u++) {
        const flops_unit *U = units + u;
        for (int k = 0; k < U->ngroups; k++)
            dP[U->offset + k] = (float)(scale * dE[u] * U->group_size);
        markov_probs_backward(dalpha + U->offset, dP + U->offset, P + U->offset,
                              alpha + U->offset, U->ngroups, prob_type);
    }
    return DMCP_OK;
}
