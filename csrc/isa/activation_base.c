/* activation.c built for the base variant (see isa.h). */
/* no target: the package's baseline flags */
#define fill_zero fill_zero_base
#define relu_forward relu_forward_base
#define relu_backward relu_backward_base
#define add_forward add_forward_base
#define add_backward add_backward_base
#define dropout_forward dropout_forward_base
#define dropout_backward dropout_backward_base
#include "../activation.c"
