// trainer/examples.h: the samples ./train learns from, as token ids with their
// answer-only targets: read from a ./prepare token file (data/tokfile.h) or
// rendered here from RAFT JSONL (data/raft.h), with the validation set beside
// them; the data order, shuffled every epoch; and micro-batches padded to
// their longest sample.
#pragma once
#include <stdint.h>
#include "tokenizer.h"
#include "trainer/train_step.h"

// One sample as tokens with its shifted answer-only targets (see raft_encode).
typedef struct {
    int *ids;
    int *targets;
    int n_tokens;
    int n_answer;   // targets that are not IGNORE_TARGET
} Example;

typedef struct {
    Example *examples;
    int count;
} ExampleSet;

// Where the samples come from (./train's --data, --val-data, --val-frac, --seq, --seed).
typedef struct {
    const char *data_path;   // a .bin file from ./prepare, or RAFT JSONL
    const char *val_path;    // NULL: the val.bin beside a train.bin, or val_frac of JSONL held out
    float val_frac;          // share of JSONL samples held out when there is no val_path
    int max_seq;             // longer samples are skipped (and counted)
    int seed;                // the held-out share is drawn with it
} ExampleSource;

// A tokenized file from ./prepare rather than JSONL: the name ends in .bin.
int examples_is_tokfile(const char *path);
// Reads the training and validation samples; *skipped counts those longer than
// max_seq. Returns 0, or -1 with the message printed ("train: ...").
int examples_load(const ExampleSource *src, const Tokenizer *tok, ExampleSet *train, ExampleSet *val, int *skipped);
void examples_free(ExampleSet *set);
// The longest sample's token count (0 for an empty set).
int examples_longest(const ExampleSet *set);

// Fisher-Yates shuffle of n items drawn from splitmix64 at *state (advanced).
void examples_shuffle(int *items, int n, uint64_t *state);
// Packs examples[order[first .. first + count)] into one batch padded to the
// longest: padding tokens repeat the last token and are never learned.
// *tokens and *targets are allocated here; the caller frees them.
Batch examples_batch(const ExampleSet *set, const int *order, int first, int count, int **tokens, int **targets);
