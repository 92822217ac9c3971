// ops/attention.cu: causal grouped-query attention, forward and backward: the
// CPU reference (attention_cpu, attention_backward_cpu), then on the GPU the
// simple kind (scores materialised, cuBLAS's batched GEMMs for the products)
// and the entry points, which run it or one of the flash kinds
// (ops/flash_attention.cu, ops/flash_attention_tc.cu); last, inference's
// attention of new queries against a key/value cache.
#include "ops/attention.h"
#include "ops/layers.h"
#include "ops/workspace.h"

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
        probs[j] = dot(q_vec, k + (size_t)j * kv_dim + kv_offset, head_dim) * scale;
        if (probs[j] > max_score) max_score = probs[j];
    }
    Real sum = 0;
    for (int j = 0; j < n_keys; j++) {
        probs[j] = exp(probs[j] - max_score);
        sum += probs[j];
    }
    for (int j = 0; j < n_keys; j++) probs[j] /= sum;
}

// The first key query t sees: 0, or with packed samples (positions != NULL)
// the first token of t's own sample, t - positions[t].
static int first_key(const int *positions, int t) { return positions ? t - positions[t] : 0; }

template <typename Real>
void attention_cpu(Real *out, const Real *q, const Real *k, const Real *v, int n, int pos0, int n_heads,
                   int n_kv_heads, int head_dim, const int *positions) {
    int kv_dim = n_kv_heads * head_dim;
    int group = n_heads / n_kv_heads;  // query heads sharing one kv head
    #pragma omp parallel
    {
        Real *probs = (Real *)cpu_malloc(sizeof(Real) * (size_t)(pos0 + n), "attention probabilities");
        // dynamic: a later token attends to more keys (equal static halves would leave one thread 3/4 of the work)
        #pragma omp for collapse(2) schedule(dynamic)
        for (int t = 0; t < n; t++) {
            for (int h = 0; h < n_heads; h++) {
                int kv_offset = (h / group) * head_dim;
                int first = first_key(positions, t);
                int n_keys = pos0 + t + 1 - first;  // causal: keys first .. pos0 + t
                const Real *k_first = k + (size_t)first * kv_dim, *v_first = v + (size_t)first * kv_dim;
                attention_probs(probs, q + ((size_t)t * n_heads + h) * head_dim, k_first, n_keys, kv_dim, kv_offset,
                                head_dim);
                // out = sum_j p_j v_j
                Real *o = out + ((size_t)t * n_heads + h) * head_dim;
                for (int i = 0; i < head_dim; i++) o[i] = 0;
                for (int j = 0; j < n_keys; j++) {
                    const Real *v_vec = v_first + (size_t)j * kv_dim + kv_offset;
                    for (int i = 0; i < head_dim; i++) o[i] += probs[j] * v_vec[i];
                }
            }
        }
        free(probs);
    }
}

// One thread per kv head g: only g's query heads write g's columns of d_k and
// d_v, so each gradient element is summed by one thread in (t, h) order, the
// same bits as a serial loop.
template <typename Real>
void attention_backward_cpu(Real *d_q, Real *d_k, Real *d_v, const Real *d_out, const Real *q, const Real *k,
                            const Real *v, int n, int n_heads, int n_kv_heads, int head_dim, const int *positions) {
    int kv_dim = n_kv_heads * head_dim;
    int group = n_heads / n_kv_heads;
    Real scale = 1 / sqrt((Real)head_dim);
    #pragma omp parallel for schedule(static)
    for (int g = 0; g < n_kv_heads; g++) {
        Real *probs = (Real *)cpu_malloc(sizeof(Real) * (size_t)n, "attention probabilities");
        Real *d_probs = (Real *)cpu_malloc(sizeof(Real) * (size_t)n, "attention probabilities");
        int kv_offset = g * head_dim;
        for (int t = 0; t < n; t++) {
            for (int h = g * group; h < (g + 1) * group; h++) {
                int first = first_key(positions, t);
                int n_keys = t + 1 - first;   // keys first .. t
                const Real *q_vec = q + ((size_t)t * n_heads + h) * head_dim;
                const Real *dy = d_out + ((size_t)t * n_heads + h) * head_dim;
                const Real *k_first = k + (size_t)first * kv_dim, *v_first = v + (size_t)first * kv_dim;
                Real *dk_first = d_k + (size_t)first * kv_dim, *dv_first = d_v + (size_t)first * kv_dim;
                attention_probs(probs, q_vec, k_first, n_keys, kv_dim, kv_offset, head_dim);
                // dp_j = dy . v_j;  dv_j += p_j dy
                Real weighted = 0;  // sum_j p_j dp_j
                for (int j = 0; j < n_keys; j++) {
                    const Real *v_vec = v_first + (size_t)j * kv_dim + kv_offset;
                    Real *dv = dv_first + (size_t)j * kv_dim + kv_offset;
                    Real dp = 0;
                    #pragma omp simd reduction(+ : dp)
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
                    const Real *k_vec = k_first + (size_t)j * kv_dim + kv_offset;
                    Real *dk = dk_first + (size_t)j * kv_dim + kv_offset;
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
}

template void attention_cpu(float *, const float *, const float *, const float *, int, int, int, int, int,
                            const int *);
template void attention_cpu(double *, const double *, const double *, const double *, int, int, int, int, int,
                            const int *);
template void attention_backward_cpu(float *, float *, float *, const float *, const float *, const float *,
                                     const float *, int, int, int, int, const int *);
template void attention_backward_cpu(double *, double *, double *, const double *, const double *, const double *,
                                     const double *, int, int, int, int, const int *);

#ifdef __CUDACC__
// ---- on the GPU -------------------------------------------------------------------------
// Shared by both kinds: sequence s, token t, query head h, kv head g = h / group.
// q and out rows have stride q_stride = n_heads * head_dim, k and v rows
// kv_stride = n_kv_heads * head_dim; head h of row t starts at column h * head_dim.
// lse and delta are [seq][head][token].
#include <stdio.h>

// ---- ATTENTION_SIMPLE: scores materialised, cuBLAS for the products ----------------------
// A pass takes nh query heads h0..h0+nh-1 of every sequence at once: entry b = s * nh + i
// of one batched GEMM is (sequence s, query head h = h0 + i, its kv head g = h / group).
// S_b = scale q_{s,h} k_{s,g}^T [seq_len, seq_len] in fp32, a causal softmax kernel turns
// S into P (act16) and lse, then out_{s,h} = P_b v_{s,g}. As many heads go in one pass as
// the caller's score budget holds (attention_scratch_bytes_gpu).

static const int softmax_block = 256;
// S and dP in fp32, P and dS in act16 (bf16 or fp16): what the backward keeps per score.
static const size_t simple_bytes_per_score = 12;
// Entries of one pass at most: the softmax kernels' gridDim.y.
static const int simple_max_entries = 65535;

// Scratch bytes of one head's scores, for every sequence.
static double one_head_score_bytes(int n_seqs, int seq_len) {
    return (double)simple_bytes_per_score * n_seqs * seq_len * (double)seq_len;
}

// The simple kind's scratch, carved from one buffer: the batched GEMMs' pointer
// arrays, S, dP (fp32), P, dS (act16) for one pass of nh heads, and (backward) d_k
// and d_v per query head, fp32 [N, n_heads * head_dim], summed over each group at the end.
typedef struct {
    void **a, **b, **c;     // [n_seqs * nh] each
    float *scores, *d_probs;
    act16 *probs, *d_scores;
    float *d_k_heads, *d_v_heads;
} SimpleScratch;

// Elements from one entry's [seq_len, seq_len] square to the next: rounded up to
// 64, so that every square starts 128-byte aligned (cuBLAS's batched tensor-core
// kernels read their matrices in 16-byte pieces).
HOST_DEVICE static size_t square_stride(int seq_len) { return ((size_t)seq_len * seq_len + 63) / 64 * 64; }

// The next `bytes` of the buffer at base, 256-byte aligned (ops/workspace.h; NULL while only measuring).
static void *carve(char *base, size_t *offset, size_t bytes) {
    size_t start = workspace_region(offset, bytes);
    return base ? base + start : NULL;
}

// Lays out the scratch for passes of nh heads; returns its size in bytes.
static size_t simple_layout(SimpleScratch *w, void *base, int n_seqs, int seq_len, int n_heads, int head_dim,
                            int nh) {
    size_t entries = (size_t)n_seqs * nh, squares = entries * square_stride(seq_len);
    size_t per_head_grads = (size_t)n_seqs * seq_len * n_heads * head_dim;
    size_t offset = 0;
    w->a = (void **)carve((char *)base, &offset, sizeof(void *) * entries);
    w->b = (void **)carve((char *)base, &offset, sizeof(void *) * entries);
    w->c = (void **)carve((char *)base, &offset, sizeof(void *) * entries);
    w->scores = (float *)carve((char *)base, &offset, sizeof(float) * squares);
    w->d_probs = (float *)carve((char *)base, &offset, sizeof(float) * squares);
    w->probs = (act16 *)carve((char *)base, &offset, sizeof(act16) * squares);
    w->d_scores = (act16 *)carve((char *)base, &offset, sizeof(act16) * squares);
    w->d_k_heads = (float *)carve((char *)base, &offset, sizeof(float) * per_head_grads);
    w->d_v_heads = (float *)carve((char *)base, &offset, sizeof(float) * per_head_grads);
    return offset;
}

// Heads per pass with scratch_bytes of scratch: the most that fit (0 if not even one).
static int simple_heads_per_pass(size_t scratch_bytes, int n_seqs, int seq_len, int n_heads, int head_dim) {
    SimpleScratch w;
    for (int nh = n_heads; nh >= 1; nh--)
        if ((long long)n_seqs * nh <= simple_max_entries &&
            simple_layout(&w, NULL, n_seqs, seq_len, n_heads, head_dim, nh) <= scratch_bytes)
            return nh;
    return 0;
}

// Where entry b = s * nh + i of one batched-GEMM operand starts, in bytes:
// base + s * seq_stride + ((first + i) / group) * head_stride.
typedef struct {
    const char *base;
    size_t seq_stride, head_stride;
    int first, group;
} BatchOperand;

// One head's [seq_len, head_dim] slice of a token-major matrix with rows of
// row_stride elements: query head first + i (group 1) or its kv head (group > 1).
static BatchOperand head_slices(const void *matrix, size_t element_bytes, int row_stride, int seq_len, int head_dim,
                                int first, int group) {
    BatchOperand o = {(const char *)matrix, element_bytes * seq_len * row_stride, element_bytes * head_dim, first,
                      group};
    return o;
}

// The pass's [seq_len, seq_len] squares, entry b at b * square_stride(seq_len).
static BatchOperand squares(const void *base, size_t element_bytes, int seq_len, int nh) {
    size_t square = element_bytes * square_stride(seq_len);
    BatchOperand o = {(const char *)base, square * nh, square, 0, 1};
    return o;
}

__device__ static void *operand_address(BatchOperand o, int s, int i) {
    return (void *)(o.base + s * o.seq_stride + (size_t)((o.first + i) / o.group) * o.head_stride);
}

__global__ static void batch_pointers_kernel(void **a, void **b, void **c, BatchOperand oa, BatchOperand ob,
                                             BatchOperand oc, int nh, int n_entries) {
    int entry = blockIdx.x * blockDim.x + threadIdx.x;
    if (entry >= n_entries) return;
    int s = entry / nh, i = entry % nh;
    a[entry] = operand_address(oa, s, i);
    b[entry] = operand_address(ob, s, i);
    c[entry] = operand_address(oc, s, i);
}

// Fills the scratch's pointer arrays for one batched GEMM (stream order keeps
// the previous GEMM's reads before these writes).
static void batch_pointers(SimpleScratch *w, BatchOperand a, BatchOperand b, BatchOperand c, int nh, int n_entries) {
    batch_pointers_kernel<<<(unsigned)((n_entries + 255) / 256), 256>>>(w->a, w->b, w->c, a, b, c, nh, n_entries);
    CUDA_CHECK_LAUNCH();
}

// Per entry: scores [T, T] (fp32) = alpha a b^T, where a and b are [T, head_dim]
// head slices (row strides lda, ldb); scores are the pass's squares.
static void batched_scores(SimpleScratch *w, int lda, int ldb, float alpha, int n_entries, int seq_len,
                           int head_dim) {
    gemm_batched_act16(w->c, CUDA_R_32F, seq_len, w->a, false, lda, w->b, true, ldb, seq_len, seq_len, head_dim, alpha,
                      0.0f, n_entries);
}

// Per entry: c [T, head_dim] = alpha op(m) b + beta c, where m (array a) is an act16
// [T, T] square (op(m) = m^T when transpose_m), b and c head slices (row strides
// ldb, ldc; c is c_type).
static void batched_square_times_head(SimpleScratch *w, bool transpose_m, int ldb, cudaDataType c_type, int ldc,
                                      float alpha, float beta, int n_entries, int seq_len, int head_dim) {
    gemm_batched_act16(w->c, c_type, ldc, w->a, transpose_m, seq_len, w->b, false, ldb, seq_len, head_dim, seq_len,
                      alpha, beta, n_entries);
}

// One block per (query row i, entry b = (s, h0 + b % nh)): from the scaled scores
// S, p_ij = exp(S_ij - lse_i) for first_i <= j <= i and 0 elsewhere;
// lse_i = log sum_{first_i<=j<=i} exp(S_ij).
template <typename T>
__global__ static void causal_softmax_kernel(T *probs, float *lse, const float *scores, const int *positions,
                                             int seq_len, int n_heads, int h0, int nh) {
    int i = blockIdx.x, entry = blockIdx.y;
    int s = entry / nh, h = h0 + entry % nh;
    int first = attention_first_key_gpu(positions, s, seq_len, i);
    size_t row = (size_t)entry * square_stride(seq_len) + (size_t)i * seq_len;   // where row i of the square starts
    const float *score_row = scores + row;
    T *prob_row = probs + row;
    float row_max = -INFINITY;
    for (int j = first + threadIdx.x; j <= i; j += blockDim.x) row_max = fmaxf(row_max, score_row[j]);
    row_max = block_max(row_max);
    float sum = 0.0f;
    for (int j = first + threadIdx.x; j <= i; j += blockDim.x) sum += expf(score_row[j] - row_max);
    sum = block_sum(sum);
    // lse = max + log sum_j exp(S_ij - max)
    float row_lse = row_max + logf(sum);
    for (int j = threadIdx.x; j < seq_len; j += blockDim.x)
        prob_row[j] = from_float<T>(first <= j && j <= i ? expf(score_row[j] - row_lse) : 0.0f);
    if (threadIdx.x == 0) lse[((size_t)s * n_heads + h) * seq_len + i] = row_lse;
}

// One block per (query row i, entry b): recomputes p_ij from the scores and lse,
// then the softmax backward ds_ij = p_ij (dp_ij - delta_i), delta_i = dO_i . O_i
// (= sum_j p_ij dp_ij). Writes P and dS (zero outside first_i <= j <= i).
template <typename T>
__global__ static void causal_softmax_backward_kernel(T *probs, T *d_scores, const float *scores,
                                                      const float *d_probs, const float *lse, const T *d_out,
                                                      const T *out, const int *positions, int seq_len, int n_heads,
                                                      int head_dim, int h0, int nh) {
    int i = blockIdx.x, entry = blockIdx.y;
    int s = entry / nh, h = h0 + entry % nh;
    int first = attention_first_key_gpu(positions, s, seq_len, i);
    size_t token = (size_t)s * seq_len + i;
    size_t row = (size_t)entry * square_stride(seq_len) + (size_t)i * seq_len;   // where row i of the square starts
    const T *dy = d_out + token * n_heads * head_dim + (size_t)h * head_dim;
    const T *y = out + token * n_heads * head_dim + (size_t)h * head_dim;
    float delta = 0.0f;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) delta += to_float(dy[d]) * to_float(y[d]);
    delta = block_sum(delta);
    float row_lse = lse[((size_t)s * n_heads + h) * seq_len + i];
    for (int j = threadIdx.x; j < seq_len; j += blockDim.x) {
        float p = first <= j && j <= i ? expf(scores[row + j] - row_lse) : 0.0f;
        probs[row + j] = from_float<T>(p);
        d_scores[row + j] = from_float<T>(p * (d_probs[row + j] - delta));
    }
}

// d_kv[t][g * head_dim + d] = sum_{j < group} per_head[t][(g * group + j) * head_dim + d], as T.
template <typename T>
__global__ static void sum_group_heads_kernel(T *d_kv, const float *per_head, size_t n_tokens, int n_kv_heads,
                                              int group, int head_dim) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t kv_dim = (size_t)n_kv_heads * head_dim;
    if (idx >= n_tokens * kv_dim) return;
    size_t t = idx / kv_dim;
    int col = (int)(idx % kv_dim), g = col / head_dim, d = col % head_dim;
    const float *row = per_head + t * kv_dim * group;
    float sum = 0.0f;
    for (int j = 0; j < group; j++) sum += row[(size_t)(g * group + j) * head_dim + d];
    d_kv[idx] = from_float<T>(sum);
}

static void sum_group_heads(act16 *d_kv, const float *per_head, size_t n_tokens, int n_kv_heads, int group,
                            int head_dim) {
    size_t n = n_tokens * n_kv_heads * head_dim;
    unsigned blocks = (unsigned)((n + 255) / 256);
    if (gpu_act16() == ACT16_FP16)
        sum_group_heads_kernel<fp16><<<blocks, 256>>>(as_fp16(d_kv), per_head, n_tokens, n_kv_heads, group, head_dim);
    else
        sum_group_heads_kernel<bf16><<<blocks, 256>>>(as_bf16(d_kv), per_head, n_tokens, n_kv_heads, group, head_dim);
    CUDA_CHECK_LAUNCH();
}

// The scratch for passes of as many heads as scratch_bytes holds (exits when not even one).
static int simple_scratch(SimpleScratch *w, void *scratch, size_t scratch_bytes, int n_seqs, int seq_len, int n_heads,
                          int head_dim) {
    int nh = simple_heads_per_pass(scratch_bytes, n_seqs, seq_len, n_heads, head_dim);
    if (nh == 0) {
        fprintf(stderr, "attention: %zu bytes of scratch do not hold one head's scores for %d x %d tokens\n",
                scratch_bytes, n_seqs, seq_len);
        exit(1);
    }
    simple_layout(w, scratch, n_seqs, seq_len, n_heads, head_dim, nh);
    return nh;
}

static void attention_forward_simple(act16 *out, float *lse, const act16 *q, const act16 *k, const act16 *v,
                                     const int *positions, int n_seqs, int seq_len, int n_heads, int n_kv_heads,
                                     int head_dim, void *scratch, size_t scratch_bytes) {
    int q_stride = n_heads * head_dim, kv_stride = n_kv_heads * head_dim, group = n_heads / n_kv_heads;
    float scale = 1.0f / sqrtf((float)head_dim);
    SimpleScratch w;
    int heads_per_pass = simple_scratch(&w, scratch, scratch_bytes, n_seqs, seq_len, n_heads, head_dim);
    for (int h0 = 0; h0 < n_heads; h0 += heads_per_pass) {
        int nh = n_heads - h0 < heads_per_pass ? n_heads - h0 : heads_per_pass, n_entries = n_seqs * nh;
        // S = scale q_h k_g^T
        batch_pointers(&w, head_slices(q, sizeof(act16), q_stride, seq_len, head_dim, h0, 1),
                       head_slices(k, sizeof(act16), kv_stride, seq_len, head_dim, h0, group),
                       squares(w.scores, sizeof(float), seq_len, nh), nh, n_entries);
        batched_scores(&w, q_stride, kv_stride, scale, n_entries, seq_len, head_dim);
        dim3 grid(seq_len, n_entries);
        if (gpu_act16() == ACT16_FP16)
            causal_softmax_kernel<fp16><<<grid, softmax_block>>>(as_fp16(w.probs), lse, w.scores, positions, seq_len,
                                                                 n_heads, h0, nh);
        else
            causal_softmax_kernel<bf16><<<grid, softmax_block>>>(as_bf16(w.probs), lse, w.scores, positions, seq_len,
                                                                 n_heads, h0, nh);
        CUDA_CHECK_LAUNCH();
        // out_h = P v_g
        batch_pointers(&w, squares(w.probs, sizeof(act16), seq_len, nh),
                       head_slices(v, sizeof(act16), kv_stride, seq_len, head_dim, h0, group),
                       head_slices(out, sizeof(act16), q_stride, seq_len, head_dim, h0, 1), nh, n_entries);
        batched_square_times_head(&w, false, kv_stride, gpu_act16_cuda_type(), q_stride, 1.0f, 0.0f, n_entries, seq_len,
                                  head_dim);
    }
}

static void attention_backward_simple(act16 *d_q, act16 *d_k, act16 *d_v, const act16 *d_out, const act16 *out,
                                      const float *lse, const act16 *q, const act16 *k, const act16 *v,
                                      const int *positions, int n_seqs, int seq_len, int n_heads, int n_kv_heads,
                                      int head_dim, void *scratch, size_t scratch_bytes) {
    int q_stride = n_heads * head_dim, kv_stride = n_kv_heads * head_dim, group = n_heads / n_kv_heads;
    float scale = 1.0f / sqrtf((float)head_dim);
    SimpleScratch w;
    int heads_per_pass = simple_scratch(&w, scratch, scratch_bytes, n_seqs, seq_len, n_heads, head_dim);
    for (int h0 = 0; h0 < n_heads; h0 += heads_per_pass) {
        int nh = n_heads - h0 < heads_per_pass ? n_heads - h0 : heads_per_pass, n_entries = n_seqs * nh;
        BatchOperand q_h = head_slices(q, sizeof(act16), q_stride, seq_len, head_dim, h0, 1);
        BatchOperand d_out_h = head_slices(d_out, sizeof(act16), q_stride, seq_len, head_dim, h0, 1);
        BatchOperand k_g = head_slices(k, sizeof(act16), kv_stride, seq_len, head_dim, h0, group);
        BatchOperand v_g = head_slices(v, sizeof(act16), kv_stride, seq_len, head_dim, h0, group);
        // S = scale q_h k_g^T;  dP = dO_h v_g^T
        batch_pointers(&w, q_h, k_g, squares(w.scores, sizeof(float), seq_len, nh), nh, n_entries);
        batched_scores(&w, q_stride, kv_stride, scale, n_entries, seq_len, head_dim);
        batch_pointers(&w, d_out_h, v_g, squares(w.d_probs, sizeof(float), seq_len, nh), nh, n_entries);
        batched_scores(&w, q_stride, kv_stride, 1.0f, n_entries, seq_len, head_dim);
        dim3 grid(seq_len, n_entries);
        if (gpu_act16() == ACT16_FP16)
            causal_softmax_backward_kernel<fp16><<<grid, softmax_block>>>(
                as_fp16(w.probs), as_fp16(w.d_scores), w.scores, w.d_probs, lse, as_fp16(d_out), as_fp16(out),
                positions, seq_len, n_heads, head_dim, h0, nh);
        else
            causal_softmax_backward_kernel<bf16><<<grid, softmax_block>>>(
                as_bf16(w.probs), as_bf16(w.d_scores), w.scores, w.d_probs, lse, as_bf16(d_out), as_bf16(out),
                positions, seq_len, n_heads, head_dim, h0, nh);
        CUDA_CHECK_LAUNCH();
        // dq_h = scale dS k_g
        batch_pointers(&w, squares(w.d_scores, sizeof(act16), seq_len, nh), k_g,
                       head_slices(d_q, sizeof(act16), q_stride, seq_len, head_dim, h0, 1), nh, n_entries);
        batched_square_times_head(&w, false, kv_stride, gpu_act16_cuda_type(), q_stride, scale, 0.0f, n_entries, seq_len,
                                  head_dim);
        // dk_h = scale dS^T q_h  (per query head, fp32)
        batch_pointers(&w, squares(w.d_scores, sizeof(act16), seq_len, nh), q_h,
                       head_slices(w.d_k_heads, sizeof(float), q_stride, seq_len, head_dim, h0, 1), nh, n_entries);
        batched_square_times_head(&w, true, q_stride, CUDA_R_32F, q_stride, scale, 0.0f, n_entries, seq_len,
                                  head_dim);
        // dv_h = P^T dO_h  (per query head, fp32)
        batch_pointers(&w, squares(w.probs, sizeof(act16), seq_len, nh), d_out_h,
                       head_slices(w.d_v_heads, sizeof(float), q_stride, seq_len, head_dim, h0, 1), nh, n_entries);
        batched_square_times_head(&w, true, q_stride, CUDA_R_32F, q_stride, 1.0f, 0.0f, n_entries, seq_len,
                                  head_dim);
    }
    // dk_g = sum of dk_h over the group's query heads; the same for dv
    size_t n_tokens = (size_t)n_seqs * seq_len;
    sum_group_heads(d_k, w.d_k_heads, n_tokens, n_kv_heads, group, head_dim);
    sum_group_heads(d_v, w.d_v_heads, n_tokens, n_kv_heads, group, head_dim);
}

// ---- entry points ----

// Heads per pass whose scores fit score_budget bytes: at least one, at most n_heads
// (and at most simple_max_entries entries).
static int heads_within_budget(int n_seqs, int seq_len, int n_heads, size_t score_budget) {
    double fit = (double)score_budget / one_head_score_bytes(n_seqs, seq_len);
    int nh = fit < 1.0 ? 1 : fit > n_heads ? n_heads : (int)fit;
    while (nh > 1 && (long long)n_seqs * nh > simple_max_entries) nh--;
    return nh;
}

size_t attention_scratch_bytes_gpu(AttentionKernel kind, int n_seqs, int seq_len, int n_heads, int head_dim,
                                   size_t score_budget) {
    if (n_seqs <= 0 || seq_len <= 0) return 0;
    // flash kinds: delta, one float per (sequence, head, token)
    if (kind != ATTENTION_SIMPLE) return sizeof(float) * (size_t)n_seqs * n_heads * seq_len;
    SimpleScratch w;
    int nh = heads_within_budget(n_seqs, seq_len, n_heads, score_budget);
    return simple_layout(&w, NULL, n_seqs, seq_len, n_heads, head_dim, nh);
}

const char *attention_kind_name(AttentionKernel kind) {
    return kind == ATTENTION_SIMPLE ? "simple" : kind == ATTENTION_FLASH ? "flash" : "flash_tc";
}

// The compute capability from which mma.sync m16n8k16 takes bf16 and fp16 inputs.
static const int tensor_core_attention_min_capability = 80;

AttentionKernel attention_pick_kind_gpu(int n_seqs, int seq_len, int head_dim, size_t score_budget) {
    int fits = one_head_score_bytes(n_seqs, seq_len) <= (double)score_budget;
    return fits && head_dim % 8 == 0 ? ATTENTION_SIMPLE : ATTENTION_FLASH;
}

static void check_attention_shape(AttentionKernel kind, int n_heads, int n_kv_heads, int head_dim) {
    if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0) {
        fprintf(stderr, "attention: %d query heads do not split into groups of %d kv heads\n", n_heads, n_kv_heads);
        exit(1);
    }
    if (kind == ATTENTION_FLASH && head_dim > FLASH_MAX_HEAD_DIM) {
        fprintf(stderr, "attention: the flash kernel handles head_dim up to %d, not %d (use the simple kernel)\n",
                FLASH_MAX_HEAD_DIM, head_dim);
        exit(1);
    }
    if (kind == ATTENTION_FLASH_TC && !flash_attention_tc_handles(head_dim)) {
        fprintf(stderr, "attention: the tensor-core flash kernel handles head_dim 64 and 128, not %d\n", head_dim);
        exit(1);
    }
    if (kind == ATTENTION_FLASH_TC && gpu_compute_capability() < tensor_core_attention_min_capability) {
        fprintf(stderr, "attention: the tensor-core flash kernel needs compute capability %d or newer, this GPU has %d\n",
                tensor_core_attention_min_capability, gpu_compute_capability());
        exit(1);
    }
}

void attention_forward_gpu(AttentionKernel kind, act16 *out, float *lse, const act16 *q, const act16 *k, const act16 *v,
                           const int *positions, int n_seqs, int seq_len, int n_heads, int n_kv_heads, int head_dim,
                           void *scratch, size_t scratch_bytes) {
    check_attention_shape(kind, n_heads, n_kv_heads, head_dim);
    if (n_seqs <= 0 || seq_len <= 0) return;
    if (kind == ATTENTION_FLASH)
        flash_attention_forward_gpu(out, lse, q, k, v, positions, n_seqs, seq_len, n_heads, n_kv_heads, head_dim);
    else if (kind == ATTENTION_FLASH_TC)
        flash_attention_tc_forward_gpu(out, lse, q, k, v, positions, n_seqs, seq_len, n_heads, n_kv_heads, head_dim);
    else
        attention_forward_simple(out, lse, q, k, v, positions, n_seqs, seq_len, n_heads, n_kv_heads, head_dim,
                                 scratch, scratch_bytes);
}

void attention_backward_gpu(AttentionKernel kind, act16 *d_q, act16 *d_k, act16 *d_v, const act16 *d_out, const act16 *out,
                            const float *lse, const act16 *q, const act16 *k, const act16 *v, const int *positions,
                            int n_seqs, int seq_len, int n_heads, int n_kv_heads, int head_dim, void *scratch,
                            size_t scratch_bytes) {
    check_attention_shape(kind, n_heads, n_kv_heads, head_dim);
    if (n_seqs <= 0 || seq_len <= 0) return;
    if (kind != ATTENTION_SIMPLE) {
        size_t delta_bytes = attention_scratch_bytes_gpu(kind, n_seqs, seq_len, n_heads, head_dim, 0);
        if (scratch_bytes < delta_bytes) {
            fprintf(stderr, "attention: %zu bytes of scratch, the flash backward needs %zu\n", scratch_bytes,
                    delta_bytes);
            exit(1);
        }
    }
    if (kind == ATTENTION_FLASH) {
        flash_attention_backward_gpu(d_q, d_k, d_v, d_out, out, lse, q, k, v, positions, n_seqs, seq_len, n_heads,
                                     n_kv_heads, head_dim, (float *)scratch);
    } else if (kind == ATTENTION_FLASH_TC) {
        flash_attention_tc_backward_gpu(d_q, d_k, d_v, d_out, out, lse, q, k, v, positions, n_seqs, seq_len, n_heads,
                                        n_kv_heads, head_dim, (float *)scratch);
    } else {
        attention_backward_simple(d_q, d_k, d_v, d_out, out, lse, q, k, v, positions, n_seqs, seq_len, n_heads,
                                  n_kv_heads, head_dim, scratch, scratch_bytes);
    }
}
// ---- attention over a key/value cache (inference) ----------------------------------------
// One block per (query t, head h), cache_warps warps: warp w takes keys w, w + cache_warps, ...
// of 0..pos0+t and keeps an online softmax over them (its running max m, sum l and the
// weighted sum of values acc, each lane holding head dims lane, lane + 32, ...); the
// warps' partial results are then combined: with M = max_w m_w,
// out = sum_w e^(m_w - M) acc_w / sum_w e^(m_w - M) l_w.

static const int cache_warps = 4;
// head dims per lane at most
static const int cache_dims_per_lane = ATTENTION_CACHE_MAX_HEAD_DIM / 32;

template <typename T>
__global__ static void attention_cached_kernel(T *out, const T *q, const T *k_cache, const T *v_cache, int pos0,
                                               int n_heads, int n_kv_heads, int head_dim) {
    __shared__ float warp_max[cache_warps], warp_sum_exp[cache_warps];
    __shared__ float warp_acc[cache_warps][ATTENTION_CACHE_MAX_HEAD_DIM];
    int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int kv_stride = n_kv_heads * head_dim, kv_offset = h / (n_heads / n_kv_heads) * head_dim;
    const T *q_vec = q + ((size_t)t * n_heads + h) * head_dim;
    float scale = 1.0f / sqrtf((float)head_dim);
    float q_lane[cache_dims_per_lane], acc[cache_dims_per_lane];
    for (int i = 0; i < cache_dims_per_lane; i++) {
        int d = lane + 32 * i;
        q_lane[i] = d < head_dim ? to_float(q_vec[d]) : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int j = warp; j <= pos0 + t; j += cache_warps) {
        const T *k_vec = k_cache + (size_t)j * kv_stride + kv_offset, *v_vec = v_cache + (size_t)j * kv_stride + kv_offset;
        float partial = 0.0f;
        for (int i = 0; i < cache_dims_per_lane && lane + 32 * i < head_dim; i++)
            partial += q_lane[i] * to_float(k_vec[lane + 32 * i]);
        // s = q . k_j / sqrt(head_dim)
        float score = warp_sum(partial) * scale;
        // m' = max(m, s); l = l e^(m - m') + e^(s - m'); acc = acc e^(m - m') + e^(s - m') v_j
        float m_new = fmaxf(m, score), correction = expf(m - m_new), p = expf(score - m_new);
        l = l * correction + p;
        for (int i = 0; i < cache_dims_per_lane && lane + 32 * i < head_dim; i++)
            acc[i] = acc[i] * correction + p * to_float(v_vec[lane + 32 * i]);
        m = m_new;
    }
    if (lane == 0) {
        warp_max[warp] = m;
        warp_sum_exp[warp] = l;
    }
    for (int i = 0; i < cache_dims_per_lane && lane + 32 * i < head_dim; i++) warp_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    // M = max_w m_w (warp 0 always has key 0, so M is finite); a warp without keys has m_w = -inf: weight 0
    float block_m = -INFINITY;
    for (int w = 0; w < cache_warps; w++) block_m = fmaxf(block_m, warp_max[w]);
    float total = 0.0f;
    for (int w = 0; w < cache_warps; w++) total += warp_sum_exp[w] * expf(warp_max[w] - block_m);
    T *o = out + ((size_t)t * n_heads + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        // out_d = sum_w e^(m_w - M) acc_w,d / total
        float sum = 0.0f;
        for (int w = 0; w < cache_warps; w++)
            if (warp_max[w] > -INFINITY) sum += warp_acc[w][d] * expf(warp_max[w] - block_m);
        o[d] = from_float<T>(sum / total);
    }
}

void attention_cached_gpu(act16 *out, const act16 *q, const act16 *k_cache, const act16 *v_cache, int n, int pos0,
                          int n_heads, int n_kv_heads, int head_dim) {
    if (n <= 0) return;
    check_attention_shape(ATTENTION_SIMPLE, n_heads, n_kv_heads, head_dim);
    if (head_dim > ATTENTION_CACHE_MAX_HEAD_DIM) {
        fprintf(stderr, "attention: the key/value cache kernel handles head_dim up to %d, not %d\n",
                ATTENTION_CACHE_MAX_HEAD_DIM, head_dim);
        exit(1);
    }
    unsigned blocks = (unsigned)n * n_heads;
    if (gpu_act16() == ACT16_FP16)
        attention_cached_kernel<fp16><<<blocks, 32 * cache_warps>>>(as_fp16(out), as_fp16(q), as_fp16(k_cache),
                                                                    as_fp16(v_cache), pos0, n_heads, n_kv_heads,
                                                                    head_dim);
    else
        attention_cached_kernel<bf16><<<blocks, 32 * cache_warps>>>(as_bf16(out), as_bf16(q), as_bf16(k_cache),
                                                                    as_bf16(v_cache), pos0, n_heads, n_kv_heads,
                                                                    head_dim);
    CUDA_CHECK_LAUNCH();
}
#endif
