// train.cu: ./train, the QLoRA fine-tuning program. Fine-tuning itself (NF4 +
// LoRA + AdamW) is not written yet; for now it measures the starting point:
// the base model's answer-only loss and perplexity on RAFT samples, computed
// with the CPU forward pass.
//   ./train --data data/sample_raft.jsonl
#include "data/raft.h"
#include "forward.h"
#include "layers.h"
#include "model.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define DEFAULT_DATA "data/sample_raft.jsonl"
#define DEFAULT_SEQ 1024

typedef struct {
    const char *model_path;
    const char *data_path;
    int max_seq;
    const char *device;
} Options;

// One sample as tokens, with its shifted answer-only targets (see raft_encode).
typedef struct {
    int *ids;          // NULL when the sample was skipped
    int *targets;
    int n_tokens;
    int n_answer;      // targets that are not RAFT_IGNORE
} EncodedSample;

static void usage(FILE *out) {
    fprintf(out,
            "usage: ./train [options]\n"
            "Measures the base model's answer-only loss on RAFT samples (fine-tuning is not implemented yet).\n"
            "  --model PATH    GGUF file or HF model directory (default %s)\n"
            "  --data PATH     RAFT samples, one JSON object a line (default %s)\n"
            "  --seq N         max tokens per sample; longer samples are skipped (default %d)\n"
            "  --device D      cpu, cuda or auto (default auto, which is cpu for now)\n",
            DEFAULT_MODEL, DEFAULT_DATA, DEFAULT_SEQ);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void bad_usage(const char *message, const char *detail) {
    fprintf(stderr, "train: %s%s\n", message, detail);
    usage(stderr);
    exit(2);
}

// Parses a whole-number option; exits with a clear message when it is not one.
static int int_arg(const char *flag, const char *value) {
    char *end;
    long x = strtol(value, &end, 10);
    if (*value == '\0' || *end != '\0' || x < INT_MIN || x > INT_MAX) {
        fprintf(stderr, "train: %s expects a whole number, got '%s'\n", flag, value);
        usage(stderr);
        exit(2);
    }
    return (int)x;
}

static Options parse_args(int argc, char **argv) {
    Options o = {DEFAULT_MODEL, DEFAULT_DATA, DEFAULT_SEQ, "auto"};
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) { usage(stdout); exit(0); }
        int known = strcmp(flag, "--model") == 0 || strcmp(flag, "--data") == 0 || strcmp(flag, "--seq") == 0 ||
                    strcmp(flag, "--device") == 0;
        if (!known) bad_usage("unknown option ", flag);
        if (i + 1 >= argc) bad_usage("missing value for ", flag);
        const char *value = argv[++i];
        if (strcmp(flag, "--model") == 0) o.model_path = value;
        else if (strcmp(flag, "--data") == 0) o.data_path = value;
        else if (strcmp(flag, "--seq") == 0) o.max_seq = int_arg(flag, value);
        else o.device = value;
    }
    if (o.max_seq < 2) bad_usage("--seq must be at least 2", "");
    if (strcmp(o.device, "cuda") == 0) {
        fprintf(stderr, "train: --device cuda: qlora.c has no CUDA support for training yet "
                        "(use --device cpu to measure the base model's loss)\n");
        exit(2);
    }
    if (strcmp(o.device, "cpu") != 0 && strcmp(o.device, "auto") != 0)
        bad_usage("--device expects cpu, cuda or auto, got ", o.device);
    return o;
}

// Encodes every sample; those longer than max_seq tokens are skipped (ids NULL).
// Returns the number skipped, or -1 when a sample cannot be encoded.
static int encode_samples(const Tokenizer *tok, const RaftData *data, int max_seq, EncodedSample *out) {
    int skipped = 0;
    for (int i = 0; i < data->count; i++) {
        EncodedSample *e = &out[i];
        memset(e, 0, sizeof *e);
        int n = raft_encode(tok, &data->samples[i], &e->ids, &e->targets);
        if (n < 0) {
            fprintf(stderr, "train: cannot encode sample %d: the tokenizer lacks the ChatML tokens "
                            "<|im_start|> and <|im_end|>, or memory ran out\n", i + 1);
            return -1;
        }
        e->n_tokens = n;
        if (n > max_seq) {
            free(e->ids);
            free(e->targets);
            e->ids = e->targets = NULL;
            skipped++;
            continue;
        }
        for (int t = 0; t < n; t++) e->n_answer += e->targets[t] != RAFT_IGNORE;
    }
    return skipped;
}

// Mean answer-only cross-entropy of one sample under the base model, in *loss.
// Returns -1 when the activations do not fit in memory.
static int sample_loss(const Model *m, const EncodedSample *e, float *loss) {
    InferState state;
    if (infer_state_init(&state, &m->config, e->n_tokens, e->n_tokens) != 0) return -1;
    const float *logits = forward_cpu(m, &state, e->ids, e->n_tokens, 0, 1, NULL);
    int counted = 0;
    *loss = cross_entropy_cpu(logits, e->targets, e->n_tokens, m->config.vocab_size, &counted);
    infer_state_free(&state);
    return 0;
}

int main(int argc, char **argv) {
    Options o = parse_args(argc, argv);
    char err[1024];
    RaftData data;
    if (raft_read_jsonl(&data, o.data_path, err, sizeof err) != 0) {
        fprintf(stderr, "train: %s\n", err);
        return 1;
    }
    Model model;
    if (model_load(&model, o.model_path, err, sizeof err) != 0) {
        fprintf(stderr, "train: %s\n", err);
        return 1;
    }
    if (o.max_seq > model.config.max_seq_len) {
        fprintf(stderr, "train: --seq %d exceeds the model's context of %d tokens\n", o.max_seq,
                model.config.max_seq_len);
        return 2;
    }
    model_print_summary(&model, stdout);

    EncodedSample *encoded = (EncodedSample *)calloc((size_t)data.count, sizeof(EncodedSample));
    if (!encoded) { fprintf(stderr, "train: out of memory\n"); return 1; }
    int skipped = encode_samples(model.tokenizer, &data, o.max_seq, encoded);
    if (skipped < 0) return 1;
    long total_tokens = 0, total_answer = 0;
    for (int i = 0; i < data.count; i++) {
        if (!encoded[i].ids) continue;
        total_tokens += encoded[i].n_tokens;
        total_answer += encoded[i].n_answer;
    }
    printf("data: %s: %d samples, %ld tokens, %ld answer tokens", o.data_path, data.count - skipped, total_tokens,
           total_answer);
    if (skipped > 0) printf(" (%d more skipped: longer than --seq %d tokens)", skipped, o.max_seq);
    printf("\ndevice: cpu (fp32 forward pass)\n");
    if (skipped == data.count) {
        fprintf(stderr, "train: no sample fits in --seq %d tokens\n", o.max_seq);
        return 1;
    }
    fflush(stdout);

    double loss_sum = 0.0, seconds = 0.0;
    for (int i = 0; i < data.count; i++) {
        const EncodedSample *e = &encoded[i];
        if (!e->ids) {
            printf("sample %2d: %4d tokens: skipped (longer than --seq %d)\n", i + 1, e->n_tokens, o.max_seq);
            continue;
        }
        float loss;
        double t0 = now_seconds();
        if (sample_loss(&model, e, &loss) != 0) {
            fprintf(stderr, "train: out of memory for the activations of a %d-token sample\n", e->n_tokens);
            return 1;
        }
        seconds += now_seconds() - t0;
        loss_sum += (double)loss * e->n_answer;
        printf("sample %2d: %4d tokens, %3d answer tokens, loss %.4f\n", i + 1, e->n_tokens, e->n_answer, loss);
        fflush(stdout);
    }
    // mean over all answer tokens; perplexity = exp(mean loss)
    double mean_loss = loss_sum / total_answer;
    printf("base model: answer-only loss %.4f, perplexity %.2f (mean over %ld answer tokens)\n", mean_loss,
           exp(mean_loss), total_answer);
    printf("forward: %ld tokens in %.2f s, %.1f tokens/s\n", total_tokens, seconds, total_tokens / seconds);
    printf("fine-tuning (NF4 + LoRA + AdamW) is not implemented yet: this run measured the base model's "
           "answer-only loss, the starting point training will lower.\n");

    for (int i = 0; i < data.count; i++) {
        free(encoded[i].ids);
        free(encoded[i].targets);
    }
    free(encoded);
    model_free(&model);
    raft_free(&data);
    return 0;
}
