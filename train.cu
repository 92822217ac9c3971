// train.cu: ./train, QLoRA fine-tuning on RAFT samples, on the GPU (trainer/train_gpu.cu)
// when one is present, else on the CPU reference path (trainer/train_step.cpp).
//   ./train                              the default model on the Debian FAQ (data/faq/train.bin, built by make)
//   ./train --data my.jsonl --steps 100 --lr 2e-4 --out out/my-run
// The base model is frozen (NF4 by default), LoRA adapters on q,k,v,o,gate,up,
// down are trained with AdamW on the answer tokens only; the adapter is saved
// in HF peft's layout.
#include "adamw.h"
#include "infer/adapter.h"
#include "trainer/base_weights.h"
#include "trainer/checkpoint.h"
#include "formats/cli.h"
#include "data/raft.h"
#include "data/tokfile.h"
#include "eval/eval.h"
#include "ops/gpu.h"
#include "lora.h"
#include "ops/cross_entropy.h"
#include "trainer/memory_plan.h"
#include "infer/merge.h"
#include "model.h"
#include "nf4.h"
#include "trainer/plot.h"
#include "trainer/train_gpu.h"
#include "trainer/train_step.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define DEFAULT_DATA "data/faq/train.bin"

typedef struct {
    const char *model_path, *data_path, *val_path, *device, *out_dir, *targets, *quant, *resume_dir;
    int steps, epochs, batch, max_seq, grad_accum, seed, rank, rslora, double_quant, recompute, eval_every, save_every, stop_at, early_stop, plan, merge, eval_answers;
    float gpu_mem_gb;
    float lr, warmup, lr_min_frac, clip, weight_decay, alpha, lora_dropout, val_frac;
} Options;

static const Options DEFAULTS = {
    DEFAULT_MODEL, DEFAULT_DATA, NULL, "auto", "out", "q,k,v,o,gate,up,down", "nf4", NULL,
    12, 0, 1, 1024, 2, 1234, 16, 0, 1, 0, 4, 0, 0, 0, 0, 0, 0, 80.0f,
    5e-4f, 0.1f, 0.1f, 1.0f, 0.0f, 32.0f, 0.05f, 0.125f,
};

static void usage(FILE *out) {
    const Options *d = &DEFAULTS;
    fprintf(out,
            "usage: ./train [options]\n"
            "QLoRA fine-tuning: frozen (NF4) base + LoRA adapters, answer-only loss on RAFT samples.\n"
            "  --model PATH        GGUF file or HF model directory (default %s)\n"
            "  --data PATH         RAFT samples: a .bin file from ./prepare, or JSONL (default %s)\n"
            "  --val-data PATH     validation samples (default: the val.bin beside a train.bin; for JSONL,\n"
            "                      --val-frac of --data held out)\n"
            "  --val-frac F        share of JSONL --data held out when no --val-data (default %g)\n"
            "  --device D          cpu, cuda or auto: cuda when a GPU is present (default %s)\n"
            "  --steps N           optimizer steps (default %d; --epochs overrides)\n"
            "  --epochs N          passes over the training samples (default: use --steps)\n"
            "  --batch N           sequences per micro-batch (default %d)\n"
            "  --grad-accum N      micro-batches per optimizer step (default %d)\n"
            "  --seq N             max tokens per sample; longer ones are skipped and counted (default %d)\n"
            "  --lr LR             peak learning rate (default %g)\n"
            "  --warmup W          warmup steps, or a fraction of the steps when < 1 (default %g)\n"
            "  --lr-min-frac F     cosine decay floor as a fraction of --lr (default %g)\n"
            "  --clip C            global gradient-norm clip, 0 = off (default %g)\n"
            "  --weight-decay WD   AdamW decoupled weight decay (default %g)\n"
            "  --rank R            LoRA rank (default %d)\n"
            "  --alpha A           LoRA alpha; scaling = alpha / rank (default %g)\n"
            "  --rslora            scaling = alpha / sqrt(rank)\n"
            "  --lora-dropout P    dropout on the adapter input (default %g)\n"
            "  --targets LIST      adapted layers among q,k,v,o,gate,up,down (default %s)\n"
            "  --quant Q           nf4 (QLoRA) or none (plain LoRA on an fp32 base) (default %s)\n"
            "  --double-quant 0|1  double-quantize the NF4 block scales (default %d)\n"
            "  --recompute 0|1     gradient checkpointing: recompute each block in backward (default %d)\n"
            "  --eval-every N      validation loss every N steps (default %d)\n"
            "  --early-stop N      stop when val loss has not improved for N evaluations (default 0: off)\n"
            "  --eval-answers N    at each validation, also answer the first N validation questions greedily and\n"
            "                      score them as ./evaluate does (ROUGE, embedding cosine; CPU) (default 0: off)\n"
            "  --seed S            seed for adapters, dropout and data order (default %d)\n"
            "  --out DIR           where the log, checkpoints and adapter go (default %s)\n"
            "  --save-every N      also checkpoint every N steps (default 0: at the end, and the best by val loss)\n"
            "  --resume DIR        continue the run whose --out was DIR (same model, data and options);\n"
            "                      --out defaults to DIR\n"
            "  --stop-at N         pause after step N with a checkpoint, to --resume later (default 0: run to the end)\n"
            "  --merge             also write OUT/merged/: the final adapter merged into the (NF4-dequantized) base,\n"
            "                      an HF model directory in bf16 that transformers and ./generate --model load\n"
            "  --plan              print the GPU memory plan for these options and exit (no training)\n"
            "  --gpu-mem GB        GPU memory the plan is checked against (default %g)\n"
            "  -h, --help          this help\n",
            d->model_path, d->data_path, d->val_frac, d->device, d->steps, d->batch, d->grad_accum, d->max_seq,
            d->lr, d->warmup, d->lr_min_frac, d->clip, d->weight_decay, d->rank, d->alpha, d->lora_dropout,
            d->targets, d->quant, d->double_quant, d->recompute, d->eval_every, d->seed, d->out_dir, d->gpu_mem_gb);
}

static void bad_usage(const char *message, const char *detail) {
    fprintf(stderr, "train: %s%s\n", message, detail);
    usage(stderr);
    exit(2);
}

// An option value out of its range: the one-line message, status 2.
static void require(int ok, const char *message) {
    if (ok) return;
    fprintf(stderr, "train: %s\n", message);
    exit(2);
}

// The options that take a value (to tell an unknown option from a missing value).
static const char *const VALUE_OPTIONS[] = {
    "--model", "--data", "--val-data", "--val-frac", "--device", "--out", "--targets", "--quant", "--steps",
    "--epochs", "--batch", "--grad-accum", "--seq", "--seed", "--rank", "--double-quant", "--recompute",
    "--eval-every", "--save-every", "--resume", "--stop-at", "--early-stop", "--eval-answers", "--gpu-mem", "--lr",
    "--warmup", "--lr-min-frac", "--clip", "--weight-decay", "--alpha", "--lora-dropout", NULL};

static Options parse_args(int argc, char **argv) {
    Options o = DEFAULTS;
    const char *const bit_choices[] = {"0", "1", NULL};
    char err[256];
    int out_given = 0;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) { usage(stdout); exit(0); }
        if (strcmp(f, "--rslora") == 0) { o.rslora = 1; continue; }
        if (strcmp(f, "--plan") == 0) { o.plan = 1; continue; }
        if (strcmp(f, "--merge") == 0) { o.merge = 1; continue; }
        if (strncmp(f, "--", 2) != 0) bad_usage("unexpected argument ", f);
        const char *v = cli_option_value(argc, argv, &i, VALUE_OPTIONS, err, sizeof err);
        if (!v) bad_usage(err, "");
        v = cli_text("train", f, v);
        if (strcmp(f, "--model") == 0) o.model_path = v;
        else if (strcmp(f, "--data") == 0) o.data_path = v;
        else if (strcmp(f, "--val-data") == 0) o.val_path = v;
        else if (strcmp(f, "--val-frac") == 0) o.val_frac = cli_float("train", f, v);
        else if (strcmp(f, "--device") == 0) o.device = v;
        else if (strcmp(f, "--out") == 0) { o.out_dir = v; out_given = 1; }
        else if (strcmp(f, "--targets") == 0) o.targets = v;
        else if (strcmp(f, "--quant") == 0) o.quant = v;
        else if (strcmp(f, "--steps") == 0) o.steps = cli_int("train", f, v);
        else if (strcmp(f, "--epochs") == 0) o.epochs = cli_int("train", f, v);
        else if (strcmp(f, "--batch") == 0) o.batch = cli_int("train", f, v);
        else if (strcmp(f, "--grad-accum") == 0) o.grad_accum = cli_int("train", f, v);
        else if (strcmp(f, "--seq") == 0) o.max_seq = cli_int("train", f, v);
        else if (strcmp(f, "--seed") == 0) o.seed = cli_int("train", f, v);
        else if (strcmp(f, "--rank") == 0) o.rank = cli_int("train", f, v);
        else if (strcmp(f, "--double-quant") == 0) o.double_quant = cli_choice("train", f, v, bit_choices);
        else if (strcmp(f, "--recompute") == 0) o.recompute = cli_choice("train", f, v, bit_choices);
        else if (strcmp(f, "--eval-every") == 0) o.eval_every = cli_int("train", f, v);
        else if (strcmp(f, "--save-every") == 0) o.save_every = cli_int("train", f, v);
        else if (strcmp(f, "--resume") == 0) o.resume_dir = v;
        else if (strcmp(f, "--stop-at") == 0) o.stop_at = cli_int("train", f, v);
        else if (strcmp(f, "--early-stop") == 0) o.early_stop = cli_int("train", f, v);
        else if (strcmp(f, "--eval-answers") == 0) o.eval_answers = cli_int("train", f, v);
        else if (strcmp(f, "--gpu-mem") == 0) o.gpu_mem_gb = cli_float("train", f, v);
        else if (strcmp(f, "--lr") == 0) o.lr = cli_float("train", f, v);
        else if (strcmp(f, "--warmup") == 0) o.warmup = cli_float("train", f, v);
        else if (strcmp(f, "--lr-min-frac") == 0) o.lr_min_frac = cli_float("train", f, v);
        else if (strcmp(f, "--clip") == 0) o.clip = cli_float("train", f, v);
        else if (strcmp(f, "--weight-decay") == 0) o.weight_decay = cli_float("train", f, v);
        else if (strcmp(f, "--alpha") == 0) o.alpha = cli_float("train", f, v);
        else if (strcmp(f, "--lora-dropout") == 0) o.lora_dropout = cli_float("train", f, v);
        else bad_usage("unknown option ", f);
    }
    require(o.steps >= 1, "--steps must be at least 1");
    require(o.epochs >= 0, "--epochs must be at least 0 (0: use --steps)");
    require(o.batch >= 1, "--batch must be at least 1");
    require(o.grad_accum >= 1 && o.grad_accum <= 65536, "--grad-accum must be in [1, 65536]");
    require(o.max_seq >= 2, "--seq must be at least 2");
    require(o.rank >= 1, "--rank must be at least 1");
    require(o.eval_every >= 1, "--eval-every must be at least 1");
    require(o.save_every >= 0, "--save-every must be at least 0 (0: off)");
    require(o.stop_at >= 0, "--stop-at must be at least 0 (0: off)");
    require(o.early_stop >= 0, "--early-stop must be at least 0 (0: off)");
    require(o.eval_answers >= 0, "--eval-answers must be at least 0 (0: off)");
    require(o.lr > 0, "--lr must be more than 0");
    require(o.warmup >= 0, "--warmup must be at least 0");
    require(o.lr_min_frac >= 0 && o.lr_min_frac <= 1, "--lr-min-frac must be in [0, 1]");
    require(o.clip >= 0, "--clip must be at least 0 (0: off)");
    require(o.weight_decay >= 0, "--weight-decay must be at least 0");
    require(o.alpha > 0 && o.alpha <= 1e4, "--alpha must be in (0, 10000] (the adapter's scale is alpha / rank; "
                                          "alpha is usually 1-2x the rank)");
    require(o.lora_dropout >= 0 && o.lora_dropout < 1, "--lora-dropout must be in [0, 1)");
    require(o.val_frac >= 0 && o.val_frac < 1, "--val-frac must be in [0, 1)");
    require(o.gpu_mem_gb > 0, "--gpu-mem must be more than 0");
    if (strcmp(o.quant, "nf4") != 0 && strcmp(o.quant, "none") != 0) bad_usage("--quant expects nf4 or none, got ", o.quant);
    if (strcmp(o.device, "cpu") != 0 && strcmp(o.device, "cuda") != 0 && strcmp(o.device, "auto") != 0)
        bad_usage("--device expects cpu, cuda or auto, got ", o.device);
    if (strcmp(o.device, "cuda") == 0 && !gpu_available()) {
        fprintf(stderr, "train: --device cuda: %s; use --device cpu\n",
                strcmp(gpu_device_name(), "none") == 0 ? "no CUDA device is visible" : "this build has no CUDA (nvcc was not found at build time)");
        exit(2);
    }
    if (strcmp(o.device, "auto") == 0) o.device = gpu_available() ? "cuda" : "cpu";
    if (o.resume_dir && !out_given) o.out_dir = o.resume_dir;   // a resumed run goes on in its own folder
    return o;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ---- data ------------------------------------------------------------------

// One sample as tokens with its shifted answer-only targets (see raft_encode).
typedef struct {
    int *ids;
    int *targets;
    int n_tokens;
    int n_answer;
} Example;

typedef struct {
    Example *examples;
    int count;
} ExampleSet;

static void free_examples(ExampleSet *set) {
    for (int i = 0; i < set->count; i++) { free(set->examples[i].ids); free(set->examples[i].targets); }
    free(set->examples);
    set->examples = NULL;
    set->count = 0;
}

// Encodes the samples whose indices are listed; skips (and counts) those longer than max_seq.
static int encode_examples(const Tokenizer *tok, const RaftData *data, const int *indices, int n, int max_seq,
                           ExampleSet *out, int *skipped) {
    out->examples = (Example *)cpu_calloc((size_t)(n > 0 ? n : 1), sizeof(Example), "samples");
    out->count = 0;
    *skipped = 0;
    for (int i = 0; i < n; i++) {
        Example e = {NULL, NULL, 0, 0};
        e.n_tokens = raft_encode(tok, &data->samples[indices[i]], &e.ids, &e.targets);
        if (e.n_tokens < 0) return -1;
        if (e.n_tokens > max_seq) {
            free(e.ids);
            free(e.targets);
            (*skipped)++;
            continue;
        }
        for (int t = 0; t < e.n_tokens; t++) e.n_answer += e.targets[t] != RAFT_IGNORE;
        out->examples[out->count++] = e;
    }
    return 0;
}

// splitmix64 step, for the data order
static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void shuffle(int *items, int n, uint64_t *state) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(next_random(state) % (uint64_t)(i + 1));
        int tmp = items[i]; items[i] = items[j]; items[j] = tmp;
    }
}

// Packs examples[order[first..first+count)] into one batch padded to the
// longest: padding tokens repeat the last token and are never learned.
static Batch make_batch(const ExampleSet *set, const int *order, int first, int count, int **tokens, int **targets) {
    int seq_len = 0;
    for (int i = 0; i < count; i++) {
        int n = set->examples[order[first + i]].n_tokens;
        if (n > seq_len) seq_len = n;
    }
    *tokens = (int *)cpu_malloc(sizeof(int) * count * seq_len, "batch tokens");
    *targets = (int *)cpu_malloc(sizeof(int) * count * seq_len, "batch targets");
    for (int i = 0; i < count; i++) {
        const Example *e = &set->examples[order[first + i]];
        for (int t = 0; t < seq_len; t++) {
            (*tokens)[i * seq_len + t] = e->ids[t < e->n_tokens ? t : e->n_tokens - 1];
            (*targets)[i * seq_len + t] = t < e->n_tokens ? e->targets[t] : RAFT_IGNORE;
        }
    }
    Batch batch = {*tokens, *targets, count, seq_len};
    return batch;
}

// ---- the trainer -------------------------------------------------------------

typedef struct {
    LoraSet lora;                     // parameters and gradients, flat (lora.h)
    AdamWState adam;                  // AdamW's moments, in the same layout
    AdapterParams<float> *params;     // views of lora for train_step
} Trainable;

static int trainable_init(Trainable *tr, const Config *c, const Options *o, const int enabled[N_TARGETS]) {
    memset(tr, 0, sizeof *tr);
    if (lora_set_init(&tr->lora, c, enabled, o->rank, o->alpha, o->rslora, o->lora_dropout, (uint64_t)o->seed) != 0)
        return -1;
    if (adamw_init(&tr->adam, tr->lora.n_params) != 0) return -1;
    int n_adapters = c->n_layers * N_TARGETS;
    tr->params =
        (AdapterParams<float> *)cpu_calloc((size_t)n_adapters, sizeof(AdapterParams<float>), "LoRA parameters");
    for (int i = 0; i < n_adapters; i++) {
        LoraAdapter *a = &tr->lora.adapters[i];
        tr->params[i] = {a->A, a->B, a->dA, a->dB};
    }
    return 0;
}

static void trainable_free(Trainable *tr) {
    adamw_free(&tr->adam);
    free(tr->params);
    lora_set_free(&tr->lora);
}

// Names the first adapter tensor holding NaN or Inf into out: among the
// gradients (dA, dB), or the weights (A, B) when weights is set. Returns 1 if
// there is one, else 0.
static int find_bad_tensor(const Trainable *tr, int weights, char *out, size_t size) {
    return lora_set_find_non_finite(&tr->lora, weights ? tr->lora.params : tr->lora.grads, out, size);
}

// Before anything is written: weights that diverged to NaN or Inf would make a
// checkpoint or adapter that only produces garbage. Returns -1 (message
// printed) if so; files written earlier are kept.
static int check_weights_finite(const Trainable *tr, const char *what) {
    char which[128];
    if (!find_bad_tensor(tr, 1, which, sizeof which)) return 0;
    fprintf(stderr, "train: the LoRA weights hold NaN or Inf (first: %s): training diverged; lower --lr or --alpha. "
                    "Not writing %s\n", which, what);
    return -1;
}

// s = alpha / r, or alpha / sqrt(r) with rsLoRA
static float lora_scaling(const Options *o) {
    return o->rslora ? o->alpha / sqrtf((float)o->rank) : o->alpha / (float)o->rank;
}

// ---- where the steps run: the CPU reference or the GPU ---------------------------
// The host copy of the adapters (tr->lora, tr->adam) is the CPU path's
// working copy; on the GPU it is refreshed by engine_sync_to_host before
// anything reads it (checkpoints, adapter export, naming a bad gradient).

typedef struct {
    int on_gpu;
    BaseWeights base;   // the CPU path's frozen weights
#ifdef __CUDACC__
    GpuTrainer gpu;
#endif
} Engine;

static void engine_zero_grads(Engine *e, Trainable *tr) {
#ifdef __CUDACC__
    if (e->on_gpu) { gpu_zero_grads(&e->gpu); return; }
#endif
    lora_set_zero_grads(&tr->lora);
}

static double engine_micro_batch(Engine *e, Trainable *tr, const Config *c, const StepOptions *opt,
                                 const Batch *batch, double grad_scale, int *n_counted) {
#ifdef __CUDACC__
    if (e->on_gpu) return gpu_train_micro_batch(&e->gpu, batch, opt->dropout_seed, grad_scale, n_counted);
#endif
    return train_step_cpu(c, &e->base.source, tr->params, opt, batch, grad_scale, n_counted);
}

static double engine_grad_norm(Engine *e, Trainable *tr) {
#ifdef __CUDACC__
    if (e->on_gpu) return gpu_grad_norm(&e->gpu);
#endif
    return global_grad_norm(tr->lora.grads, tr->lora.n_params);
}

static void engine_scale_grads(Engine *e, Trainable *tr, float scale) {
#ifdef __CUDACC__
    if (e->on_gpu) { gpu_scale_grads(&e->gpu, scale); return; }
#endif
    scale_grads_cpu(tr->lora.grads, tr->lora.n_params, scale);
}

static void engine_adamw(Engine *e, Trainable *tr, const Options *o, float lr) {
    AdamWConfig config = adamw_default_config();
    config.lr = o->lr;
    config.weight_decay = o->weight_decay;
#ifdef __CUDACC__
    if (e->on_gpu) { gpu_adamw_step(&e->gpu, &config, lr); return; }
#endif
    adamw_step_cpu(tr->lora.params, tr->lora.grads, &tr->adam, &config, lr);
}

// Brings the GPU's parameters, gradients and moments to the host copy.
static void engine_sync_to_host(Engine *e, Trainable *tr) {
#ifdef __CUDACC__
    if (e->on_gpu) gpu_download_lora(&e->gpu, &tr->lora, &tr->adam);
#endif
}

// Mean answer-only loss over a set (no dropout), in batches of one.
static double evaluate(Engine *e, const Config *c, const Trainable *tr, const Options *o, const ExampleSet *set) {
    StepOptions opt = {o->rank, lora_scaling(o), 0.0f, 0, 0};
    double total = 0.0;
    long counted = 0;
    for (int i = 0; i < set->count; i++) {
        Batch batch = {set->examples[i].ids, set->examples[i].targets, 1, set->examples[i].n_tokens};
        int n = 0;
#ifdef __CUDACC__
        if (e->on_gpu) total += gpu_loss(&e->gpu, &batch, &n);
        else
#endif
            total += loss_cpu(c, &e->base.source, tr->params, &opt, &batch, &n);
        counted += n;
    }
    return counted ? total / counted : 0.0;
}

#ifdef __CUDACC__
// The longest sample of a set (the GPU buffers are sized for it).
static int longest_example(const ExampleSet *set) {
    int longest = 0;
    for (int i = 0; i < set->count; i++)
        if (set->examples[i].n_tokens > longest) longest = set->examples[i].n_tokens;
    return longest;
}
#endif

static int save_checkpoint(const Options *o, const Trainable *tr, const TrainProgress *progress, const char *name) {
    char path[4096], err[1024];
    snprintf(path, sizeof path, "%s/%s", o->out_dir, name);
    if (check_weights_finite(tr, path) != 0) return -1;
    if (checkpoint_save(path, &tr->lora, &tr->adam, progress, err, sizeof err) != 0) {
        fprintf(stderr, "train: %s\n", err);
        return -1;
    }
    return 0;
}

static int make_dir(const char *path) {
    char err[4400];
    if (cli_make_dirs(path, err, sizeof err) == 0) return 0;
    fprintf(stderr, "train: %s\n", err);
    return -1;
}

// The loss curve so far: train loss every step, val loss where measured.
typedef struct {
    double *steps, *train, *val;
    int count;
} LossHistory;

static void history_add(LossHistory *h, double step, double train, double val) {
    h->steps[h->count] = step;
    h->train[h->count] = train;
    h->val[h->count] = val;
    h->count++;
}

// The number in the CSV field that starts after *comma, or NaN when the field
// is empty (or there is none); *comma moves to the comma that ends the field.
static double next_csv_number(char **comma) {
    if (**comma != ',') return NAN;
    char *start = *comma + 1, *end;
    double value = strtod(start, &end);
    *comma = start + strcspn(start, ",");
    return end == start ? NAN : value;
}

// Reads an earlier run's log.csv (when resuming) into the history: step,
// train loss (empty in the step-0 row), val loss (empty where not measured).
static void history_load(LossHistory *h, const char *log_path, int max_rows) {
    FILE *f = fopen(log_path, "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f) && h->count < max_rows) {
        char *comma;
        long step = strtol(line, &comma, 10);
        if (comma == line || *comma != ',') continue;   // the header
        double train = next_csv_number(&comma);
        double val = next_csv_number(&comma);
        history_add(h, (double)step, train, val);
    }
    fclose(f);
}

// A run interrupted after its last checkpoint has logged steps that the
// resumed run does again: keep only the header and the rows up to step
// (written to a temporary file, then renamed over the log). No log: nothing to do.
static int log_keep_until(const char *log_path, int step) {
    FILE *in = fopen(log_path, "r");
    if (!in) return 0;
    char tmp_path[4200];
    snprintf(tmp_path, sizeof tmp_path, "%s.tmp", log_path);
    FILE *out = fopen(tmp_path, "w");
    if (!out) {
        fprintf(stderr, "train: %s: cannot create: %s\n", tmp_path, strerror(errno));
        fclose(in);
        return -1;
    }
    char line[512];
    while (fgets(line, sizeof line, in)) {
        char *end;
        long row_step = strtol(line, &end, 10);
        int is_header = end == line;
        if (is_header || row_step <= step) fputs(line, out);
    }
    fclose(in);
    if (fclose(out) != 0 || rename(tmp_path, log_path) != 0) {
        fprintf(stderr, "train: %s: cannot write: %s\n", log_path, strerror(errno));
        return -1;
    }
    return 0;
}

static void plot_history(const LossHistory *h, const char *out_dir) {
    char path[4096], err[1024];
    snprintf(path, sizeof path, "%s/loss.svg", out_dir);
    // the val curve joins the steps where it was measured (the chart lifts the pen at a NaN)
    double *val_steps = (double *)cpu_malloc(sizeof(double) * (h->count + 1), "loss history");
    double *val = (double *)cpu_malloc(sizeof(double) * (h->count + 1), "loss history");
    int n_val = 0;
    for (int i = 0; i < h->count; i++) {
        if (isnan(h->val[i])) continue;
        val_steps[n_val] = h->steps[i];
        val[n_val++] = h->val[i];
    }
    PlotSeries series[2] = {{"train loss", NULL, h->steps, h->train, h->count},
                            {"val loss", NULL, val_steps, val, n_val}};
    if (svg_line_chart(path, "answer-only loss", "step", "loss", series, 2, err, sizeof err) != 0)
        fprintf(stderr, "train: warning: %s\n", err);
    free(val_steps);
    free(val);
}

// The largest useful LoRA rank: the smallest input or output size among the adapted matrices.
static int smallest_adapted_dim(const Config *c, const int enabled[N_TARGETS]) {
    int smallest = INT_MAX;
    for (int t = 0; t < N_TARGETS; t++) {
        if (!enabled[t]) continue;
        int in_dim, out_dim;
        lora_target_dims(c, t, &in_dim, &out_dim);
        if (in_dim < smallest) smallest = in_dim;
        if (out_dim < smallest) smallest = out_dim;
    }
    return smallest;
}

// The course's memory arithmetic for the GPU path (bf16 activations) with these options.
static void print_plan(const Config *c, const Options *o, const int enabled[N_TARGETS]) {
    PlanInputs in;
    memset(&in, 0, sizeof in);
    in.batch = o->batch;
    in.seq_len = o->max_seq;
    in.rank = o->rank;
    for (int t = 0; t < N_TARGETS; t++) in.enabled[t] = enabled[t];
    in.quant_nf4 = strcmp(o->quant, "nf4") == 0;
    in.double_quant = o->double_quant;
    in.recompute = o->recompute;
    in.weight_bytes = 2;
    in.activation_bytes = 2;
    in.loss_chunk = lm_head_chunk_tokens_default(c->vocab_size);
    MemoryPlan plan;
    memory_plan_compute(c, &in, &plan);
    memory_plan_print(c, &in, &plan, o->gpu_mem_gb, stdout);
}

// Writes the adapters in peft's layout to out_dir/name/.
static int save_adapter(const Options *o, const Trainable *tr, const Config *c, const char *name) {
    char dir[4096], err[1024];
    snprintf(dir, sizeof dir, "%s/%s", o->out_dir, name);
    if (check_weights_finite(tr, dir) != 0) return -1;
    if (make_dir(dir) != 0) return -1;
    if (lora_set_save_peft(&tr->lora, c, dir, o->model_path, err, sizeof err) != 0) {
        fprintf(stderr, "train: %s\n", err);
        return -1;
    }
    return 0;
}

// --merge: OUT/merged/, the final adapter merged into the base it was trained on.
static int save_merged(const Options *o, Model *model) {
    char adapter_dir[4096], merged_dir[4096], err[1024];
    snprintf(adapter_dir, sizeof adapter_dir, "%s/adapter", o->out_dir);
    snprintf(merged_dir, sizeof merged_dir, "%s/merged", o->out_dir);
    int nf4 = strcmp(o->quant, "nf4") == 0;
    AdapterInfo info;
    if (merge_export(model, adapter_dir, nf4, o->double_quant, merged_dir, &info, err, sizeof err) != 0) {
        fprintf(stderr, "train: --merge: %s\n", err);
        return -1;
    }
    printf("merged: %d adapted matrices onto the %s base, in bf16: %s/ (./generate --model %s)\n", info.n_merged,
           nf4 ? "NF4-dequantized" : "fp32", merged_dir, merged_dir);
    return 0;
}

// --eval-answers: the adapter as it is now, merged into a fresh copy of the
// base it trains on (dequant(NF4(W)) with --quant nf4), answers the first n
// validation questions; scored with ./evaluate's code.
static void evaluate_answers(const Options *o, Engine *e, Trainable *tr, const Config *c, const ExampleSet *val_set,
                             const Embedder *embedder, int step) {
    char dir[4096], err[1024];
    engine_sync_to_host(e, tr);
    if (save_adapter(o, tr, c, "eval_adapter") != 0) return;
    snprintf(dir, sizeof dir, "%s/eval_adapter", o->out_dir);
    Model merged;
    if (model_load(&merged, o->model_path, err, sizeof err) != 0) {
        fprintf(stderr, "train: --eval-answers: %s\n", err);
        return;
    }
    int nf4 = strcmp(o->quant, "nf4") == 0;
    if ((nf4 && nf4_round_trip_model(&merged, o->double_quant, err, sizeof err) != 0) ||
        adapter_merge_peft(&merged, dir, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "train: --eval-answers: %s\n", err);
        model_free(&merged);
        return;
    }
    int n = o->eval_answers < val_set->count ? o->eval_answers : val_set->count, count = 0;
    EvalSample *samples = (EvalSample *)cpu_calloc((size_t)(n > 0 ? n : 1), sizeof(EvalSample), "validation samples");
    for (int i = 0; i < n; i++) {
        const Example *x = &val_set->examples[i];
        EvalSample *s = &samples[count];
        s->n_tokens = x->n_tokens;
        s->ids = (int *)cpu_malloc(sizeof(int) * x->n_tokens, "validation tokens");
        s->targets = (int *)cpu_malloc(sizeof(int) * x->n_tokens, "validation targets");
        memcpy(s->ids, x->ids, sizeof(int) * x->n_tokens);
        memcpy(s->targets, x->targets, sizeof(int) * x->n_tokens);
        if (eval_split_sample(merged.tokenizer, s) == 0) count++;
        else { free(s->ids); free(s->targets); }
    }
    EvalOutcome *outcomes = eval_run_model(&merged, embedder, samples, count, 64, "val answers");
    EvalSummary summary = eval_summarize(outcomes, count);
    printf("step %4d | val answers (%d, greedy, 64 tokens): ROUGE-1 F1 %.3f, ROUGE-L F1 %.3f, embedding cosine %.3f\n",
           step, count, summary.rouge_f1[ROUGE_1].mean, summary.rouge_f1[ROUGE_L].mean, summary.similarity.mean);
    eval_free_outcomes(outcomes, count);
    eval_free_samples(samples, count);
    model_free(&merged);
}

static void split_data(const RaftData *data, const Options *o, int *train_idx, int *n_train, int *val_idx, int *n_val) {
    int *order = (int *)cpu_malloc(sizeof(int) * data->count, "sample order");
    for (int i = 0; i < data->count; i++) order[i] = i;
    uint64_t state = (uint64_t)o->seed ^ 0xDA7A;
    shuffle(order, data->count, &state);
    int held_out = o->val_path ? 0 : (int)(o->val_frac * data->count + 0.5);
    if (held_out >= data->count) held_out = data->count - 1;
    *n_val = held_out;
    *n_train = data->count - held_out;
    for (int i = 0; i < held_out; i++) val_idx[i] = order[i];
    for (int i = held_out; i < data->count; i++) train_idx[i - held_out] = order[i];
    free(order);
}

// A tokenized file from ./prepare (data/tokfile.h) rather than JSONL: the name ends in .bin.
static int is_tokfile(const char *path) {
    size_t n = strlen(path);
    return n >= 4 && strcmp(path + n - 4, ".bin") == 0;
}

// JSONL samples: rendered here, validation held out of --data unless --val-data.
static int load_jsonl_examples(const Options *o, const Tokenizer *tok, ExampleSet *train_set, ExampleSet *val_set,
                               int *skipped) {
    char err[1024];
    if (o->val_path && is_tokfile(o->val_path)) {
        fprintf(stderr, "train: --val-data is a .bin file from ./prepare, so --data must be one too (got %s)\n",
                o->data_path);
        return -1;
    }
    RaftData data, val_data;
    memset(&val_data, 0, sizeof val_data);
    if (raft_read_jsonl(&data, o->data_path, err, sizeof err) != 0) { fprintf(stderr, "train: %s\n", err); return -1; }
    if (o->val_path && raft_read_jsonl(&val_data, o->val_path, err, sizeof err) != 0) {
        fprintf(stderr, "train: %s\n", err);
        return -1;
    }
    int *train_idx = (int *)cpu_malloc(sizeof(int) * data.count, "sample split");
    int *val_idx = (int *)cpu_malloc(sizeof(int) * data.count, "sample split");
    int n_train, n_val, skipped_train, skipped_val;
    split_data(&data, o, train_idx, &n_train, val_idx, &n_val);
    int encode_failed = encode_examples(tok, &data, train_idx, n_train, o->max_seq, train_set, &skipped_train);
    if (o->val_path) {
        int *all = (int *)cpu_malloc(sizeof(int) * val_data.count, "validation samples");
        for (int i = 0; i < val_data.count; i++) all[i] = i;
        encode_failed |= encode_examples(tok, &val_data, all, val_data.count, o->max_seq, val_set, &skipped_val);
        free(all);
    } else {
        encode_failed |= encode_examples(tok, &data, val_idx, n_val, o->max_seq, val_set, &skipped_val);
    }
    *skipped = skipped_train + skipped_val;
    free(train_idx);
    free(val_idx);
    raft_free(&data);
    raft_free(&val_data);
    if (encode_failed) { fprintf(stderr, "train: cannot render samples: the tokenizer lacks <|im_start|>/<|im_end|>\n"); return -1; }
    return 0;
}

// Reads a ./prepare file into set (refusing one made with another tokenizer);
// skips and counts the samples longer than max_seq.
static int read_tokfile_examples(const char *path, const Tokenizer *tok, int max_seq, ExampleSet *set, int *skipped) {
    TokFile file;
    char err[1024];
    if (tokfile_read(&file, path, tok, err, sizeof err) != 0) { fprintf(stderr, "train: %s\n", err); return -1; }
    set->examples = (Example *)cpu_calloc((size_t)(file.count > 0 ? file.count : 1), sizeof(Example), "samples");
    set->count = 0;
    for (long i = 0; i < file.count; i++) {
        TokSample *s = &file.samples[i];
        if (s->n_tokens > max_seq) { (*skipped)++; continue; }
        Example e = {s->ids, s->targets, s->n_tokens, 0};
        for (int t = 0; t < e.n_tokens; t++) e.n_answer += e.targets[t] != RAFT_IGNORE;
        set->examples[set->count++] = e;
        s->ids = s->targets = NULL;   // the example owns them now
    }
    tokfile_free(&file);
    return 0;
}

// ./prepare's train.bin, and its validation set: --val-data, else the val.bin
// beside a file named train.bin (./prepare writes both), else none.
static int load_tokfile_examples(const Options *o, const Tokenizer *tok, ExampleSet *train_set, ExampleSet *val_set,
                                 int *skipped) {
    memset(val_set, 0, sizeof *val_set);
    *skipped = 0;
    if (o->val_path && !is_tokfile(o->val_path)) {
        fprintf(stderr, "train: --data is a .bin file from ./prepare, so --val-data must be one too (got %s)\n", o->val_path);
        return -1;
    }
    if (read_tokfile_examples(o->data_path, tok, o->max_seq, train_set, skipped) != 0) return -1;
    const char *val_path = o->val_path;
    char beside[4096];
    size_t len = strlen(o->data_path), name_len = strlen("train.bin");
    if (!val_path && len >= name_len && strcmp(o->data_path + len - name_len, "train.bin") == 0) {
        snprintf(beside, sizeof beside, "%.*sval.bin", (int)(len - name_len), o->data_path);
        struct stat st;
        if (stat(beside, &st) == 0) {
            val_path = beside;
            printf("data: validation samples from %s\n", val_path);
        }
    }
    return val_path ? read_tokfile_examples(val_path, tok, o->max_seq, val_set, skipped) : 0;
}

int main(int argc, char **argv) {
    Options o = parse_args(argc, argv);
    char err[1024];
    int enabled[N_TARGETS];
    if (lora_parse_targets(o.targets, enabled, err, sizeof err) != 0) bad_usage("--targets: ", err);

    Model model;
    if (model_load(&model, o.model_path, err, sizeof err) != 0) { fprintf(stderr, "train: %s\n", err); return 1; }
    const Config *c = &model.config;
    if (o.max_seq > c->max_seq_len) {
        printf("data: --seq %d is more than the model's context of %d tokens: using %d\n", o.max_seq, c->max_seq_len,
               c->max_seq_len);
        o.max_seq = c->max_seq_len;
    }
    int max_rank = smallest_adapted_dim(c, enabled);
    if (o.rank > max_rank) {
        fprintf(stderr, "train: --rank %d is more than %d, the smallest dimension of the adapted matrices (--targets %s)\n",
                o.rank, max_rank, o.targets);
        return 2;
    }
    model_print_summary(&model, stdout);
    if (o.plan) {
        print_plan(c, &o, enabled);
        model_free(&model);
        return 0;
    }

    ExampleSet train_set, val_set;
    int skipped = 0;
    int load_failed = is_tokfile(o.data_path) ? load_tokfile_examples(&o, model.tokenizer, &train_set, &val_set, &skipped)
                                              : load_jsonl_examples(&o, model.tokenizer, &train_set, &val_set, &skipped);
    if (load_failed) return 1;
    if (train_set.count == 0) {
        fprintf(stderr, "train: %s: no training sample fits in --seq %d tokens\n", o.data_path, o.max_seq);
        return 1;
    }
    long train_tokens = 0, train_answer = 0;
    for (int i = 0; i < train_set.count; i++) { train_tokens += train_set.examples[i].n_tokens; train_answer += train_set.examples[i].n_answer; }
    if (train_answer == 0) {
        fprintf(stderr, "train: %s: no sample has an answer token to learn from (every target is masked)\n",
                o.data_path);
        return 1;
    }
    printf("data: %d training samples (%ld tokens, %ld answer tokens), %d validation samples%s\n", train_set.count,
           train_tokens, train_answer, val_set.count, o.val_path || is_tokfile(o.data_path) ? "" : " held out of --data");
    if (skipped > 0) printf("data: %d samples skipped: longer than --seq %d tokens\n", skipped, o.max_seq);

    if (o.batch > train_set.count) {
        printf("data: --batch %d is more than the %d training samples: batches of %d\n", o.batch, train_set.count,
               train_set.count);
        o.batch = train_set.count;
    }
    // with --epochs: steps = ceil(epochs * samples / samples per step)
    long long samples_per_step = (long long)o.batch * o.grad_accum;
    long long run_steps = o.steps;
    if (o.epochs > 0) run_steps = ((long long)o.epochs * train_set.count + samples_per_step - 1) / samples_per_step;
    if (run_steps > INT_MAX) {
        fprintf(stderr, "train: --epochs %d makes %lld steps, more than %d\n", o.epochs, run_steps, INT_MAX);
        return 2;
    }
    int total_steps = (int)run_steps;
    if (o.warmup >= 1 && o.warmup > total_steps) {
        fprintf(stderr, "train: --warmup %g steps is more than the run's %d steps\n", o.warmup, total_steps);
        return 2;
    }
    if (o.stop_at > total_steps) {
        fprintf(stderr, "train: --stop-at %d is past the run's last step, %d\n", o.stop_at, total_steps);
        return 2;
    }

    Embedder embedder;
    memset(&embedder, 0, sizeof embedder);
    if (o.eval_answers > 0 && embedder_load(&embedder, EMBED_DEFAULT_MODEL_DIR, err, sizeof err) != 0) {
        fprintf(stderr, "train: --eval-answers: %s (run `make fetch`)\n", err);
        return 1;
    }
    Engine engine;
    memset(&engine, 0, sizeof engine);
    engine.on_gpu = strcmp(o.device, "cuda") == 0;
    QuantMode quant = strcmp(o.quant, "nf4") == 0 ? QUANT_NF4 : QUANT_NONE;
    nf4_print_memory_story(c, stdout);
    if (!engine.on_gpu) {
        if (base_weights_init(&engine.base, &model, quant, o.double_quant) != 0) {
            fprintf(stderr, "train: out of memory: the base weights (%s) did not fit%s\n",
                    quant == QUANT_NF4 ? "NF4" : "fp32", quant == QUANT_NF4 ? "" : "; --quant nf4 needs about 8x less");
            return 3;
        }
        printf("base: %s, linear weights %.1f MB in memory for training\n",
               quant == QUANT_NF4 ? (o.double_quant ? "NF4 + double quant" : "NF4") : "fp32 (no quantization)",
               base_weights_linear_bytes(&engine.base) / 1e6);
    }
    Trainable tr;
    if (trainable_init(&tr, c, &o, enabled) != 0) {
        fprintf(stderr, "train: out of memory: the LoRA adapters and AdamW moments (rank %d) did not fit; lower --rank "
                        "or --targets\n", o.rank);
        return 3;
    }
    size_t n_lora = lora_set_num_params(&tr.lora);
    printf("lora: rank %d, alpha %g, targets %s: %zu trainable parameters (%.3f%% of %zu)\n", o.rank, o.alpha,
           o.targets, n_lora, 100.0 * n_lora / (double)(model_num_params(c) + n_lora), model_num_params(c));

    LRSchedule schedule = {o.lr, o.lr_min_frac, warmup_steps_from(o.warmup, total_steps), total_steps};
    StepOptions step_opt = {o.rank, lora_scaling(&o), o.lora_dropout, 0, o.recompute};
#ifdef __CUDACC__
    double flops_per_token = 0.0;
    if (engine.on_gpu) {
        int longest = longest_example(&train_set), longest_val = longest_example(&val_set);
        if (longest_val > longest) longest = longest_val;
        gpu_trainer_init(&engine.gpu, &model, quant, o.double_quant, &tr.lora, &step_opt, o.batch, longest);
        printf("base: %s on the GPU (bf16 activations, fp32 LoRA weights and AdamW moments)\n",
               quant == QUANT_NF4 ? (o.double_quant ? "NF4 + double quant" : "NF4") : "bf16 (no quantization)");
        gpu_trainer_print_memory(&engine.gpu, stdout);
        flops_per_token = gpu_flops_per_token(c, longest, o.recompute);
    }
#endif
    if (make_dir(o.out_dir) != 0) return 1;

    TrainProgress progress = {0, total_steps, (uint64_t)o.seed, 0, train_set.count, NULL, NAN, 0};
    progress.order = (int *)cpu_malloc(sizeof(int) * train_set.count, "sample order");
    for (int i = 0; i < train_set.count; i++) progress.order[i] = i;
    shuffle(progress.order, train_set.count, &progress.data_rng);
    if (o.resume_dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/checkpoint.bin", o.resume_dir);
        if (checkpoint_load(path, &tr.lora, &tr.adam, &progress, err, sizeof err) != 0) {
            fprintf(stderr, "train: %s\n", err);
            return 1;
        }
        if (progress.total_steps != total_steps) {
            fprintf(stderr, "train: %s was made for a %d-step run; this run has %d steps: give the same --steps/--epochs\n",
                    path, progress.total_steps, total_steps);
            return 1;
        }
        printf("resumed from %s at step %d of %d\n", path, progress.step, total_steps);
#ifdef __CUDACC__
        if (engine.on_gpu) gpu_upload_lora(&engine.gpu, &tr.lora, &tr.adam);
#endif
    }
    char log_path[4096];
    snprintf(log_path, sizeof log_path, "%s/log.csv", o.out_dir);
    if (progress.step > 0 && log_keep_until(log_path, progress.step) != 0) return 1;
    FILE *log = fopen(log_path, progress.step > 0 ? "a" : "w");
    if (!log) { fprintf(stderr, "train: cannot write %s: %s\n", log_path, strerror(errno)); return 1; }
    fseek(log, 0, SEEK_END);
    if (ftell(log) == 0) fprintf(log, "step,train_loss,val_loss,grad_norm,lr,ms,tokens_per_s\n");

    printf("training: %d steps of %d x %d samples on the %s, lr %g (warmup %lld steps, cosine to %g)\n", total_steps,
           o.grad_accum, o.batch, engine.on_gpu ? gpu_device_name() : "cpu", o.lr, (long long)schedule.warmup_steps, o.lr * o.lr_min_frac);
    if (val_set.count && progress.step == 0) {
        progress.best_val = evaluate(&engine, c, &tr, &o, &val_set);
        printf("step %4d | val loss %.4f (before training)\n", 0, progress.best_val);
        fprintf(log, "0,,%.6f,,,,\n", progress.best_val);   // no train loss before training
    }

    int *order = progress.order;
    int *micro_first = (int *)cpu_malloc(sizeof(int) * o.grad_accum, "micro-batches");
    int *micro_count = (int *)cpu_malloc(sizeof(int) * o.grad_accum, "micro-batches");
    double run_start = now_seconds(), last_train = NAN;
    LossHistory history = {NULL, NULL, NULL, 0};
    // room for an earlier log (at most total_steps + 1 rows are read back) and this run's steps
    size_t history_rows = 2 * (size_t)total_steps + 2;
    history.steps = (double *)cpu_malloc(sizeof(double) * history_rows, "loss history");
    history.train = (double *)cpu_malloc(sizeof(double) * history_rows, "loss history");
    history.val = (double *)cpu_malloc(sizeof(double) * history_rows, "loss history");
    if (progress.step > 0) history_load(&history, log_path, total_steps + 1);
    else if (val_set.count) history_add(&history, 0, NAN, progress.best_val);
    int first_step = progress.step;
    for (int step = first_step; step < total_steps; step++) {
        double t0 = now_seconds();
        // the micro-batches of this step, and their answer tokens (the loss normaliser)
        long step_answer = 0, step_tokens = 0;
        for (int m = 0; m < o.grad_accum; m++) {
            if (progress.cursor + o.batch > train_set.count) {
                shuffle(order, train_set.count, &progress.data_rng);
                progress.cursor = 0;
            }
            micro_first[m] = progress.cursor;
            micro_count[m] = o.batch < train_set.count ? o.batch : train_set.count;
            for (int i = 0; i < micro_count[m]; i++)
                step_answer += train_set.examples[order[progress.cursor + i]].n_answer;
            progress.cursor += micro_count[m];
        }
        engine_zero_grads(&engine, &tr);
        double loss_sum = 0.0;
        for (int m = 0; m < o.grad_accum; m++) {
            int *tokens, *targets, counted;
            Batch batch = make_batch(&train_set, order, micro_first[m], micro_count[m], &tokens, &targets);
            step_opt.dropout_seed = (uint64_t)o.seed * 7919ULL + (uint64_t)step * 64 + (uint64_t)m;
            loss_sum += engine_micro_batch(&engine, &tr, c, &step_opt, &batch, step_answer ? 1.0 / step_answer : 0.0,
                                           &counted);
            step_tokens += (long)batch.n_seqs * batch.seq_len;
            free(tokens);
            free(targets);
        }
        double train_loss = step_answer ? loss_sum / step_answer : 0.0;
        double norm = engine_grad_norm(&engine, &tr);
        if (!isfinite(train_loss) || !isfinite(norm)) {
            char which[128];
            engine_sync_to_host(&engine, &tr);
            find_bad_tensor(&tr, 0, which, sizeof which);
            fprintf(stderr, "train: step %d: %s is not finite (loss %g, grad norm %g; first bad gradient: %s); "
                            "stopping without saving\n", step + 1, isfinite(train_loss) ? "the gradient" : "the loss",
                    train_loss, norm, which);
            return 1;
        }
        engine_scale_grads(&engine, &tr, clip_scale(norm, o.clip));
        float lr = lr_at_step(&schedule, step);
        engine_adamw(&engine, &tr, &o, lr);
        double ms = (now_seconds() - t0) * 1000.0;
        double elapsed = now_seconds() - run_start;
        double eta = elapsed / (step + 1 - first_step) * (total_steps - step - 1);
        double val_loss = NAN;
        if (val_set.count && ((step + 1) % o.eval_every == 0 || step + 1 == total_steps)) {
            val_loss = evaluate(&engine, c, &tr, &o, &val_set);
            if (!isfinite(val_loss)) {
                fprintf(stderr, "train: step %d: the validation loss is not finite (%g): training diverged; lower --lr "
                                "or --alpha. Stopping without saving\n", step + 1, val_loss);
                return 1;
            }
        }
        if (!isnan(val_loss) && o.eval_answers > 0)
            evaluate_answers(&o, &engine, &tr, c, &val_set, &embedder, step + 1);
        printf("step %4d/%d | loss %.4f | grad norm %.3f | lr %.2e | %.0f ms | %.0f tok/s | eta %.0f s", step + 1,
               total_steps, train_loss, norm, lr, ms, step_tokens / (ms / 1000.0), eta);
        if (!isnan(val_loss)) printf(" | val loss %.4f", val_loss);
#ifdef __CUDACC__
        // MFU = achieved matmul FLOP/s over the device's peak bf16 rate (when the device is in ops/gpu.cu's table)
        if (engine.on_gpu && gpu_peak_bf16_flops() > 0)
            printf(" | MFU %.1f%%", 100.0 * flops_per_token * step_tokens / (ms / 1000.0) / gpu_peak_bf16_flops());
        if (engine.on_gpu) printf(" | peak mem %.0f MiB", gpu_peak_bytes() / 1048576.0);
#endif
        printf("\n");
        if (!isnan(val_loss) && val_loss > progress.best_val && train_loss < last_train)
            printf("warning: validation loss rose (%.4f -> %.4f) while training loss fell: the adapter may be "
                   "overfitting\n", progress.best_val, val_loss);
        last_train = train_loss;
        char val_text[32] = "";
        if (!isnan(val_loss)) snprintf(val_text, sizeof val_text, "%.6f", val_loss);
        fprintf(log, "%d,%.17g,%s,%.17g,%.6e,%.1f,%.1f\n", step + 1, train_loss, val_text, norm, lr, ms,
                step_tokens / (ms / 1000.0));
        fflush(log);
        fflush(stdout);
        history_add(&history, step + 1, train_loss, val_loss);
        plot_history(&history, o.out_dir);
        progress.step = step + 1;
        if (!isnan(val_loss) && !(val_loss > progress.best_val)) {
            progress.best_val = val_loss;
            progress.evals_without_improvement = 0;
            engine_sync_to_host(&engine, &tr);
            if (save_checkpoint(&o, &tr, &progress, "checkpoint_best.bin") != 0 ||
                save_adapter(&o, &tr, c, "best_adapter") != 0)
                return 1;
        } else if (!isnan(val_loss)) {
            progress.evals_without_improvement++;
        }
        if (o.early_stop > 0 && progress.evals_without_improvement >= o.early_stop) {
            printf("early stop: val loss has not improved for %d evaluations; the best adapter (val loss %.4f) is "
                   "in %s/best_adapter/\n", progress.evals_without_improvement, progress.best_val, o.out_dir);
            total_steps = progress.step;
        }
        int pausing = progress.step == o.stop_at;
        if ((o.save_every > 0 && progress.step % o.save_every == 0) || progress.step == total_steps || pausing) {
            engine_sync_to_host(&engine, &tr);
            if (save_checkpoint(&o, &tr, &progress, "checkpoint.bin") != 0) return 1;
        }
        if (pausing && progress.step < total_steps) {
            printf("paused after step %d: continue with --resume %s\n", progress.step, o.out_dir);
            return 0;
        }
    }
    fclose(log);
    // without a validation set nothing has run the model since the last update:
    // one sample's loss, so that weights that diverged are not saved as the adapter
    if (!val_set.count) {
        ExampleSet first_sample = {train_set.examples, 1};
        double loss = evaluate(&engine, c, &tr, &o, &first_sample);
        if (!isfinite(loss)) {
            fprintf(stderr, "train: after step %d the loss is not finite (%g): training diverged; lower --lr or "
                            "--alpha. Not writing the adapter\n", progress.step, loss);
            return 1;
        }
    }
    engine_sync_to_host(&engine, &tr);
    if (save_adapter(&o, &tr, c, "adapter") != 0) return 1;
    if (o.merge && save_merged(&o, &model) != 0) return 1;
    printf("done: %d steps in %.0f s; log %s, loss curve %s/loss.svg, adapter (HF peft layout) %s/adapter/\n",
           progress.step, now_seconds() - run_start, log_path, o.out_dir, o.out_dir);
    free(progress.order);
    free(history.steps);
    free(history.train);
    free(history.val);
    free(micro_first);
    free(micro_count);
    trainable_free(&tr);
    if (engine.on_gpu) {
#ifdef __CUDACC__
        gpu_trainer_free(&engine.gpu);
#endif
    } else {
        base_weights_free(&engine.base);
    }
    free_examples(&train_set);
    free_examples(&val_set);
    if (o.eval_answers > 0) embedder_free(&embedder);
    model_free(&model);
    return 0;
}
