/* batchnorm.c built for the base variant (see isa.h). */
/* no target: the package's baseline flags */
#define batchnorm_forward_train batchnorm_forward_train_base
#define batchnorm_forward_eval batchnorm_forward_eval_base
#define batchnorm_backward batchnorm_backward_base
#include "../batchnorm.c"
