// ops/cross_entropy.cu: the answer-only cross-entropy loss (IGNORE_TARGET labels
// are not counted) and its gradient. The CPU reference functions; the CUDA kernels
// sit beside them.
#include "ops/cross_entropy.h"
#include "formats/tensor.h"
#include "ops/gpu.h"
#include "ops/workspace.h"

#include <math.h>
#include <stdio.h>
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

// The weight of row t's loss: 1 without weights.
static double loss_weight(const float *weights, int t) { return weights ? weights[t] : 1.0; }

template <typename Real>
double cross_entropy_sum_cpu(const Real *logits, const int *targets, const float *weights, int n, int vocab,
                             int *n_counted) {
    double total = 0.0;
    int counted = 0;
    for (int t = 0; t < n; t++) {
        if (targets[t] == IGNORE_TARGET) continue;
        const Real *row = logits + (size_t)t * vocab;
        // w_t (-log p) = w_t (logsumexp(row) - row[target])
        total += loss_weight(weights, t) * (log_sum_exp(row, vocab) - row[targets[t]]);
        counted++;
    }
    *n_counted = counted;
    return total;
}

template <typename Real>
void cross_entropy_backward_cpu(Real *d_logits, const Real *logits, const int *targets, const float *weights, int n,
                                int vocab, double scale) {
    for (int t = 0; t < n; t++) {
        if (targets[t] == IGNORE_TARGET) continue;
        const Real *row = logits + (size_t)t * vocab;
        Real *d_row = d_logits + (size_t)t * vocab;
        double lse = log_sum_exp(row, vocab), row_scale = scale * loss_weight(weights, t);
        // d (w loss) / d logit_v = w (softmax_v - [v == target])
        for (int v = 0; v < vocab; v++) d_row[v] += (Real)(row_scale * exp((double)row[v] - lse));
        d_row[targets[t]] -= (Real)row_scale;
    }
}

float cross_entropy_cpu(const float *logits, const int *targets, int n, int vocab, int *n_counted) {
    double total = cross_entropy_sum_cpu(logits, targets, (const float *)NULL, n, vocab, n_counted);
    return *n_counted ? (float)(total / *n_counted) : 0.0f;
}

// ---- the counted rows --------------------------------------------------------------------

template <typename Real>
void gather_rows_cpu(Real *out, const Real *x, const int *rows, int n_rows, int dim) {
    // out[r] = x[rows[r]]
    for (int r = 0; r < n_rows; r++)
        for (int j = 0; j < dim; j++) out[(size_t)r * dim + j] = x[(size_t)rows[r] * dim + j];
}

template <typename Real>
void scatter_add_rows_cpu(Real *d_x, const Real *d_rows, const int *rows, int n_rows, int dim) {
    // d_x[rows[r]] += d_rows[r]
    for (int r = 0; r < n_rows; r++)
        for (int j = 0; j < dim; j++) d_x[(size_t)rows[r] * dim + j] += d_rows[(size_t)r * dim + j];
}

template void gather_rows_cpu(float *, const float *, const int *, int, int);
template void gather_rows_cpu(double *, const double *, const int *, int, int);
template void scatter_add_rows_cpu(float *, const float *, const int *, int, int);
template void scatter_add_rows_cpu(double *, const double *, const int *, int, int);

int lm_head_chunk_tokens_default(int vocab) {
    size_t tokens = ((size_t)64 << 20) / ((size_t)vocab * sizeof(float));
    return tokens > 0 ? (int)tokens : 1;
}

// ---- the fused LM head + loss's workspace ------------------------------------------------

// Where each of lm_head_cross_entropy_gpu's buffers lies in its workspace (byte offsets).
typedef struct {
    size_t rows, targets, weights, losses;   // int, int, fp32, fp32 [tokens]
    size_t x_counted;                        // 16-bit [tokens, dim]
    size_t d_counted;                        // fp32 [tokens, dim]
    size_t logits;                           // fp32 [chunk, vocab]
    size_t d_logits;                         // 16-bit [chunk, vocab]
    size_t bytes;                            // the whole workspace
} LmHeadLayout;

// The workspace for m counted tokens, min(chunk_tokens, m) at a time.
static LmHeadLayout lm_head_layout(size_t m, int dim, int vocab, int chunk_tokens) {
    size_t chunk = (size_t)chunk_tokens < m ? (size_t)chunk_tokens : m;
    LmHeadLayout l;
    size_t used = 0;
    l.rows = workspace_region(&used, sizeof(int) * m);
    l.targets = workspace_region(&used, sizeof(int) * m);
    l.weights = workspace_region(&used, sizeof(float) * m);
    l.losses = workspace_region(&used, sizeof(float) * m);
    l.x_counted = workspace_region(&used, ACT16_BYTES * m * dim);
    l.d_counted = workspace_region(&used, sizeof(float) * m * dim);
    l.logits = workspace_region(&used, sizeof(float) * chunk * vocab);
    l.d_logits = workspace_region(&used, ACT16_BYTES * chunk * vocab);
    l.bytes = used;
    return l;
}

size_t lm_head_cross_entropy_workspace_bytes(size_t max_tokens, int dim, int vocab, int chunk_tokens) {
    return lm_head_layout(max_tokens, dim, vocab, chunk_tokens).bytes;
}

template double cross_entropy_sum_cpu(const float *, const int *, const float *, int, int, int *);
template double cross_entropy_sum_cpu(const double *, const int *, const float *, int, int, int *);
template void cross_entropy_backward_cpu(float *, const float *, const int *, const float *, int, int, double);
template void cross_entropy_backward_cpu(double *, const double *, const int *, const float *, int, int, double);

#ifdef __CUDACC__
// ---- the CUDA kernels ------------------------------------------------------------------
// One block per row: an fp32 max and an fp32 sum of exp over the vocabulary
// (each thread strides over it, then a reduction across the block), the
// loss from them, then a second pass that writes the gradient.

static const int CE_THREADS = 512;   // a multiple of 32 (the block reductions assume it)

// The first bad target a kernel saw (0: none; 0 is a valid target, so a bad one is never 0).
static __device__ int g_bad_target;

static void reset_bad_target(void) {
    int none = 0;
    CUDA_CHECK(cudaMemcpyToSymbol(g_bad_target, &none, sizeof(int)));
}

// Waits for the kernels, then stops the program if any of them saw a bad target.
static void check_bad_target(const char *caller, int vocab) {
    int bad = 0;
    CUDA_CHECK(cudaMemcpyFromSymbol(&bad, g_bad_target, sizeof(int)));
    if (bad == 0) return;
    fprintf(stderr, "%s: a target is %d, outside [0, %d) (the vocabulary) and not %d (not counted)\n", caller,
            bad, vocab, IGNORE_TARGET);
    exit(1);
}

__device__ static void store_gradient(float *p, float value) { *p = value; }
__device__ static void store_gradient(bf16 *p, float value) { *p = __float2bfloat16(value); }
__device__ static void store_gradient(fp16 *p, float value) { *p = __float2half(value); }

// Block t handles row t. Grad is float, bf16 or fp16; d_logits may be NULL, and
// when it is float it may alias logits (each element is read and then
// written by the same thread, after the reductions' barriers). weights: NULL
// (every counted row weighs 1) or the weight of each row's loss.
template <typename Grad>
__global__ static void cross_entropy_kernel(float *losses, Grad *d_logits, const float *logits, const int *targets,
                                            const float *weights, int vocab, float scale) {
    int t = blockIdx.x;
    float weight = weights ? weights[t] : 1.0f;
    const float *row = logits + (size_t)t * vocab;
    Grad *d_row = d_logits ? d_logits + (size_t)t * vocab : NULL;
    int target = targets[t];
    bool bad = target != IGNORE_TARGET && (target < 0 || target >= vocab);
    if (bad && threadIdx.x == 0) g_bad_target = target;
    if (target == IGNORE_TARGET || bad) {   // not counted: loss 0, gradient 0 (the whole block leaves together)
        if (threadIdx.x == 0) losses[t] = 0.0f;
        if (d_row)
            for (int v = threadIdx.x; v < vocab; v += blockDim.x) store_gradient(&d_row[v], 0.0f);
        return;
    }
    float target_logit = row[target];   // read before any gradient is written (in place)
    // m = max_v logits[v]
    float local_max = -INFINITY;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) local_max = fmaxf(local_max, row[v]);
    float row_max = block_max(local_max);
    // s = sum_v exp(logits[v] - m)
    float local_sum = 0.0f;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) local_sum += expf(row[v] - row_max);
    float sum = block_sum(local_sum);
    // w (-log softmax[target]) = w (log s + m - logits[target])
    if (threadIdx.x == 0) losses[t] = weight * (logf(sum) + row_max - target_logit);
    if (!d_row) return;
    // d logits[v] = scale * w * (exp(logits[v] - m) / s - [v == target])
    float inv_sum = 1.0f / sum, row_scale = scale * weight;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        float softmax = expf(row[v] - row_max) * inv_sum;
        store_gradient(&d_row[v], row_scale * (softmax - (v == target ? 1.0f : 0.0f)));
    }
}

void cross_entropy_gpu(float *losses, float *d_logits, const float *logits, const int *targets, const float *weights,
                       int n, int vocab, float scale) {
    if (n <= 0) return;
    reset_bad_target();
    cross_entropy_kernel<float><<<n, CE_THREADS>>>(losses, d_logits, logits, targets, weights, vocab, scale);
    CUDA_CHECK_LAUNCH();
    check_bad_target("cross_entropy_gpu", vocab);
}

// ---- the counted rows ----

// One thread per element of the gathered rows.
template <typename T>
__global__ static void gather_rows_kernel(T *out, const T *x, const int *rows, int n_rows, int dim) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)n_rows * dim) return;
    size_t r = idx / dim, j = idx % dim;
    // out[r][j] = x[rows[r]][j]
    out[idx] = x[(size_t)rows[r] * dim + j];
}

// One thread per element of d_rows; rows are distinct, so no two threads add to one element.
__global__ static void scatter_add_rows_kernel(float *d_x, const float *d_rows, const int *rows, int n_rows,
                                               int dim) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)n_rows * dim) return;
    size_t r = idx / dim, j = idx % dim;
    // d_x[rows[r]][j] += d_rows[r][j]
    d_x[(size_t)rows[r] * dim + j] += d_rows[idx];
}

static const int ROWS_THREADS = 256;

void gather_rows_gpu(act16 *out, const act16 *x, const int *rows, int n_rows, int dim) {
    size_t n = (size_t)n_rows * dim;
    if (n == 0) return;
    unsigned blocks = (unsigned)((n + ROWS_THREADS - 1) / ROWS_THREADS);
    if (gpu_act16() == ACT16_FP16)
        gather_rows_kernel<fp16><<<blocks, ROWS_THREADS>>>(as_fp16(out), as_fp16(x), rows, n_rows, dim);
    else
        gather_rows_kernel<bf16><<<blocks, ROWS_THREADS>>>(as_bf16(out), as_bf16(x), rows, n_rows, dim);
    CUDA_CHECK_LAUNCH();
}

void scatter_add_rows_gpu(float *d_x, const float *d_rows, const int *rows, int n_rows, int dim) {
    size_t n = (size_t)n_rows * dim;
    if (n == 0) return;
    scatter_add_rows_kernel<<<(unsigned)((n + ROWS_THREADS - 1) / ROWS_THREADS), ROWS_THREADS>>>(d_x, d_rows, rows,
                                                                                                n_rows, dim);
    CUDA_CHECK_LAUNCH();
}

// ---- the fused LM head + loss ----------------------------------------------------------
static int g_chunk_tokens = 0;   // 0: automatic

void lm_head_set_chunk_tokens_gpu(int tokens) { g_chunk_tokens = tokens > 0 ? tokens : 0; }

int lm_head_chunk_tokens_gpu(int vocab) {
    return g_chunk_tokens > 0 ? g_chunk_tokens : lm_head_chunk_tokens_default(vocab);
}

// logits[rows, vocab] (fp32) = x[rows, dim] W^T
static void lm_head_forward(float *logits, const act16 *x, const act16 *weight, int rows, int dim, int vocab) {
    gemm_act16(logits, CUDA_R_32F, x, false, weight, true, rows, vocab, dim, 1.0f, 0.0f);
}

// d_x[rows, dim] (fp32) += d_logits[rows, vocab] W
static void lm_head_backward(float *d_x, const act16 *d_logits, const act16 *weight, int rows, int dim, int vocab) {
    gemm_act16(d_x, CUDA_R_32F, d_logits, false, weight, false, rows, dim, vocab, 1.0f, 1.0f);
}

// The LM head and the loss on the m counted rows only (host_rows, host_targets,
// host_weights or NULL): they are gathered into [m, dim], run through in chunks,
// and their gradient is scattered back into d_x. Every buffer is a region of
// workspace, laid out by l.
static double counted_lm_head_cross_entropy(float *d_x, const act16 *x, const act16 *lm_head, const int *host_rows,
                                            const int *host_targets, const float *host_weights, int m, int dim,
                                            int vocab, double grad_scale, char *workspace, const LmHeadLayout *l) {
    int *rows = (int *)(workspace + l->rows);
    int *targets = (int *)(workspace + l->targets);
    float *weights = host_weights ? (float *)(workspace + l->weights) : NULL;
    float *losses = (float *)(workspace + l->losses);
    act16 *x_counted = (act16 *)(workspace + l->x_counted);
    float *d_counted = (float *)(workspace + l->d_counted);
    float *logits = (float *)(workspace + l->logits);
    act16 *d_logits = d_x ? (act16 *)(workspace + l->d_logits) : NULL;
    gpu_upload(rows, host_rows, sizeof(int) * m);
    gpu_upload(targets, host_targets, sizeof(int) * m);
    if (weights) gpu_upload(weights, host_weights, sizeof(float) * m);
    gather_rows_gpu(x_counted, x, rows, m, dim);
    if (d_x) CUDA_CHECK(cudaMemset(d_counted, 0, sizeof(float) * m * dim));
    int chunk = lm_head_chunk_tokens_gpu(vocab);
    reset_bad_target();
    for (int first = 0; first < m; first += chunk) {
        int rows_here = m - first < chunk ? m - first : chunk;
        lm_head_forward(logits, x_counted + (size_t)first * dim, lm_head, rows_here, dim, vocab);
        const float *row_weights = weights ? weights + first : NULL;
        if (gpu_act16() == ACT16_FP16)
            cross_entropy_kernel<fp16><<<rows_here, CE_THREADS>>>(losses + first, as_fp16(d_logits), logits,
                                                                  targets + first, row_weights, vocab, (float)grad_scale);
        else
            cross_entropy_kernel<bf16><<<rows_here, CE_THREADS>>>(losses + first, as_bf16(d_logits), logits,
                                                                  targets + first, row_weights, vocab, (float)grad_scale);
        CUDA_CHECK_LAUNCH();
        if (d_x) lm_head_backward(d_counted + (size_t)first * dim, d_logits, lm_head, rows_here, dim, vocab);
    }
    check_bad_target("lm_head_cross_entropy_gpu", vocab);
    if (d_x) scatter_add_rows_gpu(d_x, d_counted, rows, m, dim);

    // the sum of the per-token losses, in double, in token order
    float *host_losses = (float *)cpu_malloc(sizeof(float) * m, "per-token losses");
    gpu_download(host_losses, losses, sizeof(float) * m);
    double total = 0.0;
    for (int r = 0; r < m; r++) total += host_losses[r];
    free(host_losses);
    return total;
}

double lm_head_cross_entropy_gpu(float *d_x, const act16 *x, const act16 *lm_head, const int *targets,
                                 const float *weights, int n, int dim, int vocab, double grad_scale, int *n_counted,
                                 void *workspace, size_t workspace_bytes) {
    *n_counted = 0;
    if (n <= 0) return 0.0;
    // the counted tokens (target not IGNORE_TARGET): their rows of x, targets and weights, on the host
    int *host_targets = (int *)cpu_malloc(sizeof(int) * n, "targets");
    int *host_rows = (int *)cpu_malloc(sizeof(int) * n, "counted rows");
    float *host_weights = weights ? (float *)cpu_malloc(sizeof(float) * n, "loss weights") : NULL;
    gpu_download(host_targets, targets, sizeof(int) * n);
    if (weights) gpu_download(host_weights, weights, sizeof(float) * n);
    int m = 0;
    for (int t = 0; t < n; t++) {
        if (host_targets[t] == IGNORE_TARGET) continue;
        host_rows[m] = t;
        host_targets[m] = host_targets[t];   // compacted in place: m <= t
        if (host_weights) host_weights[m] = host_weights[t];
        m++;
    }
    *n_counted = m;
    LmHeadLayout layout = lm_head_layout(m, dim, vocab, lm_head_chunk_tokens_gpu(vocab));
    if (layout.bytes > workspace_bytes) {
        fprintf(stderr, "lm_head_cross_entropy_gpu: a workspace of %zu bytes, but %d counted tokens need %zu "
                        "(lm_head_cross_entropy_workspace_bytes)\n", workspace_bytes, m, layout.bytes);
        exit(1);
    }
    double total = 0.0;
    if (m > 0) total = counted_lm_head_cross_entropy(d_x, x, lm_head, host_rows, host_targets, host_weights, m, dim,
                                                     vocab, grad_scale, (char *)workspace, &layout);
    free(host_weights);
    free(host_targets);
    free(host_rows);
    return total;
}
#endif
