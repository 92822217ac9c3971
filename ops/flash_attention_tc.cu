// ops/flash_attention_tc.cu: the tensor-core kind of causal grouped-query
// attention on the GPU (ATTENTION_FLASH_TC; ops/attention.cu's entry points
// call it), FlashAttention-2 on mma.sync (ops/mma.h): 16-bit inputs, fp32
// accumulation, head_dim 64 or 128, sm_80 and newer. ops/flash_attention.cu
// is the same algorithm without tensor cores, the readable version; the CPU
// reference both are tested against is attention_cpu (ops/attention.cu).
//
// Forward: a block takes 64 query rows Q_b of head h (16 per warp, kept in
// registers) and streams the 64-row tiles K_j, V_j of h's kv head
// g = h / group (read in place: no copy per query head) through shared memory:
//   S = scale Q_b K_j^T                                   (tensor cores, fp32)
//   m' = max(m, rowmax S),  P = exp(S - m'),  l = l exp(m - m') + rowsum P
//   O = O exp(m - m') + P V_j                             (P rounded to 16 bits)
// then out = O / l and lse = m + log l. Key tiles after the block's last
// query (causal) or before its queries' first keys (packed samples) are
// skipped; the mask first_i <= j <= i applies inside the rest.
// Backward, with delta_i = dO_i . O_i (the flash kind's kernel):
//   P = exp(scale Q K^T - lse),  dP = dO V^T,  dS = P (dP - delta)
//   dV = P^T dO,  dK = scale dS^T Q   one block per 64 keys of a kv head, over its query heads
//   dQ = scale dS K                   one block per 64 queries of a head
//
// Sequence s, token t: q and out rows have stride n_heads * D, k and v rows
// n_kv_heads * D; head h of row t starts at column h * D. lse and delta are
// [seq][head][token]. Inside a warp, lane = 4 * group + t; a 16-row tile of
// C fragments c[n][e] (ops/mma.h) holds row group + 8 (e / 2), column
// 8 n + 2 t + e % 2.
#include "ops/attention.h"
#include "ops/mma.h"

#ifdef __CUDACC__
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static const int tc_rows = 64;       // query (or key) rows of a block, and of a streamed tile
static const int tc_threads = 128;   // 4 warps of 16 rows each
static const int tc_half = tc_rows / 2;   // the dK/dV kernel takes a query tile in two halves
// Row padding of a staged tile, in 16-bit elements (16 bytes): the 8 rows an
// ldmatrix reads start 16 bytes apart modulo 128 (different banks).
static const int tc_pad = 8;

// Rows row0 .. row0 + 63 of one head's slice (row r at src + r * row_stride,
// D wide) into tile, 8 values (16 bytes) a copy; rows at or past n_rows read as
// zero. src and row_stride keep every row 16-byte aligned (tc_check_aligned).
template <typename T, int D>
__device__ static void load_rows(T (*tile)[D + tc_pad], const T *src, int row0, int n_rows, int row_stride) {
    const int pieces = D / 8;   // 16-byte pieces of a row
    for (int e = threadIdx.x; e < tc_rows * pieces; e += blockDim.x) {
        int r = e / pieces, d = 8 * (e % pieces), row = row0 + r;
        if (row < n_rows) {
            copy16(&tile[r][d], src + (size_t)row * row_stride + d);
        } else {
            for (int c = 0; c < 8; c++) tile[r][d + c] = from_float<T>(0.0f);
        }
    }
}

// The warp's 16 rows row0 .. row0 + 15 of tile as A fragments, a[k] its columns 16k .. 16k + 15.
template <typename T, int D>
__device__ static void load_a_fragments(uint32_t a[D / 16][4], T (*tile)[D + tc_pad], int row0) {
    int lane = threadIdx.x % 32;
    // matrices 0..3: (rows 0-7, columns 0-7), (rows 8-15, 0-7), (rows 0-7, 8-15), (rows 8-15, 8-15)
    int row = row0 + lane % 8 + 8 * (lane / 8 % 2), col = 8 * (lane / 16);
    #pragma unroll
    for (int k = 0; k < D / 16; k++) ldmatrix_x4(a[k], &tile[row][16 * k + col]);
}

// c = A tile[row0 .. row0 + N - 1]^T: A the warp's 16 x D rows (fragments a),
// tile rows D wide; c is 16 x N (c[n]: tile rows row0 + 8n .. row0 + 8n + 7).
// Each tile row is a column of B.
template <typename T, int D, int N>
__device__ static void mma_rows_transposed(float c[N / 8][4], const uint32_t a[D / 16][4], T (*tile)[D + tc_pad],
                                           int row0) {
    int lane = threadIdx.x % 32;
    // matrices 0..3: (tile rows 0-7, columns 0-7), (rows 0-7, 8-15), (rows 8-15, 0-7), (rows 8-15, 8-15):
    // b[0], b[1] of tile rows 0-7 and of rows 8-15
    int row = row0 + lane % 8 + 8 * (lane / 16), col = 8 * (lane / 8 % 2);
    #pragma unroll
    for (int n = 0; n < N / 8; n++)
        for (int e = 0; e < 4; e++) c[n][e] = 0.0f;
    #pragma unroll
    for (int n2 = 0; n2 < N / 16; n2++) {
        #pragma unroll
        for (int k = 0; k < D / 16; k++) {
            uint32_t b[4];
            ldmatrix_x4(b, &tile[16 * n2 + row][16 * k + col]);
            mma_m16n8k16<T>(c[2 * n2], a[k], b);
            mma_m16n8k16<T>(c[2 * n2 + 1], a[k], b + 2);
        }
    }
}

// c += A tile[row0 .. row0 + K - 1]: A the warp's 16 x K (fragments a, a[k]
// its columns 16k .. 16k + 15), the tile rows the k dimension; c is 16 x D
// (c[n]: columns 8n .. 8n + 7).
template <typename T, int D, int K>
__device__ static void mma_rows(float c[D / 8][4], const uint32_t a[K / 16][4], T (*tile)[D + tc_pad], int row0) {
    int lane = threadIdx.x % 32;
    // .trans matrices 0..3: (tile rows 0-7, columns 0-7), (rows 8-15, 0-7), (rows 0-7, 8-15), (rows 8-15, 8-15):
    // b[0], b[1] of columns 0-7 and of columns 8-15
    int row = row0 + lane % 8 + 8 * (lane / 8 % 2), col = 8 * (lane / 16);
    #pragma unroll
    for (int k = 0; k < K / 16; k++) {
        #pragma unroll
        for (int n2 = 0; n2 < D / 16; n2++) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, &tile[16 * k + row][16 * n2 + col]);
            mma_m16n8k16<T>(c[2 * n2], a[k], b);
            mma_m16n8k16<T>(c[2 * n2 + 1], a[k], b + 2);
        }
    }
}

// The warp's 16 x N C fragments rounded to T as A fragments (columns 16k .. 16k + 15 in a[k]).
template <typename T, int N>
__device__ static void c_to_a_fragments(uint32_t a[N / 16][4], const float c[N / 8][4]) {
    #pragma unroll
    for (int k = 0; k < N / 16; k++) {
        a[k][0] = pack_pair<T>(c[2 * k][0], c[2 * k][1]);
        a[k][1] = pack_pair<T>(c[2 * k][2], c[2 * k][3]);
        a[k][2] = pack_pair<T>(c[2 * k + 1][0], c[2 * k + 1][1]);
        a[k][3] = pack_pair<T>(c[2 * k + 1][2], c[2 * k + 1][3]);
    }
}

// The sum (max) of v over the 4 lanes that hold one row of a C fragment.
__device__ static float row_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ static float row_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// The first key any query of the block sees, rounded down to a tile: the key
// tiles before it are skipped (0 without packed samples). first: this thread's
// two rows' first keys. Every thread must call it; it ends with a barrier.
__device__ static int first_key_tile(const int first[2]) {
    __shared__ int warp_first[tc_threads / 32];
    int lowest = min(first[0], first[1]);
    for (int offset = 16; offset > 0; offset /= 2) lowest = min(lowest, __shfl_xor_sync(0xffffffffu, lowest, offset));
    if (threadIdx.x % 32 == 0) warp_first[threadIdx.x / 32] = lowest;
    __syncthreads();
    for (int w = 0; w < tc_threads / 32; w++) lowest = min(lowest, warp_first[w]);
    return lowest / tc_rows * tc_rows;
}

// Whether query i (first key `first`) sees key j: first <= j <= i < seq_len.
__device__ static bool sees(int i, int first, int j, int seq_len) { return i < seq_len && first <= j && j <= i; }

// One block per (64 query rows, query head h, sequence s); see the top of the file.
template <typename T, int D>
__global__ static void flash_tc_forward_kernel(T *out, float *lse, const T *q, const T *k, const T *v,
                                               const int *positions, int seq_len, int n_heads, int n_kv_heads,
                                               float scale) {
    __shared__ __align__(16) T k_tile[tc_rows][D + tc_pad];
    __shared__ __align__(16) T v_tile[tc_rows][D + tc_pad];
    int h = blockIdx.y, s = blockIdx.z, g = h / (n_heads / n_kv_heads);
    int q_stride = n_heads * D, kv_stride = n_kv_heads * D;
    const T *q_head = q + (size_t)s * seq_len * q_stride + (size_t)h * D;
    const T *k_head = k + (size_t)s * seq_len * kv_stride + (size_t)g * D;
    const T *v_head = v + (size_t)s * seq_len * kv_stride + (size_t)g * D;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, t = lane % 4;
    int i0 = blockIdx.x * tc_rows;
    // this thread's two query rows (group and group + 8 of its warp's 16) and their first keys
    // (rows past the sequence: none, seq_len)
    int rows[2], first[2];
    for (int r = 0; r < 2; r++) {
        rows[r] = i0 + 16 * warp + group + 8 * r;
        first[r] = rows[r] < seq_len ? attention_first_key_gpu(positions, s, seq_len, rows[r]) : seq_len;
    }

    // Q_b into registers, through k_tile
    load_rows<T, D>(k_tile, q_head, i0, seq_len, q_stride);
    int key_begin = first_key_tile(first);   // (its barrier also orders the loads above)
    uint32_t q_frag[D / 16][4];
    load_a_fragments<T, D>(q_frag, k_tile, 16 * warp);
    float o[D / 8][4];
    #pragma unroll
    for (int n = 0; n < D / 8; n++)
        for (int e = 0; e < 4; e++) o[n][e] = 0.0f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
    // causal: no query of this block sees a key past its last row
    int key_end = min(seq_len, i0 + tc_rows);
    for (int j0 = key_begin; j0 < key_end; j0 += tc_rows) {
        __syncthreads();   // everyone is done with the previous tiles (and with Q_b in k_tile)
        load_rows<T, D>(k_tile, k_head, j0, seq_len, kv_stride);
        load_rows<T, D>(v_tile, v_head, j0, seq_len, kv_stride);
        __syncthreads();
        float scores[8][4];
        mma_rows_transposed<T, D, tc_rows>(scores, q_frag, k_tile, 0);
        // s_ij = scale q_i . k_j where query i sees key j, else -inf
        #pragma unroll
        for (int n = 0; n < 8; n++)
            for (int e = 0; e < 4; e++) {
                int r = e / 2, j = j0 + 8 * n + 2 * t + e % 2;
                scores[n][e] = sees(rows[r], first[r], j, seq_len) ? scale * scores[n][e] : -INFINITY;
            }
        for (int r = 0; r < 2; r++) {
            float tile_max = -INFINITY;
            for (int n = 0; n < 8; n++) tile_max = fmaxf(tile_max, fmaxf(scores[n][2 * r], scores[n][2 * r + 1]));
            float new_max = fmaxf(row_max[r], row_quad_max(tile_max));
            // a row with no key yet (past the sequence) keeps zeros instead of exp(-inf + inf)
            float base = new_max == -INFINITY ? 0.0f : new_max;
            // rescale what was summed against the old max: exp(m - m')
            float correction = expf(row_max[r] - base);
            float tile_sum = 0.0f;
            for (int n = 0; n < 8; n++)
                for (int c = 0; c < 2; c++) {
                    // p_ij = exp(s_ij - m')
                    scores[n][2 * r + c] = expf(scores[n][2 * r + c] - base);
                    tile_sum += scores[n][2 * r + c];
                }
            row_sum[r] = row_sum[r] * correction + row_quad_sum(tile_sum);
            row_max[r] = new_max;
            for (int n = 0; n < D / 8; n++) {
                o[n][2 * r] *= correction;
                o[n][2 * r + 1] *= correction;
            }
        }
        // O += P V_j
        uint32_t p[4][4];
        c_to_a_fragments<T, tc_rows>(p, scores);
        mma_rows<T, D, tc_rows>(o, p, v_tile, 0);
    }
    for (int r = 0; r < 2; r++) {
        int i = rows[r];
        if (i >= seq_len) continue;
        T *out_row = out + ((size_t)s * seq_len + i) * q_stride + (size_t)h * D;
        // out_i = O_i / l_i
        for (int n = 0; n < D / 8; n++)
            for (int c = 0; c < 2; c++) out_row[8 * n + 2 * t + c] = from_float<T>(o[n][2 * r + c] / row_sum[r]);
        // lse_i = m_i + log l_i
        if (t == 0) lse[((size_t)s * n_heads + h) * seq_len + i] = row_max[r] + logf(row_sum[r]);
    }
}

// One block per (64 keys, kv head g, sequence s): dK and dV of its keys,
// summed over g's query heads and the query tiles that see them.
template <typename T, int D>
__global__ static void flash_tc_backward_kv_kernel(T *d_k, T *d_v, const T *d_out, const float *lse,
                                                   const float *delta, const T *q, const T *k, const T *v,
                                                   const int *positions, int seq_len, int n_heads, int n_kv_heads,
                                                   float scale) {
    __shared__ __align__(16) T q_tile[tc_rows][D + tc_pad];
    __shared__ __align__(16) T dy_tile[tc_rows][D + tc_pad];
    __shared__ float lse_tile[tc_rows], delta_tile[tc_rows];
    __shared__ int first_tile[tc_rows];   // each query's first key
    int g = blockIdx.y, s = blockIdx.z, group_size = n_heads / n_kv_heads;
    int q_stride = n_heads * D, kv_stride = n_kv_heads * D;
    const T *k_head = k + (size_t)s * seq_len * kv_stride + (size_t)g * D;
    const T *v_head = v + (size_t)s * seq_len * kv_stride + (size_t)g * D;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, t = lane % 4;
    int j0 = blockIdx.x * tc_rows;
    int keys[2] = {j0 + 16 * warp + group, j0 + 16 * warp + group + 8};   // this thread's two key rows

    // the warp's 16 rows of K and V into registers, through q_tile and dy_tile
    load_rows<T, D>(q_tile, k_head, j0, seq_len, kv_stride);
    load_rows<T, D>(dy_tile, v_head, j0, seq_len, kv_stride);
    __syncthreads();
    uint32_t k_frag[D / 16][4], v_frag[D / 16][4];
    load_a_fragments<T, D>(k_frag, q_tile, 16 * warp);
    load_a_fragments<T, D>(v_frag, dy_tile, 16 * warp);
    float dk[D / 8][4], dv[D / 8][4];
    #pragma unroll
    for (int n = 0; n < D / 8; n++)
        for (int e = 0; e < 4; e++) dk[n][e] = dv[n][e] = 0.0f;
    for (int h = g * group_size; h < (g + 1) * group_size; h++) {
        const T *q_head = q + (size_t)s * seq_len * q_stride + (size_t)h * D;
        const T *dy_head = d_out + (size_t)s * seq_len * q_stride + (size_t)h * D;
        const float *lse_head = lse + ((size_t)s * n_heads + h) * seq_len;
        const float *delta_head = delta + ((size_t)s * n_heads + h) * seq_len;
        // causal: queries before j0 never see these keys
        for (int i0 = j0; i0 < seq_len; i0 += tc_rows) {
            __syncthreads();   // everyone is done with the previous tiles (and with K, V in them)
            for (int e = threadIdx.x; e < tc_rows; e += blockDim.x) {
                int i = i0 + e;
                lse_tile[e] = i < seq_len ? lse_head[i] : 0.0f;
                delta_tile[e] = i < seq_len ? delta_head[i] : 0.0f;
                first_tile[e] = i < seq_len ? attention_first_key_gpu(positions, s, seq_len, i) : seq_len;
            }
            __syncthreads();
            // packed samples: a tile whose queries all start after these keys adds nothing
            int tile_first = seq_len;
            for (int e = 0; e < tc_rows; e++) tile_first = min(tile_first, first_tile[e]);
            if (tile_first >= j0 + tc_rows) continue;
            load_rows<T, D>(q_tile, q_head, i0, seq_len, q_stride);
            load_rows<T, D>(dy_tile, dy_head, i0, seq_len, q_stride);
            __syncthreads();
            // the tile's queries in two halves of 32: fewer registers live (head_dim 128 spilled 320 bytes at 64)
            for (int half = 0; half < tc_rows; half += tc_half) {
                // transposed: p[n][e] for key keys[e / 2], query i0 + half + 8n + 2t + e % 2
                float p[tc_half / 8][4], ds[tc_half / 8][4];
                mma_rows_transposed<T, D, tc_half>(p, k_frag, q_tile, half);    // k_j . q_i
                mma_rows_transposed<T, D, tc_half>(ds, v_frag, dy_tile, half);  // dp_ij = v_j . dO_i
                #pragma unroll
                for (int n = 0; n < tc_half / 8; n++)
                    for (int e = 0; e < 4; e++) {
                        int ii = half + 8 * n + 2 * t + e % 2;
                        bool seen = sees(i0 + ii, first_tile[ii], keys[e / 2], seq_len);
                        // p_ij = exp(scale q_i . k_j - lse_i), ds_ij = p_ij (dp_ij - delta_i); 0 where i does not see j
                        p[n][e] = seen ? expf(scale * p[n][e] - lse_tile[ii]) : 0.0f;
                        ds[n][e] = seen ? p[n][e] * (ds[n][e] - delta_tile[ii]) : 0.0f;
                    }
                // dV += P^T dO, dK += dS^T Q (times scale at the end)
                uint32_t a[tc_half / 16][4];
                c_to_a_fragments<T, tc_half>(a, p);
                mma_rows<T, D, tc_half>(dv, a, dy_tile, half);
                c_to_a_fragments<T, tc_half>(a, ds);
                mma_rows<T, D, tc_half>(dk, a, q_tile, half);
            }
        }
    }
    for (int r = 0; r < 2; r++) {
        int j = keys[r];
        if (j >= seq_len) continue;
        size_t offset = ((size_t)s * seq_len + j) * kv_stride + (size_t)g * D;
        for (int n = 0; n < D / 8; n++)
            for (int c = 0; c < 2; c++) {
                d_k[offset + 8 * n + 2 * t + c] = from_float<T>(scale * dk[n][2 * r + c]);
                d_v[offset + 8 * n + 2 * t + c] = from_float<T>(dv[n][2 * r + c]);
            }
    }
}

// One block per (64 query rows, query head h, sequence s): dQ of its queries,
// summed over the key tiles they see, with P and dS recomputed as above.
template <typename T, int D>
__global__ static void flash_tc_backward_q_kernel(T *d_q, const T *d_out, const float *lse, const float *delta,
                                                  const T *q, const T *k, const T *v, const int *positions,
                                                  int seq_len, int n_heads, int n_kv_heads, float scale) {
    __shared__ __align__(16) T k_tile[tc_rows][D + tc_pad];
    __shared__ __align__(16) T v_tile[tc_rows][D + tc_pad];
    int h = blockIdx.y, s = blockIdx.z, g = h / (n_heads / n_kv_heads);
    int q_stride = n_heads * D, kv_stride = n_kv_heads * D;
    const T *q_head = q + (size_t)s * seq_len * q_stride + (size_t)h * D;
    const T *dy_head = d_out + (size_t)s * seq_len * q_stride + (size_t)h * D;
    const T *k_head = k + (size_t)s * seq_len * kv_stride + (size_t)g * D;
    const T *v_head = v + (size_t)s * seq_len * kv_stride + (size_t)g * D;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, t = lane % 4;
    int i0 = blockIdx.x * tc_rows;
    int rows[2], first[2];
    float row_lse[2], row_delta[2];
    for (int r = 0; r < 2; r++) {
        rows[r] = i0 + 16 * warp + group + 8 * r;
        bool valid = rows[r] < seq_len;
        size_t stats = ((size_t)s * n_heads + h) * seq_len + rows[r];
        first[r] = valid ? attention_first_key_gpu(positions, s, seq_len, rows[r]) : seq_len;
        row_lse[r] = valid ? lse[stats] : 0.0f;
        row_delta[r] = valid ? delta[stats] : 0.0f;
    }

    // the warp's 16 rows of Q and dO into registers, through k_tile and v_tile
    load_rows<T, D>(k_tile, q_head, i0, seq_len, q_stride);
    load_rows<T, D>(v_tile, dy_head, i0, seq_len, q_stride);
    int key_begin = first_key_tile(first);   // (its barrier also orders the loads above)
    uint32_t q_frag[D / 16][4], dy_frag[D / 16][4];
    load_a_fragments<T, D>(q_frag, k_tile, 16 * warp);
    load_a_fragments<T, D>(dy_frag, v_tile, 16 * warp);
    float dq[D / 8][4];
    #pragma unroll
    for (int n = 0; n < D / 8; n++)
        for (int e = 0; e < 4; e++) dq[n][e] = 0.0f;
    int key_end = min(seq_len, i0 + tc_rows);
    for (int j0 = key_begin; j0 < key_end; j0 += tc_rows) {
        __syncthreads();   // everyone is done with the previous tiles (and with Q, dO in them)
        load_rows<T, D>(k_tile, k_head, j0, seq_len, kv_stride);
        load_rows<T, D>(v_tile, v_head, j0, seq_len, kv_stride);
        __syncthreads();
        float ds[8][4], dp[8][4];
        mma_rows_transposed<T, D, tc_rows>(ds, q_frag, k_tile, 0);    // q_i . k_j
        mma_rows_transposed<T, D, tc_rows>(dp, dy_frag, v_tile, 0);   // dp_ij = dO_i . v_j
        #pragma unroll
        for (int n = 0; n < 8; n++)
            for (int e = 0; e < 4; e++) {
                int r = e / 2, j = j0 + 8 * n + 2 * t + e % 2;
                // p_ij = exp(scale q_i . k_j - lse_i), ds_ij = p_ij (dp_ij - delta_i); 0 where i does not see j
                float p = expf(scale * ds[n][e] - row_lse[r]);
                ds[n][e] = sees(rows[r], first[r], j, seq_len) ? p * (dp[n][e] - row_delta[r]) : 0.0f;
            }
        // dQ += dS K_j (times scale at the end)
        uint32_t a[4][4];
        c_to_a_fragments<T, tc_rows>(a, ds);
        mma_rows<T, D, tc_rows>(dq, a, k_tile, 0);
    }
    for (int r = 0; r < 2; r++) {
        int i = rows[r];
        if (i >= seq_len) continue;
        T *dq_row = d_q + ((size_t)s * seq_len + i) * q_stride + (size_t)h * D;
        for (int n = 0; n < D / 8; n++)
            for (int c = 0; c < 2; c++) dq_row[8 * n + 2 * t + c] = from_float<T>(scale * dq[n][2 * r + c]);
    }
}

static unsigned tc_tiles(int seq_len) { return (unsigned)((seq_len + tc_rows - 1) / tc_rows); }

// The forward and the backward for one 16-bit type T and head dim D.
template <typename T, int D>
static void flash_tc_forward(T *out, float *lse, const T *q, const T *k, const T *v, const int *positions, int n_seqs,
                             int seq_len, int n_heads, int n_kv_heads) {
    float scale = 1.0f / sqrtf((float)D);
    dim3 grid(tc_tiles(seq_len), n_heads, n_seqs);
    flash_tc_forward_kernel<T, D><<<grid, tc_threads>>>(out, lse, q, k, v, positions, seq_len, n_heads, n_kv_heads,
                                                        scale);
    CUDA_CHECK_LAUNCH();
}

template <typename T, int D>
static void flash_tc_backward(T *d_q, T *d_k, T *d_v, const T *d_out, const float *lse, const T *q, const T *k,
                              const T *v, const int *positions, int n_seqs, int seq_len, int n_heads, int n_kv_heads,
                              const float *delta) {
    float scale = 1.0f / sqrtf((float)D);
    flash_tc_backward_kv_kernel<T, D><<<dim3(tc_tiles(seq_len), n_kv_heads, n_seqs), tc_threads>>>(
        d_k, d_v, d_out, lse, delta, q, k, v, positions, seq_len, n_heads, n_kv_heads, scale);
    CUDA_CHECK_LAUNCH();
    flash_tc_backward_q_kernel<T, D><<<dim3(tc_tiles(seq_len), n_heads, n_seqs), tc_threads>>>(
        d_q, d_out, lse, delta, q, k, v, positions, seq_len, n_heads, n_kv_heads, scale);
    CUDA_CHECK_LAUNCH();
}

int flash_attention_tc_handles(int head_dim) { return head_dim == 64 || head_dim == 128; }

// load_rows copies 16 bytes at a time: each tensor a kernel reads must start
// 16-byte aligned (gpu_malloc's are; its rows then are, head_dim being 64 or 128).
static void tc_check_aligned(const void *p, const char *what) {
    if ((uintptr_t)p % 16 == 0) return;
    fprintf(stderr, "attention: the tensor-core flash kernel needs %s 16-byte aligned, it is at %p\n", what, p);
    exit(1);
}

void flash_attention_tc_forward_gpu(act16 *out, float *lse, const act16 *q, const act16 *k, const act16 *v,
                                    const int *positions, int n_seqs, int seq_len, int n_heads, int n_kv_heads,
                                    int head_dim) {
    tc_check_aligned(q, "q");
    tc_check_aligned(k, "k");
    tc_check_aligned(v, "v");
    bool half = gpu_act16() == ACT16_FP16;
    if (half && head_dim == 64)
        flash_tc_forward<fp16, 64>(as_fp16(out), lse, as_fp16(q), as_fp16(k), as_fp16(v), positions, n_seqs, seq_len,
                                   n_heads, n_kv_heads);
    else if (half)
        flash_tc_forward<fp16, 128>(as_fp16(out), lse, as_fp16(q), as_fp16(k), as_fp16(v), positions, n_seqs,
                                    seq_len, n_heads, n_kv_heads);
    else if (head_dim == 64)
        flash_tc_forward<bf16, 64>(as_bf16(out), lse, as_bf16(q), as_bf16(k), as_bf16(v), positions, n_seqs, seq_len,
                                   n_heads, n_kv_heads);
    else
        flash_tc_forward<bf16, 128>(as_bf16(out), lse, as_bf16(q), as_bf16(k), as_bf16(v), positions, n_seqs,
                                    seq_len, n_heads, n_kv_heads);
}

void flash_attention_tc_backward_gpu(act16 *d_q, act16 *d_k, act16 *d_v, const act16 *d_out, const act16 *out,
                                     const float *lse, const act16 *q, const act16 *k, const act16 *v,
                                     const int *positions, int n_seqs, int seq_len, int n_heads, int n_kv_heads,
                                     int head_dim, float *delta) {
    tc_check_aligned(q, "q");
    tc_check_aligned(k, "k");
    tc_check_aligned(v, "v");
    tc_check_aligned(d_out, "d_out");
    attention_delta_gpu(delta, d_out, out, n_seqs, seq_len, n_heads, head_dim);
    bool half = gpu_act16() == ACT16_FP16;
    if (half && head_dim == 64)
        flash_tc_backward<fp16, 64>(as_fp16(d_q), as_fp16(d_k), as_fp16(d_v), as_fp16(d_out), lse, as_fp16(q),
                                    as_fp16(k), as_fp16(v), positions, n_seqs, seq_len, n_heads, n_kv_heads, delta);
    else if (half)
        flash_tc_backward<fp16, 128>(as_fp16(d_q), as_fp16(d_k), as_fp16(d_v), as_fp16(d_out), lse, as_fp16(q),
                                     as_fp16(k), as_fp16(v), positions, n_seqs, seq_len, n_heads, n_kv_heads, delta);
    else if (head_dim == 64)
        flash_tc_backward<bf16, 64>(as_bf16(d_q), as_bf16(d_k), as_bf16(d_v), as_bf16(d_out), lse, as_bf16(q),
                                    as_bf16(k), as_bf16(v), positions, n_seqs, seq_len, n_heads, n_kv_heads, delta);
    else
        flash_tc_backward<bf16, 128>(as_bf16(d_q), as_bf16(d_k), as_bf16(d_v), as_bf16(d_out), lse, as_bf16(q),
                                     as_bf16(k), as_bf16(v), positions, n_seqs, seq_len, n_heads, n_kv_heads, delta);
}
#endif
