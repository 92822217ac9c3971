// adamw.cu: the optimizer side of a training step on the CPU: AdamW, the
// warmup + cosine learning-rate schedule, global-norm gradient clipping and
// gradient-accumulation loss normalisation; at the bottom, the AdamW step, the
// sum of squares and the scaling on the GPU. Each formula follows the torch /
// HF transformers function named in adamw.h, so that runs can be compared.
#include "adamw.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

// ---- AdamW -------------------------------------------------------------------

AdamWConfig adamw_default_config(void) {
    AdamWConfig c;
    c.lr = 1e-3f;
    c.beta1 = 0.9f;
    c.beta2 = 0.999f;
    c.eps = 1e-8f;
    c.weight_decay = 0.0f;
    return c;
}

int adamw_init(AdamWState *s, size_t n) {
    s->n = n;
    s->step = 0;
    s->m = (float *)calloc(n > 0 ? n : 1, sizeof(float));
    s->v = (float *)calloc(n > 0 ? n : 1, sizeof(float));
    if (!s->m || !s->v) {
        adamw_free(s);
        return -1;
    }
    return 0;
}

void adamw_free(AdamWState *s) {
    free(s->m);
    free(s->v);
    s->m = NULL;
    s->v = NULL;
    s->n = 0;
}

// The scalars of step t (the step number after incrementing), shared by the
// CPU and GPU steps. They are computed in double and then rounded once, as
// torch does with its Python-float hyperparameters.
typedef struct {
    float step_size;        // lr / (1 - b1^t)
    float decay;            // 1 - lr wd
    float one_minus_beta1;  // 1 - b1
    float one_minus_beta2;  // 1 - b2
    float denom_scale;      // sqrt(1 - b2^t)
} AdamWScalars;

static AdamWScalars adamw_scalars(const AdamWConfig *c, float lr, int64_t step) {
    double t = (double)step;
    // bias corrections: 1 - b1^t and sqrt(1 - b2^t)
    double bias_correction1 = 1.0 - pow((double)c->beta1, t);
    double bias_correction2_sqrt = sqrt(1.0 - pow((double)c->beta2, t));
    AdamWScalars k;
    k.step_size = (float)((double)lr / bias_correction1);
    k.decay = (float)(1.0 - (double)lr * (double)c->weight_decay);
    k.one_minus_beta1 = (float)(1.0 - (double)c->beta1);
    k.one_minus_beta2 = (float)(1.0 - (double)c->beta2);
    k.denom_scale = (float)bias_correction2_sqrt;
    return k;
}

void adamw_step_cpu(float *params, const float *grads, AdamWState *s, const AdamWConfig *c, float lr) {
    s->step++;
    AdamWScalars k = adamw_scalars(c, lr, s->step);

    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < s->n; i++) {
        float g = grads[i];
        // decoupled weight decay: p = p (1 - lr wd)
        float p = params[i] * k.decay;
        // m = b1 m + (1 - b1) g
        float m = c->beta1 * s->m[i] + k.one_minus_beta1 * g;
        // v = b2 v + (1 - b2) g^2
        float v = c->beta2 * s->v[i] + k.one_minus_beta2 * g * g;
        // p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        float denom = sqrtf(v) / k.denom_scale + c->eps;
        params[i] = p - k.step_size * m / denom;
        s->m[i] = m;
        s->v[i] = v;
    }
}

// ---- learning-rate schedule ------------------------------------------------

float lr_at_step(const LRSchedule *s, int64_t step) {
    double max_lr = s->max_lr;
    if (step < s->warmup_steps) {
        // lr = max_lr (step + 1) / W
        return (float)(max_lr * (double)(step + 1) / (double)s->warmup_steps);
    }
    // p = (step - W + 1) / max(1, T - W), clamped to [0, 1]
    int64_t decay_steps = s->total_steps - s->warmup_steps;
    double progress = (double)(step - s->warmup_steps + 1) / (double)(decay_steps > 1 ? decay_steps : 1);
    if (progress > 1.0) progress = 1.0;
    if (progress < 0.0) progress = 0.0;
    // lr = min + 0.5 (1 + cos(pi p)) (max_lr - min)
    double min_lr = max_lr * (double)s->min_lr_frac;
    return (float)(min_lr + 0.5 * (1.0 + cos(M_PI * progress)) * (max_lr - min_lr));
}

int64_t warmup_steps_from(double warmup, int64_t total_steps) {
    if (!(warmup >= 0.0)) return -1;
    if (warmup >= 1.0) return (int64_t)warmup;
    // W = ceil(T * fraction)
    return (int64_t)ceil((double)total_steps * warmup);
}

// ---- gradient clipping -----------------------------------------------------

double global_grad_norm(const float *grads, size_t n) {
    // norm = sqrt(sum g^2) over every element. Serial on purpose: a threaded
    // reduction adds the partial sums in whichever order the threads finish,
    // which changes the last bit from run to run and would break
    // bitwise-reproducible resumes.
    double sum_squares = 0.0;
    for (size_t i = 0; i < n; i++) sum_squares += (double)grads[i] * (double)grads[i];
    return sqrt(sum_squares);
}

float clip_scale(double norm, float max_norm) {
    if (max_norm <= 0.0f) return 1.0f;
    // scale = min(1, max_norm / (norm + 1e-6))
    double scale = (double)max_norm / (norm + 1e-6);
    return scale > 1.0 ? 1.0f : (float)scale;
}

void scale_grads_cpu(float *grads, size_t n, float scale) {
    // g = g * scale
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) grads[i] *= scale;
}

// The sum of squares on the GPU (sum_squares_gpu, below) runs in two fixed passes, so
// the order of every addition depends on n alone and the result is the same on every
// run: each of at most SUM_BLOCKS blocks sums a fixed strided share of x, then one
// block sums the block totals.
static constexpr int SUM_THREADS = 256;   // a power of two, for the tree in block_tree_sum
static constexpr int SUM_BLOCKS = 1024;

// The blocks of the first pass for n values.
static int sum_squares_blocks(size_t n) {
    size_t blocks_needed = (n + SUM_THREADS - 1) / SUM_THREADS;
    return blocks_needed < (size_t)SUM_BLOCKS ? (int)blocks_needed : SUM_BLOCKS;
}

// block totals, then the sum at [blocks]
size_t sum_squares_workspace_bytes(size_t n) { return sizeof(double) * ((size_t)sum_squares_blocks(n) + 1); }

// ---- gradient accumulation ---------------------------------------------------

StepLoss step_loss_from_micro_batches(const double *loss_sums, const int64_t *answer_tokens, int n_micro) {
    StepLoss out;
    double loss_sum = 0.0;
    out.answer_tokens = 0;
    for (int i = 0; i < n_micro; i++) {
        loss_sum += loss_sums[i];
        out.answer_tokens += answer_tokens[i];
    }
    if (out.answer_tokens == 0) {
        out.loss = 0.0;
        out.grad_scale = 0.0f;
        return out;
    }
    // loss = sum of token losses / number of answer tokens; grad_scale = 1 / that number
    out.loss = loss_sum / (double)out.answer_tokens;
    out.grad_scale = (float)(1.0 / (double)out.answer_tokens);
    return out;
}

// ---- on the GPU ----------------------------------------------------------------
#ifdef __CUDACC__

// One thread per parameter, the arithmetic of adamw_step_cpu line by line.
__global__ static void adamw_kernel(float *params, const float *grads, float *m_all, float *v_all, size_t n,
                                    AdamWScalars k, AdamWConfig c) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = grads[i];
    // decoupled weight decay: p = p (1 - lr wd)
    float p = params[i] * k.decay;
    // m = b1 m + (1 - b1) g
    float m = c.beta1 * m_all[i] + k.one_minus_beta1 * g;
    // v = b2 v + (1 - b2) g^2
    float v = c.beta2 * v_all[i] + k.one_minus_beta2 * g * g;
    // p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    float denom = sqrtf(v) / k.denom_scale + c.eps;
    params[i] = p - k.step_size * m / denom;
    m_all[i] = m;
    v_all[i] = v;
}

void adamw_step_gpu(float *params, const float *grads, float *m, float *v, size_t n, int64_t step,
                    const AdamWConfig *c, float lr) {
    if (n == 0) return;
    AdamWScalars k = adamw_scalars(c, lr, step);
    adamw_kernel<<<(unsigned)((n + 255) / 256), 256>>>(params, grads, m, v, n, k, *c);
    CUDA_CHECK_LAUNCH();
}

// The sum of value over the block's SUM_THREADS threads, in double, as a fixed tree (not ops/gpu.h's
// float block_sum); in thread 0.
__device__ static double block_tree_sum(double value) {
    __shared__ double partial[SUM_THREADS];
    partial[threadIdx.x] = value;
    __syncthreads();
    for (int half = SUM_THREADS / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    return partial[0];
}

// block_totals[b] = sum of x[i]^2 over i = b * SUM_THREADS + t + k * gridDim * SUM_THREADS
__global__ static void sum_squares_kernel(double *block_totals, const float *x, size_t n) {
    double sum = 0.0;
    size_t stride = (size_t)gridDim.x * SUM_THREADS;
    for (size_t i = (size_t)blockIdx.x * SUM_THREADS + threadIdx.x; i < n; i += stride) sum += (double)x[i] * (double)x[i];
    double total = block_tree_sum(sum);
    if (threadIdx.x == 0) block_totals[blockIdx.x] = total;
}

// *out = sum of values[0 .. count), by one block
__global__ static void sum_kernel(double *out, const double *values, int count) {
    double sum = 0.0;
    for (int i = threadIdx.x; i < count; i += SUM_THREADS) sum += values[i];
    double total = block_tree_sum(sum);
    if (threadIdx.x == 0) *out = total;
}

double sum_squares_gpu(const float *x, size_t n, void *workspace, size_t workspace_bytes) {
    if (n == 0) return 0.0;
    if (workspace_bytes < sum_squares_workspace_bytes(n)) {
        fprintf(stderr, "sum_squares_gpu: a workspace of %zu bytes, but %zu values need %zu "
                        "(sum_squares_workspace_bytes)\n", workspace_bytes, n, sum_squares_workspace_bytes(n));
        exit(1);
    }
    int blocks = sum_squares_blocks(n);
    // block totals, then the sum at [blocks]
    double *sums = (double *)workspace;
    sum_squares_kernel<<<blocks, SUM_THREADS>>>(sums, x, n);
    CUDA_CHECK_LAUNCH();
    sum_kernel<<<1, SUM_THREADS>>>(sums + blocks, sums, blocks);
    CUDA_CHECK_LAUNCH();
    double result = 0.0;
    gpu_download(&result, sums + blocks, sizeof(double));
    return result;
}

// x[i] *= scale
__global__ static void scale_kernel(float *x, size_t n, float scale) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= scale;
}

void scale_gpu(float *x, size_t n, float scale) {
    if (n == 0) return;
    scale_kernel<<<(unsigned)((n + 255) / 256), 256>>>(x, n, scale);
    CUDA_CHECK_LAUNCH();
}
#endif
