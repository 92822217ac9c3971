// nf4.cu: NF4 quantization of the frozen base weights (see nf4.h for the
// format): the CPU reference functions, matching bitsandbytes byte for byte,
// the memory story of a quantized model, a model's base round-tripped through
// NF4 for inference, and (at the bottom) the CUDA quantize and dequantize
// kernels, equal to the CPU functions bit for bit.
#include "nf4.h"
#include "ops/gpu.h"
#include "ops/mma.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// Values from bitsandbytes' get_4bit_type("nf4") (fp32).
const float NF4_CODE[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

// The fp32 midpoints bitsandbytes' CPU path compares against.
const float NF4_MIDPOINT[15] = {
    -0.8480963706970215f, -0.6106328964233398f, -0.4599952697753906f, -0.33967941999435425f,
    -0.23460739850997925f, -0.13791173696517944f, -0.045525018125772476f, 0.03979014977812767f,
    0.120255246758461f, 0.2035212516784668f, 0.2920137643814087f, 0.3893125355243683f,
    0.5016634464263916f, 0.6427869200706482f, 0.8614784479141235f,
};

int64_t nf4_num_blocks(int64_t n) { return (n + NF4_BLOCK_SIZE - 1) / NF4_BLOCK_SIZE; }

int64_t nf4_num_dq_blocks(int64_t n) {
    return (nf4_num_blocks(n) + NF4_DQ_BLOCK_SIZE - 1) / NF4_DQ_BLOCK_SIZE;
}

int nf4_nearest_code(float v) {
    // the code c with MIDPOINT[c-1] < v <= MIDPOINT[c]: a binary search over the 15 midpoints
    int lo = 0, hi = 15;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (v > NF4_MIDPOINT[mid]) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

// ---- the signed dynamic map (double quant) ----------------------------------

static int compare_floats(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

void dynamic_map_signed(float map[256]) {
    int count = 0;
    for (int e = 0; e < 7; e++) {
        // 2^e + 1 evenly spaced points from 0.1 to 1.0; their 2^e midpoints, times 10^(e-6), with both signs
        int n_points = (1 << e) + 1;
        double scale = pow(10.0, e - 6);
        for (int j = 0; j + 1 < n_points; j++) {
            double left = 0.1 + 0.9 * j / (n_points - 1);
            double right = 0.1 + 0.9 * (j + 1) / (n_points - 1);
            // magnitude = (left + right) / 2 * 10^(e-6)
            double magnitude = (left + right) / 2 * scale;
            map[count++] = (float)magnitude;
            map[count++] = (float)-magnitude;
        }
    }
    map[count++] = 0.0f;
    map[count++] = 1.0f;
    qsort(map, 256, sizeof(float), compare_floats);
}

// Index of the map entry nearest to v; a tie goes to the lower entry (the CPU
// double quant and nf4_double_quantize_kernel share this one copy).
HOST_DEVICE static int dynamic_map_nearest(const float *map, float v) {
    // the largest i with map[i] <= v (0 when v is below map[0])
    int lo = 0, hi = 255;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (map[mid] <= v) lo = mid;
        else hi = mid - 1;
    }
    if (lo < 255 && fabsf(v - map[lo + 1]) < fabsf(v - map[lo])) lo++;
    return lo;
}

// ---- quantize -----------------------------------------------------------------

// Fills absmax[b] and the packed bytes of block b.
static void quantize_block(const float *x, int64_t n, int64_t b, uint8_t *packed, float *absmax) {
    int64_t begin = b * NF4_BLOCK_SIZE;
    int64_t end = begin + NF4_BLOCK_SIZE < n ? begin + NF4_BLOCK_SIZE : n;
    float block_max = 0.0f;
    for (int64_t i = begin; i < end; i++) block_max = fmaxf(block_max, fabsf(x[i]));
    absmax[b] = block_max;
    // v = x * (1 / absmax); absmax is floored at 1e-38 (as bitsandbytes) so an all-zero block gives v = 0
    float inv_absmax = 1.0f / fmaxf(block_max, 1e-38f);
    // 64 is even, so a block never shares a byte with the next one
    for (int64_t i = begin; i < end; i += 2) {
        int high = nf4_nearest_code(x[i] * inv_absmax);
        int low = i + 1 < end ? nf4_nearest_code(x[i + 1] * inv_absmax) : NF4_ZERO_CODE;
        packed[i / 2] = (uint8_t)(high << 4 | low);
    }
}

// offset = mean(absmax), summed in double and rounded once
static float absmax_mean(const float *absmax, int64_t n_blocks) {
    double sum = 0.0;
    for (int64_t b = 0; b < n_blocks; b++) sum += absmax[b];
    return (float)(sum / (double)n_blocks);
}

void nf4_double_quantize(const float *absmax, int64_t n_blocks, float offset, uint8_t *absmax_q, float *absmax2) {
    float map[256];
    dynamic_map_signed(map);
    for (int64_t begin = 0; begin < n_blocks; begin += NF4_DQ_BLOCK_SIZE) {
        int64_t end = begin + NF4_DQ_BLOCK_SIZE < n_blocks ? begin + NF4_DQ_BLOCK_SIZE : n_blocks;
        float block_max = 0.0f;
        for (int64_t b = begin; b < end; b++) block_max = fmaxf(block_max, fabsf(absmax[b] - offset));
        absmax2[begin / NF4_DQ_BLOCK_SIZE] = block_max;
        // v = (absmax - offset) * (1 / absmax2), in [-1, 1]; the floor makes v = 0 when absmax2 == 0
        float inv_absmax2 = 1.0f / fmaxf(block_max, 1e-38f);
        for (int64_t b = begin; b < end; b++)
            absmax_q[b] = (uint8_t)dynamic_map_nearest(map, (absmax[b] - offset) * inv_absmax2);
    }
}

int nf4_quantize(NF4Tensor *q, const float *x, int64_t n, int double_quant) {
    memset(q, 0, sizeof *q);
    if (n <= 0) return -1;
    int64_t n_blocks = nf4_num_blocks(n);
    q->n = n;
    q->double_quant = double_quant != 0;
    q->packed = (uint8_t *)malloc((size_t)(n + 1) / 2);
    q->absmax = (float *)malloc((size_t)n_blocks * sizeof(float));
    if (!q->packed || !q->absmax) {
        nf4_free(q);
        return -1;
    }
    #pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < n_blocks; b++) quantize_block(x, n, b, q->packed, q->absmax);
    if (!double_quant) return 0;

    q->absmax_q = (uint8_t *)malloc((size_t)n_blocks);
    q->absmax2 = (float *)malloc((size_t)nf4_num_dq_blocks(n) * sizeof(float));
    if (!q->absmax_q || !q->absmax2) {
        nf4_free(q);
        return -1;
    }
    q->absmax_offset = absmax_mean(q->absmax, n_blocks);
    nf4_double_quantize(q->absmax, n_blocks, q->absmax_offset, q->absmax_q, q->absmax2);
    free(q->absmax);
    q->absmax = NULL;
    return 0;
}

// ---- dequantize -----------------------------------------------------------------

// The fp32 absmax of block b; map is the dynamic map (used under double quant).
static float block_absmax(const NF4Tensor *q, const float *map, int64_t b) {
    if (!q->double_quant) return q->absmax[b];
    // absmax = dyn[q] * absmax2 + offset, fused (one rounding) so that every compiler and the GPU agree
    return fmaf(map[q->absmax_q[b]], q->absmax2[b / NF4_DQ_BLOCK_SIZE], q->absmax_offset);
}

void nf4_absmax_values(const NF4Tensor *q, float *absmax) {
    float map[256];
    dynamic_map_signed(map);
    int64_t n_blocks = nf4_num_blocks(q->n);
    for (int64_t b = 0; b < n_blocks; b++) absmax[b] = block_absmax(q, map, b);
}

void nf4_dequantize(const NF4Tensor *q, float *out) {
    float map[256];
    dynamic_map_signed(map);
    int64_t n_blocks = nf4_num_blocks(q->n);
    #pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < n_blocks; b++) {
        float absmax = block_absmax(q, map, b);
        int64_t begin = b * NF4_BLOCK_SIZE;
        int64_t end = begin + NF4_BLOCK_SIZE < q->n ? begin + NF4_BLOCK_SIZE : q->n;
        // w = code[nibble] * absmax, two values a byte, high nibble first
        for (int64_t i = begin; i < end; i += 2) {
            uint8_t byte = q->packed[i / 2];
            out[i] = NF4_CODE[byte >> 4] * absmax;
            if (i + 1 < end) out[i + 1] = NF4_CODE[byte & 15] * absmax;
        }
    }
}

void nf4_free(NF4Tensor *q) {
    free(q->packed);
    free(q->absmax);
    free(q->absmax_q);
    free(q->absmax2);
    memset(q, 0, sizeof *q);
}

// ---- memory -----------------------------------------------------------------------

size_t nf4_bytes_for(int64_t n, int double_quant) {
    size_t codes = (size_t)(n + 1) / 2;
    size_t n_blocks = (size_t)nf4_num_blocks(n);
    if (!double_quant) return codes + n_blocks * sizeof(float);
    // one byte per block, an fp32 absmax2 per 256 blocks, the fp32 offset
    return codes + n_blocks + (size_t)nf4_num_dq_blocks(n) * sizeof(float) + sizeof(float);
}

size_t nf4_bytes(const NF4Tensor *q) { return nf4_bytes_for(q->n, q->double_quant); }

// One line: a storage form's bytes and bits per parameter (all, and the constants' share).
static void print_story_line(FILE *out, const char *what, size_t bytes, size_t code_bytes, size_t params) {
    // bits/param = 8 * bytes / params
    double bits = 8.0 * (double)bytes / (double)params;
    double constant_bits = 8.0 * (double)(bytes - code_bytes) / (double)params;
    fprintf(out, "  %-22s %13zu bytes %9.2f MiB  %6.3f bits/param", what, bytes, (double)bytes / (1 << 20), bits);
    if (code_bytes > 0) fprintf(out, " (codes 4 + constants %.3f)", constant_bits);
    fprintf(out, "\n");
}

int nf4_round_trip_model(Model *m, int double_quant, char *err, size_t err_size) {
    const Config *c = &m->config;
    for (int l = 0; l < c->n_layers; l++)
        for (int t = 0; t < N_LINEARS; t++) {
            int in_dim, out_dim;
            linear_dims(c, t, &in_dim, &out_dim);
            float *W = linear_weight(&m->layers[l], t);
            NF4Tensor q;
            if (nf4_quantize(&q, W, (int64_t)in_dim * out_dim, double_quant) != 0) {
                snprintf(err, err_size, "out of memory quantizing layer %d %s to NF4", l, LINEAR_NAMES[t]);
                return -1;
            }
            // W = dequant(NF4(W))
            nf4_dequantize(&q, W);
            nf4_free(&q);
        }
    return 0;
}

void nf4_print_memory_story(const Config *c, FILE *out) {
    int64_t q_dim = (int64_t)c->n_heads * c->head_dim, kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    // q, k, v, o, gate, up, down: each quantized on its own
    int64_t sizes[7] = {q_dim * c->dim, kv_dim * c->dim, kv_dim * c->dim, c->dim * q_dim,
                        (int64_t)c->hidden_dim * c->dim, (int64_t)c->hidden_dim * c->dim,
                        (int64_t)c->dim * c->hidden_dim};
    size_t params = 0, bf16 = 0, codes = 0, nf4 = 0, nf4_dq = 0;
    for (int m = 0; m < 7; m++) {
        params += (size_t)sizes[m];
        bf16 += 2 * (size_t)sizes[m];
        codes += (size_t)(sizes[m] + 1) / 2;
        nf4 += nf4_bytes_for(sizes[m], 0);
        nf4_dq += nf4_bytes_for(sizes[m], 1);
    }
    size_t layers = (size_t)c->n_layers;
    params *= layers;
    bf16 *= layers;
    codes *= layers;
    nf4 *= layers;
    nf4_dq *= layers;
    fprintf(out, "NF4 memory: the 7 linear weights of %d layers (q k v o gate up down), %.2fM parameters\n",
            c->n_layers, params / 1e6);
    print_story_line(out, "bf16", bf16, 0, params);
    print_story_line(out, "NF4, fp32 absmax", nf4, codes, params);
    print_story_line(out, "NF4 + double quant", nf4_dq, codes, params);
    size_t others = model_num_params(c) - params;
    fprintf(out, "  not quantized (embeddings, lm_head, norms, biases): %.2fM parameters, %.2f MiB in bf16\n",
            others / 1e6, 2.0 * (double)others / (1 << 20));
}

// ---- CUDA ---------------------------------------------------------------------------
// The kernels mirror the CPU functions above operation for operation (the same
// fp32 multiplies, the IEEE division for 1 / absmax, the same comparisons), so
// their results are equal bit for bit. nvcc's defaults keep that true: no
// flush-to-zero, correctly rounded division.
#ifdef __CUDACC__

// The code book, its midpoints and the dynamic map, copied once to the device.
static __constant__ float c_nf4_code[16];
static __constant__ float c_nf4_midpoint[15];
static __constant__ float c_dynamic_map[256];

static void nf4_tables_to_device(void) {
    static int uploaded = 0;
    if (uploaded) return;
    float map[256];
    dynamic_map_signed(map);
    CUDA_CHECK(cudaMemcpyToSymbol(c_nf4_code, NF4_CODE, sizeof NF4_CODE));
    CUDA_CHECK(cudaMemcpyToSymbol(c_nf4_midpoint, NF4_MIDPOINT, sizeof NF4_MIDPOINT));
    CUDA_CHECK(cudaMemcpyToSymbol(c_dynamic_map, map, sizeof map));
    uploaded = 1;
}

#define NF4_THREADS 256   // threads per thread block in every NF4 kernel

// ---- dequantize ----

// One thread per 32-bit word j of codes: 4 packed bytes, 8 values 8j..8j+7, all in
// one 64-block (a block is 8 words), so one absmax per thread. Byte k of the word
// (little-endian) holds value 8j+2k in its high nibble and 8j+2k+1 in its low one.
// The 8 results leave in one 16-byte store when the output is 16-byte aligned
// (wide_store), else one by one, as do a last partial word's, which is also read
// a byte at a time (no read past the codes; `packed` itself comes from gpu_malloc,
// so its words are aligned). A warp reads 128 contiguous bytes and writes 512.
// The code book sits in shared memory, where the 16 different nibbles of a warp
// meet no bank conflict.
template <typename T>
__global__ static void nf4_dequantize_kernel(T *out, const uint8_t *packed, const float *absmax,
                                             const uint8_t *absmax_q, const float *absmax2, float offset,
                                             int double_quant, int64_t n, int wide_store) {
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = c_nf4_code[threadIdx.x];
    __syncthreads();
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, first = 8 * j;
    if (first >= n) return;
    int64_t b = first / NF4_BLOCK_SIZE, n_bytes = (n + 1) / 2;
    // absmax = dyn[q] * absmax2 + offset, fused as on the CPU (block_absmax)
    float scale = double_quant ? fmaf(c_dynamic_map[absmax_q[b]], absmax2[b / NF4_DQ_BLOCK_SIZE], offset) : absmax[b];
    uint32_t word = 0;
    if (4 * j + 4 <= n_bytes) word = *(const uint32_t *)(packed + 4 * j);
    else
        for (int k = 0; 4 * j + k < n_bytes; k++) word |= (uint32_t)packed[4 * j + k] << (8 * k);
    // w = code[nibble] * absmax, rounded once to T
    float w[8];
    for (int k = 0; k < 4; k++) {
        uint32_t byte = (word >> (8 * k)) & 0xff;
        w[2 * k] = code[byte >> 4] * scale;
        w[2 * k + 1] = code[byte & 15] * scale;
    }
    if (wide_store && first + 8 <= n) {
        alignas(16) uint32_t pairs[4];
        for (int k = 0; k < 4; k++) pairs[k] = pack_pair<T>(w[2 * k], w[2 * k + 1]);
        copy16(out + first, pairs);
        return;
    }
    for (int k = 0; k < 8 && first + k < n; k++) out[first + k] = from_float<T>(w[k]);
}

void nf4_dequantize_gpu(act16 *out, const NF4TensorGPU *q) {
    int64_t n_words = (q->n + 7) / 8;
    if (n_words <= 0) return;
    nf4_tables_to_device();
    unsigned grid = (unsigned)((n_words + NF4_THREADS - 1) / NF4_THREADS);
    int wide_store = (uintptr_t)out % 16 == 0;
    if (gpu_act16() == ACT16_FP16)
        nf4_dequantize_kernel<fp16><<<grid, NF4_THREADS>>>(as_fp16(out), q->packed, q->absmax, q->absmax_q, q->absmax2,
                                                           q->absmax_offset, q->double_quant, q->n, wide_store);
    else
        nf4_dequantize_kernel<bf16><<<grid, NF4_THREADS>>>(as_bf16(out), q->packed, q->absmax, q->absmax_q, q->absmax2,
                                                           q->absmax_offset, q->double_quant, q->n, wide_store);
    CUDA_CHECK_LAUNCH();
}

// ---- quantize ----

// nf4_nearest_code: the number of midpoints strictly below v (the same index as
// the CPU's binary search, also for NaN: 0).
__device__ static int nf4_nearest_code_gpu(float v) {
    int code = 0;
    for (int k = 0; k < 15; k++) code += v > c_nf4_midpoint[k];
    return code;
}

// One warp per 64-block b; lane l holds values begin + 2l and begin + 2l + 1,
// which make packed byte b * 32 + l. Mirrors quantize_block.
__global__ static void nf4_quantize_kernel(const float *x, int64_t n, int64_t n_blocks, uint8_t *packed,
                                           float *absmax) {
    int64_t b = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (b >= n_blocks) return;   // the whole warp leaves together
    int64_t i = b * NF4_BLOCK_SIZE + 2 * lane;
    float x0 = i < n ? x[i] : 0.0f;
    float x1 = i + 1 < n ? x[i + 1] : 0.0f;
    // absmax = max |x| over the block (the padding zeros cannot raise it)
    float block_max = warp_max(fmaxf(fabsf(x0), fabsf(x1)));
    if (lane == 0) absmax[b] = block_max;
    if (i >= n) return;
    // v = x * (1 / absmax), absmax floored at 1e-38 as on the CPU
    float inv_absmax = 1.0f / fmaxf(block_max, 1e-38f);
    int high = nf4_nearest_code_gpu(x0 * inv_absmax);
    int low = i + 1 < n ? nf4_nearest_code_gpu(x1 * inv_absmax) : NF4_ZERO_CODE;
    packed[i / 2] = (uint8_t)(high << 4 | low);
}

// One thread block per 256-block c of absmax values, one thread per value b.
// Mirrors nf4_double_quantize.
__global__ static void nf4_double_quantize_kernel(const float *absmax, int64_t n_blocks, float offset,
                                                  uint8_t *absmax_q, float *absmax2) {
    __shared__ float map[256];
    __shared__ float warp_maxima[NF4_DQ_BLOCK_SIZE / 32];
    map[threadIdx.x] = c_dynamic_map[threadIdx.x];
    int64_t b = (int64_t)blockIdx.x * NF4_DQ_BLOCK_SIZE + threadIdx.x;
    float centered = b < n_blocks ? absmax[b] - offset : 0.0f;
    // absmax2 = max |absmax - offset| over the 256-block (the padding zeros cannot raise it)
    float lane_max = warp_max(fabsf(centered));
    if (threadIdx.x % 32 == 0) warp_maxima[threadIdx.x / 32] = lane_max;
    __syncthreads();
    float block_max = 0.0f;
    for (int w = 0; w < NF4_DQ_BLOCK_SIZE / 32; w++) block_max = fmaxf(block_max, warp_maxima[w]);
    if (threadIdx.x == 0) absmax2[blockIdx.x] = block_max;
    if (b >= n_blocks) return;
    // v = (absmax - offset) * (1 / absmax2), absmax2 floored at 1e-38 as on the CPU
    float inv_absmax2 = 1.0f / fmaxf(block_max, 1e-38f);
    absmax_q[b] = (uint8_t)dynamic_map_nearest(map, centered * inv_absmax2);
}

void nf4_quantize_gpu(NF4TensorGPU *q, const float *x, int64_t n, int double_quant, const char *what) {
    memset(q, 0, sizeof *q);
    if (n <= 0) {
        fprintf(stderr, "nf4_quantize_gpu: %s has %lld values\n", what, (long long)n);
        exit(1);
    }
    nf4_tables_to_device();
    int64_t n_blocks = nf4_num_blocks(n), n_dq_blocks = nf4_num_dq_blocks(n);
    q->n = n;
    q->double_quant = double_quant != 0;
    q->packed = (uint8_t *)gpu_malloc((size_t)(n + 1) / 2, what);
    float *absmax = (float *)gpu_malloc((size_t)n_blocks * sizeof(float), what);
    // one warp per 64-block
    unsigned grid = (unsigned)((n_blocks * 32 + NF4_THREADS - 1) / NF4_THREADS);
    nf4_quantize_kernel<<<grid, NF4_THREADS>>>(x, n, n_blocks, q->packed, absmax);
    CUDA_CHECK_LAUNCH();
    if (!q->double_quant) {
        q->absmax = absmax;
        return;
    }
    // offset = mean(absmax): on the host, summed in double in the CPU's order, so the same fp32 number
    float *host_absmax = (float *)cpu_malloc((size_t)n_blocks * sizeof(float), "NF4 block scales");
    gpu_download(host_absmax, absmax, (size_t)n_blocks * sizeof(float));
    q->absmax_offset = absmax_mean(host_absmax, n_blocks);
    free(host_absmax);
    q->absmax_q = (uint8_t *)gpu_malloc((size_t)n_blocks, what);
    q->absmax2 = (float *)gpu_malloc((size_t)n_dq_blocks * sizeof(float), what);
    nf4_double_quantize_kernel<<<(unsigned)n_dq_blocks, NF4_DQ_BLOCK_SIZE>>>(absmax, n_blocks, q->absmax_offset,
                                                                          q->absmax_q, q->absmax2);
    CUDA_CHECK_LAUNCH();
    gpu_free(absmax);
}

// ---- copies ----

// A device copy of `bytes` host bytes.
static void *upload_copy(const void *host, size_t bytes, const char *what) {
    void *device = gpu_malloc(bytes, what);
    gpu_upload(device, host, bytes);
    return device;
}

void nf4_upload(NF4TensorGPU *d, const NF4Tensor *q, const char *what) {
    memset(d, 0, sizeof *d);
    int64_t n_blocks = nf4_num_blocks(q->n);
    d->n = q->n;
    d->double_quant = q->double_quant;
    d->packed = (uint8_t *)upload_copy(q->packed, (size_t)(q->n + 1) / 2, what);
    if (!q->double_quant) {
        d->absmax = (float *)upload_copy(q->absmax, (size_t)n_blocks * sizeof(float), what);
        return;
    }
    d->absmax_q = (uint8_t *)upload_copy(q->absmax_q, (size_t)n_blocks, what);
    d->absmax2 = (float *)upload_copy(q->absmax2, (size_t)nf4_num_dq_blocks(q->n) * sizeof(float), what);
    d->absmax_offset = q->absmax_offset;
}

void nf4_free_gpu(NF4TensorGPU *d) {
    gpu_free(d->packed);
    gpu_free(d->absmax);
    gpu_free(d->absmax_q);
    gpu_free(d->absmax2);
    memset(d, 0, sizeof *d);
}
#endif
