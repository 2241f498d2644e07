/* activation.c built for the avx2 variant (see isa.h). */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,bmi,bmi2,lzcnt,popcnt,f16c")
#define fill_zero fill_zero_avx2
#define relu_forward relu_forward_avx2
#define relu_backward relu_backward_avx2
#define add_forward add_forward_avx2
#define add_backward add_backward_avx2
#define dropout_forward dropout_forward_avx2
#define dropout_backward dropout_backward_avx2
#include "../activation.c"
#endif
