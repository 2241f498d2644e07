/* optim.c: see optim.h. */
#include <math.h>
#include "optim.h"

void sgd_step(float *param, float *buf, const float *grad, size_t len,
              float lr, float momentum, float dampening, float weight_decay,
              int nesterov, int first)
{
    #pragma omp parallel for schedule(static) if (len > 65536)
    for (size_t i = 0; i < len; i++) {
        float g = grad[i] + weight_decay * param[i];
        if (momentum != 0.0f) {
            const float b = first ? g : momentum * buf[i] + (1.0f - dampening) * g;
            buf[i] = b;
            g = nesterov ? g + momentum * b : b;
        }
        param[i] -= lr * g;
    }
}

void adam_step(float *param, float *exp_avg, float *exp_avg_sq, const float *grad, size_t len,
               float lr, float beta1, float beta2, float eps, float weight_decay, long step)
{
    const double bc1 = 1.0 - pow((double)beta1, (double)step);
    const double bc2 = 1.0 - pow((double)beta2, (double)step);
    const float step_size = (float)(lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    #pragma omp parallel for schedule(static) if (len > 65536)
    for (size_t i = 0; i < len; i++) {
        const float g = grad[i] + weight_decay * param[i];
        const float m = beta1 * exp_avg[i] + (1.0f - beta1) * g;
        const float v = beta2 * exp_avg_sq[i] + (1.0f - beta2) * g * g;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] -= step_size * m / (sqrtf(v) / bc2_sqrt + eps);
    }
}
