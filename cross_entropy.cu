// cross_entropy.cu: the answer-only cross-entropy loss (labels -100 are not
// counted) and its gradient. The CPU reference functions; the CUDA kernels
// sit beside them.
#include "cross_entropy.h"

#include <math.h>
#include <stdlib.h>

// ---- cross-entropy ---------------------------------------------------------------------

template <typename Real>
static double log_sum_exp(const Real *row, int vocab) {
    double max_logit = row[0];
    for (int v = 1; v < vocab; v++) if (row[v] > max_logit) max_logit = row[v];
    double sum = 0.0;
    for (int v = 0; v < vocab; v++) sum += exp((double)row[v] - max_logit);
    return log(sum) + max_logit;
}

template <typename Real>
double cross_entropy_sum_cpu(const Real *logits, const int *targets, int n, int vocab, int *n_counted) {
    double total = 0.0;
    int counted = 0;
    for (int t = 0; t < n; t++) {
        if (targets[t] == -100) continue;
        const Real *row = logits + (size_t)t * vocab;
        // -log p = logsumexp(row) - row[target]
        total += log_sum_exp(row, vocab) - row[targets[t]];
        counted++;
    }
    *n_counted = counted;
    return total;
}

template <typename Real>
void cross_entropy_backward_cpu(Real *d_logits, const Real *logits, const int *targets, int n, int vocab,
                                double scale) {
    for (int t = 0; t < n; t++) {
        if (targets[t] == -100) continue;
        const Real *row = logits + (size_t)t * vocab;
        Real *d_row = d_logits + (size_t)t * vocab;
        double lse = log_sum_exp(row, vocab);
        // d loss / d logit_v = softmax_v - [v == target]
        for (int v = 0; v < vocab; v++) d_row[v] += (Real)(scale * exp((double)row[v] - lse));
        d_row[targets[t]] -= (Real)scale;
    }
}

float cross_entropy_cpu(const float *logits, const int *targets, int n, int vocab, int *n_counted) {
    double total = cross_entropy_sum_cpu(logits, targets, n, vocab, n_counted);
    return *n_counted ? (float)(total / *n_counted) : 0.0f;
}

template double cross_entropy_sum_cpu(const float *, const int *, int, int, int *);
template double cross_entropy_sum_cpu(const double *, const int *, int, int, int *);
template void cross_entropy_backward_cpu(float *, const float *, const int *, int, int, double);
template void cross_entropy_backward_cpu(double *, const double *, const int *, int, int, double);
