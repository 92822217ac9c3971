// trainer/train_step.h: one training step of the frozen model plus LoRA adapters on
// the CPU: forward over a batch of sequences keeping what backward needs,
// the answer-only loss, and backward down to the adapters' gradients. No
// gradient is computed for any frozen weight.
//
// Templated on the number type: training runs in float; the tests run a tiny
// model in double against finite differences.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "lora.h"
#include "model.h"
#include "ops/cross_entropy.h"

// The frozen weights of one block as the step reads them (row-major [out, in]).
template <typename Real>
struct BlockWeights {
    const Real *attn_norm, *wq, *wk, *wv, *bq, *bk, *bv, *wo;
    const Real *mlp_norm, *w_gate, *w_up, *w_down;
};

// Supplies block l's frozen weights, e.g. by dequantizing NF4 into a scratch
// buffer; the pointers must stay valid until the next call.
template <typename Real>
struct WeightSource {
    void *context;
    void (*load_block)(void *context, int layer, BlockWeights<Real> *out);
    const Real *embed, *final_norm, *lm_head;
};

// One adapter's parameters and gradients (all NULL when the target is off).
// With DoRA (dora.h) it also has a magnitude vector m and its gradient dm.
template <typename Real>
struct AdapterParams {
    Real *A, *B;     // [rank, in], [out, rank]
    Real *dA, *dB;
    Real *m, *dm;    // [out] DoRA's magnitudes, or NULL (plain LoRA)
};

typedef struct {
    int rank;
    float scaling;         // s: alpha / rank, or alpha / sqrt(rank) with rsLoRA
    float dropout;         // probability, on the adapter input only
    uint64_t dropout_seed; // masks depend on (seed, layer, input group): lora_dropout_seed; change it every micro-batch
    int recompute;         // 1: keep only each block's input, recompute the block in backward
} StepOptions;

// A batch: n_seqs sequences of seq_len tokens; targets[i] is the token that
// should follow tokens[i] in its sequence, or IGNORE_TARGET (not learned).
// A sequence may hold several samples packed one after another (--pack): then
// positions restart at 0 with each sample, and a token attends only to the
// earlier tokens of its own sample.
typedef struct {
    const int *tokens;
    const int *targets;
    int n_seqs, seq_len;
    const float *weights;    // NULL (each counted target weighs 1) or [n_seqs * seq_len] the weight of each
                             // target's loss (--prompt-loss-weight)
    const int *positions;    // NULL (token i at position i % seq_len) or [n_seqs * seq_len] each token's
                             // position in its own sample
} Batch;

// Runs forward and backward, ADDING grad_scale * d(sum of weighted token losses)
// to the adapters' gradients (grad_scale = 1 / the sum of the weights over the
// whole step, so micro-batches accumulate to the weighted mean over the step).
// Returns the summed weighted loss; *n_counted gets the number of counted
// targets in this batch.
// adapters[layer * N_LINEARS + target].
template <typename Real>
double train_step_cpu(const Config *c, const WeightSource<Real> *weights, AdapterParams<Real> *adapters,
                      const StepOptions *opt, const Batch *batch, double grad_scale, int *n_counted);

// The forward alone (no activations kept): summed loss and count.
template <typename Real>
double loss_cpu(const Config *c, const WeightSource<Real> *weights, const AdapterParams<Real> *adapters,
                const StepOptions *opt, const Batch *batch, int *n_counted);
