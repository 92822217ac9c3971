// trainer/engine_gpu.cu: the training steps on one GPU (see trainer/engine.h): each
// operation is trainer/train_gpu.h's, on the device's copy of the flat state.
// A build without nvcc has only engine_gpu_init, which says so.
#include "trainer/engine.h"
#include "formats/tensor.h"
#include "ops/gpu.h"

#include <stdio.h>
#include <stdlib.h>

#ifdef __CUDACC__
#include "trainer/train_gpu.h"

typedef struct {
    GpuTrainer trainer;
    double flops_per_token;   // matmul FLOPs per trained token at the longest sample, for MFU
} GpuEngine;

static GpuTrainer *trainer(Engine *e) { return &((GpuEngine *)e->impl)->trainer; }

static void gpu_engine_zero_grads(Engine *e) { gpu_zero_grads(trainer(e)); }

static double gpu_engine_micro_batch(Engine *e, const Batch *batch, uint64_t dropout_seed, double grad_scale,
                                     int *n_counted) {
    return gpu_train_micro_batch(trainer(e), batch, dropout_seed, grad_scale, n_counted);
}

static double gpu_engine_loss(Engine *e, const Batch *batch, int *n_counted) {
    return gpu_loss(trainer(e), batch, n_counted);
}

static double gpu_engine_grad_norm(Engine *e) { return gpu_grad_norm(trainer(e)); }

static void gpu_engine_scale_grads(Engine *e, float scale) { gpu_scale_grads(trainer(e), scale); }

static void gpu_engine_adamw(Engine *e, const AdamWConfig *config, float lr) {
    gpu_adamw_step(trainer(e), config, lr);
}

static void gpu_engine_sync_to_host(Engine *e) { gpu_download_lora(trainer(e), e->lora, e->adam); }

static void gpu_engine_sync_from_host(Engine *e) { gpu_upload_lora(trainer(e), e->lora, e->adam); }

static void gpu_engine_print_step_stats(Engine *e, long tokens, double seconds) {
    double flops_per_token = ((GpuEngine *)e->impl)->flops_per_token, peak = gpu_peak_bf16_flops();
    // MFU = achieved matmul FLOP/s over the device's peak bf16 rate (when the device is in ops/gpu.cu's table)
    if (peak > 0) printf(" | MFU %.1f%%", 100.0 * flops_per_token * tokens / seconds / peak);
    printf(" | peak mem %.0f MiB", gpu_peak_bytes() / 1048576.0);
}

static void gpu_engine_free(Engine *e) {
    gpu_trainer_free(trainer(e));
    free(e->impl);
    e->impl = NULL;
}

int engine_gpu_init(Engine *e, const Model *model, const EngineOptions *opt, LoraSet *lora, AdamWState *adam,
                    char *err, size_t err_size) {
    GpuEngine *gpu = (GpuEngine *)cpu_calloc(1, sizeof(GpuEngine), "GPU engine");
    GpuPlacement placement = {opt->paged_optim, opt->offload};
    gpu_trainer_init(&gpu->trainer, model, opt->quant, opt->double_quant, lora, &opt->step, opt->max_seqs,
                     opt->max_seq_len, &placement);
    const char *act = gpu_act16() == ACT16_FP16 ? "fp16" : "bf16";
    printf("base: %s%s on the GPU (%s activations, fp32 LoRA weights and AdamW moments)\n",
           opt->quant == QUANT_NF4 ? (opt->double_quant ? "NF4 + double quant" : "NF4") : act,
           opt->quant == QUANT_NF4 ? "" : " (no quantization)", act);
    gpu_trainer_print_memory(&gpu->trainer, stdout);
    gpu->flops_per_token = gpu_flops_per_token(&model->config, opt->max_seq_len, opt->step.recompute);
    e->device = gpu_device_name();
    e->lora = lora;
    e->adam = adam;
    e->impl = gpu;
    e->zero_grads = gpu_engine_zero_grads;
    e->micro_batch = gpu_engine_micro_batch;
    e->loss = gpu_engine_loss;
    e->grad_norm = gpu_engine_grad_norm;
    e->scale_grads = gpu_engine_scale_grads;
    e->adamw = gpu_engine_adamw;
    e->sync_to_host = gpu_engine_sync_to_host;
    e->sync_from_host = gpu_engine_sync_from_host;
    e->print_step_stats = gpu_engine_print_step_stats;
    e->free = gpu_engine_free;
    return 0;
}

#else

int engine_gpu_init(Engine *e, const Model *model, const EngineOptions *opt, LoraSet *lora, AdamWState *adam,
                    char *err, size_t err_size) {
    snprintf(err, err_size, "this build has no CUDA (nvcc was not found at build time)");
    return -1;
}
#endif
