// trainer/run_log.c: log.csv and the loss chart of a run (see trainer/run_log.h).
#include "trainer/run_log.h"
#include "formats/tensor.h"
#include "trainer/plot.h"

#include <errno.h>
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

// Reads an earlier run's log.csv (when resuming) into the history: step,
// train loss (empty in the step-0 row), val loss (empty where not measured).
static void history_load(RunLog *log, int max_rows) {
    FILE *f = fopen(log->csv_path, "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f) && log->count < max_rows) {
        char *comma;
        long step = strtol(line, &comma, 10);
        if (comma == line || *comma != ',') continue;   // the header
        double train = next_csv_number(&comma);
        double val = next_csv_number(&comma);
        history_add(log, (double)step, train, val);
    }
    fclose(f);
}

// Keeps only the header and the rows up to step (written to a temporary file,
// then renamed over the log). No log: nothing to do.
static int keep_rows_until(const char *path, int step, char *err, size_t err_size) {
    FILE *in = fopen(path, "r");
    if (!in) return 0;
    char tmp_path[4200];
    snprintf(tmp_path, sizeof tmp_path, "%s.tmp", path);
    FILE *out = fopen(tmp_path, "w");
    if (!out) {
        snprintf(err, err_size, "%s: cannot create: %s", tmp_path, strerror(errno));
        fclose(in);
        return -1;
    }
    char line[512];
    while (fgets(line, sizeof line, in)) {
        char *end;
        long row_step = strtol(line, &end, 10);
        int is_header = end == line;
        if (is_header || row_step <= step) fputs(line, out);
    }
    fclose(in);
    if (fclose(out) != 0 || rename(tmp_path, path) != 0) {
        snprintf(err, err_size, "%s: cannot write: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int run_log_open(RunLog *log, const char *out_dir, int first_step, int total_steps, char *err, size_t err_size) {
    memset(log, 0, sizeof *log);
    snprintf(log->csv_path, sizeof log->csv_path, "%s/log.csv", out_dir);
    snprintf(log->svg_path, sizeof log->svg_path, "%s/loss.svg", out_dir);
    if (first_step > 0 && keep_rows_until(log->csv_path, first_step, err, err_size) != 0) return -1;
    log->csv = fopen(log->csv_path, first_step > 0 ? "a" : "w");
    if (!log->csv) {
        snprintf(err, err_size, "cannot write %s: %s", log->csv_path, strerror(errno));
        return -1;
    }
    fseek(log->csv, 0, SEEK_END);
    if (ftell(log->csv) == 0) fprintf(log->csv, "step,train_loss,val_loss,grad_norm,lr,ms,tokens_per_s\n");
    // room for an earlier log (at most total_steps + 1 rows are read back) and this run's steps
    log->capacity = 2 * total_steps + 2;
    log->steps = (double *)cpu_malloc(sizeof(double) * log->capacity, "loss history");
    log->train = (double *)cpu_malloc(sizeof(double) * log->capacity, "loss history");
    log->val = (double *)cpu_malloc(sizeof(double) * log->capacity, "loss history");
    if (first_step > 0) history_load(log, total_steps + 1);
    return 0;
}

void run_log_before_training(RunLog *log, double val_loss) {
    fprintf(log->csv, "0,,%.6f,,,,\n", val_loss);   // no train loss before training
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
                  double tokens_per_s) {
    char val_text[32] = "";
    if (!isnan(val_loss)) snprintf(val_text, sizeof val_text, "%.6f", val_loss);
    fprintf(log->csv, "%d,%.17g,%s,%.17g,%.6e,%.1f,%.1f\n", step, train_loss, val_text, grad_norm, lr, ms,
            tokens_per_s);
    fflush(log->csv);
    history_add(log, step, train_loss, val_loss);
    plot_history(log);
}

void run_log_close(RunLog *log) {
    if (log->csv) fclose(log->csv);
    free(log->steps);
    free(log->train);
    free(log->val);
    memset(log, 0, sizeof *log);
}
