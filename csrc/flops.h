/* flops.h: expected FLOPs (conv + linear multiply-accumulates) of a supernet
 * under the Markov widths, and its exact gradient with respect to every alpha.
 *
 * The network is a list of terms, one per conv/linear layer:
 *     flops = coef * A * B,  A = unit_a >= 0 ? E[unit_a] : const_a  (same for B)
 * conv: A = E[c_in], B = E[c_out], coef = kh*kw*OH*OW/groups-share;
 * depthwise: A = E[c], B = 1; linear: A = E[c_in], B = out_features.
 * A unit u has alpha[offset_u .. offset_u + n_u), min width m_u and group size g_u;
 * E[u] = m_u + g_u * sum_k P_k. */
#ifndef DMCP_FLOPS_H
#define DMCP_FLOPS_H

#include "common.h"

typedef struct {
    int offset, ngroups, min_ch, group_size;
} flops_unit;

typedef struct {
    int unit_a, unit_b;
    double const_a, const_b;
    double coef;
} flops_term;

/* Sum of the terms at unit widths E (nunits); dE (nunits, may be NULL) += dflops/dE. */
double flops_of_widths(double *dE, const double *E, int nunits,
                       const flops_term *terms, int nterms);

/* Expected FLOPs under alpha; dalpha (may be NULL) += scale * dflops/dalpha.
 * work: 2 * (total alphas) + 2 * nunits doubles-worth of scratch (see flops_work_floats). */
dmcp_status flops_expected(double *flops, float *dalpha, const float *alpha,
                           const flops_unit *units, int nunits,
                           const flops_term *terms, int nterms,
                           int prob_type, double scale, void *work);
size_t flops_work_bytes(int nalpha, int nunits);

#endif
