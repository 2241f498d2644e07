/* pool.h: max pooling and global average pooling, float32 NCHW. */
#ifndef DMCP_POOL_H
#define DMCP_POOL_H

#include "common.h"

/* inp (N,C,H,W); out, argmax (N,C,OH,OW), OH = (H + 2p - k)/s + 1.
 * argmax holds the flat h*W+w index of the max inside its plane (padding is -inf). */
dmcp_status maxpool2d_forward(float *out, int32_t *argmax, const float *inp,
                              int n, int c, int h, int w, int k, int s, int p, int oh, int ow);
/* dinp (N,C,H,W) += scatter of dout (N,C,OH,OW) through argmax. */
dmcp_status maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax,
                               int n, int c, int h, int w, int oh, int ow);

/* inp (N,C,HW); out (N,C) = mean over HW. */
void avgpool_global_forward(float *out, const float *inp, int n, int c, int hw);
/* dinp (N,C,HW) += dout (N,C) / HW. */
void avgpool_global_backward(float *dinp, const float *dout, int n, int c, int hw);

#endif
