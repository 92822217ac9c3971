// infer/forward_gpu.h: the inference forward pass with a key/value cache on one
// GPU, the same contract as forward_cpu_adapter (infer/forward.h): tokens[0..n)
// at positions pos..pos+n-1, their keys and values appended to the cache, the
// logits of every token or of the last, an adapter kept apart from the base and
// chosen per call, y = x W^T + s (x A^T) B^T. Used by ./generate and ./serve
// with --device cuda.
//
// On the device: the base's linear weights, embedding and LM head in the 16-bit
// type (act16, ops/gpu.h: bf16, or fp16 on GPUs before sm_80) converted from the
// host's fp32 weights as loaded (or as NF4 round-tripped, nf4_round_trip_model:
// the base an adapter was trained on), norms and biases in fp32; each adapter's
// A and B in 16-bit; the cache in 16-bit; the residual stream in fp32.
//
// The functions take no CUDA types, so C and C++ files built without nvcc call
// them; in a build without nvcc the uploads fail with a message. Not thread-safe:
// every kernel runs on the default stream with the one cuBLAS handle, so callers
// on several threads take turns (./serve holds a lock around each GPU call).
#pragma once
#include <stddef.h>
#include "infer/adapter.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

// Chooses the 16-bit type (gpu_set_act16) as ./train --precision auto does
// (trainer/precision.h): bf16 on GPUs of sm_80 and newer, fp16 before. Returns its name.
const char *gpu_infer_choose_precision(void);

typedef struct GpuModel GpuModel;           // the base's weights on the device
typedef struct GpuAdapter GpuAdapter;       // one adapter's A and B on the device
typedef struct GpuInferState GpuInferState; // one sequence's cache and activations on the device

// Uploads m's weights (m is only read and may be freed after). NULL with
// "why" in err: built without CUDA, no device, a head_dim the cache
// attention kernel does not take, or not enough free device memory.
GpuModel *gpu_model_upload(const Model *m, char *err, size_t err_size);
void gpu_model_free(GpuModel *g);
// Device bytes the base takes.
size_t gpu_model_bytes(const GpuModel *g);

// Uploads an adapter of g's model (adapter_load_peft's weights). NULL with a message when device memory is short.
GpuAdapter *gpu_adapter_upload(const GpuModel *g, const AdapterWeights *adapter, char *err, size_t err_size);
void gpu_adapter_free(GpuAdapter *a);
// Device bytes the adapter takes.
size_t gpu_adapter_bytes(const GpuAdapter *a);

// A cache of max_seq positions and room for chunks of max_chunk tokens with
// adapters up to max_rank. NULL with a message when device memory is short.
GpuInferState *gpu_infer_state_create(const GpuModel *g, int max_seq, int max_chunk, int max_rank, char *err,
                                      size_t err_size);
void gpu_infer_state_free(GpuInferState *s);
// Device bytes the state takes.
size_t gpu_infer_state_bytes(const GpuInferState *s);

// forward_cpu_adapter on the GPU: returns host memory holding the logits of
// every token ([n, vocab]) when all_logits, else of the last ([vocab]), valid
// until the next call with s. hidden_norms (optional, [n_layers + 1]) as
// forward_cpu's. adapter NULL: the base alone. n <= max_chunk, pos + n <=
// max_seq, the adapter's rank <= max_rank.
const float *forward_gpu(const GpuModel *g, const GpuAdapter *adapter, GpuInferState *s, const int *tokens, int n,
                         int pos, int all_logits, float *hidden_norms);

#ifdef __cplusplus
}
#endif
