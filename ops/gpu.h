// ops/gpu.h: what every CUDA file shares: error checks that name the failing call,
// the cuBLAS handle and the GEMMs through it, device allocations that keep a
// high-water mark (so the trainer can say where its GPU memory went and what
// did not fit), copies, and bf16 conversions.
//
// Built by nvcc only (every includer guards with #ifdef __CUDACC__), except
// gpu_available(), which the CPU-only build also has and which says "no", and
// HOST_DEVICE.
#pragma once
#include <stddef.h>

// Marks a function that the CPU code and the kernels share (one copy of the
// formula for both): nvcc compiles it for both, g++ for the CPU only.
#ifdef __CUDACC__
#define HOST_DEVICE __host__ __device__
#else
#define HOST_DEVICE
#endif

// 1 when a CUDA device can be used: built with nvcc and a device is present.
int gpu_available(void);
// The name of device 0 and its peak dense bf16 tensor-core FLOP/s (for MFU;
// 0 when unknown), or "none".
const char *gpu_device_name(void);
double gpu_peak_bf16_flops(void);

#ifdef __CUDACC__
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>

typedef __nv_bfloat16 bf16;

// Aborts with the failing call, file and line when err is not success.
void cuda_check(cudaError_t err, const char *call, const char *file, int line);
void cublas_check(cublasStatus_t status, const char *call, const char *file, int line);
#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) cublas_check((call), #call, __FILE__, __LINE__)
// After a kernel launch: reports a bad launch configuration at once.
#define CUDA_CHECK_LAUNCH() cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

// The one cuBLAS handle (created on first use).
cublasHandle_t gpu_cublas(void);

// The GEMMs, every matrix row-major, bf16 inputs, fp32 accumulation, out bf16
// or fp32 (out_type): op(a) is a [M, K] stored as is, or stored [K, M] when
// trans_a; op(b) [K, N] likewise.
// out[M, N] = alpha op(a) op(b) + beta out
void gemm_bf16(void *out, cudaDataType out_type, const bf16 *a, bool trans_a, const bf16 *b, bool trans_b, int M,
               int N, int K, float alpha, float beta);
// out_e = alpha op(a_e) op(b_e) + beta out_e for each entry e < batch, the matrices
// given by arrays of device pointers (in device memory) and their row strides
// (ld_a, ld_b, ld_out: elements from one row to the next, as stored).
void gemm_batched_bf16(void *const *out, cudaDataType out_type, int ld_out, const void *const *a, bool trans_a,
                       int ld_a, const void *const *b, bool trans_b, int ld_b, int M, int N, int K, float alpha,
                       float beta, int batch);

// cudaMalloc with bookkeeping. `what` names the buffer for the out-of-memory
// message, which also says how much was in use, how much the device has free,
// and which options lower the need; then the program exits with status 3.
void *gpu_malloc(size_t bytes, const char *what);
void gpu_free(void *p);
// Bytes allocated through gpu_malloc now, and the most ever at once.
size_t gpu_bytes_in_use(void);
size_t gpu_peak_bytes(void);

// Host <-> device copies (synchronous).
void gpu_upload(void *device_dst, const void *host_src, size_t bytes);
void gpu_download(void *host_dst, const void *device_src, size_t bytes);
// Fills with 0xFF bytes: NaN as fp32 and as bf16, so a kernel that leaves an
// output unwritten fails its test.
void gpu_poison(void *p, size_t bytes);

// n floats on the host -> a new bf16 device buffer (rounded to nearest even).
bf16 *gpu_upload_as_bf16(const float *host, size_t n, const char *what);
// n bf16 values on the device -> floats on the host.
void gpu_download_bf16(float *host, const bf16 *device, size_t n);
// On the device: out[i] = bf16(in[i]) and out[i] = float(in[i]).
void float_to_bf16_gpu(bf16 *out, const float *in, size_t n);
void bf16_to_float_gpu(float *out, const bf16 *in, size_t n);

// ---- reductions inside a kernel (each .cu file gets its own copy) ----
// The sum (max; fmaxf, which skips NaN) of v over the 32 lanes of a warp, in every lane.
__device__ static inline float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}
__device__ static inline float warp_max(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// The sum (max) of v over the whole block, in every thread: each warp reduces,
// then every thread adds up the warp results in warp order. blockDim.x a
// multiple of 32, at most 1024; every thread of the block must call it.
__device__ static inline float block_sum(float v) {
    __shared__ float warp_totals[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();   // an earlier call has finished reading warp_totals
    if (lane == 0) warp_totals[warp] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < n_warps; w++) total += warp_totals[w];
    return total;
}
__device__ static inline float block_max(float v) {
    __shared__ float warp_maxima[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();   // an earlier call has finished reading warp_maxima
    if (lane == 0) warp_maxima[warp] = v;
    __syncthreads();
    float result = -INFINITY;
    for (int w = 0; w < n_warps; w++) result = fmaxf(result, warp_maxima[w]);
    return result;
}
#endif
