// cross_entropy.h: the answer-only cross-entropy loss and its gradient (CPU
// reference; the CUDA kernels are declared below it when built by nvcc).
#pragma once
#include <stddef.h>

// Sum over t with targets[t] != -100 of -log softmax(logits[t])[targets[t]],
// returned as a double; *n_counted gets the number of counted targets.
// targets are already shifted: targets[t] is the token that should follow t.
template <typename Real>
double cross_entropy_sum_cpu(const Real *logits, const int *targets, int n, int vocab, int *n_counted);
// d_logits += scale * (softmax(logits[t]) - onehot(targets[t])) for counted t
template <typename Real>
void cross_entropy_backward_cpu(Real *d_logits, const Real *logits, const int *targets, int n, int vocab,
                                double scale);
// The mean answer-only loss (sum / count, 0 when nothing is counted).
float cross_entropy_cpu(const float *logits, const int *targets, int n, int vocab, int *n_counted);
