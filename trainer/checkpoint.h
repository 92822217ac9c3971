// trainer/checkpoint.h: everything needed to stop training and resume it so that the
// losses continue exactly as an uninterrupted run: the adapters, AdamW's
// moments, the step, and the data order, and the run's identity (the options
// that change the math, the model's and the data's hashes: train.cu's
// run_identity), so that a resume is refused unless it is the same run.
// Written through formats/atomic_file.h (temp, fsync, rename), so a crash
// mid-write never destroys the previous checkpoint.
//
// Layout (version 7, little-endian): "QLORACK7", then trainer/checkpoint.cpp's
// Header struct as it lies in memory (no padding: the LoRA shape, the length
// of the flat arrays, AdamW's step count, the fields of TrainProgress with
// the loss scaler's state), the
// identity's length (u64) and its text (lines "--option value"), the data order, then the trainable state's three flat arrays as they lie in
// memory (lora.h): the parameters, AdamW's m, AdamW's v; last, a uint64 FNV-1a
// hash of every byte before it, so that a flipped bit is refused rather than
// trained on. Versions 1 to 6 (1 to 3: one tensor at a time; 4: without the
// identity; 5: without the loss scaler; 6: each adapter's A then B in target
// order, the flat layout before input groups, and a dropout mask per adapter
// rather than per input) are refused with a message saying so: restart the
// run, or finish it with the build that wrote it.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "adamw.h"
#include "lora.h"
#include "trainer/grad_scaler.h"

typedef struct {
    int step;            // optimizer steps done
    int total_steps;
    uint64_t data_rng;   // state of the shuffling generator
    int cursor;          // next position in order
    int n_order;
    int *order;          // [n_order] the current epoch's sample order
    double best_val;     // best validation loss so far (NaN when none)
    int evals_without_improvement;   // evaluations since best_val last improved (--early-stop)
    GradScaler scaler;   // fp16's loss scale, its growth tracker and the skipped steps (off in bf16 and fp32)
} TrainProgress;

// The state as the host holds it: set->params and adam's m, v and step (the
// gradients are not saved: every step starts them at zero).
// The longest identity a checkpoint may hold.
#define CHECKPOINT_IDENTITY_MAX 65536

// identity: the run's (lines "--option value"), at most CHECKPOINT_IDENTITY_MAX bytes.
int checkpoint_save(const char *path, const char *identity, const LoraSet *set, const AdamWState *adam,
                    const TrainProgress *progress, char *err, size_t err_size);
// Loads into an already initialised set and adam of the same shape (refuses a
// checkpoint of another run: an identity other than identity, every differing
// option named with both values; one of another rank, target list, layer count, parameter count or
// sample count, one of an older version, and a corrupted one: truncated, an
// impossible step or data order, NaN or Inf values).
// progress->order must hold n_order ints (the caller's sample count).
int checkpoint_load(const char *path, const char *identity, LoraSet *set, AdamWState *adam, TrainProgress *progress, char *err,
                    size_t err_size);
