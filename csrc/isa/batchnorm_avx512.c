/* batchnorm.c built for the avx512 variant (see isa.h). */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,lzcnt,popcnt,f16c")
#define batchnorm_forward_train batchnorm_forward_train_avx512
#define batchnorm_forward_eval batchnorm_forward_eval_avx512
#define batchnorm_backward batchnorm_backward_avx512
#include "../batchnorm.c"
#endif
