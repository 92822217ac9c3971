// emu_internal.h: what the runtime files share: reports, settings,
// device-memory lookups and statistics.
#pragma once
#include <stdint.h>

#include <string>

#include "cuda_runtime.h"

namespace emu {
// An environment variable as an int (fallback when unset or empty).
int env_int(const char *name, int fallback);
// "EMU ERROR: ..." on stderr; aborts unless EMU_ABORT=0.
void error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// "EMU WARNING: ..." the first time `key` is seen; the summary counts the rest.
void warn_once(const std::string &key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Keeps the first error for cudaGetLastError, as the runtime does; returns e.
cudaError_t record_error(cudaError_t e);

// The allocation holding p (its start and size), if any.
bool find_allocation(const void *p, uintptr_t *start, size_t *bytes);
// Whether [p, p + bytes) lies inside one allocation (a managed one).
bool device_range_ok(const void *p, size_t bytes);
bool managed_range_ok(const void *p, size_t bytes);
// A copy's ranges against the allocations and its direction (errors reported); whether it may run.
bool check_copy(const char *call, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
// Runs every stream's queued copies (emu_streams.cpp): what a free or a device synchronize waits for.
void finish_all_streams(void);

// Whether [p, p + bytes) lies inside shared memory (the __shared__ variables).
bool shared_range_ok(const void *p, size_t bytes);

// Counts for the summary printed at exit.
struct Stats {
    uint64_t launches, blocks, threads, barriers, warp_ops;
};
extern Stats g_stats;
double now_seconds(void);
// EMU_PROFILE=1: adds one launch (or GEMM) to the time per name printed at exit.
void profile_add(const char *name, uint64_t threads, double seconds);
void print_cublas_summary(void);
}   // namespace emu
