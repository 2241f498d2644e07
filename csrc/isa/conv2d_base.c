/* conv2d.c and its paths (conv2d_*.c, see conv2d_internal.h) built for the
 * base variant (see isa.h). */
/* no target: the package's baseline flags */
#define conv2d_shape_finish conv2d_shape_finish_base
#define conv2d_scratch_floats conv2d_scratch_floats_base
#define conv2d_forward conv2d_forward_base
#define conv2d_backward conv2d_backward_base
#define conv2d_forward_naive conv2d_forward_naive_base
#define conv2d_backward_naive conv2d_backward_naive_base
#include "../conv2d.c"
#include "../conv2d_gemm.c"
#include "../conv2d_tiled.c"
#include "../conv2d_depthwise.c"
#include "../conv2d_winograd.c"
