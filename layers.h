// layers.h: the operations a Llama-family transformer is made of, forward and
// backward, as plain CPU functions: the reference that the CUDA kernels are
// tested against. Activations are row-major [n_tokens, width].
//
// Each function is a template on the number type: the model runs them in
// float; the tests run them in double to check every backward function
// against central finite differences. Backward functions ACCUMULATE (+=)
// into their gradient outputs, so a tensor used twice gets both parts.
#pragma once
#include <stddef.h>
#include "model.h"
#include "attention.h"
#include "cross_entropy.h"

// out[n, out_dim] = in[n, in_dim] W^T + bias   (W is [out_dim, in_dim]; bias may be NULL)
template <typename Real>
void matmul_cpu(Real *out, const Real *in, const Real *weight, const Real *bias, int n, int in_dim, int out_dim);
// d_in[n, in_dim] += d_out[n, out_dim] W
template <typename Real>
void matmul_backward_input_cpu(Real *d_in, const Real *d_out, const Real *weight, int n, int in_dim, int out_dim);
// d_weight[out_dim, in_dim] += d_out^T in
template <typename Real>
void matmul_backward_weight_cpu(Real *d_weight, const Real *d_out, const Real *in, int n, int in_dim, int out_dim);

// out = x / sqrt(mean(x^2) + eps) * weight, per row of width dim
template <typename Real>
void rmsnorm_cpu(Real *out, const Real *x, const Real *weight, int n, int dim, float eps);
// d_x += d_out through the norm (the weight is frozen: no gradient for it)
template <typename Real>
void rmsnorm_backward_cpu(Real *d_x, const Real *d_out, const Real *x, const Real *weight, int n, int dim, float eps);

// inv_freq[i] = theta^(-2i/head_dim), i < head_dim/2, with Llama-3 scaling when configured
void rope_inv_freq(const Config *c, float *inv_freq);
// Rotates each head of x[n, n_heads * head_dim] in place by angle pos * inv_freq[i],
// pairing dimensions (i, i + head_dim/2) (HF's rotate_half convention).
template <typename Real>
void rope_cpu(Real *x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim);
// The gradient of a rotation is the inverse rotation: d_x rotated by -angle, in place.
template <typename Real>
void rope_backward_cpu(Real *d_x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim);

// out = silu(gate) * up, silu(x) = x / (1 + exp(-x))
template <typename Real>
void swiglu_cpu(Real *out, const Real *gate, const Real *up, size_t n);
template <typename Real>
void swiglu_backward_cpu(Real *d_gate, Real *d_up, const Real *d_out, const Real *gate, const Real *up, size_t n);

// x += y
template <typename Real>
void residual_add_cpu(Real *x, const Real *y, size_t n);
