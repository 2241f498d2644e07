/* markov_gate.h: DMCP's Markov keep probabilities and the channel gates.
 *
 * A unit of C channels has m always-kept channels and n groups of g channels
 * (C = m + n*g).  Group k is kept with conditional probability p_k, given by
 * prob_type DMCP_PROB_SIGMOID: sigmoid(alpha_k), DMCP_PROB_EXP: exp(-max(alpha_k, 0)),
 * and marginal probability P_k = p_0 * ... * p_k. */
#ifndef DMCP_MARKOV_GATE_H
#define DMCP_MARKOV_GATE_H

#include "common.h"

enum { DMCP_PROB_SIGMOID = 0, DMCP_PROB_EXP = 1 };

/* alpha (n) -> P (n). */
void markov_probs_forward(float *P, const float *alpha, int n, int prob_type);
/* dalpha (n) += d/dalpha of sum_k dP_k * P_k:
 * dalpha_j = s_j * sum_{k>=j} P_k dP_k, s_j = dlog p_j / dalpha_j. */
void markov_probs_backward(float *dalpha, const float *dP, const float *P, const float *alpha,
                           int n, int prob_type);

/* inp, out (N, C, HW) with C = m + ngroups*g; out = inp with channel block k scaled by P[k].
 * out may alias inp. */
void gate_forward(float *out, const float *inp, const float *P,
                  int n, int c, int hw, int m, int g, int ngroups);
/* dinp (N,C,HW) += dout * P (= with accumulate 0: dinp's old contents are not
 * read);  dP[k] += sum over batch, block k, HW of inp * dout.
 * Either output may be NULL. */
void gate_backward(float *dinp, float *dP, const float *dout, const float *inp, const float *P,
                   int n, int c, int hw, int m, int g, int ngroups, int accumulate);

#endif
