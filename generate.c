// generate.c: ./generate, text generation with the forward pass on the GPU
// (infer/forward_gpu.h, when there is one) or the CPU (infer/forward.h).
//   ./generate --chat --prompt "What is Debian?"
// The prompt is encoded (optionally wrapped in the chat template), run through
// the model in chunks to fill the key/value cache, then one token at a time is
// chosen by the sampler and printed as soon as it is known. With --adapter
// the adapter is merged into the base it was trained on: the one its
// adapter_config.json records (./train's adapters), else by default --quant
// nf4, as ./train's: the linear weights round-tripped through NF4 first.
#include "infer/adapter.h"
#include "formats/cli.h"
#include "eval/eval.h"
#include "infer/forward.h"
#include "infer/forward_gpu.h"
#include "formats/json.h"
#include "formats/utf8.h"
#include "model.h"
#include "nf4.h"
#include "ops/gpu.h"
#include "infer/sampler.h"
#include "formats/tensor.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PREFILL_CHUNK 256
// the defaults of --max-new, --top-p and --seed
static const int DEFAULT_MAX_NEW = 128;
static const float DEFAULT_TOP_P = 0.9f;
static const int DEFAULT_SEED = 42;

typedef struct {
    const char *model_path;
    const char *adapter_dir;
    const char *prompt;
    char *prompt_from_file;
    const char *system;
    int max_new;
    float temperature;
    float top_p;
    unsigned long long seed;
    int chat;
    const char *template_name;   // --template: the chat template family (NULL: the model's)
    AdapterBaseChoice base;   // --quant, --double-quant: the base the adapter is merged onto
    const char *device;       // --device: cpu, cuda or auto
    int on_gpu;               // the device chosen: 1 for cuda
} Options;

static void usage(FILE *out) {
    fprintf(out,
            "usage: ./generate [options]\n"
            "  --model PATH        GGUF file or HF model directory (default %s)\n"
            "  --adapter DIR       merge a LoRA adapter (peft layout, as ./train writes) into the model\n"
            "  --quant Q           with --adapter, the base it was trained on, as ./train's --quant: nf4 (the\n"
            "                      linear weights round-tripped through NF4 first) or none (as loaded) (default:\n"
            "                      the one the adapter records, as ./train writes it; else nf4)\n"
            "  --double-quant 0|1  as ./train's --double-quant, for --quant nf4 (default: recorded; else 1)\n"
            "  --prompt TEXT       the prompt (this or --prompt-file is required)\n"
            "  --prompt-file PATH  read the prompt from a file\n"
            "  --chat              wrap the prompt in the model's chat template as a user message\n"
            "  --system TEXT       system message for --chat (default: the model's own)\n"
            "  --template NAME     for --chat, render with this chat template instead of the model's:\n"
            "                      chatml, llama3, llama3.1 or exaone (default: the one the model's matches)\n"
            "  --max-new N         tokens to generate at most (default %d)\n"
            "  --temperature T     0 = greedy (default 0)\n"
            "  --top-p P           nucleus sampling mass when T > 0 (default %g)\n"
            "  --seed S            random seed for sampling (default %d)\n"
            "  --device D          cpu, cuda or auto: cuda when a GPU is present (default auto)\n"
            "  -h, --help          this help\n",
            DEFAULT_MODEL, DEFAULT_MAX_NEW, DEFAULT_TOP_P, DEFAULT_SEED);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char *read_prompt_file(const char *path) {
    char err[512];
    size_t len;
    char *text = read_file(path, &len, err, sizeof err);
    if (!text) {
        fprintf(stderr, "generate: %s\n", err);
        exit(1);
    }
    if (strlen(text) != len) {
        fprintf(stderr, "generate: %s: contains a NUL byte\n", path);
        exit(1);
    }
    // a UTF-8 byte-order mark is no part of the prompt
    size_t bom = utf8_bom_length(text, len);
    memmove(text, text + bom, len - bom + 1);
    return text;
}

static Options parse_args(int argc, char **argv) {
    Options o = {DEFAULT_MODEL, NULL, NULL, NULL, NULL, DEFAULT_MAX_NEW, 0.0f, DEFAULT_TOP_P, DEFAULT_SEED, 0, NULL, {1, 1, 0, 0}, "auto", 0};
    const char *const quant_choices[] = {"nf4", "none", NULL}, *const bit_choices[] = {"0", "1", NULL};
    const char *const flags[] = {"--model", "--adapter", "--quant", "--double-quant", "--prompt", "--prompt-file",
                                 "--system", "--template", "--max-new", "--temperature", "--top-p", "--seed", "--device",
                                 NULL};
    const char *const conflicts[] = {"--prompt", "--prompt-file", NULL},
                      *const needs[] = {"--system", "--chat", "--template", "--chat", NULL};
    char err[256];
    if (cli_check_options(argc, argv, flags, conflicts, needs, err, sizeof err) != 0) {
        fprintf(stderr, "generate: %s\n", err);
        usage(stderr);
        exit(2);
    }
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) { usage(stdout); exit(0); }
        if (strcmp(flag, "--chat") == 0) { o.chat = 1; continue; }
        int is_option = strncmp(flag, "--", 2) == 0;
        if (!is_option) snprintf(err, sizeof err, "unexpected argument %s", flag);
        const char *value = is_option ? cli_option_value(argc, argv, &i, flags, err, sizeof err) : NULL;
        if (!value) {
            fprintf(stderr, "generate: %s\n", err);
            usage(stderr);
            exit(2);
        }
        if (strcmp(flag, "--model") == 0) o.model_path = cli_text("generate", flag, value);
        else if (strcmp(flag, "--adapter") == 0) o.adapter_dir = cli_text("generate", flag, value);
        else if (strcmp(flag, "--quant") == 0) {
            o.base.quant_nf4 = cli_choice("generate", flag, value, quant_choices) == 0;
            o.base.quant_given = 1;
        } else if (strcmp(flag, "--double-quant") == 0) {
            o.base.double_quant = cli_choice("generate", flag, value, bit_choices);
            o.base.double_quant_given = 1;
        }
        else if (strcmp(flag, "--prompt") == 0) o.prompt = value;
        else if (strcmp(flag, "--prompt-file") == 0) o.prompt = o.prompt_from_file = read_prompt_file(value);
        else if (strcmp(flag, "--system") == 0) o.system = value;
        else if (strcmp(flag, "--template") == 0) o.template_name = value;
        else if (strcmp(flag, "--max-new") == 0) o.max_new = cli_int("generate", flag, value);
        else if (strcmp(flag, "--temperature") == 0) o.temperature = cli_float("generate", flag, value);
        else if (strcmp(flag, "--top-p") == 0) o.top_p = cli_float("generate", flag, value);
        else if (strcmp(flag, "--seed") == 0) o.seed = (unsigned long long)cli_int("generate", flag, value);
        else if (strcmp(flag, "--device") == 0) o.device = value;
        else {
            fprintf(stderr, "generate: unknown option %s\n", flag);
            usage(stderr);
            exit(2);
        }
    }
    if (!o.prompt) { fprintf(stderr, "generate: --prompt or --prompt-file is required\n"); usage(stderr); exit(2); }
    if (o.max_new < 1) { fprintf(stderr, "generate: --max-new must be at least 1\n"); exit(2); }
    if (o.temperature < 0.0f) { fprintf(stderr, "generate: --temperature must be >= 0\n"); exit(2); }
    if (o.top_p <= 0.0f || o.top_p > 1.0f) { fprintf(stderr, "generate: --top-p must be in (0, 1]\n"); exit(2); }
    o.on_gpu = gpu_device_choose(o.device, err, sizeof err);
    if (o.on_gpu < 0) { fprintf(stderr, "generate: %s\n", err); exit(2); }
    return o;
}

static int encode_prompt(const Tokenizer *tok, const Options *o, int **ids) {
    if (!o->chat) return tokenizer_encode(tok, o->prompt, strlen(o->prompt), 1, ids);
    ChatMessage messages[2];
    int n = 0;
    if (o->system) messages[n++] = (ChatMessage){"system", o->system};
    messages[n++] = (ChatMessage){"user", o->prompt};
    unsigned char *is_answer = NULL;
    int count = chat_encode(tok, messages, n, 1, ids, &is_answer);
    free(is_answer);
    return count;
}

// The model; with --adapter, first made the base the adapter was trained on
// (the one it records, or --quant), then the adapter merged in. Exits on error.
static void load_model(Model *m, Options *o) {
    char err[1024], warning[2048];
    if (o->adapter_dir && adapter_check_config(o->adapter_dir, err, sizeof err) != 0) {
        fprintf(stderr, "generate: %s\n", err);
        exit(1);
    }
    if (model_load(m, o->model_path, err, sizeof err) != 0) { fprintf(stderr, "generate: %s\n", err); exit(1); }
    if (!o->adapter_dir) return;
    AdapterBaseChoice *base = &o->base;
    int recorded = adapter_choose_base(o->adapter_dir, m, base, warning, sizeof warning, err, sizeof err);
    if (recorded < 0) { fprintf(stderr, "generate: %s\n", err); exit(1); }
    if (warning[0]) fprintf(stderr, "generate: warning: %s\n", warning);
    if (base->quant_nf4 && nf4_round_trip_model(m, base->double_quant, err, sizeof err) != 0) {
        fprintf(stderr, "generate: %s\n", err);
        exit(1);
    }
    fprintf(stderr, "base: %s\n", adapter_describe_base(base, recorded, err, sizeof err));
    AdapterInfo info;
    if (adapter_merge_peft(m, o->adapter_dir, &info, err, sizeof err) != 0) {
        fprintf(stderr, "generate: %s\n", err);
        exit(1);
    }
    fprintf(stderr, "adapter: %s (%d modules merged, rank %d, scaling %g)\n", o->adapter_dir, info.n_merged,
            info.rank, info.scaling);
}

// Exits when the forward pass that made the logits for generated token n gave
// NaN/Inf or overflowed (eval_output_usable): the weights are not finite, or far too large.
static void check_output(const float *logits, const float *norms, const Config *c, int n, const Options *o) {
    if (eval_output_usable(logits, norms, c)) return;
    if (n > 1) printf("\n");   // end the line of the tokens printed so far
    fflush(stdout);
    fprintf(stderr, "generate: the model's output is NaN/Inf (or overflowed) at token %d: the model or adapter weights "
                    "are not finite or far too large (%s%s%s)\n",
            n, o->model_path, o->adapter_dir ? ", adapter " : "", o->adapter_dir ? o->adapter_dir : "");
    exit(1);
}

// One sequence's forward on the chosen device: the GPU's (gpu not NULL) or the CPU's.
typedef struct {
    const Model *model;
    GpuModel *gpu;               // the base (with --adapter merged) on the GPU
    GpuInferState *gpu_state;
    InferState cpu_state;
} Runner;

// A cache of max_seq positions on the chosen device (and the model there); exits when it does not fit.
static void runner_init(Runner *r, const Model *m, const Options *o, int max_seq) {
    char err[512];
    memset(r, 0, sizeof *r);
    r->model = m;
    if (!o->on_gpu) {
        if (infer_state_init(&r->cpu_state, &m->config, max_seq, PREFILL_CHUNK) != 0) {
            fprintf(stderr, "generate: out of memory for a %d-token cache\n", max_seq);
            exit(1);
        }
        fprintf(stderr, "generate: device cpu, fp32\n");
        return;
    }
    const char *precision = gpu_infer_choose_precision();
    r->gpu = gpu_model_upload(m, err, sizeof err);
    r->gpu_state = r->gpu ? gpu_infer_state_create(r->gpu, max_seq, PREFILL_CHUNK, 0, err, sizeof err) : NULL;
    if (!r->gpu_state) {
        fprintf(stderr, "generate: --device cuda: %s\n", err);
        exit(1);
    }
    fprintf(stderr, "generate: device %s, %s; GPU memory: base %.1f MiB, %d-token cache and activations %.1f MiB\n",
            gpu_device_name(), precision, gpu_model_bytes(r->gpu) / 1048576.0, max_seq,
            gpu_infer_state_bytes(r->gpu_state) / 1048576.0);
}

// The last token's logits for tokens[0..n) at positions pos.., as forward_cpu.
static const float *runner_forward(Runner *r, const int *tokens, int n, int pos, float *norms) {
    if (r->gpu) return forward_gpu(r->gpu, NULL, r->gpu_state, tokens, n, pos, 0, norms);
    return forward_cpu(r->model, &r->cpu_state, tokens, n, pos, 0, norms);
}

static void runner_free(Runner *r) {
    if (r->gpu) {
        gpu_infer_state_free(r->gpu_state);
        gpu_model_free(r->gpu);
    } else {
        infer_state_free(&r->cpu_state);
    }
}

// Prints len bytes of text (malloc'd, from the token stream) at once and frees it.
static void print_text(char *text, size_t len) {
    if (!text) { fprintf(stderr, "generate: out of memory\n"); exit(1); }
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    free(text);
}

int main(int argc, char **argv) {
    Options o = parse_args(argc, argv);
    Model model;
    load_model(&model, &o);
    const Config *c = &model.config;
    char err[1024];
    if (o.chat && tokenizer_use_chat_template(model.tokenizer, o.template_name, err, sizeof err) != 0) {
        fprintf(stderr, "generate: %s: %s\n", o.model_path, err);
        return 1;
    }
    if (o.chat)
        fprintf(stderr, "generate: chat template %s (%s)\n", tokenizer_chat_family(model.tokenizer)->name,
                tokenizer_chat_origin(model.tokenizer));
    int *prompt = NULL;
    int n_prompt = encode_prompt(model.tokenizer, &o, &prompt);
    if (n_prompt <= 0) {
        fprintf(stderr, "generate: the prompt encodes to no tokens\n");
        return 1;
    }
    if (o.max_new > c->max_seq_len - n_prompt) {
        fprintf(stderr, "generate: prompt (%d tokens) + --max-new (%d) exceeds the model's context of %d\n",
                n_prompt, o.max_new, c->max_seq_len);
        return 1;
    }
    int max_seq = n_prompt + o.max_new;
    Runner runner;
    runner_init(&runner, &model, &o, max_seq);
    Sampler sampler;
    if (sampler_init(&sampler, c->vocab_size, o.temperature, o.top_p, o.seed) != 0) {
        fprintf(stderr, "generate: out of memory for the sampler\n");
        return 1;
    }
    // the end of the turn (the chat family's end-of-turn token) or of the text
    int eos = tokenizer_eos_id(model.tokenizer), end_of_turn = tokenizer_end_of_turn_id(model.tokenizer);

    double t0 = now_seconds();
    const float *logits = NULL;
    float *norms = (float *)cpu_malloc(sizeof(float) * ((size_t)c->n_layers + 1), "the hidden-state norms");
    for (int pos = 0; pos < n_prompt; pos += PREFILL_CHUNK) {
        int n = n_prompt - pos < PREFILL_CHUNK ? n_prompt - pos : PREFILL_CHUNK;
        logits = runner_forward(&runner, prompt + pos, n, pos, norms);
    }
    double t1 = now_seconds();
    int n_generated = 0, n_decode_forwards = 0;
    TokenStream stream = {0};   // what is printed is whole characters; a cut one ends as U+FFFD
    size_t len;
    for (int pos = n_prompt; n_generated < o.max_new; pos++) {
        check_output(logits, norms, c, n_generated + 1, &o);
        int token = sampler_next(&sampler, logits);
        n_generated++;
        if (token == eos || token == end_of_turn) break;
        // len is set by the call: read it only after (argument order is unspecified)
        char *piece = tokenizer_stream_next(model.tokenizer, &stream, token, &len);
        print_text(piece, len);
        if (n_generated == o.max_new) break;
        logits = runner_forward(&runner, &token, 1, pos, norms);
        n_decode_forwards++;
    }
    double t2 = now_seconds();
    char *rest = tokenizer_stream_end(&stream, &len);
    print_text(rest, len);
    printf("\n");
    fflush(stdout);
    fprintf(stderr, "[prompt: %d tokens in %.2f s, %.1f tok/s | generated %d tokens, decode %.1f tok/s]\n",
            n_prompt, t1 - t0, n_prompt / (t1 - t0), n_generated,
            n_decode_forwards ? n_decode_forwards / (t2 - t1) : 0.0);
    free(norms);
    sampler_free(&sampler);
    runner_free(&runner);
    free(prompt);
    free(o.prompt_from_file);
    model_free(&model);
    return 0;
}
