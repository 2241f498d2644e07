/* linear.h: fully connected layer, float32.  Channel-sliced: weight is the full
 * (OUT_full, IN_full) buffer; a call uses its first `out_f` rows and first `in_f`
 * columns (leading dimension in_full). */
#ifndef DMCP_LINEAR_H
#define DMCP_LINEAR_H

#include "common.h"

/* inp (N,in_f); weight (>=out_f, in_full); bias (>=out_f) or NULL; out (N,out_f). */
void linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                    int n, int in_f, int out_f, int in_full);
/* Accumulates dinp (N,in_f), dweight[:out_f,:in_f], dbias[:out_f]; each may be NULL. */
void linear_backward(float *dinp, float *dweight, float *dbias,
                     const float *dout, const float *inp, const float *weight,
                     int n, int in_f, int out_f, int in_full);
/* Direct loops; same contract. */
void linear_forward_naive(float *out, const float *inp, const float *weight, const float *bias,
                          int n, int in_f, int out_f, int in_full);
void linear_backward_naive(float *dinp, float *dweight, float *dbias,
                           const float *dout, const float *inp, const float *weight,
                           int n, int in_f, int out_f, int in_full);

#endif
