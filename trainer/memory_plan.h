// trainer/memory_plan.h: what a training run will hold in memory (`./train --plan`),
// computed from the model's config and the run's options alone, without
// loading or training anything: the course's memory arithmetic.
//
// The layout counted is the GPU path's (N = batch * seq_len tokens, L layers):
//   base linear weights   NF4 codes, 4 bits each (or weight_bytes without --quant nf4)
//   quant constants       fp32 absmax per 64 values (0.5 bit/param), or with double
//                         quant a byte per 64 + fp32 absmax2 per 256 blocks + offset
//                         (~0.127 bit/param); exactly nf4_bytes_for() minus the codes
//   base other            embeddings, LM head (when untied): weight_bytes; norms, biases: fp32
//   LoRA params, grads    fp32; AdamW m and v fp32: 16 bytes per trainable parameter
//                         (with DoRA also a magnitude per output row of each adapted matrix);
//                         with paged AdamW m and v are managed memory the driver pages
//                         to the host under pressure: counted as paged, not in the total;
//                         and a copy of the parameters in the activation type (the GEMMs')
//   activations           what backward reads (trainer/train_gpu.h's GpuActivations):
//                         per block xn1, xn2 [dim], q, att [q_dim], k, v [kv_dim],
//                         gate, up, h [hidden], xa [rank] per adapter (an input group's
//                         side by side: lora.h; the group's stacked A needs no copy, its
//                         A's lie end to end in the flat layout) (with DoRA also
//                         w [out] per adapter) in the activation type, and in fp32 x_mid
//                         [dim] (the residual stream between attention and MLP),
//                         attention's log-sum-exp [n_heads] and DoRA's row norms; plus
//                         the residual stream, the L + 1 block inputs [dim] in fp32 (on
//                         the GPU too), and the final norm's output [dim]. With recompute
//                         only one block's set exists at a time; the stream stays, or with
//                         offload 3 rows of it (trainer/offload.h) and the inputs of
//                         blocks 0 .. L-2 wait in pinned host memory (offloaded).
//                         Attention's backward recomputes its scores from q, k, v.
//   backward buffers      one block's gradients (widest = max(dim, hidden, q_dim)): in
//                         fp32 d_x, d_mid, d_normed [dim], d_wide and the dropout mask
//                         [widest]; in the activation type dy [widest], d_gate, d_up
//                         [hidden], d_q [q_dim], d_k, d_v [kv_dim], a linear's output [dim]
//   batch inputs          token ids, targets, positions, loss weights: 16 bytes per token
//   workspaces            the GPU step's, allocated once (ops/workspace.h), by the size
//                         functions the step's own checks use: the LM head + loss's
//                         (lm_head_cross_entropy_workspace_bytes: fp32 logits [tokens,
//                         vocab] for loss_chunk tokens at a time (all N when 0) and their
//                         16-bit gradient, the rows of x gathered for all N tokens in
//                         16-bit and their gradient in fp32, 16 bytes per token of ids,
//                         targets, weights and losses), and the gradient norm's block
//                         sums (sum_squares_workspace_bytes, at most 8200 bytes)
//   attention             the GPU attention's scratch: 12 bytes per score for as many
//                         heads at a time as 512 MiB holds, plus d_k, d_v per query
//                         head in fp32 [N, q_dim] (or, when one head does not fit, the
//                         flash kernel's float per sequence, head and token)
//   scratch               one block's seven linear weights dequantized (weight_bytes)
//   adapter scratch       ops/lora_scratch.h's LoRA scratch for the input group whose
//                         enabled adapters need the most, and with DoRA its scratch
//                         for the widest enabled adapter
// test/gpu/test_gpu_placement.cu checks the total against what the GPU trainer
// allocates. Not counted: the CUDA context and allocator slack (about half a GB),
// cuBLAS's own workspace, and a few bytes (RoPE's frequencies; the double-quant
// offset, counted here, stays on the host; the simple attention's pointer arrays).
//
// "GB" in the printed plan and the verdict is 2^30 bytes, as GPU memory is
// sold: a "24 GB" card holds 24 GiB.
#pragma once
#include <stddef.h>
#include <stdio.h>
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

// Bytes of attention scores the GPU trainer keeps at once (trainer/train_gpu.cu): its
// simple attention runs as many heads at a time as this holds.
#define ATTENTION_SCORE_BUDGET_BYTES ((size_t)512 << 20)

typedef struct {
    int batch;                     // sequences per micro-batch
    int seq_len;                   // tokens per sequence
    int rank;                      // LoRA rank
    int enabled[N_LINEARS];        // 1: the linear layer carries an adapter in every layer (model.h order)
    int quant_nf4;                 // 1: linear weights in NF4; 0: in weight_bytes
    int double_quant;              // NF4 absmax in 8 bits (QLoRA's double quantization)
    int recompute;                 // 1: keep only each block's input, recompute in backward
    int offload;                   // 1 (with recompute): the block inputs wait in host memory (--offload)
    int paged_optim;               // 1: AdamW's m and v in managed memory (--paged-optim)
    int weight_bytes;              // unquantized frozen weights: 2 bf16 (GPU), 4 fp32 (CPU path)
    int activation_bytes;          // activations and their gradients: 2 bf16 (GPU), 4 fp32 (CPU)
    int loss_chunk;                // tokens whose logits exist at once (the GPU's: lm_head_chunk_tokens_default); 0: all
    int dora;                      // 1: DoRA (dora.h): a magnitude vector per adapter, and what its layer keeps
} PlanInputs;

// Bytes of each part; total adds them with the activations of the chosen
// recompute setting.
typedef struct {
    double base_linear;
    double quant_constants;
    double base_other;
    double lora_params;               // with DoRA, the magnitudes included
    double dora_magnitudes;           // of which DoRA's magnitude vectors (0 without)
    double lora_grads;
    double adam_moments;
    double lora_copy;                 // the parameters in the activation type, for the GEMMs
    double activations;               // the chosen one of the two below
    double activations_no_recompute;
    double activations_recompute;     // with offload when it is on
    double backward_buffers;
    double batch_inputs;              // token ids, targets, positions, loss weights
    double workspaces;                // the LM head + loss's and the gradient norm's
    double attention;
    double scratch;                   // one block's linear weights dequantized (NF4)
    double adapter_scratch;           // the LoRA (and DoRA) layer's, for the widest linear
    double total;                     // on the GPU: paged and offloaded are not in it
    double paged;                     // AdamW's m and v when paged (managed memory)
    double offloaded;                 // block inputs in pinned host memory
} MemoryPlan;

void memory_plan_compute(const Config *c, const PlanInputs *in, MemoryPlan *out);

// Writes "fits in X GB with Y GB to spare" or "does not fit in X GB: needs
// Y GB; ..." with the changes that would help, the ones that make it fit
// first (recompute, then NF4, then a smaller --batch, then a shorter --seq),
// then the rest by what they leave. Returns 1 when it fits.
int memory_plan_verdict(const Config *c, const PlanInputs *in, const MemoryPlan *p, double gpu_mem_gb, char *text,
                        size_t text_size);

// Prints the plan as a table (MiB and share of the total), the activations
// with and without recompute, and the verdict when gpu_mem_gb > 0.
void memory_plan_print(const Config *c, const PlanInputs *in, const MemoryPlan *p, double gpu_mem_gb, FILE *out);

#ifdef __cplusplus
}
#endif
