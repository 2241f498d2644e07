/* conv2d.h: 2-D convolution, float32, NCHW, forward and backward.
 *
 * Channel slicing: the weight buffer is the full (OC_full, C_full/groups, KH, KW)
 * tensor of a supernet layer; a call runs on its first `oc` output and first
 * `c` input channels.  Only the first w_cin of every row's C_full/groups inputs
 * are used, so a weight row starts every `w_cin_full*KH*KW` floats.
 * Activations are dense at the active size: inp (N,c,H,W), out (N,oc,OH,OW).
 * Slicing is supported for groups == 1 and for depthwise (groups == c == oc,
 * w_cin_full == 1); other grouped convs run at full width.
 */
#ifndef DMCP_CONV2D_H
#define DMCP_CONV2D_H

#include <stdbool.h>
#include "common.h"

typedef struct {
    int n, c, h, w;           /* input batch, active input channels, height, width */
    int oc;                   /* active output channels */
    int kh, kw;               /* kernel size */
    int sh, sw;               /* stride */
    int ph, pw;               /* zero padding */
    int dh, dw;               /* dilation */
    int groups;               /* groups of the active conv (depthwise: groups == c) */
    int w_cin_full;           /* weight dim 1 of the full buffer (C_full/groups) */
    int oh, ow;               /* output size, filled by conv2d_shape_finish */
} conv_shape;

/* Fills oh/ow; returns DMCP_ERR_SHAPE when the output would be empty. */
dmcp_status conv2d_shape_finish(conv_shape *s);

/* Floats of scratch space conv2d_forward/backward need for this shape. */
size_t conv2d_scratch_floats(const conv_shape *s);

/* What conv2d_forward does to output channel o as it writes it:
 * y = act(conv * scale[o] + shift[o]).  shift alone is a conv bias; scale and
 * shift together fold in an eval-mode BN (scale = gamma / sqrt(var + eps),
 * shift = beta - mean * scale, plus bias * scale), so inference makes one
 * pass over a layer's output instead of two.  Each pointer may be NULL
 * (scale 1, shift 0); act < 0: none, 0: ReLU, > 0: ReLU capped at act. */
typedef struct {
    const float *scale;
    const float *shift;
    float act;
} conv_epilogue;

/* out (N,oc,OH,OW) = conv(inp (N,c,H,W), weight[:oc,:c/groups]), then the
 * epilogue (ep may be NULL: plain conv) on channels [:oc]. */
dmcp_status conv2d_forward(float *out, const float *inp, const float *weight,
                           const conv_epilogue *ep, const conv_shape *s, float *scratch);

/* Accumulates (+=) into dweight (full buffer, active slice) and dbias[:oc],
 * and into dinp (N,c,H,W), or with dinp_set writes dinp (its old contents
 * are never read: no zero-fill needed); any of the three may be NULL to skip it. */
dmcp_status conv2d_backward(float *dinp, float *dweight, float *dbias,
                            const float *dout, const float *inp, const float *weight,
                            const conv_shape *s, float *scratch, bool dinp_set);

/* Direct loops, obviously correct, same contract; used by tests. */
dmcp_status conv2d_forward_naive(float *out, const float *inp, const float *weight,
                                 const conv_epilogue *ep, const conv_shape *s);
dmcp_status conv2d_backward_naive(float *dinp, float *dweight, float *dbias,
                                  const float *dout, const float *inp, const float *weight,
                                  const conv_shape *s);

#endif
