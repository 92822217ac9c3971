// layers.h: the operations a Llama-family transformer is made of, as plain
// fp32 CPU functions (the reference that the CUDA kernels are tested against).
// Activations are row-major [n_tokens, width].
#pragma once
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

// out[n, out_dim] = in[n, in_dim] W^T + bias   (W is [out_dim, in_dim]; bias may be NULL)
void matmul_cpu(float *out, const float *in, const float *weight, const float *bias,
                int n, int in_dim, int out_dim);

// out = x / sqrt(mean(x^2) + eps) * weight, per row of width dim
void rmsnorm_cpu(float *out, const float *x, const float *weight, int n, int dim, float eps);

// inv_freq[i] = theta^(-2i/head_dim), i < head_dim/2, with Llama-3 scaling when configured
void rope_inv_freq(const Config *c, float *inv_freq);

// Rotates each head of x[n, n_heads * head_dim] in place by angle pos * inv_freq[i],
// pairing dimensions (i, i + head_dim/2) (HF's rotate_half convention).
void rope_cpu(float *x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim);

// Causal grouped-query attention for n new queries at positions pos0..pos0+n-1
// over keys/values 0..pos0+n-1 held in k_cache/v_cache [max_seq, n_kv_heads * head_dim].
// out[n, n_heads * head_dim]; scratch holds pos0 + n floats per thread.
void attention_cpu(float *out, const float *q, const float *k_cache, const float *v_cache,
                   int n, int pos0, int n_heads, int n_kv_heads, int head_dim);

// out = silu(gate) * up, silu(x) = x / (1 + exp(-x))
void swiglu_cpu(float *out, const float *gate, const float *up, size_t n);

// Mean over t with targets[t] != -100 of -log softmax(logits[t])[targets[t]];
// also returns the number of counted targets in *n_counted. targets are
// already shifted: targets[t] is the token that should follow position t.
float cross_entropy_cpu(const float *logits, const int *targets, int n, int vocab, int *n_counted);

// x += y
void residual_add_cpu(float *x, const float *y, size_t n);

#ifdef __cplusplus
}
#endif
