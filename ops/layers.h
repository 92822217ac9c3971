// ops/layers.h: the operations a Llama-family transformer is made of, forward and
// backward, as plain CPU functions: the reference that the CUDA kernels are
// tested against. Activations are row-major [n_tokens, width]. The CUDA
// versions are declared at the bottom when built by nvcc.
//
// Each function is a template on the number type: the model runs them in
// float; the tests run them in double to check every backward function
// against central finite differences. Backward functions ACCUMULATE (+=)
// into their gradient outputs, so a tensor used twice gets both parts.
#pragma once
#include <stddef.h>
#include "model.h"

// sum_i x[i] * y[i], in SIMD lanes (a sum in one chain would wait on each add)
template <typename Real>
static inline Real dot(const Real *x, const Real *y, int len) {
    Real sum = 0;
    #pragma omp simd reduction(+ : sum)
    for (int i = 0; i < len; i++) sum += x[i] * y[i];
    return sum;
}

// out[n, out_dim] = in[n, in_dim] W^T + bias   (W is [out_dim, in_dim]; bias may be NULL)
// matmul_naive_cpu is the definition, three plain loops; matmul_cpu computes the
// same in blocks for registers and cache (tested against it), and is the one used.
template <typename Real>
void matmul_naive_cpu(Real *out, const Real *in, const Real *weight, const Real *bias, int n, int in_dim, int out_dim);
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

#ifdef __CUDACC__
#include "ops/gpu.h"
// The same operations on the GPU (device pointers). The residual stream and
// its gradient are fp32, activations are act16 (bf16 or fp16: ops/gpu.h),
// statistics and sums are fp32.

// out[i, :] = table[tokens[i], :]   (table act16 [vocab, dim], out fp32 [n, dim])
void embedding_gpu(float *out, const act16 *table, const int *tokens, int n, int dim);
// out = x / sqrt(mean(x^2) + eps) * weight   (x fp32 [n, dim], weight fp32 [dim], out act16)
void rmsnorm_gpu(act16 *out, const float *x, const float *weight, int n, int dim, float eps);
// d_x (fp32) += d_out (fp32) through the norm, as rmsnorm_backward_cpu
void rmsnorm_backward_gpu(float *d_x, const float *d_out, const float *x, const float *weight, int n, int dim,
                          float eps);
// rope_cpu and rope_backward_cpu in place on act16 [n, n_heads * head_dim]
void rope_gpu(act16 *x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim);
void rope_backward_gpu(act16 *d_x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim);
// out = silu(gate) * up
void swiglu_gpu(act16 *out, const act16 *gate, const act16 *up, size_t n);
// d_gate, d_up = the gradients of swiglu (OVERWRITTEN, not accumulated)
void swiglu_backward_gpu(act16 *d_gate, act16 *d_up, const act16 *d_out, const act16 *gate, const act16 *up, size_t n);
// x (fp32) += y (act16)
void residual_add_gpu(float *x, const act16 *y, size_t n);
// out[n, out_dim] (act16) = in[n, in_dim] W^T + bias   (cuBLAS; W act16 [out_dim, in_dim]; bias fp32 or NULL)
void matmul_gpu(act16 *out, const act16 *in, const act16 *weight, const float *bias, int n, int in_dim, int out_dim);
// d_in[n, in_dim] (fp32) += d_out[n, out_dim] (act16) W   (cuBLAS)
void matmul_backward_input_gpu(float *d_in, const act16 *d_out, const act16 *weight, int n, int in_dim, int out_dim);
#endif
