/* batchnorm.h: 2-D batch normalisation over (N, H, W) per channel, float32 NCHW.
 * Channel-sliced: gamma/beta/running stats are full-size buffers of which the
 * first c entries are used.
 *
 * An optional epilogue fuses what follows BN in a DMCP layer into the same
 * memory pass: the Markov gate (channel block k scaled by P[k], see
 * markov_gate.h) and an activation.  NULL means plain BN. */
#ifndef DMCP_BATCHNORM_H
#define DMCP_BATCHNORM_H

#include "common.h"

typedef struct {
    const float *P;     /* ngroups gate values, or NULL for no gate */
    float *dP;          /* backward: dP[k] += dL/dP[k] (may be NULL) */
    int m, g, ngroups;  /* channels [m + k*g, m + (k+1)*g) belong to group k */
    float act;          /* < 0: none; 0: ReLU; > 0: ReLU capped at act (6: ReLU6) */
} bn_epilogue;

/* Training mode.  out (N,c,HW); saves mean[c] and invstd[c] for backward;
 * updates running_mean/var[:c] with momentum (PyTorch convention: new =
 * (1-momentum)*old + momentum*batch, running var unbiased).  momentum < 0
 * skips the running update. */
dmcp_status batchnorm_forward_train(float *out, float *save_mean, float *save_invstd,
                                    float *running_mean, float *running_var,
                                    const float *inp, const float *gamma, const float *beta,
                                    int n, int c, int hw, float momentum, float eps,
                                    const bn_epilogue *ep);

/* Eval mode: normalise with running statistics. */
dmcp_status batchnorm_forward_eval(float *out, const float *inp,
                                   const float *gamma, const float *beta,
                                   const float *running_mean, const float *running_var,
                                   int n, int c, int hw, float eps, const bn_epilogue *ep);

/* Backward of either mode, through the same epilogue as the forward: mean/invstd
 * are the saved batch statistics (train) or running_mean and
 * 1/sqrt(running_var+eps) (eval, `train`=0); beta is needed with a gate or an
 * activation.  Accumulates (+=) into dinp, dgamma[:c], dbeta[:c], ep->dP; each
 * may be NULL.  With accumulate 0, dinp is overwritten instead (its old
 * contents are not read). */
dmcp_status batchnorm_backward(float *dinp, float *dgamma, float *dbeta,
                               const float *dout, const float *inp,
                               const float *mean, const float *invstd,
                               const float *gamma, const float *beta,
                               int n, int c, int hw, int train, int accumulate,
                               const bn_epilogue *ep);

#endif
