// gpu.h: what every CUDA file shares: error checks that name the failing call,
// the cuBLAS handle, device allocations that keep a high-water mark (so the
// trainer can say where its GPU memory went and what did not fit), copies,
// and bf16 conversions.
//
// Built by nvcc only (every includer guards with #ifdef __CUDACC__), except
// gpu_available(), which the CPU-only build also has and which says "no".
#pragma once
#include <stddef.h>

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
#endif
