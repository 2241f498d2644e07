/* batchnorm.h: 2-D batch normalisation over (N, H, W) per channel, float32 NCHW.
 * Channel-sliced: gamma/beta/running stats are full-size buffers of which the
 * first c entries are used. */
#ifndef DMCP_BATCHNORM_H
#define DMCP_BATCHNORM_H

#include "common.h"

/* Training mode.  out (N,c,HW); saves mean[c] and invstd[c] for backward;
 * updates running_mean/var[:c] with momentum (PyTorch convention: new =
 * (1-momentum)*old + momentum*batch, running var unbiased).  momentum < 0
 * skips the running update. */
dmcp_status batchnorm_forward_train(float *out, float *save_mean, float *save_invstd,
                                    float *running_mean, float *running_var,
                                    const float *inp, const float *gamma, const float *beta,
                                    int n, int c, int hw, float momentum, float eps);

/* Eval mode: normalise with running statistics. */
dmcp_status batchnorm_forward_eval(float *out, const float *inp,
                                   const float *gamma, const float *beta,
                                   const float *running_mean, const float *running_var,
                                   int n, int c, int hw, float eps);

/* Backward of either mode: mean/invstd are the saved batch statistics
 * (train) or running_mean and 1/sqrt(running_var+eps) (eval, `train`=0).
 * Accumulates (+=) into dinp, dgamma[:c], dbeta[:c]; each may be NULL.  With
 * accumulate 0, dinp is overwritten instead (its old contents are not read). */
dmcp_status batchnorm_backward(float *dinp, float *dgamma, float *dbeta,
                               const float *dout, const float *inp,
                               const float *mean, const float *invstd, const float *gamma,
                               int n, int c, int hw, int train, int accumulate);

#endif
