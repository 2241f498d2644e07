/* loss.h: classification losses on logits (N,K), float32, per-sample values. */
#ifndef DMCP_LOSS_H
#define DMCP_LOSS_H

#include "common.h"

/* Softmax cross-entropy with label smoothing (target (1-eps)*onehot + eps/K).
 * losses (N); probs (N,K) softmax kept for backward; labels (N) in [0,K). */
dmcp_status crossentropy_forward(float *losses, float *probs, const float *logits,
                                 const int64_t *labels, int n, int k, float smoothing);
/* dlogits (N,K) += scale * (probs - target). */
dmcp_status crossentropy_backward(float *dlogits, const float *probs, const int64_t *labels,
                                  int n, int k, float smoothing, float scale);

/* Distillation: losses[i] = tau^2 * KL(softmax(teacher/tau) || softmax(student/tau)).
 * pstudent, pteacher (N,K) kept for backward. */
void kldiv_forward(float *losses, float *pstudent, float *pteacher,
                   const float *student, const float *teacher, int n, int k, float tau);
/* dstudent (N,K) += scale * tau * (pstudent - pteacher). */
void kldiv_backward(float *dstudent, const float *pstudent, const float *pteacher,
                    int n, int k, float tau, float scale);

#endif
