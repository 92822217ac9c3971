// trainer/run_log.h: what a run writes as it goes: OUT/log.csv, one row a step
// (step, train loss, val loss where measured, grad norm, lr, ms, tokens/s; a
// step-0 row holds the val loss before training), and OUT/loss.svg, redrawn
// after every step from the whole loss history, a resumed run's earlier rows
// included.
#pragma once
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    FILE *csv;               // OUT/log.csv, open for appending
    char csv_path[4096];
    char svg_path[4096];     // OUT/loss.svg
    double *steps, *train, *val;   // the loss history (NaN where not measured)
    int count, capacity;
} RunLog;

// Opens out_dir/log.csv for a run of total_steps steps: a new file with its
// header when first_step is 0; when resuming at first_step > 0, the earlier
// run's file, cut to the header and its rows up to first_step (a run stopped
// after its last checkpoint logged steps that are done again), whose losses
// are read back into the history. Returns 0, or -1 with the message in err.
int run_log_open(RunLog *log, const char *out_dir, int first_step, int total_steps, char *err, size_t err_size);
// The step-0 row: the validation loss before training.
void run_log_before_training(RunLog *log, double val_loss);
// One step's row (val_loss NaN when not measured), flushed; then the chart is redrawn.
void run_log_step(RunLog *log, int step, double train_loss, double val_loss, double grad_norm, float lr, double ms,
                  double tokens_per_s);
void run_log_close(RunLog *log);

#ifdef __cplusplus
}
#endif
