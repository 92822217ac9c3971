// trainer/offload.cu: activation offload's copies and events (see trainer/offload.h).
// The compute stream is the legacy default stream (0), where every kernel of the
// trainer runs; the copy stream is non-blocking, so that its copies overlap them.
#include "trainer/offload.h"

#ifdef __CUDACC__
#include "ops/gpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t offload_init(ActivationOffload *o, int n_layers, size_t row_floats, float *slot0, float *slot1) {
    memset(o, 0, sizeof *o);
    o->n_saved = n_layers > 1 ? n_layers - 1 : 0;
    o->row_floats = row_floats;
    o->slots[0] = slot0;
    o->slots[1] = slot1;
    size_t bytes = sizeof(float) * row_floats * o->n_saved;
    cudaError_t err = cudaMallocHost((void **)&o->host, bytes > 0 ? bytes : 1);
    if (err != cudaSuccess) {
        fprintf(stderr, "out of host memory: --offload needs %.1f MiB of pinned host memory for %d block inputs (%s)\n",
                bytes / 1048576.0, o->n_saved, cudaGetErrorString(err));
        exit(3);
    }
    CUDA_CHECK(cudaStreamCreateWithFlags(&o->copy_stream, cudaStreamNonBlocking));
    for (int s = 0; s < 2; s++) {
        CUDA_CHECK(cudaEventCreateWithFlags(&o->slot_written[s], cudaEventDisableTiming));
        CUDA_CHECK(cudaEventCreateWithFlags(&o->copy_done[s], cudaEventDisableTiming));
    }
    return bytes;
}

void offload_free(ActivationOffload *o) {
    if (!o->host) return;
    CUDA_CHECK(cudaStreamSynchronize(o->copy_stream));
    for (int s = 0; s < 2; s++) {
        CUDA_CHECK(cudaEventDestroy(o->slot_written[s]));
        CUDA_CHECK(cudaEventDestroy(o->copy_done[s]));
    }
    CUDA_CHECK(cudaStreamDestroy(o->copy_stream));
    CUDA_CHECK(cudaFreeHost(o->host));
    memset(o, 0, sizeof *o);
}

float *offload_slot(const ActivationOffload *o, int layer) { return o->slots[layer % 2]; }

static float *host_row(const ActivationOffload *o, int layer) { return o->host + (size_t)layer * o->row_floats; }

// The copy stream waits for everything the compute stream has issued so far.
static void copy_stream_after_compute(ActivationOffload *o, int slot) {
    CUDA_CHECK(cudaEventRecord(o->slot_written[slot], 0));
    CUDA_CHECK(cudaStreamWaitEvent(o->copy_stream, o->slot_written[slot], 0));
}

void offload_save(ActivationOffload *o, int layer, size_t n) {
    int slot = layer % 2;
    copy_stream_after_compute(o, slot);
    CUDA_CHECK(cudaMemcpyAsync(host_row(o, layer), o->slots[slot], sizeof(float) * n, cudaMemcpyDeviceToHost,
                               o->copy_stream));
    CUDA_CHECK(cudaEventRecord(o->copy_done[slot], o->copy_stream));
}

void offload_before_overwrite(ActivationOffload *o, int layer) {
    CUDA_CHECK(cudaStreamWaitEvent(0, o->copy_done[layer % 2], 0));
}

void offload_fetch(ActivationOffload *o, int layer, size_t n) {
    int slot = layer % 2;
    copy_stream_after_compute(o, slot);
    CUDA_CHECK(cudaMemcpyAsync(o->slots[slot], host_row(o, layer), sizeof(float) * n, cudaMemcpyHostToDevice,
                               o->copy_stream));
    CUDA_CHECK(cudaEventRecord(o->copy_done[slot], o->copy_stream));
}

void offload_wait_fetched(ActivationOffload *o, int layer) {
    CUDA_CHECK(cudaStreamWaitEvent(0, o->copy_done[layer % 2], 0));
}
#endif
