// dev/runs/forgetting/mix_sets.c: one training set from two ./prepare outputs,
// for the "A and B mixed" arm of the forgetting experiment (README.md here):
//   mix_sets MODEL OUT A B   writes OUT/train.bin = A's then B's training
//   samples, OUT/val.bin = A's then B's validation samples (./train shuffles).
// Build (after make): gcc -O2 -I. -Ibuild/deps/include dev/runs/forgetting/mix_sets.c build/data/tokfile.o build/tokenizer.o build/chat_template.o \
//   build/formats/*.o build/deps/lib/libutf8proc.a -lm -fopenmp -o build/mix_sets
#include "data/tokfile.h"
#include "formats/gguf.h"
#include "tokenizer.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// a's samples then b's, in one malloc'd array (the samples' arrays are shared, not copied).
static TokSample *concat(const TokFile *a, const TokFile *b) {
    TokSample *all = malloc(sizeof(TokSample) * (a->count + b->count));
    if (!all) { fprintf(stderr, "mix_sets: out of memory\n"); exit(1); }
    memcpy(all, a->samples, sizeof(TokSample) * a->count);
    memcpy(all + a->count, b->samples, sizeof(TokSample) * b->count);
    return all;
}

static void read_or_die(TokFile *f, const char *dir, const char *name, const Tokenizer *t) {
    char path[4096], err[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (tokfile_read(f, path, t, err, sizeof err) != 0) { fprintf(stderr, "mix_sets: %s\n", err); exit(1); }
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: mix_sets MODEL.gguf OUT A B\n"); return 2; }
    char err[1024], path[4096];
    GGUFFile gguf;
    if (gguf_open(&gguf, argv[1], err, sizeof err) != 0) { fprintf(stderr, "mix_sets: %s\n", err); return 1; }
    Tokenizer *t = tokenizer_from_gguf(&gguf, err, sizeof err);
    if (!t) { fprintf(stderr, "mix_sets: %s\n", err); return 1; }
    TokFile train_a, train_b, val_a, val_b;
    read_or_die(&train_a, argv[3], "train.bin", t);
    read_or_die(&train_b, argv[4], "train.bin", t);
    read_or_die(&val_a, argv[3], "val.bin", t);
    read_or_die(&val_b, argv[4], "val.bin", t);
    TokSample *train = concat(&train_a, &train_b), *val = concat(&val_a, &val_b);
    long n_train = train_a.count + train_b.count, n_val = val_a.count + val_b.count;
    uint64_t set_id = tokfile_set_id(train, n_train, val, n_val);
    snprintf(path, sizeof path, "%s/train.bin", argv[2]);
    if (tokfile_write(path, t, train, n_train, set_id, err, sizeof err) != 0) { fprintf(stderr, "mix_sets: %s\n", err); return 1; }
    snprintf(path, sizeof path, "%s/val.bin", argv[2]);
    if (tokfile_write(path, t, val, n_val, set_id, err, sizeof err) != 0) { fprintf(stderr, "mix_sets: %s\n", err); return 1; }
    printf("%s: %ld training samples (%ld + %ld), %ld validation samples (%ld + %ld)\n", argv[2], n_train,
           train_a.count, train_b.count, n_val, val_a.count, val_b.count);
    return 0;
}
