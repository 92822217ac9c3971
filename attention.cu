// attention.cu: causal grouped-query attention, forward and backward. The
// CPU reference functions; the CUDA kernels sit beside them.
#include "attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// ---- attention --------------------------------------------------------------------

// probs[j] = softmax_j(q . k_j / sqrt(d)) over keys j < n_keys of one kv head.
template <typename Real>
static void attention_probs(Real *probs, const Real *q_vec, const Real *k, int n_keys, int kv_dim, int kv_offset,
                            int head_dim) {
    Real scale = 1 / sqrt((Real)head_dim);
    Real max_score = -INFINITY;
    for (int j = 0; j < n_keys; j++) {
        const Real *k_vec = k + (size_t)j * kv_dim + kv_offset;
        Real dot = 0;
        for (int i = 0; i < head_dim; i++) dot += q_vec[i] * k_vec[i];
        probs[j] = dot * scale;
        if (probs[j] > max_score) max_score = probs[j];
    }
    Real sum = 0;
    for (int j = 0; j < n_keys; j++) {
        probs[j] = exp(probs[j] - max_score);
        sum += probs[j];
    }
    for (int j = 0; j < n_keys; j++) probs[j] /= sum;
}

template <typename Real>
void attention_cpu(Real *out, const Real *q, const Real *k, const Real *v, int n, int pos0, int n_heads,
                   int n_kv_heads, int head_dim) {
    int kv_dim = n_kv_heads * head_dim;
    int group = n_heads / n_kv_heads;  // query heads sharing one kv head
    #pragma omp parallel
    {
        Real *probs = (Real *)malloc(sizeof(Real) * (size_t)(pos0 + n));
        #pragma omp for collapse(2) schedule(static)
        for (int t = 0; t < n; t++) {
            for (int h = 0; h < n_heads; h++) {
                int kv_offset = (h / group) * head_dim;
                int n_keys = pos0 + t + 1;  // causal: keys up to and including this position
                attention_probs(probs, q + ((size_t)t * n_heads + h) * head_dim, k, n_keys, kv_dim, kv_offset,
                                head_dim);
                // out = sum_j p_j v_j
                Real *o = out + ((size_t)t * n_heads + h) * head_dim;
                for (int i = 0; i < head_dim; i++) o[i] = 0;
                for (int j = 0; j < n_keys; j++) {
                    const Real *v_vec = v + (size_t)j * kv_dim + kv_offset;
                    for (int i = 0; i < head_dim; i++) o[i] += probs[j] * v_vec[i];
                }
            }
        }
        free(probs);
    }
}

// Runs serially: several query heads write the same d_k/d_v rows.
template <typename Real>
void attention_backward_cpu(Real *d_q, Real *d_k, Real *d_v, const Real *d_out, const Real *q, const Real *k,
                            const Real *v, int n, int n_heads, int n_kv_heads, int head_dim) {
    int kv_dim = n_kv_heads * head_dim;
    int group = n_heads / n_kv_heads;
    Real scale = 1 / sqrt((Real)head_dim);
    Real *probs = (Real *)malloc(sizeof(Real) * (size_t)n);
    Real *d_probs = (Real *)malloc(sizeof(Real) * (size_t)n);
    for (int t = 0; t < n; t++) {
        for (int h = 0; h < n_heads; h++) {
            int kv_offset = (h / group) * head_dim;
            int n_keys = t + 1;
            const Real *q_vec = q + ((size_t)t * n_heads + h) * head_dim;
            const Real *dy = d_out + ((size_t)t * n_heads + h) * head_dim;
            attention_probs(probs, q_vec, k, n_keys, kv_dim, kv_offset, head_dim);
            // dp_j = dy . v_j;  dv_j += p_j dy
            Real weighted = 0;  // sum_j p_j dp_j
            for (int j = 0; j < n_keys; j++) {
                const Real *v_vec = v + (size_t)j * kv_dim + kv_offset;
                Real *dv = d_v + (size_t)j * kv_dim + kv_offset;
                Real dp = 0;
                for (int i = 0; i < head_dim; i++) {
                    dp += dy[i] * v_vec[i];
                    dv[i] += probs[j] * dy[i];
                }
                d_probs[j] = dp;
                weighted += probs[j] * dp;
            }
            // softmax backward: ds_j = p_j (dp_j - sum_k p_k dp_k); then dq += scale ds_j k_j, dk_j += scale ds_j q
            Real *dq = d_q + ((size_t)t * n_heads + h) * head_dim;
            for (int j = 0; j < n_keys; j++) {
                Real ds = probs[j] * (d_probs[j] - weighted) * scale;
                const Real *k_vec = k + (size_t)j * kv_dim + kv_offset;
                Real *dk = d_k + (size_t)j * kv_dim + kv_offset;
                for (int i = 0; i < head_dim; i++) {
                    dq[i] += ds * k_vec[i];
                    dk[i] += ds * q_vec[i];
                }
            }
        }
    }
    free(probs);
    free(d_probs);
}

template void attention_cpu(float *, const float *, const float *, const float *, int, int, int, int, int);
template void attention_cpu(double *, const double *, const double *, const double *, int, int, int, int, int);
template void attention_backward_cpu(float *, float *, float *, const float *, const float *, const float *,
                                     const float *, int, int, int, int);
template void attention_backward_cpu(double *, double *, double *, const double *, const double *, const double *,
                                     const double *, int, int, int, int);
