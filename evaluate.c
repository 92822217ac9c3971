// evaluate.c: ./evaluate, the course's before/after comparison. For each
// validation sample, the base model and the fine-tuned one (base + adapter)
// answer the question greedily; each answer is scored against the reference
// answer with ROUGE (word overlap) and embedding similarity (meaning, via
// all-MiniLM-L6-v2), and the answer-only loss and perplexity of the
// reference are measured under both models. Both run on the base the adapter
// was trained on: by default (--quant nf4, as ./train's) the linear weights
// round-tripped through NF4, W = dequant(NF4(W)), so the comparison is fair.
//   ./evaluate --adapter out/adapter --data data/faq/val.bin --limit 20
// Prints a table per metric (mean and spread, base vs fine-tuned) and a few
// answers side by side; writes a JSON report and an SVG bar chart.
#include "infer/adapter.h"
#include "formats/cli.h"
#include "formats/json.h"
#include "eval/eval.h"
#include "nf4.h"
#include "trainer/plot.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    const char *model_path, *adapter_dir, *data_path, *embedder_dir, *out_path;
    int max_new, limit, examples;
    int quant_nf4, double_quant;   // with --adapter: both arms on dequant(NF4(W)), the base ./train trains on
} Options;

static const Options DEFAULTS = {
    DEFAULT_MODEL, NULL, "data/faq/val.bin", EMBED_DEFAULT_MODEL_DIR, NULL,
    64, 20, 3, 1, 1,
};

static void usage(FILE *out) {
    const Options *d = &DEFAULTS;
    fprintf(out,
            "usage: ./evaluate [options]\n"
            "Answers of the base model and of base + adapter to validation questions, scored with ROUGE and\n"
            "embedding similarity against the reference answers, plus answer-only loss and perplexity.\n"
            "  --model PATH      GGUF file or HF model directory (default %s)\n"
            "  --adapter DIR     LoRA adapter in peft's layout, as ./train writes (default: base model only)\n"
            "  --quant Q         with --adapter, the base it was trained on, as ./train's --quant, for both the\n"
            "                    base and the fine-tuned answers: nf4 (the linear weights round-tripped through\n"
            "                    NF4) or none (as loaded) (default nf4)\n"
            "  --double-quant B  0 or 1, as ./train's --double-quant, for --quant nf4 (default %d)\n"
            "  --data PATH       validation samples: a .bin from ./prepare or RAFT JSONL (default %s)\n"
            "  --embedder DIR    sentence-embedding model (default %s)\n"
            "  --max-new N       longest answer generated, in tokens (default %d)\n"
            "  --limit N         evaluate the first N samples (default %d)\n"
            "  --examples N      answers shown side by side (default %d)\n"
            "  --out PATH        JSON report (default ADAPTER/../eval.json, or eval.json without --adapter);\n"
            "                    the SVG chart goes next to it with .svg for .json\n"
            "  -h, --help        this help\n",
            d->model_path, d->double_quant, d->data_path, d->embedder_dir, d->max_new, d->limit, d->examples);
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
    const char *const quant_choices[] = {"nf4", "none", NULL}, *const bit_choices[] = {"0", "1", NULL};
    const char *const flags[] = {"--model", "--adapter", "--quant", "--double-quant", "--data", "--embedder",
                                 "--out", "--max-new", "--limit", "--examples", NULL};
    char err[256];
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) { usage(stdout); exit(0); }
        if (strncmp(f, "--", 2) != 0) bad_usage("unexpected argument ", f);
        const char *v = cli_option_value(argc, argv, &i, flags, err, sizeof err);
        if (!v) bad_usage(err, "");
        v = cli_text("evaluate", f, v);
        if (strcmp(f, "--model") == 0) o.model_path = v;
        else if (strcmp(f, "--adapter") == 0) o.adapter_dir = v;
        else if (strcmp(f, "--quant") == 0) o.quant_nf4 = cli_choice("evaluate", f, v, quant_choices) == 0;
        else if (strcmp(f, "--double-quant") == 0) o.double_quant = cli_choice("evaluate", f, v, bit_choices);
        else if (strcmp(f, "--data") == 0) o.data_path = v;
        else if (strcmp(f, "--embedder") == 0) o.embedder_dir = v;
        else if (strcmp(f, "--out") == 0) o.out_path = v;
        else if (strcmp(f, "--max-new") == 0) o.max_new = positive_int(f, v);
        else if (strcmp(f, "--limit") == 0) o.limit = positive_int(f, v);
        else if (strcmp(f, "--examples") == 0) o.examples = cli_int("evaluate", f, v);
        else bad_usage("unknown option ", f);
    }
    if (o.examples < 0) bad_usage("--examples", " must be at least 0");
    return o;
}

static void print_row(const char *name, MeanStd base, const MeanStd *tuned) {
    printf("  %-22s %7.4f +- %-7.4f", name, base.mean, base.std);
    if (tuned) printf("   %7.4f +- %-7.4f   %+8.4f", tuned->mean, tuned->std, tuned->mean - base.mean);
    printf("\n");
}

static void print_tables(const EvalSummary *base, const EvalSummary *tuned, int count) {
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

// A number, or null for NaN and Inf, which JSON cannot hold (a perplexity of exp(1000), say).
static void write_json_number(FILE *f, double x) {
    if (isfinite(x)) fprintf(f, "%.6f", x);
    else fputs("null", f);
}

static void write_json_mean_std(FILE *f, const char *key, MeanStd m) {
    fprintf(f, "\"%s\": [", key);
    write_json_number(f, m.mean);
    fputs(", ", f);
    write_json_number(f, m.std);
    fputs("], ", f);
}

static void write_summary_json(FILE *f, const char *name, const EvalSummary *s) {
    fprintf(f, "  \"%s\": {", name);
    write_json_mean_std(f, "rouge1_f1", s->rouge_f1[ROUGE_1]);
    write_json_mean_std(f, "rouge2_f1", s->rouge_f1[ROUGE_2]);
    write_json_mean_std(f, "rougeL_f1", s->rouge_f1[ROUGE_L]);
    write_json_mean_std(f, "embedding_cosine", s->similarity);
    fputs("\"answer_loss\": ", f);
    write_json_number(f, s->loss);
    fputs(", \"perplexity\": ", f);
    write_json_number(f, s->perplexity);
    fputs("}", f);
}

static int write_report(const char *path, const Options *o, const EvalSample *samples, int count,
                        const EvalOutcome *base, const EvalOutcome *tuned, const EvalSummary *sb, const EvalSummary *st) {
    FILE *f = fopen(path, "w");
    if (!f) { fprintf(stderr, "evaluate: cannot write %s: %s\n", path, strerror(errno)); return -1; }
    fprintf(f, "{\n  \"model\": ");
    json_write_string(f, o->model_path);
    fprintf(f, ",\n  \"adapter\": ");
    if (o->adapter_dir) json_write_string(f, o->adapter_dir);
    else fprintf(f, "null");
    fprintf(f, ",\n  \"quant\": \"%s\", \"double_quant\": %d", o->adapter_dir && o->quant_nf4 ? "nf4" : "none",
            o->double_quant);
    fprintf(f, ",\n  \"data\": ");
    json_write_string(f, o->data_path);
    fprintf(f, ",\n  \"samples\": %d,\n  \"max_new\": %d,\n  \"summary_mean_std\": {\n", count, o->max_new);
    write_summary_json(f, "base", sb);
    if (st) { fprintf(f, ",\n"); write_summary_json(f, "fine_tuned", st); }
    fprintf(f, "\n  },\n  \"answers\": [\n");
    for (int i = 0; i < count; i++) {
        fprintf(f, "    {\"reference\": ");
        json_write_string(f, samples[i].reference);
        fprintf(f, ", \"base\": ");
        json_write_string(f, base[i].answer);
        fprintf(f, ", \"base_rougeL_f1\": ");
        write_json_number(f, base[i].rouge.kind[ROUGE_L].f1);
        fprintf(f, ", \"base_cosine\": ");
        write_json_number(f, base[i].similarity);
        if (tuned) {
            fprintf(f, ", \"fine_tuned\": ");
            json_write_string(f, tuned[i].answer);
            fprintf(f, ", \"fine_tuned_rougeL_f1\": ");
            write_json_number(f, tuned[i].rouge.kind[ROUGE_L].f1);
            fprintf(f, ", \"fine_tuned_cosine\": ");
            write_json_number(f, tuned[i].similarity);
        }
        fprintf(f, "}%s\n", i + 1 < count ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    return fclose(f) == 0 ? 0 : -1;
}

static void write_chart(const char *json_path, const EvalSummary *base, const EvalSummary *tuned) {
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
        const EvalSummary *s[2] = {base, tuned};
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

// One arm's model: as loaded; with --adapter, both arms on the base the adapter
// was trained on (--quant), the fine-tuned one with the adapter merged in.
static void load_model(Model *m, const Options *o, int merge_adapter) {
    char err[1024];
    if (model_load(m, o->model_path, err, sizeof err) != 0) { fprintf(stderr, "evaluate: %s\n", err); exit(1); }
    if (!o->adapter_dir) return;
    if (o->quant_nf4 && nf4_round_trip_model(m, o->double_quant, err, sizeof err) != 0) {
        fprintf(stderr, "evaluate: %s\n", err);
        exit(1);
    }
    if (!merge_adapter) return;
    AdapterInfo info;
    if (adapter_merge_peft(m, o->adapter_dir, &info, err, sizeof err) != 0) { fprintf(stderr, "evaluate: %s\n", err); exit(1); }
    printf("adapter: %s (%d modules merged, rank %d, scaling %g)\n", o->adapter_dir, info.n_merged, info.rank,
           info.scaling);
}

static void print_base(const Options *o) {
    if (!o->adapter_dir) return;
    if (o->quant_nf4)
        printf("base (both arms): linear weights round-tripped through NF4%s (as ./train --quant nf4 --double-quant %d)\n",
               o->double_quant ? " with double quant" : "", o->double_quant);
    else
        printf("base (both arms): weights as loaded (as ./train --quant none)\n");
}

// The report's folder must be writable before minutes of answers are spent; exits if not.
static void check_report_path(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) slash[1] = '\0';   // "/x.json": the root
    else *slash = '\0';
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        fprintf(stderr, "evaluate: cannot write the report %s: it is a directory (--out names a .json file)\n", path);
        exit(1);
    }
    if (access(dir, W_OK) != 0) {
        fprintf(stderr, "evaluate: cannot write the report %s: %s: %s\n", path, dir, strerror(errno));
        exit(1);
    }
}

// Exits when the arm's output was NaN/Inf or overflowed on a sample: the weights of its model
// (and adapter, NULL for the base arm) are not finite.
static void check_finite(const EvalOutcome *outcomes, int count, const char *arm, const char *model_path,
                         const char *adapter_dir) {
    for (int i = 0; i < count; i++) {
        if (!outcomes[i].non_finite) continue;
        fprintf(stderr, "evaluate: the %s model's output is NaN/Inf (or overflowed) on sample %d: the model or "
                        "adapter weights are not finite or far too large (%s%s%s)\n",
                arm, i + 1, model_path, adapter_dir ? ", adapter " : "", adapter_dir ? adapter_dir : "");
        exit(1);
    }
}

int main(int argc, char **argv) {
    Options o = parse_args(argc, argv);
    char err[1024];
    char path[4096];
    if (o.out_path) snprintf(path, sizeof path, "%s", o.out_path);
    else if (o.adapter_dir) snprintf(path, sizeof path, "%s/../eval.json", o.adapter_dir);
    else snprintf(path, sizeof path, "eval.json");
    Embedder embedder;
    if (embedder_load(&embedder, o.embedder_dir, err, sizeof err) != 0) {
        fprintf(stderr, "evaluate: %s (run `make fetch` to download it)\n", err);
        return 1;
    }
    // the fine-tuned arm first, so that a bad adapter is reported before the base arm's answers
    Model model;
    print_base(&o);
    load_model(&model, &o, o.adapter_dir != NULL);
    check_report_path(path);
    int count;
    EvalSample *samples = eval_load_samples(o.data_path, model.tokenizer, o.limit, &count, err, sizeof err);
    if (!samples) { fprintf(stderr, "evaluate: %s\n", err); return 1; }
    printf("evaluating %d samples of %s, greedy answers of up to %d tokens\n", count, o.data_path, o.max_new);
    EvalOutcome *base, *tuned = NULL;
    if (o.adapter_dir) {
        tuned = eval_run_model(&model, &embedder, samples, count, o.max_new, "fine-tuned");
        check_finite(tuned, count, "fine-tuned", o.model_path, o.adapter_dir);
        model_free(&model);
        load_model(&model, &o, 0);
    }
    base = eval_run_model(&model, &embedder, samples, count, o.max_new, "base");
    check_finite(base, count, "base", o.model_path, NULL);
    model_free(&model);
    EvalSummary sb = eval_summarize(base, count), st;
    if (tuned) st = eval_summarize(tuned, count);
    print_tables(&sb, tuned ? &st : NULL, count);
    for (int i = 0; i < count && i < o.examples; i++) {
        printf("\nsample %d\n", i + 1);
        print_clipped("reference", samples[i].reference, 300);
        print_clipped("base", base[i].answer, 300);
        if (tuned) print_clipped("tuned", tuned[i].answer, 300);
    }
    if (write_report(path, &o, samples, count, base, tuned, &sb, tuned ? &st : NULL) != 0) return 1;
    printf("\nreport: %s\n", path);
    write_chart(path, &sb, tuned ? &st : NULL);
    eval_free_outcomes(base, count);
    eval_free_outcomes(tuned, count);
    eval_free_samples(samples, count);
    embedder_free(&embedder);
    return 0;
}
