// trainer/examples.h: the samples ./train learns from, as token ids with their
// answer-only targets: read from a ./prepare token file (data/tokfile.h) or
// rendered here from RAFT JSONL (data/raft.h), with the validation set beside
// them; packing several samples into one sequence (--pack); the data order,
// shuffled every epoch; and micro-batches padded to their longest sequence,
// with every token's loss weight (--prompt-loss-weight).
#pragma once
#include <stdint.h>
#include "tokenizer.h"
#include "trainer/train_step.h"

// One sample as tokens with its shifted answer-only targets (see raft_encode),
// or, packed, several samples one after another.
typedef struct {
    int *ids;
    int *targets;
    int n_tokens;
    int n_answer;     // targets that are not IGNORE_TARGET
    int n_samples;    // 1, or the samples packed in it
    int *positions;   // NULL, or packed: [n_tokens] each token's position in its own sample
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
// The next micro-batch along the data order (order[*cursor], ...): batch samples,
// or the fewer left at the end of an epoch (PyTorch's DataLoader without
// drop_last, the HF Trainer's default), so that an epoch trains on every sample
// once; when the epoch is used up, order is reshuffled (at *rng) and *cursor
// starts over. Returns the micro-batch's sample count; *first its start in order.
int examples_next_micro_batch(int *order, int n_samples, int batch, int *cursor, uint64_t *rng, int *first);
// Micro-batches in one epoch of n_samples: ceil(n_samples / batch).
int examples_micro_batches_per_epoch(int n_samples, int batch);

// --pack: the samples of set, in an order shuffled by seed, packed into
// sequences of at most max_seq tokens, each sample into the first sequence with
// room for it (data/packing.h); a sample keeps its own positions and attends
// only to itself. packed gets new arrays; set is left as it was. Returns 0, or -1 when a
// sample is longer than max_seq (message printed).
int examples_pack(const ExampleSet *set, int max_seq, int seed, ExampleSet *packed);
// How full sequences of seq_len tokens are: the set's tokens / (count * seq_len).
double examples_fill(const ExampleSet *set, int seq_len);

// The loss weight of one target: 1 on the answer; prompt_weight on the other
// tokens (--prompt-loss-weight: 0 learns the answer only, 1 every token).
// An example's total is the loss normaliser's share of it.
double example_loss_weight(const Example *e, float prompt_weight);

// The arrays a batch points into (examples_batch allocates them).
typedef struct {
    int *tokens, *targets;
    float *weights;    // NULL when prompt_weight is 0 (the answer-only targets weigh 1)
    int *positions;    // NULL unless the examples are packed
} BatchArrays;
// Puts examples[order[first .. first + count)] into one batch padded to the
// longest: padding tokens repeat the last token and are never learned. With
// prompt_weight > 0 every token of a sample but its last has a target, weighted
// as example_loss_weight says.
Batch examples_batch(const ExampleSet *set, const int *order, int first, int count, float prompt_weight,
                     BatchArrays *arrays);
void batch_arrays_free(BatchArrays *arrays);
