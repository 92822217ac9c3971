// cuda_runtime.h stand-in (dev/cuda_on_cpu; see README.md): the runtime calls
// qlora.c makes, with host memory standing in for device memory
// (runtime/emu_runtime.cpp). Any other call fails to compile, on purpose.
#pragma once
#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "emu_core.h"

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
} cudaError_t;

typedef enum cudaMemcpyKind {
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
} cudaMemcpyKind;

// Streams and events (runtime/emu_streams.cpp): the legacy default stream (0)
// runs everything at once; a created stream queues its copies, run late (see README.md).
typedef struct EmuStream *cudaStream_t;
typedef struct EmuEvent *cudaEvent_t;
#define cudaStreamNonBlocking 0x01
#define cudaEventDisableTiming 0x02
// Managed memory: where it is attached, and the host as a prefetch destination.
#define cudaMemAttachGlobal 0x01
#define cudaMemAttachHost 0x02
#define cudaCpuDeviceId (-1)
typedef enum cudaDeviceAttr {
    cudaDevAttrConcurrentManagedAccess = 89,
} cudaDeviceAttr;

typedef enum cudaDataType_t {
    CUDA_R_32F = 0,
    CUDA_R_16F = 2,
    CUDA_R_16BF = 14,
} cudaDataType_t;
typedef cudaDataType_t cudaDataType;

struct cudaDeviceProp {
    char name[256];          // the fields the project reads
    int major, minor;        // the compute capability: EMU_COMPUTE_CAPABILITY, default 9.0
    size_t totalGlobalMem;   // the emulated device's memory (EMU_DEVICE_MEM_MB)
};

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device);
cudaError_t cudaGetLastError(void);
const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemset(void *p, int value, size_t bytes);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceSynchronize(void);

// Managed memory (device memory the driver may page to the host; not counted
// in cudaMemGetInfo) and its prefetch (checked, no data moves: host and
// device memory are one here); pinned host memory (poisoned like device memory).
cudaError_t cudaMallocManaged(void **p, size_t bytes, unsigned flags = cudaMemAttachGlobal);
cudaError_t cudaMemPrefetchAsync(const void *p, size_t bytes, int device, cudaStream_t stream = 0);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream = 0);

// __device__ and __constant__ variables are ordinary statics here: a copy to
// or from one is a memcpy, checked against the variable's size.
namespace emu {
cudaError_t symbol_copy(void *dst, const void *src, size_t count, size_t offset, size_t symbol_size);
}
template <class T>
static inline cudaError_t cudaMemcpyToSymbol(const T &symbol, const void *src, size_t count, size_t offset = 0,
                                             cudaMemcpyKind = cudaMemcpyHostToDevice) {
    return emu::symbol_copy((char *)&symbol + offset, src, count, offset, sizeof(T));
}
template <class T>
static inline cudaError_t cudaMemcpyFromSymbol(void *dst, const T &symbol, size_t count, size_t offset = 0,
                                               cudaMemcpyKind = cudaMemcpyDeviceToHost) {
    return emu::symbol_copy(dst, (const char *)&symbol + offset, count, offset, sizeof(T));
}
