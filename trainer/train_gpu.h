// trainer/train_gpu.h: the training step on one NVIDIA GPU, the same computation as
// train_step_cpu (trainer/train_step.h) in mixed precision, "16-bit" meaning
// bf16, or fp16 where bf16 is missing (act16, ops/gpu.h; ./train --precision):
//   - frozen linear weights in NF4 (or 16-bit with --quant none), dequantized to
//     16-bit one block at a time into a scratch buffer;
//   - embedding / LM head in 16-bit, norms and biases in fp32;
//   - activations (GEMM inputs and outputs) in 16-bit, the residual stream and
//     its gradient in fp32, every accumulation in fp32;
//   - LoRA master weights, gradients and AdamW moments in fp32, one flat
//     buffer each in the host's layout (LoraSet's params, lora.h), with a 16-bit
//     copy of the weights that the GEMMs read, refreshed after every optimizer step;
//   - the adapters of linears that read one input (q|k|v, gate|up: lora.h's input
//     groups) share one dropout mask, and their A products run as one GEMM each way
//     (their A's lie end to end in the flat layout); DoRA's run one linear at a time;
//   - optionally (GpuPlacement): the moments in managed memory that the driver may
//     page to the host (--paged-optim), and the block inputs kept for backward in
//     pinned host memory (--offload, trainer/offload.h). Neither changes a bit of the result.
// Built by nvcc only; the CPU-only build has no GPU trainer.
#pragma once
#ifdef __CUDACC__
#include "adamw.h"
#include "ops/attention.h"
#include "trainer/base_weights.h"
#include "trainer/offload.h"
#include "ops/gpu.h"
#include "lora.h"
#include "model.h"
#include "nf4.h"
#include "trainer/train_step.h"

// The frozen weights of one block on the GPU.
typedef struct {
    NF4TensorGPU nf4[N_LINEARS];   // when quant == QUANT_NF4
    act16 *dense[N_LINEARS];        // when quant == QUANT_NONE
    float *attn_norm, *mlp_norm;   // [dim]
    float *bq, *bk, *bv;           // NULL unless the model has attention biases
} GpuBlock;

// What backward needs from one block's forward (act16 unless noted).
typedef struct {
    act16 *xn1, *q, *k, *v, *att;
    float *lse;                    // [n_seqs * n_heads * seq_len] attention log-sum-exp
    float *x_mid;                  // [N, dim] fp32 residual stream between attention and MLP
    act16 *xn2, *gate, *up, *h;
    act16 *xa_group[N_LINEAR_GROUPS]; // [N, count * rank] without DoRA: the input group's dropout(x) [A_1; ...]^T
                                    // (lora_group_forward_gpu), NULL when the group has no adapter
    act16 *xa[N_LINEARS];           // [N, rank] with DoRA: each adapter's (dropout(x) A^T), else NULL
    act16 *dora_w[N_LINEARS];       // [N, out] with DoRA: x_d W^T + s xa B^T (dora.h), else NULL
    float *dora_norm[N_LINEARS];    // [out] with DoRA: ||W + s B A|| per row (fp32), else NULL
} GpuActivations;

// Where the GPU memory goes, for the start-up report; paged and offloaded are
// not on the GPU's count: managed memory the driver may page out, pinned host memory.
// workspace: the LM head + loss's and the gradient norm's (allocated with the rest,
// so that a step allocates nothing).
typedef struct {
    size_t base_codes, base_constants, embeddings, lora_and_adam, activations, scratch, workspace;
    size_t paged, offloaded;
} GpuMemoryUse;

// Where state that need not stay on the GPU goes (./train --paged-optim, --offload).
typedef struct {
    // AdamW's m and v in managed memory (cudaMallocManaged), prefetched to the GPU
    // before each update; under memory pressure the driver pages them to the host
    int paged_optim;
    // the block inputs that recompute keeps, in pinned host memory between forward
    // and backward (trainer/offload.h); needs recompute
    int offload;
} GpuPlacement;

typedef struct {
    Config c;
    QuantMode quant;
    // simple when one head's T x T scores fit ATTENTION_SCORE_BUDGET_BYTES and head_dim % 8 == 0, else flash
    AttentionKernel attention;
    int recompute;
    GpuPlacement placement;
    int rank;
    float scaling;          // alpha / rank (or / sqrt(rank))
    float dropout;
    int dora;               // the LoraSet has magnitude vectors (DoRA, dora.h)
    int max_tokens;         // batch * seq the buffers are sized for
    int max_seqs, max_seq_len;

    GpuBlock *blocks;       // [n_layers]
    act16 *embed, *lm_head;  // lm_head == embed when tied
    float *final_norm;
    float *inv_freq;        // [head_dim / 2]
    act16 *weights[N_LINEARS];   // one block's linear weights in 16-bit (dequantized NF4, or views of dense)
    act16 *dequant_scratch;      // room for one block's seven matrices in 16-bit (NF4 only)

    // LoRA: flat fp32 parameters / gradients / moments (the host's layout), 16-bit copy of the parameters
    size_t n_params;
    float *params, *grads, *m, *v;
    act16 *params_act16;
    size_t *offset_A, *offset_B;   // [n_layers * N_LINEARS] into the flat buffers (as on the host); (size_t)-1 when off
    size_t *offset_m;              // [n_layers * N_LINEARS] DoRA's m in the flat buffers; (size_t)-1 without
    int64_t adam_step;

    // activations and gradients
    int *tokens, *targets, *positions;   // [max_tokens] on the device
    float *loss_weights;                 // [max_tokens] the batch's loss weights (when it has them)
    float *stream;                       // [(n_layers + 1) * max_tokens * dim]; with offload [3 * ...]:
                                         // two rows taking turns, and the recompute's output
    ActivationOffload offload;           // with placement.offload
    GpuActivations *acts;                // [n_layers], or [1] with recompute
    act16 *normed;                        // [N, dim] final norm output
    float *d_x, *d_mid, *d_normed;       // [N, dim] fp32
    float *d_wide;                       // [N, max(hidden, q_dim)] fp32 input gradient of down / o
    act16 *dy;                            // [N, max(dim, hidden, q_dim)] 16-bit copy of an output gradient
    act16 *d_gate, *d_up;                 // [N, hidden]
    act16 *d_q, *d_k, *d_v;               // [N, q_dim], [N, kv_dim] x2
    act16 *tmp;                           // [N, dim] output of o / down before the residual add
    float *keep;                         // [N * max(dim, hidden, q_dim)] dropout mask
    void *lora_scratch;
    void *dora_scratch;                  // dora_scratch_bytes_gpu for the widest adapter (DoRA only)
    void *attention_scratch;
    size_t attention_scratch_bytes;
    void *loss_workspace;                // lm_head_cross_entropy_gpu's, for max_tokens counted tokens
    size_t loss_workspace_bytes;
    void *norm_workspace;                // sum_squares_gpu's, for the n_params gradients
    size_t norm_workspace_bytes;
    GpuMemoryUse memory;
} GpuTrainer;

// Uploads the model (quantizing the linear weights to NF4 on the GPU when
// quant == QUANT_NF4) and the adapters' initial values, and allocates
// buffers and workspaces for up to max_seqs sequences of max_seq_len tokens
// (the steps below allocate no device memory); placement NULL: everything on
// the GPU. Offload without recompute exits (status 2).
void gpu_trainer_init(GpuTrainer *g, const Model *model, QuantMode quant, int double_quant, const LoraSet *lora,
                      const StepOptions *opt, int max_seqs, int max_seq_len, const GpuPlacement *placement = NULL);
void gpu_trainer_free(GpuTrainer *g);
// Switches the attention kind (tests, benchmarks); init picks the faster one that fits.
void gpu_trainer_set_attention(GpuTrainer *g, AttentionKernel kind);
// Prints where the GPU memory went (our allocations, and the device's view).
void gpu_trainer_print_memory(const GpuTrainer *g, FILE *out);

// Forward + backward of one micro-batch: ADDS grad_scale * d(sum of token
// losses) to the gradients; returns the summed loss; *n_counted = answer tokens.
// dropout_seed as in StepOptions (masks equal to the CPU path's).
double gpu_train_micro_batch(GpuTrainer *g, const Batch *batch, uint64_t dropout_seed, double grad_scale,
                             int *n_counted);
// The forward alone, no dropout: summed loss and count.
double gpu_loss(GpuTrainer *g, const Batch *batch, int *n_counted);

void gpu_zero_grads(GpuTrainer *g);
// sqrt(sum of squared gradients), accumulated in double.
double gpu_grad_norm(GpuTrainer *g);
void gpu_scale_grads(GpuTrainer *g, float scale);
// AdamW over every adapter parameter, then the 16-bit copy is refreshed.
void gpu_adamw_step(GpuTrainer *g, const AdamWConfig *config, float lr);

// Copies the parameters and gradients to the LoraSet on the host, and the
// moments and step count to adam (may be NULL): one copy per flat array.
void gpu_download_lora(const GpuTrainer *g, LoraSet *lora, AdamWState *adam);
// The reverse (parameters, moments and step; not the gradients), after a resume from a checkpoint.
void gpu_upload_lora(GpuTrainer *g, const LoraSet *lora, const AdamWState *adam);

// Matmul FLOPs per trained token (for MFU): 2 per weight in forward, 2 in
// backward (input gradients only: the base is frozen), 2 more with
// recompute, plus attention's score and value products.
double gpu_flops_per_token(const Config *c, int seq_len, int recompute);
#endif
