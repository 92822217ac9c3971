// trainer/engine.h: where the training steps run, behind one small interface,
// so that ./train's loop reads the same on either: the CPU reference
// (trainer/engine_cpu.cpp, over trainer/train_step.cpp) or one GPU
// (trainer/engine_gpu.cu, over trainer/train_gpu.cu).
//
// The host holds the trainable state: a LoraSet (parameters and gradients) and
// its AdamWState (moments), one flat layout (lora.h). The CPU engine works on
// it directly; the GPU engine keeps device copies of the same arrays, brought
// to the host by sync_to_host before anything there reads them (a checkpoint,
// the adapter, naming a bad gradient) and sent back by sync_from_host after a
// checkpoint was loaded into them.
#pragma once
#include <stdint.h>
#include "adamw.h"
#include "lora.h"
#include "model.h"
#include "trainer/base_weights.h"
#include "trainer/train_step.h"

// How the engine trains: the base's precision and the step's options.
typedef struct {
    QuantMode quant;     // NF4 (QLoRA) or the fp32 / bf16 base (plain LoRA)
    int double_quant;    // NF4's block scales quantized again to 8 bits
    StepOptions step;    // rank, scaling, dropout, recompute (dropout_seed: per micro-batch, below)
    int max_seqs;        // the largest batch, and its longest sample: the GPU's buffers are sized for them
    int max_seq_len;
    int paged_optim;     // GPU: AdamW's m and v in managed memory (trainer/train_gpu.h, GpuPlacement)
    int offload;         // GPU: the block inputs of recompute in pinned host memory (trainer/offload.h)
} EngineOptions;

typedef struct Engine Engine;
struct Engine {
    const char *device;   // "cpu", or the GPU's name
    LoraSet *lora;        // the host's trainable state
    AdamWState *adam;
    void *impl;           // the engine's own data

    // gradients = 0
    void (*zero_grads)(Engine *e);
    // Forward and backward of one micro-batch: ADDS grad_scale * d(sum of its
    // token losses) to the gradients; returns that sum; *n_counted = its answer
    // tokens. dropout_seed picks the dropout masks (the same on both engines).
    double (*micro_batch)(Engine *e, const Batch *batch, uint64_t dropout_seed, double grad_scale, int *n_counted);
    // The forward alone, no dropout: the summed loss and *n_counted.
    double (*loss)(Engine *e, const Batch *batch, int *n_counted);
    // sqrt(sum of g^2) over every gradient, in double.
    double (*grad_norm)(Engine *e);
    // g *= scale
    void (*scale_grads)(Engine *e, float scale);
    // One AdamW step over every parameter at learning rate lr.
    void (*adamw)(Engine *e, const AdamWConfig *config, float lr);
    // Parameters, gradients and moments to e->lora and e->adam (nothing to do on the CPU).
    void (*sync_to_host)(Engine *e);
    // Parameters and moments from e->lora and e->adam (after a resume).
    void (*sync_from_host)(Engine *e);
    // What the step's printed line adds: MFU and peak memory on a GPU, nothing on the CPU.
    void (*print_step_stats)(Engine *e, long tokens, double seconds);
    void (*free)(Engine *e);
};

// The CPU engine: the frozen base held as trainer/base_weights.h says (NF4
// dequantized a block at a time, or fp32). Prints what the base takes.
// Returns 0, or -1 with the message in err (out of memory).
int engine_cpu_init(Engine *e, const Model *model, const EngineOptions *opt, LoraSet *lora, AdamWState *adam,
                    char *err, size_t err_size);
// The GPU engine (device 0): the base uploaded (NF4 quantized on the GPU, or
// bf16), the state copied up, buffers for max_seqs x max_seq_len tokens.
// Prints where the GPU memory went. In a build without nvcc: -1 and a message.
int engine_gpu_init(Engine *e, const Model *model, const EngineOptions *opt, LoraSet *lora, AdamWState *adam,
                    char *err, size_t err_size);
