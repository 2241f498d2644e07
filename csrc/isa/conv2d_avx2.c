/* conv2d.c and its paths (conv2d_*.c, see conv2d_internal.h) built for the
 * avx2 variant (see isa.h). */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,bmi,bmi2,lzcnt,popcnt,f16c")
#define conv2d_shape_finish conv2d_shape_finish_avx2
#define conv2d_scratch_floats conv2d_scratch_floats_avx2
#define conv2d_forward conv2d_forward_avx2
#define conv2d_backward conv2d_backward_avx2
#define conv2d_forward_naive conv2d_forward_naive_avx2
#define conv2d_backward_naive conv2d_backward_naive_avx2
#include "../conv2d.c"
#include "../conv2d_gemm.c"
#include "../conv2d_tiled.c"
#include "../conv2d_depthwise.c"
#include "../conv2d_winograd.c"
#endif
