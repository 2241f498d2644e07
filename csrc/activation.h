/* activation.h: elementwise layers on flat float32 buffers of `len` elements. */
#ifndef DMCP_ACTIVATION_H
#define DMCP_ACTIVATION_H

#include "common.h"

/* x = 0, on every thread (a gradient buffer about to be accumulated into). */
void fill_zero(float *x, size_t len);

/* out = min(max(inp, 0), cap); cap <= 0 means no upper bound (ReLU), 6 gives ReLU6.
 * out may alias inp. */
void relu_forward(float *out, const float *inp, size_t len, float cap);
/* dinp += dout where 0 < out < cap (out is the forward's output); with
 * accumulate 0, dinp = that (dinp's old contents are not read). */
void relu_backward(float *dinp, const float *dout, const float *out, size_t len, float cap,
                   int accumulate);

/* out = a + b (residual add); act >= 0 then applies relu_forward's
 * activation with cap act in the same pass (act < 0: none).  out may alias a or b. */
void add_forward(float *out, const float *a, const float *b, size_t len, float act);
/* dinp += dout. */
void add_backward(float *dinp, const float *dout, size_t len);

/* Inverted dropout: mask[i] = 0 or 1/(1-p) from a counter-based RNG keyed by seed;
 * out = inp * mask. */
void dropout_forward(float *out, float *mask, const float *inp, size_t len, float p, uint64_t seed);
/* dinp += dout * mask. */
void dropout_backward(float *dinp, const float *dout, const float *mask, size_t len);

#endif
