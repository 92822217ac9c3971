// data/checks.h: the data quality checks of ./prepare ("garbage in, garbage
// out"): every dropped line or sample is counted by reason and named with
// file:line, exact duplicates are found, and the rendered token lengths are
// summarised (mean, median, p95, max, a histogram, the share over --max-seq).
// The Report holds it all; it is printed and written as report.json.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include "formats/atomic_file.h"
#include "formats/json.h"
#include "data/string_map.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    DROP_INVALID_JSON,      // not JSON, invalid UTF-8, a line over the size limit
    DROP_SCHEMA,            // a member missing or of the wrong type, a bad index, a repeated document id
    DROP_MISSING,           // null or empty values
    DROP_DUPLICATE,         // the same question and answer as an earlier sample
    DROP_UNKNOWN_DOCUMENT,  // a question pointing at a document id that is not there
    DROP_TOO_LONG,          // longer than --max-seq (with --overlong drop, or when even the answer does not fit)
    DROP_NO_ANSWER_TOKENS,  // an answer that encodes to no tokens (characters the vocabulary lacks): nothing to learn
    N_DROP_REASONS
} DropReason;

// "invalid_json", "schema", "missing_value", "duplicate", "unknown_document", "too_long", "no_answer_tokens"
extern const char *const DROP_REASON_NAMES[N_DROP_REASONS];

// The problems printed (and kept for report.json); the rest are only counted.
#define REPORT_MAX_SHOWN 100

// Nearest-rank statistics of token lengths: the p-quantile is the
// ceil(p * count)-th smallest length.
typedef struct {
    long count;
    double mean;
    int median, p95, max;
    long over_limit;        // longer than the limit
} LengthStats;

#define HISTOGRAM_BINS 10
typedef struct {
    int width;                       // tokens per bin; bin i holds lengths in [i * width, (i + 1) * width)
    long counts[HISTOGRAM_BINS];
} Histogram;

typedef struct {
    // settings, echoed in the report
    int strict, max_seq, distractors, seed, val_min;
    double no_oracle_share, val_frac;
    // counts
    long lines;                      // non-blank input lines read
    long documents, questions;       // documents and questions (or ready samples) accepted before deduplication
    long dropped[N_DROP_REASONS];
    long samples;                    // samples written (train + val)
    long no_oracle;                  // of those, samples whose documents do not hold the answer
    long truncated;                  // samples whose documents were cut to fit --max-seq
    long train_samples, val_samples, train_questions, val_questions;
    long val_korean, val_no_oracle;  // validation samples whose question is Korean, that have no oracle
    long train_tokens, train_answer_tokens;
    long train_packed;               // sequences of --max-seq tokens the training samples fill when packed
    uint64_t set_id;                 // the id train.bin and val.bin carry too (tokfile_set_id)
    LengthStats rendered;            // lengths as rendered, before fitting
    LengthStats written;             // lengths written
    Histogram histogram;             // of the rendered lengths
    // the first REPORT_MAX_SHOWN problems, "where: reason"
    char *problems[REPORT_MAX_SHOWN];
    int n_problems;
    StringMap seen;                  // question + answer of every sample kept so far
} Report;

void report_free(Report *r);

// Checks that value (a member, NULL when absent; called what in messages) is
// a string with visible text and no NUL byte. Returns 0, or -1 with *why:
// DROP_SCHEMA when absent, not a string or holding a NUL, DROP_MISSING when
// null or blank; and the reason ("missing \"question\"", "\"answer\" is empty").
int check_text(const JsonValue *value, const char *what, DropReason *why, char *reason, size_t reason_size);

// Counts a dropped line (or item) and prints "where: reason" to stderr while
// fewer than REPORT_MAX_SHOWN have been shown. Returns -1 when r->strict is
// set and the reason is bad input (invalid JSON, schema, missing value,
// unknown document): the caller stops. Otherwise 0.
int report_drop(Report *r, DropReason why, const char *where, const char *reason);

// Reads every line of a JSONL file leniently: each line is parsed and handed
// to read_line(context, r, line, "path:N"); a line that is not valid JSON is
// counted as a drop. An empty file is an error. Returns 0, or -1 with the
// message in err when the file cannot be read or read_line says stop
// (strict mode, out of memory).
typedef int (*JsonlLineReader)(void *context, Report *r, const JsonValue *line, const char *where);
int read_jsonl_checked(const char *path, Report *r, JsonlLineReader read_line, void *context, char *err,
                       size_t err_size);

// 1 when question + answer was seen before (exactly), else 0 and remembers
// it; -1 when memory runs out.
int report_is_duplicate(Report *r, const char *question, const char *answer);

long report_total_dropped(const Report *r);

void length_stats_compute(const int *lengths, long n, int limit, LengthStats *s);
void histogram_compute(const int *lengths, long n, Histogram *h);

// The whole report as text (counts, drops by reason, lengths, histogram, split).
void report_print(const Report *r, FILE *out);
// The same as JSON. Returns -1 with "PATH: why" in err when it cannot be written.
int report_write_json(const Report *r, const char *path, char *err, size_t err_size);
// The JSON written to file's temp and closed, not yet renamed (./prepare renames
// its three files together: formats/atomic_file.h).
int report_write_json_temp(AtomicFile *file, const Report *r, const char *path, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
