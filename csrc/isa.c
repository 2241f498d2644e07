/* isa.c: see isa.h.  Picks the variant and forwards each public kernel to it. */
#include "isa.h"
#include "activation.h"
#include "batchnorm.h"
#include "conv2d.h"

int dmcp_isa = DMCP_ISA_BASE;

const char *dmcp_isa_name(int isa)
{
    static const char *const names[DMCP_ISA_COUNT] = {"base", "avx2", "avx512"};
    return isa >= 0 && isa < DMCP_ISA_COUNT ? names[isa] : "unknown";
}

int dmcp_isa_supported(int isa)
{
    if (isa == DMCP_ISA_BASE)
        return 1;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                     __builtin_cpu_supports("bmi2");
    if (isa == DMCP_ISA_AVX2)
        return avx2;
    if (isa == DMCP_ISA_AVX512)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
    return 0;
}

int dmcp_isa_best(void)
{
    for (int isa = DMCP_ISA_COUNT - 1; isa > DMCP_ISA_BASE; isa--)
        if (dmcp_isa_supported(isa))
            return isa;
    return DMCP_ISA_BASE;
}

int dmcp_isa_select(int isa)
{
    if (isa < 0 || isa >= DMCP_ISA_COUNT || !dmcp_isa_supported(isa))
        return -1;
    dmcp_isa = isa;
    return 0;
}

/* Each public kernel: its variants' declarations (the public prototype under
 * another name), a table in isa order, and the forwarding definition. */
#if defined(__x86_64__) && defined(__GNUC__)
#define VARIANTS(f) \
    extern __typeof__(f) f##_base, f##_avx2, f##_avx512; \
    static __typeof__(f) *const f##_variants[DMCP_ISA_COUNT] = {f##_base, f##_avx2, f##_avx512}
#else
#define VARIANTS(f) \
    extern __typeof__(f) f##_base; \
    static __typeof__(f) *const f##_variants[DMCP_ISA_COUNT] = {f##_base, f##_base, f##_base}
#endif

VARIANTS(conv2d_scratch_floats);
VARIANTS(conv2d_forward);
VARIANTS(conv2d_backward);
VARIANTS(batchnorm_forward_train);
VARIANTS(batchnorm_forward_eval);
VARIANTS(batchnorm_backward);
VARIANTS(fill_zero);
VARIANTS(relu_forward);
VARIANTS(relu_backward);
VARIANTS(add_forward);
VARIANTS(add_backward);
VARIANTS(dropout_forward);
VARIANTS(dropout_backward);

/* The shape check and the naive references do not depend on the ISA: base. */
extern __typeof__(conv2d_shape_finish) conv2d_shape_finish_base;
extern __typeof__(conv2d_forward_naive) conv2d_forward_naive_base;
extern __typeof__(conv2d_backward_naive) conv2d_backward_naive_base;

dmcp_status conv2d_shape_finish(conv_shape *s) { return conv2d_shape_finish_base(s); }

/* The scratch a variant needs depends on its micro-tile (wider with AVX-512). */
size_t conv2d_scratch_floats(const conv_shape *s) { return conv2d_scratch_floats_variants[dmcp_isa](s); }

dmcp_status conv2d_forward_naive(float *out, const float *inp, const float *weight,
                                 const conv_epilogue *ep, const conv_shape *s)
{
    return conv2d_forward_naive_base(out, inp, weight, ep, s);
}

dmcp_status conv2d_backward_naive(float *dinp, float *dweight, float *dbias,
                                  const float *dout, const float *inp, const float *weight,
                                  const conv_shape *s)
{
    return conv2d_backward_naive_base(dinp, dweight, dbias, dout, inp, weight, s);
}

dmcp_status conv2d_forward(float *out, const float *inp, const float *weight,
                           const conv_epilogue *ep, const conv_shape *s, float *scratch)
{
    return conv2d_forward_variants[dmcp_isa](out, inp, weight, ep, s, scratch);
}

dmcp_status conv2d_backward(float *dinp, float *dweight, float *dbias,
                            const float *dout, const float *inp, const float *weight,
                            const conv_shape *s, float *scratch, bool dinp_set)
{
    return conv2d_backward_variants[dmcp_isa](dinp, dweight, dbias, dout, inp, weight, s, scratch,
                                              dinp_set);
}

dmcp_status batchnorm_forward_train(float *out, float *save_mean, float *save_invstd,
                                    float *running_mean, float *running_var,
                                    const float *inp, const float *gamma, const float *beta,
                                    int n, int c, int hw, float momentum, float eps,
                                    const bn_epilogue *ep)
{
    return batchnorm_forward_train_variants[dmcp_isa](out, save_mean, save_invstd, running_mean,
                                                      running_var, inp, gamma, beta, n, c, hw,
                                                      momentum, eps, ep);
}

dmcp_status batchnorm_forward_eval(float *out, const float *inp,
                                   const float *gamma, const float *beta,
                                   const float *running_mean, const float *running_var,
                                   int n, int c, int hw, float eps, const bn_epilogue *ep)
{
    return batchnorm_forward_eval_variants[dmcp_isa](out, inp, gamma, beta, running_mean,
                                                     running_var, n, c, hw, eps, ep);
}

dmcp_status batchnorm_backward(float *dinp, float *dgamma, float *dbeta,
                               const float *dout, const float *inp,
                               const float *mean, const float *invstd,
                               const float *gamma, const float *beta,
                               int n, int c, int hw, int train, int accumulate,
                               const bn_epilogue *ep)
{
    return batchnorm_backward_variants[dmcp_isa](dinp, dgamma, dbeta, dout, inp, mean, invstd,
                                                 gamma, beta, n, c, hw, train, accumulate, ep);
}

void fill_zero(float *x, size_t len)
{
    fill_zero_variants[dmcp_isa](x, len);
}

void relu_forward(float *out, const float *inp, size_t len, float cap)
{
    relu_forward_variants[dmcp_isa](out, inp, len, cap);
}

void relu_backward(float *dinp, const float *dout, const float *out, size_t len, float cap,
                   int accumulate)
{
    relu_backward_variants[dmcp_isa](dinp, dout, out, len, cap, accumulate);
}

void add_forward(float *out, const float *a, const float *b, size_t len, float act)
{
    add_forward_variants[dmcp_isa](out, a, b, len, act);
}

void add_backward(float *dinp, const float *dout, size_t len)
{
    add_backward_variants[dmcp_isa](dinp, dout, len);
}

void dropout_forward(float *out, float *mask, const float *inp, size_t len, float p, uint64_t seed)
{
    dropout_forward_variants[dmcp_isa](out, mask, inp, len, p, seed);
}

void dropout_backward(float *dinp, const float *dout, const float *mask, size_t len)
{
    dropout_backward_variants[dmcp_isa](dinp, dout, mask, len);
}
