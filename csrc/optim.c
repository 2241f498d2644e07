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
               float lr, double beta1, double beta2, float eps, float weight_decay, long step)
{
    /* 1 - beta in double, then float, as PyTorch forms it from Python floats */
    const float b1 = (float)beta1, b2 = (float)beta2;
    const float one_b1 = (float)(1.0 - beta1), one_b2 = (float)(1.0 - beta2);
    const double bc1 = 1.0 - pow(beta1, (double)step);
    const double bc2 = 1.0 - pow(beta2, (double)step);
    const float step_size = (float)(lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    #pragma omp parallel for schedule(static) if (len > 65536)
    for (size_t i = 0; i < len; i++) {
        const float g = grad[i] + weight_decay * param[i];
        const float m = b1 * exp_avg[i] + one_b1 * g;
        const float v = b2 * exp_avg_sq[i] + one_b2 * g * g;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] -= step_size * m / (sqrtf(v) / bc2_sqrt + eps);
    }
}
