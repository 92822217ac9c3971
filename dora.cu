// dora.cu: DoRA's magnitude and direction around a LoRA adapter (dora.h): the
// per-row norm of W0 + s B A, the adapted layer's forward and backward, the
// magnitudes' initialisation and the merge, on the CPU and (at the bottom) on the GPU.
#include "dora.h"
#include "nf4.h"
#include "ops/gpu.h"
#include "ops/layers.h"
#include "ops/lora_scratch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

template <typename Real>
void dora_weight_norm_cpu(Real *norm, const Real *W, const Real *A, const Real *B, float scaling, int out_dim,
                          int in_dim, int rank) {
    #pragma omp parallel for schedule(static)
    for (int j = 0; j < out_dim; j++) {
        double sum = 0.0;
        for (int i = 0; i < in_dim; i++) {
            // v = W[j][i] + s sum_k B[j][k] A[k][i]
            double ba = 0.0;
            for (int k = 0; k < rank; k++) ba += (double)B[(size_t)j * rank + k] * A[(size_t)k * in_dim + i];
            double v = (double)W[(size_t)j * in_dim + i] + scaling * ba;
            sum += v * v;
        }
        // norm_j = sqrt(sum_i v^2)
        norm[j] = (Real)sqrt(sum);
    }
}

template <typename Real>
void dora_combine_cpu(Real *y, Real *w, const Real *u, const Real *m, const Real *norm, const Real *bias, int n,
                      int out_dim) {
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < n; t++) {
        for (int j = 0; j < out_dim; j++) {
            size_t i = (size_t)t * out_dim + j;
            Real g = m[j] / norm[j], u_i = u[i], v_i = w[i];
            // y = y + (g - 1) u + g v + b;  w = u + v
            y[i] = y[i] + (g - 1) * u_i + g * v_i + (bias ? bias[j] : (Real)0);
            w[i] = u_i + v_i;
        }
    }
}

template <typename Real>
void dora_magnitude_grad_cpu(Real *dm, const Real *dy, const Real *w, const Real *norm, int n, int out_dim) {
    #pragma omp parallel for schedule(static)
    for (int j = 0; j < out_dim; j++) {
        Real sum = 0;
        for (int t = 0; t < n; t++) sum += dy[(size_t)t * out_dim + j] * w[(size_t)t * out_dim + j];
        // dm_j += (1 / norm_j) sum_t dy_tj w_tj
        dm[j] += sum / norm[j];
    }
}

template <typename Real>
void dora_scale_dy_cpu(Real *out, const Real *dy, const Real *m, const Real *norm, float offset, int n, int out_dim) {
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < n; t++)
        for (int j = 0; j < out_dim; j++) {
            size_t i = (size_t)t * out_dim + j;
            // out = (g + offset) dy,  g = m / norm
            out[i] = (m[j] / norm[j] + offset) * dy[i];
        }
}

size_t dora_scratch_count(LoraShape s) {
    return (size_t)s.n * (s.rank + s.in_dim + 2 * (size_t)s.out_dim) + (size_t)s.n * s.in_dim;
}

template <typename Real>
void dora_forward_cpu(Real *y, Real *w, Real *xa, Real *norm, const Real *x, const float *keep, const Real *W,
                      const Real *bias, const Real *A, const Real *B, const Real *m, LoraShape s, Real *scratch) {
    size_t x_count = (size_t)s.n * s.in_dim, y_count = (size_t)s.n * s.out_dim;
    dora_weight_norm_cpu<Real>(norm, W, A, B, s.scaling, s.out_dim, s.in_dim, s.rank);
    // y = x W^T
    matmul_cpu<Real>(y, x, W, (const Real *)NULL, s.n, s.in_dim, s.out_dim);
    // u = x_d W^T: y itself without dropout
    const Real *u = y;
    if (keep) {
        Real *dropped = scratch, *dropped_product = scratch + x_count;
        lora_apply_mask_cpu(dropped, x, keep, x_count);
        matmul_cpu<Real>(dropped_product, dropped, W, (const Real *)NULL, s.n, s.in_dim, s.out_dim);
        u = dropped_product;
    }
    // w = v = s (x_d A^T) B^T
    memset(w, 0, sizeof(Real) * y_count);
    lora_forward_cpu<Real>(w, x, keep, A, B, s, xa, scratch + x_count + y_count);
    dora_combine_cpu<Real>(y, w, u, m, norm, bias, s.n, s.out_dim);
}

template <typename Real>
void dora_backward_cpu(Real *dx, Real *dA, Real *dB, Real *dm, const Real *dy, const Real *x, const float *keep,
                       const Real *W, const Real *A, const Real *B, const Real *m, const Real *norm, const Real *xa,
                       const Real *w, LoraShape s, Real *scratch) {
    size_t x_count = (size_t)s.n * s.in_dim, y_count = (size_t)s.n * s.out_dim;
    dora_magnitude_grad_cpu<Real>(dm, dy, w, norm, s.n, s.out_dim);
    // dy_g = g dy: what flows into the scaled part
    Real *dy_g = scratch, *rest = scratch + y_count;
    dora_scale_dy_cpu<Real>(dy_g, dy, m, norm, 0.0f, s.n, s.out_dim);
    if (dx && !keep) {
        // dx += (g dy) W: x W^T + (g - 1) x W^T = g x W^T
        matmul_backward_input_cpu<Real>(dx, dy_g, W, s.n, s.in_dim, s.out_dim);
    } else if (dx) {
        // dx += dy W + (((g - 1) dy) W) * keep
        matmul_backward_input_cpu<Real>(dx, dy, W, s.n, s.in_dim, s.out_dim);
        Real *dy_g_minus_1 = rest, *d_dropped = rest + y_count;
        dora_scale_dy_cpu<Real>(dy_g_minus_1, dy, m, norm, -1.0f, s.n, s.out_dim);
        memset(d_dropped, 0, sizeof(Real) * x_count);
        matmul_backward_input_cpu<Real>(d_dropped, dy_g_minus_1, W, s.n, s.in_dim, s.out_dim);
        for (size_t i = 0; i < x_count; i++) dx[i] += d_dropped[i] * keep[i];
    }
    // dA, dB, and dx through x_d A^T B^T: LoRA's backward for g dy
    lora_backward_cpu<Real>(dx, dA, dB, dy_g, x, keep, A, B, xa, s, rest);
}

template void dora_weight_norm_cpu(float *, const float *, const float *, const float *, float, int, int, int);
template void dora_combine_cpu(float *, float *, const float *, const float *, const float *, const float *, int, int);
template void dora_magnitude_grad_cpu(float *, const float *, const float *, const float *, int, int);
template void dora_scale_dy_cpu(float *, const float *, const float *, const float *, float, int, int);
template void dora_forward_cpu(float *, float *, float *, float *, const float *, const float *, const float *, const float *,
                               const float *, const float *, const float *, LoraShape, float *);
template void dora_backward_cpu(float *, float *, float *, float *, const float *, const float *, const float *, const float *,
                                const float *, const float *, const float *, const float *, const float *, const float *, LoraShape,
                                float *);

template void dora_weight_norm_cpu(double *, const double *, const double *, const double *, float, int, int, int);
template void dora_combine_cpu(double *, double *, const double *, const double *, const double *, const double *, int, int);
template void dora_magnitude_grad_cpu(double *, const double *, const double *, const double *, int, int);
template void dora_scale_dy_cpu(double *, const double *, const double *, const double *, float, int, int);
template void dora_forward_cpu(double *, double *, double *, double *, const double *, const float *, const double *, const double *,
                               const double *, const double *, const double *, LoraShape, double *);
template void dora_backward_cpu(double *, double *, double *, double *, const double *, const double *, const float *, const double *,
                                const double *, const double *, const double *, const double *, const double *, const double *, LoraShape,
                                double *);

int dora_init_magnitudes(LoraSet *set, const Model *model, int quant_nf4, int double_quant) {
    const Config *c = &model->config;
    size_t largest = 0;
    for (int t = 0; t < N_LINEARS; t++) {
        int in_dim, out_dim;
        linear_dims(c, t, &in_dim, &out_dim);
        if ((size_t)in_dim * out_dim > largest) largest = (size_t)in_dim * out_dim;
    }
    float *base = quant_nf4 ? (float *)malloc(sizeof(float) * largest) : NULL;
    if (quant_nf4 && !base) return -1;
    for (int l = 0; l < set->n_layers; l++) {
        for (int t = 0; t < N_LINEARS; t++) {
            LoraAdapter *a = &set->adapters[l * N_LINEARS + t];
            if (!a->m) continue;
            const float *W = linear_weight(&model->layers[l], t);
            if (quant_nf4) {   // W0 = dequant(NF4(W)), as the trainer's base
                NF4Tensor q;
                if (nf4_quantize(&q, W, (int64_t)a->in_dim * a->out_dim, double_quant) != 0) { free(base); return -1; }
                nf4_dequantize(&q, base);
                nf4_free(&q);
                W = base;
            }
            // m = ||W0 + s B A|| (B = 0 at the start: ||W0||)
            dora_weight_norm_cpu<float>(a->m, W, a->A, a->B, a->scaling, a->out_dim, a->in_dim, a->rank);
        }
    }
    free(base);
    return 0;
}

void dora_merge_weight(float *W, const float *A, const float *B, const float *m, float scaling, int out_dim,
                       int in_dim, int rank) {
    // W = W + s B A, row by row, then each row scaled by g = m / ||row||
    #pragma omp parallel for schedule(static)
    for (int j = 0; j < out_dim; j++) {
        float *row = W + (size_t)j * in_dim;
        double sum = 0.0;
        for (int i = 0; i < in_dim; i++) {
            float ba = 0.0f;
            for (int k = 0; k < rank; k++) ba += B[(size_t)j * rank + k] * A[(size_t)k * in_dim + i];
            row[i] += scaling * ba;
            sum += (double)row[i] * row[i];
        }
        float g = m[j] / (float)sqrt(sum);
        for (int i = 0; i < in_dim; i++) row[i] *= g;
    }
}

// ---- on the GPU ----------------------------------------------------------------
#ifdef __CUDACC__

// One block per row j: norm[j] = sqrt(sum_i (W[j][i] + s sum_k B[j][k] A[k][i])^2).
template <typename T>
__global__ static void weight_norm_kernel(float *norm, const T *W, const float *A, const float *B, float scaling,
                                          int in_dim, int rank) {
    int j = blockIdx.x;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < in_dim; i += blockDim.x) {
        float ba = 0.0f;
        for (int k = 0; k < rank; k++) ba += B[(size_t)j * rank + k] * A[(size_t)k * in_dim + i];
        float v = to_float(W[(size_t)j * in_dim + i]) + scaling * ba;
        sum += v * v;
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0) norm[j] = sqrtf(sum);
}

void dora_weight_norm_gpu(float *norm, const act16 *W, const float *A, const float *B, float scaling, int out_dim,
                          int in_dim, int rank) {
    if (out_dim == 0) return;
    if (gpu_act16() == ACT16_FP16) weight_norm_kernel<fp16><<<out_dim, 256>>>(norm, as_fp16(W), A, B, scaling, in_dim, rank);
    else weight_norm_kernel<bf16><<<out_dim, 256>>>(norm, as_bf16(W), A, B, scaling, in_dim, rank);
    CUDA_CHECK_LAUNCH();
}

// y = y + (g - 1) u + g v + b;  w = u + v   (w holds v on entry; u may be y)
template <typename T>
__global__ static void combine_kernel(T *y, T *w, const T *u, const float *m, const float *norm, const float *bias,
                                      size_t count, int out_dim) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    int j = (int)(i % out_dim);
    float g = m[j] / norm[j], u_i = to_float(u[i]), v_i = to_float(w[i]), y_i = to_float(y[i]);
    y[i] = from_float<T>(y_i + (g - 1.0f) * u_i + g * v_i + (bias ? bias[j] : 0.0f));
    w[i] = from_float<T>(u_i + v_i);
}

void dora_combine_gpu(act16 *y, act16 *w, const act16 *u, const float *m, const float *norm, const float *bias, int n,
                      int out_dim) {
    size_t count = (size_t)n * out_dim;
    if (count == 0) return;
    unsigned blocks = (unsigned)((count + 255) / 256);
    if (gpu_act16() == ACT16_FP16)
        combine_kernel<fp16><<<blocks, 256>>>(as_fp16(y), as_fp16(w), as_fp16(u), m, norm, bias, count, out_dim);
    else combine_kernel<bf16><<<blocks, 256>>>(as_bf16(y), as_bf16(w), as_bf16(u), m, norm, bias, count, out_dim);
    CUDA_CHECK_LAUNCH();
}

// One thread per row j: dm_j += (1 / norm_j) sum_t dy_tj w_tj (neighbouring threads read neighbouring columns).
template <typename T>
__global__ static void magnitude_grad_kernel(float *dm, const T *dy, const T *w, const float *norm, int n,
                                             int out_dim) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= out_dim) return;
    float sum = 0.0f;
    for (int t = 0; t < n; t++) sum += to_float(dy[(size_t)t * out_dim + j]) * to_float(w[(size_t)t * out_dim + j]);
    dm[j] += sum / norm[j];
}

void dora_magnitude_grad_gpu(float *dm, const act16 *dy, const act16 *w, const float *norm, int n, int out_dim) {
    if (out_dim == 0) return;
    unsigned blocks = (unsigned)((out_dim + 255) / 256);
    if (gpu_act16() == ACT16_FP16)
        magnitude_grad_kernel<fp16><<<blocks, 256>>>(dm, as_fp16(dy), as_fp16(w), norm, n, out_dim);
    else magnitude_grad_kernel<bf16><<<blocks, 256>>>(dm, as_bf16(dy), as_bf16(w), norm, n, out_dim);
    CUDA_CHECK_LAUNCH();
}

// out = (m / norm + offset) dy
template <typename T>
__global__ static void scale_dy_kernel(T *out, const T *dy, const float *m, const float *norm, float offset,
                                       size_t count, int out_dim) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    int j = (int)(i % out_dim);
    out[i] = from_float<T>((m[j] / norm[j] + offset) * to_float(dy[i]));
}

void dora_scale_dy_gpu(act16 *out, const act16 *dy, const float *m, const float *norm, float offset, int n,
                       int out_dim) {
    size_t count = (size_t)n * out_dim;
    if (count == 0) return;
    unsigned blocks = (unsigned)((count + 255) / 256);
    if (gpu_act16() == ACT16_FP16)
        scale_dy_kernel<fp16><<<blocks, 256>>>(as_fp16(out), as_fp16(dy), m, norm, offset, count, out_dim);
    else scale_dy_kernel<bf16><<<blocks, 256>>>(as_bf16(out), as_bf16(dy), m, norm, offset, count, out_dim);
    CUDA_CHECK_LAUNCH();
}

// Scratch layout (ops/lora_scratch.h): two act16 [n, out] regions (the forward's
// x_d W^T; the backward's g dy and (g - 1) dy), then n * in fp32 (the forward's
// x_d as act16; the backward's ((g - 1) dy) W).
static size_t out_region_bytes(LoraShape s) { return dora_scratch_out_region((size_t)s.n, s.out_dim, sizeof(act16)); }

size_t dora_scratch_bytes_gpu(LoraShape s) { return dora_scratch_size((size_t)s.n, s.in_dim, s.out_dim, sizeof(act16)); }

void dora_forward_gpu(act16 *y, act16 *w, act16 *xa, float *norm, const act16 *x, const float *keep, const act16 *W,
                      const float *bias, const act16 *A16, const act16 *B16, const float *A32, const float *B32,
                      const float *m, LoraShape s, void *lora_scratch, void *dora_scratch) {
    if (s.n == 0) return;
    dora_weight_norm_gpu(norm, W, A32, B32, s.scaling, s.out_dim, s.in_dim, s.rank);
    // y = x W^T
    matmul_gpu(y, x, W, NULL, s.n, s.in_dim, s.out_dim);
    // u = x_d W^T: y itself without dropout
    const act16 *u = y;
    if (keep) {
        act16 *dropped_product = (act16 *)dora_scratch;
        act16 *dropped = (act16 *)((char *)dora_scratch + 2 * out_region_bytes(s));
        lora_apply_mask_gpu(dropped, x, keep, (size_t)s.n * s.in_dim);
        matmul_gpu(dropped_product, dropped, W, NULL, s.n, s.in_dim, s.out_dim);
        u = dropped_product;
    }
    // w = v = s (x_d A^T) B^T
    CUDA_CHECK(cudaMemset(w, 0, sizeof(act16) * (size_t)s.n * s.out_dim));
    lora_forward_gpu(w, xa, x, keep, A16, B16, s, lora_scratch);
    dora_combine_gpu(y, w, u, m, norm, bias, s.n, s.out_dim);
}

void dora_backward_gpu(float *dx, float *dA, float *dB, float *dm, const act16 *dy, const act16 *x, const float *keep,
                       const act16 *W, const act16 *A16, const act16 *B16, const float *m, const float *norm,
                       const act16 *xa, const act16 *w, LoraShape s, void *lora_scratch, void *dora_scratch) {
    if (s.n == 0) return;
    dora_magnitude_grad_gpu(dm, dy, w, norm, s.n, s.out_dim);
    // dy_g = g dy: what flows into the scaled part
    act16 *dy_g = (act16 *)dora_scratch;
    dora_scale_dy_gpu(dy_g, dy, m, norm, 0.0f, s.n, s.out_dim);
    if (dx && !keep) {
        // dx += (g dy) W
        matmul_backward_input_gpu(dx, dy_g, W, s.n, s.in_dim, s.out_dim);
    } else if (dx) {
        // dx += dy W + (((g - 1) dy) W) * keep
        matmul_backward_input_gpu(dx, dy, W, s.n, s.in_dim, s.out_dim);
        act16 *dy_g_minus_1 = (act16 *)((char *)dora_scratch + out_region_bytes(s));
        float *d_dropped = (float *)((char *)dora_scratch + 2 * out_region_bytes(s));
        size_t x_count = (size_t)s.n * s.in_dim;
        dora_scale_dy_gpu(dy_g_minus_1, dy, m, norm, -1.0f, s.n, s.out_dim);
        CUDA_CHECK(cudaMemset(d_dropped, 0, sizeof(float) * x_count));
        matmul_backward_input_gpu(d_dropped, dy_g_minus_1, W, s.n, s.in_dim, s.out_dim);
        lora_add_masked_gpu(dx, d_dropped, keep, x_count);
    }
    // dA, dB, and dx through x_d A^T B^T: LoRA's backward for g dy
    lora_backward_gpu(dx, dA, dB, dy_g, x, keep, A16, B16, xa, s, lora_scratch);
}
#endif
