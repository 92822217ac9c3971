// evaluate.c: ./evaluate, the course's before/after comparison. For each
// validation sample, the base model and the fine-tuned one (base + adapter)
// answer the question greedily. Each answer is scored (eval/eval.h): on
// samples whose documents hold the answer, ROUGE against the reference,
// embedding cosine (English), groundedness in the oracle document and
// whether it wrongly abstains; on samples without the oracle, whether it
// abstains (eval/abstain.h); on all, the reference's answer-only loss and
// perplexity. Both run on the base the adapter was trained on, so the
// comparison is fair: the one its adapter_config.json records (./train's
// adapters), else by default --quant nf4, as ./train's: the linear weights
// round-tripped through NF4, W = dequant(NF4(W)).
//   ./evaluate --adapter out/adapter --data data/faq/val.bin --limit 40
// Prints each metric's mean per language with a 95% bootstrap interval, the
// paired change with its interval (eval/bootstrap.h), and a few answers side
// by side; writes a JSON report (summaries and every sample) and an SVG chart.
#include "infer/adapter.h"
#include "formats/atomic_file.h"
#include "formats/cli.h"
#include "formats/json.h"
#include "eval/eval.h"
#include "eval/forest_plot.h"
#include "nf4.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    const char *model_path, *adapter_dir, *data_path, *embedder_dir, *out_path;
    const char *template_name;     // --template: the chat template family (NULL: the model's)
    int max_new, limit, examples;
    AdapterBaseChoice base;        // with --adapter: both arms on the base the adapter was trained on
    int resamples, seed;           // the bootstrap's
} Options;

static const Options DEFAULTS = {
    DEFAULT_MODEL, NULL, "data/faq/val.bin", EMBED_DEFAULT_MODEL_DIR, NULL, NULL,
    64, INT_MAX, 3, {1, 1, 0, 0}, BOOTSTRAP_DEFAULT_RESAMPLES, BOOTSTRAP_DEFAULT_SEED,
};

static void usage(FILE *out) {
    const Options *d = &DEFAULTS;
    fprintf(out,
            "usage: ./evaluate [options]\n"
            "Answers of the base model and of base + adapter to validation questions, scored per sample and\n"
            "summarised per language (English, Korean: Hangul in the question) and kind:\n"
            "  with the oracle     ROUGE-1/2/L F1 against the reference; embedding cosine (English only);\n"
            "                      grounded: the answer's ROUGE-L precision against the oracle document beats\n"
            "                      every distractor's; false abstention: it says the documents lack the answer\n"
            "  without the oracle  abstention: it says so (the rule: eval/abstain.h, English and Korean, and\n"
            "                      the data's own no-oracle answers, so ./prepare --no-oracle-answer counts)\n"
            "  all                 answer loss (the reference's, per answer token) and perplexity\n"
            "Every mean has a 95%% percentile bootstrap interval; with --adapter the change (fine-tuned - base)\n"
            "has a paired one (the same resampled samples for both), marked * where it excludes 0 (for the\n"
            "perplexity, the ratio and 1). Prints the table and a few answers; writes the JSON report (every\n"
            "sample: question, language, kind, answers, abstained, ROUGE, cosine, grounded, loss; and the\n"
            "summaries) and an SVG chart of the intervals.\n"
            "  --model PATH      GGUF file or HF model directory (default %s)\n"
            "  --adapter DIR     LoRA adapter in peft's layout, as ./train writes (default: base model only)\n"
            "  --quant Q         with --adapter, the base it was trained on, as ./train's --quant, for both the\n"
            "                    base and the fine-tuned answers: nf4 (the linear weights round-tripped through\n"
            "                    NF4) or none (as loaded) (default: the one the adapter records, as ./train\n"
            "                    writes it; else nf4)\n"
            "  --double-quant B  0 or 1, as ./train's --double-quant, for --quant nf4 (default: recorded; else %d)\n"
            "  --data PATH       validation samples: a .bin from ./prepare or RAFT JSONL (default %s)\n"
            "  --embedder DIR    sentence-embedding model (default %s)\n"
            "  --template NAME   the chat template the samples were rendered with: chatml, llama3, llama3.1\n"
            "                    or exaone (default: the one the model's matches)\n"
            "  --max-new N       longest answer generated, in tokens (default %d)\n"
            "  --limit N         evaluate the first N samples (default: all)\n"
            "  --examples N      answers shown side by side (default %d)\n"
            "  --resamples B     bootstrap resamples per interval (default %d)\n"
            "  --seed S          the bootstrap's seed: the same seed, the same intervals (default %d)\n"
            "  --out PATH        JSON report (default ADAPTER/../eval.json, or eval.json without --adapter);\n"
            "                    the SVG chart goes next to it with .svg for .json\n"
            "  -h, --help        this help\n",
            d->model_path, d->base.double_quant, d->data_path, d->embedder_dir, d->max_new, d->examples,
            d->resamples, d->seed);
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
                                 "--out", "--template", "--max-new", "--limit", "--examples", "--resamples", "--seed",
                                 NULL};
    char err[256];
    if (cli_check_options(argc, argv, flags, NULL, NULL, err, sizeof err) != 0) bad_usage(err, "");
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) { usage(stdout); exit(0); }
        if (strncmp(f, "--", 2) != 0) bad_usage("unexpected argument ", f);
        const char *v = cli_option_value(argc, argv, &i, flags, err, sizeof err);
        if (!v) bad_usage(err, "");
        v = cli_text("evaluate", f, v);
        if (strcmp(f, "--model") == 0) o.model_path = v;
        else if (strcmp(f, "--adapter") == 0) o.adapter_dir = v;
        else if (strcmp(f, "--quant") == 0) {
            o.base.quant_nf4 = cli_choice("evaluate", f, v, quant_choices) == 0;
            o.base.quant_given = 1;
        } else if (strcmp(f, "--double-quant") == 0) {
            o.base.double_quant = cli_choice("evaluate", f, v, bit_choices);
            o.base.double_quant_given = 1;
        }
        else if (strcmp(f, "--data") == 0) o.data_path = v;
        else if (strcmp(f, "--embedder") == 0) o.embedder_dir = v;
        else if (strcmp(f, "--out") == 0) o.out_path = v;
        else if (strcmp(f, "--template") == 0) o.template_name = v;
        else if (strcmp(f, "--max-new") == 0) o.max_new = positive_int(f, v);
        else if (strcmp(f, "--limit") == 0) o.limit = positive_int(f, v);
        else if (strcmp(f, "--examples") == 0) o.examples = cli_int("evaluate", f, v);
        else if (strcmp(f, "--resamples") == 0) o.resamples = positive_int(f, v);
        else if (strcmp(f, "--seed") == 0) o.seed = cli_int("evaluate", f, v);
        else bad_usage("unknown option ", f);
    }
    if (o.examples < 0) bad_usage("--examples", " must be at least 0");
    return o;
}

// ---- the text table --------------------------------------------------------------

// "0.123 [0.090, 0.160]", or with a sign "+0.178 [+0.120, +0.231]"; "-" for no samples.
static const char *format_interval(char *out, size_t size, Interval x, int sign) {
    if (isnan(x.estimate)) snprintf(out, size, "-");
    else if (sign) snprintf(out, size, "%+.3f [%+.3f, %+.3f]", x.estimate, x.low, x.high);
    else snprintf(out, size, "%.3f [%.3f, %.3f]", x.estimate, x.low, x.high);
    return out;
}

// exp of an interval's three numbers: the perplexity from the loss, the perplexity ratio from the loss change.
static Interval exp_interval(Interval x) { return (Interval){exp(x.estimate), exp(x.low), exp(x.high)}; }

static void print_cell(const char *name, const char *subset, const EvalCell *c, int tuned, int perplexity) {
    char base[64], fine[64], change[80];
    Interval b = perplexity ? exp_interval(c->arm[0]) : c->arm[0], t = perplexity ? exp_interval(c->arm[1]) : c->arm[1];
    printf("  %-18s %-8s %4d   %-*s", name, subset, c->n, tuned ? 24 : 0, format_interval(base, sizeof base, b, 0));
    if (tuned && perplexity && !isnan(c->change.estimate)) {
        Interval ratio = exp_interval(c->change);
        snprintf(change, sizeof change, "x%.3f [%.3f, %.3f]", ratio.estimate, ratio.low, ratio.high);
    } else {
        format_interval(change, sizeof change, c->change, 1);
    }
    if (tuned && interval_excludes_zero(c->change))
        printf(" %-24s %-24s *", format_interval(fine, sizeof fine, t, 0), change);
    else if (tuned)
        printf(" %-24s %s", format_interval(fine, sizeof fine, t, 0), change);
    printf("\n");
}

// One metric's rows: all samples, then each language that has some.
static void print_metric(const EvalComparison *c, EvalMetric m, const char *name, int tuned, int perplexity) {
    for (int g = 0; g < EVAL_SUBSETS; g++) {
        if (g != EVAL_ALL && c->cell[m][g].n == 0) continue;
        if (m == EVAL_COSINE && g == EVAL_ALL) continue;   // English only: its "all" row would repeat it
        print_cell(name, EVAL_SUBSET_NAMES[g], &c->cell[m][g], tuned, perplexity);
        name = "";
    }
}

static void print_table(const EvalComparison *c, const EvalSample *samples, int count, int tuned) {
    int n[2][2] = {{0, 0}, {0, 0}};   // [with the oracle][Korean]
    for (int i = 0; i < count; i++) n[samples[i].oracle >= 0][samples[i].korean]++;
    printf("\n%d samples: %d with the oracle (%d English, %d Korean), %d without (%d English, %d Korean)\n", count,
           n[1][0] + n[1][1], n[1][0], n[1][1], n[0][0] + n[0][1], n[0][0], n[0][1]);
    printf("mean [95%% percentile bootstrap interval, %d resamples, seed %llu]%s\n\n", c->resamples,
           (unsigned long long)c->seed,
           tuned ? "; change = fine-tuned - base, paired\n(both models on the same resampled samples), * where its "
                   "interval excludes 0; perplexity: the ratio" : "");
    printf("  %-18s %-8s %4s   %-*s%s\n", "metric", "samples", "n", tuned ? 24 : 0, "base",
           tuned ? " fine-tuned               change" : "");
    const char *heading = "";
    for (int m = 0; m < EVAL_METRICS; m++) {
        if (strcmp(heading, EVAL_METRIC_INFO[m].population) != 0 && m != EVAL_COSINE) {
            heading = EVAL_METRIC_INFO[m].population;
            printf("%s\n", m == EVAL_LOSS ? "all samples" : heading);
        }
        print_metric(c, (EvalMetric)m, EVAL_METRIC_INFO[m].name, tuned, 0);
    }
    print_metric(c, EVAL_LOSS, "perplexity", tuned, 1);
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

// {"mean": x, "ci95": [low, high]}
static void write_json_interval(FILE *f, Interval x) {
    fputs("{\"mean\": ", f);
    write_json_number(f, x.estimate);
    fputs(", \"ci95\": [", f);
    write_json_number(f, x.low);
    fputs(", ", f);
    write_json_number(f, x.high);
    fputs("]}", f);
}

// "key": {"samples", "n", "base", "fine_tuned", "change" with "excludes_zero"}; perplexity from the loss.
static void write_json_cell(FILE *f, const char *key, const char *samples, const EvalCell *c, int tuned, int perplexity) {
    fprintf(f, "      \"%s\": {\"samples\": \"%s\", \"n\": %d, \"base\": ", key, samples, c->n);
    write_json_interval(f, perplexity ? exp_interval(c->arm[0]) : c->arm[0]);
    if (tuned) {
        fputs(", \"fine_tuned\": ", f);
        write_json_interval(f, perplexity ? exp_interval(c->arm[1]) : c->arm[1]);
        fprintf(f, ", \"%s\": ", perplexity ? "ratio" : "change");
        write_json_interval(f, perplexity ? exp_interval(c->change) : c->change);
        fprintf(f, ", \"%s\": %s", perplexity ? "excludes_one" : "excludes_zero",
                interval_excludes_zero(c->change) ? "true" : "false");
    }
    fputs("}", f);
}

static void write_json_summary(FILE *f, const EvalComparison *c, int tuned) {
    const char *keys[EVAL_SUBSETS] = {"all", "english", "korean"};
    fputs("  \"summary\": {\n", f);
    for (int g = 0; g < EVAL_SUBSETS; g++) {
        fprintf(f, "    \"%s\": {\n", keys[g]);
        for (int m = 0; m < EVAL_METRICS; m++) {
            write_json_cell(f, EVAL_METRIC_INFO[m].key, EVAL_METRIC_INFO[m].population, &c->cell[m][g], tuned, 0);
            fputs(",\n", f);
        }
        write_json_cell(f, "perplexity", "all", &c->cell[EVAL_LOSS][g], tuned, 1);
        fprintf(f, "\n    }%s\n", g + 1 < EVAL_SUBSETS ? "," : "");
    }
    fputs("  },\n", f);
}

static void write_json_bool(FILE *f, int x) { fputs(x < 0 ? "null" : x ? "true" : "false", f); }

// One model's answer to a sample and its scores.
static void write_json_outcome(FILE *f, const EvalOutcome *o) {
    fputs("{\"answer\": ", f);
    json_write_string(f, o->answer);
    fputs(", \"abstained\": ", f);
    write_json_bool(f, o->abstained);
    const char *rouge_keys[ROUGE_KINDS] = {"rouge1_f1", "rouge2_f1", "rougeL_f1"};
    for (int k = 0; k < ROUGE_KINDS; k++) {
        fprintf(f, ", \"%s\": ", rouge_keys[k]);
        write_json_number(f, o->rouge.kind[k].f1);
    }
    fputs(", \"cosine\": ", f);
    write_json_number(f, o->similarity);
    fputs(", \"grounded\": ", f);
    write_json_bool(f, o->grounded);
    fputs(", \"oracle_overlap\": ", f);
    write_json_number(f, o->oracle_overlap);
    fputs(", \"distractor_overlap\": ", f);
    write_json_number(f, o->distractor_overlap);
    fputs(", \"loss\": ", f);
    write_json_number(f, o->n_counted ? o->loss_sum / o->n_counted : NAN);
    fprintf(f, ", \"answer_tokens\": %d}", o->n_counted);
}

static void write_json_samples(FILE *f, const EvalSample *samples, int count, const EvalOutcome *base,
                               const EvalOutcome *tuned) {
    fputs("  \"per_sample\": [\n", f);
    for (int i = 0; i < count; i++) {
        const EvalSample *s = &samples[i];
        fprintf(f, "    {\"id\": %d, \"language\": \"%s\", \"kind\": \"%s\", \"question\": ", i + 1,
                s->korean ? "ko" : "en", s->oracle >= 0 ? "oracle" : "no_oracle");
        if (s->question) json_write_string(f, s->question);
        else fputs("null", f);
        fputs(", \"reference\": ", f);
        json_write_string(f, s->reference);
        fputs(",\n     \"base\": ", f);
        write_json_outcome(f, &base[i]);
        if (tuned) {
            fputs(",\n     \"fine_tuned\": ", f);
            write_json_outcome(f, &tuned[i]);
        }
        fprintf(f, "}%s\n", i + 1 < count ? "," : "");
    }
    fputs("  ]\n", f);
}

static int write_report(const char *path, const Options *o, const EvalSample *samples, int count,
                        const EvalOutcome *base, const EvalOutcome *tuned, const EvalComparison *c) {
    AtomicFile file;
    char err[ATOMIC_FILE_PATH_MAX + 512];
    FILE *f = atomic_file_open(&file, path, err, sizeof err);
    if (!f) { fprintf(stderr, "evaluate: %s\n", err); return -1; }
    fprintf(f, "{\n  \"model\": ");
    json_write_string(f, o->model_path);
    fprintf(f, ",\n  \"adapter\": ");
    if (o->adapter_dir) json_write_string(f, o->adapter_dir);
    else fprintf(f, "null");
    fprintf(f, ",\n  \"quant\": \"%s\", \"double_quant\": %d", o->adapter_dir && o->base.quant_nf4 ? "nf4" : "none",
            o->base.double_quant);
    fprintf(f, ",\n  \"data\": ");
    json_write_string(f, o->data_path);
    fprintf(f, ",\n  \"samples\": %d,\n  \"max_new\": %d,\n", count, o->max_new);
    fprintf(f, "  \"bootstrap\": {\"method\": \"percentile\", \"level\": %g, \"resamples\": %d, \"seed\": %llu, "
               "\"change\": \"fine_tuned - base, paired: both on the same resampled samples\"},\n",
            BOOTSTRAP_LEVEL, c->resamples, (unsigned long long)c->seed);
    write_json_summary(f, c, tuned != NULL);
    write_json_samples(f, samples, count, base, tuned);
    fprintf(f, "}\n");
    if (atomic_file_commit(&file, err, sizeof err) == 0) return 0;
    fprintf(stderr, "evaluate: %s\n", err);
    return -1;
}

// ---- the chart ----------------------------------------------------------------------

// Every metric but the loss (another scale), on each subset with samples.
static void write_chart(const char *json_path, const EvalComparison *c, int tuned) {
    char path[4096], err[1024];
    snprintf(path, sizeof path, "%s", json_path);
    size_t len = strlen(path);
    if (len > 5 && strcmp(path + len - 5, ".json") == 0) path[len - 5] = '\0';
    strncat(path, ".svg", sizeof path - strlen(path) - 1);
    ForestRow rows[EVAL_METRICS * EVAL_SUBSETS];
    int n_rows = 0;
    for (int m = 0; m < EVAL_LOSS; m++)
        for (int g = 0; g < EVAL_SUBSETS; g++) {
            const EvalCell *cell = &c->cell[m][g];
            if (cell->n == 0 || (m == EVAL_COSINE && g == EVAL_ALL)) continue;
            ForestRow *row = &rows[n_rows++];
            snprintf(row->label, sizeof row->label, "%s, %s (n = %d)", EVAL_METRIC_INFO[m].name,
                     EVAL_SUBSET_NAMES[g], cell->n);
            row->arm[0] = cell->arm[0];
            row->arm[1] = cell->arm[1];
            row->change = cell->change;
        }
    const char *title = tuned ? "base vs fine-tuned: means and paired changes, 95% bootstrap intervals"
                              : "base model: means, 95% bootstrap intervals";
    if (svg_forest_plot(path, title, rows, n_rows, err, sizeof err) != 0)
        fprintf(stderr, "evaluate: warning: %s\n", err);
    else
        printf("chart: %s\n", path);
}

// ---- main ---------------------------------------------------------------------------

// With --adapter, the base both arms run on: the one the adapter records, or
// --quant (printed, with a warning when they differ). Exits on error.
static void choose_base(Options *o, const Model *m) {
    char err[1024], warning[2048];
    AdapterBaseChoice *base = &o->base;
    int recorded = adapter_choose_base(o->adapter_dir, m, base, warning, sizeof warning, err, sizeof err);
    if (recorded < 0) { fprintf(stderr, "evaluate: %s\n", err); exit(1); }
    if (warning[0]) fprintf(stderr, "evaluate: warning: %s\n", warning);
    printf("base (both arms): %s\n", adapter_describe_base(base, recorded, err, sizeof err));
}

// One arm's model: as loaded; with --adapter, both arms on the base the adapter
// was trained on (choose_base, on the first arm loaded: the fine-tuned one),
// the fine-tuned one with the adapter merged in.
static void load_model(Model *m, Options *o, int merge_adapter) {
    char err[1024];
    if (merge_adapter && o->adapter_dir && adapter_check_config(o->adapter_dir, err, sizeof err) != 0) {
        fprintf(stderr, "evaluate: %s\n", err);
        exit(1);
    }
    if (model_load(m, o->model_path, err, sizeof err) != 0) { fprintf(stderr, "evaluate: %s\n", err); exit(1); }
    if (tokenizer_use_chat_template(m->tokenizer, o->template_name, err, sizeof err) != 0) {
        fprintf(stderr, "evaluate: %s: %s\n", o->model_path, err);
        exit(1);
    }
    if (merge_adapter || !o->adapter_dir)
        printf("chat template: %s (%s)\n", tokenizer_chat_family(m->tokenizer)->name,
               tokenizer_chat_origin(m->tokenizer));
    if (!o->adapter_dir) return;
    if (merge_adapter) choose_base(o, m);
    if (o->base.quant_nf4 && nf4_round_trip_model(m, o->base.double_quant, err, sizeof err) != 0) {
        fprintf(stderr, "evaluate: %s\n", err);
        exit(1);
    }
    if (!merge_adapter) return;
    AdapterInfo info;
    if (adapter_merge_peft(m, o->adapter_dir, &info, err, sizeof err) != 0) { fprintf(stderr, "evaluate: %s\n", err); exit(1); }
    printf("adapter: %s (%d modules merged, rank %d, scaling %g)\n", o->adapter_dir, info.n_merged, info.rank,
           info.scaling);
}

// The report's folder must be writable, and the report not the data, before
// minutes of answers are spent; exits if not.
static void check_report_path(const char *path, const char *data_path) {
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
    if (cli_same_file(path, data_path)) {
        fprintf(stderr, "evaluate: --out %s is the --data file: the report would be written over it\n", path);
        exit(2);
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

// Warns when samples (with --max-new tokens of answer) run past the model's
// context (RAFT JSONL is rendered whole, never cut to fit): there the model
// sees positions it was not trained on, and its loss and answers mean little.
static void warn_past_context(const EvalSample *samples, int count, int max_new, const Config *c, const char *path) {
    int n_past = 0, longest = 0;
    for (int i = 0; i < count; i++) {
        if (samples[i].n_tokens > samples[longest].n_tokens) longest = i;
        n_past += samples[i].n_tokens > c->max_seq_len || samples[i].n_prompt + max_new > c->max_seq_len;
    }
    if (n_past == 0) return;
    fprintf(stderr, "evaluate: warning: %d of the %d samples of %s, with --max-new %d, reach past the model's context "
            "of %d tokens (the longest, sample %d, has %d): their loss and answers are past what the model knows "
            "(./prepare --max-seq cuts documents to fit)\n", n_past, count, path, max_new, c->max_seq_len, longest + 1,
            samples[longest].n_tokens);
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
    load_model(&model, &o, o.adapter_dir != NULL);
    if (o.max_new >= model.config.max_seq_len) {
        fprintf(stderr, "evaluate: --max-new %d is not less than the model's context of %d tokens (%s)\n", o.max_new,
                model.config.max_seq_len, o.model_path);
        return 2;
    }
    check_report_path(path, o.data_path);
    int count;
    EvalSample *samples = eval_load_samples(o.data_path, model.tokenizer, o.limit, &count, err, sizeof err);
    if (!samples) { fprintf(stderr, "evaluate: %s\n", err); return 1; }
    warn_past_context(samples, count, o.max_new, &model.config, o.data_path);
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
    EvalComparison comparison = eval_compare(samples, base, tuned, count, o.resamples, (uint64_t)o.seed);
    print_table(&comparison, samples, count, tuned != NULL);
    for (int i = 0; i < count && i < o.examples; i++) {
        printf("\nsample %d (%s, %s the oracle)\n", i + 1, samples[i].korean ? "Korean" : "English",
               samples[i].oracle >= 0 ? "with" : "without");
        print_clipped("reference", samples[i].reference, 300);
        print_clipped("base", base[i].answer, 300);
        if (tuned) print_clipped("tuned", tuned[i].answer, 300);
    }
    if (write_report(path, &o, samples, count, base, tuned, &comparison) != 0) return 1;
    printf("\nreport: %s\n", path);
    write_chart(path, &comparison, tuned != NULL);
    eval_free_outcomes(base, count);
    eval_free_outcomes(tuned, count);
    eval_free_samples(samples, count);
    embedder_free(&embedder);
    return 0;
}
