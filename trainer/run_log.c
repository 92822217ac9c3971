// trainer/run_log.c: log.csv and the loss chart of a run (see trainer/run_log.h).
#include "trainer/run_log.h"
#include "formats/atomic_file.h"
#include "formats/tensor.h"
#include "trainer/plot.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void history_add(RunLog *log, double step, double train, double val) {
    if (log->count == log->capacity) return;
    log->steps[log->count] = step;
    log->train[log->count] = train;
    log->val[log->count] = val;
    log->count++;
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

// Appends text to the log's copy of log.csv.
static void text_append(RunLog *log, const char *text) {
    size_t length = strlen(text);
    if (log->csv_length + length + 1 > log->csv_capacity) {
        log->csv_capacity = 2 * (log->csv_length + length + 1);
        log->csv_text = (char *)realloc(log->csv_text, log->csv_capacity);
        if (!log->csv_text) { fprintf(stderr, "train: out of memory for log.csv\n"); exit(3); }
    }
    memcpy(log->csv_text + log->csv_length, text, length + 1);
    log->csv_length += length;
}

// The earlier run's rows up to step from path, into the text and the history:
// step, train loss (empty in the step-0 row), val loss (empty where not
// measured). A run stopped after its last checkpoint logged steps that are
// done again: those rows are left out. No file: nothing to carry.
static void history_load(RunLog *log, const char *path, int step) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f) && log->count < log->capacity) {
        char *comma;
        long row_step = strtol(line, &comma, 10);
        // the header, a later step's row, a row cut short
        if (comma == line || *comma != ',' || row_step > step || !strchr(line, '\n')) continue;
        text_append(log, line);
        double train = next_csv_number(&comma);
        double val = next_csv_number(&comma);
        history_add(log, (double)row_step, train, val);
    }
    fclose(f);
}

// log.csv rewritten whole from the text (formats/atomic_file.h): a crash
// leaves the previous version. A failure is a warning: the run goes on.
static void write_csv(const RunLog *log) {
    char err[ATOMIC_FILE_PATH_MAX + 512];
    if (atomic_file_write(log->csv_path, log->csv_text, log->csv_length, err, sizeof err) != 0)
        fprintf(stderr, "train: warning: %s\n", err);
}

void run_log_open(RunLog *log, const char *out_dir, const char *resume_dir, int first_step, int total_steps) {
    memset(log, 0, sizeof *log);
    snprintf(log->csv_path, sizeof log->csv_path, "%s/log.csv", out_dir);
    snprintf(log->svg_path, sizeof log->svg_path, "%s/loss.svg", out_dir);
    text_append(log, "step,train_loss,val_loss,grad_norm,lr,ms,tokens_per_s,loss_scale,skipped_steps\n");
    // room for an earlier log (at most total_steps + 1 rows are read back) and this run's steps
    log->capacity = 2 * total_steps + 2;
    log->steps = (double *)cpu_malloc(sizeof(double) * log->capacity, "loss history");
    log->train = (double *)cpu_malloc(sizeof(double) * log->capacity, "loss history");
    log->val = (double *)cpu_malloc(sizeof(double) * log->capacity, "loss history");
    if (resume_dir) {
        char earlier[sizeof log->csv_path + 16];
        snprintf(earlier, sizeof earlier, "%s/log.csv", resume_dir);
        history_load(log, earlier, first_step);
    }
    write_csv(log);
}

void run_log_before_training(RunLog *log, double val_loss) {
    char row[64];
    snprintf(row, sizeof row, "0,,%.6f,,,,,,\n", val_loss);   // no train loss before training
    text_append(log, row);
    write_csv(log);
    history_add(log, 0, NAN, val_loss);
}

// The chart: the train loss at every step, the val loss joining the steps where it was measured.
static void plot_history(const RunLog *log) {
    char err[1024];
    // the val curve skips the steps without one (the chart lifts the pen at a NaN)
    double *val_steps = (double *)cpu_malloc(sizeof(double) * (log->count + 1), "loss history");
    double *val = (double *)cpu_malloc(sizeof(double) * (log->count + 1), "loss history");
    int n_val = 0;
    for (int i = 0; i < log->count; i++) {
        if (isnan(log->val[i])) continue;
        val_steps[n_val] = log->steps[i];
        val[n_val++] = log->val[i];
    }
    PlotSeries series[2] = {{"train loss", NULL, log->steps, log->train, log->count},
                            {"val loss", NULL, val_steps, val, n_val}};
    if (svg_line_chart(log->svg_path, "answer-only loss", "step", "loss", series, 2, err, sizeof err) != 0)
        fprintf(stderr, "train: warning: %s\n", err);
    free(val_steps);
    free(val);
}

void run_log_step(RunLog *log, int step, double train_loss, double val_loss, double grad_norm, float lr, double ms,
                  double tokens_per_s, float loss_scale, int skipped_steps) {
    char val_text[32] = "", row[320];
    if (!isnan(val_loss)) snprintf(val_text, sizeof val_text, "%.6f", val_loss);
    snprintf(row, sizeof row, "%d,%.17g,%s,%.17g,%.6e,%.1f,%.1f,%.9g,%d\n", step, train_loss, val_text, grad_norm, lr,
             ms, tokens_per_s, loss_scale, skipped_steps);
    text_append(log, row);
    write_csv(log);
    history_add(log, step, train_loss, val_loss);
    plot_history(log);
}

void run_log_close(RunLog *log) {
    free(log->csv_text);
    free(log->steps);
    free(log->train);
    free(log->val);
    memset(log, 0, sizeof *log);
}
