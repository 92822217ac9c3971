// ops/cross_entropy.h: the answer-only cross-entropy loss and its gradient (CPU
// reference; the CUDA kernels are declared below it when built by nvcc).
#pragma once
#include <stddef.h>

// The target of a position that is not learned (PyTorch's ignore_index): no
// loss, no gradient. Plain C: the data code (C) that writes targets takes it
// from here; the functions below are C++.
#define IGNORE_TARGET -100

#ifdef __cplusplus
extern "C" {
#endif
// Bytes of lm_head_cross_entropy_gpu's workspace (ops/workspace.h) for up to
// max_tokens counted tokens and an LM head of vocab rows of dim, chunk_tokens
// tokens at a time: the counted tokens' row ids, targets, loss weights and losses
// (4 bytes each), their rows of x (16-bit) and its gradient (fp32) [max_tokens, dim],
// and one chunk's fp32 logits and 16-bit gradient [min(chunk_tokens, max_tokens), vocab].
// Plain C: ./train --plan counts the same bytes (trainer/memory_plan.c).
size_t lm_head_cross_entropy_workspace_bytes(size_t max_tokens, int dim, int vocab, int chunk_tokens);
#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
// Sum over t with targets[t] != IGNORE_TARGET of w_t (-log softmax(logits[t])[targets[t]]),
// returned as a double, with w_t = weights[t], or 1 when weights is NULL; *n_counted
// gets the number of counted targets. targets are already shifted: targets[t] is
// the token that should follow t.
template <typename Real>
double cross_entropy_sum_cpu(const Real *logits, const int *targets, const float *weights, int n, int vocab,
                             int *n_counted);
// d_logits += scale * w_t (softmax(logits[t]) - onehot(targets[t])) for counted t
template <typename Real>
void cross_entropy_backward_cpu(Real *d_logits, const Real *logits, const int *targets, const float *weights, int n,
                                int vocab, double scale);
// The mean answer-only loss (unweighted sum / count, 0 when nothing is counted).
float cross_entropy_cpu(const float *logits, const int *targets, int n, int vocab, int *n_counted);
// The LM head and the loss need only the counted tokens' rows (with answer-only
// labels, a few dozen of a sample's hundreds); these gather them and put their
// gradient back. rows: n_rows distinct row indices; every row is dim wide.
// out[r] = x[rows[r]]
template <typename Real>
void gather_rows_cpu(Real *out, const Real *x, const int *rows, int n_rows, int dim);
// d_x[rows[r]] += d_rows[r]
template <typename Real>
void scatter_add_rows_cpu(Real *d_x, const Real *d_rows, const int *rows, int n_rows, int dim);
// Tokens per chunk of the GPU's fused LM head + loss: as many as keep the fp32
// logits [chunk, vocab] within 64 MiB, at least 1 (the memory plan uses it too).
int lm_head_chunk_tokens_default(int vocab);

#ifdef __CUDACC__
#include "ops/gpu.h"
// The same loss on the GPU (device pointers). A target outside [0, vocab)
// other than IGNORE_TARGET stops the program with a message naming it.

// From fp32 logits [n, vocab] already on the device: losses[t] (fp32 [n]) =
// -w_t log softmax(logits[t])[targets[t]], 0 on uncounted rows; and when d_logits
// != NULL, d_logits (fp32 [n, vocab], OVERWRITTEN) = scale * w_t (softmax - onehot)
// on counted rows, 0 on the others. d_logits may be logits itself (in place).
// weights: NULL (w_t = 1) or fp32 [n] on the device.
void cross_entropy_gpu(float *losses, float *d_logits, const float *logits, const int *targets, const float *weights,
                       int n, int vocab, float scale);

// gather_rows_cpu and scatter_add_rows_cpu on the GPU: x act16, d fp32 (rows on the device).
void gather_rows_gpu(act16 *out, const act16 *x, const int *rows, int n_rows, int dim);
void scatter_add_rows_gpu(float *d_x, const float *d_rows, const int *rows, int n_rows, int dim);

// The LM head and the (weighted) cross-entropy, fused and chunked over the
// tokens so that the full [n, vocab] logits never exist at once:
//   logits = x W^T   (x act16 [n, dim] = the final normed hidden state, W act16 [vocab, dim]; cuBLAS, fp32 out)
// returns the sum over counted t of w_t (-log softmax(logits[t])[targets[t]])
// (per-token losses in fp32, summed on the host in double); *n_counted = the
// number of counted targets. targets: int [n] on the device; weights: NULL
// (w_t = 1) or fp32 [n] on the device.
// If d_x != NULL: d_logits = grad_scale * w_t (softmax - onehot) on counted rows
// (0 elsewhere), rounded to act16, and d_x [n, dim] (fp32, ACCUMULATES) += d_logits W.
// Only the counted tokens go through the LM head: their rows of x are gathered
// first (act16 [m, dim], and fp32 [m, dim] for their gradient), then taken
// lm_head_chunk_tokens_gpu(vocab) tokens at a time, so the fp32 logits take
// <= 64 MiB, plus half that for the act16 d_logits. All of it lives in workspace:
// workspace_bytes of device memory, at least lm_head_cross_entropy_workspace_bytes(
// m, dim, vocab, lm_head_chunk_tokens_gpu(vocab)) for the m counted tokens (a
// smaller one stops the program with a message); nothing is allocated on the device.
double lm_head_cross_entropy_gpu(float *d_x, const act16 *x, const act16 *lm_head, const int *targets,
                                 const float *weights, int n, int dim, int vocab, double grad_scale, int *n_counted,
                                 void *workspace, size_t workspace_bytes);
// Tokens per chunk of lm_head_cross_entropy_gpu: the forced value (below), else
// lm_head_chunk_tokens_default(vocab).
int lm_head_chunk_tokens_gpu(int vocab);
// Forces the chunk of lm_head_cross_entropy_gpu to `tokens` tokens (tests use
// it to exercise chunking on small batches); 0 restores the automatic rule.
void lm_head_set_chunk_tokens_gpu(int tokens);
#endif
#endif  // __cplusplus
