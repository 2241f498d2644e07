/* optim.h: in-place optimiser updates of one parameter buffer of `len` floats,
 * with PyTorch's semantics (weight decay added to the gradient). */
#ifndef DMCP_OPTIM_H
#define DMCP_OPTIM_H

#include "common.h"

/* SGD: g = grad + wd*param; buf = first ? g : momentum*buf + (1-dampening)*g;
 * step = nesterov ? g + momentum*buf : buf; param -= lr*step.
 * momentum == 0: buf may be NULL and step = g. */
void sgd_step(float *param, float *buf, const float *grad, size_t len,
              float lr, float momentum, float dampening, float weight_decay,
              int nesterov, int first);

/* Adam (L2 weight decay added to the gradient, as torch.optim.Adam);
 * step is the 1-based count after this update. */
void adam_step(float *param, float *exp_avg, float *exp_avg_sq, const float *grad, size_t len,
               float lr, double beta1, double beta2, float eps, float weight_decay, long step);

#endif
