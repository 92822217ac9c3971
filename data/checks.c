// data/checks.c: drop counting with file:line messages, exact-duplicate
// detection, token-length statistics, and the report (text and JSON).
#include "data/checks.h"
#include "data/jsonl.h"

#include <stdlib.h>
#include <string.h>

const char *const DROP_REASON_NAMES[N_DROP_REASONS] = {
    "invalid_json", "schema", "missing_value", "duplicate", "unknown_document", "too_long", "no_answer_tokens",
};

// The same names for people.
static const char *const DROP_REASON_TEXT[N_DROP_REASONS] = {
    "invalid JSON", "schema error", "missing value", "duplicate", "unknown document", "too long", "no answer tokens",
};

void report_free(Report *r) {
    for (int i = 0; i < r->n_problems; i++) free(r->problems[i]);
    string_map_free(&r->seen);
    memset(r, 0, sizeof *r);
}

int check_text(const JsonValue *value, const char *what, DropReason *why, char *reason, size_t reason_size) {
    *why = DROP_SCHEMA;
    if (!value) { snprintf(reason, reason_size, "missing %s", what); return -1; }
    if (value->type != JSON_NULL && value->type != JSON_STRING) {
        snprintf(reason, reason_size, "%s must be a string", what);
        return -1;
    }
    if (value->type == JSON_STRING && strlen(value->string) != value->string_len) {
        snprintf(reason, reason_size, "%s contains a NUL character (\\u0000)", what);
        return -1;
    }
    *why = DROP_MISSING;
    if (value->type == JSON_NULL) { snprintf(reason, reason_size, "%s is null", what); return -1; }
    if (strspn(value->string, " \t\r\n") == value->string_len) {
        snprintf(reason, reason_size, "%s is empty", what);
        return -1;
    }
    return 0;
}

int report_drop(Report *r, DropReason why, const char *where, const char *reason) {
    r->dropped[why]++;
    if (r->n_problems < REPORT_MAX_SHOWN) {
        size_t size = strlen(where) + strlen(reason) + 3;
        char *message = (char *)malloc(size);
        if (message) {
            snprintf(message, size, "%s: %s", where, reason);
            r->problems[r->n_problems++] = message;
            fprintf(stderr, "%s\n", message);
        }
        if (r->n_problems == REPORT_MAX_SHOWN)
            fprintf(stderr, "(further problems are counted but not shown)\n");
    }
    int bad_input = why != DROP_DUPLICATE && why != DROP_TOO_LONG;
    return r->strict && bad_input ? -1 : 0;
}

int report_is_duplicate(Report *r, const char *question, const char *answer) {
    // the key: question, a NUL byte, answer (neither holds a NUL, so the pair is unambiguous)
    size_t question_len = strlen(question), answer_len = strlen(answer);
    char *key = (char *)malloc(question_len + 1 + answer_len);
    if (!key) return -1;
    memcpy(key, question, question_len + 1);
    memcpy(key + question_len + 1, answer, answer_len);
    int status = string_map_put(&r->seen, key, question_len + 1 + answer_len, 0);
    free(key);
    return status;
}

long report_total_dropped(const Report *r) {
    long total = 0;
    for (int i = 0; i < N_DROP_REASONS; i++) total += r->dropped[i];
    return total;
}

// ---- lengths ------------------------------------------------------------------

static int compare_ints(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

// The nearest-rank p-quantile of n sorted values: the ceil(p * n)-th smallest.
static int quantile(const int *sorted, long n, double p) {
    long rank = (long)(p * n);
    if ((double)rank < p * n) rank++;
    if (rank < 1) rank = 1;
    return sorted[rank - 1];
}

void length_stats_compute(const int *lengths, long n, int limit, LengthStats *s) {
    memset(s, 0, sizeof *s);
    s->count = n;
    if (n == 0) return;
    int *sorted = (int *)malloc(sizeof(int) * n);
    if (!sorted) return;
    memcpy(sorted, lengths, sizeof(int) * n);
    qsort(sorted, (size_t)n, sizeof(int), compare_ints);
    double sum = 0.0;
    for (long i = 0; i < n; i++) {
        sum += sorted[i];
        s->over_limit += sorted[i] > limit;
    }
    // mean = sum / count
    s->mean = sum / n;
    s->median = quantile(sorted, n, 0.5);
    s->p95 = quantile(sorted, n, 0.95);
    s->max = sorted[n - 1];
    free(sorted);
}

void histogram_compute(const int *lengths, long n, Histogram *h) {
    memset(h, 0, sizeof *h);
    int longest = 0;
    for (long i = 0; i < n; i++)
        if (lengths[i] > longest) longest = lengths[i];
    // width = ceil((longest + 1) / bins), rounded up to a multiple of 32
    int width = (longest + 1 + HISTOGRAM_BINS - 1) / HISTOGRAM_BINS;
    h->width = (width + 31) / 32 * 32;
    for (long i = 0; i < n; i++) h->counts[lengths[i] / h->width]++;
}

// ---- the report as text -----------------------------------------------------

static void print_lengths(const char *label, const LengthStats *s, int limit, FILE *out) {
    fprintf(out, "  %-26s count %ld, mean %.1f, median %d, p95 %d, max %d", label, s->count, s->mean, s->median,
            s->p95, s->max);
    if (s->count) fprintf(out, "; %.1f%% over --max-seq %d", 100.0 * s->over_limit / s->count, limit);
    fprintf(out, "\n");
}

static void print_histogram(const Histogram *h, int limit, FILE *out) {
    long most = 1;
    for (int i = 0; i < HISTOGRAM_BINS; i++)
        if (h->counts[i] > most) most = h->counts[i];
    fprintf(out, "  histogram of rendered lengths (tokens):\n");
    for (int i = 0; i < HISTOGRAM_BINS; i++) {
        int from = i * h->width, to = (i + 1) * h->width - 1;
        // bar length = 40 * count / largest count
        int bar = (int)(40 * h->counts[i] / most);
        fprintf(out, "    %6d - %6d | %-40.*s %ld%s\n", from, to, bar, "########################################",
                h->counts[i], from <= limit && limit <= to ? "   <- --max-seq" : "");
    }
}

// How full sequences of max_seq tokens are: tokens / (sequences * max_seq).
static double fill(long tokens, long sequences, int max_seq) {
    return sequences > 0 && max_seq > 0 ? (double)tokens / ((double)sequences * max_seq) : 0.0;
}

void report_print(const Report *r, FILE *out) {
    fprintf(out, "report\n");
    fprintf(out, "  input:      %ld lines; %ld documents, %ld questions\n", r->lines, r->documents, r->questions);
    fprintf(out, "  dropped:    %ld\n", report_total_dropped(r));
    for (int i = 0; i < N_DROP_REASONS; i++) fprintf(out, "    %-18s %ld\n", DROP_REASON_TEXT[i], r->dropped[i]);
    fprintf(out, "  samples:    %ld (%ld without the oracle)\n", r->samples, r->no_oracle);
    fprintf(out, "  truncated:  %ld samples had their documents cut to fit --max-seq %d\n", r->truncated, r->max_seq);
    print_lengths("lengths as rendered:", &r->rendered, r->max_seq, out);
    print_lengths("lengths written:", &r->written, r->max_seq, out);
    print_histogram(&r->histogram, r->max_seq, out);
    fprintf(out, "  split:      train %ld samples (%ld questions), val %ld samples (%ld questions), seed %d\n",
            r->train_samples, r->train_questions, r->val_samples, r->val_questions, r->seed);
    long questions = r->train_questions + r->val_questions;
    fprintf(out, "  val:        %.1f%% of the questions (--val-frac %g, at least --val-min %d when that is at most a "
                 "quarter); %ld English, %ld Korean samples; %ld without the oracle\n",
            questions ? 100.0 * r->val_questions / questions : 0.0, r->val_frac, r->val_min,
            r->val_samples - r->val_korean, r->val_korean, r->val_no_oracle);
    fprintf(out, "  train:      %ld tokens, %ld of them answer tokens (labelled)\n", r->train_tokens,
            r->train_answer_tokens);
    fprintf(out, "  packing:    one sample a sequence, the training samples fill %.1f%% of --max-seq %d tokens; "
                 "packed (./train --pack --seq %d), %ld sequences %.1f%% full\n",
            100.0 * fill(r->train_tokens, r->train_samples, r->max_seq), r->max_seq, r->max_seq, r->train_packed,
            100.0 * fill(r->train_tokens, r->train_packed, r->max_seq));
}

// ---- the report as JSON -------------------------------------------------------

static void write_json_lengths(FILE *f, const char *name, const LengthStats *s) {
    fprintf(f, "  \"%s\": {\"count\": %ld, \"mean\": %.3f, \"median\": %d, \"p95\": %d, \"max\": %d, "
               "\"over_max_seq\": %ld, \"share_over_max_seq\": %.6f},\n",
            name, s->count, s->mean, s->median, s->p95, s->max, s->over_limit,
            s->count ? (double)s->over_limit / s->count : 0.0);
}

int report_write_json_temp(AtomicFile *file, const Report *r, const char *path, char *err, size_t err_size) {
    FILE *f = atomic_file_open(file, path, err, err_size);
    if (!f) return -1;
    fprintf(f, "{\n");
    // a string: JSON numbers are doubles, which hold 53 bits
    fprintf(f, "  \"set_id\": \"%016llx\",\n", (unsigned long long)r->set_id);
    fprintf(f, "  \"settings\": {\"max_seq\": %d, \"distractors\": %d, \"no_oracle\": %g, \"val_frac\": %g, "
               "\"val_min\": %d, \"seed\": %d, \"strict\": %s},\n",
            r->max_seq, r->distractors, r->no_oracle_share, r->val_frac, r->val_min, r->seed,
            r->strict ? "true" : "false");
    fprintf(f, "  \"lines\": %ld,\n  \"documents\": %ld,\n  \"questions\": %ld,\n", r->lines, r->documents,
            r->questions);
    fprintf(f, "  \"dropped\": {");
    for (int i = 0; i < N_DROP_REASONS; i++)
        fprintf(f, "%s\"%s\": %ld", i ? ", " : "", DROP_REASON_NAMES[i], r->dropped[i]);
    fprintf(f, "},\n  \"dropped_total\": %ld,\n", report_total_dropped(r));
    fprintf(f, "  \"samples\": %ld,\n  \"no_oracle\": %ld,\n  \"truncated\": %ld,\n", r->samples, r->no_oracle,
            r->truncated);
    fprintf(f, "  \"train\": {\"samples\": %ld, \"questions\": %ld, \"tokens\": %ld, \"answer_tokens\": %ld},\n",
            r->train_samples, r->train_questions, r->train_tokens, r->train_answer_tokens);
    fprintf(f, "  \"val\": {\"samples\": %ld, \"questions\": %ld, \"english\": %ld, \"korean\": %ld, \"no_oracle\": %ld},\n",
            r->val_samples, r->val_questions, r->val_samples - r->val_korean, r->val_korean, r->val_no_oracle);
    fprintf(f, "  \"packing\": {\"max_seq\": %d, \"unpacked_sequences\": %ld, \"unpacked_fill\": %.6f, "
               "\"packed_sequences\": %ld, \"packed_fill\": %.6f},\n",
            r->max_seq, r->train_samples, fill(r->train_tokens, r->train_samples, r->max_seq), r->train_packed,
            fill(r->train_tokens, r->train_packed, r->max_seq));
    write_json_lengths(f, "lengths_rendered", &r->rendered);
    write_json_lengths(f, "lengths_written", &r->written);
    fprintf(f, "  \"histogram\": [");
    for (int i = 0; i < HISTOGRAM_BINS; i++)
        fprintf(f, "%s{\"from\": %d, \"to\": %d, \"count\": %ld}", i ? ", " : "", i * r->histogram.width,
                (i + 1) * r->histogram.width - 1, r->histogram.counts[i]);
    fprintf(f, "],\n  \"problems_shown\": [");
    for (int i = 0; i < r->n_problems; i++) {
        fprintf(f, "%s\n    ", i ? "," : "");
        json_write_string(f, r->problems[i]);
    }
    fprintf(f, "%s]\n}\n", r->n_problems ? "\n  " : "");
    return atomic_file_close(file, err, err_size);
}

int report_write_json(const Report *r, const char *path, char *err, size_t err_size) {
    AtomicFile file;
    if (report_write_json_temp(&file, r, path, err, err_size) != 0) return -1;
    return atomic_file_rename(&file, err, err_size);
}

int read_jsonl_checked(const char *path, Report *r, JsonlLineReader read_line, void *context, char *err,
                       size_t err_size) {
    JsonlFile file;
    if (jsonl_open(&file, path, err, err_size) != 0) return -1;
    if (file.size == 0) {
        snprintf(err, err_size, "%s: the file is empty", path);
        jsonl_close(&file);
        return -1;
    }
    int status = 0;
    size_t len;
    const char *text;
    while (status == 0 && (text = jsonl_next(&file, &len)) != NULL) {
        char where[4200], reason[512];
        snprintf(where, sizeof where, "%s:%d", path, file.line_number);
        r->lines++;
        JsonValue *line = jsonl_parse_line(text, len, reason, sizeof reason);
        status = line ? read_line(context, r, line, where) : report_drop(r, DROP_INVALID_JSON, where, reason);
        json_free(line);
        if (status != 0)
            snprintf(err, err_size, "%s: %s", where, r->strict ? "stopped at the first bad line (--strict)" : "out of memory");
    }
    jsonl_close(&file);
    return status;
}
