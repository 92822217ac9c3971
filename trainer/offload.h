// trainer/offload.h: activation offload (./train --offload, with --recompute 1):
// the block inputs that gradient checkpointing keeps (the residual stream at each
// block's entry, fp32 [N, dim]) wait for the backward pass in pinned host memory
// instead of on the GPU, as Unsloth's offloaded gradient checkpointing does.
//
// On the GPU two slots take turns: block l's input lives in slots[l % 2]. In the
// forward pass, as soon as row l is written its copy to the host starts on a
// separate copy stream, overlapping block l's compute; block l + 1 writes its
// output over the slot that held row l - 1 only once that row's copy is done.
// In the backward pass, block l's input comes back before the block is
// recomputed, fetched while block l + 1 is still being computed (one block ahead).
// Every hand-over between the two streams is an event:
//   compute --slot_written--> copy stream    (the row is there to copy / the slot is free to refill)
//   copy stream --copy_done--> compute       (the row reached the host / came back)
// The last block's input never leaves (backward starts with it).
// GPU memory for the stream: 2 rows instead of n_layers + 1; host: n_layers - 1 rows.
#pragma once
#ifdef __CUDACC__
#include <cuda_runtime.h>
#include <stddef.h>

typedef struct {
    int n_saved;              // rows kept on the host: the inputs of blocks 0 .. n_layers - 2
    size_t row_floats;        // floats per row: max tokens * dim
    float *host;              // pinned [n_saved * row_floats]
    float *slots[2];          // on the GPU: block l's input is in slots[l % 2] (set by the trainer)
    cudaStream_t copy_stream;
    cudaEvent_t slot_written[2];   // recorded on the compute stream
    cudaEvent_t copy_done[2];      // recorded on the copy stream
} ActivationOffload;

// Pinned host rows for the inputs of blocks 0 .. n_layers - 2, the copy stream and
// its events; slot0 and slot1 are the trainer's two GPU rows. Returns the host bytes.
size_t offload_init(ActivationOffload *o, int n_layers, size_t row_floats, float *slot0, float *slot1);
void offload_free(ActivationOffload *o);

// Block l's input on the GPU.
float *offload_slot(const ActivationOffload *o, int layer);
// Forward: row `layer` has just been written to its slot (by the compute
// stream): copies its first n floats to the host, overlapped with what follows.
void offload_save(ActivationOffload *o, int layer, size_t n);
// Forward: the compute stream waits until the slot of block `layer`'s input may
// be overwritten (the row it held before has reached the host).
void offload_before_overwrite(ActivationOffload *o, int layer);
// Backward: starts bringing row `layer` back into its slot, once the compute
// stream is done with what the slot held.
void offload_fetch(ActivationOffload *o, int layer, size_t n);
// Backward: the compute stream waits until row `layer` is back on the GPU.
void offload_wait_fetched(ActivationOffload *o, int layer);
#endif
