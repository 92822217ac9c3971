// adamw.h: the optimizer side of a training step, as plain fp32 CPU functions:
// AdamW with decoupled weight decay (as torch.optim.AdamW), the learning-rate
// schedule (linear warmup, then cosine decay to a floor), global-norm gradient
// clipping (as torch.nn.utils.clip_grad_norm_) and the loss normalisation of
// gradient accumulation. The CUDA kernels are tested against these.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- AdamW -------------------------------------------------------------------

typedef struct {
    float lr;            // peak learning rate (the schedule's max_lr)
    float beta1, beta2;  // decay rates of the first and second moments
    float eps;           // added to sqrt(v_hat) in the denominator
    float weight_decay;  // decoupled: p *= 1 - lr * weight_decay each step
} AdamWConfig;

// The hyperparameters are floats: 0.999f is 0.99900001287, so 1 - beta2 is
// 1.3e-5 (relative) below torch's 1 - 0.999 in Python doubles; the bias
// correction uses the same beta2, so v_hat barely moves (and not at all on
// step 1). 1 - beta and the bias corrections are computed in double from the
// float values.

// torch.optim.AdamW's defaults (lr 1e-3, betas 0.9/0.999, eps 1e-8) except
// weight_decay = 0.0, the default of HF TrainingArguments and of the peft /
// QLoRA recipes (torch's own default is 0.01).
AdamWConfig adamw_default_config(void);

// Optimizer state of n fp32 parameters: the moments m and v, and the number
// of steps taken so far. m and v lie in the layout of the parameters they
// follow (for the adapters, LoraSet's flat params: lora.h).
typedef struct {
    size_t n;
    float *m, *v;
    int64_t step;
} AdamWState;

// Zeroed moments, step 0. Returns 0, or -1 when out of memory.
int adamw_init(AdamWState *s, size_t n);
void adamw_free(AdamWState *s);

// One AdamW step over the n = s->n parameters at learning rate lr (this
// step's value of the schedule; c->lr is not used). Same arithmetic and order
// as torch.optim.AdamW (amsgrad off): with t = s->step after incrementing it,
//   p = p * (1 - lr wd)
//   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
//   p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
void adamw_step_cpu(float *params, const float *grads, AdamWState *s, const AdamWConfig *c, float lr);

// ---- learning-rate schedule ------------------------------------------------

typedef struct {
    float max_lr;          // reached at the last warmup step
    float min_lr_frac;     // the floor, as a fraction of max_lr
    int64_t warmup_steps;  // 0: no warmup
    int64_t total_steps;   // optimizer steps in the whole run
} LRSchedule;

// Learning rate of optimizer step `step` (0-based), exactly as HF
// transformers' get_cosine_with_min_lr_schedule_with_warmup_lr_rate
// (min_lr_rate = min_lr_frac; lr_scheduler_type "cosine_warmup_with_min_lr"),
// W = warmup_steps, T = total_steps, min = max_lr * min_lr_frac:
//   step < W:  max_lr * (step + 1) / W           (step W-1 is at max_lr)
//   step >= W: min + 0.5 (1 + cos(pi p)) (max_lr - min),
//              p = min(1, (step - W + 1) / max(1, T - W))   (step T-1 is at min)
// So no step is spent at lr 0 and the floor is reached on the last step. HF's
// plain "cosine_with_min_lr" is this schedule one step later: its step s + 1
// has our lr of step s, so with warmup its step 0 trains at lr 0.
float lr_at_step(const LRSchedule *s, int64_t step);

// Warmup length from a --warmup value, as HF TrainingArguments.get_warmup_steps:
// warmup < 1 is a fraction of total_steps, ceil(total_steps * warmup) computed
// in double; warmup >= 1 is a step count (truncated). -1 when warmup is
// negative or not a number.
int64_t warmup_steps_from(double warmup, int64_t total_steps);

// ---- gradient clipping -----------------------------------------------------

// sqrt(sum of g^2 over the n gradients of every tensor, laid end to end),
// accumulated in double, in index order.
double global_grad_norm(const float *grads, size_t n);

// The factor that clips the gradients to global norm max_norm, as
// torch.nn.utils.clip_grad_norm_: min(1, max_norm / (norm + 1e-6)).
// max_norm <= 0 turns clipping off (1.0), as HF Trainer's max_grad_norm.
// A non-finite norm gives NaN (norm NaN) or 0 (norm infinite), as torch: the
// caller should check isfinite(norm) and skip the step.
float clip_scale(double norm, float max_norm);

// g *= scale over all n gradients.
void scale_grads_cpu(float *grads, size_t n, float scale);

// Bytes of sum_squares_gpu's workspace for up to n values: its block sums (a
// double for each of at most 1024 blocks, and the total); at most 8200 bytes.
size_t sum_squares_workspace_bytes(size_t n);

// ---- gradient accumulation ---------------------------------------------------

// The loss of one optimizer step made of several micro-batches, and the factor
// that turns the summed gradients into the gradient of that loss.
typedef struct {
    double loss;            // sum of token losses / answer_tokens (0 when there are none)
    float grad_scale;       // 1 / answer_tokens (0 when there are none: no update)
    int64_t answer_tokens;  // unmasked target tokens over all micro-batches
} StepLoss;

// loss_sums[i]: the summed (not averaged) answer-token loss of micro-batch i;
// answer_tokens[i]: its number of answer tokens. The step's loss is the mean
// over ALL answer tokens of the step:
//   loss = sum_i loss_sums[i] / sum_i answer_tokens[i]
// Averaging each micro-batch first and then averaging the averages is wrong:
// it weights a token of a micro-batch with 3 answer tokens 10/3 times as much
// as one of a micro-batch with 10, so the result depends on how the examples
// were split into micro-batches (HF Trainer had this bug until 2024).
// Backward of the summed losses, then grads *= grad_scale, gives the gradient
// of this loss; the answer-token counts are known from the labels before any
// forward pass, so the same scale may instead be applied to dlogits.
StepLoss step_loss_from_micro_batches(const double *loss_sums, const int64_t *answer_tokens, int n_micro);

#ifdef __cplusplus
}
#endif

// ---- on the GPU ----------------------------------------------------------------
#ifdef __CUDACC__
#include "ops/gpu.h"

// One AdamW step over n fp32 params on the device, moments m, v on the device;
// step = the step number AFTER incrementing (1 for the first step). The same
// arithmetic as adamw_step_cpu: its scalars (bias corrections, 1 - beta) are
// computed on the host in double, by the same function.
void adamw_step_gpu(float *params, const float *grads, float *m, float *v, size_t n, int64_t step,
                    const AdamWConfig *c, float lr);
// The sum of x[i]^2 over n fp32 values, accumulated in double; deterministic
// (a grid and an order of additions fixed by n: the same result every run).
// workspace: workspace_bytes of device memory, at least sum_squares_workspace_bytes(n)
// (a smaller one stops the program with a message); nothing is allocated on the device.
double sum_squares_gpu(const float *x, size_t n, void *workspace, size_t workspace_bytes);
// x[i] *= scale
void scale_gpu(float *x, size_t n, float scale);
#endif
