// ops/gpu.cu: CUDA error checks, device queries, the cuBLAS handle and the GEMMs through it, tracked
// allocations, copies, the 16-bit type's choice and conversions.
#include "ops/gpu.h"
#include "formats/tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static Act16Type g_act16 = ACT16_BF16;
void gpu_set_act16(Act16Type type) { g_act16 = type; }
Act16Type gpu_act16(void) { return g_act16; }

int gpu_device_choose(const char *device, char *err, size_t err_size) {
    if (strcmp(device, "auto") == 0) return gpu_available();
    if (strcmp(device, "cpu") == 0) return 0;
    if (strcmp(device, "cuda") != 0) {
        snprintf(err, err_size, "--device expects cpu, cuda or auto, got %s", device);
        return -1;
    }
    if (gpu_available()) return 1;
    snprintf(err, err_size, "--device cuda: %s; use --device cpu",
             strcmp(gpu_device_name(), "none") == 0 ? "no CUDA device is visible"
                                                    : "this build has no CUDA (nvcc was not found at build time)");
    return -1;
}

#ifndef __CUDACC__
int gpu_available(void) { return 0; }
const char *gpu_device_name(void) { return "none (built without CUDA)"; }
double gpu_peak_bf16_flops(void) { return 0.0; }
int gpu_compute_capability(void) { return 0; }
size_t gpu_total_memory(void) { return 0; }
#else

int gpu_available(void) {
    static int known = -1;
    if (known < 0) {
        int count = 0;
        known = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
        cudaGetLastError();   // clear the "no device" error so later checks don't see it
    }
    return known;
}

const char *gpu_device_name(void) {
    static char name[256] = "";
    if (!gpu_available()) return "none";
    if (!name[0]) {
        cudaDeviceProp p;
        CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
        snprintf(name, sizeof name, "%s", p.name);
    }
    return name;
}

int gpu_compute_capability(void) {
    if (!gpu_available()) return 0;
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
    return 10 * p.major + p.minor;
}

size_t gpu_total_memory(void) {
    if (!gpu_available()) return 0;
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
    return p.totalGlobalMem;
}

cudaDataType gpu_act16_cuda_type(void) { return g_act16 == ACT16_FP16 ? CUDA_R_16F : CUDA_R_16BF; }

// Dense bf16 tensor-core peaks from NVIDIA's data sheets (no sparsity).
double gpu_peak_bf16_flops(void) {
    const char *name = gpu_device_name();
    if (strstr(name, "H100") && strstr(name, "PCIe")) return 756e12;
    if (strstr(name, "H100") || strstr(name, "H200") || strstr(name, "GH200")) return 989e12;
    if (strstr(name, "A100")) return 312e12;
    if (strstr(name, "L40S")) return 362e12;
    if (strstr(name, "4090")) return 165e12;
    return 0.0;
}

void cuda_check(cudaError_t err, const char *call, const char *file, int line) {
    if (err == cudaSuccess) return;
    fprintf(stderr, "CUDA error at %s:%d: %s\n  in: %s\n", file, line, cudaGetErrorString(err), call);
    exit(1);
}

void cublas_check(cublasStatus_t status, const char *call, const char *file, int line) {
    if (status == CUBLAS_STATUS_SUCCESS) return;
    fprintf(stderr, "cuBLAS error %d at %s:%d\n  in: %s\n", (int)status, file, line, call);
    exit(1);
}

cublasHandle_t gpu_cublas(void) {
    static cublasHandle_t handle = NULL;
    if (!handle) CUBLAS_CHECK(cublasCreate(&handle));
    return handle;
}

// ---- GEMMs through cuBLAS ------------------------------------------------------
// cuBLAS is column-major, where a row-major [rows, cols] buffer reads as its
// transpose (leading dimension cols). So for the row-major out = op(a) op(b) it
// computes out^T = op(b)^T op(a)^T: b first, each with the op it has here.

static cublasOperation_t op(bool transpose) { return transpose ? CUBLAS_OP_T : CUBLAS_OP_N; }

void gemm_act16_strided(void *out, cudaDataType out_type, int ld_out, const act16 *a, bool trans_a, int ld_a,
                        const act16 *b, bool trans_b, int ld_b, int M, int N, int K, float alpha, float beta) {
    cudaDataType in_type = gpu_act16_cuda_type();
    CUBLAS_CHECK(cublasGemmEx(gpu_cublas(), op(trans_b), op(trans_a), N, M, K, &alpha, b, in_type, ld_b, a, in_type,
                              ld_a, &beta, out, out_type, ld_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void gemm_act16(void *out, cudaDataType out_type, const act16 *a, bool trans_a, const act16 *b, bool trans_b, int M,
                int N, int K, float alpha, float beta) {
    int ld_a = trans_a ? M : K;   // the row length of a as stored
    int ld_b = trans_b ? K : N;   // the row length of b as stored
    gemm_act16_strided(out, out_type, N, a, trans_a, ld_a, b, trans_b, ld_b, M, N, K, alpha, beta);
}

void gemm_batched_act16(void *const *out, cudaDataType out_type, int ld_out, const void *const *a, bool trans_a,
                        int ld_a, const void *const *b, bool trans_b, int ld_b, int M, int N, int K, float alpha,
                        float beta, int batch) {
    cudaDataType in_type = gpu_act16_cuda_type();
    CUBLAS_CHECK(cublasGemmBatchedEx(gpu_cublas(), op(trans_b), op(trans_a), N, M, K, &alpha, b, in_type, ld_b, a,
                                     in_type, ld_a, &beta, out, out_type, ld_out, batch, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
}

// ---- tracked allocations ----------------------------------------------------
// Each allocation carries its size in a small table so gpu_free can subtract it.
typedef struct {
    void *ptr;
    size_t bytes;
    int managed;   // cudaMallocManaged: counted in g_managed, not g_in_use
} Allocation;
static Allocation *g_allocs;
static size_t g_n_allocs, g_cap_allocs;
static size_t g_in_use, g_peak, g_managed;
static size_t g_malloc_count;   // calls of gpu_malloc and gpu_malloc_managed

static void track(void *p, size_t bytes, int managed) {
    g_malloc_count++;
    if (g_n_allocs == g_cap_allocs) {
        g_cap_allocs = g_cap_allocs ? 2 * g_cap_allocs : 256;
        g_allocs = (Allocation *)realloc(g_allocs, g_cap_allocs * sizeof(Allocation));
        if (!g_allocs) { fprintf(stderr, "out of host memory\n"); exit(1); }
    }
    g_allocs[g_n_allocs].ptr = p;
    g_allocs[g_n_allocs].bytes = bytes;
    g_allocs[g_n_allocs].managed = managed;
    g_n_allocs++;
    if (managed) {
        g_managed += bytes;
        return;
    }
    g_in_use += bytes;
    if (g_in_use > g_peak) g_peak = g_in_use;
}

void *gpu_malloc(size_t bytes, const char *what) {
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes > 0 ? bytes : 1);
    if (err == cudaErrorMemoryAllocation) {
        size_t free_bytes = 0, total_bytes = 0;
        cudaGetLastError();
        cudaMemGetInfo(&free_bytes, &total_bytes);
        fprintf(stderr,
                "out of GPU memory: %s needs %.1f MiB, but only %.1f MiB of %.1f MiB are free "
                "(%.1f MiB held by this program).\n"
                "  Lower --batch or --seq, or use --recompute 1 (and --quant nf4) to need less.\n",
                what, bytes / 1048576.0, free_bytes / 1048576.0, total_bytes / 1048576.0, g_in_use / 1048576.0);
        exit(3);
    }
    cuda_check(err, what, __FILE__, __LINE__);
    track(p, bytes, 0);
    return p;
}

void *gpu_malloc_managed(size_t bytes, const char *what) {
    void *p = NULL;
    cudaError_t err = cudaMallocManaged(&p, bytes > 0 ? bytes : 1, cudaMemAttachGlobal);
    if (err == cudaErrorMemoryAllocation) {
        fprintf(stderr, "out of memory: %s needs %.1f MiB of managed memory (GPU memory the driver may page to the "
                        "host), and the host could not give it.\n", what, bytes / 1048576.0);
        exit(3);
    }
    cuda_check(err, what, __FILE__, __LINE__);
    track(p, bytes, 1);
    return p;
}

size_t gpu_managed_bytes(void) { return g_managed; }

void gpu_prefetch_to_device(const void *managed, size_t bytes) {
    static int can_prefetch = -1;
    int device = 0;
    if (can_prefetch < 0) {
        CUDA_CHECK(cudaGetDevice(&device));
        CUDA_CHECK(cudaDeviceGetAttribute(&can_prefetch, cudaDevAttrConcurrentManagedAccess, device));
    }
    if (!can_prefetch || bytes == 0) return;
    CUDA_CHECK(cudaGetDevice(&device));
#if CUDART_VERSION >= 13000
    // CUDA 13 names the destination by a location
    cudaMemLocation location = {};
    location.type = cudaMemLocationTypeDevice;
    location.id = device;
    CUDA_CHECK(cudaMemPrefetchAsync(managed, bytes, location, 0, 0));
#else
    CUDA_CHECK(cudaMemPrefetchAsync(managed, bytes, device, 0));
#endif
}

void gpu_free(void *p) {
    if (!p) return;
    for (size_t i = 0; i < g_n_allocs; i++) {
        if (g_allocs[i].ptr != p) continue;
        if (g_allocs[i].managed) g_managed -= g_allocs[i].bytes;
        else g_in_use -= g_allocs[i].bytes;
        g_allocs[i] = g_allocs[--g_n_allocs];
        break;
    }
    CUDA_CHECK(cudaFree(p));
}

size_t gpu_bytes_in_use(void) { return g_in_use; }
size_t gpu_peak_bytes(void) { return g_peak; }
size_t gpu_malloc_count(void) { return g_malloc_count; }

// ---- copies and conversions -------------------------------------------------
void gpu_upload(void *device_dst, const void *host_src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(device_dst, host_src, bytes, cudaMemcpyHostToDevice));
}

void gpu_download(void *host_dst, const void *device_src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost));
}

void gpu_poison(void *p, size_t bytes) { CUDA_CHECK(cudaMemset(p, 0xFF, bytes)); }

float act16_round(float v) {
    return g_act16 == ACT16_FP16 ? __half2float(__float2half(v)) : __bfloat162float(__float2bfloat16(v));
}

act16 *gpu_upload_as_act16(const float *host, size_t n, const char *what) {
    act16 *staging = (act16 *)cpu_malloc(sizeof(act16) * (n > 0 ? n : 1), "16-bit staging");
    for (size_t i = 0; i < n; i++) {
        if (g_act16 == ACT16_FP16) as_fp16(staging)[i] = __float2half(host[i]);
        else as_bf16(staging)[i] = __float2bfloat16(host[i]);
    }
    act16 *device = (act16 *)gpu_malloc(sizeof(act16) * n, what);
    gpu_upload(device, staging, sizeof(act16) * n);
    free(staging);
    return device;
}

void gpu_download_act16(float *host, const act16 *device, size_t n) {
    act16 *staging = (act16 *)cpu_malloc(sizeof(act16) * (n > 0 ? n : 1), "16-bit staging");
    gpu_download(staging, device, sizeof(act16) * n);
    for (size_t i = 0; i < n; i++)
        host[i] = g_act16 == ACT16_FP16 ? __half2float(as_fp16(staging)[i]) : __bfloat162float(as_bf16(staging)[i]);
    free(staging);
}

template <typename T>
__global__ static void float_to_act16_kernel(T *out, const float *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_float<T>(in[i]);
}

template <typename T>
__global__ static void act16_to_float_kernel(float *out, const T *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = to_float(in[i]);
}

void float_to_act16_gpu(act16 *out, const float *in, size_t n) {
    if (n == 0) return;
    unsigned blocks = (unsigned)((n + 255) / 256);
    if (g_act16 == ACT16_FP16) float_to_act16_kernel<fp16><<<blocks, 256>>>(as_fp16(out), in, n);
    else float_to_act16_kernel<bf16><<<blocks, 256>>>(as_bf16(out), in, n);
    CUDA_CHECK_LAUNCH();
}

void act16_to_float_gpu(float *out, const act16 *in, size_t n) {
    if (n == 0) return;
    unsigned blocks = (unsigned)((n + 255) / 256);
    if (g_act16 == ACT16_FP16) act16_to_float_kernel<fp16><<<blocks, 256>>>(out, as_fp16(in), n);
    else act16_to_float_kernel<bf16><<<blocks, 256>>>(out, as_bf16(in), n);
    CUDA_CHECK_LAUNCH();
}
#endif
