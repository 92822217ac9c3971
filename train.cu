// train.cu: ./train, QLoRA fine-tuning on RAFT samples, on the GPU (trainer/engine_gpu.cu)
// when one is present, else on the CPU reference path (trainer/engine_cpu.cpp).
//   ./train                              the default model on the Debian FAQ (data/faq/train.bin, built by make)
//   ./train --data my.jsonl --steps 100 --lr 2e-4 --out out/my-run
// The base model is frozen (NF4 by default), LoRA adapters on q,k,v,o,gate,up,
// down are trained with AdamW on the answer tokens only; the adapter is saved
// in HF peft's layout. main() is the story of a run, read top to bottom: load
// the model, read the data, set up the engine (quantize the base, the adapters
// and AdamW), start or resume, the step loop (step, validate, log, checkpoint),
// finish (adapter, merge).
#include "adamw.h"                  // defines: AdamWConfig, AdamWState, LRSchedule, lr_at_step, clip_scale
#include "eval/eval.h"              // defines: Embedder, eval_run_model, eval_summarize (--eval-answers)
#include "formats/cli.h"            // defines: cli_check_options, cli_option_value, cli_int, cli_float, cli_choice, cli_make_dirs
#include "formats/tensor.h"         // defines: cpu_malloc, cpu_calloc
#include "infer/adapter.h"          // defines: adapter_merge_peft (--eval-answers), adapter_choose_base (--merge)
#include "infer/gguf_export.h"      // defines: gguf_write_model (--merge-gguf)
#include "infer/merge.h"            // defines: merge_into_base, model_save_hf (--merge)
#include "dora.h"                   // defines: dora_init_magnitudes (--dora)
#include "lora.h"                   // defines: LoraSet (the trainable state), lora_scale, lora_set_save_peft
#include "model.h"                  // defines: Model, Config, model_load
#include "nf4.h"                    // defines: nf4_print_memory_story, nf4_round_trip_model
#include "ops/cross_entropy.h"      // defines: lm_head_chunk_tokens_default (--plan)
#include "ops/gpu.h"                // defines: gpu_device_choose, gpu_device_name
#include "data/tokfile.h"           // defines: tokenizer_id (the run's identity)
#include "formats/hash.h"           // defines: fnv1a (the run's identity)
#include "trainer/checkpoint.h"     // defines: TrainProgress, checkpoint_save, checkpoint_load
#include "trainer/engine.h"         // defines: Engine (CPU or GPU), EngineOptions, engine_cpu_init, engine_gpu_init
#include "trainer/examples.h"       // defines: ExampleSet, examples_load, examples_batch, examples_shuffle
#include "trainer/memory_plan.h"    // defines: memory_plan_compute, memory_plan_print (--plan)
#include "trainer/precision.h"      // defines: Precision, precision_parse, precision_resolve (--precision)
#include "trainer/run_log.h"        // defines: RunLog: log.csv and loss.svg

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_DATA "data/faq/train.bin"
// On a CPU, ./train without --epochs or --steps is a short demo of this many
// steps, validated this often, instead of the full recipe (minutes, not an hour).
#define CPU_DEMO_STEPS 12
#define CPU_DEMO_EVAL_EVERY 6
// The largest --batch that --plan tries when it says what fits.
#define PLAN_MAX_BATCH 256

// ---- options ----------------------------------------------------------------------------

typedef struct {
    const char *model_path, *data_path, *val_path, *device, *out_dir, *targets, *quant, *resume_dir, *gguf_type, *precision;
    const char *init_adapter;
    Precision chosen_precision;   // --precision resolved for the device (check_options)
    int steps, epochs, batch, max_seq, grad_accum, seed, rank, rslora, dora, double_quant, recompute, eval_every, save_every, stop_at, early_stop, plan, merge, merge_gguf, eval_answers, pack, overwrite;
    int paged_optim, offload;     // GPU placement: AdamW's state paged, block inputs offloaded to the host
    float gpu_mem_gb;
    float lr, warmup, lr_min_frac, clip, weight_decay, alpha, lora_dropout, val_frac, prompt_loss_weight;
    const char *template_name;   // --template: the chat template family JSONL data is rendered with (NULL: the model's)
    struct { int rank, alpha, rslora, dora, targets, quant, double_quant; } given;   // which the command line set
} Options;

// Every default of ./train in one place, each with what it means (./train --help prints them).
static Options default_options(void) {
    Options o;
    memset(&o, 0, sizeof o);
    // the model and the data
    o.model_path = DEFAULT_MODEL;         // SmolLM2-135M-Instruct, fetched by make
    o.data_path = DEFAULT_DATA;           // the Debian FAQ as RAFT samples, prepared by make
    o.val_path = NULL;                    // none: the val.bin beside a train.bin, or a held-out share of JSONL
    o.val_frac = 0.125f;                  // share of JSONL --data held out for validation
    o.max_seq = 1024;                     // tokens per sample (per sequence with --pack); longer samples are skipped
    o.pack = 0;                           // 1: pack several samples into each sequence of up to max_seq tokens
    o.prompt_loss_weight = 0.0f;          // the loss weight of non-answer tokens (0: answer only, 1: every token)
    // the length of the run
    o.steps = 12;                         // optimizer steps, when --epochs is 0
    o.epochs = 2;                         // passes over the training samples (0: --steps decides); on a CPU
                                          // the default run is the CPU_DEMO_STEPS demo instead
    o.batch = 1;                          // sequences per micro-batch
    o.grad_accum = 2;                     // micro-batches per optimizer step
    o.seed = 1234;                        // the adapters' initial values, dropout masks and the data order
    o.device = "auto";                    // cuda when a GPU is visible, else cpu
    o.precision = "auto";                 // fp32 on the CPU; on a GPU bf16 from sm_80, fp16 (loss-scaled) before
    // the optimizer
    o.lr = 4e-4f;                         // peak learning rate
    o.warmup = 0.05f;                     // warmup steps, or a fraction of the steps when < 1
    o.lr_min_frac = 0.1f;                 // the cosine decay's floor, as a fraction of lr
    o.clip = 1.0f;                        // global gradient-norm clip (0: off)
    o.weight_decay = 0.0f;                // AdamW's decoupled weight decay
    // the adapters and the frozen base
    o.rank = 16;                          // LoRA rank r
    o.alpha = 32.0f;                      // LoRA alpha: the adapter's scale is alpha / r
    o.rslora = 0;                         // 1: the scale is alpha / sqrt(r) (rsLoRA)
    o.lora_dropout = 0.05f;               // dropout on the adapters' input
    o.targets = "q,k,v,o,gate,up,down";   // the adapted projections of every block
    o.dora = 0;                           // 1: DoRA, a learned magnitude per output row (dora.h)
    o.init_adapter = NULL;                // none: A random, B = 0; else train on from this adapter's A and B
    o.quant = "nf4";                      // the base: nf4 (QLoRA) or none (fp32, plain LoRA)
    o.double_quant = 1;                   // NF4's block scales quantized again, to 8 bits
    o.recompute = 0;                      // 1: recompute each block in backward (gradient checkpointing)
    o.paged_optim = 0;                    // 1: AdamW's m and v in managed memory the driver may page out (GPU)
    o.offload = 0;                        // 1: recompute's block inputs in pinned host memory (GPU, --recompute 1)
    // validation, checkpoints, output
    o.eval_every = 20;                    // the validation loss every N steps, and at the last
    o.early_stop = 3;                     // stop after N validations without improvement (0: off)
    o.eval_answers = 0;                   // also answer and score N validation questions at each (0: off)
    o.out_dir = "out";                    // where the log, chart, checkpoints and adapter go
    o.save_every = 0;                     // also checkpoint every N steps (0: at the end and the best only)
    o.resume_dir = NULL;                  // the --out of a run to continue
    o.overwrite = 0;                      // 1: a new run may replace the run already in --out
    o.stop_at = 0;                        // pause after step N with a checkpoint (0: run to the end)
    o.merge = 0;                          // 1: also write OUT/merged/, the adapter merged into the base
    o.merge_gguf = 0;                     // 1: also write that merged model as OUT/merged.gguf (llama.cpp)
    o.gguf_type = "f16";                  // --merge-gguf's matrices: f16 (llama.cpp's convert default), bf16, q8_0
    o.plan = 0;                           // 1: print the GPU memory plan and exit
    o.gpu_mem_gb = 80.0f;                 // the GPU memory, in GB, that --plan checks against
    return o;
}

static void usage(FILE *out) {
    Options defaults = default_options();
    const Options *d = &defaults;
    fprintf(out,
            "usage: ./train [options]\n"
            "QLoRA fine-tuning: frozen (NF4) base + LoRA adapters, answer-only loss on RAFT samples.\n"
            "  --model PATH        GGUF file or HF model directory (default %s)\n"
            "  --data PATH         RAFT samples: a .bin file from ./prepare, or JSONL (default %s)\n"
            "  --val-data PATH     validation samples (default: the val.bin beside a train.bin; for JSONL,\n"
            "                      --val-frac of --data held out)\n"
            "  --val-frac F        share of JSONL --data held out when no --val-data (default %g)\n"
            "  --template NAME     render JSONL data (and --eval-answers prompts) with this chat template instead\n"
            "                      of the model's: chatml, llama3, llama3.1 or exaone (default: the one the\n"
            "                      model's matches)\n"
            "  --device D          cpu, cuda or auto: cuda when a GPU is present (default %s)\n"
            "  --precision P       auto, bf16, fp16 or fp32: what the step computes in (default %s: fp32 on the CPU;\n"
            "                      on a GPU bf16 from sm_80 (A100, RTX 30xx and up), fp16 before (T4), with the loss\n"
            "                      scaled as torch's GradScaler does). LoRA weights, gradients and AdamW stay fp32\n"
            "  --epochs N          passes over the training samples; 0: use --steps (default %d; on a CPU, when\n"
            "                      neither --epochs nor --steps is given, a %d-step demo instead)\n"
            "  --steps N           optimizer steps, the run's length instead of --epochs (default %d)\n"
            "  --batch N           sequences per micro-batch (default %d)\n"
            "  --grad-accum N      micro-batches per optimizer step, at most one epoch's (default %d)\n"
            "  --seq N             max tokens per sample; longer ones are skipped and counted (default %d)\n"
            "  --pack              pack several samples into each sequence of up to --seq tokens (first fit, in a\n"
            "                      seeded order); each sample attends only to itself, positions restart per sample\n"
            "  --prompt-loss-weight W  loss weight of the non-answer tokens: 0 = the answer only, 1 = every token;\n"
            "                      the step's loss is divided by the sum of the weights (default %g)\n"
            "  --lr LR             peak learning rate, at most 1 (default %g)\n"
            "  --warmup W          warmup steps, or a fraction of the steps when < 1 (default %g)\n"
            "  --lr-min-frac F     cosine decay floor as a fraction of --lr (default %g)\n"
            "  --clip C            global gradient-norm clip, 0 = off (default %g)\n"
            "  --weight-decay WD   AdamW decoupled weight decay (default %g)\n"
            "  --rank R            LoRA rank (default %d)\n"
            "  --alpha A           LoRA alpha; scaling = alpha / rank (default %g)\n"
            "  --rslora            scaling = alpha / sqrt(rank)\n"
            "  --dora              DoRA (peft's use_dora): W' = m (W + s B A) / ||W + s B A|| per output row, m\n"
            "                      trained with A and B from ||W|| of the (NF4-dequantized) base; exported with\n"
            "                      lora_magnitude_vector tensors and use_dora: true\n"
            "  --lora-dropout P    dropout on the adapters' input, one mask per layer and input: q, k, v share\n"
            "                      one, gate and up another (peft draws one per module) (default %g)\n"
            "  --targets LIST      adapted layers among q,k,v,o,gate,up,down (default %s)\n"
            "  --init-adapter DIR  train on from this adapter (ours or peft's, same base) instead of B = 0: its\n"
            "                      rank, alpha, rsLoRA, DoRA and targets (adapter_config.json) are the run's, a\n"
            "                      different --rank/--alpha/--rslora/--dora/--targets is an error; its recorded\n"
            "                      --quant/--double-quant are the defaults; --lora-dropout stays ours\n"
            "  --quant Q           nf4 (QLoRA) or none (plain LoRA on an fp32 base) (default %s)\n"
            "  --double-quant 0|1  double-quantize the NF4 block scales (default %d)\n"
            "  --recompute 0|1     gradient checkpointing: recompute each block in backward (default %d)\n"
            "  --paged-optim       GPU: AdamW's m and v in managed memory, prefetched to the GPU for each update;\n"
            "                      under memory pressure the driver pages them to the host instead of failing\n"
            "                      (bitsandbytes' paged optimizers; the same result, bit for bit)\n"
            "  --offload           GPU, with --recompute 1: the block inputs recompute keeps wait for backward in\n"
            "                      pinned host memory, copied out and back overlapped with compute (Unsloth's\n"
            "                      offloaded checkpointing; the same result, bit for bit)\n"
            "  --eval-every N      validation loss every N steps (default %d)\n"
            "  --early-stop N      stop when val loss has not improved for N evaluations, 0 = off (default %d)\n"
            "  --eval-answers N    at each validation, also answer the first N validation questions greedily and\n"
            "                      score them as ./evaluate does (ROUGE, embedding cosine; CPU) (default 0: off)\n"
            "  --seed S            seed for adapters, dropout and data order (default %d)\n"
            "  --out DIR           where the log, checkpoints and adapter go (default %s)\n"
            "  --save-every N      also checkpoint every N steps (default 0: at the end, and the best by val loss)\n"
            "  --resume DIR        continue the run whose --out was DIR: the same model, data and options, else\n"
            "                      refused, naming each option that differs. Safe to change on resume: --out\n"
            "                      (defaults to DIR; DIR's log.csv is carried over), --save-every, --eval-every,\n"
            "                      --early-stop, --stop-at, --eval-answers, --merge, --merge-gguf, --gguf-type,\n"
            "                      --recompute, --paged-optim, --offload (bitwise the same),\n"
            "                      --device and --precision (they round differently: the losses go on, not\n"
            "                      bitwise; the loss scale is kept from an fp16 run to an fp16 run)\n"
            "  --overwrite         a new run into an --out that holds a run: remove that run's files\n"
            "                      (checkpoints, log, chart, adapters, merged models) first; without it, refused;\n"
            "                      an input lying in one of them (--model OUT/merged) is refused either way, and\n"
            "                      so is --overwrite with --resume of the run in --out (its checkpoint would go)\n"
            "  --stop-at N         pause after step N with a checkpoint, to --resume later (default 0: run to the end)\n"
            "  --merge             also write OUT/merged/: the final adapter merged into the (NF4-dequantized) base,\n"
            "                      an HF model directory in bf16 that transformers and ./generate --model load\n"
            "  --merge-gguf        also write that merged model as OUT/merged.gguf, one GGUF file for llama.cpp\n"
            "                      (llama-cli -m OUT/merged.gguf) and ./generate --model\n"
            "  --gguf-type T       --merge-gguf's matrices: f16, bf16 or q8_0 (default %s; norms stay f32)\n"
            "  --plan              print the GPU memory plan for these options and exit (no training)\n"
            "  --gpu-mem GB        GPU memory the plan is checked against (default %g)\n"
            "  -h, --help          this help\n",
            d->model_path, d->data_path, d->val_frac, d->device, d->precision, d->epochs, CPU_DEMO_STEPS, d->steps, d->batch, d->grad_accum, d->max_seq,
            d->prompt_loss_weight, d->lr, d->warmup, d->lr_min_frac, d->clip, d->weight_decay, d->rank, d->alpha, d->lora_dropout,
            d->targets, d->quant, d->double_quant, d->recompute, d->eval_every, d->early_stop, d->seed, d->out_dir, d->gguf_type, d->gpu_mem_gb);
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
    "--warmup", "--lr-min-frac", "--clip", "--weight-decay", "--alpha", "--lora-dropout", "--prompt-loss-weight",
    "--gguf-type", "--init-adapter", "--template", "--precision", NULL};

// Options that cannot go together: --val-frac holds a share of --data out only without --val-data.
static const char *const CONFLICTS[] = {"--val-data", "--val-frac", NULL};
// Options that only mean something with another: --gguf-type is the type of --merge-gguf's file.
static const char *const NEEDS[] = {"--gguf-type", "--merge-gguf", NULL};

// --precision resolved for the device (trainer/precision.h): an explicit
// choice the device cannot run is a one-line message, status 2.
static void check_precision(Options *o) {
    Precision asked;
    char err[512];
    if (precision_parse(o->precision, &asked) != 0)
        bad_usage("--precision expects auto, bf16, fp16 or fp32, got ", o->precision);
    int on_gpu = strcmp(o->device, "cuda") == 0;
    if (precision_resolve(asked, on_gpu, on_gpu ? gpu_compute_capability() : 0, &o->chosen_precision, err,
                          sizeof err) != 0) {
        fprintf(stderr, "train: %s\n", err);
        exit(2);
    }
}

// --paged-optim and --offload move GPU state elsewhere: on the CPU everything is in host
// memory already, and offload keeps what recompute keeps. Else a one-line message, status 2.
static void check_placement(const Options *o) {
    int on_gpu = strcmp(o->device, "cuda") == 0;
    if (o->paged_optim && !on_gpu && !o->plan) {
        fprintf(stderr, "train: --paged-optim pages AdamW's state out of GPU memory: it needs --device cuda (on the "
                        "CPU the state is in host memory already)\n");
        exit(2);
    }
    if (o->offload && !on_gpu && !o->plan) {
        fprintf(stderr, "train: --offload moves activations out of GPU memory: it needs --device cuda (on the CPU "
                        "they are in host memory already)\n");
        exit(2);
    }
    if (o->offload && !o->recompute) {
        fprintf(stderr, "train: --offload offloads the block inputs that recompute keeps: it needs --recompute 1\n");
        exit(2);
    }
}

// Every option value in its range, and the device there: else a one-line message, status 2.
static void check_options(Options *o) {
    require(o->steps >= 1, "--steps must be at least 1");
    require(o->epochs >= 0, "--epochs must be at least 0 (0: use --steps)");
    require(o->batch >= 1, "--batch must be at least 1");
    require(o->grad_accum >= 1 && o->grad_accum <= 65536, "--grad-accum must be in [1, 65536]");
    require(o->max_seq >= 2, "--seq must be at least 2");
    require(o->rank >= 1, "--rank must be at least 1");
    require(o->eval_every >= 1, "--eval-every must be at least 1");
    require(o->save_every >= 0, "--save-every must be at least 0 (0: off)");
    require(o->stop_at >= 0, "--stop-at must be at least 0 (0: off)");
    require(o->early_stop >= 0, "--early-stop must be at least 0 (0: off)");
    require(o->eval_answers >= 0, "--eval-answers must be at least 0 (0: off)");
    require(o->lr > 0 && o->lr <= 1, "--lr must be in (0, 1] (QLoRA's is usually 1e-4 to 1e-3; a larger one "
                                     "diverges)");
    require(o->warmup >= 0, "--warmup must be at least 0");
    require(o->lr_min_frac >= 0 && o->lr_min_frac <= 1, "--lr-min-frac must be in [0, 1]");
    require(o->clip >= 0, "--clip must be at least 0 (0: off)");
    require(o->weight_decay >= 0, "--weight-decay must be at least 0");
    require(o->alpha > 0 && o->alpha <= 1e4, "--alpha must be in (0, 10000] (the adapter's scale is alpha / rank; "
                                          "alpha is usually 1-2x the rank)");
    require(o->lora_dropout >= 0 && o->lora_dropout < 1, "--lora-dropout must be in [0, 1)");
    require(o->val_frac >= 0 && o->val_frac < 1, "--val-frac must be in [0, 1)");
    require(o->prompt_loss_weight >= 0 && o->prompt_loss_weight <= 1, "--prompt-loss-weight must be in [0, 1]");
    require(o->gpu_mem_gb > 0, "--gpu-mem must be more than 0");
    if (strcmp(o->quant, "nf4") != 0 && strcmp(o->quant, "none") != 0) bad_usage("--quant expects nf4 or none, got ", o->quant);
    DType gguf_type;
    if (gguf_export_type_from_name(o->gguf_type, &gguf_type) != 0)
        bad_usage("--gguf-type expects f16, bf16 or q8_0, got ", o->gguf_type);
    char device_err[256];
    int on_gpu = gpu_device_choose(o->device, device_err, sizeof device_err);
    if (on_gpu < 0) {
        fprintf(stderr, "train: %s\n", device_err);
        exit(2);
    }
    o->device = on_gpu ? "cuda" : "cpu";
    check_precision(o);
    check_placement(o);
}

// On a CPU the recipe takes about an hour: without --epochs or --steps, run
// the short demo instead, and say how to run the real thing.
static void use_cpu_demo(Options *o, int eval_every_given) {
    int recipe_epochs = o->epochs;
    o->epochs = 0;
    o->steps = CPU_DEMO_STEPS;
    if (!eval_every_given) o->eval_every = CPU_DEMO_EVAL_EVERY;
    printf("train: on a CPU, ./train alone is a %d-step demo (a few minutes), not the fine-tune. The fine-tune\n"
           "       (%d epochs; about an hour on 2 cores, seconds to minutes on a GPU; README, \"Before and after\"):\n"
           "       ./train --epochs %d --save-every 10 --out out/full\n", CPU_DEMO_STEPS, recipe_epochs, recipe_epochs);
}

static Options parse_args(int argc, char **argv) {
    Options o = default_options();
    const char *const bit_choices[] = {"0", "1", NULL};
    char err[256];
    int out_given = 0, steps_given = 0, epochs_given = 0, eval_every_given = 0;
    if (cli_check_options(argc, argv, VALUE_OPTIONS, CONFLICTS, NEEDS, err, sizeof err) != 0) bad_usage(err, "");
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) { usage(stdout); exit(0); }
        if (strcmp(f, "--rslora") == 0) { o.rslora = o.given.rslora = 1; continue; }
        if (strcmp(f, "--dora") == 0) { o.dora = o.given.dora = 1; continue; }
        if (strcmp(f, "--plan") == 0) { o.plan = 1; continue; }
        if (strcmp(f, "--merge") == 0) { o.merge = 1; continue; }
        if (strcmp(f, "--merge-gguf") == 0) { o.merge_gguf = 1; continue; }
        if (strcmp(f, "--pack") == 0) { o.pack = 1; continue; }
        if (strcmp(f, "--overwrite") == 0) { o.overwrite = 1; continue; }
        if (strcmp(f, "--paged-optim") == 0) { o.paged_optim = 1; continue; }
        if (strcmp(f, "--offload") == 0) { o.offload = 1; continue; }
        if (strncmp(f, "--", 2) != 0) bad_usage("unexpected argument ", f);
        const char *v = cli_option_value(argc, argv, &i, VALUE_OPTIONS, err, sizeof err);
        if (!v) bad_usage(err, "");
        v = cli_text("train", f, v);
        if (strcmp(f, "--model") == 0) o.model_path = v;
        else if (strcmp(f, "--data") == 0) o.data_path = v;
        else if (strcmp(f, "--val-data") == 0) o.val_path = v;
        else if (strcmp(f, "--template") == 0) o.template_name = v;
        else if (strcmp(f, "--val-frac") == 0) o.val_frac = cli_float("train", f, v);
        else if (strcmp(f, "--device") == 0) o.device = v;
        else if (strcmp(f, "--out") == 0) { o.out_dir = v; out_given = 1; }
        else if (strcmp(f, "--targets") == 0) { o.targets = v; o.given.targets = 1; }
        else if (strcmp(f, "--quant") == 0) { o.quant = v; o.given.quant = 1; }
        else if (strcmp(f, "--steps") == 0) { o.steps = cli_int("train", f, v); steps_given = 1; }
        else if (strcmp(f, "--epochs") == 0) { o.epochs = cli_int("train", f, v); epochs_given = 1; }
        else if (strcmp(f, "--batch") == 0) o.batch = cli_int("train", f, v);
        else if (strcmp(f, "--grad-accum") == 0) o.grad_accum = cli_int("train", f, v);
        else if (strcmp(f, "--seq") == 0) o.max_seq = cli_int("train", f, v);
        else if (strcmp(f, "--seed") == 0) o.seed = cli_int("train", f, v);
        else if (strcmp(f, "--rank") == 0) { o.rank = cli_int("train", f, v); o.given.rank = 1; }
        else if (strcmp(f, "--double-quant") == 0) {
            o.double_quant = cli_choice("train", f, v, bit_choices);
            o.given.double_quant = 1;
        }
        else if (strcmp(f, "--recompute") == 0) o.recompute = cli_choice("train", f, v, bit_choices);
        else if (strcmp(f, "--eval-every") == 0) { o.eval_every = cli_int("train", f, v); eval_every_given = 1; }
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
        else if (strcmp(f, "--alpha") == 0) { o.alpha = cli_float("train", f, v); o.given.alpha = 1; }
        else if (strcmp(f, "--prompt-loss-weight") == 0) o.prompt_loss_weight = cli_float("train", f, v);
        else if (strcmp(f, "--lora-dropout") == 0) o.lora_dropout = cli_float("train", f, v);
        else if (strcmp(f, "--gguf-type") == 0) o.gguf_type = v;
        else if (strcmp(f, "--init-adapter") == 0) o.init_adapter = v;
        else if (strcmp(f, "--precision") == 0) o.precision = v;
        else bad_usage("unknown option ", f);
    }
    check_options(&o);
    if (o.resume_dir && !out_given) o.out_dir = o.resume_dir;   // a resumed run goes on in its own folder
    if (steps_given && epochs_given && o.epochs > 0) {
        fprintf(stderr, "train: --steps and --epochs both set the run's length: give one (or --epochs 0)\n");
        exit(2);
    }
    if (steps_given && !epochs_given) o.epochs = 0;             // --steps alone sets the length
    if (!steps_given && !epochs_given && strcmp(o.device, "cpu") == 0) use_cpu_demo(&o, eval_every_given);
    return o;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ---- the run ----------------------------------------------------------------------------

// Everything a run holds, from the model to the log.
typedef struct {
    Options o;
    Model model;
    int enabled[N_LINEARS];         // the adapted projections (--targets)
    char targets[64];               // the adapted projections as --targets names them, in one order (lora_targets_text)
    ExampleSet train_set, val_set;
    int total_steps;
    LRSchedule schedule;
    AdamWConfig adamw;
    LoraSet lora;                   // the trainable state: parameters and gradients, one flat layout (lora.h)
    AdamWState adam;                // AdamW's moments, in the same layout
    Engine engine;                  // where the steps run: the CPU or a GPU
    TrainProgress progress;         // the step, the data order, the best val loss: what a checkpoint keeps
    RunLog log;                     // log.csv and loss.svg
    uint64_t model_hash;            // the base's fp32 weights (run_identity)
    char *identity;                 // what a resume must match: run_identity
    char best_adapter[4096];        // OUT/best_adapter (or a resumed run's) once written; "" before
    Embedder embedder;              // --eval-answers: the sentence-embedding model
    int first_step;                 // where this process started (0, or the resumed step)
    double start_time;
    double last_train_loss;         // the previous step's, for the overfitting warning
} Run;

// What one optimizer step measured.
typedef struct {
    double train_loss, grad_norm;   // grad_norm: unscaled (fp16); not finite on a skipped step
    float loss_scale;               // the scale the step's loss was multiplied by (1 unless fp16)
    int skipped;                    // fp16: a gradient overflowed, the step was skipped
    float lr;
    long tokens;                    // tokens in the step's batches, padding included
    long sample_tokens;             // the samples' own tokens (no padding): tokens/s and the fill count these
    double ms;
    double eta_s;                   // the time the rest of the run should take
} StepStats;

// ---- an earlier run in --out ------------------------------------------------------------

// The files a run writes in OUT; the first RUN_MARKERS of them say that OUT holds a run.
static const char *const RUN_FILES[] = {"checkpoint.bin", "checkpoint_best.bin", "log.csv", "adapter", "best_adapter",
                                        "loss.svg", "merged", "merged.gguf", "eval_adapter"};
static const int RUN_MARKERS = 5, N_RUN_FILES = sizeof RUN_FILES / sizeof RUN_FILES[0];

// The first file of an earlier run in dir (its name), or NULL.
static const char *earlier_run_file(const char *dir) {
    for (int i = 0; i < RUN_MARKERS; i++) {
        char path[4200];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, RUN_FILES[i]);
        if (stat(path, &st) == 0) return RUN_FILES[i];
    }
    return NULL;
}

// Whether a and b name the same folder (both existing), or the same path.
static int same_dir(const char *a, const char *b) { return cli_same_file(a, b) || strcmp(a, b) == 0; }

// A new run (or a resume into another folder) must not write over a run
// already in --out: refused (status 2) unless --overwrite.
static void refuse_earlier_run(const Options *o) {
    int resumes_in_out = o->resume_dir && same_dir(o->resume_dir, o->out_dir);
    if (o->overwrite && resumes_in_out) {   // it would remove the checkpoint to resume from, then fail
        fprintf(stderr, "train: --overwrite removes the run in %s, the one --resume continues: leave --overwrite out "
                        "(or give another --out)\n", o->out_dir);
        exit(2);
    }
    if (o->overwrite || resumes_in_out) return;
    const char *found = earlier_run_file(o->out_dir);
    if (!found) return;
    fprintf(stderr, "train: %s: holds an earlier run (%s/%s): continue it with --resume %s, start this one in "
                    "another --out, or replace it with --overwrite\n", o->out_dir, o->out_dir, found, o->out_dir);
    exit(2);
}

// Whether path is the run file or lies inside it (both existing).
static int lies_in(const char *path, const char *run_file) {
    char real_path[PATH_MAX], real_file[PATH_MAX];
    if (!realpath(path, real_path) || !realpath(run_file, real_file)) return 0;
    size_t n = strlen(real_file);
    return strncmp(real_path, real_file, n) == 0 && (real_path[n] == '\0' || real_path[n] == '/');
}

// An input that lies in a file this run writes in --out (which --overwrite
// also removes first), as --model OUT/merged, would be lost: refused (status 2).
static void refuse_input_in_out(const Options *o) {
    const char *const inputs[][2] = {{"--model", o->model_path}, {"--data", o->data_path},
                                     {"--val-data", o->val_path}, {"--init-adapter", o->init_adapter}};
    for (const auto &input : inputs) {
        for (int i = 0; input[1] && i < N_RUN_FILES; i++) {
            char path[4200];
            snprintf(path, sizeof path, "%s/%s", o->out_dir, RUN_FILES[i]);
            if (!lies_in(input[1], path)) continue;
            fprintf(stderr, "train: %s %s lies in %s, which this run writes%s: copy it out of --out %s first, or "
                            "choose another --out\n", input[0], input[1], path,
                    o->overwrite ? " (and --overwrite removes)" : "", o->out_dir);
            exit(2);
        }
    }
}

// nftw's callback: removes each file, then each folder once it is empty.
static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    return remove(path) == 0 ? 0 : errno;
}

// --overwrite: the earlier run's files in OUT removed, so that none of them can
// pass for this run's. Returns 0, or -1 with the message printed.
static int remove_earlier_run(const Options *o) {
    if (!o->overwrite) return 0;
    for (int i = 0; i < N_RUN_FILES; i++) {
        char path[4200];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", o->out_dir, RUN_FILES[i]);
        if (lstat(path, &st) != 0) continue;
        int failed = nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        if (failed) {
            fprintf(stderr, "train: %s: cannot remove the earlier run's file: %s\n", path,
                    strerror(failed > 0 ? failed : errno));
            return -1;
        }
    }
    return 0;
}

// ---- the run's identity: what a resume must match ---------------------------------------

// The FNV-1a hash of a file's bytes, read in chunks. Returns 0, or -1 (message printed).
static int hash_file(const char *path, uint64_t *hash) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "train: %s: cannot open: %s\n", path, strerror(errno)); return -1; }
    static unsigned char chunk[1 << 16];
    *hash = FNV1A_OFFSET_BASIS;
    for (size_t n; (n = fread(chunk, 1, sizeof chunk, f)) > 0;) *hash = fnv1a(*hash, chunk, n);
    int failed = ferror(f);
    fclose(f);
    if (failed) fprintf(stderr, "train: %s: cannot read\n", path);
    return failed ? -1 : 0;
}

// Appends the line "KEY VALUE" (printf-style value) to text, at *used of its size.
static void identity_line(char *text, size_t size, size_t *used, const char *key, const char *format, ...) {
    if (*used >= size) return;
    *used += snprintf(text + *used, size - *used, "%s ", key);
    va_list args;
    va_start(args, format);
    if (*used < size) *used += vsnprintf(text + *used, size - *used, format, args);
    va_end(args);
    if (*used < size) *used += snprintf(text + *used, size - *used, "\n");
}

// The line "KEY VALUE" for a float: the fewest digits that read back as the same float.
static void identity_float(char *text, size_t size, size_t *used, const char *key, float value) {
    int digits = 6;
    char number[32];
    do snprintf(number, sizeof number, "%.*g", digits++, value);
    while (strtof(number, NULL) != value && digits <= 9);
    identity_line(text, size, used, key, "%s", number);
}

// The run's identity, kept in every checkpoint: every option that changes the
// math (as the run uses it: --seq after the model's limit, --batch after the
// sample count, --steps after --epochs), the base's weights, the tokenizer and
// the data files' hashes. --resume refuses a checkpoint whose identity differs.
// Options that change no number of the training (the list in --help) are not in it.
static int run_identity(Run *r) {
    const Options *o = &r->o;
    uint64_t data_hash, val_hash = 0;
    if (hash_file(o->data_path, &data_hash) != 0 || (o->val_path && hash_file(o->val_path, &val_hash) != 0)) return 1;
    size_t size = CHECKPOINT_IDENTITY_MAX, used = 0;
    char *t = (char *)cpu_malloc(size, "run identity");
    identity_line(t, size, &used, "--model", "%s", o->model_path);
    identity_line(t, size, &used, "model-weights-hash", "%016llx", (unsigned long long)r->model_hash);
    identity_line(t, size, &used, "tokenizer-id", "%016llx", (unsigned long long)tokenizer_id(r->model.tokenizer));
    identity_line(t, size, &used, "--data", "%s", o->data_path);
    if (!examples_is_tokfile(o->data_path)) {   // JSONL data is rendered with the chat template
        const ChatFamily *chat = tokenizer_chat_family(r->model.tokenizer);
        identity_line(t, size, &used, "chat-template", "%s", chat ? chat->name : "(none)");
    }
    identity_line(t, size, &used, "data-hash", "%016llx", (unsigned long long)data_hash);
    identity_line(t, size, &used, "--val-data", "%s", o->val_path ? o->val_path : "(none)");
    identity_line(t, size, &used, "val-data-hash", "%016llx", (unsigned long long)val_hash);
    identity_float(t, size, &used, "--val-frac", o->val_frac);
    identity_line(t, size, &used, "--seq", "%d", o->max_seq);
    identity_line(t, size, &used, "--pack", "%d", o->pack);
    identity_float(t, size, &used, "--prompt-loss-weight", o->prompt_loss_weight);
    identity_line(t, size, &used, "--steps", "%d", r->total_steps);
    identity_line(t, size, &used, "--epochs", "%d", o->epochs);
    identity_line(t, size, &used, "--batch", "%d", o->batch);
    identity_line(t, size, &used, "--grad-accum", "%d", o->grad_accum);
    identity_line(t, size, &used, "--seed", "%d", o->seed);
    identity_float(t, size, &used, "--lr", o->lr);
    identity_float(t, size, &used, "--warmup", o->warmup);
    identity_float(t, size, &used, "--lr-min-frac", o->lr_min_frac);
    identity_float(t, size, &used, "--clip", o->clip);
    identity_float(t, size, &used, "--weight-decay", o->weight_decay);
    identity_line(t, size, &used, "--rank", "%d", o->rank);
    identity_float(t, size, &used, "--alpha", o->alpha);
    identity_line(t, size, &used, "--rslora", "%d", o->rslora);
    if (o->dora) identity_line(t, size, &used, "--dora", "%d", o->dora);   // (a LoRA run keeps older checkpoints' identity)
    identity_float(t, size, &used, "--lora-dropout", o->lora_dropout);
    identity_line(t, size, &used, "--targets", "%s", o->targets);
    identity_line(t, size, &used, "--quant", "%s", o->quant);
    identity_line(t, size, &used, "--double-quant", "%d", o->double_quant);
    uint64_t init_hash;
    char init_weights[4200];
    if (o->init_adapter) {   // (a run without one keeps the identity of older checkpoints)
        char err[8400];
        if (adapter_weights_path(o->init_adapter, init_weights, sizeof init_weights, err, sizeof err) != 0) {
            fprintf(stderr, "train: %s\n", err);
            return 1;
        }
        if (hash_file(init_weights, &init_hash) != 0) return 1;
        identity_line(t, size, &used, "--init-adapter", "%s (weights %016llx)", o->init_adapter,
                      (unsigned long long)init_hash);
    }
    if (used >= size) {
        fprintf(stderr, "train: the run's options and paths are longer than a checkpoint holds (%d bytes)\n",
                CHECKPOINT_IDENTITY_MAX);
        return 1;
    }
    r->identity = t;
    return 0;
}

static int make_dir(const char *path) {
    char err[4400];
    if (cli_make_dirs(path, err, sizeof err) == 0) return 0;
    fprintf(stderr, "train: %s\n", err);
    return -1;
}

// The run's hold on --out: an flock on OUT/train.lock, kept until the process
// ends, so that a second ./train into the same folder is refused rather than
// writing over this one's checkpoints and log. 0, or -1 with the message printed.
static int lock_out_dir(const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/train.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "train: %s: cannot create: %s\n", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) return 0;   // fd stays open: the lock lasts as long as the run
    fprintf(stderr, "train: %s: another ./train is writing into it (it holds %s): wait for it to end, or give "
                    "another --out\n", dir, path);
    close(fd);
    return -1;
}

// ---- 1. the model -----------------------------------------------------------------------

// The largest useful LoRA rank: the smallest input or output size among the adapted matrices.
static int smallest_adapted_dim(const Config *c, const int enabled[N_LINEARS]) {
    int smallest = INT_MAX;
    for (int t = 0; t < N_LINEARS; t++) {
        if (!enabled[t]) continue;
        int in_dim, out_dim;
        linear_dims(c, t, &in_dim, &out_dim);
        if (in_dim < smallest) smallest = in_dim;
        if (out_dim < smallest) smallest = out_dim;
    }
    return smallest;
}

// --merge-gguf: a model the GGUF export cannot write is refused now, not after training.
static int gguf_check_before_training(Run *r) {
    char path[4200], err[1024];
    DType type;
    gguf_export_type_from_name(r->o.gguf_type, &type);
    snprintf(path, sizeof path, "%s/merged.gguf", r->o.out_dir);
    if (gguf_check_exportable(&r->model, path, type, err, sizeof err) == 0) return 0;
    fprintf(stderr, "train: --merge-gguf: %s\n", err);
    return -1;
}

// A conflict between an option the user gave and the adapter's value: the message, status 2.
static int refuse_conflict(const char *dir, const char *option, const char *given, const char *adapters) {
    fprintf(stderr, "train: --init-adapter %s: the adapter has %s %s, but the command line gives %s %s (leave the "
                    "option out: it comes from the adapter)\n", dir, option, adapters, option, given);
    return 2;
}

// --init-adapter: the adapter's rank, alpha, rsLoRA and targets become the run's
// (an option given otherwise is an error naming both), its recorded base the
// default --quant and --double-quant. Returns 0, or the exit status.
static int take_adapter_options(Run *r) {
    Options *o = &r->o;
    const Config *c = &r->model.config;
    char err[1024], given[64], adapters[64];
    AdapterConfig ac;
    int enabled[N_LINEARS];
    if (adapter_training_options(o->init_adapter, c, &ac, enabled, err, sizeof err) != 0) {
        fprintf(stderr, "train: --init-adapter: %s\n", err);
        return 2;
    }
    char init_targets[64];   // the adapter's, as --targets names them
    lora_targets_text(enabled, init_targets, sizeof init_targets);
    int same_targets = 1;
    for (int t = 0; t < N_LINEARS; t++) same_targets = same_targets && enabled[t] == r->enabled[t];
    if (o->given.targets && !same_targets) return refuse_conflict(o->init_adapter, "--targets", o->targets, init_targets);
    snprintf(given, sizeof given, "%d", o->rank);
    snprintf(adapters, sizeof adapters, "%d", ac.rank);
    if (o->given.rank && o->rank != ac.rank) return refuse_conflict(o->init_adapter, "--rank", given, adapters);
    snprintf(given, sizeof given, "%g", o->alpha);
    snprintf(adapters, sizeof adapters, "%g", ac.alpha);
    if (o->given.alpha && o->alpha != ac.alpha) return refuse_conflict(o->init_adapter, "--alpha", given, adapters);
    if (o->given.rslora && !ac.rslora) return refuse_conflict(o->init_adapter, "--rslora", "on", "off");
    if (o->given.dora && !ac.dora) return refuse_conflict(o->init_adapter, "--dora", "on", "off (use_dora false)");
    o->rank = ac.rank;
    o->alpha = ac.alpha;
    o->rslora = ac.rslora;
    o->dora = ac.dora;
    memcpy(r->targets, init_targets, sizeof r->targets);
    o->targets = r->targets;
    for (int t = 0; t < N_LINEARS; t++) r->enabled[t] = enabled[t];
    AdapterBaseChoice choice = {strcmp(o->quant, "nf4") == 0, o->double_quant, o->given.quant, o->given.double_quant};
    char warning[2048], described[256];
    int recorded = adapter_choose_base(o->init_adapter, &r->model, &choice, warning, sizeof warning, err, sizeof err);
    if (recorded < 0) { fprintf(stderr, "train: --init-adapter: %s\n", err); return 2; }
    o->quant = choice.quant_nf4 ? "nf4" : "none";
    o->double_quant = choice.double_quant;
    if (warning[0]) fprintf(stderr, "train: warning: %s\n", warning);
    printf("lora: training on from %s: rank %d, alpha %g%s%s, targets %s; base: %s\n", o->init_adapter, o->rank,
           o->alpha, o->rslora ? " (rsLoRA)" : "", o->dora ? " (DoRA)" : "", o->targets, adapter_describe_base(&choice, recorded, described,
                                                                                    sizeof described));
    return 0;
}

// --dora: what the magnitudes add to the trainable state, and what DoRA's layer costs a step.
static void print_dora_cost(const LoraSet *lora) {
    size_t magnitudes = 0;
    for (int i = 0; i < lora->n_layers * N_LINEARS; i++) magnitudes += lora->adapters[i].m ? lora->adapters[i].out_dim : 0;
    printf("dora: %zu magnitudes (one per output row of each adapted matrix) among them; each adapted layer also\n"
           "  computes ||W0 + s B A|| per row every step and keeps x W0^T + s xa B^T per token for backward (with\n"
           "  --lora-dropout > 0 one more base product: x_d W0^T). Measured on a CPU: about %.1fx a LoRA step's time\n"
           "  %s adapter dropout (README, \"DoRA\")\n", magnitudes,
           lora->dropout > 0 ? DORA_CPU_STEP_COST_DROPOUT : DORA_CPU_STEP_COST_NO_DROPOUT,
           lora->dropout > 0 ? "with" : "without");
}

// The model in fp32, and the options that depend on it checked (--seq, --rank, --merge-gguf).
static int load_model(Run *r) {
    Options *o = &r->o;
    char err[1024];
    if (lora_parse_targets(o->targets, r->enabled, err, sizeof err) != 0) bad_usage("--targets: ", err);
    lora_targets_text(r->enabled, r->targets, sizeof r->targets);   // "v,q,q" is "q,v": one run, one record
    o->targets = r->targets;
    if (model_load(&r->model, o->model_path, err, sizeof err) != 0) { fprintf(stderr, "train: %s\n", err); return 1; }
    // a chat template is needed to render JSONL data or --eval-answers prompts; .bin data is rendered already
    int renders = o->template_name || !examples_is_tokfile(o->data_path) || o->eval_answers > 0;
    if (tokenizer_use_chat_template(r->model.tokenizer, o->template_name, err, sizeof err) == 0)
        printf("data: chat template %s (%s)\n", tokenizer_chat_family(r->model.tokenizer)->name,
               tokenizer_chat_origin(r->model.tokenizer));
    else if (renders) { fprintf(stderr, "train: %s: %s\n", o->model_path, err); return 1; }
    r->model_hash = model_weights_hash(&r->model);
    const Config *c = &r->model.config;
    int status = o->init_adapter ? take_adapter_options(r) : 0;
    if (status != 0) return status;
    if (o->max_seq > c->max_seq_len) {
        printf("data: --seq %d is more than the model's context of %d tokens: using %d\n", o->max_seq, c->max_seq_len,
               c->max_seq_len);
        o->max_seq = c->max_seq_len;
    }
    int max_rank = smallest_adapted_dim(c, r->enabled);
    if (o->rank > max_rank) {
        fprintf(stderr, "train: --rank %d is more than %d, the smallest dimension of the adapted matrices (--targets %s)\n",
                o->rank, max_rank, o->targets);
        return 2;
    }
    if (o->merge_gguf && gguf_check_before_training(r) != 0) return 2;
    model_print_summary(&r->model, stdout);
    return 0;
}

// --plan: the course's memory arithmetic for the GPU path (16-bit activations:
// bf16 and fp16 take the same bytes) with these options, then which batch and
// sequence length fit --gpu-mem.
static PlanInputs plan_inputs(const Options *o, const Config *c, const int enabled[N_LINEARS], int batch, int seq_len) {
    PlanInputs in;
    memset(&in, 0, sizeof in);
    in.batch = batch;
    in.seq_len = seq_len;
    in.rank = o->rank;
    for (int t = 0; t < N_LINEARS; t++) in.enabled[t] = enabled[t];
    in.quant_nf4 = strcmp(o->quant, "nf4") == 0;
    in.double_quant = o->double_quant;
    in.recompute = o->recompute;
    in.dora = o->dora;
    in.offload = o->offload;
    in.paged_optim = o->paged_optim;
    in.weight_bytes = 2;
    in.activation_bytes = 2;
    in.loss_chunk = lm_head_chunk_tokens_default(c->vocab_size);
    return in;
}

// Whether batch x seq_len fits gpu_mem_gb GiB with these options (the verdict's arithmetic).
static int plan_fits(const Options *o, const Config *c, const int enabled[N_LINEARS], int batch, int seq_len) {
    PlanInputs in = plan_inputs(o, c, enabled, batch, seq_len);
    MemoryPlan plan;
    memory_plan_compute(c, &in, &plan);
    return plan.total <= o->gpu_mem_gb * 1073741824.0;
}

// The largest batch at --seq, and the longest power-of-two sequence at --batch, that fit (0: none).
static void print_what_fits(const Options *o, const Config *c, const int enabled[N_LINEARS]) {
    int batch = 0, seq_len = 0;
    for (int b = 1; b <= PLAN_MAX_BATCH && plan_fits(o, c, enabled, b, o->max_seq); b *= 2) batch = b;
    for (int t = 64; t <= c->max_seq_len && plan_fits(o, c, enabled, o->batch, t); t *= 2) seq_len = t;
    printf("fits in %g GB: ", o->gpu_mem_gb);
    if (batch) printf("--batch %d at --seq %d", batch, o->max_seq);
    else printf("no batch at --seq %d", o->max_seq);
    if (seq_len) printf("; --seq %d at --batch %d\n", seq_len, o->batch);
    else printf("; no --seq of 64 or more at --batch %d\n", o->batch);
}

static int print_plan(Run *r) {
    const Options *o = &r->o;
    const Config *c = &r->model.config;
    PlanInputs in = plan_inputs(o, c, r->enabled, o->batch, o->max_seq);
    MemoryPlan plan;
    memory_plan_compute(c, &in, &plan);
    memory_plan_print(c, &in, &plan, o->gpu_mem_gb, stdout);
    print_what_fits(o, c, r->enabled);
    model_free(&r->model);
    return 0;
}

// --plan with an HF model directory: its config.json alone (the shapes are all
// the plan needs, so a model not downloaded can be planned: dev/bench/shapes/).
// Returns 1 when the model was read that way, 0 when it must be loaded, -1 on an error.
static int plan_config_only(Run *r) {
    Options *o = &r->o;
    char config_path[4200], err[1024];
    struct stat st;
    snprintf(config_path, sizeof config_path, "%s/config.json", o->model_path);
    if (!o->plan || stat(config_path, &st) != 0) return 0;
    if (lora_parse_targets(o->targets, r->enabled, err, sizeof err) != 0) bad_usage("--targets: ", err);
    if (model_read_hf_config(config_path, &r->model.config, err, sizeof err) != 0) {
        fprintf(stderr, "train: %s\n", err);
        return -1;
    }
    if (o->max_seq > r->model.config.max_seq_len) o->max_seq = r->model.config.max_seq_len;
    printf("model: %s (config.json only: --plan)\n", o->model_path);
    return 1;
}

// ---- 2. the data ------------------------------------------------------------------------

// --pack: the training samples packed into sequences of up to --seq tokens, which
// the run then counts as its samples (validation stays one sample at a time).
static int pack_data(Run *r) {
    const Options *o = &r->o;
    ExampleSet packed;
    if (examples_pack(&r->train_set, o->max_seq, o->seed, &packed) != 0) return 1;
    double tokens = examples_fill(&r->train_set, 1) * r->train_set.count;
    printf("pack: %d samples (%.0f tokens each on average) into %d sequences of up to %d tokens: %.0f tokens each, "
           "%.1f%% full\n", r->train_set.count, tokens / r->train_set.count, packed.count, o->max_seq,
           tokens / packed.count, 100.0 * examples_fill(&packed, o->max_seq));
    examples_free(&r->train_set);
    r->train_set = packed;
    return 0;
}

// The training and validation samples, tokenized; --batch lowered to the sample
// count, --grad-accum to the micro-batches of one epoch.
static int load_data(Run *r) {
    Options *o = &r->o;
    ExampleSource source = {o->data_path, o->val_path, o->val_frac, o->max_seq, o->seed};
    int skipped = 0;
    if (examples_load(&source, r->model.tokenizer, &r->train_set, &r->val_set, &skipped) != 0) return 1;
    if (r->train_set.count == 0) {
        fprintf(stderr, "train: %s: no training sample fits in --seq %d tokens\n", o->data_path, o->max_seq);
        return 1;
    }
    long train_tokens = 0, train_answer = 0;
    for (int i = 0; i < r->train_set.count; i++) {
        train_tokens += r->train_set.examples[i].n_tokens;
        train_answer += r->train_set.examples[i].n_answer;
    }
    if (train_answer == 0) {
        fprintf(stderr, "train: %s: no sample has an answer token to learn from (every target is masked)\n",
                o->data_path);
        return 1;
    }
    printf("data: %d training samples (%ld tokens, %ld answer tokens), %d validation samples%s\n", r->train_set.count,
           train_tokens, train_answer, r->val_set.count,
           o->val_path || examples_is_tokfile(o->data_path) ? "" : " held out of --data");
    if (skipped > 0) printf("data: %d samples skipped: longer than --seq %d tokens\n", skipped, o->max_seq);
    if (o->pack && pack_data(r) != 0) return 1;
    if (o->batch > r->train_set.count) {
        printf("data: --batch %d is more than the %d training samples: batches of %d\n", o->batch, r->train_set.count,
               r->train_set.count);
        o->batch = r->train_set.count;
    }
    // more micro-batches than one epoch has would put samples twice into one step
    int per_epoch = examples_micro_batches_per_epoch(r->train_set.count, o->batch);
    if (o->grad_accum > per_epoch) {
        printf("data: --grad-accum %d is more than the %d micro-batches of --batch %d in the %d training samples: "
               "%d per step (one epoch)\n", o->grad_accum, per_epoch, o->batch, r->train_set.count, per_epoch);
        o->grad_accum = per_epoch;
    }
    return 0;
}

// The run's length (--steps, or --epochs over the samples), its learning-rate schedule and AdamW's settings.
static int plan_steps(Run *r) {
    const Options *o = &r->o;
    // with --epochs: steps = ceil(epochs * micro-batches per epoch / micro-batches per step)
    long long micro_batches = (long long)o->epochs * examples_micro_batches_per_epoch(r->train_set.count, o->batch);
    long long run_steps = o->steps;
    if (o->epochs > 0) run_steps = (micro_batches + o->grad_accum - 1) / o->grad_accum;
    if (run_steps > INT_MAX) {
        fprintf(stderr, "train: --epochs %d makes %lld steps, more than %d\n", o->epochs, run_steps, INT_MAX);
        return 2;
    }
    r->total_steps = (int)run_steps;
    if (o->warmup >= 1 && o->warmup > r->total_steps) {
        fprintf(stderr, "train: --warmup %g steps is more than the run's %d steps\n", o->warmup, r->total_steps);
        return 2;
    }
    if (o->stop_at > r->total_steps) {
        fprintf(stderr, "train: --stop-at %d is past the run's last step, %d\n", o->stop_at, r->total_steps);
        return 2;
    }
    r->schedule = {o->lr, o->lr_min_frac, warmup_steps_from(o->warmup, r->total_steps), r->total_steps};
    r->adamw = adamw_default_config();
    r->adamw.lr = o->lr;
    r->adamw.weight_decay = o->weight_decay;
    return 0;
}

// ---- 3. the engine: the base quantized, the adapters and AdamW, CPU or GPU --------------

// The device and the precision the steps run in: a GPU's name, compute
// capability and memory (what decides --precision auto and what fits).
static void print_device(const Options *o) {
    int fp16 = o->chosen_precision == PRECISION_FP16;
    const char *how = fp16 ? ", the loss scaled dynamically (fp16's range)" : "";
    if (strcmp(o->device, "cuda") != 0) {
        printf("device: cpu, precision %s (the reference)\n", precision_name(o->chosen_precision));
        return;
    }
    int capability = gpu_compute_capability();
    printf("device: %s, compute capability %d.%d (sm_%d), %.1f GiB; precision %s%s%s\n", gpu_device_name(),
           capability / 10, capability % 10, capability, gpu_total_memory() / 1073741824.0,
           precision_name(o->chosen_precision), strcmp(o->precision, "auto") == 0 ? " (auto)" : "", how);
}

// The adapters and AdamW's moments allocated, the engine set up (the base quantized,
// on the CPU or uploaded to the GPU), and OUT made.
static int set_up_training(Run *r) {
    const Options *o = &r->o;
    const Config *c = &r->model.config;
    char err[1024];
    if (o->eval_answers > 0 && embedder_load(&r->embedder, EMBED_DEFAULT_MODEL_DIR, err, sizeof err) != 0) {
        fprintf(stderr, "train: --eval-answers: %s (run `make fetch`)\n", err);
        return 1;
    }
    nf4_print_memory_story(c, stdout);
    int nf4 = strcmp(o->quant, "nf4") == 0;
    // DoRA's m starts at ||W0|| of the base trained on; an --init-adapter's m (below) replaces it
    if (lora_set_init(&r->lora, c, r->enabled, o->rank, o->alpha, o->rslora, o->lora_dropout, (uint64_t)o->seed,
                      o->dora) != 0 ||
        adamw_init(&r->adam, r->lora.n_params) != 0 ||
        (o->dora && dora_init_magnitudes(&r->lora, &r->model, nf4, o->double_quant) != 0)) {
        fprintf(stderr, "train: out of memory: the LoRA adapters and AdamW moments (rank %d) did not fit; lower --rank "
                        "or --targets\n", o->rank);
        return 3;
    }
    if (o->init_adapter && adapter_load_into_set(o->init_adapter, &r->model, &r->lora, err, sizeof err) != 0) {
        fprintf(stderr, "train: --init-adapter: %s\n", err);
        return 2;
    }
    size_t n_lora = r->lora.n_params;
    printf("lora: rank %d, alpha %g, targets %s: %zu trainable parameters (%.3f%% of %zu)\n", o->rank, o->alpha,
           o->targets, n_lora, 100.0 * n_lora / (double)(model_num_params(c) + n_lora), model_num_params(c));
    if (o->dora) print_dora_cost(&r->lora);
    EngineOptions engine_options;
    engine_options.quant = nf4 ? QUANT_NF4 : QUANT_NONE;
    engine_options.double_quant = o->double_quant;
    engine_options.step = {o->rank, lora_scale(o->alpha, o->rank, o->rslora), o->lora_dropout, 0, o->recompute};
    engine_options.max_seqs = o->batch;
    engine_options.paged_optim = o->paged_optim;
    engine_options.offload = o->offload;
    int longest_train = examples_longest(&r->train_set), longest_val = examples_longest(&r->val_set);
    engine_options.max_seq_len = longest_train > longest_val ? longest_train : longest_val;
    int on_gpu = strcmp(o->device, "cuda") == 0;
    print_device(o);
    if (on_gpu) gpu_set_act16(o->chosen_precision == PRECISION_FP16 ? ACT16_FP16 : ACT16_BF16);
    int failed = on_gpu ? engine_gpu_init(&r->engine, &r->model, &engine_options, &r->lora, &r->adam, err, sizeof err)
                        : engine_cpu_init(&r->engine, &r->model, &engine_options, &r->lora, &r->adam, err, sizeof err);
    if (failed) {
        fprintf(stderr, "train: %s\n", err);
        return 3;
    }
    if (make_dir(o->out_dir) != 0) return 1;
    if (lock_out_dir(o->out_dir) != 0) return 2;
    return remove_earlier_run(o) == 0 ? 0 : 1;
}

// ---- evaluating and saving (used from here on) ------------------------------------------

// Mean answer-only loss over a set (no dropout), in batches of one.
static double evaluate(Run *r, const ExampleSet *set) {
    Engine *e = &r->engine;
    double total = 0.0;
    long counted = 0;
    for (int i = 0; i < set->count; i++) {
        const Example *sample = &set->examples[i];
        Batch batch = {sample->ids, sample->targets, 1, sample->n_tokens, NULL, NULL};
        int n = 0;
        total += e->loss(e, &batch, &n);
        counted += n;
    }
    return counted ? total / counted : 0.0;
}

// Before anything is written: weights that diverged to NaN or Inf would make a
// checkpoint or adapter that only produces garbage. Returns -1 (message
// printed) if so; files written earlier are kept.
static int check_weights_finite(const Run *r, const char *what) {
    char which[128];
    if (!lora_set_find_non_finite(&r->lora, r->lora.params, which, sizeof which)) return 0;
    fprintf(stderr, "train: the LoRA weights hold NaN or Inf (first: %s): training diverged; lower --lr or --alpha. "
                    "Not writing %s\n", which, what);
    return -1;
}

// The host's state (synced from the engine by the caller) to out_dir/name.
static int save_checkpoint(const Run *r, const char *name) {
    char path[4096], err[1024];
    snprintf(path, sizeof path, "%s/%s", r->o.out_dir, name);
    if (check_weights_finite(r, path) != 0) return -1;
    if (checkpoint_save(path, r->identity, &r->lora, &r->adam, &r->progress, err, sizeof err) != 0) {
        fprintf(stderr, "train: %s\n", err);
        return -1;
    }
    return 0;
}

// Writes the adapters in peft's layout to out_dir/name/, with the base they train on.
static int save_adapter(const Run *r, const char *name) {
    char dir[4096], err[1024];
    snprintf(dir, sizeof dir, "%s/%s", r->o.out_dir, name);
    if (check_weights_finite(r, dir) != 0) return -1;
    if (make_dir(dir) != 0) return -1;
    LoraBase base = {strcmp(r->o.quant, "nf4") == 0, r->o.double_quant, r->model_hash};
    if (lora_set_save_peft(&r->lora, &r->model.config, dir, r->o.model_path, &base, err, sizeof err) != 0) {
        fprintf(stderr, "train: %s\n", err);
        return -1;
    }
    return 0;
}

// ---- --eval-answers ---------------------------------------------------------------------

// --eval-answers: the adapter as it is now, merged into a fresh copy of the
// base it trains on (dequant(NF4(W)) with --quant nf4), answers the first n
// validation questions; scored with ./evaluate's code.
static void evaluate_answers(Run *r, int step) {
    const Options *o = &r->o;
    const ExampleSet *val_set = &r->val_set;
    char dir[4096], err[1024];
    r->engine.sync_to_host(&r->engine);
    if (save_adapter(r, "eval_adapter") != 0) return;
    snprintf(dir, sizeof dir, "%s/eval_adapter", o->out_dir);
    Model merged;
    if (model_load(&merged, o->model_path, err, sizeof err) != 0) {
        fprintf(stderr, "train: --eval-answers: %s\n", err);
        return;
    }
    if (tokenizer_use_chat_template(merged.tokenizer, o->template_name, err, sizeof err) != 0) {
        fprintf(stderr, "train: --eval-answers: %s\n", err);
        model_free(&merged);
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
    EvalOutcome *outcomes = eval_run_model(&merged, &r->embedder, samples, count, 64, "val answers");
    EvalSummary summary = eval_summarize(outcomes, count);
    printf("step %4d | val answers (%d, greedy, 64 tokens): ROUGE-1 F1 %.3f, ROUGE-L F1 %.3f, embedding cosine %.3f\n",
           step, count, summary.rouge_f1[ROUGE_1].mean, summary.rouge_f1[ROUGE_L].mean, summary.similarity.mean);
    eval_free_outcomes(outcomes, count);
    eval_free_samples(samples, count);
    model_free(&merged);
}

// ---- 4. start or resume -----------------------------------------------------------------

// A new run (the data order shuffled from the seed), or one continued from its
// checkpoint; then the log opened and, for a new run, the val loss before training.
static int start_or_resume(Run *r) {
    const Options *o = &r->o;
    char err[4400];
    TrainProgress *p = &r->progress;
    int loss_scaling = o->chosen_precision == PRECISION_FP16;   // fp16's narrow range: trainer/grad_scaler.h
    *p = {0, r->total_steps, (uint64_t)o->seed, 0, r->train_set.count, NULL, NAN, 0, grad_scaler_default(loss_scaling)};
    p->order = (int *)cpu_malloc(sizeof(int) * r->train_set.count, "sample order");
    for (int i = 0; i < r->train_set.count; i++) p->order[i] = i;
    examples_shuffle(p->order, r->train_set.count, &p->data_rng);
    if (o->resume_dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/checkpoint.bin", o->resume_dir);
        if (checkpoint_load(path, r->identity, &r->lora, &r->adam, p, err, sizeof err) != 0) {
            fprintf(stderr, "train: %s\n", err);
            return 1;
        }
        printf("resumed from %s at step %d of %d\n", path, p->step, r->total_steps);
        // a resume in another --precision: the loss scaler starts over (on) or is dropped (off)
        if (p->scaler.enabled != loss_scaling) p->scaler = grad_scaler_default(loss_scaling);
        r->engine.sync_from_host(&r->engine);
        // the best adapter so far is the resumed run's, where it kept it
        struct stat st;
        snprintf(path, sizeof path, "%s/best_adapter", o->resume_dir);
        if (stat(path, &st) == 0) snprintf(r->best_adapter, sizeof r->best_adapter, "%s", path);
    }
    run_log_open(&r->log, o->out_dir, o->resume_dir, p->step, r->total_steps);
    printf("training: %d steps of %d x %d samples on the %s, lr %g (warmup %lld steps, cosine to %g)\n", r->total_steps,
           o->grad_accum, o->batch, r->engine.device, o->lr, (long long)r->schedule.warmup_steps, o->lr * o->lr_min_frac);
    if (r->val_set.count && p->step == 0) {
        p->best_val = evaluate(r, &r->val_set);
        printf("step %4d | val loss %.4f (before training)\n", 0, p->best_val);
        run_log_before_training(&r->log, p->best_val);
    }
    r->first_step = p->step;
    r->start_time = now_seconds();
    r->last_train_loss = NAN;
    return 0;
}

// ---- 5. one step ------------------------------------------------------------------------

// The step's micro-batches: grad_accum runs of --batch samples (packed
// sequences with --pack; an epoch's last one takes the samples left) along the
// data order (first[m], count[m]), reshuffled when an epoch runs out. Returns the
// loss normaliser: the sum of the step's loss weights (with --prompt-loss-weight
// 0, its answer tokens).
static double choose_micro_batches(Run *r, int *first, int *count) {
    const Options *o = &r->o;
    TrainProgress *p = &r->progress;
    double weight_sum = 0.0;
    for (int m = 0; m < o->grad_accum; m++) {
        count[m] = examples_next_micro_batch(p->order, r->train_set.count, o->batch, &p->cursor, &p->data_rng, &first[m]);
        for (int i = 0; i < count[m]; i++)
            weight_sum += example_loss_weight(&r->train_set.examples[p->order[first[m] + i]], o->prompt_loss_weight);
    }
    return weight_sum;
}

// The loss or the gradient norm is not finite: the first bad gradient named, -1.
static int stop_not_finite(Run *r, int step, const StepStats *s) {
    char which[128];
    r->engine.sync_to_host(&r->engine);
    lora_set_find_non_finite(&r->lora, r->lora.grads, which, sizeof which);
    fprintf(stderr, "train: step %d: %s is not finite (loss %g, grad norm %g; first bad gradient: %s); "
                    "stopping without saving%s\n", step + 1, isfinite(s->train_loss) ? "the gradient" : "the loss",
            s->train_loss, s->grad_norm, which,
            // in fp16 only the forward can get here: an activation past fp16's 65504, which loss scaling cannot help
            r->progress.scaler.enabled ? " (fp16: an activation overflowed 65504; use --precision bf16 where the GPU "
                                         "has it, or lower --lr)" : "");
    return -1;
}

// fp16's loss scaling around the optimizer step, as torch.amp.GradScaler's
// unscale_ and update: the gradients were computed from loss * scale; an inf
// or NaN among them skips the step (the scale halves), else they are divided
// by the scale before clipping. Returns 1 when the step is skipped.
static int unscale_or_skip(Run *r, StepStats *s) {
    Engine *e = &r->engine;
    GradScaler *scaler = &r->progress.scaler;
    s->loss_scale = scaler->scale;
    float inverse = grad_scaler_inverse(scaler);
    int found_inf = !isfinite(s->grad_norm);
    grad_scaler_update(scaler, found_inf);
    s->skipped = found_inf;
    if (found_inf) return 1;
    e->scale_grads(e, inverse);
    s->grad_norm = e->grad_norm(e);
    return 0;
}

// One optimizer step: the gradients of the step's micro-batches summed (each
// scaled by 1 / the sum of the step's loss weights, and by the loss scale in
// fp16), clipped to the global norm, then AdamW. Returns -1 (message printed)
// when the loss or (bf16, fp32) a gradient is not finite; in fp16 a gradient
// that is not finite skips the step instead (unscale_or_skip).
static int train_step(Run *r, int step, StepStats *s) {
    const Options *o = &r->o;
    Engine *e = &r->engine;
    double t0 = now_seconds();
    int *first = (int *)cpu_malloc(sizeof(int) * o->grad_accum, "micro-batches");
    int *count = (int *)cpu_malloc(sizeof(int) * o->grad_accum, "micro-batches");
    double weight_sum = choose_micro_batches(r, first, count);
    e->zero_grads(e);
    double loss_sum = 0.0;
    s->tokens = s->sample_tokens = 0;
    for (int m = 0; m < o->grad_accum; m++) {
        BatchArrays arrays;
        int counted;
        Batch batch = examples_batch(&r->train_set, r->progress.order, first[m], count[m], o->prompt_loss_weight,
                                     &arrays);
        // the dropout masks' seed: one per (seed, step, micro-batch)
        uint64_t dropout_seed = (uint64_t)o->seed * 7919ULL + (uint64_t)step * 64 + (uint64_t)m;
        // d(loss_scale * sum of w_t * loss_t / sum of w_t)
        double grad_scale = weight_sum > 0 ? r->progress.scaler.scale / weight_sum : 0.0;
        loss_sum += e->micro_batch(e, &batch, dropout_seed, grad_scale, &counted);
        s->tokens += (long)batch.n_seqs * batch.seq_len;
        for (int i = 0; i < count[m]; i++)
            s->sample_tokens += r->train_set.examples[r->progress.order[first[m] + i]].n_tokens;
        batch_arrays_free(&arrays);
    }
    free(first);
    free(count);
    // loss = sum of w_t * (token t's loss) / sum of w_t over the step (w_t: 1 on the answer,
    // --prompt-loss-weight elsewhere); with weight 0 the mean answer-token loss
    s->train_loss = weight_sum > 0 ? loss_sum / weight_sum : 0.0;
    s->grad_norm = e->grad_norm(e);
    s->loss_scale = 1.0f;
    s->skipped = 0;
    int scaling = r->progress.scaler.enabled;
    if (!isfinite(s->train_loss) || (!scaling && !isfinite(s->grad_norm))) return stop_not_finite(r, step, s);
    // a skipped step does not advance the schedule (as transformers' Trainer,
    // which steps the scheduler only when the optimizer stepped)
    s->lr = lr_at_step(&r->schedule, step - r->progress.scaler.skipped_steps);
    if (!scaling || unscale_or_skip(r, s) == 0) {
        e->scale_grads(e, clip_scale(s->grad_norm, o->clip));
        e->adamw(e, &r->adamw, s->lr);
    }
    s->ms = (now_seconds() - t0) * 1000.0;
    // eta = the mean time of this process's steps so far x the steps left
    s->eta_s = (now_seconds() - r->start_time) / (step + 1 - r->first_step) * (r->total_steps - step - 1);
    return 0;
}

// The validation loss after step when one is due (every --eval-every steps and
// at the last), else NaN; with --eval-answers, the answers scored too. Returns
// -1 (message printed) when it is not finite.
static int validate(Run *r, int step, double *val_loss) {
    *val_loss = NAN;
    if (!r->val_set.count || ((step + 1) % r->o.eval_every != 0 && step + 1 != r->total_steps)) return 0;
    *val_loss = evaluate(r, &r->val_set);
    if (!isfinite(*val_loss)) {
        fprintf(stderr, "train: step %d: the validation loss is not finite (%g): training diverged; lower --lr "
                        "or --alpha. Stopping without saving\n", step + 1, *val_loss);
        return -1;
    }
    if (r->o.eval_answers > 0) evaluate_answers(r, step + 1);
    return 0;
}

// The step's printed line, its row in log.csv and the chart.
static void report_step(Run *r, int step, const StepStats *s, double val_loss) {
    double tokens_per_s = s->sample_tokens / (s->ms / 1000.0);
    printf("step %4d/%d | loss %.4f | grad norm %.3f | lr %.2e | %.0f ms | %.0f tok/s", step + 1, r->total_steps,
           s->train_loss, s->grad_norm, s->lr, s->ms, tokens_per_s);
    // how full the sequences are: the samples' tokens / the batch slots (padding is wasted work)
    if (r->o.pack || r->o.batch > 1) printf(" | fill %.0f%%", 100.0 * s->sample_tokens / s->tokens);
    printf(" | eta %.0f s", s->eta_s);
    if (!isnan(val_loss)) printf(" | val loss %.4f", val_loss);
    const GradScaler *scaler = &r->progress.scaler;
    if (scaler->enabled) printf(" | loss scale %g", s->loss_scale);
    if (s->skipped)
        printf(" | skipped: a gradient overflowed fp16 (scale now %g; %d steps skipped so far)", scaler->scale,
               scaler->skipped_steps);
    r->engine.print_step_stats(&r->engine, s->tokens, s->ms / 1000.0);
    printf("\n");
    if (!isnan(val_loss) && val_loss > r->progress.best_val && s->train_loss < r->last_train_loss)
        printf("warning: validation loss rose (%.4f -> %.4f) while training loss fell: the adapter may be "
               "overfitting\n", r->progress.best_val, val_loss);
    r->last_train_loss = s->train_loss;
    run_log_step(&r->log, step + 1, s->train_loss, val_loss, s->grad_norm, s->lr, s->ms, tokens_per_s, s->loss_scale,
                 scaler->skipped_steps);
    fflush(stdout);
}

// After a step: the best adapter and checkpoint when the val loss improved,
// early stopping, and the checkpoint when one is due (--save-every, the last
// step, --stop-at). *paused: the run stops here, to be resumed. Returns -1
// when a file could not be written.
static int keep_progress(Run *r, double val_loss, int *paused) {
    const Options *o = &r->o;
    TrainProgress *p = &r->progress;
    if (!isnan(val_loss) && !(val_loss > p->best_val)) {
        p->best_val = val_loss;
        p->evals_without_improvement = 0;
        r->engine.sync_to_host(&r->engine);
        if (save_checkpoint(r, "checkpoint_best.bin") != 0 || save_adapter(r, "best_adapter") != 0) return -1;
        snprintf(r->best_adapter, sizeof r->best_adapter, "%s/best_adapter", o->out_dir);
    } else if (!isnan(val_loss)) {
        p->evals_without_improvement++;
    }
    if (o->early_stop > 0 && p->evals_without_improvement >= o->early_stop) {
        if (r->best_adapter[0])
            printf("early stop: val loss has not improved for %d evaluations; the best adapter (val loss %.4f) is "
                   "in %s/\n", p->evals_without_improvement, p->best_val, r->best_adapter);
        else
            printf("early stop: val loss has not improved for %d evaluations; no validation improved on the loss "
                   "before training (%.4f), so no best adapter was written\n", p->evals_without_improvement,
                   p->best_val);
        r->total_steps = p->step;
    }
    int pausing = p->step == o->stop_at;
    if ((o->save_every > 0 && p->step % o->save_every == 0) || p->step == r->total_steps || pausing) {
        r->engine.sync_to_host(&r->engine);
        if (save_checkpoint(r, "checkpoint.bin") != 0) return -1;
    }
    *paused = pausing && p->step < r->total_steps;
    if (*paused) printf("paused after step %d: continue with --resume %s\n", p->step, o->out_dir);
    return 0;
}

// ---- 6. finish --------------------------------------------------------------------------

// --merge and --merge-gguf: the final adapter merged into the base it was
// trained on, as OUT/adapter/ records it (the run's --quant; r->model must
// still be the base as loaded, which the recorded weights hash checks),
// written as OUT/merged/ (HF, bf16) and OUT/merged.gguf.
static int save_merged(Run *r) {
    const Options *o = &r->o;
    char adapter_dir[4096], merged_dir[4096], gguf_path[4096], err[1024], warning[2048];
    snprintf(adapter_dir, sizeof adapter_dir, "%s/adapter", o->out_dir);
    snprintf(merged_dir, sizeof merged_dir, "%s/merged", o->out_dir);
    snprintf(gguf_path, sizeof gguf_path, "%s/merged.gguf", o->out_dir);
    const char *which = o->merge ? "--merge" : "--merge-gguf";
    AdapterBaseChoice base = {strcmp(o->quant, "nf4") == 0, o->double_quant, 0, 0};
    if (adapter_choose_base(adapter_dir, &r->model, &base, warning, sizeof warning, err, sizeof err) < 0) {
        fprintf(stderr, "train: %s: %s\n", which, err);
        return -1;
    }
    if (warning[0]) fprintf(stderr, "train: %s: warning: %s\n", which, warning);
    int nf4 = base.quant_nf4;
    AdapterInfo info;
    DType gguf_type;
    gguf_export_type_from_name(o->gguf_type, &gguf_type);
    const char *failed = NULL;
    if (merge_into_base(&r->model, adapter_dir, nf4, base.double_quant, &info, err, sizeof err) != 0)
        failed = which;
    else if (o->merge && model_save_hf(&r->model, merged_dir, err, sizeof err) != 0) failed = "--merge";
    else if (o->merge_gguf && gguf_write_model(&r->model, gguf_path, gguf_type, err, sizeof err) != 0)
        failed = "--merge-gguf";
    if (failed) {
        fprintf(stderr, "train: %s: %s\n", failed, err);
        return -1;
    }
    const char *base_name = nf4 ? "NF4-dequantized" : "fp32";
    if (o->merge)
        printf("merged: %d adapted matrices onto the %s base, in bf16: %s/ (./generate --model %s)\n", info.n_merged,
               base_name, merged_dir, merged_dir);
    if (o->merge_gguf)
        printf("merged: %d adapted matrices onto the %s base, as GGUF %s: %s (llama-cli -m %s)\n", info.n_merged,
               base_name, o->gguf_type, gguf_path, gguf_path);
    return 0;
}

// The adapter to OUT/adapter/, --merge / --merge-gguf, and the closing line.
static int finish(Run *r) {
    const Options *o = &r->o;
    // without a validation set nothing has run the model since the last update:
    // one sample's loss, so that weights that diverged are not saved as the adapter
    if (!r->val_set.count) {
        ExampleSet first_sample = {r->train_set.examples, 1};
        double loss = evaluate(r, &first_sample);
        if (!isfinite(loss)) {
            fprintf(stderr, "train: after step %d the loss is not finite (%g): training diverged; lower --lr or "
                            "--alpha. Not writing the adapter\n", r->progress.step, loss);
            return 1;
        }
    }
    r->engine.sync_to_host(&r->engine);
    if (save_adapter(r, "adapter") != 0) return 1;
    if ((o->merge || o->merge_gguf) && save_merged(r) != 0) return 1;
    printf("done: %d steps in %.0f s; log %s, loss curve %s/loss.svg, adapter (HF peft layout) %s/adapter/\n",
           r->progress.step, now_seconds() - r->start_time, r->log.csv_path, o->out_dir, o->out_dir);
    return 0;
}

static void free_run(Run *r) {
    run_log_close(&r->log);
    free(r->progress.order);
    free(r->identity);
    r->engine.free(&r->engine);
    adamw_free(&r->adam);
    lora_set_free(&r->lora);
    examples_free(&r->train_set);
    examples_free(&r->val_set);
    if (r->o.eval_answers > 0) embedder_free(&r->embedder);
    model_free(&r->model);
}

// ---- the story of a run -----------------------------------------------------------------

int main(int argc, char **argv) {
    Run run;
    memset(&run, 0, sizeof run);
    run.o = parse_args(argc, argv);
    refuse_input_in_out(&run.o);                                //    an input that the run would write over
    refuse_earlier_run(&run.o);                                 //    --out holds a run: --resume or --overwrite
    int status;
    if ((status = plan_config_only(&run)) != 0) return status < 0 ? 1 : print_plan(&run);   // --plan of a config
    if ((status = load_model(&run)) != 0) return status;        // 1. the model, in fp32
    if (run.o.plan) return print_plan(&run);                    //    --plan: the GPU memory arithmetic only
    if ((status = load_data(&run)) != 0) return status;         // 2. the samples, tokenized
    if ((status = plan_steps(&run)) != 0) return status;        //    the run's length, the lr schedule
    if ((status = run_identity(&run)) != 0) return status;      //    what a resume must match
    if ((status = set_up_training(&run)) != 0) return status;   // 3. the adapters, AdamW, the engine
    if ((status = start_or_resume(&run)) != 0) return status;   // 4. a new run, or a checkpoint's
    // 5. the steps: each one optimizer step, then validation, the log, checkpoints
    for (int step = run.progress.step; step < run.total_steps; step++) {
        StepStats stats;
        double val_loss;
        int paused;
        if (train_step(&run, step, &stats) != 0 || validate(&run, step, &val_loss) != 0) return 1;
        report_step(&run, step, &stats, val_loss);
        run.progress.step = step + 1;
        if (keep_progress(&run, val_loss, &paused) != 0) return 1;
        if (paused) return 0;
    }
    status = finish(&run);                                      // 6. the adapter, --merge
    free_run(&run);
    return status;
}
