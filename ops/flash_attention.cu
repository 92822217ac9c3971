// ops/flash_attention.cu: the flash kind of causal grouped-query attention on
// the GPU (ATTENTION_FLASH; ops/attention.cu's entry points call it): fused,
// tiled kernels with an online softmax (FlashAttention-2, no tensor cores)
// that never hold a [seq_len, seq_len] matrix. The CPU reference it is tested
// against is attention_cpu (ops/attention.cu).
//
// Sequence s, token t, query head h, kv head g = h / group. q and out rows have
// stride q_stride = n_heads * head_dim, k and v rows kv_stride = n_kv_heads *
// head_dim; head h of row t starts at column h * head_dim. lse and delta are
// [seq][head][token].
#include "ops/attention.h"

#ifdef __CUDACC__

// A block works on one tile of flash_tile query rows (or key rows) of one head
// and stages flash_tile-row tiles of q, k, v, dO in shared memory as T (bf16 or fp16). Its
// 256 threads are 8 per tile row: thread (r, lane8) owns, of row r, the tile
// columns lane8 + 8c (c < 4) and the head_dim columns lane8 + 8c (c < 16), so a
// row's 8 threads sit in one warp and reduce over the row with shuffles.

static const int flash_tile = 32;
static const int flash_threads = 256;
static const int flash_threads_per_row = flash_threads / flash_tile;             // 8
static const int flash_tile_cols_per_thread = flash_tile / flash_threads_per_row;  // 4
static const int flash_head_cols_per_thread = FLASH_MAX_HEAD_DIM / flash_threads_per_row;  // 16
// Row stride of a staged tile, in 16-bit elements: an odd number of 4-byte words, so the
// 8 threads of a row reading 8 different tile rows hit 8 different banks.
static const int flash_row_stride = FLASH_MAX_HEAD_DIM + 2;

// Rows row0 .. row0 + flash_tile - 1 of one head's slice (rows src + row * row_stride,
// head_dim wide) into shared memory; rows at or past n_rows read as zero.
template <typename T>
__device__ static void load_tile(T (*tile)[flash_row_stride], const T *src, int row0, int n_rows, int row_stride,
                                 int head_dim) {
    for (int e = threadIdx.x; e < flash_tile * head_dim; e += blockDim.x) {
        int r = e / head_dim, d = e % head_dim;
        int row = row0 + r;
        tile[r][d] = row < n_rows ? src[(size_t)row * row_stride + d] : from_float<T>(0.0f);
    }
}

// a . b over head_dim, in fp32.
template <typename T>
__device__ static float dot_rows(const T *a, const T *b, int head_dim) {
    float sum = 0.0f;
    for (int d = 0; d < head_dim; d++) sum += to_float(a[d]) * to_float(b[d]);
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
template <typename T>
__global__ static void flash_forward_kernel(T *out, float *lse, const T *q, const T *k, const T *v,
                                            const int *positions, int seq_len, int n_heads, int n_kv_heads,
                                            int head_dim, float scale) {
    __shared__ T q_tile[flash_tile][flash_row_stride];
    __shared__ T k_tile[flash_tile][flash_row_stride];
    __shared__ T v_tile[flash_tile][flash_row_stride];
    __shared__ float p_tile[flash_tile][flash_tile + 1];
    int h = blockIdx.y, s = blockIdx.z, g = h / (n_heads / n_kv_heads);
    int q_stride = n_heads * head_dim, kv_stride = n_kv_heads * head_dim;
    const T *q_head = q + (size_t)s * seq_len * q_stride + (size_t)h * head_dim;
    const T *k_head = k + (size_t)s * seq_len * kv_stride + (size_t)g * head_dim;
    const T *v_head = v + (size_t)s * seq_len * kv_stride + (size_t)g * head_dim;
    int r = threadIdx.x / flash_threads_per_row, lane8 = threadIdx.x % flash_threads_per_row;
    int i0 = blockIdx.x * flash_tile, i = i0 + r;
    int first = i < seq_len ? attention_first_key_gpu(positions, s, seq_len, i) : 0;

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
        // s_ij = scale q_i . k_j, or -inf for j > i (which also covers j past the sequence), for j before
        // i's sample (packed) and for rows past the sequence
        float tile_scores[flash_tile_cols_per_thread];
        float tile_max = -INFINITY;
        #pragma unroll
        for (int c = 0; c < flash_tile_cols_per_thread; c++) {
            int jj = lane8 + flash_threads_per_row * c, j = j0 + jj;
            bool seen = i < seq_len && first <= j && j <= i;
            tile_scores[c] = seen ? scale * dot_rows(q_tile[r], k_tile[jj], head_dim) : -INFINITY;
            tile_max = fmaxf(tile_max, tile_scores[c]);
        }
        float new_max = fmaxf(running_max, tile_row_max(tile_max));
        // a row with no key yet (rows past the sequence, or whose sample starts later) keeps zeros
        // instead of exp(-inf + inf)
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
            for (int jj = 0; jj < flash_tile; jj++) a += p_tile[r][jj] * to_float(v_tile[jj][d]);
            acc[c] = a;
        }
    }
    if (i >= seq_len) return;
    T *out_row = out + ((size_t)s * seq_len + i) * q_stride + (size_t)h * head_dim;
    #pragma unroll
    for (int c = 0; c < flash_head_cols_per_thread; c++) {
        int d = lane8 + flash_threads_per_row * c;
        // out_i = acc_i / l_i
        if (d < head_dim) out_row[d] = from_float<T>(acc[c] / running_sum);
    }
    // lse_i = m_i + log l_i
    if (lane8 == 0) lse[((size_t)s * n_heads + h) * seq_len + i] = running_max + logf(running_sum);
}

// delta_i = dO_i . O_i (= sum_j p_ij dp_ij) for every (row, head): one warp each.
template <typename T>
__global__ static void attention_delta_kernel(float *delta, const T *d_out, const T *out, int n_seqs, int seq_len,
                                              int n_heads, int head_dim) {
    size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= (size_t)n_seqs * seq_len * n_heads) return;   // whole warps (blockDim.x a multiple of 32)
    size_t row = warp / n_heads;
    int h = (int)(warp % n_heads);
    const T *dy = d_out + row * n_heads * head_dim + (size_t)h * head_dim;
    const T *y = out + row * n_heads * head_dim + (size_t)h * head_dim;
    float sum = 0.0f;
    for (int d = lane; d < head_dim; d += 32) sum += to_float(dy[d]) * to_float(y[d]);
    sum = warp_sum(sum);
    size_t s = row / seq_len, t = row % seq_len;
    if (lane == 0) delta[(s * n_heads + h) * seq_len + t] = sum;
}

// One block per (key tile, kv head g, sequence s): d_k and d_v of the tile's
// keys, summed over g's query heads and over the query tiles at or after the
// key tile (earlier queries never see these keys). p_ij is recomputed from q, k
// and lse; ds_ij = p_ij (dO_i . v_j - delta_i).
template <typename T>
__global__ static void flash_backward_kv_kernel(T *d_k, T *d_v, const T *d_out, const float *lse,
                                                const float *delta, const T *q, const T *k, const T *v,
                                                const int *positions, int seq_len, int n_heads, int n_kv_heads,
                                                int head_dim, float scale) {
    __shared__ T k_tile[flash_tile][flash_row_stride];
    __shared__ T v_tile[flash_tile][flash_row_stride];
    __shared__ T q_tile[flash_tile][flash_row_stride];
    __shared__ T dy_tile[flash_tile][flash_row_stride];
    __shared__ float p_tile[flash_tile][flash_tile + 1];    // [key][query]
    __shared__ float ds_tile[flash_tile][flash_tile + 1];   // [key][query]
    __shared__ float lse_tile[flash_tile], delta_tile[flash_tile];
    __shared__ int first_tile[flash_tile];                  // each query's first key
    int g = blockIdx.y, s = blockIdx.z, group = n_heads / n_kv_heads;
    int q_stride = n_heads * head_dim, kv_stride = n_kv_heads * head_dim;
    const T *k_head = k + (size_t)s * seq_len * kv_stride + (size_t)g * head_dim;
    const T *v_head = v + (size_t)s * seq_len * kv_stride + (size_t)g * head_dim;
    int r = threadIdx.x / flash_threads_per_row, lane8 = threadIdx.x % flash_threads_per_row;
    int j0 = blockIdx.x * flash_tile, j = j0 + r;

    load_tile(k_tile, k_head, j0, seq_len, kv_stride, head_dim);
    load_tile(v_tile, v_head, j0, seq_len, kv_stride, head_dim);
    float dk_acc[flash_head_cols_per_thread], dv_acc[flash_head_cols_per_thread];
    #pragma unroll
    for (int c = 0; c < flash_head_cols_per_thread; c++) dk_acc[c] = dv_acc[c] = 0.0f;
    for (int h = g * group; h < (g + 1) * group; h++) {
        const T *q_head = q + (size_t)s * seq_len * q_stride + (size_t)h * head_dim;
        const T *dy_head = d_out + (size_t)s * seq_len * q_stride + (size_t)h * head_dim;
        const float *lse_head = lse + ((size_t)s * n_heads + h) * seq_len;
        const float *delta_head = delta + ((size_t)s * n_heads + h) * seq_len;
        for (int i0 = j0; i0 < seq_len; i0 += flash_tile) {
            __syncthreads();   // everyone is done with the previous q and dO tiles
            load_tile(q_tile, q_head, i0, seq_len, q_stride, head_dim);
            load_tile(dy_tile, dy_head, i0, seq_len, q_stride, head_dim);
            for (int e = threadIdx.x; e < flash_tile; e += blockDim.x) {
                lse_tile[e] = i0 + e < seq_len ? lse_head[i0 + e] : 0.0f;
                delta_tile[e] = i0 + e < seq_len ? delta_head[i0 + e] : 0.0f;
                first_tile[e] = i0 + e < seq_len ? attention_first_key_gpu(positions, s, seq_len, i0 + e) : 0;
            }
            __syncthreads();
            #pragma unroll
            for (int c = 0; c < flash_tile_cols_per_thread; c++) {
                int ii = lane8 + flash_threads_per_row * c, i = i0 + ii;
                // p_ij = exp(scale q_i . k_j - lse_i), ds_ij = p_ij (dO_i . v_j - delta_i);
                // both 0 unless first_i <= j <= i < T
                float p = 0.0f, ds = 0.0f;
                if (i < seq_len && first_tile[ii] <= j && j <= i) {
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
                    dv += p_tile[r][ii] * to_float(dy_tile[ii][d]);
                    dk += ds_tile[r][ii] * to_float(q_tile[ii][d]);
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
        d_k[offset + d] = from_float<T>(scale * dk_acc[c]);
        d_v[offset + d] = from_float<T>(dv_acc[c]);
    }
}

// One block per (query tile, query head h, sequence s): d_q of the tile's
// queries, summed over the key tiles at or before the query tile:
// dq_i = scale sum_j ds_ij k_j, with p and ds recomputed as in the kernel above.
template <typename T>
__global__ static void flash_backward_q_kernel(T *d_q, const T *d_out, const float *lse, const float *delta,
                                               const T *q, const T *k, const T *v, const int *positions,
                                               int seq_len, int n_heads, int n_kv_heads, int head_dim, float scale) {
    __shared__ T q_tile[flash_tile][flash_row_stride];
    __shared__ T dy_tile[flash_tile][flash_row_stride];
    __shared__ T k_tile[flash_tile][flash_row_stride];
    __shared__ T v_tile[flash_tile][flash_row_stride];
    __shared__ float ds_tile[flash_tile][flash_tile + 1];   // [query][key]
    int h = blockIdx.y, s = blockIdx.z, g = h / (n_heads / n_kv_heads);
    int q_stride = n_heads * head_dim, kv_stride = n_kv_heads * head_dim;
    const T *q_head = q + (size_t)s * seq_len * q_stride + (size_t)h * head_dim;
    const T *dy_head = d_out + (size_t)s * seq_len * q_stride + (size_t)h * head_dim;
    const T *k_head = k + (size_t)s * seq_len * kv_stride + (size_t)g * head_dim;
    const T *v_head = v + (size_t)s * seq_len * kv_stride + (size_t)g * head_dim;
    int r = threadIdx.x / flash_threads_per_row, lane8 = threadIdx.x % flash_threads_per_row;
    int i0 = blockIdx.x * flash_tile, i = i0 + r;
    size_t stats = ((size_t)s * n_heads + h) * seq_len + i;
    float row_lse = i < seq_len ? lse[stats] : 0.0f;
    float row_delta = i < seq_len ? delta[stats] : 0.0f;
    int first = i < seq_len ? attention_first_key_gpu(positions, s, seq_len, i) : 0;

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
            // p_ij = exp(scale q_i . k_j - lse_i), ds_ij = p_ij (dO_i . v_j - delta_i); 0 unless first_i <= j <= i < T
            float ds = 0.0f;
            if (i < seq_len && first <= j && j <= i) {
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
            for (int jj = 0; jj < flash_tile; jj++) dq += ds_tile[r][jj] * to_float(k_tile[jj][d]);
            dq_acc[c] = dq;
        }
    }
    if (i >= seq_len) return;
    T *dq_row = d_q + ((size_t)s * seq_len + i) * q_stride + (size_t)h * head_dim;
    #pragma unroll
    for (int c = 0; c < flash_head_cols_per_thread; c++) {
        int d = lane8 + flash_threads_per_row * c;
        if (d < head_dim) dq_row[d] = from_float<T>(scale * dq_acc[c]);
    }
}

static unsigned n_tiles(int seq_len) { return (unsigned)((seq_len + flash_tile - 1) / flash_tile); }

void flash_attention_forward_gpu(act16 *out, float *lse, const act16 *q, const act16 *k, const act16 *v,
                                 const int *positions, int n_seqs, int seq_len, int n_heads, int n_kv_heads,
                                 int head_dim) {
    float scale = 1.0f / sqrtf((float)head_dim);
    dim3 grid(n_tiles(seq_len), n_heads, n_seqs);
    if (gpu_act16() == ACT16_FP16)
        flash_forward_kernel<fp16><<<grid, flash_threads>>>(as_fp16(out), lse, as_fp16(q), as_fp16(k), as_fp16(v),
                                                            positions, seq_len, n_heads, n_kv_heads, head_dim, scale);
    else
        flash_forward_kernel<bf16><<<grid, flash_threads>>>(as_bf16(out), lse, as_bf16(q), as_bf16(k), as_bf16(v),
                                                            positions, seq_len, n_heads, n_kv_heads, head_dim, scale);
    CUDA_CHECK_LAUNCH();
}

void attention_delta_gpu(float *delta, const act16 *d_out, const act16 *out, int n_seqs, int seq_len, int n_heads,
                         int head_dim) {
    size_t n_rows = (size_t)n_seqs * n_heads * seq_len;
    int delta_block = 256;   // 8 warps, one per (row, head)
    unsigned delta_blocks = (unsigned)((n_rows * 32 + delta_block - 1) / delta_block);
    if (gpu_act16() == ACT16_FP16)
        attention_delta_kernel<fp16><<<delta_blocks, delta_block>>>(delta, as_fp16(d_out), as_fp16(out), n_seqs,
                                                                    seq_len, n_heads, head_dim);
    else
        attention_delta_kernel<bf16><<<delta_blocks, delta_block>>>(delta, as_bf16(d_out), as_bf16(out), n_seqs,
                                                                    seq_len, n_heads, head_dim);
    CUDA_CHECK_LAUNCH();
}

// The two backward kernels after delta, for one 16-bit type T.
template <typename T>
static void flash_backward(T *d_q, T *d_k, T *d_v, const T *d_out, const float *lse, const T *q,
                           const T *k, const T *v, const int *positions, int n_seqs, int seq_len, int n_heads,
                           int n_kv_heads, int head_dim, float *delta) {
    float scale = 1.0f / sqrtf((float)head_dim);
    flash_backward_kv_kernel<T><<<dim3(n_tiles(seq_len), n_kv_heads, n_seqs), flash_threads>>>(
        d_k, d_v, d_out, lse, delta, q, k, v, positions, seq_len, n_heads, n_kv_heads, head_dim, scale);
    CUDA_CHECK_LAUNCH();
    flash_backward_q_kernel<T><<<dim3(n_tiles(seq_len), n_heads, n_seqs), flash_threads>>>(
        d_q, d_out, lse, delta, q, k, v, positions, seq_len, n_heads, n_kv_heads, head_dim, scale);
    CUDA_CHECK_LAUNCH();
}

void flash_attention_backward_gpu(act16 *d_q, act16 *d_k, act16 *d_v, const act16 *d_out, const act16 *out,
                                  const float *lse, const act16 *q, const act16 *k, const act16 *v,
                                  const int *positions, int n_seqs, int seq_len, int n_heads, int n_kv_heads,
                                  int head_dim, float *delta) {
    attention_delta_gpu(delta, d_out, out, n_seqs, seq_len, n_heads, head_dim);
    if (gpu_act16() == ACT16_FP16)
        flash_backward(as_fp16(d_q), as_fp16(d_k), as_fp16(d_v), as_fp16(d_out), lse, as_fp16(q),
                       as_fp16(k), as_fp16(v), positions, n_seqs, seq_len, n_heads, n_kv_heads, head_dim, delta);
    else
        flash_backward(as_bf16(d_q), as_bf16(d_k), as_bf16(d_v), as_bf16(d_out), lse, as_bf16(q),
                       as_bf16(k), as_bf16(v), positions, n_seqs, seq_len, n_heads, n_kv_heads, head_dim, delta);
}
#endif
