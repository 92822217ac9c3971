// merge.c: ./merge, the course's chapter on model merging: several fine-tunes
// of the same base combined into one without a GPU.
//   ./merge --method cat --weights 1,1 --out out/both out/a/adapter out/b/adapter
//   ./merge --method slerp --t 0.5 --out out/slerp model_a model_b
//   ./merge --method passthrough --layers 0:0-15,1:8-29 --out out/deep model_a model_b
// Adapters (peft layout) merge into an adapter with peft's add_weighted_adapter
// methods (merging/adapter_merge.h); whole models (HF directories, GGUF files,
// or --base plus an adapter each) into an HF model directory with mergekit's
// linear, slerp and passthrough (merging/model_merge.h).
#include "formats/cli.h"
#include "infer/adapter.h"
#include "infer/gguf_export.h"
#include "infer/merge.h"
#include "merging/adapter_merge.h"
#include "merging/model_merge.h"
#include "nf4.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// The most inputs and passthrough layer ranges one merge takes.
#define MAX_INPUTS 64
#define MAX_RANGES 64
// dare's default seed.
#define DEFAULT_SEED 1234

typedef enum { MODEL_LINEAR, MODEL_SLERP, MODEL_PASSTHROUGH, N_MODEL_METHODS } ModelMethod;
static const char *const MODEL_METHOD_NAMES[N_MODEL_METHODS] = {"linear", "slerp", "passthrough"};

typedef struct {
    const char *method, *weights_text, *layers, *base, *out, *gguf_type;   // gguf_type: NULL when not given
    double density, t;          // NAN when not given
    int rank, seed;             // rank 0: not given
    AdapterBaseChoice base_choice;   // --quant: with --base, the base each adapter is merged onto
    const char *inputs[MAX_INPUTS];
    int n_inputs;
} Options;

static void usage(FILE *out) {
    fprintf(out,
            "usage: ./merge --method NAME [--weights w1,w2,...] [--density D] [--rank R] [--t T] [--layers SPEC]\n"
            "               [--base MODEL] [--quant nf4|none] [--seed S] [--gguf-type T] --out PATH INPUT...\n"
            "Merges fine-tunes of the same base (the course's chapter on model merging), on the CPU.\n"
            "INPUTs are LoRA adapter directories (peft's layout: ./train's or peft's) or models (HF directories,\n"
            "GGUF files; with --base, an adapter stands for the base with it merged in).\n"
            "Adapters into an adapter directory (peft's add_weighted_adapter; --weights needed, one per input,\n"
            "negative ones subtract; s_i = alpha_i / r_i; the result has lora_alpha = r, scaling 1):\n"
            "  linear               A = sum sign(w s) sqrt(|w s|) A_i, B = sum sqrt(|w s|) B_i: the A's and B's\n"
            "                       merged separately, NOT the weighted sum of the deltas (equal ranks)\n"
            "  cat                  B A = sum w_i s_i B_i A_i exactly: ranks concatenated (rank = their sum)\n"
            "  svd                  sum w_i s_i B_i A_i re-factored to --rank by a truncated SVD (default: the\n"
            "                       largest input rank); prints the share of the energy kept\n"
            "  ties                 like linear, each A and B trimmed to its top --density magnitudes, the sign\n"
            "                       elected by total mass, the agreeing entries averaged (equal ranks)\n"
            "  dare_linear          like linear, entries dropped at random with probability 1 - density and\n"
            "                       the rest scaled by 1 / density (seeded by --seed; equal ranks)\n"
            "  dare_ties            dare's drop, then ties's sign election and disjoint mean (equal ranks)\n"
            "  magnitude_prune      like linear, each trimmed to its top --density magnitudes (equal ranks)\n"
            "  ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd\n"
            "                       the same on the deltas s_i B_i A_i, then re-factored as svd\n"
            "Models into an HF model directory (mergekit; same architecture and shape):\n"
            "  linear               W = sum w_i W_i / sum w_i for every weight (--weights >= 0; default equal)\n"
            "  slerp                two models, per tensor: spherical interpolation at --t (0: the first,\n"
            "                       1: the second), linear where the two are nearly parallel (|cos| > %g)\n"
            "  passthrough          a model stacked from layer ranges: --layers 0:0-15,1:8-29 is input 0's\n"
            "                       layers 0-15 then input 1's layers 8-29 (SOLAR's depthwise upscaling);\n"
            "                       embeddings from the first range's input, final norm and head from the last's\n"
            "Options:\n"
            "  --method NAME     one of the methods above (required)\n"
            "  --weights W,...   one weight per input\n"
            "  --density D       ties, dare_*, magnitude_prune: the share of entries kept, 0 < D <= 1\n"
            "  --rank R          svd's and the *_svd methods' rank (default: the largest input rank)\n"
            "  --t T             slerp's position, 0 <= T <= 1\n"
            "  --layers SPEC     passthrough's layer ranges, INPUT:FIRST-LAST,... (inclusive)\n"
            "  --base MODEL      model methods on adapters: each adapter merged into this base first\n"
            "  --quant Q         with --base, the base the adapters were trained on, as ./train's --quant:\n"
            "                    nf4 (linear weights round-tripped through NF4) or none (default: the one each\n"
            "                    adapter records, as ./train writes it, with its double quant; else nf4, double\n"
            "                    quant); a base that differs from the record is warned about\n"
            "  --seed S          the dare_* methods' drop masks (default %d)\n"
            "  --out PATH        the adapter or model directory written (created when missing); a model method's\n"
            "                    PATH ending in .gguf writes one GGUF file for llama.cpp instead; never an INPUT\n"
            "                    or --base (refused)\n"
            "  --gguf-type T     with --out X.gguf: f16, bf16 or q8_0 (default f16, as llama.cpp's converter)\n"
            "  -h, --help        this help\n",
            SLERP_DOT_THRESHOLD, DEFAULT_SEED);
}

static void bad_usage(const char *message, const char *detail) {
    fprintf(stderr, "merge: %s%s\n", message, detail);
    fprintf(stderr, "run ./merge --help for the methods and options\n");
    exit(2);
}

static Options parse_args(int argc, char **argv) {
    Options o = {0};
    o.density = NAN;
    o.t = NAN;
    o.seed = DEFAULT_SEED;
    o.base_choice = (AdapterBaseChoice){1, 1, 0, 0};
    const char *const quant_choices[] = {"nf4", "none", NULL};
    const char *const flags[] = {"--method", "--weights", "--density", "--rank", "--t", "--layers", "--base",
                                 "--quant", "--seed", "--out", "--gguf-type", NULL};
    const char *const needs[] = {"--quant", "--base", NULL};
    char err[256];
    if (cli_check_options(argc, argv, flags, NULL, needs, err, sizeof err) != 0) bad_usage(err, "");
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) { usage(stdout); exit(0); }
        if (strncmp(f, "--", 2) != 0) {
            if (o.n_inputs == MAX_INPUTS) bad_usage("too many inputs (at most 64)", "");
            o.inputs[o.n_inputs++] = f;
            continue;
        }
        const char *v = cli_option_value(argc, argv, &i, flags, err, sizeof err);
        if (!v) bad_usage(err, "");
        v = cli_text("merge", f, v);
        if (strcmp(f, "--method") == 0) o.method = v;
        else if (strcmp(f, "--weights") == 0) o.weights_text = v;
        else if (strcmp(f, "--density") == 0) o.density = cli_number("merge", f, v);
        else if (strcmp(f, "--rank") == 0) {
            o.rank = cli_int("merge", f, v);
            if (o.rank < 1) bad_usage("--rank must be at least 1, got ", v);
        }
        else if (strcmp(f, "--t") == 0) o.t = cli_number("merge", f, v);
        else if (strcmp(f, "--layers") == 0) o.layers = v;
        else if (strcmp(f, "--base") == 0) o.base = v;
        else if (strcmp(f, "--quant") == 0) {
            o.base_choice.quant_nf4 = cli_choice("merge", f, v, quant_choices) == 0;
            o.base_choice.quant_given = 1;
        }
        else if (strcmp(f, "--seed") == 0) o.seed = cli_int("merge", f, v);
        else if (strcmp(f, "--out") == 0) o.out = v;
        else if (strcmp(f, "--gguf-type") == 0) o.gguf_type = v;
        else bad_usage("unknown option ", f);
    }
    if (!o.method) bad_usage("--method is required", "");
    if (!o.out) bad_usage("--out is required", "");
    if (o.n_inputs == 0) bad_usage("no INPUT given (adapter directories or models)", "");
    // the merge is written over --out: never over what it reads
    for (int i = 0; i < o.n_inputs; i++)
        if (cli_same_file(o.out, o.inputs[i])) bad_usage("--out is an INPUT (it would be written over): ", o.out);
    if (o.base && cli_same_file(o.out, o.base))
        bad_usage("--out is the --base model (it would be written over): ", o.out);
    DType type;
    if (o.gguf_type && gguf_export_type_from_name(o.gguf_type, &type) != 0) bad_usage("--gguf-type expects f16, bf16 or q8_0, got ", o.gguf_type);
    return o;
}

// Parses "w1,w2,..." into one weight per input; NULL text: every weight `fallback`, or an error when NAN.
static void parse_weights(const Options *o, double *weights, double fallback) {
    if (!o->weights_text) {
        if (isnan(fallback)) {
            fprintf(stderr, "merge: --method %s needs --weights, one per input (%d inputs), as peft's "
                    "add_weighted_adapter\n", o->method, o->n_inputs);
            exit(2);
        }
        for (int i = 0; i < o->n_inputs; i++) weights[i] = fallback;
        return;
    }
    const char *p = o->weights_text;
    int n = 0;
    while (*p) {
        char *end;
        double w = strtod(p, &end);
        if (end == p || (*end != ',' && *end != '\0') || !isfinite(w)) bad_usage("--weights expects numbers "
                                                                                   "separated by commas, got ", o->weights_text);
        if (n == MAX_INPUTS) bad_usage("--weights: more weights than inputs: ", o->weights_text);
        weights[n++] = w;
        p = *end ? end + 1 : end;
    }
    if (n != o->n_inputs) {
        fprintf(stderr, "merge: --weights gives %d weight%s for %d inputs: one per input, in order (a missing "
                "weight is an error, not a default)\n", n, n == 1 ? "" : "s", o->n_inputs);
        exit(2);
    }
}

// Refuses an option the method does not read.
static void refuse(const char *method, const char *flag, int given) {
    if (!given) return;
    fprintf(stderr, "merge: --method %s does not take %s\n", method, flag);
    exit(2);
}

static int is_adapter_dir(const char *path) {
    char config[4096];
    struct stat st;
    snprintf(config, sizeof config, "%s/adapter_config.json", path);
    return stat(config, &st) == 0;
}

static int ends_with(const char *text, const char *suffix) {
    size_t n = strlen(text), m = strlen(suffix);
    return n >= m && strcmp(text + n - m, suffix) == 0;
}

// ---- adapters -> adapter ---------------------------------------------------------

// The program's dare masks: seeded by --seed, the input and the tensor's name.
typedef struct {
    uint64_t seed;
    double density;
} MaskSeed;

static void seeded_keep_mask(void *context, int input, const char *tensor, float *keep, int64_t n) {
    const MaskSeed *s = (const MaskSeed *)context;
    dare_keep_mask(keep, n, s->density, dare_mask_seed(s->seed, input, tensor));
}

static int merge_adapters(const Options *o, AdapterMethod method) {
    Combine how = adapter_method_combine(method);
    refuse(o->method, "--t (slerp's)", !isnan(o->t));
    refuse(o->method, "--layers (passthrough's)", o->layers != NULL);
    refuse(o->method, "--density (ties, dare_*, magnitude_prune)", !combine_uses_density(how) && !isnan(o->density));
    refuse(o->method, "--rank (svd's and the *_svd methods')", !adapter_method_is_svd(method) && o->rank != 0);
    if (combine_uses_density(how) && (isnan(o->density) || !(o->density > 0 && o->density <= 1))) {
        fprintf(stderr, "merge: --method %s needs --density D with 0 < D <= 1 (the share of entries kept)\n",
                o->method);
        return 2;
    }
    if (ends_with(o->out, ".gguf")) bad_usage("an adapter merge writes an adapter directory, not a .gguf: ", o->out);
    double weights[MAX_INPUTS];
    parse_weights(o, weights, NAN);
    char err[1024];
    PeftAdapter inputs[MAX_INPUTS], merged;
    for (int i = 0; i < o->n_inputs; i++) {
        if (peft_adapter_read(&inputs[i], o->inputs[i], err, sizeof err) != 0) {
            fprintf(stderr, "merge: %s\n", err);
            return 1;
        }
        printf("input %d: %s (r %d, alpha %g, scaling %g, %d modules), weight %g\n", i, o->inputs[i],
               inputs[i].rank, inputs[i].alpha, inputs[i].scaling, inputs[i].n_modules, weights[i]);
    }
    if (o->n_inputs == 1 && method != ADAPTER_LINEAR)
        printf("one input: merged as linear (as peft's add_weighted_adapter)\n");
    MaskSeed mask_seed = {(uint64_t)o->seed, o->density};
    AdapterMergeOptions options = {method, weights, o->density, o->rank, seeded_keep_mask, &mask_seed};
    AdapterMergeReport report;
    int status = adapters_merge(inputs, o->n_inputs, &options, &merged, &report, err, sizeof err);
    if (status == 0) {
        printf("%s: %d modules, rank %d, lora_alpha %d (scaling 1)\n", o->method, report.n_modules, report.rank,
               report.rank);
        if (adapter_method_is_svd(method))
            printf("svd to rank %d kept %.4f%% of the merged deltas' energy (sum of squared singular values) on "
                   "average, %.4f%% at the least\n", report.rank, 100 * report.energy_kept_mean,
                   100 * report.energy_kept_min);
        status = peft_adapter_write(&merged, o->out, err, sizeof err);
        peft_adapter_free(&merged);
    }
    for (int i = 0; i < o->n_inputs; i++) peft_adapter_free(&inputs[i]);
    if (status != 0) { fprintf(stderr, "merge: %s\n", err); return 1; }
    printf("wrote the merged adapter to %s/\n", o->out);
    return 0;
}

// ---- models -> model ---------------------------------------------------------------

// One input as a model: loaded, or with --base and an adapter, the base with it
// merged in: the base the adapter was trained on, the one it records (else --quant's).
static int load_input(Model *m, const Options *o, const char *path, char *err, size_t err_size) {
    if (!o->base || !is_adapter_dir(path)) return model_load(m, path, err, err_size);
    if (adapter_check_config(path, err, err_size) != 0 || model_load(m, o->base, err, err_size) != 0) return -1;
    AdapterBaseChoice choice = o->base_choice;
    char warning[2048], described[256];
    int recorded = adapter_choose_base(path, m, &choice, warning, sizeof warning, err, err_size);
    AdapterInfo info;
    if (recorded < 0 || (choice.quant_nf4 && nf4_round_trip_model(m, choice.double_quant, err, err_size) != 0) ||
        adapter_merge_peft(m, path, &info, err, err_size) != 0) {
        model_free(m);
        return -1;
    }
    if (warning[0]) fprintf(stderr, "merge: warning: %s\n", warning);
    printf("  %s: %d modules merged into %s (r %d, scaling %g); base: %s\n", path, info.n_merged, o->base, info.rank,
           info.scaling, adapter_describe_base(&choice, recorded, described, sizeof described));
    return 0;
}

// The one place a merged model is written: an HF directory, or a GGUF file
// (out ends in .gguf) of type gguf_type (NULL: f16).
static int save_model(const Model *m, const char *out, const char *gguf_type, char *err, size_t err_size) {
    if (ends_with(out, ".gguf")) {
        DType type;
        gguf_export_type_from_name(gguf_type ? gguf_type : "f16", &type);
        return gguf_write_model(m, out, type, err, err_size);
    }
    if (cli_make_dirs(out, err, err_size) != 0) return -1;
    return model_save_hf(m, out, err, err_size);
}

static int check_model_options(const Options *o, ModelMethod method, double *weights) {
    refuse(o->method, "--density (an adapter method's)", !isnan(o->density));
    refuse(o->method, "--rank (an adapter method's)", o->rank != 0);
    refuse(o->method, "--t (slerp's)", method != MODEL_SLERP && !isnan(o->t));
    refuse(o->method, "--layers (passthrough's)", method != MODEL_PASSTHROUGH && o->layers != NULL);
    refuse(o->method, "--weights (linear's)", method != MODEL_LINEAR && o->weights_text != NULL);
    if (method == MODEL_LINEAR) {
        parse_weights(o, weights, 1.0);
        double sum = 0.0;
        for (int i = 0; i < o->n_inputs; i++) {
            if (weights[i] < 0) {
                fprintf(stderr, "merge: --weights: weight %g of input %d (%s) is negative: linear takes a weighted "
                        "average, weights >= 0\n", weights[i], i, o->inputs[i]);
                return 2;
            }
            sum += weights[i];
        }
        if (sum <= 0) { fprintf(stderr, "merge: --weights: they sum to 0 (a weighted average needs more)\n"); return 2; }
    }
    if (method == MODEL_SLERP && (o->n_inputs != 2 || isnan(o->t) || o->t < 0 || o->t > 1)) {
        fprintf(stderr, "merge: --method slerp needs two models and --t T with 0 <= T <= 1 (got %d inputs%s)\n",
                o->n_inputs, isnan(o->t) ? ", no --t" : "");
        return 2;
    }
    if (method == MODEL_PASSTHROUGH && !o->layers) bad_usage("--method passthrough needs --layers", "");
    return 0;
}

static int merge_models(const Options *o, ModelMethod method) {
    double weights[MAX_INPUTS];
    int status = check_model_options(o, method, weights);
    if (status != 0) return status;
    LayerRange ranges[MAX_RANGES];
    int n_ranges = 0;
    char err[1024];
    if (method == MODEL_PASSTHROUGH &&
        (n_ranges = parse_layer_ranges(o->layers, ranges, MAX_RANGES, err, sizeof err)) < 0)
        bad_usage(err, "");
    static Model models[MAX_INPUTS];
    int loaded = 0;
    for (; loaded < o->n_inputs && status == 0; loaded++) {
        printf("input %d: %s\n", loaded, o->inputs[loaded]);
        if (load_input(&models[loaded], o, o->inputs[loaded], err, sizeof err) != 0) { status = 1; break; }
        if (loaded > 0 && method != MODEL_PASSTHROUGH &&
            models_check_same_shape(&models[0], &models[loaded], 1, err, sizeof err) != 0) status = 1;
    }
    if (status == 0 && method == MODEL_LINEAR) {
        models_merge_linear(models, o->n_inputs, weights);
        status = save_model(&models[0], o->out, o->gguf_type, err, sizeof err) != 0;
    } else if (status == 0 && method == MODEL_SLERP) {
        int n_linear = models_merge_slerp(models, o->t);
        printf("slerp at t = %g: %d tensors interpolated linearly (nearly parallel)\n", o->t, n_linear);
        status = save_model(&models[0], o->out, o->gguf_type, err, sizeof err) != 0;
    } else if (status == 0) {
        Model stacked;
        status = models_merge_passthrough(models, o->n_inputs, ranges, n_ranges, &stacked, err, sizeof err) != 0;
        if (status == 0) {
            printf("passthrough: %d layers\n", stacked.config.n_layers);
            status = save_model(&stacked, o->out, o->gguf_type, err, sizeof err) != 0;
            stacked.tokenizer = NULL;
            model_free(&stacked);
        }
    }
    for (int i = 0; i < loaded; i++) model_free(&models[i]);
    if (status != 0) { fprintf(stderr, "merge: %s\n", err); return 1; }
    printf("wrote the merged model to %s%s\n", o->out, ends_with(o->out, ".gguf") ? "" : "/");
    return 0;
}

int main(int argc, char **argv) {
    Options o = parse_args(argc, argv);
    int n_adapters = 0;
    for (int i = 0; i < o.n_inputs; i++) n_adapters += is_adapter_dir(o.inputs[i]);
    int adapter_method = adapter_method_from_name(o.method), model_method = -1;
    for (int m = 0; m < N_MODEL_METHODS; m++)
        if (strcmp(o.method, MODEL_METHOD_NAMES[m]) == 0) model_method = m;
    if (adapter_method < 0 && model_method < 0) bad_usage("unknown --method ", o.method);
    if (o.gguf_type && !ends_with(o.out, ".gguf")) bad_usage("--gguf-type goes with an --out ending in .gguf, got ", o.out);
    if (!o.base && n_adapters == o.n_inputs) {
        if (adapter_method < 0)
            bad_usage(o.method, " merges whole models: give models, or --base MODEL with the adapters");
        return merge_adapters(&o, (AdapterMethod)adapter_method);
    }
    if (!o.base && n_adapters > 0)
        bad_usage("a mix of adapters and models: give --base MODEL to merge each adapter into it first", "");
    if (model_method < 0) bad_usage(o.method, " merges adapters: give adapter directories without --base");
    return merge_models(&o, (ModelMethod)model_method);
}
