/* conv2d_internal.h: what the conv2d_*.c files share.  csrc/isa/conv2d_<isa>.c
 * compiles conv2d.c, conv2d_gemm.c, conv2d_tiled.c, conv2d_depthwise.c and
 * conv2d_winograd.c as one translation unit per ISA variant, so the functions
 * declared here stay static.
 *
 * Paths, picked from the shape and the ISA variant (never from the thread count):
 *   tiled (conv2d_tiled.c; dense and grouped, kernel larger than 1x1,
 *     per-group weights of at most CONV_TILED_MAX_W floats, batch >= 2): one
 *     OpenMP region over fixed batch slots; each slot copies an image into
 *     zero-padded, stride-phase planes and runs an implicit GEMM (no column
 *     matrix) with a register-blocked micro-kernel.  No OpenBLAS, one
 *     fork/join per call.
 *   GEMM (conv2d_gemm.c; everything else dense or grouped: 1x1 kernels, large
 *     weights, batch 1, and backward-data of strided or few-channel convs):
 *     im2col of a chunk of images side by side, one OpenBLAS SGEMM per chunk
 *     and group.
 *     OpenMP loops for im2col/col2im/gather/scatter, threaded OpenBLAS for
 *     the GEMMs, never one inside the other.
 *   depthwise (conv2d_depthwise.c; groups == c == oc, w_cin_full == 1): flat
 *     direct loops over zero-padded planes, parallel over planes (channels for
 *     the weights).
 *   Winograd F(2x2, 3x3) (conv2d_winograd.c; 3x3, stride 1, dilation 1,
 *     groups 1, at least WINO_MIN_CH channels each way): forward, backward-data
 *     and (more channels) backward-weight, ahead of the tiled path; in the
 *     AVX-512 variant only forward passes of 64+ channels on 14x14+ planes.
 *     F(4x4, 3x3) instead for forward and backward-data passes of 64+
 *     channels each way over 192+ 4x4 tiles (conv_wino_m).
 *   _naive (conv2d.c): direct loops with double accumulators, the reference
 *     for tests.
 *
 * Weight indexing, shared by every path: output channel o of group g uses
 * weight[o*ldw + (ci*KH + ky)*KW + kx] for its ci < c/groups inputs, with
 * ldw = w_cin_full*KH*KW (rows of the full supernet buffer).
 */
#ifndef DMCP_CONV2D_INTERNAL_H
#define DMCP_CONV2D_INTERNAL_H

#include "conv2d.h"
#include "activation.h"

#include <cblas.h>
#include <omp.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

/* OpenBLAS called inside an OpenMP loop must run in the calling thread.  Its
 * OpenMP build does so by itself (and there openblas_set_num_threads would set
 * dmcp's own OpenMP thread count); a pthreads build is told to, and told back
 * after the loop (blas_solo_end with what blas_solo_begin returned). */
static inline int blas_solo_begin(void)
{
    if (openblas_get_parallel() != 1)
        return 0;
    const int n = openblas_get_num_threads();
    openblas_set_num_threads(1);
    return n;
}

static inline void blas_solo_end(int threads)
{
    if (threads > 0)
        openblas_set_num_threads(threads);
}

/* Below this many floats of work an OpenMP region costs more than it saves. */
#define CONV_PAR_MIN 16384
#define CONV_SLOTS 8           /* batch slices; also the weight-gradient partial sums */

/* Micro-kernel tiles (conv2d_tiled.c; the depthwise and Winograd paths use them too).
 * AVX-512 has 32 registers: 8 rows of two vectors are 16 accumulators, and
 * 16- and 32-channel layers fill whole tiles (6 rows padded them to 18 and 36;
 * ResNet-20's step 3-14% faster with 8, ResNet-50 and MobileNetV2 the same). */
#ifdef __AVX512F__
#define CONV_MR 8              /* micro-tile rows */
#define CONV_NR 32             /* micro-tile columns (two 16-float vectors) */
#else
#define CONV_MR 6              /* micro-tile rows */
#define CONV_NR 16             /* micro-tile columns (two 8-float vectors) */
#endif
#define CONV_SLOTS_MAX 64      /* most threads that get their own Winograd block buffers */
#define CONV_TILED_MAX_K 2048  /* longest micro-kernel reduction (offset tables live on the stack) */

/* GCC fuses a*b + c into FMA only with -ffp-contract=fast, which -std=c11
 * turns off; the micro-kernel asks for it (clang fuses within an expression). */
#if defined(__GNUC__) && !defined(__clang__)
#define CONV_FMA_CONTRACT __attribute__((optimize("fp-contract=fast")))
#else
#define CONV_FMA_CONTRACT
#endif

/* The epilogue (conv2d.h) of one output channel: y = act(x*a + b), or
 * x + b where there is no scale (a conv bias, added as it always was).  x*a + b
 * is fused where the ISA has FMA, as batchnorm.c's eval pass computes it, so
 * a folded BN gives what conv then BN gave. */
typedef struct {
    float a, b, hi;            /* scale, shift, activation cap (INFINITY: ReLU) */
    bool scaled, act;
} conv_chan_ep;

#if defined(__FMA__) || !(defined(__x86_64__) || defined(__i386__))
#define CONV_AFFINE(x, a, b) fmaf((x), (a), (b))
#else
#define CONV_AFFINE(x, a, b) ((x) * (a) + (b))
#endif

static inline conv_chan_ep conv_ep_of(const conv_epilogue *ep, int o)
{
    conv_chan_ep e = {1.0f, 0.0f, INFINITY, false, false};
    if (ep != NULL) {
        e.scaled = ep->scale != NULL;
        e.a = e.scaled ? ep->scale[o] : 1.0f;
        e.b = ep->shift != NULL ? ep->shift[o] : 0.0f;
        e.act = ep->act >= 0.0f;
        e.hi = ep->act > 0.0f ? ep->act : INFINITY;
    }
    return e;
}

/* dst[i] = epilogue(src[i]) for one channel's run; dst may be src. */
static inline void conv_ep_row(float *dst, const float *src, ptrdiff_t len, conv_chan_ep e)
{
    if (e.act) {
        const float a = e.a, b = e.b, hi = e.hi;
        if (e.scaled) {
            #pragma omp simd
            for (ptrdiff_t i = 0; i < len; i++) {
                float z = CONV_AFFINE(src[i], a, b);
                z = z > 0.0f ? z : 0.0f;          /* not fmaxf/fminf: those do not vectorise */
                dst[i] = z < hi ? z : hi;
            }
        } else {
            #pragma omp simd
            for (ptrdiff_t i = 0; i < len; i++) {
                float z = src[i] + b;
                z = z > 0.0f ? z : 0.0f;
                dst[i] = z < hi ? z : hi;
            }
        }
    } else if (e.scaled) {
        const float a = e.a, b = e.b;
        #pragma omp simd
        for (ptrdiff_t i = 0; i < len; i++)
            dst[i] = CONV_AFFINE(src[i], a, b);
    } else {
        const float b = e.b;
        #pragma omp simd
        for (ptrdiff_t i = 0; i < len; i++)
            dst[i] = src[i] + b;
    }
}

/* The epilogue over nb images' (oc, ohw) outputs in place. */
static void conv_ep_images(float *x, const conv_epilogue *ep, int nb, int oc, ptrdiff_t ohw)
{
    const ptrdiff_t jobs = (ptrdiff_t)nb * oc;
    #pragma omp parallel for schedule(static) if (jobs * ohw > CONV_PAR_MIN)
    for (ptrdiff_t j = 0; j < jobs; j++)
        conv_ep_row(x + j * ohw, x + j * ohw, ohw, conv_ep_of(ep, (int)(j % oc)));
}

/* Zero-padded, phase-split planes and the output grid that reads them. */
typedef struct {
    int sh, sw;                /* stride: sh*sw phase planes per channel */
    int hq, wq;                /* phase plane */
    ptrdiff_t pl;              /* phase plane stride: hq*wq plus zero slack */
    int top, left;             /* where the source sits in the padded plane */
    int orows, ocols;          /* output grid rows; valid columns of its wq */
    int trows, ntp;            /* output rows per tile; tile columns, a multiple of NR */
} pad_grid;

/* Sizes of the tiled path, all derived from the shape. */
typedef struct {
    int slots;                 /* batch slices */
    int k, kpad;               /* (c/G)*KH*KW, rounded up to CONV_MR */
    int ocg, ocpad, ocpad16;   /* oc/G, rounded up to CONV_MR and to wnr */
    int wnr;                   /* backward-weight panel width: CONV_NR, or 16 for narrow layers */
    int cg, cgpad, kb;         /* c/G, rounded up to CONV_MR; (oc/G)*KH*KW */
    bool data;                 /* backward-data runs here too */
    pad_grid fg, bg;           /* forward/weight grid over inp; backward-data grid over dout */
    ptrdiff_t wpack;           /* floats of packed weights, all groups */
    ptrdiff_t src, pan, res, dwt;    /* floats of each per-slot buffer */
    ptrdiff_t srcf;            /* src: padded input first, then (data) padded dout */
} conv_tiling;

static inline ptrdiff_t round_up(ptrdiff_t x, ptrdiff_t m) { return (x + m - 1) / m * m; }

/* First image of slot i of `slots` over n images. */
static inline int slot_start(int i, int slots, int n) { return (int)((long long)n * i / slots); }

/* conv2d_gemm.c */
static size_t conv_gemm_scratch(const conv_shape *s);
static void conv_gemm_forward(float *out, const float *inp, const float *weight,
                              const conv_epilogue *ep, const conv_shape *s, float *scratch);
static void conv_gemm_backward(float *dinp, float *dweight, const float *dout,
                               const float *inp, const float *weight,
                               const conv_shape *s, float *scratch, bool set);

/* conv2d_tiled.c */
static bool conv_tiling_of(const conv_shape *s, conv_tiling *t);
static ptrdiff_t conv_tiled_scratch(const conv_shape *s, bool *tiled, bool *data);
static bool pad_grid_init(pad_grid *g, int hp, int wp, int sh, int sw, int top, int left,
                          int orows, int ocols, int reach, int kpad);
CONV_FMA_CONTRACT
static void conv_kernel(int k, const float *restrict a, const int *restrict aoff,
                        const float *restrict b, const int *restrict boff,
                        float *restrict c, ptrdiff_t ldc, bool add);
static void linear_offsets(int *off, int n, int step);
static void pad_planes(float *dst, const float *src, int np, int h, int w, const pad_grid *g,
                       const conv_shape *s, bool zero);
static void conv_tiled_forward(float *out, const float *inp, const float *weight,
                               const conv_epilogue *ep, const conv_shape *s, const conv_tiling *t,
                               float *scratch);
static void conv_tiled_backward(float *dinp, float *dweight, const float *dout,
                                const float *inp, const float *weight,
                                const conv_shape *s, const conv_tiling *t, float *scratch,
                                bool set);

/* conv2d_depthwise.c */
static bool conv_is_dw_direct(const conv_shape *s);
static ptrdiff_t dw_scratch(const conv_shape *s);
static void dw_forward(float *out, const float *inp, const float *weight,
                       const conv_epilogue *ep, const conv_shape *s, float *scratch);
static void dw_backward(float *dinp, float *dweight, const float *dout,
                        const float *inp, const float *weight, const conv_shape *s,
                        float *scratch);

/* conv2d_winograd.c */
static bool conv_is_wino(const conv_shape *s);
static bool conv_is_wino_dw(const conv_shape *s);
static bool conv_use_wino(const conv_shape *s, int pass);
static int conv_wino_m(const conv_shape *s, int pass);
static size_t wino_scratch(const conv_shape *s);
static void wino_forward(float *out, const float *inp, const float *weight, const conv_epilogue *ep,
                         const conv_shape *s, float *scratch);
static void wino_backward_data(float *dinp, const float *dout, const float *weight,
                               const conv_shape *s, float *scratch, bool set);
static void wino_backward_weight(float *dweight, const float *dout, const float *inp,
                                 const conv_shape *s, float *scratch);

#endif
