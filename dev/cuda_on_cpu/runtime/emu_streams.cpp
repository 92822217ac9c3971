// emu_streams.cpp: streams, events and asynchronous copies, pinned host memory
// and managed memory's prefetch (dev/cuda_on_cpu; see README.md).
//
// The legacy default stream (0) runs everything at once, as the rest of the
// emulation does. A created stream queues its copies and, with EMU_ASYNC=1
// (the default), runs them as late as CUDA allows: only when something waits
// for them (cudaStreamWaitEvent or cudaEventSynchronize on an event recorded
// after them, cudaStreamSynchronize, cudaDeviceSynchronize, a free). Each
// copy's destination is poisoned when it is queued. So a missing wait shows:
// a kernel that reads a copy's destination too early reads NaN, and one that
// overwrites a copy's source too early has the copy take the new values.
// EMU_ASYNC=0 runs every copy when it is issued (no overlap to get wrong).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <deque>
#include <map>
#include <mutex>
#include <set>

#include "emu_internal.h"

using emu::error;
using emu::record_error;

// One queued copy; `number` counts the copies issued to its stream (from 1).
struct QueuedCopy {
    void *dst;
    const void *src;
    size_t bytes;
    uint64_t number;
};

struct EmuStream {
    std::deque<QueuedCopy> queue;
    uint64_t issued;   // copies issued so far; the queue holds those not yet run
};

// An event marks a point in one stream: the copies issued to it before the record.
struct EmuEvent {
    EmuStream *stream;   // NULL: never recorded, or recorded on the default stream (complete at once)
    uint64_t issued;
};

static std::set<EmuStream *> &g_streams = *new std::set<EmuStream *>;
static std::map<uintptr_t, size_t> &g_pinned = *new std::map<uintptr_t, size_t>;   // start -> bytes
static std::mutex g_pinned_mutex;

static bool run_late(void) { return emu::env_int("EMU_ASYNC", 1) != 0; }

// Runs the copies of s issued up to `upto` (the first `upto` ever issued), in order.
static void run_queue(EmuStream *s, uint64_t upto) {
    while (!s->queue.empty() && s->queue.front().number <= upto) {
        QueuedCopy c = s->queue.front();
        s->queue.pop_front();
        memmove(c.dst, c.src, c.bytes);
    }
}

static bool overlap(const void *a, size_t a_bytes, const void *b, size_t b_bytes) {
    return (uintptr_t)a < (uintptr_t)b + b_bytes && (uintptr_t)b < (uintptr_t)a + a_bytes;
}

// Before a copy into [dst, dst + bytes) is queued (and its destination
// poisoned): the queued copies of s that touch that range run first, as they
// come first in the stream.
static void run_copies_touching(EmuStream *s, const void *dst, size_t bytes) {
    uint64_t last = 0;
    for (const QueuedCopy &c : s->queue)
        if (overlap(dst, bytes, c.src, c.bytes) || overlap(dst, bytes, c.dst, c.bytes)) last = c.number;
    run_queue(s, last);
}

// At exit: copies never waited for (their results were never used, or used by luck).
static struct WarnUnfinished {
    WarnUnfinished() {
        atexit([] {
            size_t queued = 0;
            for (EmuStream *s : g_streams) queued += s->queue.size();
            if (queued) emu::warn_once("copies never waited for", "%zu copies were still queued on a stream at exit "
                                       "(nothing waited for them)", queued);
        });
    }
} g_warn_unfinished;

namespace emu {
void finish_all_streams(void) {
    for (EmuStream *s : g_streams) run_queue(s, s->issued);
}
}   // namespace emu

static bool known_stream(cudaStream_t s, const char *call) {
    if (!s || g_streams.count(s)) return true;
    error("%s: stream %p was not created (or was destroyed)", call, (void *)s);
    return false;
}

// Whether [p, p + bytes) lies inside one cudaMallocHost allocation.
static bool pinned_range_ok(const void *p, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_pinned_mutex);
    uintptr_t a = (uintptr_t)p;
    auto it = g_pinned.upper_bound(a);
    if (it == g_pinned.begin()) return false;
    --it;
    return a >= it->first && a + bytes <= it->first + it->second;
}

// ---- pinned host memory -------------------------------------------------------

cudaError_t cudaMallocHost(void **p, size_t bytes) {
    *p = NULL;
    void *q = NULL;
    if (posix_memalign(&q, 256, bytes ? bytes : 1) != 0) return record_error(cudaErrorMemoryAllocation);
    if (emu::env_int("EMU_POISON", 1)) memset(q, 0xFF, bytes);
    std::lock_guard<std::mutex> lock(g_pinned_mutex);
    g_pinned[(uintptr_t)q] = bytes;
    *p = q;
    return cudaSuccess;
}

// As on a GPU, the queued copies of every stream finish first.
cudaError_t cudaFreeHost(void *p) {
    if (!p) return cudaSuccess;
    emu::finish_all_streams();
    {
        std::lock_guard<std::mutex> lock(g_pinned_mutex);
        if (!g_pinned.erase((uintptr_t)p)) {
            error("cudaFreeHost(%p): not the start of a live cudaMallocHost allocation", p);
            return record_error(cudaErrorInvalidValue);
        }
    }
    free(p);
    return cudaSuccess;
}

// ---- managed memory's prefetch --------------------------------------------------

// Host and device memory are one here, so nothing moves; the range must be
// managed memory, the device 0 or the host, and the device must allow it.
cudaError_t cudaMemPrefetchAsync(const void *p, size_t bytes, int device, cudaStream_t stream) {
    if (!known_stream(stream, "cudaMemPrefetchAsync")) return record_error(cudaErrorInvalidValue);
    if (!emu::managed_range_ok(p, bytes)) {
        error("cudaMemPrefetchAsync: %p + %zu bytes is not inside one cudaMallocManaged allocation", p, bytes);
        return record_error(cudaErrorInvalidValue);
    }
    if (device != 0 && device != cudaCpuDeviceId) {
        error("cudaMemPrefetchAsync: device %d (there is device 0, and the host: cudaCpuDeviceId)", device);
        return record_error(cudaErrorInvalidValue);
    }
    if (!emu::env_int("EMU_CONCURRENT_MANAGED", 1)) {
        error("cudaMemPrefetchAsync on a device without concurrent managed access (EMU_CONCURRENT_MANAGED=0): "
              "check cudaDevAttrConcurrentManagedAccess first");
        return record_error(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

// ---- streams and events ---------------------------------------------------------

// Only non-blocking streams: a blocking one would serialize with the legacy
// default stream on a GPU, and no copy on it could overlap a kernel.
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags) {
    if (flags != cudaStreamNonBlocking) {
        error("cudaStreamCreateWithFlags: flags %u: only cudaStreamNonBlocking is emulated (a blocking stream "
              "waits for the default stream's work: no overlap)", flags);
        return record_error(cudaErrorInvalidValue);
    }
    *stream = new EmuStream{{}, 0};
    g_streams.insert(*stream);
    return cudaSuccess;
}

// As on a GPU, the stream's queued copies still run.
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    if (!stream || !known_stream(stream, "cudaStreamDestroy")) return record_error(cudaErrorInvalidValue);
    run_queue(stream, stream->issued);
    g_streams.erase(stream);
    delete stream;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    if (!known_stream(stream, "cudaStreamSynchronize")) return record_error(cudaErrorInvalidValue);
    if (stream) run_queue(stream, stream->issued);
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
    emu::finish_all_streams();
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags) {
    if (flags != cudaEventDisableTiming) {
        error("cudaEventCreateWithFlags: flags %u: only cudaEventDisableTiming is emulated", flags);
        return record_error(cudaErrorInvalidValue);
    }
    *event = new EmuEvent{NULL, 0};
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    delete event;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    if (!event || !known_stream(stream, "cudaEventRecord")) return record_error(cudaErrorInvalidValue);
    event->stream = stream;
    event->issued = stream ? stream->issued : 0;
    return cudaSuccess;
}

// stream waits for the event's copies: they run now (the latest they may).
// A stream waiting for its own event, or for one of the default stream's
// (which has run everything already), has nothing to run.
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags) {
    if (!event || !known_stream(stream, "cudaStreamWaitEvent")) return record_error(cudaErrorInvalidValue);
    if (event->stream && event->stream != stream) run_queue(event->stream, event->issued);
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    if (!event) return record_error(cudaErrorInvalidValue);
    if (event->stream) run_queue(event->stream, event->issued);
    return cudaSuccess;
}

// Host <-> device only, the host side pinned (cudaMallocHost): from pageable
// memory a GPU copies synchronously, so nothing would overlap.
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
    if (!known_stream(stream, "cudaMemcpyAsync")) return record_error(cudaErrorInvalidValue);
    if (bytes == 0) return cudaSuccess;
    if (!emu::check_copy("cudaMemcpyAsync", dst, src, bytes, kind)) return record_error(cudaErrorInvalidValue);
    const void *host = kind == cudaMemcpyHostToDevice ? src : kind == cudaMemcpyDeviceToHost ? dst : NULL;
    if (host && !pinned_range_ok(host, bytes)) {
        error("cudaMemcpyAsync: the host side %p + %zu bytes is not pinned (cudaMallocHost): the copy would not "
              "overlap", host, bytes);
        return record_error(cudaErrorInvalidValue);
    }
    if (!stream || !run_late()) {
        memmove(dst, src, bytes);
        return cudaSuccess;
    }
    run_copies_touching(stream, dst, bytes);
    // undefined until the copy has run: poisoned now, as garbage that shows
    if (emu::env_int("EMU_POISON", 1)) memset(dst, 0xFF, bytes);
    stream->issued++;
    stream->queue.push_back(QueuedCopy{dst, src, bytes, stream->issued});
    return cudaSuccess;
}
