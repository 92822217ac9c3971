// ops/attention.h: causal grouped-query attention, forward and backward: the
// CPU reference (ops/attention.cu), then, when built by nvcc, the GPU's three
// kinds: simple (ops/attention.cu), flash (ops/flash_attention.cu) and flash
// on tensor cores (ops/flash_attention_tc.cu).
#pragma once
#include <stddef.h>

// Causal grouped-query attention for n new queries at positions pos0..pos0+n-1
// over keys/values 0..pos0+n-1 held in k/v [pos0 + n, n_kv_heads * head_dim].
// q and out are [n, n_heads * head_dim]. positions: NULL, or (pos0 = 0, several
// samples packed in one sequence) [n] each token's position in its own sample:
// query t then sees keys t - positions[t] .. t only (a block-diagonal causal mask).
template <typename Real>
void attention_cpu(Real *out, const Real *q, const Real *k, const Real *v, int n, int pos0, int n_heads,
                   int n_kv_heads, int head_dim, const int *positions);
// Backward of attention_cpu for a whole sequence (pos0 = 0): recomputes the
// softmax from q and k, then d_q, d_k, d_v += the gradients.
template <typename Real>
void attention_backward_cpu(Real *d_q, Real *d_k, Real *d_v, const Real *d_out, const Real *q, const Real *k,
                            const Real *v, int n, int n_heads, int n_kv_heads, int head_dim, const int *positions);

#ifdef __CUDACC__
#include "ops/gpu.h"

// Which GPU implementation: SIMPLE materialises the [seq_len, seq_len] scores
// of several heads at a time (cuBLAS batched GEMMs and a softmax kernel, like
// llm.c); FLASH is one fused kernel with an online softmax that never does
// (head_dim at most 128); FLASH_TC is FLASH on tensor cores (mma.sync,
// FlashAttention-2; head_dim 64 or 128, sm_80 and newer).
typedef enum { ATTENTION_SIMPLE, ATTENTION_FLASH, ATTENTION_FLASH_TC } AttentionKernel;
// "simple", "flash" or "flash_tc" (as bench_train's --attention names them).
const char *attention_kind_name(AttentionKernel kind);
// Device scratch either kind needs for forward and backward of this shape. The
// simple kind keeps 12 bytes per score and takes as many heads per pass as
// score_budget bytes of scores hold (at least one); the two flash kinds need a
// float per (sequence, head, token).
size_t attention_scratch_bytes_gpu(AttentionKernel kind, int n_seqs, int seq_len, int n_heads, int head_dim,
                                   size_t score_budget);
// The kind the trainer runs: simple when one head's scores fit score_budget and
// head_dim is a multiple of 8, else flash. Flash on tensor cores (sm_80 and newer,
// head_dim 64 or 128) is asked for by name (gpu_trainer_set_attention,
// bench_train --attention flash_tc) until it has passed its tests on a GPU; then
// it becomes the pick where it runs. (The simple kind hands cuBLAS arrays of
// pointers to head slices, whose alignment it cannot see; a slice starts 16-byte
// aligned only when head_dim is a multiple of 8, as in every Llama model.)
AttentionKernel attention_pick_kind_gpu(int n_seqs, int seq_len, int head_dim, size_t score_budget);
// The first key query i of sequence s sees: 0, or with packed samples
// (positions != NULL: [n_seqs * seq_len] on the device, each token's position in
// its own sample) the first token of i's sample, i - positions[s][i].
__device__ inline int attention_first_key_gpu(const int *positions, int s, int seq_len, int i) {
    return positions ? i - positions[(size_t)s * seq_len + i] : 0;
}
// Causal GQA attention over n_seqs independent sequences of seq_len tokens each (N = n_seqs * seq_len rows);
// with positions (see attention_first_key_gpu) the samples packed in a sequence do not see each other.
// q [N, n_heads*head_dim], k and v [N, n_kv_heads*head_dim], out [N, n_heads*head_dim], all act16 row-major.
// lse [n_seqs * n_heads * seq_len] fp32 (layout [seq][head][token]): log-sum-exp of each query's scaled scores,
// written by both kinds, read by backward. scratch: scratch_bytes of device memory, at least
// attention_scratch_bytes_gpu(kind, ...) for this shape (or for a larger one); contents not kept.
void attention_forward_gpu(AttentionKernel kind, act16 *out, float *lse, const act16 *q, const act16 *k, const act16 *v,
                           const int *positions, int n_seqs, int seq_len, int n_heads, int n_kv_heads, int head_dim,
                           void *scratch, size_t scratch_bytes);
// d_q, d_k, d_v (act16, OVERWRITTEN) from d_out (act16); out and lse are the forward's.
void attention_backward_gpu(AttentionKernel kind, act16 *d_q, act16 *d_k, act16 *d_v, const act16 *d_out, const act16 *out,
                            const float *lse, const act16 *q, const act16 *k, const act16 *v, const int *positions,
                            int n_seqs, int seq_len, int n_heads, int n_kv_heads, int head_dim, void *scratch,
                            size_t scratch_bytes);

// Attention of n new queries against a key/value cache (inference, infer/forward_gpu.h):
// the queries sit at positions pos0..pos0+n-1, the cache holds the keys and values
// (after RoPE) of positions 0..pos0+n-1 (the chunk's own already appended), and
// query t sees keys 0..pos0+t. The same as attention_cpu(out, q, k, v, n, pos0, ...,
// NULL). q, out act16 [n, n_heads * head_dim]; k_cache, v_cache act16 rows of
// n_kv_heads * head_dim, at least pos0 + n of them. head_dim at most
// ATTENTION_CACHE_MAX_HEAD_DIM. Online softmax in fp32, no scratch.
enum { ATTENTION_CACHE_MAX_HEAD_DIM = 128 };
void attention_cached_gpu(act16 *out, const act16 *q, const act16 *k_cache, const act16 *v_cache, int n, int pos0,
                          int n_heads, int n_kv_heads, int head_dim);

// ---- the flash kind's launchers (ops/flash_attention.cu), called by the two above ----
// The widest head the flash kernels handle.
enum { FLASH_MAX_HEAD_DIM = 128 };
// attention_forward_gpu's flash kind (no scratch).
void flash_attention_forward_gpu(act16 *out, float *lse, const act16 *q, const act16 *k, const act16 *v,
                                 const int *positions, int n_seqs, int seq_len, int n_heads, int n_kv_heads,
                                 int head_dim);
// attention_backward_gpu's flash kind; delta: n_seqs * n_heads * seq_len floats of scratch.
void flash_attention_backward_gpu(act16 *d_q, act16 *d_k, act16 *d_v, const act16 *d_out, const act16 *out,
                                  const float *lse, const act16 *q, const act16 *k, const act16 *v, const int *positions,
                                  int n_seqs, int seq_len, int n_heads, int n_kv_heads, int head_dim, float *delta);
// delta_i = dO_i . O_i for every (sequence, head, token), [seq][head][token]: both flash kinds' backward starts with it.
void attention_delta_gpu(float *delta, const act16 *d_out, const act16 *out, int n_seqs, int seq_len, int n_heads,
                         int head_dim);

// ---- the tensor-core flash kind's launchers (ops/flash_attention_tc.cu) ----
// 1 when the kind handles head_dim (64 or 128).
int flash_attention_tc_handles(int head_dim);
// The same as the flash kind's two above, on tensor cores (sm_80 and newer).
void flash_attention_tc_forward_gpu(act16 *out, float *lse, const act16 *q, const act16 *k, const act16 *v,
                                    const int *positions, int n_seqs, int seq_len, int n_heads, int n_kv_heads,
                                    int head_dim);
void flash_attention_tc_backward_gpu(act16 *d_q, act16 *d_k, act16 *d_v, const act16 *d_out, const act16 *out,
                                     const float *lse, const act16 *q, const act16 *k, const act16 *v,
                                     const int *positions, int n_seqs, int seq_len, int n_heads, int n_kv_heads,
                                     int head_dim, float *delta);
#endif
