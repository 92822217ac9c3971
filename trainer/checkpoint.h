// trainer/checkpoint.h: everything needed to stop training and resume it so that the
// losses continue exactly as an uninterrupted run: the adapters, AdamW's
// moments, the step, and the data order. Written to PATH.tmp, fsync'd and
// renamed, so a crash mid-write never destroys the previous checkpoint.
//
// Layout (little-endian): "QLORACK3", then trainer/checkpoint.cpp's Header struct as it
// lies in memory, padding zeroed (the LoRA shape, then the int32/uint64/double
// fields of TrainProgress), the data order, then per enabled adapter
// (layer-major, target order): A, B, then AdamW m and v of A, of B, and the
// two AdamW step counters (int64); last, a uint64 FNV-1a hash of every byte
// before it, so that a flipped bit is refused rather than trained on. Older
// files are still read: version 2 ("QLORACK2", no checksum) and version 1
// ("QLORACK1", also without the early-stop counter, which loads as 0).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "adamw.h"
#include "lora.h"

typedef struct {
    int step;            // optimizer steps done
    int total_steps;
    uint64_t data_rng;   // state of the shuffling generator
    int cursor;          // next position in order
    int n_order;
    int *order;          // [n_order] the current epoch's sample order
    double best_val;     // best validation loss so far (NaN when none)
    int evals_without_improvement;   // evaluations since best_val last improved (--early-stop)
} TrainProgress;

// moments: two AdamWState per adapter slot (A then B), [n_layers * N_LINEARS * 2].
int checkpoint_save(const char *path, const LoraSet *set, const AdamWState *moments, const TrainProgress *progress,
                    char *err, size_t err_size);
// Loads into an already initialised set/moments of the same shape (refuses a
// checkpoint of another rank, target list, layer count or sample count, and a
// corrupted one: truncated, an impossible step or data order, NaN or Inf values).
// progress->order must hold n_order ints (the caller's sample count).
int checkpoint_load(const char *path, LoraSet *set, AdamWState *moments, TrainProgress *progress,
                    char *err, size_t err_size);
