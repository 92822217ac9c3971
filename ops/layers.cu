// ops/layers.cu: the transformer's operations on the CPU, forward and backward,
// written to be read: one loop nest per formula, OpenMP across independent
// rows or elements; only the matmuls, where the time goes, are blocked for
// registers and cache (beside matmul_naive_cpu, the plain definition they are
// tested against). Instantiated for float (the model) and double (the
// gradient tests).
// The CUDA kernels follow at the bottom, each mirroring its CPU function.
#include "ops/layers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>

// ---- matmul ------------------------------------------------------------------

// The definition, one output at a time.
template <typename Real>
void matmul_naive_cpu(Real *out, const Real *in, const Real *weight, const Real *bias, int n, int in_dim, int out_dim) {
    for (int t = 0; t < n; t++)
        for (int o = 0; o < out_dim; o++) {
            // out[t][o] = b[o] + sum_i in[t][i] W[o][i]
            Real sum = bias ? bias[o] : 0;
            for (int i = 0; i < in_dim; i++) sum += in[(size_t)t * in_dim + i] * weight[(size_t)o * in_dim + i];
            out[(size_t)t * out_dim + o] = sum;
        }
}

// Done one multiply-add per loaded value, a matmul waits on loads, not on
// arithmetic. The kernels below keep a small block of sums in SIMD registers,
// so that every loaded vector feeds several multiply-adds, and give each thread
// tiles that stay in cache. Blocks running past the last row repeat that row
// and drop its results. Every sum is added up by one thread in a fixed order:
// the same bits for any number of threads.
// The two block kernels (matmul_block, product_block) skip AddressSanitizer's
// checks in the test build (no_sanitize_address; nothing changes elsewhere):
// checked, their SIMD loads ran about 20x slower and the tests that run the
// default model took minutes each. Their callers stay checked, and the blocked
// products are tested against matmul_naive_cpu, which is checked, on awkward shapes.

// out[t][o] for TOKENS tokens from t0 and ROWS rows of W from o0: each step loads
// TOKENS input and ROWS weight vectors of LANES values and multiply-adds each pair
// into its own LANES partial sums, which are added up at the end.
static const int MATMUL_TOKENS = 4, MATMUL_ROWS = 3;
template <typename Real>
__attribute__((no_sanitize_address))
static void matmul_block(Real *out, const Real *in, const Real *weight, const Real *bias, int in_dim, int out_dim,
                         int t0, int o0) {
    const int TOKENS = MATMUL_TOKENS, ROWS = MATMUL_ROWS, LANES = 32 / sizeof(Real);
    const Real *x[TOKENS], *w[ROWS];
    for (int a = 0; a < TOKENS; a++) x[a] = in + (size_t)(t0 + a) * in_dim;
    for (int b = 0; b < ROWS; b++) w[b] = weight + (size_t)std::min(o0 + b, out_dim - 1) * in_dim;
    Real partial[TOKENS][ROWS][LANES] = {};
    for (int i = 0; i + LANES <= in_dim; i += LANES)
        for (int a = 0; a < TOKENS; a++)
            for (int b = 0; b < ROWS; b++) {
                // partial[a][b][l] += in[t0 + a][i + l] * W[o0 + b][i + l]
                #pragma omp simd
                for (int l = 0; l < LANES; l++) partial[a][b][l] += x[a][i + l] * w[b][i + l];
            }
    for (int a = 0; a < TOKENS; a++)
        for (int b = 0; b < ROWS && o0 + b < out_dim; b++) {
            // out[t0 + a][o0 + b] = bias + sum_l partial[a][b][l] + the last in_dim % LANES terms
            Real sum = bias ? bias[o0 + b] : 0;
            for (int l = 0; l < LANES; l++) sum += partial[a][b][l];
            for (int i = in_dim / LANES * LANES; i < in_dim; i++) sum += x[a][i] * w[b][i];
            out[(size_t)(t0 + a) * out_dim + o0 + b] = sum;
        }
}

template <typename Real>
void matmul_cpu(Real *out, const Real *in, const Real *weight, const Real *bias, int n, int in_dim, int out_dim) {
    // out[t][o] = sum_i in[t][i] * W[o][i] + b[o], in blocks of 4 tokens by 3 rows of W;
    // the tokens left over (in generation, the only one) as plain dot products.
    // A thread takes a tile of TILE_ROWS rows of W (kept in cache) by TILE_TOKENS tokens.
    const int TILE_ROWS = 16 * MATMUL_ROWS, TILE_TOKENS = 16 * MATMUL_TOKENS;
    #pragma omp parallel for collapse(2) schedule(dynamic)
    for (int o_tile = 0; o_tile < out_dim; o_tile += TILE_ROWS)
        for (int t_tile = 0; t_tile < n; t_tile += TILE_TOKENS) {
            int o_end = std::min(o_tile + TILE_ROWS, out_dim), t_end = std::min(t_tile + TILE_TOKENS, n);
            int t_blocks_end = t_end - (t_end - t_tile) % MATMUL_TOKENS;
            for (int t0 = t_tile; t0 < t_blocks_end; t0 += MATMUL_TOKENS)
                for (int o0 = o_tile; o0 < o_end; o0 += MATMUL_ROWS)
                    matmul_block(out, in, weight, bias, in_dim, out_dim, t0, o0);
            for (int t = t_blocks_end; t < t_end; t++)
                for (int o = o_tile; o < o_end; o++) {
                    Real sum = dot(in + (size_t)t * in_dim, weight + (size_t)o * in_dim, in_dim);
                    out[(size_t)t * out_dim + o] = sum + (bias ? bias[o] : 0);
                }
        }
}

// C[r][c] += sum_k A(r, k) * B[k][c] with B [depth, cols] and C [rows, cols] row-major,
// and A(r, k) = A[r * a_row_stride + k * a_depth_stride]: both backward products.
template <typename Real>
struct Product {
    Real *C;
    const Real *A;
    size_t a_row_stride, a_depth_stride;
    const Real *B;
    int rows, cols, depth;
};

// C's block of ROWS rows from r0 and COLS columns from c0 += its terms for k in
// [k0, k1): each step broadcasts one A value per row, loads COLS values of B's row
// k and multiply-adds them into the row's COLS sums.
static const int PRODUCT_ROWS = 6;
template <typename Real>
__attribute__((no_sanitize_address))
static void product_block(const Product<Real> &p, int r0, int c0, int k0, int k1) {
    const int ROWS = PRODUCT_ROWS, COLS = 64 / sizeof(Real);
    Real sum[ROWS][COLS] = {};
    for (int k = k0; k < k1; k++)
        for (int a = 0; a < ROWS; a++) {
            Real scale = p.A[std::min(r0 + a, p.rows - 1) * p.a_row_stride + k * p.a_depth_stride];
            const Real *b = p.B + (size_t)k * p.cols + c0;
            // sum[a][s] += A(r0 + a, k) * B[k][c0 + s]
            #pragma omp simd
            for (int s = 0; s < COLS; s++) sum[a][s] += scale * b[s];
        }
    for (int a = 0; a < ROWS && r0 + a < p.rows; a++)
        for (int s = 0; s < COLS; s++) p.C[(size_t)(r0 + a) * p.cols + c0 + s] += sum[a][s];
}

// A thread takes a tile of C (TILE_ROWS x TILE_COLS) and goes through depth DEPTH at
// a time, so that the pieces of A and B it reuses stay in cache. The columns after
// the last whole block, if any, go one at a time.
template <typename Real>
static void add_product(const Product<Real> &p) {
    const int COLS = 64 / sizeof(Real), TILE_ROWS = 16 * PRODUCT_ROWS, TILE_COLS = 8 * COLS, DEPTH = 256;
    int block_cols = p.cols / COLS * COLS;
    #pragma omp parallel for collapse(2) schedule(dynamic)
    for (int r_tile = 0; r_tile < p.rows; r_tile += TILE_ROWS)
        for (int c_tile = 0; c_tile < block_cols; c_tile += TILE_COLS)
            for (int k0 = 0; k0 < p.depth; k0 += DEPTH)
                for (int c0 = c_tile; c0 < std::min(c_tile + TILE_COLS, block_cols); c0 += COLS)
                    for (int r0 = r_tile; r0 < std::min(r_tile + TILE_ROWS, p.rows); r0 += PRODUCT_ROWS)
                        product_block(p, r0, c0, k0, std::min(k0 + DEPTH, p.depth));
    #pragma omp parallel for if (block_cols < p.cols)
    for (int r = 0; r < p.rows; r++)
        for (int c = block_cols; c < p.cols; c++) {
            Real sum = 0;
            for (int k = 0; k < p.depth; k++)
                sum += p.A[r * p.a_row_stride + k * p.a_depth_stride] * p.B[(size_t)k * p.cols + c];
            p.C[(size_t)r * p.cols + c] += sum;
        }
}

template <typename Real>
void matmul_backward_input_cpu(Real *d_in, const Real *d_out, const Real *weight, int n, int in_dim, int out_dim) {
    // d_in[t][i] += sum_o d_out[t][o] * W[o][i]
    add_product(Product<Real>{d_in, d_out, (size_t)out_dim, 1, weight, n, in_dim, out_dim});
}

template <typename Real>
void matmul_backward_weight_cpu(Real *d_weight, const Real *d_out, const Real *in, int n, int in_dim, int out_dim) {
    // d_W[o][i] += sum_t d_out[t][o] * in[t][i]
    add_product(Product<Real>{d_weight, d_out, 1, (size_t)out_dim, in, out_dim, in_dim, n});
}

// ---- RMSNorm -------------------------------------------------------------------

template <typename Real>
static Real rms_reciprocal(const Real *x, int dim, float eps) {
    // rstd = 1 / sqrt(mean(x^2) + eps)
    Real sum_sq = 0;
    for (int i = 0; i < dim; i++) sum_sq += x[i] * x[i];
    return 1 / sqrt(sum_sq / dim + (Real)eps);
}

template <typename Real>
void rmsnorm_cpu(Real *out, const Real *x, const Real *weight, int n, int dim, float eps) {
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < n; t++) {
        const Real *row = x + (size_t)t * dim;
        Real *y = out + (size_t)t * dim;
        Real rstd = rms_reciprocal(row, dim, eps);
        // y = x * rstd * w
        for (int i = 0; i < dim; i++) y[i] = row[i] * rstd * weight[i];
    }
}

template <typename Real>
void rmsnorm_backward_cpu(Real *d_x, const Real *d_out, const Real *x, const Real *weight, int n, int dim, float eps) {
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < n; t++) {
        const Real *row = x + (size_t)t * dim, *dy = d_out + (size_t)t * dim;
        Real *dx = d_x + (size_t)t * dim;
        Real rstd = rms_reciprocal(row, dim, eps);
        // dy_w_x = sum_i dy_i w_i x_i
        Real dy_w_x = 0;
        for (int i = 0; i < dim; i++) dy_w_x += dy[i] * weight[i] * row[i];
        // dx_j += rstd w_j dy_j - x_j rstd^3 dy_w_x / dim
        for (int j = 0; j < dim; j++) dx[j] += rstd * weight[j] * dy[j] - row[j] * rstd * rstd * rstd * dy_w_x / dim;
    }
}

// ---- RoPE -----------------------------------------------------------------------

void rope_inv_freq(const Config *c, float *inv_freq) {
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        // inv_freq = theta^(-2i/d)
        float freq = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim);
        if (c->rope_factor > 0.0f) {
            // Llama-3: long wavelengths slowed by factor, short ones kept, smooth in between
            float wavelength = 2.0f * (float)M_PI / freq;
            float low_wavelength = (float)c->rope_original_max_pos / c->rope_low_freq_factor;
            float high_wavelength = (float)c->rope_original_max_pos / c->rope_high_freq_factor;
            if (wavelength > low_wavelength) {
                freq = freq / c->rope_factor;
            } else if (wavelength >= high_wavelength) {
                // smooth = (original_max_pos / wavelength - low) / (high - low), 0..1 across the band
                float smooth = ((float)c->rope_original_max_pos / wavelength - c->rope_low_freq_factor) /
                               (c->rope_high_freq_factor - c->rope_low_freq_factor);
                freq = (1.0f - smooth) * freq / c->rope_factor + smooth * freq;
            }
        }
        inv_freq[i] = freq;
    }
}

// Rotates every (i, i + half) pair of every head by direction * pos * inv_freq[i]
// (the angle is the same for every head of a token: computed once).
template <typename Real>
static void rotate_pairs(Real *x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim,
                         float direction) {
    int half = head_dim / 2;
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < n; t++) {
        for (int i = 0; i < half; i++) {
            // (a, b) -> (a cos - b sin, b cos + a sin), angle = pos * inv_freq[i]
            float angle = (float)positions[t] * inv_freq[i];
            Real cos_a = cosf(angle), sin_a = direction * sinf(angle);
            for (int h = 0; h < n_heads; h++) {
                Real *v = x + ((size_t)t * n_heads + h) * head_dim;
                Real a = v[i], b = v[i + half];
                v[i] = a * cos_a - b * sin_a;
                v[i + half] = b * cos_a + a * sin_a;
            }
        }
    }
}

template <typename Real>
void rope_cpu(Real *x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim) {
    rotate_pairs(x, positions, inv_freq, n, n_heads, head_dim, 1.0f);
}

template <typename Real>
void rope_backward_cpu(Real *d_x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim) {
    rotate_pairs(d_x, positions, inv_freq, n, n_heads, head_dim, -1.0f);
}

// ---- SwiGLU -------------------------------------------------------------------------

template <typename Real>
void swiglu_cpu(Real *out, const Real *gate, const Real *up, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        // silu(g) * u
        Real g = gate[i];
        out[i] = g / (1 + exp(-g)) * up[i];
    }
}

template <typename Real>
void swiglu_backward_cpu(Real *d_gate, Real *d_up, const Real *d_out, const Real *gate, const Real *up, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        Real g = gate[i];
        Real sigmoid = 1 / (1 + exp(-g));
        // d silu(g)/dg = sigmoid(g) (1 + g (1 - sigmoid(g)))
        Real d_silu = sigmoid * (1 + g * (1 - sigmoid));
        // d_gate += d_out up silu'(g);  d_up += d_out silu(g), silu(g) = g sigmoid(g)
        d_gate[i] += d_out[i] * up[i] * d_silu;
        d_up[i] += d_out[i] * g * sigmoid;
    }
}

template <typename Real>
void residual_add_cpu(Real *x, const Real *y, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

// ---- the two instantiations -------------------------------------------------------------

#define INSTANTIATE_LAYERS(Real)                                                                                  \
    template void matmul_naive_cpu(Real *, const Real *, const Real *, const Real *, int, int, int);             \
    template void matmul_cpu(Real *, const Real *, const Real *, const Real *, int, int, int);                   \
    template void matmul_backward_input_cpu(Real *, const Real *, const Real *, int, int, int);                  \
    template void matmul_backward_weight_cpu(Real *, const Real *, const Real *, int, int, int);                 \
    template void rmsnorm_cpu(Real *, const Real *, const Real *, int, int, float);                              \
    template void rmsnorm_backward_cpu(Real *, const Real *, const Real *, const Real *, int, int, float);        \
    template void rope_cpu(Real *, const int *, const float *, int, int, int);                                   \
    template void rope_backward_cpu(Real *, const int *, const float *, int, int, int);                          \
    template void swiglu_cpu(Real *, const Real *, const Real *, size_t);                                        \
    template void swiglu_backward_cpu(Real *, Real *, const Real *, const Real *, const Real *, size_t);         \
    template void residual_add_cpu(Real *, const Real *, size_t);

INSTANTIATE_LAYERS(float)
INSTANTIATE_LAYERS(double)

#ifdef __CUDACC__
// ---- on the GPU -------------------------------------------------------------------------

// Threads per block for the elementwise kernels and for the one-block-per-row kernels.
static const int elementwise_block = 256;
static const int row_block = 256;

static unsigned blocks_for(size_t n_threads) { return (unsigned)((n_threads + elementwise_block - 1) / elementwise_block); }

// ---- embedding ----

template <typename T>
__global__ static void embedding_kernel(float *out, const T *table, const int *tokens, int n, int dim) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)n * dim) return;
    size_t t = idx / dim, j = idx % dim;
    // out[t][j] = table[tokens[t]][j]
    out[idx] = to_float(table[(size_t)tokens[t] * dim + j]);
}

void embedding_gpu(float *out, const act16 *table, const int *tokens, int n, int dim) {
    if (n <= 0 || dim <= 0) return;
    unsigned blocks = blocks_for((size_t)n * dim);
    if (gpu_act16() == ACT16_FP16)
        embedding_kernel<fp16><<<blocks, elementwise_block>>>(out, as_fp16(table), tokens, n, dim);
    else
        embedding_kernel<bf16><<<blocks, elementwise_block>>>(out, as_bf16(table), tokens, n, dim);
    CUDA_CHECK_LAUNCH();
}

// ---- RMSNorm: one block per row ----

// rstd = 1 / sqrt(mean(x^2) + eps) of one row, in every thread of the block.
__device__ static float row_rms_reciprocal(const float *row, int dim, float eps) {
    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) sum_sq += row[i] * row[i];
    sum_sq = block_sum(sum_sq);
    return 1.0f / sqrtf(sum_sq / dim + eps);
}

template <typename T>
__global__ static void rmsnorm_kernel(T *out, const float *x, const float *weight, int dim, float eps) {
    const float *row = x + (size_t)blockIdx.x * dim;
    T *y = out + (size_t)blockIdx.x * dim;
    float rstd = row_rms_reciprocal(row, dim, eps);
    // y = x * rstd * w
    for (int i = threadIdx.x; i < dim; i += blockDim.x) y[i] = from_float<T>(row[i] * rstd * weight[i]);
}

__global__ static void rmsnorm_backward_kernel(float *d_x, const float *d_out, const float *x, const float *weight,
                                               int dim, float eps) {
    size_t offset = (size_t)blockIdx.x * dim;
    const float *row = x + offset, *dy = d_out + offset;
    float *dx = d_x + offset;
    float rstd = row_rms_reciprocal(row, dim, eps);
    // dot = sum_i dy_i w_i x_i
    float dot = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dot += dy[i] * weight[i] * row[i];
    dot = block_sum(dot);
    // dx_j += rstd w_j dy_j - x_j rstd^3 dot / dim
    for (int j = threadIdx.x; j < dim; j += blockDim.x)
        dx[j] += rstd * weight[j] * dy[j] - row[j] * rstd * rstd * rstd * dot / dim;
}

void rmsnorm_gpu(act16 *out, const float *x, const float *weight, int n, int dim, float eps) {
    if (n <= 0 || dim <= 0) return;
    if (gpu_act16() == ACT16_FP16) rmsnorm_kernel<fp16><<<n, row_block>>>(as_fp16(out), x, weight, dim, eps);
    else rmsnorm_kernel<bf16><<<n, row_block>>>(as_bf16(out), x, weight, dim, eps);
    CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward_gpu(float *d_x, const float *d_out, const float *x, const float *weight, int n, int dim,
                          float eps) {
    if (n <= 0 || dim <= 0) return;
    rmsnorm_backward_kernel<<<n, row_block>>>(d_x, d_out, x, weight, dim, eps);
    CUDA_CHECK_LAUNCH();
}

// ---- RoPE: one thread per (token, head, i) pair ----

// Rotates the pair (i, i + half) of one head by direction * pos * inv_freq[i], as rotate_pairs.
template <typename T>
__global__ static void rope_kernel(T *x, const int *positions, const float *inv_freq, int n, int n_heads,
                                   int head_dim, float direction) {
    int half = head_dim / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)n * n_heads * half) return;
    int i = (int)(idx % half);
    size_t token_head = idx / half;   // = t * n_heads + h
    int t = (int)(token_head / n_heads);
    T *v = x + token_head * head_dim;
    // (a, b) -> (a cos - b sin, b cos + a sin), angle = pos * inv_freq[i]
    float angle = (float)positions[t] * inv_freq[i];
    float cos_a = cosf(angle), sin_a = direction * sinf(angle);
    float a = to_float(v[i]), b = to_float(v[i + half]);
    v[i] = from_float<T>(a * cos_a - b * sin_a);
    v[i + half] = from_float<T>(b * cos_a + a * sin_a);
}

static void rope_launch(act16 *x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim,
                        float direction) {
    size_t pairs = (size_t)n * n_heads * (head_dim / 2);
    if (n <= 0 || pairs == 0) return;
    if (gpu_act16() == ACT16_FP16)
        rope_kernel<fp16><<<blocks_for(pairs), elementwise_block>>>(as_fp16(x), positions, inv_freq, n, n_heads,
                                                                    head_dim, direction);
    else
        rope_kernel<bf16><<<blocks_for(pairs), elementwise_block>>>(as_bf16(x), positions, inv_freq, n, n_heads,
                                                                    head_dim, direction);
    CUDA_CHECK_LAUNCH();
}

void rope_gpu(act16 *x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim) {
    rope_launch(x, positions, inv_freq, n, n_heads, head_dim, 1.0f);
}

void rope_backward_gpu(act16 *d_x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim) {
    rope_launch(d_x, positions, inv_freq, n, n_heads, head_dim, -1.0f);
}

// ---- SwiGLU and the residual add: elementwise ----

template <typename T>
__global__ static void swiglu_kernel(T *out, const T *gate, const T *up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    // silu(g) * u
    float g = to_float(gate[i]);
    out[i] = from_float<T>(g / (1.0f + expf(-g)) * to_float(up[i]));
}

template <typename T>
__global__ static void swiglu_backward_kernel(T *d_gate, T *d_up, const T *d_out, const T *gate, const T *up,
                                              size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = to_float(gate[i]), u = to_float(up[i]), dy = to_float(d_out[i]);
    float sigmoid = 1.0f / (1.0f + expf(-g));
    // d silu(g)/dg = sigmoid(g) (1 + g (1 - sigmoid(g)))
    float d_silu = sigmoid * (1.0f + g * (1.0f - sigmoid));
    d_gate[i] = from_float<T>(dy * u * d_silu);
    d_up[i] = from_float<T>(dy * g * sigmoid);
}

template <typename T>
__global__ static void residual_add_kernel(float *x, const T *y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += to_float(y[i]);
}

void swiglu_gpu(act16 *out, const act16 *gate, const act16 *up, size_t n) {
    if (n == 0) return;
    if (gpu_act16() == ACT16_FP16)
        swiglu_kernel<fp16><<<blocks_for(n), elementwise_block>>>(as_fp16(out), as_fp16(gate), as_fp16(up), n);
    else
        swiglu_kernel<bf16><<<blocks_for(n), elementwise_block>>>(as_bf16(out), as_bf16(gate), as_bf16(up), n);
    CUDA_CHECK_LAUNCH();
}

void swiglu_backward_gpu(act16 *d_gate, act16 *d_up, const act16 *d_out, const act16 *gate, const act16 *up,
                         size_t n) {
    if (n == 0) return;
    if (gpu_act16() == ACT16_FP16)
        swiglu_backward_kernel<fp16><<<blocks_for(n), elementwise_block>>>(as_fp16(d_gate), as_fp16(d_up),
                                                                          as_fp16(d_out), as_fp16(gate), as_fp16(up), n);
    else
        swiglu_backward_kernel<bf16><<<blocks_for(n), elementwise_block>>>(as_bf16(d_gate), as_bf16(d_up),
                                                                          as_bf16(d_out), as_bf16(gate), as_bf16(up), n);
    CUDA_CHECK_LAUNCH();
}

void residual_add_gpu(float *x, const act16 *y, size_t n) {
    if (n == 0) return;
    if (gpu_act16() == ACT16_FP16) residual_add_kernel<fp16><<<blocks_for(n), elementwise_block>>>(x, as_fp16(y), n);
    else residual_add_kernel<bf16><<<blocks_for(n), elementwise_block>>>(x, as_bf16(y), n);
    CUDA_CHECK_LAUNCH();
}

// ---- matmul through cuBLAS (gemm_act16, ops/gpu.cu) ----

template <typename T>
__global__ static void add_bias_kernel(T *out, const float *bias, int n, int out_dim) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)n * out_dim) return;
    // out[t][o] += b[o]
    out[idx] = from_float<T>(to_float(out[idx]) + bias[idx % out_dim]);
}

void matmul_gpu(act16 *out, const act16 *in, const act16 *weight, const float *bias, int n, int in_dim, int out_dim) {
    if (n <= 0 || out_dim <= 0) return;
    // out [n, out_dim] = in [n, in_dim] W^T
    gemm_act16(out, gpu_act16_cuda_type(), in, false, weight, true, n, out_dim, in_dim, 1.0f, 0.0f);
    if (!bias) return;
    unsigned blocks = blocks_for((size_t)n * out_dim);
    if (gpu_act16() == ACT16_FP16) add_bias_kernel<fp16><<<blocks, elementwise_block>>>(as_fp16(out), bias, n, out_dim);
    else add_bias_kernel<bf16><<<blocks, elementwise_block>>>(as_bf16(out), bias, n, out_dim);
    CUDA_CHECK_LAUNCH();
}

void matmul_backward_input_gpu(float *d_in, const act16 *d_out, const act16 *weight, int n, int in_dim, int out_dim) {
    if (n <= 0 || in_dim <= 0) return;
    // d_in [n, in_dim] += d_out [n, out_dim] W
    gemm_act16(d_in, CUDA_R_32F, d_out, false, weight, false, n, in_dim, out_dim, 1.0f, 1.0f);
}
#endif
