// evaluate.c: ./evaluate, the course's before/after comparison. For each
// validation sample, the base model and the fine-tuned one (base + adapter)
// answer the question greedily; each answer is scored against the reference
// answer with ROUGE (word overlap) and embedding similarity (meaning, via
// all-MiniLM-L6-v2), and the answer-only loss and perplexity of the
// reference are measured under both models.
//   ./evaluate --adapter out/adapter --data data/faq/val.bin --limit 20
// Prints a table per metric (mean and spread, base vs fine-tuned) and a few
// answers side by side; writes a JSON report and an SVG bar chart.
#include "adapter.h"
#include "cli.h"
#include "data/raft.h"
#include "data/tokfile.h"
#include "embed.h"
#include "forward.h"
#include "model.h"
#include "plot.h"
#include "rouge.h"
#include "sampler.h"
#include "tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *model_path, *adapter_dir, *data_path, *embedder_dir, *out_path;
    int max_new, limit, examples;
} Options;

static const Options DEFAULTS = {
    "models/SmolLM2-135M-Instruct.Q4_1.gguf", NULL, "data/faq/val.bin", EMBED_DEFAULT_MODEL_DIR, NULL,
    64, 20, 3,
};

static void usage(FILE *out) {
    const Options *d = &DEFAULTS;
    fprintf(out,
            "usage: ./evaluate [options]\n"
            "Answers of the base model and of base + adapter to validation questions, scored with ROUGE and\n"
            "embedding similarity against the reference answers, plus answer-only loss and perplexity.\n"
            "  --model PATH      GGUF file or HF model directory (default %s)\n"
            "  --adapter DIR     LoRA adapter in peft's layout, as ./train writes (default: base model only)\n"
            "  --data PATH       validation samples: a .bin from ./prepare or RAFT JSONL (default %s)\n"
            "  --embedder DIR    sentence-embedding model (default %s)\n"
            "  --max-new N       longest answer generated, in tokens (default %d)\n"
            "  --limit N         evaluate the first N samples (default %d)\n"
            "  --examples N      answers shown side by side (default %d)\n"
            "  --out PATH        JSON report (default ADAPTER/../eval.json, or eval.json without --adapter);\n"
            "                    the SVG chart goes next to it with .svg for .json\n",
            d->model_path, d->data_path, d->embedder_dir, d->max_new, d->limit, d->examples);
}

static void bad_usage(const char *message, const char *detail) {
    fprintf(stderr, "evaluate: %s%s\n", message, detail);
    usage(stderr);
    exit(2);
}

static int positive_int(const char *flag, const char *value) {
    int x = cli_int("evaluate", flag, value);
    if (x < 1) bad_usage(flag, " must be at least 1");
    return x;
}

static Options parse_args(int argc, char **argv) {
    Options o = DEFAULTS;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) { usage(stdout); exit(0); }
        if (i + 1 >= argc) bad_usage("missing value for ", f);
        const char *v = argv[++i];
        if (strcmp(f, "--model") == 0) o.model_path = v;
        else if (strcmp(f, "--adapter") == 0) o.adapter_dir = v;
        else if (strcmp(f, "--data") == 0) o.data_path = v;
        else if (strcmp(f, "--embedder") == 0) o.embedder_dir = v;
        else if (strcmp(f, "--out") == 0) o.out_path = v;
        else if (strcmp(f, "--max-new") == 0) o.max_new = positive_int(f, v);
        else if (strcmp(f, "--limit") == 0) o.limit = positive_int(f, v);
        else if (strcmp(f, "--examples") == 0) o.examples = cli_int("evaluate", f, v);
        else bad_usage("unknown option ", f);
    }
    return o;
}

// ---- the samples: prompt tokens and the reference answer ---------------------

typedef struct {
    int *ids, *targets;   // the whole rendered sample and its shifted answer-only targets
    int n_tokens;
    int n_prompt;         // ids[0..n_prompt) is everything up to the answer
    char *reference;      // the reference answer's text
} EvalSample;

// Splits a rendered sample: the prompt ends where the first answer token
// begins (targets[t] labels token t + 1); the reference is the answer tokens
// without the closing end-of-turn token. -1 when nothing is labelled.
static int split_sample(const Tokenizer *tok, EvalSample *s) {
    int first = -1, last = -1;
    for (int t = 0; t < s->n_tokens; t++) {
        if (s->targets[t] == RAFT_IGNORE) continue;
        if (first < 0) first = t;
        last = t;
    }
    if (first < 0) return -1;
    s->n_prompt = first + 1;
    int end = last + 2;   // one past the last answer token
    int im_end = tokenizer_find(tok, "<|im_end|>");
    if (end > s->n_prompt && s->ids[end - 1] == im_end) end--;
    size_t len;
    s->reference = tokenizer_decode(tok, s->ids + s->n_prompt, end - s->n_prompt, &len);
    return s->reference ? 0 : -1;
}

// Reads up to limit samples from a ./prepare .bin or a RAFT JSONL file.
static EvalSample *load_samples(const char *path, const Tokenizer *tok, int limit, int *count) {
    char err[1024];
    EvalSample *samples = (EvalSample *)calloc((size_t)limit, sizeof(EvalSample));
    *count = 0;
    size_t len = strlen(path);
    if (len > 4 && strcmp(path + len - 4, ".bin") == 0) {
        TokFile f;
        if (tokfile_read(&f, path, tok, err, sizeof err) != 0) { fprintf(stderr, "evaluate: %s\n", err); exit(1); }
        for (long i = 0; i < f.count && *count < limit; i++) {
            EvalSample *s = &samples[*count];
            s->ids = f.samples[i].ids;
            s->targets = f.samples[i].targets;
            s->n_tokens = f.samples[i].n_tokens;
            f.samples[i].ids = f.samples[i].targets = NULL;
            if (split_sample(tok, s) == 0) (*count)++;
        }
        tokfile_free(&f);
    } else {
        RaftData data;
        if (raft_read_jsonl(&data, path, err, sizeof err) != 0) { fprintf(stderr, "evaluate: %s\n", err); exit(1); }
        for (int i = 0; i < data.count && *count < limit; i++) {
            EvalSample *s = &samples[*count];
            s->n_tokens = raft_encode(tok, &data.samples[i], &s->ids, &s->targets);
            if (s->n_tokens < 0) { fprintf(stderr, "evaluate: cannot render %s: no chat template tokens\n", path); exit(1); }
            if (split_sample(tok, s) == 0) (*count)++;
        }
        raft_free(&data);
    }
    if (*count == 0) { fprintf(stderr, "evaluate: %s: no sample with an answer to evaluate\n", path); exit(1); }
    return samples;
}

static void free_samples(EvalSample *samples, int count) {
    for (int i = 0; i < count; i++) { free(samples[i].ids); free(samples[i].targets); free(samples[i].reference); }
    free(samples);
}

// ---- one model on one sample -----------------------------------------------------

typedef struct {
    char *answer;
    double loss_sum;   // summed answer-token loss of the reference
    int n_counted;
    RougeScores rouge;
    float similarity;
} Outcome;

// The greedy answer to the prompt, stopping at <|im_end|> / eos or max_new tokens.
static char *generate_answer(const Model *m, InferState *state, const EvalSample *s, int max_new) {
    const Tokenizer *tok = m->tokenizer;
    int im_end = tokenizer_find(tok, "<|im_end|>"), eos = tokenizer_eos_id(tok);
    int *answer = (int *)malloc(sizeof(int) * (size_t)max_new);
    const float *logits = NULL;
    for (int pos = 0; pos < s->n_prompt; pos += state->max_chunk) {
        int n = s->n_prompt - pos < state->max_chunk ? s->n_prompt - pos : state->max_chunk;
        logits = forward_cpu(m, state, s->ids + pos, n, pos, 0, NULL);
    }
    int n_answer = 0;
    for (int pos = s->n_prompt; n_answer < max_new && pos < state->max_seq; pos++) {
        int token = sample_argmax(logits, m->config.vocab_size);
        if (token == im_end || token == eos) break;
        answer[n_answer++] = token;
        if (pos + 1 >= state->max_seq) break;
        logits = forward_cpu(m, state, &token, 1, pos, 0, NULL);
    }
    size_t len;
    char *text = tokenizer_decode(tok, answer, n_answer, &len);
    free(answer);
    return text;
}

// Summed cross-entropy of the reference answer tokens (teacher forcing).
static double answer_loss(const Model *m, InferState *state, const EvalSample *s, int *n_counted) {
    int vocab = m->config.vocab_size;
    double total = 0.0;
    *n_counted = 0;
    for (int pos = 0; pos < s->n_tokens; pos += state->max_chunk) {
        int n = s->n_tokens - pos < state->max_chunk ? s->n_tokens - pos : state->max_chunk;
        const float *logits = forward_cpu(m, state, s->ids + pos, n, pos, 1, NULL);
        for (int t = 0; t < n; t++) {
            int target = s->targets[pos + t];
            if (target == RAFT_IGNORE) continue;
            const float *row = logits + (size_t)t * vocab;
            // -log softmax(row)[target] = log sum exp(row - max) + max - row[target]
            float max = row[0];
            for (int v = 1; v < vocab; v++) max = row[v] > max ? row[v] : max;
            double sum = 0.0;
            for (int v = 0; v < vocab; v++) sum += exp((double)row[v] - max);
            total += log(sum) + max - row[target];
            (*n_counted)++;
        }
    }
    return total;
}

// Korean (or any non-ASCII) references are scored per character: rouge-score's
// tokenizer would throw their letters away (see rouge.h).
static RougeTokenizer rouge_tokenizer_for(const char *reference) {
    for (const unsigned char *p = (const unsigned char *)reference; *p; p++)
        if (*p >= 0x80) return ROUGE_TOKENIZE_CHARS;
    return ROUGE_TOKENIZE_DEFAULT;
}

static Outcome evaluate_sample(const Model *m, InferState *state, const Embedder *embedder, const EvalSample *s,
                               int max_new) {
    Outcome o;
    memset(&o, 0, sizeof o);
    o.loss_sum = answer_loss(m, state, s, &o.n_counted);
    o.answer = generate_answer(m, state, s, max_new);
    o.rouge = rouge_score(o.answer, s->reference, rouge_tokenizer_for(s->reference), 0);
    int dim = embedder_dim(embedder);
    float *a = (float *)malloc(sizeof(float) * dim), *b = (float *)malloc(sizeof(float) * dim);
    if (embed_text(embedder, o.answer, a) == 0 && embed_text(embedder, s->reference, b) == 0)
        o.similarity = embed_cosine(a, b, dim);
    free(a);
    free(b);
    return o;
}

// ---- summaries and report ----------------------------------------------------------

// The metrics of one model over all samples.
typedef struct {
    MeanStd rouge_f1[ROUGE_KINDS];
    MeanStd similarity;
    double loss, perplexity;   // mean answer-token loss over all answer tokens, and exp of it
} Summary;

static Summary summarize(const Outcome *outcomes, int count) {
    Summary s;
    double *values = (double *)malloc(sizeof(double) * count);
    for (int k = 0; k < ROUGE_KINDS; k++) {
        for (int i = 0; i < count; i++) values[i] = outcomes[i].rouge.kind[k].f1;
        s.rouge_f1[k] = rouge_mean_std(values, count);
    }
    for (int i = 0; i < count; i++) values[i] = outcomes[i].similarity;
    s.similarity = rouge_mean_std(values, count);
    free(values);
    double loss = 0.0;
    long counted = 0;
    for (int i = 0; i < count; i++) { loss += outcomes[i].loss_sum; counted += outcomes[i].n_counted; }
    s.loss = counted ? loss / counted : 0.0;
    s.perplexity = exp(s.loss);
    return s;
}

static void print_row(const char *name, MeanStd base, const MeanStd *tuned) {
    printf("  %-22s %7.4f +- %-7.4f", name, base.mean, base.std);
    if (tuned) printf("   %7.4f +- %-7.4f   %+8.4f", tuned->mean, tuned->std, tuned->mean - base.mean);
    printf("\n");
}

static void print_tables(const Summary *base, const Summary *tuned, int count) {
    printf("\n%d samples; mean +- standard deviation over samples\n", count);
    printf("  %-22s %-19s%s\n", "metric", "base", tuned ? "   fine-tuned            change" : "");
    const char *names[ROUGE_KINDS] = {"ROUGE-1 F1", "ROUGE-2 F1", "ROUGE-L F1"};
    for (int k = 0; k < ROUGE_KINDS; k++) print_row(names[k], base->rouge_f1[k], tuned ? &tuned->rouge_f1[k] : NULL);
    print_row("embedding cosine", base->similarity, tuned ? &tuned->similarity : NULL);
    printf("  %-22s %7.4f%s", "answer loss", base->loss, "           ");
    if (tuned) printf("   %7.4f              %+8.4f", tuned->loss, tuned->loss - base->loss);
    printf("\n  %-22s %7.3f%s", "perplexity", base->perplexity, "           ");
    if (tuned) printf("   %7.3f              %+8.3f", tuned->perplexity, tuned->perplexity - base->perplexity);
    printf("\n");
}

// Prints text on one line, cut to max bytes (at a UTF-8 character boundary).
static void print_clipped(const char *label, const char *text, size_t max) {
    size_t len = strlen(text);
    size_t cut = len <= max ? len : max;
    while (cut > 0 && cut < len && ((unsigned char)text[cut] & 0xC0) == 0x80) cut--;
    printf("  %-10s ", label);
    for (size_t i = 0; i < cut; i++) putchar(text[i] == '\n' ? ' ' : text[i]);
    printf("%s\n", cut < len ? " ..." : "");
}

static void write_json_string(FILE *f, const char *text) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", f);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

static void write_summary_json(FILE *f, const char *name, const Summary *s) {
    fprintf(f, "  \"%s\": {\"rouge1_f1\": [%.6f, %.6f], \"rouge2_f1\": [%.6f, %.6f], \"rougeL_f1\": [%.6f, %.6f], "
               "\"embedding_cosine\": [%.6f, %.6f], \"answer_loss\": %.6f, \"perplexity\": %.6f}",
            name, s->rouge_f1[ROUGE_1].mean, s->rouge_f1[ROUGE_1].std, s->rouge_f1[ROUGE_2].mean,
            s->rouge_f1[ROUGE_2].std, s->rouge_f1[ROUGE_L].mean, s->rouge_f1[ROUGE_L].std, s->similarity.mean,
            s->similarity.std, s->loss, s->perplexity);
}

static int write_report(const char *path, const Options *o, const EvalSample *samples, int count,
                        const Outcome *base, const Outcome *tuned, const Summary *sb, const Summary *st) {
    FILE *f = fopen(path, "w");
    if (!f) { fprintf(stderr, "evaluate: cannot write %s\n", path); return -1; }
    fprintf(f, "{\n  \"model\": ");
    write_json_string(f, o->model_path);
    fprintf(f, ",\n  \"adapter\": ");
    if (o->adapter_dir) write_json_string(f, o->adapter_dir);
    else fprintf(f, "null");
    fprintf(f, ",\n  \"data\": ");
    write_json_string(f, o->data_path);
    fprintf(f, ",\n  \"samples\": %d,\n  \"max_new\": %d,\n  \"summary_mean_std\": {\n", count, o->max_new);
    write_summary_json(f, "base", sb);
    if (st) { fprintf(f, ",\n"); write_summary_json(f, "fine_tuned", st); }
    fprintf(f, "\n  },\n  \"answers\": [\n");
    for (int i = 0; i < count; i++) {
        fprintf(f, "    {\"reference\": ");
        write_json_string(f, samples[i].reference);
        fprintf(f, ", \"base\": ");
        write_json_string(f, base[i].answer);
        fprintf(f, ", \"base_rougeL_f1\": %.6f, \"base_cosine\": %.6f", base[i].rouge.kind[ROUGE_L].f1,
                base[i].similarity);
        if (tuned) {
            fprintf(f, ", \"fine_tuned\": ");
            write_json_string(f, tuned[i].answer);
            fprintf(f, ", \"fine_tuned_rougeL_f1\": %.6f, \"fine_tuned_cosine\": %.6f",
                    tuned[i].rouge.kind[ROUGE_L].f1, tuned[i].similarity);
        }
        fprintf(f, "}%s\n", i + 1 < count ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    return fclose(f) == 0 ? 0 : -1;
}

static void write_chart(const char *json_path, const Summary *base, const Summary *tuned) {
    char path[4096], err[1024];
    snprintf(path, sizeof path, "%s", json_path);
    size_t len = strlen(path);
    if (len > 5 && strcmp(path + len - 5, ".json") == 0) path[len - 5] = '\0';
    strncat(path, ".svg", sizeof path - strlen(path) - 1);
    const char *labels[8] = {"ROUGE-1 base", "ROUGE-1 tuned", "ROUGE-2 base", "ROUGE-2 tuned",
                             "ROUGE-L base", "ROUGE-L tuned", "cosine base", "cosine tuned"};
    double values[8], errors[8];
    int count = 0;
    for (int k = 0; k <= ROUGE_KINDS; k++) {
        const Summary *s[2] = {base, tuned};
        for (int which = 0; which < 2; which++) {
            MeanStd m = !s[which] ? (MeanStd){NAN, 0} : k < ROUGE_KINDS ? s[which]->rouge_f1[k] : s[which]->similarity;
            values[count] = m.mean;
            errors[count++] = m.std;
        }
    }
    if (svg_bar_chart(path, "base vs fine-tuned (mean, whiskers: standard deviation)", "score", labels, values,
                      errors, count, err, sizeof err) != 0)
        fprintf(stderr, "evaluate: warning: %s\n", err);
    else
        printf("chart: %s\n", path);
}

// ---- main ---------------------------------------------------------------------------

static void load_model(Model *m, const char *path, const char *adapter_dir) {
    char err[1024];
    if (model_load(m, path, err, sizeof err) != 0) { fprintf(stderr, "evaluate: %s\n", err); exit(1); }
    if (!adapter_dir) return;
    AdapterInfo info;
    if (adapter_merge_peft(m, adapter_dir, &info, err, sizeof err) != 0) { fprintf(stderr, "evaluate: %s\n", err); exit(1); }
    printf("adapter: %s (%d modules merged, rank %d, scaling %g)\n", adapter_dir, info.n_merged, info.rank,
           info.scaling);
}

// Runs one model over every sample (the state is sized for the longest).
static Outcome *run_model(const Model *m, const Embedder *embedder, const EvalSample *samples, int count,
                          int max_new, const char *name) {
    int longest = 0;
    for (int i = 0; i < count; i++) if (samples[i].n_tokens > longest) longest = samples[i].n_tokens;
    InferState state;
    if (infer_state_init(&state, &m->config, longest + max_new + 1, 256) != 0) {
        fprintf(stderr, "evaluate: out of memory for the inference state\n");
        exit(1);
    }
    Outcome *outcomes = (Outcome *)calloc((size_t)(count > 0 ? count : 1), sizeof(Outcome));
    for (int i = 0; i < count; i++) {
        outcomes[i] = evaluate_sample(m, &state, embedder, &samples[i], max_new);
        printf("\r%s: %d/%d answered", name, i + 1, count);
        fflush(stdout);
    }
    printf("\n");
    infer_state_free(&state);
    return outcomes;
}

int main(int argc, char **argv) {
    Options o = parse_args(argc, argv);
    char err[1024];
    Embedder embedder;
    if (embedder_load(&embedder, o.embedder_dir, err, sizeof err) != 0) {
        fprintf(stderr, "evaluate: %s (run `make fetch` to download it)\n", err);
        return 1;
    }
    Model model;
    load_model(&model, o.model_path, NULL);
    int count;
    EvalSample *samples = load_samples(o.data_path, model.tokenizer, o.limit, &count);
    printf("evaluating %d samples of %s, greedy answers of up to %d tokens\n", count, o.data_path, o.max_new);
    Outcome *base = run_model(&model, &embedder, samples, count, o.max_new, "base");
    model_free(&model);
    Outcome *tuned = NULL;
    if (o.adapter_dir) {
        load_model(&model, o.model_path, o.adapter_dir);
        tuned = run_model(&model, &embedder, samples, count, o.max_new, "fine-tuned");
        model_free(&model);
    }
    Summary sb = summarize(base, count), st;
    if (tuned) st = summarize(tuned, count);
    print_tables(&sb, tuned ? &st : NULL, count);
    for (int i = 0; i < count && i < o.examples; i++) {
        printf("\nsample %d\n", i + 1);
        print_clipped("reference", samples[i].reference, 300);
        print_clipped("base", base[i].answer, 300);
        if (tuned) print_clipped("tuned", tuned[i].answer, 300);
    }
    char path[4096];
    if (o.out_path) snprintf(path, sizeof path, "%s", o.out_path);
    else if (o.adapter_dir) snprintf(path, sizeof path, "%s/../eval.json", o.adapter_dir);
    else snprintf(path, sizeof path, "eval.json");
    if (write_report(path, &o, samples, count, base, tuned, &sb, tuned ? &st : NULL) != 0) return 1;
    printf("\nreport: %s\n", path);
    write_chart(path, &sb, tuned ? &st : NULL);
    for (int i = 0; i < count; i++) { free(base[i].answer); if (tuned) free(tuned[i].answer); }
    free(base);
    free(tuned);
    free_samples(samples, count);
    embedder_free(&embedder);
    return 0;
}
