// trainer/run_log.h: what a run writes as it goes: OUT/log.csv, one row a step
// (step, train loss, val loss where measured, grad norm, lr, ms, tokens/s, the
// loss scale the step ran with and the steps skipped so far (fp16: 1 and 0
// otherwise; trainer/grad_scaler.h); a step-0 row holds the val loss before training), and OUT/loss.svg, redrawn
// after every step from the whole loss history, a resumed run's earlier rows
// included. Both are rewritten whole after every row, through
// formats/atomic_file.h: a crash leaves the previous complete version.
#pragma once
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char *csv_text;          // OUT/log.csv's contents, written so far
    size_t csv_length, csv_capacity;
    char csv_path[4096];
    char svg_path[4096];     // OUT/loss.svg
    double *steps, *train, *val;   // the loss history (NaN where not measured)
    int count, capacity;
} RunLog;

// Starts out_dir/log.csv for a run of total_steps steps: its header, and when
// resuming (resume_dir not NULL: the --out of the run continued, which may
// be another folder), the earlier run's rows up to first_step from
// resume_dir/log.csv (a run stopped after its last checkpoint logged steps
// that are done again), their losses read back into the history. A file that
// cannot be written is a warning, not an error (the checkpoints matter more).
void run_log_open(RunLog *log, const char *out_dir, const char *resume_dir, int first_step, int total_steps);
// The step-0 row: the validation loss before training.
void run_log_before_training(RunLog *log, double val_loss);
// One step's row (val_loss NaN when not measured), written; then the chart is redrawn.
void run_log_step(RunLog *log, int step, double train_loss, double val_loss, double grad_norm, float lr, double ms,
                  double tokens_per_s, float loss_scale, int skipped_steps);
void run_log_close(RunLog *log);

#ifdef __cplusplus
}
#endif
