/* activation.c built for the avx512 variant (see isa.h). */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,lzcnt,popcnt,f16c")
#define fill_zero fill_zero_avx512
#define relu_forward relu_forward_avx512
#define relu_backward relu_backward_avx512
#define add_forward add_forward_avx512
#define add_backward add_backward_avx512
#define dropout_forward dropout_forward_avx512
#define dropout_backward dropout_backward_avx512
#include "../activation.c"
#endif
