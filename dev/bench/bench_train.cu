// bench_train.cu: training-step throughput on a random-weight model of a
// named shape (no files needed), for the side-by-side with HF transformers +
// peft (dev/bench/bench_hf_peft.py takes the same arguments).
//   make build/bench_train && ./build/bench_train --shape smollm2-135m --batch 8 --seq 512
//   ./build/bench_train --device cpu --batch 1 --seq 256 --steps 2
//   ./build/bench_train --device cpu --shape tiny --dora 1 --lora-dropout 0.05   (DoRA, dora.h: its cost against --dora 0)
//   ./build/bench_train --shape llama-3.2-1b --save models/random-llama-3.2-1b   (then exits)
//   ./build/bench_train --model models/random-llama-3.2-1b --batch 4 --seq 512
//   ./build/bench_train --shape llama-3.2-1b --batch 4 --seq 2048 --offload 1 --paged-optim 1   (./train's placements)
// --save writes the random model as an HF directory (bf16 weights, config.json,
// and a tokenizer so our loader takes it: the default model's, or --tokenizer
// FILE.json; the benchmark never tokenizes text), which dev/bench/bench_hf_peft.py --model loads too: both
// trainers then run on the same file. Prints tokens per second (and on the
// GPU MFU and peak memory) as one line.
#include "adamw.h"
#include "dora.h"
#include "trainer/base_weights.h"
#include "ops/gpu.h"
#include "lora.h"
#include "infer/merge.h"
#include "model.h"
#include "ops/cross_entropy.h"
#include "trainer/train_gpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vector>

static Config shape_config(const char *shape) {
    Config c;
    memset(&c, 0, sizeof c);
    c.arch = ARCH_LLAMA;
    c.norm_eps = 1e-5f;
    c.max_seq_len = 8192;
    if (strcmp(shape, "smollm2-135m") == 0) {
        c.dim = 576; c.hidden_dim = 1536; c.n_layers = 30; c.n_heads = 9; c.n_kv_heads = 3; c.head_dim = 64;
        c.vocab_size = 49152; c.rope_theta = 100000.0f; c.tied_embeddings = 1;
    } else if (strcmp(shape, "tiny") == 0) {   // SmolLM2's vocabulary: the default tokenizer and data fit
        c.dim = 64; c.hidden_dim = 192; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2; c.head_dim = 16;
        c.vocab_size = 49152; c.rope_theta = 100000.0f; c.tied_embeddings = 1;
    } else if (strcmp(shape, "llama-3.2-1b") == 0) {
        c.dim = 2048; c.hidden_dim = 8192; c.n_layers = 16; c.n_heads = 32; c.n_kv_heads = 8; c.head_dim = 64;
        c.vocab_size = 128256; c.rope_theta = 500000.0f; c.tied_embeddings = 1;
    } else if (strcmp(shape, "llama-3.1-8b") == 0) {
        c.dim = 4096; c.hidden_dim = 14336; c.n_layers = 32; c.n_heads = 32; c.n_kv_heads = 8; c.head_dim = 128;
        c.vocab_size = 128256; c.rope_theta = 500000.0f; c.tied_embeddings = 0;
    } else {
        fprintf(stderr, "bench_train: unknown --shape %s (smollm2-135m, tiny, llama-3.2-1b, llama-3.1-8b)\n", shape);
        exit(2);
    }
    return c;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// --save: the random model of a shape as an HF directory, with a tokenizer
// attached: tokenizer_json when given (where the default model is absent),
// else the default model's.
static int save_random_model(const char *shape, const char *dir, const char *tokenizer_json) {
    char err[1024];
    Config c = shape_config(shape);
    Model model, tokenizer_source;
    memset(&tokenizer_source, 0, sizeof tokenizer_source);
    if (tokenizer_json) tokenizer_source.tokenizer = tokenizer_from_json(tokenizer_json, err, sizeof err);
    else if (model_load(&tokenizer_source, DEFAULT_MODEL, err, sizeof err) != 0)
        tokenizer_source.tokenizer = NULL;
    if (!tokenizer_source.tokenizer || model_init_random(&model, &c, 1, err, sizeof err) != 0) {
        fprintf(stderr, "bench_train: %s\n", err);
        return 1;
    }
    model.tokenizer = tokenizer_source.tokenizer;
    int status = model_save_hf(&model, dir, err, sizeof err);
    if (status != 0) fprintf(stderr, "bench_train: %s\n", err);
    else printf("wrote %s: random %s weights in bf16 (seed 1), config.json and a tokenizer\n", dir, shape);
    model.tokenizer = NULL;
    model_free(&model);
    model_free(&tokenizer_source);
    return status ? 1 : 0;
}

// One training step (zeroed gradients, forward, backward, AdamW) on the CPU path.
static void cpu_step(const Config *c, const BaseWeights *base, LoraSet *lora, AdapterParams<float> *params,
                     AdamWState *adam, const StepOptions *opt, const Batch *b) {
    AdamWConfig config = adamw_default_config();
    int counted = 0;
    lora_set_zero_grads(lora);
    train_step_cpu(c, &base->source, params, opt, b, 1e-4, &counted);
    adamw_step_cpu(lora->params, lora->grads, adam, &config, 1e-4f);
}

static void bench_cpu(const Config *c, const Model *model, LoraSet *lora, const StepOptions *opt, const Batch *b,
                      int nf4, int steps, const char *shape) {
    BaseWeights base;
    if (base_weights_init(&base, model, nf4 ? QUANT_NF4 : QUANT_NONE, 1) != 0) exit(1);
    int n_adapters = c->n_layers * N_LINEARS;
    std::vector<AdapterParams<float>> params(n_adapters);
    for (int i = 0; i < n_adapters; i++) {
        LoraAdapter *a = &lora->adapters[i];
        params[i] = {a->A, a->B, a->dA, a->dB, a->m, a->dm};
    }
    AdamWState adam;
    if (adamw_init(&adam, lora->n_params) != 0) exit(1);
    double timed = 0.0;
    for (int step = 0; step < steps + 1; step++) {   // one warm-up step
        double t0 = now_seconds();
        cpu_step(c, &base, lora, params.data(), &adam, opt, b);
        if (step >= 1) timed += now_seconds() - t0;
    }
    printf("ours | %s | %s | cpu | batch %d seq %d rank %d recompute %d dropout %g%s | %.1f tok/s | %.0f ms/step\n",
           shape, nf4 ? "nf4" : "fp32", b->n_seqs, b->seq_len, opt->rank, opt->recompute, opt->dropout,
           lora->dora ? " dora" : "",
           (double)b->n_seqs * b->seq_len * steps / timed, 1000.0 * timed / steps);
    adamw_free(&adam);
    base_weights_free(&base);
}

int main(int argc, char **argv) {
    const char *shape = "smollm2-135m", *device = "cuda", *attention = "auto", *save_dir = NULL, *model_dir = NULL,
               *tokenizer_json = NULL;
    int batch = 8, seq = 512, rank = 16, recompute = 1, steps = 10, nf4 = 1, dora = 0, offload = 0, paged_optim = 0;
    float dropout = 0.0f;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--shape") == 0) shape = argv[i + 1];
        else if (strcmp(argv[i], "--batch") == 0) batch = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--seq") == 0) seq = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--rank") == 0) rank = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--recompute") == 0) recompute = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--offload") == 0) offload = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--paged-optim") == 0) paged_optim = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--steps") == 0) steps = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--quant") == 0) nf4 = strcmp(argv[i + 1], "nf4") == 0;
        else if (strcmp(argv[i], "--dora") == 0) dora = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--lora-dropout") == 0) dropout = (float)atof(argv[i + 1]);
        else if (strcmp(argv[i], "--device") == 0) device = argv[i + 1];
        else if (strcmp(argv[i], "--attention") == 0) attention = argv[i + 1];
        else if (strcmp(argv[i], "--save") == 0) save_dir = argv[i + 1];
        else if (strcmp(argv[i], "--model") == 0) model_dir = argv[i + 1];
        else if (strcmp(argv[i], "--tokenizer") == 0) tokenizer_json = argv[i + 1];
        else { fprintf(stderr, "bench_train: unknown option %s\n", argv[i]); return 2; }
    }
    char err[1024];
    Model model;
    if (save_dir) return save_random_model(shape, save_dir, tokenizer_json);
    const char *attention_kinds[] = {"auto", "simple", "flash", "flash_tc"};
    int attention_known = 0;
    for (const char *known : attention_kinds) attention_known |= strcmp(attention, known) == 0;
    if (!attention_known) {
        fprintf(stderr, "bench_train: --attention %s: it must be auto, simple, flash or flash_tc\n", attention);
        return 2;
    }
    int on_gpu = strcmp(device, "cuda") == 0;
    if (on_gpu && !gpu_available()) { fprintf(stderr, "bench_train: no CUDA device (try --device cpu)\n"); return 1; }
    if (!on_gpu && (offload || paged_optim)) {
        fprintf(stderr, "bench_train: --offload and --paged-optim place GPU state: not with --device cpu\n");
        return 2;
    }
    if (model_dir) {
        if (model_load(&model, model_dir, err, sizeof err) != 0) { fprintf(stderr, "bench_train: %s\n", err); return 1; }
        shape = model_dir;
    } else {
        Config random_config = shape_config(shape);
        if (model_init_random(&model, &random_config, 1, err, sizeof err) != 0) {
            fprintf(stderr, "bench_train: %s\n", err);
            return 1;
        }
    }
    Config c = model.config;
    int enabled[N_LINEARS] = {1, 1, 1, 1, 1, 1, 1};
    LoraSet lora;
    float alpha = 2.0f * rank;
    if (lora_set_init(&lora, &c, enabled, rank, alpha, 0, dropout, 1, dora) != 0) return 1;
    if (dora && dora_init_magnitudes(&lora, &model, nf4, 1) != 0) return 1;
    StepOptions opt = {rank, lora_scale(alpha, rank, 0), dropout, 0, recompute};
    std::vector<int> tokens((size_t)batch * seq), targets((size_t)batch * seq);
    for (size_t i = 0; i < tokens.size(); i++) tokens[i] = (int)((i * 7919) % c.vocab_size);
    for (size_t i = 0; i < tokens.size(); i++) targets[i] = (i + 1) % seq ? tokens[i + 1] : IGNORE_TARGET;
    Batch b = {tokens.data(), targets.data(), batch, seq, NULL, NULL};
    if (!on_gpu) {
        bench_cpu(&c, &model, &lora, &opt, &b, nf4, steps, shape);
        lora_set_free(&lora);
        model_free(&model);
        return 0;
    }
#ifdef __CUDACC__
    GpuTrainer g;
    GpuPlacement placement = {paged_optim, offload};
    gpu_trainer_init(&g, &model, nf4 ? QUANT_NF4 : QUANT_NONE, 1, &lora, &opt, batch, seq, &placement);
    if (strcmp(attention, "simple") == 0) gpu_trainer_set_attention(&g, ATTENTION_SIMPLE);
    if (strcmp(attention, "flash") == 0) gpu_trainer_set_attention(&g, ATTENTION_FLASH);
    if (strcmp(attention, "flash_tc") == 0) gpu_trainer_set_attention(&g, ATTENTION_FLASH_TC);
    gpu_trainer_print_memory(&g, stdout);
    AdamWConfig config = adamw_default_config();
    double timed = 0.0;
    int counted = 0;
    for (int step = 0; step < steps + 2; step++) {   // two warm-up steps
        CUDA_CHECK(cudaDeviceSynchronize());
        double t0 = now_seconds();
        gpu_zero_grads(&g);
        gpu_train_micro_batch(&g, &b, 0, 1e-4, &counted);
        gpu_scale_grads(&g, 1.0f);
        gpu_adamw_step(&g, &config, 1e-4f);
        CUDA_CHECK(cudaDeviceSynchronize());
        if (step >= 2) timed += now_seconds() - t0;
    }
    double tok_per_s = (double)batch * seq * steps / timed;
    double flops = gpu_flops_per_token(&c, seq, recompute) * tok_per_s;
    double peak = gpu_peak_bf16_flops();
    const char *kind = attention_kind_name(g.attention);
    printf("ours | %s | %s | %s attention | batch %d seq %d rank %d recompute %d offload %d paged %d%s | %.0f tok/s | "
           "%.1f ms/step | MFU %.1f%% | peak mem %.0f MiB (+ %.0f MiB managed, %.0f MiB pinned on the host)\n", shape,
           nf4 ? "nf4" : "bf16", kind, batch, seq, rank, recompute, offload, paged_optim, dora ? " dora" : "",
           tok_per_s, 1000.0 * timed / steps, peak > 0 ? 100.0 * flops / peak : 0.0, gpu_peak_bytes() / 1048576.0,
           gpu_managed_bytes() / 1048576.0, g.memory.offloaded / 1048576.0);
    gpu_trainer_free(&g);
#endif
    lora_set_free(&lora);
    model_free(&model);
    return 0;
}
