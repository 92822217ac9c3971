// ops/gpu.cu: CUDA error checks, the cuBLAS handle and the GEMMs through it, tracked allocations, copies.
#include "ops/gpu.h"
#include "formats/tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef __CUDACC__
int gpu_available(void) { return 0; }
const char *gpu_device_name(void) { return "none (built without CUDA)"; }
double gpu_peak_bf16_flops(void) { return 0.0; }
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

void gemm_bf16(void *out, cudaDataType out_type, const bf16 *a, bool trans_a, const bf16 *b, bool trans_b, int M,
               int N, int K, float alpha, float beta) {
    int ld_a = trans_a ? M : K;   // the row length of a as stored
    int ld_b = trans_b ? K : N;   // the row length of b as stored
    CUBLAS_CHECK(cublasGemmEx(gpu_cublas(), op(trans_b), op(trans_a), N, M, K, &alpha, b, CUDA_R_16BF, ld_b, a,
                              CUDA_R_16BF, ld_a, &beta, out, out_type, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void gemm_batched_bf16(void *const *out, cudaDataType out_type, int ld_out, const void *const *a, bool trans_a,
                       int ld_a, const void *const *b, bool trans_b, int ld_b, int M, int N, int K, float alpha,
                       float beta, int batch) {
    CUBLAS_CHECK(cublasGemmBatchedEx(gpu_cublas(), op(trans_b), op(trans_a), N, M, K, &alpha, b, CUDA_R_16BF, ld_b, a,
                                     CUDA_R_16BF, ld_a, &beta, out, out_type, ld_out, batch, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
}

// ---- tracked allocations ----------------------------------------------------
// Each allocation carries its size in a small table so gpu_free can subtract it.
typedef struct {
    void *ptr;
    size_t bytes;
} Allocation;
static Allocation *g_allocs;
static size_t g_n_allocs, g_cap_allocs;
static size_t g_in_use, g_peak;

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
    if (g_n_allocs == g_cap_allocs) {
        g_cap_allocs = g_cap_allocs ? 2 * g_cap_allocs : 256;
        g_allocs = (Allocation *)realloc(g_allocs, g_cap_allocs * sizeof(Allocation));
        if (!g_allocs) { fprintf(stderr, "out of host memory\n"); exit(1); }
    }
    g_allocs[g_n_allocs].ptr = p;
    g_allocs[g_n_allocs].bytes = bytes;
    g_n_allocs++;
    g_in_use += bytes;
    if (g_in_use > g_peak) g_peak = g_in_use;
    return p;
}

void gpu_free(void *p) {
    if (!p) return;
    for (size_t i = 0; i < g_n_allocs; i++) {
        if (g_allocs[i].ptr != p) continue;
        g_in_use -= g_allocs[i].bytes;
        g_allocs[i] = g_allocs[--g_n_allocs];
        break;
    }
    CUDA_CHECK(cudaFree(p));
}

size_t gpu_bytes_in_use(void) { return g_in_use; }
size_t gpu_peak_bytes(void) { return g_peak; }

// ---- copies and conversions -------------------------------------------------
void gpu_upload(void *device_dst, const void *host_src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(device_dst, host_src, bytes, cudaMemcpyHostToDevice));
}

void gpu_download(void *host_dst, const void *device_src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost));
}

void gpu_poison(void *p, size_t bytes) { CUDA_CHECK(cudaMemset(p, 0xFF, bytes)); }

bf16 *gpu_upload_as_bf16(const float *host, size_t n, const char *what) {
    bf16 *staging = (bf16 *)cpu_malloc(sizeof(bf16) * (n > 0 ? n : 1), "bf16 staging");
    for (size_t i = 0; i < n; i++) staging[i] = __float2bfloat16(host[i]);
    bf16 *device = (bf16 *)gpu_malloc(sizeof(bf16) * n, what);
    gpu_upload(device, staging, sizeof(bf16) * n);
    free(staging);
    return device;
}

void gpu_download_bf16(float *host, const bf16 *device, size_t n) {
    bf16 *staging = (bf16 *)cpu_malloc(sizeof(bf16) * (n > 0 ? n : 1), "bf16 staging");
    gpu_download(staging, device, sizeof(bf16) * n);
    for (size_t i = 0; i < n; i++) host[i] = __bfloat162float(staging[i]);
    free(staging);
}

__global__ static void float_to_bf16_kernel(bf16 *out, const float *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(in[i]);
}

__global__ static void bf16_to_float_kernel(float *out, const bf16 *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __bfloat162float(in[i]);
}

void float_to_bf16_gpu(bf16 *out, const float *in, size_t n) {
    if (n == 0) return;
    float_to_bf16_kernel<<<(unsigned)((n + 255) / 256), 256>>>(out, in, n);
    CUDA_CHECK_LAUNCH();
}

void bf16_to_float_gpu(float *out, const bf16 *in, size_t n) {
    if (n == 0) return;
    bf16_to_float_kernel<<<(unsigned)((n + 255) / 256), 256>>>(out, in, n);
    CUDA_CHECK_LAUNCH();
}
#endif
