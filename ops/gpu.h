// ops/gpu.h: what every CUDA file shares: error checks that name the failing call,
// the cuBLAS handle and the GEMMs through it, device allocations that keep a
// high-water mark (so the trainer can say where its GPU memory went and what
// did not fit), copies, and the 16-bit types (bf16 or fp16) and their conversions.
//
// Built by nvcc only (every includer guards with #ifdef __CUDACC__), except
// gpu_available() and the device queries, which the CPU-only build also has
// and which say "no device", the 16-bit type's choice, and HOST_DEVICE.
#pragma once
#include <stddef.h>

// Marks a function that the CPU code and the kernels share (one copy of the
// formula for both): nvcc compiles it for both, g++ for the CPU only.
#ifdef __CUDACC__
#define HOST_DEVICE __host__ __device__
#else
#define HOST_DEVICE
#endif

#ifdef __cplusplus
extern "C" {
#endif
// 1 when a CUDA device can be used: built with nvcc and a device is present.
int gpu_available(void);
// The programs' --device: "cpu", "cuda", or "auto" (cuda when gpu_available()).
// 1 for cuda, 0 for cpu; -1 with why in err for another name, or for cuda
// without a device (none visible, or a build without nvcc).
int gpu_device_choose(const char *device, char *err, size_t err_size);
// The name of device 0 and its peak dense bf16 tensor-core FLOP/s (for MFU;
// 0 when unknown), or "none".
const char *gpu_device_name(void);
double gpu_peak_bf16_flops(void);
// Device 0's compute capability without the dot (75 for a T4's 7.5, 90 for an
// H100) and its memory in bytes; 0 without a device.
int gpu_compute_capability(void);
size_t gpu_total_memory(void);

// The 16-bit float type of everything the GEMMs read: the activations, the
// frozen weights (dequantized), the embedding table, the LoRA weights' copy.
// bf16 has fp32's range and 8 bits of precision, but GPUs before sm_80 have no
// bf16 tensor cores (cuBLAS refuses it there); fp16 has 11 bits of precision
// but a range of +-65504 (gradients need loss scaling: trainer/grad_scaler.h)
// and runs on every GPU from the T4 (sm_75) up. Chosen once at start
// (./train --precision); bf16 unless set.
typedef enum { ACT16_BF16, ACT16_FP16 } Act16Type;
void gpu_set_act16(Act16Type type);
Act16Type gpu_act16(void);
// Bytes of one value of that type (sizeof(act16) below), for the sizes that
// plain C code computes too (trainer/memory_plan.c).
#define ACT16_BYTES 2
#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

typedef __nv_bfloat16 bf16;
typedef __half fp16;

// A buffer of the chosen 16-bit type (gpu_act16): 16 bits that are bf16 or fp16.
// The kernels are templates on the real type; each launcher runs the instance
// for the chosen one, its pointers cast by as_bf16 / as_fp16.
typedef struct {
    unsigned short bits;
} act16;
static_assert(sizeof(act16) == ACT16_BYTES, "act16 is 16 bits");
static inline bf16 *as_bf16(act16 *p) { return (bf16 *)p; }
static inline const bf16 *as_bf16(const act16 *p) { return (const bf16 *)p; }
static inline fp16 *as_fp16(act16 *p) { return (fp16 *)p; }
static inline const fp16 *as_fp16(const act16 *p) { return (const fp16 *)p; }
// cuBLAS's name for the chosen type: CUDA_R_16BF or CUDA_R_16F.
cudaDataType gpu_act16_cuda_type(void);

// The conversions every kernel uses: to_float(x) for either type, from_float<T>(v)
// rounds v to the nearest T (ties to even).
__host__ __device__ static inline float to_float(bf16 x) { return __bfloat162float(x); }
__host__ __device__ static inline float to_float(fp16 x) { return __half2float(x); }
template <typename T> __host__ __device__ T from_float(float v);
template <> __host__ __device__ inline bf16 from_float<bf16>(float v) { return __float2bfloat16(v); }
template <> __host__ __device__ inline fp16 from_float<fp16>(float v) { return __float2half(v); }

// Aborts with the failing call, file and line when err is not success.
void cuda_check(cudaError_t err, const char *call, const char *file, int line);
void cublas_check(cublasStatus_t status, const char *call, const char *file, int line);
#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) cublas_check((call), #call, __FILE__, __LINE__)
// After a kernel launch: reports a bad launch configuration at once.
#define CUDA_CHECK_LAUNCH() cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

// The one cuBLAS handle (created on first use).
cublasHandle_t gpu_cublas(void);

// The GEMMs, every matrix row-major, inputs of the chosen 16-bit type, fp32
// accumulation, out of that type (out_type gpu_act16_cuda_type()) or fp32
// (CUDA_R_32F): op(a) is a [M, K] stored as is, or stored [K, M] when
// trans_a; op(b) [K, N] likewise.
// out[M, N] = alpha op(a) op(b) + beta out
void gemm_act16(void *out, cudaDataType out_type, const act16 *a, bool trans_a, const act16 *b, bool trans_b, int M,
                int N, int K, float alpha, float beta);
// The same with each matrix's row stride given (ld_out, ld_a, ld_b: elements from one
// row to the next, as stored), for column slices of wider matrices.
void gemm_act16_strided(void *out, cudaDataType out_type, int ld_out, const act16 *a, bool trans_a, int ld_a,
                        const act16 *b, bool trans_b, int ld_b, int M, int N, int K, float alpha, float beta);
// out_e = alpha op(a_e) op(b_e) + beta out_e for each entry e < batch, the matrices
// given by arrays of device pointers (in device memory) and their row strides
// (ld_a, ld_b, ld_out: elements from one row to the next, as stored).
void gemm_batched_act16(void *const *out, cudaDataType out_type, int ld_out, const void *const *a, bool trans_a,
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
// The number of gpu_malloc and gpu_malloc_managed calls so far: a training step
// makes none (its buffers and workspaces are sized when the trainer is created),
// which the tests check by this count.
size_t gpu_malloc_count(void);

// Managed memory (cudaMallocManaged; freed by gpu_free): on the GPU while
// kernels use it, but under memory pressure the driver pages it out to the
// host instead of failing an allocation. Not counted in gpu_bytes_in_use
// (the device may or may not hold it at a given moment); in gpu_managed_bytes.
void *gpu_malloc_managed(size_t bytes, const char *what);
size_t gpu_managed_bytes(void);
// Asks the driver to move managed memory to the GPU now (cudaMemPrefetchAsync on
// the default stream), rather than page fault by page fault when a kernel
// touches it. A no-op where the device cannot prefetch (no concurrent managed
// access, e.g. on Windows): there the pages move on demand.
void gpu_prefetch_to_device(const void *managed, size_t bytes);

// Host <-> device copies (synchronous).
void gpu_upload(void *device_dst, const void *host_src, size_t bytes);
void gpu_download(void *host_dst, const void *device_src, size_t bytes);
// Fills with 0xFF bytes: NaN as fp32, bf16 and fp16, so a kernel that leaves an
// output unwritten fails its test.
void gpu_poison(void *p, size_t bytes);

// On the host: v rounded to the chosen 16-bit type and back (what a kernel's input holds).
float act16_round(float v);
// n floats on the host -> a new device buffer of the chosen 16-bit type (rounded to nearest even).
act16 *gpu_upload_as_act16(const float *host, size_t n, const char *what);
// n values of the chosen 16-bit type on the device -> floats on the host.
void gpu_download_act16(float *host, const act16 *device, size_t n);
// On the device: out[i] = act16(in[i]) and out[i] = float(in[i]).
void float_to_act16_gpu(act16 *out, const float *in, size_t n);
void act16_to_float_gpu(float *out, const act16 *in, size_t n);

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
