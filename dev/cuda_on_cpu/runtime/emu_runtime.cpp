// emu_runtime.cpp: the CUDA runtime calls on the CPU (dev/cuda_on_cpu; see
// README.md). Device memory is host memory, every allocation tracked, so that
// copies, kernel arguments and GEMM operands can be checked against it. Also
// the emulator's reports and the summary it prints at exit.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <map>
#include <mutex>
#include <set>

#include "emu_internal.h"

// ---- reports and statistics -------------------------------------------------
namespace emu {
Stats g_stats;
static int g_errors, g_warnings;
// The maps are never destroyed: the summary prints from an atexit handler.
static std::map<std::string, int> &g_warned = *new std::map<std::string, int>;   // warning -> times seen
struct KernelTime {
    uint64_t launches, threads;
    double seconds;
};
static std::map<std::string, KernelTime> &g_profile = *new std::map<std::string, KernelTime>;

int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : fallback;
}

void error(const char *fmt, ...) {
    g_errors++;
    if (g_errors > 20) {   // with EMU_ABORT=0: the first 20 in full, then only the count
        if (g_errors == 21) fprintf(stderr, "EMU ERROR: more errors, not printed (see the summary's count)\n");
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "EMU ERROR: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    if (env_int("EMU_ABORT", 1)) abort();
}

void warn_once(const std::string &key, const char *fmt, ...) {
    if (g_warned[key]++) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "EMU WARNING: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    g_warnings++;
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

void profile_add(const char *name, uint64_t threads, double seconds) {
    KernelTime &k = g_profile[name];
    k.launches++;
    k.threads += threads;
    k.seconds += seconds;
}

// At exit: the time per kernel (EMU_PROFILE=1), then the counts, the warnings
// and the cuBLAS calls and alignments (unless EMU_SUMMARY=0).
static void print_summary(void) {
    if (env_int("EMU_PROFILE", 0))
        for (auto &k : g_profile)
            fprintf(stderr, "EMU profile: %-36s %8llu launches %12llu threads %9.3f s\n", k.first.c_str(),
                    (unsigned long long)k.second.launches, (unsigned long long)k.second.threads, k.second.seconds);
    if (!env_int("EMU_SUMMARY", 1)) return;
    fprintf(stderr,
            "EMU summary: %llu launches, %llu blocks, %llu threads, %llu block barriers, %llu warp ops; "
            "%d errors, %d warnings\n",
            (unsigned long long)g_stats.launches, (unsigned long long)g_stats.blocks,
            (unsigned long long)g_stats.threads, (unsigned long long)g_stats.barriers,
            (unsigned long long)g_stats.warp_ops, g_errors, g_warnings);
    for (auto &w : g_warned) fprintf(stderr, "EMU warning x%d: %s\n", w.second, w.first.c_str());
    print_cublas_summary();
}
static struct AtExit {
    AtExit() { atexit(print_summary); }
} g_at_exit;
}   // namespace emu

using emu::error;

// ---- device memory ----------------------------------------------------------
static std::map<uintptr_t, size_t> g_allocs;   // start -> bytes
static std::set<uintptr_t> g_managed;          // the starts of the managed ones
static size_t g_in_use;
static std::mutex g_alloc_mutex;   // the CPU reference code around the kernels is multithreaded

static size_t device_total_bytes(void) { return (size_t)emu::env_int("EMU_DEVICE_MIB", 80 * 1024) << 20; }

namespace emu {
bool find_allocation(const void *p, uintptr_t *start, size_t *bytes) {
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return false;
    --it;
    if (a >= it->first + (it->second ? it->second : 1)) return false;
    *start = it->first;
    *bytes = it->second;
    return true;
}

bool device_range_ok(const void *p, size_t bytes) {
    uintptr_t start;
    size_t size;
    if (!find_allocation(p, &start, &size)) return false;
    return (uintptr_t)p + bytes <= start + size;
}

bool managed_range_ok(const void *p, size_t bytes) {
    uintptr_t start;
    size_t size;
    if (!find_allocation(p, &start, &size) || (uintptr_t)p + bytes > start + size) return false;
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    return g_managed.count(start) != 0;
}

void check_pointer_arg(const char *kernel, int index, const void *p) {
    uintptr_t start;
    size_t size;
    if (p && !find_allocation(p, &start, &size))
        error("kernel %s: argument %d is %p, not device memory (no cudaMalloc allocation holds it)", kernel, index, p);
}

cudaError_t symbol_copy(void *dst, const void *src, size_t count, size_t offset, size_t symbol_size) {
    if (offset + count > symbol_size) {
        error("cudaMemcpy{To,From}Symbol: %zu bytes at offset %zu overrun the %zu-byte symbol", count, offset,
              symbol_size);
        return cudaErrorInvalidValue;
    }
    memcpy(dst, src, count);
    return cudaSuccess;
}

static cudaError_t g_last_error = cudaSuccess;
cudaError_t record_error(cudaError_t e) {
    if (e != cudaSuccess && g_last_error == cudaSuccess) g_last_error = e;
    return e;
}
}   // namespace emu

using emu::record_error;

// ---- the runtime API --------------------------------------------------------
cudaError_t cudaGetDeviceCount(int *count) {
    *count = 1;
    return cudaSuccess;
}

// The emulated device's compute capability, EMU_COMPUTE_CAPABILITY as 90 (9.0, an
// H100), 75 (a T4), ...: what the program reads to choose its precision.
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device) {
    snprintf(p->name, sizeof p->name, "CPU emulation of CUDA (dev/cuda_on_cpu), not a GPU");
    int capability = emu::env_int("EMU_COMPUTE_CAPABILITY", 90);
    p->major = capability / 10;
    p->minor = capability % 10;
    p->totalGlobalMem = device_total_bytes();
    return device == 0 ? cudaSuccess : record_error(cudaErrorInvalidValue);
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = emu::g_last_error;
    emu::g_last_error = cudaSuccess;
    return e;
}

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    default: return "unknown error";
    }
}

// Exactly `bytes` (so that AddressSanitizer's redzone starts right after the
// buffer), 256-aligned as cudaMalloc's, and filled with 0xFF bytes (NaN in
// fp32 and bf16) as garbage that shows, unless EMU_POISON=0. Managed memory
// is not counted against the device's memory: the driver pages it out.
static cudaError_t allocate(void **p, size_t bytes, bool managed) {
    *p = NULL;
    if (!managed && g_in_use + bytes > device_total_bytes()) return record_error(cudaErrorMemoryAllocation);
    void *q = NULL;
    if (posix_memalign(&q, 256, bytes ? bytes : 1) != 0) return record_error(cudaErrorMemoryAllocation);
    if (emu::env_int("EMU_POISON", 1)) memset(q, 0xFF, bytes);
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    g_allocs[(uintptr_t)q] = bytes;
    if (managed) g_managed.insert((uintptr_t)q);
    else g_in_use += bytes;
    *p = q;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes) { return allocate(p, bytes, false); }

// Only cudaMemAttachGlobal (any stream may touch it) is emulated.
cudaError_t cudaMallocManaged(void **p, size_t bytes, unsigned flags) {
    if (flags != cudaMemAttachGlobal) {
        error("cudaMallocManaged: flags %u: only cudaMemAttachGlobal is emulated", flags);
        return record_error(cudaErrorInvalidValue);
    }
    return allocate(p, bytes, true);
}

// A pointer that does not start an allocation is reported and returned as
// CUDA returns it (the project's CUDA_CHECK then exits), without an abort.
// As on a GPU, the queued copies of every stream finish first.
cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    emu::finish_all_streams();
    {
        std::lock_guard<std::mutex> lock(g_alloc_mutex);
        auto it = g_allocs.find((uintptr_t)p);
        if (it == g_allocs.end()) {
            fprintf(stderr, "EMU ERROR: cudaFree(%p): not the start of a live allocation\n", p);
            return record_error(cudaErrorInvalidDevicePointer);
        }
        if (!g_managed.erase(it->first)) g_in_use -= it->second;
        g_allocs.erase(it);
    }
    free(p);
    return cudaSuccess;
}

// Whether [p, p + bytes) lies inside one allocation; reports it if not.
static bool check_range(const char *call, const char *which, const void *p, size_t bytes) {
    if (emu::device_range_ok(p, bytes)) return true;
    uintptr_t start;
    size_t size;
    if (emu::find_allocation(p, &start, &size))
        error("%s: %s range %p + %zu bytes overruns its allocation %p + %zu by %zu bytes", call, which, p, bytes,
              (void *)start, size, (size_t)((uintptr_t)p + bytes - (start + size)));
    else
        error("%s: %s %p is not device memory", call, which, p);
    return false;
}

namespace emu {
bool check_copy(const char *call, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    bool ok = true;
    if (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice)
        ok &= check_range(call, "destination", dst, bytes);
    if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice)
        ok &= check_range(call, "source", src, bytes);
    uintptr_t start;
    size_t size;
    if (kind == cudaMemcpyHostToDevice && find_allocation(src, &start, &size)) {
        error("%s HostToDevice: the source %p is device memory", call, src);
        ok = false;
    }
    if (kind == cudaMemcpyDeviceToHost && find_allocation(dst, &start, &size)) {
        error("%s DeviceToHost: the destination %p is device memory", call, dst);
        ok = false;
    }
    return ok;
}
}   // namespace emu

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    if (bytes == 0) return cudaSuccess;
    if (!emu::check_copy("cudaMemcpy", dst, src, bytes, kind)) return record_error(cudaErrorInvalidValue);
    memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemset(void *p, int value, size_t bytes) {
    if (bytes == 0) return cudaSuccess;
    if (!check_range("cudaMemset", "destination", p, bytes)) return record_error(cudaErrorInvalidValue);
    memset(p, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
    *device = 0;
    return cudaSuccess;
}

// EMU_CONCURRENT_MANAGED=0: a device without concurrent managed access (prefetching is refused there).
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
    if (device != 0 || attr != cudaDevAttrConcurrentManagedAccess) return record_error(cudaErrorInvalidValue);
    *value = emu::env_int("EMU_CONCURRENT_MANAGED", 1);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    *total_bytes = device_total_bytes();
    *free_bytes = *total_bytes - g_in_use;
    return cudaSuccess;
}
