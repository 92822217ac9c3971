// trainer/engine_cpu.cpp: the training steps on the CPU (see trainer/engine.h): each
// operation is the fp32 reference function over the host's flat state.
#include "trainer/engine.h"
#include "formats/tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const Config *c;
    BaseWeights base;                 // the frozen weights as the step reads them
    AdapterParams<float> *adapters;   // views of the LoraSet's adapters, as train_step_cpu takes them
    StepOptions step;
} CpuEngine;

static CpuEngine *cpu_engine(Engine *e) { return (CpuEngine *)e->impl; }

static void cpu_zero_grads(Engine *e) { lora_set_zero_grads(e->lora); }

static double cpu_micro_batch(Engine *e, const Batch *batch, uint64_t dropout_seed, double grad_scale,
                              int *n_counted) {
    CpuEngine *cpu = cpu_engine(e);
    StepOptions opt = cpu->step;
    opt.dropout_seed = dropout_seed;
    return train_step_cpu(cpu->c, &cpu->base.source, cpu->adapters, &opt, batch, grad_scale, n_counted);
}

static double cpu_loss(Engine *e, const Batch *batch, int *n_counted) {
    CpuEngine *cpu = cpu_engine(e);
    StepOptions opt = {cpu->step.rank, cpu->step.scaling, 0.0f, 0, 0};   // no dropout; forward only
    return loss_cpu(cpu->c, &cpu->base.source, cpu->adapters, &opt, batch, n_counted);
}

static double cpu_grad_norm(Engine *e) { return global_grad_norm(e->lora->grads, e->lora->n_params); }

static void cpu_scale_grads(Engine *e, float scale) { scale_grads_cpu(e->lora->grads, e->lora->n_params, scale); }

static void cpu_adamw(Engine *e, const AdamWConfig *config, float lr) {
    adamw_step_cpu(e->lora->params, e->lora->grads, e->adam, config, lr);
}

// The host's state is the CPU engine's own: nothing to copy, nothing to add to the step's line.
static void cpu_sync(Engine *e) {}
static void cpu_print_step_stats(Engine *e, long tokens, double seconds) {}

static void cpu_free(Engine *e) {
    CpuEngine *cpu = cpu_engine(e);
    base_weights_free(&cpu->base);
    free(cpu->adapters);
    free(cpu);
    e->impl = NULL;
}

int engine_cpu_init(Engine *e, const Model *model, const EngineOptions *opt, LoraSet *lora, AdamWState *adam,
                    char *err, size_t err_size) {
    int nf4 = opt->quant == QUANT_NF4;
    CpuEngine *cpu = (CpuEngine *)cpu_calloc(1, sizeof(CpuEngine), "CPU engine");
    if (base_weights_init(&cpu->base, model, opt->quant, opt->double_quant) != 0) {
        snprintf(err, err_size, "out of memory: the base weights (%s) did not fit%s", nf4 ? "NF4" : "fp32",
                 nf4 ? "" : "; --quant nf4 needs about 8x less");
        free(cpu);
        return -1;
    }
    printf("base: %s, linear weights %.1f MB in memory for training\n",
           nf4 ? (opt->double_quant ? "NF4 + double quant" : "NF4") : "fp32 (no quantization)",
           base_weights_linear_bytes(&cpu->base) / 1e6);
    cpu->c = &model->config;
    cpu->step = opt->step;
    int n_adapters = lora->n_layers * N_LINEARS;
    cpu->adapters = (AdapterParams<float> *)cpu_calloc((size_t)n_adapters, sizeof(AdapterParams<float>), "LoRA views");
    for (int i = 0; i < n_adapters; i++) {
        LoraAdapter *a = &lora->adapters[i];
        cpu->adapters[i] = {a->A, a->B, a->dA, a->dB, a->m, a->dm};
    }
    e->device = "cpu";
    e->lora = lora;
    e->adam = adam;
    e->impl = cpu;
    e->zero_grads = cpu_zero_grads;
    e->micro_batch = cpu_micro_batch;
    e->loss = cpu_loss;
    e->grad_norm = cpu_grad_norm;
    e->scale_grads = cpu_scale_grads;
    e->adamw = cpu_adamw;
    e->sync_to_host = cpu_sync;
    e->sync_from_host = cpu_sync;
    e->print_step_stats = cpu_print_step_stats;
    e->free = cpu_free;
    return 0;
}
