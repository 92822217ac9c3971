// ops/attention.cu: causal grouped-query attention, forward and backward. The
// CPU reference functions; the CUDA kernels sit beside them.
#include "ops/attention.h"
#include "ops/layers.h"

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

template <typename Real>
void attention_cpu(Real *out, const Real *q, const Real *k, const Real *v, int n, int pos0, int n_heads,
                   int n_kv_heads, int head_dim) {
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

// One thread per kv head g: only g's query heads write g's columns of d_k and
// d_v, so each gradient element is summed by one thread in (t, h) order, the
// same bits as a serial loop.
template <typename Real>
void attention_backward_cpu(Real *d_q, Real *d_k, Real *d_v, const Real *d_out, const Real *q, const Real *k,
                            const Real *v, int n, int n_heads, int n_kv_heads, int head_dim) {
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
}

template void attention_cpu(float *, const float *, const float *, const float *, int, int, int, int, int);
template void attention_cpu(double *, const double *, const double *, const double *, int, int, int, int, int);
template void attention_backward_cpu(float *, float *, float *, const float *, const float *, const float *,
                                     const float *, int, int, int, int);
template void attention_backward_cpu(double *, double *, double *, const double *, const double *, const double *,
                                     const double *, int, int, int, int);

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
// S into P (bf16) and lse, then out_{s,h} = P_b v_{s,g}. As many heads go in one pass as
// the caller's score budget holds (attention_scratch_bytes_gpu).

static const int softmax_block = 256;
// S and dP in fp32, P and dS in bf16: what the backward keeps per score.
static const size_t simple_bytes_per_score = 12;
// Entries of one pass at most: the softmax kernels' gridDim.y.
static const int simple_max_entries = 65535;

// Scratch bytes of one head's scores, for every sequence.
static double one_head_score_bytes(int n_seqs, int seq_len) {
    return (double)simple_bytes_per_score * n_seqs * seq_len * (double)seq_len;
}

// The simple kind's scratch, carved from one buffer: the batched GEMMs' pointer
// arrays, S, dP (fp32), P, dS (bf16) for one pass of nh heads, and (backward) d_k
// and d_v per query head, fp32 [N, n_heads * head_dim], summed over each group at the end.
typedef struct {
    void **a, **b, **c;     // [n_seqs * nh] each
    float *scores, *d_probs;
    bf16 *probs, *d_scores;
    float *d_k_heads, *d_v_heads;
} SimpleScratch;

static size_t round_up_256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Elements from one entry's [seq_len, seq_len] square to the next: rounded up to
// 64, so that every square starts 128-byte aligned (cuBLAS's batched tensor-core
// kernels read their matrices in 16-byte pieces).
HOST_DEVICE static size_t square_stride(int seq_len) { return ((size_t)seq_len * seq_len + 63) / 64 * 64; }

// The next `bytes` of the buffer at base (NULL while only measuring).
static void *carve(char *base, size_t *offset, size_t bytes) {
    void *p = base ? base + *offset : NULL;
    *offset += round_up_256(bytes);
    return p;
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
    w->probs = (bf16 *)carve((char *)base, &offset, sizeof(bf16) * squares);
    w->d_scores = (bf16 *)carve((char *)base, &offset, sizeof(bf16) * squares);
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

// Per entry, row-major: scores [T, T] = alpha a b^T, where a and b are [T, head_dim]
// head slices (row strides lda, ldb); scores are the pass's fp32 squares.
// cuBLAS sees scores^T [T, T] = b a^T: b is stored as the column-major b^T, hence op T.
static void batched_scores(SimpleScratch *w, int lda, int ldb, float alpha, int n_entries, int seq_len,
                           int head_dim) {
    float beta = 0.0f;
    CUBLAS_CHECK(cublasGemmBatchedEx(gpu_cublas(), CUBLAS_OP_T, CUBLAS_OP_N, seq_len, seq_len, head_dim, &alpha,
                                     (const void *const *)w->b, CUDA_R_16BF, ldb, (const void *const *)w->a,
                                     CUDA_R_16BF, lda, &beta, w->c, CUDA_R_32F, seq_len, n_entries,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// Per entry, row-major: c [T, head_dim] = alpha op(m) b + beta c, where m (array a)
// is a bf16 [T, T] square (op(m) = m^T when transpose_m), b and c head slices
// (row strides ldb, ldc; c is c_type). cuBLAS sees c^T = b^T op(m)^T.
static void batched_square_times_head(SimpleScratch *w, bool transpose_m, int ldb, cudaDataType c_type, int ldc,
                                      float alpha, float beta, int n_entries, int seq_len, int head_dim) {
    CUBLAS_CHECK(cublasGemmBatchedEx(gpu_cublas(), CUBLAS_OP_N, transpose_m ? CUBLAS_OP_T : CUBLAS_OP_N, head_dim,
                                     seq_len, seq_len, &alpha, (const void *const *)w->b, CUDA_R_16BF, ldb,
                                     (const void *const *)w->a, CUDA_R_16BF, seq_len, &beta, w->c, c_type, ldc,
                                     n_entries, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// One block per (query row i, entry b = (s, h0 + b % nh)): from the scaled scores
// S, p_ij = exp(S_ij - lse_i) for j <= i and 0 after; lse_i = log sum_{j<=i} exp(S_ij).
__global__ static void causal_softmax_kernel(bf16 *probs, float *lse, const float *scores, int seq_len, int n_heads,
                                             int h0, int nh) {
    int i = blockIdx.x, entry = blockIdx.y;
    int s = entry / nh, h = h0 + entry % nh;
    size_t row = (size_t)entry * square_stride(seq_len) + (size_t)i * seq_len;   // where row i of the square starts
    const float *score_row = scores + row;
    bf16 *prob_row = probs + row;
    float row_max = -INFINITY;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) row_max = fmaxf(row_max, score_row[j]);
    row_max = block_max(row_max);
    float sum = 0.0f;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) sum += expf(score_row[j] - row_max);
    sum = block_sum(sum);
    // lse = max + log sum_j exp(S_ij - max)
    float row_lse = row_max + logf(sum);
    for (int j = threadIdx.x; j < seq_len; j += blockDim.x)
        prob_row[j] = __float2bfloat16(j <= i ? expf(score_row[j] - row_lse) : 0.0f);
    if (threadIdx.x == 0) lse[((size_t)s * n_heads + h) * seq_len + i] = row_lse;
}

// One block per (query row i, entry b): recomputes p_ij from the scores and lse,
// then the softmax backward ds_ij = p_ij (dp_ij - delta_i), delta_i = dO_i . O_i
// (= sum_j p_ij dp_ij). Writes P and dS (zero for j > i).
__global__ static void causal_softmax_backward_kernel(bf16 *probs, bf16 *d_scores, const float *scores,
                                                      const float *d_probs, const float *lse, const bf16 *d_out,
                                                      const bf16 *out, int seq_len, int n_heads, int head_dim, int h0,
                                                      int nh) {
    int i = blockIdx.x, entry = blockIdx.y;
    int s = entry / nh, h = h0 + entry % nh;
    size_t token = (size_t)s * seq_len + i;
    size_t row = (size_t)entry * square_stride(seq_len) + (size_t)i * seq_len;   // where row i of the square starts
    const bf16 *dy = d_out + token * n_heads * head_dim + (size_t)h * head_dim;
    const bf16 *y = out + token * n_heads * head_dim + (size_t)h * head_dim;
    float delta = 0.0f;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) delta += __bfloat162float(dy[d]) * __bfloat162float(y[d]);
    delta = block_sum(delta);
    float row_lse = lse[((size_t)s * n_heads + h) * seq_len + i];
    for (int j = threadIdx.x; j < seq_len; j += blockDim.x) {
        float p = j <= i ? expf(scores[row + j] - row_lse) : 0.0f;
        probs[row + j] = __float2bfloat16(p);
        d_scores[row + j] = __float2bfloat16(p * (d_probs[row + j] - delta));
    }
}

// d_kv[t][g * head_dim + d] = sum_{j < group} per_head[t][(g * group + j) * head_dim + d], as bf16.
__global__ static void sum_group_heads_kernel(bf16 *d_kv, const float *per_head, size_t n_tokens, int n_kv_heads,
                                              int group, int head_dim) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t kv_dim = (size_t)n_kv_heads * head_dim;
    if (idx >= n_tokens * kv_dim) return;
    size_t t = idx / kv_dim;
    int col = (int)(idx % kv_dim), g = col / head_dim, d = col % head_dim;
    const float *row = per_head + t * kv_dim * group;
    float sum = 0.0f;
    for (int j = 0; j < group; j++) sum += row[(size_t)(g * group + j) * head_dim + d];
    d_kv[idx] = __float2bfloat16(sum);
}

static void sum_group_heads(bf16 *d_kv, const float *per_head, size_t n_tokens, int n_kv_heads, int group,
                            int head_dim) {
    size_t n = n_tokens * n_kv_heads * head_dim;
    sum_group_heads_kernel<<<(unsigned)((n + 255) / 256), 256>>>(d_kv, per_head, n_tokens, n_kv_heads, group,
                                                                 head_dim);
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

static void attention_forward_simple(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int n_seqs,
                                     int seq_len, int n_heads, int n_kv_heads, int head_dim, void *scratch,
                                     size_t scratch_bytes) {
    int q_stride = n_heads * head_dim, kv_stride = n_kv_heads * head_dim, group = n_heads / n_kv_heads;
    float scale = 1.0f / sqrtf((float)head_dim);
    SimpleScratch w;
    int heads_per_pass = simple_scratch(&w, scratch, scratch_bytes, n_seqs, seq_len, n_heads, head_dim);
    for (int h0 = 0; h0 < n_heads; h0 += heads_per_pass) {
        int nh = n_heads - h0 < heads_per_pass ? n_heads - h0 : heads_per_pass, n_entries = n_seqs * nh;
        // S = scale q_h k_g^T
        batch_pointers(&w, head_slices(q, sizeof(bf16), q_stride, seq_len, head_dim, h0, 1),
                       head_slices(k, sizeof(bf16), kv_stride, seq_len, head_dim, h0, group),
                       squares(w.scores, sizeof(float), seq_len, nh), nh, n_entries);
        batched_scores(&w, q_stride, kv_stride, scale, n_entries, seq_len, head_dim);
        causal_softmax_kernel<<<dim3(seq_len, n_entries), softmax_block>>>(w.probs, lse, w.scores, seq_len, n_heads,
                                                                          h0, nh);
        CUDA_CHECK_LAUNCH();
        // out_h = P v_g
        batch_pointers(&w, squares(w.probs, sizeof(bf16), seq_len, nh),
                       head_slices(v, sizeof(bf16), kv_stride, seq_len, head_dim, h0, group),
                       head_slices(out, sizeof(bf16), q_stride, seq_len, head_dim, h0, 1), nh, n_entries);
        batched_square_times_head(&w, false, kv_stride, CUDA_R_16BF, q_stride, 1.0f, 0.0f, n_entries, seq_len,
                                  head_dim);
    }
}

static void attention_backward_simple(bf16 *d_q, bf16 *d_k, bf16 *d_v, const bf16 *d_out, const bf16 *out,
                                      const float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int n_seqs,
                                      int seq_len, int n_heads, int n_kv_heads, int head_dim, void *scratch,
                                      size_t scratch_bytes) {
    int q_stride = n_heads * head_dim, kv_stride = n_kv_heads * head_dim, group = n_heads / n_kv_heads;
    float scale = 1.0f / sqrtf((float)head_dim);
    SimpleScratch w;
    int heads_per_pass = simple_scratch(&w, scratch, scratch_bytes, n_seqs, seq_len, n_heads, head_dim);
    for (int h0 = 0; h0 < n_heads; h0 += heads_per_pass) {
        int nh = n_heads - h0 < heads_per_pass ? n_heads - h0 : heads_per_pass, n_entries = n_seqs * nh;
        BatchOperand q_h = head_slices(q, sizeof(bf16), q_stride, seq_len, head_dim, h0, 1);
        BatchOperand d_out_h = head_slices(d_out, sizeof(bf16), q_stride, seq_len, head_dim, h0, 1);
        BatchOperand k_g = head_slices(k, sizeof(bf16), kv_stride, seq_len, head_dim, h0, group);
        BatchOperand v_g = head_slices(v, sizeof(bf16), kv_stride, seq_len, head_dim, h0, group);
        // S = scale q_h k_g^T;  dP = dO_h v_g^T
        batch_pointers(&w, q_h, k_g, squares(w.scores, sizeof(float), seq_len, nh), nh, n_entries);
        batched_scores(&w, q_stride, kv_stride, scale, n_entries, seq_len, head_dim);
        batch_pointers(&w, d_out_h, v_g, squares(w.d_probs, sizeof(float), seq_len, nh), nh, n_entries);
        batched_scores(&w, q_stride, kv_stride, 1.0f, n_entries, seq_len, head_dim);
        causal_softmax_backward_kernel<<<dim3(seq_len, n_entries), softmax_block>>>(
            w.probs, w.d_scores, w.scores, w.d_probs, lse, d_out, out, seq_len, n_heads, head_dim, h0, nh);
        CUDA_CHECK_LAUNCH();
        // dq_h = scale dS k_g
        batch_pointers(&w, squares(w.d_scores, sizeof(bf16), seq_len, nh), k_g,
                       head_slices(d_q, sizeof(bf16), q_stride, seq_len, head_dim, h0, 1), nh, n_entries);
        batched_square_times_head(&w, false, kv_stride, CUDA_R_16BF, q_stride, scale, 0.0f, n_entries, seq_len,
                                  head_dim);
        // dk_h = scale dS^T q_h  (per query head, fp32)
        batch_pointers(&w, squares(w.d_scores, sizeof(bf16), seq_len, nh), q_h,
                       head_slices(w.d_k_heads, sizeof(float), q_stride, seq_len, head_dim, h0, 1), nh, n_entries);
        batched_square_times_head(&w, true, q_stride, CUDA_R_32F, q_stride, scale, 0.0f, n_entries, seq_len,
                                  head_dim);
        // dv_h = P^T dO_h  (per query head, fp32)
        batch_pointers(&w, squares(w.probs, sizeof(bf16), seq_len, nh), d_out_h,
                       head_slices(w.d_v_heads, sizeof(float), q_stride, seq_len, head_dim, h0, 1), nh, n_entries);
        batched_square_times_head(&w, true, q_stride, CUDA_R_32F, q_stride, 1.0f, 0.0f, n_entries, seq_len,
                                  head_dim);
    }
    // dk_g = sum of dk_h over the group's query heads; the same for dv
    size_t n_tokens = (size_t)n_seqs * seq_len;
    sum_group_heads(d_k, w.d_k_heads, n_tokens, n_kv_heads, group, head_dim);
    sum_group_heads(d_v, w.d_v_heads, n_tokens, n_kv_heads, group, head_dim);
}

// ---- ATTENTION_FLASH: fused, tiled, online softmax (FlashAttention-2, no tensor cores) ----
// A block works on one tile of flash_tile query rows (or key rows) of one head
// and stages flash_tile-row tiles of q, k, v, dO in shared memory as bf16. Its
// 256 threads are 8 per tile row: thread (r, lane8) owns, of row r, the tile
// columns lane8 + 8c (c < 4) and the head_dim columns lane8 + 8c (c < 16), so a
// row's 8 threads sit in one warp and reduce over the row with shuffles.

static const int flash_tile = 32;
static const int flash_threads = 256;
static const int flash_threads_per_row = flash_threads / flash_tile;             // 8
static const int flash_tile_cols_per_thread = flash_tile / flash_threads_per_row;  // 4
static const int flash_max_head_dim = 128;
static const int flash_head_cols_per_thread = flash_max_head_dim / flash_threads_per_row;  // 16
// Row stride of a staged tile, in bf16: an odd number of 4-byte words, so the
// 8 threads of a row reading 8 different tile rows hit 8 different banks.
static const int flash_row_stride = flash_max_head_dim + 2;

// Rows row0 .. row0 + flash_tile - 1 of one head's slice (rows src + row * row_stride,
// head_dim wide) into shared memory; rows at or past n_rows read as zero.
__device__ static void load_tile(bf16 (*tile)[flash_row_stride], const bf16 *src, int row0, int n_rows, int row_stride,
                                 int head_dim) {
    for (int e = threadIdx.x; e < flash_tile * head_dim; e += blockDim.x) {
        int r = e / head_dim, d = e % head_dim;
        int row = row0 + r;
        tile[r][d] = row < n_rows ? src[(size_t)row * row_stride + d] : __float2bfloat16(0.0f);
    }
}

// a . b over head_dim, in fp32.
__device__ static float dot_rows(const bf16 *a, const bf16 *b, int head_dim) {
    float sum = 0.0f;
    for (int d = 0; d < head_dim; d++) sum += __bfloat162float(a[d]) * __bfloat162float(b[d]);
    return sum;
}

// The sum (max) of v over the 8 threads of a tile row, in each of them
// (xor offsets below 8 stay inside the aligned group of 8 lanes).
__device__ static float tile_row_sum(float v) {
    for (int offset = flash_threads_per_row / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}
__device__ static float tile_row_max(float v) {
    for (int offset = flash_threads_per_row / 2; offset > 0; offset /= 2)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// One block per (query tile, query head h, sequence s). Each query row i keeps
// a running max m_i, running sum l_i = sum_j exp(s_ij - m_i) and acc_i = sum_j
// exp(s_ij - m_i) v_j over the key tiles seen so far; out_i = acc_i / l_i and
// lse_i = m_i + log l_i at the end.
__global__ static void flash_forward_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                                            int seq_len, int n_heads, int n_kv_heads, int head_dim, float scale) {
    __shared__ bf16 q_tile[flash_tile][flash_row_stride];
    __shared__ bf16 k_tile[flash_tile][flash_row_stride];
    __shared__ bf16 v_tile[flash_tile][flash_row_stride];
    __shared__ float p_tile[flash_tile][flash_tile + 1];
    int h = blockIdx.y, s = blockIdx.z, g = h / (n_heads / n_kv_heads);
    int q_stride = n_heads * head_dim, kv_stride = n_kv_heads * head_dim;
    const bf16 *q_head = q + (size_t)s * seq_len * q_stride + (size_t)h * head_dim;
    const bf16 *k_head = k + (size_t)s * seq_len * kv_stride + (size_t)g * head_dim;
    const bf16 *v_head = v + (size_t)s * seq_len * kv_stride + (size_t)g * head_dim;
    int r = threadIdx.x / flash_threads_per_row, lane8 = threadIdx.x % flash_threads_per_row;
    int i0 = blockIdx.x * flash_tile, i = i0 + r;

    load_tile(q_tile, q_head, i0, seq_len, q_stride, head_dim);
    float running_max = -INFINITY, running_sum = 0.0f;
    float acc[flash_head_cols_per_thread];
    #pragma unroll
    for (int c = 0; c < flash_head_cols_per_thread; c++) acc[c] = 0.0f;
    // causal: no query of this tile sees a key past its last row
    int key_end = min(seq_len, i0 + flash_tile);
    for (int j0 = 0; j0 < key_end; j0 += flash_tile) {
        __syncthreads();   // everyone is done with the previous k and v tiles
        load_tile(k_tile, k_head, j0, seq_len, kv_stride, head_dim);
        load_tile(v_tile, v_head, j0, seq_len, kv_stride, head_dim);
        __syncthreads();
        // s_ij = scale q_i . k_j, or -inf for j > i (which also covers j past the sequence) and rows past it
        float tile_scores[flash_tile_cols_per_thread];
        float tile_max = -INFINITY;
        #pragma unroll
        for (int c = 0; c < flash_tile_cols_per_thread; c++) {
            int jj = lane8 + flash_threads_per_row * c, j = j0 + jj;
            tile_scores[c] = (i < seq_len && j <= i) ? scale * dot_rows(q_tile[r], k_tile[jj], head_dim) : -INFINITY;
            tile_max = fmaxf(tile_max, tile_scores[c]);
        }
        float new_max = fmaxf(running_max, tile_row_max(tile_max));
        // a row with no key yet (only rows past the sequence) keeps zeros instead of exp(-inf + inf)
        float base = new_max == -INFINITY ? 0.0f : new_max;
        // rescale what was summed against the old max: exp(m_old - m_new)
        float correction = expf(running_max - base);
        float tile_sum = 0.0f;
        #pragma unroll
        for (int c = 0; c < flash_tile_cols_per_thread; c++) {
            float p = expf(tile_scores[c] - base);
            p_tile[r][lane8 + flash_threads_per_row * c] = p;
            tile_sum += p;
        }
        running_sum = running_sum * correction + tile_row_sum(tile_sum);
        running_max = new_max;
        __syncthreads();   // p_tile is written
        // acc_i = acc_i exp(m_old - m_new) + sum_j p_ij v_j
        #pragma unroll
        for (int c = 0; c < flash_head_cols_per_thread; c++) {
            int d = lane8 + flash_threads_per_row * c;
            if (d >= head_dim) continue;
            float a = acc[c] * correction;
            for (int jj = 0; jj < flash_tile; jj++) a += p_tile[r][jj] * __bfloat162float(v_tile[jj][d]);
            acc[c] = a;
        }
    }
    if (i >= seq_len) return;
    bf16 *out_row = out + ((size_t)s * seq_len + i) * q_stride + (size_t)h * head_dim;
    #pragma unroll
    for (int c = 0; c < flash_head_cols_per_thread; c++) {
        int d = lane8 + flash_threads_per_row * c;
        // out_i = acc_i / l_i
        if (d < head_dim) out_row[d] = __float2bfloat16(acc[c] / running_sum);
    }
    // lse_i = m_i + log l_i
    if (lane8 == 0) lse[((size_t)s * n_heads + h) * seq_len + i] = running_max + logf(running_sum);
}

// delta_i = dO_i . O_i (= sum_j p_ij dp_ij) for every (row, head): one warp each.
__global__ static void attention_delta_kernel(float *delta, const bf16 *d_out, const bf16 *out, int n_seqs, int seq_len,
                                              int n_heads, int head_dim) {
    size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= (size_t)n_seqs * seq_len * n_heads) return;   // whole warps (blockDim.x a multiple of 32)
    size_t row = warp / n_heads;
    int h = (int)(warp % n_heads);
    const bf16 *dy = d_out + row * n_heads * head_dim + (size_t)h * head_dim;
    const bf16 *y = out + row * n_heads * head_dim + (size_t)h * head_dim;
    float sum = 0.0f;
    for (int d = lane; d < head_dim; d += 32) sum += __bfloat162float(dy[d]) * __bfloat162float(y[d]);
    sum = warp_sum(sum);
    size_t s = row / seq_len, t = row % seq_len;
    if (lane == 0) delta[(s * n_heads + h) * seq_len + t] = sum;
}

// One block per (key tile, kv head g, sequence s): d_k and d_v of the tile's
// keys, summed over g's query heads and over the query tiles at or after the
// key tile (earlier queries never see these keys). p_ij is recomputed from q, k
// and lse; ds_ij = p_ij (dO_i . v_j - delta_i).
__global__ static void flash_backward_kv_kernel(bf16 *d_k, bf16 *d_v, const bf16 *d_out, const float *lse,
                                                const float *delta, const bf16 *q, const bf16 *k, const bf16 *v,
                                                int seq_len, int n_heads, int n_kv_heads, int head_dim, float scale) {
    __shared__ bf16 k_tile[flash_tile][flash_row_stride];
    __shared__ bf16 v_tile[flash_tile][flash_row_stride];
    __shared__ bf16 q_tile[flash_tile][flash_row_stride];
    __shared__ bf16 dy_tile[flash_tile][flash_row_stride];
    __shared__ float p_tile[flash_tile][flash_tile + 1];    // [key][query]
    __shared__ float ds_tile[flash_tile][flash_tile + 1];   // [key][query]
    __shared__ float lse_tile[flash_tile], delta_tile[flash_tile];
    int g = blockIdx.y, s = blockIdx.z, group = n_heads / n_kv_heads;
    int q_stride = n_heads * head_dim, kv_stride = n_kv_heads * head_dim;
    const bf16 *k_head = k + (size_t)s * seq_len * kv_stride + (size_t)g * head_dim;
    const bf16 *v_head = v + (size_t)s * seq_len * kv_stride + (size_t)g * head_dim;
    int r = threadIdx.x / flash_threads_per_row, lane8 = threadIdx.x % flash_threads_per_row;
    int j0 = blockIdx.x * flash_tile, j = j0 + r;

    load_tile(k_tile, k_head, j0, seq_len, kv_stride, head_dim);
    load_tile(v_tile, v_head, j0, seq_len, kv_stride, head_dim);
    float dk_acc[flash_head_cols_per_thread], dv_acc[flash_head_cols_per_thread];
    #pragma unroll
    for (int c = 0; c < flash_head_cols_per_thread; c++) dk_acc[c] = dv_acc[c] = 0.0f;
    for (int h = g * group; h < (g + 1) * group; h++) {
        const bf16 *q_head = q + (size_t)s * seq_len * q_stride + (size_t)h * head_dim;
        const bf16 *dy_head = d_out + (size_t)s * seq_len * q_stride + (size_t)h * head_dim;
        const float *lse_head = lse + ((size_t)s * n_heads + h) * seq_len;
        const float *delta_head = delta + ((size_t)s * n_heads + h) * seq_len;
        for (int i0 = j0; i0 < seq_len; i0 += flash_tile) {
            __syncthreads();   // everyone is done with the previous q and dO tiles
            load_tile(q_tile, q_head, i0, seq_len, q_stride, head_dim);
            load_tile(dy_tile, dy_head, i0, seq_len, q_stride, head_dim);
            for (int e = threadIdx.x; e < flash_tile; e += blockDim.x) {
                lse_tile[e] = i0 + e < seq_len ? lse_head[i0 + e] : 0.0f;
                delta_tile[e] = i0 + e < seq_len ? delta_head[i0 + e] : 0.0f;
            }
            __syncthreads();
            #pragma unroll
            for (int c = 0; c < flash_tile_cols_per_thread; c++) {
                int ii = lane8 + flash_threads_per_row * c, i = i0 + ii;
                // p_ij = exp(scale q_i . k_j - lse_i), ds_ij = p_ij (dO_i . v_j - delta_i); both 0 unless j <= i < T
                float p = 0.0f, ds = 0.0f;
                if (i < seq_len && j <= i) {
                    p = expf(scale * dot_rows(q_tile[ii], k_tile[r], head_dim) - lse_tile[ii]);
                    ds = p * (dot_rows(dy_tile[ii], v_tile[r], head_dim) - delta_tile[ii]);
                }
                p_tile[r][ii] = p;
                ds_tile[r][ii] = ds;
            }
            __syncthreads();   // p_tile and ds_tile are written
            // dv_j += sum_i p_ij dO_i;  dk_j += sum_i ds_ij q_i (times scale at the end)
            #pragma unroll
            for (int c = 0; c < flash_head_cols_per_thread; c++) {
                int d = lane8 + flash_threads_per_row * c;
                if (d >= head_dim) continue;
                float dv = dv_acc[c], dk = dk_acc[c];
                for (int ii = 0; ii < flash_tile; ii++) {
                    dv += p_tile[r][ii] * __bfloat162float(dy_tile[ii][d]);
                    dk += ds_tile[r][ii] * __bfloat162float(q_tile[ii][d]);
                }
                dv_acc[c] = dv;
                dk_acc[c] = dk;
            }
        }
    }
    if (j >= seq_len) return;
    size_t offset = ((size_t)s * seq_len + j) * kv_stride + (size_t)g * head_dim;
    #pragma unroll
    for (int c = 0; c < flash_head_cols_per_thread; c++) {
        int d = lane8 + flash_threads_per_row * c;
        if (d >= head_dim) continue;
        d_k[offset + d] = __float2bfloat16(scale * dk_acc[c]);
        d_v[offset + d] = __float2bfloat16(dv_acc[c]);
    }
}

// One block per (query tile, query head h, sequence s): d_q of the tile's
// queries, summed over the key tiles at or before the query tile:
// dq_i = scale sum_j ds_ij k_j, with p and ds recomputed as in the kernel above.
__global__ static void flash_backward_q_kernel(bf16 *d_q, const bf16 *d_out, const float *lse, const float *delta,
                                               const bf16 *q, const bf16 *k, const bf16 *v, int seq_len, int n_heads,
                                               int n_kv_heads, int head_dim, float scale) {
    __shared__ bf16 q_tile[flash_tile][flash_row_stride];
    __shared__ bf16 dy_tile[flash_tile][flash_row_stride];
    __shared__ bf16 k_tile[flash_tile][flash_row_stride];
    __shared__ bf16 v_tile[flash_tile][flash_row_stride];
    __shared__ float ds_tile[flash_tile][flash_tile + 1];   // [query][key]
    int h = blockIdx.y, s = blockIdx.z, g = h / (n_heads / n_kv_heads);
    int q_stride = n_heads * head_dim, kv_stride = n_kv_heads * head_dim;
    const bf16 *q_head = q + (size_t)s * seq_len * q_stride + (size_t)h * head_dim;
    const bf16 *dy_head = d_out + (size_t)s * seq_len * q_stride + (size_t)h * head_dim;
    const bf16 *k_head = k + (size_t)s * seq_len * kv_stride + (size_t)g * head_dim;
    const bf16 *v_head = v + (size_t)s * seq_len * kv_stride + (size_t)g * head_dim;
    int r = threadIdx.x / flash_threads_per_row, lane8 = threadIdx.x % flash_threads_per_row;
    int i0 = blockIdx.x * flash_tile, i = i0 + r;
    size_t stats = ((size_t)s * n_heads + h) * seq_len + i;
    float row_lse = i < seq_len ? lse[stats] : 0.0f;
    float row_delta = i < seq_len ? delta[stats] : 0.0f;

    load_tile(q_tile, q_head, i0, seq_len, q_stride, head_dim);
    load_tile(dy_tile, dy_head, i0, seq_len, q_stride, head_dim);
    float dq_acc[flash_head_cols_per_thread];
    #pragma unroll
    for (int c = 0; c < flash_head_cols_per_thread; c++) dq_acc[c] = 0.0f;
    int key_end = min(seq_len, i0 + flash_tile);
    for (int j0 = 0; j0 < key_end; j0 += flash_tile) {
        __syncthreads();   // everyone is done with the previous k and v tiles
        load_tile(k_tile, k_head, j0, seq_len, kv_stride, head_dim);
        load_tile(v_tile, v_head, j0, seq_len, kv_stride, head_dim);
        __syncthreads();
        #pragma unroll
        for (int c = 0; c < flash_tile_cols_per_thread; c++) {
            int jj = lane8 + flash_threads_per_row * c, j = j0 + jj;
            // p_ij = exp(scale q_i . k_j - lse_i), ds_ij = p_ij (dO_i . v_j - delta_i); 0 unless j <= i < T
            float ds = 0.0f;
            if (i < seq_len && j <= i) {
                float p = expf(scale * dot_rows(q_tile[r], k_tile[jj], head_dim) - row_lse);
                ds = p * (dot_rows(dy_tile[r], v_tile[jj], head_dim) - row_delta);
            }
            ds_tile[r][jj] = ds;
        }
        __syncthreads();   // ds_tile is written
        // dq_i += sum_j ds_ij k_j (times scale at the end)
        #pragma unroll
        for (int c = 0; c < flash_head_cols_per_thread; c++) {
            int d = lane8 + flash_threads_per_row * c;
            if (d >= head_dim) continue;
            float dq = dq_acc[c];
            for (int jj = 0; jj < flash_tile; jj++) dq += ds_tile[r][jj] * __bfloat162float(k_tile[jj][d]);
            dq_acc[c] = dq;
        }
    }
    if (i >= seq_len) return;
    bf16 *dq_row = d_q + ((size_t)s * seq_len + i) * q_stride + (size_t)h * head_dim;
    #pragma unroll
    for (int c = 0; c < flash_head_cols_per_thread; c++) {
        int d = lane8 + flash_threads_per_row * c;
        if (d < head_dim) dq_row[d] = __float2bfloat16(scale * dq_acc[c]);
    }
}

static unsigned n_tiles(int seq_len) { return (unsigned)((seq_len + flash_tile - 1) / flash_tile); }

static void attention_forward_flash(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int n_seqs,
                                    int seq_len, int n_heads, int n_kv_heads, int head_dim) {
    float scale = 1.0f / sqrtf((float)head_dim);
    flash_forward_kernel<<<dim3(n_tiles(seq_len), n_heads, n_seqs), flash_threads>>>(
        out, lse, q, k, v, seq_len, n_heads, n_kv_heads, head_dim, scale);
    CUDA_CHECK_LAUNCH();
}

static void attention_backward_flash(bf16 *d_q, bf16 *d_k, bf16 *d_v, const bf16 *d_out, const bf16 *out,
                                     const float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int n_seqs,
                                     int seq_len, int n_heads, int n_kv_heads, int head_dim, float *delta) {
    float scale = 1.0f / sqrtf((float)head_dim);
    size_t n_rows = (size_t)n_seqs * n_heads * seq_len;
    int delta_block = 256;   // 8 warps, one per (row, head)
    unsigned delta_blocks = (unsigned)((n_rows * 32 + delta_block - 1) / delta_block);
    attention_delta_kernel<<<delta_blocks, delta_block>>>(delta, d_out, out, n_seqs, seq_len, n_heads, head_dim);
    CUDA_CHECK_LAUNCH();
    flash_backward_kv_kernel<<<dim3(n_tiles(seq_len), n_kv_heads, n_seqs), flash_threads>>>(
        d_k, d_v, d_out, lse, delta, q, k, v, seq_len, n_heads, n_kv_heads, head_dim, scale);
    CUDA_CHECK_LAUNCH();
    flash_backward_q_kernel<<<dim3(n_tiles(seq_len), n_heads, n_seqs), flash_threads>>>(
        d_q, d_out, lse, delta, q, k, v, seq_len, n_heads, n_kv_heads, head_dim, scale);
    CUDA_CHECK_LAUNCH();
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
    // flash: delta, one float per (sequence, head, token)
    if (kind == ATTENTION_FLASH) return sizeof(float) * (size_t)n_seqs * n_heads * seq_len;
    SimpleScratch w;
    int nh = heads_within_budget(n_seqs, seq_len, n_heads, score_budget);
    return simple_layout(&w, NULL, n_seqs, seq_len, n_heads, head_dim, nh);
}

AttentionKernel attention_pick_kind_gpu(int n_seqs, int seq_len, int head_dim, size_t score_budget) {
    int fits = one_head_score_bytes(n_seqs, seq_len) <= (double)score_budget;
    return fits && head_dim % 8 == 0 ? ATTENTION_SIMPLE : ATTENTION_FLASH;
}

static void check_attention_shape(AttentionKernel kind, int n_heads, int n_kv_heads, int head_dim) {
    if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0) {
        fprintf(stderr, "attention: %d query heads do not split into groups of %d kv heads\n", n_heads, n_kv_heads);
        exit(1);
    }
    if (kind == ATTENTION_FLASH && head_dim > flash_max_head_dim) {
        fprintf(stderr, "attention: the flash kernel handles head_dim up to %d, not %d (use the simple kernel)\n",
                flash_max_head_dim, head_dim);
        exit(1);
    }
}

void attention_forward_gpu(AttentionKernel kind, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                           int n_seqs, int seq_len, int n_heads, int n_kv_heads, int head_dim, void *scratch,
                           size_t scratch_bytes) {
    check_attention_shape(kind, n_heads, n_kv_heads, head_dim);
    if (n_seqs <= 0 || seq_len <= 0) return;
    if (kind == ATTENTION_FLASH)
        attention_forward_flash(out, lse, q, k, v, n_seqs, seq_len, n_heads, n_kv_heads, head_dim);
    else
        attention_forward_simple(out, lse, q, k, v, n_seqs, seq_len, n_heads, n_kv_heads, head_dim, scratch,
                                 scratch_bytes);
}

void attention_backward_gpu(AttentionKernel kind, bf16 *d_q, bf16 *d_k, bf16 *d_v, const bf16 *d_out, const bf16 *out,
                            const float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int n_seqs, int seq_len,
                            int n_heads, int n_kv_heads, int head_dim, void *scratch, size_t scratch_bytes) {
    check_attention_shape(kind, n_heads, n_kv_heads, head_dim);
    if (n_seqs <= 0 || seq_len <= 0) return;
    if (kind == ATTENTION_FLASH) {
        size_t delta_bytes = attention_scratch_bytes_gpu(kind, n_seqs, seq_len, n_heads, head_dim, 0);
        if (scratch_bytes < delta_bytes) {
            fprintf(stderr, "attention: %zu bytes of scratch, the flash backward needs %zu\n", scratch_bytes,
                    delta_bytes);
            exit(1);
        }
        attention_backward_flash(d_q, d_k, d_v, d_out, out, lse, q, k, v, n_seqs, seq_len, n_heads, n_kv_heads,
                                 head_dim, (float *)scratch);
    } else {
        attention_backward_simple(d_q, d_k, d_v, d_out, out, lse, q, k, v, n_seqs, seq_len, n_heads, n_kv_heads,
                                  head_dim, scratch, scratch_bytes);
    }
}
#endif
