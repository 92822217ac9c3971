// attention.h: causal grouped-query attention, forward and backward (CPU
// reference; the CUDA kernels are declared below it when built by nvcc).
#pragma once
#include <stddef.h>

// Causal grouped-query attention for n new queries at positions pos0..pos0+n-1
// over keys/values 0..pos0+n-1 held in k/v [pos0 + n, n_kv_heads * head_dim].
// q and out are [n, n_heads * head_dim].
template <typename Real>
void attention_cpu(Real *out, const Real *q, const Real *k, const Real *v, int n, int pos0, int n_heads,
                   int n_kv_heads, int head_dim);
// Backward of attention_cpu for a whole sequence (pos0 = 0): recomputes the
// softmax from q and k, then d_q, d_k, d_v += the gradients.
template <typename Real>
void attention_backward_cpu(Real *d_q, Real *d_k, Real *d_v, const Real *d_out, const Real *q, const Real *k,
                            const Real *v, int n, int n_heads, int n_kv_heads, int head_dim);
