// trainer/checkpoint.cpp: saving and loading training state (see trainer/checkpoint.h).
#include "trainer/checkpoint.h"
#include "formats/tensor.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char MAGIC[8] = {'Q', 'L', 'O', 'R', 'A', 'C', 'K', '3'};
static const char MAGIC_V2[8] = {'Q', 'L', 'O', 'R', 'A', 'C', 'K', '2'};
static const char MAGIC_V1[8] = {'Q', 'L', 'O', 'R', 'A', 'C', 'K', '1'};
static const uint64_t FNV_OFFSET = 14695981039346656037ULL, FNV_PRIME = 1099511628211ULL;

// The fixed-size part of the file, after the magic. Version 1 ends before
// evals_without_improvement.
typedef struct {
    int32_t n_layers, rank, enabled[N_LINEARS];
    int32_t step, total_steps, cursor, n_order;
    uint64_t data_rng;
    double best_val;
    int32_t evals_without_improvement;
} Header;

// A file being written or read, and the FNV-1a hash of every byte so far.
typedef struct {
    FILE *f;
    uint64_t hash;
} Stream;

// hash = (hash ^ byte) * FNV_PRIME for each byte
static void hash_bytes(Stream *s, const void *data, size_t bytes) {
    const unsigned char *p = (const unsigned char *)data;
    for (size_t i = 0; i < bytes; i++) s->hash = (s->hash ^ p[i]) * FNV_PRIME;
}

static int write_all(Stream *s, const void *data, size_t bytes) {
    hash_bytes(s, data, bytes);
    return fwrite(data, 1, bytes, s->f) == bytes ? 0 : -1;
}

static int read_all(Stream *s, void *data, size_t bytes) {
    if (fread(data, 1, bytes, s->f) != bytes) return -1;
    hash_bytes(s, data, bytes);
    return 0;
}

// Calls io on every tensor of the state in file order; stops at the first failure.
static int each_tensor(const LoraSet *set, const AdamWState *moments, Stream *f, int (*io)(Stream *, void *, size_t)) {
    for (int i = 0; i < set->n_layers * N_LINEARS; i++) {
        const LoraAdapter *a = &set->adapters[i];
        if (!a->A) continue;
        size_t a_bytes = sizeof(float) * a->rank * a->in_dim, b_bytes = sizeof(float) * a->out_dim * a->rank;
        const AdamWState *ma = &moments[2 * i], *mb = &moments[2 * i + 1];
        if (io(f, a->A, a_bytes) || io(f, a->B, b_bytes) || io(f, ma->m, a_bytes) || io(f, ma->v, a_bytes) ||
            io(f, mb->m, b_bytes) || io(f, mb->v, b_bytes) || io(f, (void *)&ma->step, sizeof(int64_t)) ||
            io(f, (void *)&mb->step, sizeof(int64_t)))
            return -1;
    }
    return 0;
}

static int write_tensor(Stream *s, void *data, size_t bytes) { return write_all(s, data, bytes); }
static int read_tensor(Stream *s, void *data, size_t bytes) { return read_all(s, data, bytes); }

int checkpoint_save(const char *path, const LoraSet *set, const AdamWState *moments, const TrainProgress *progress,
                    char *err, size_t err_size) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) { snprintf(err, err_size, "%s: cannot write: %s", tmp, strerror(errno)); return -1; }
    Header h;
    memset(&h, 0, sizeof h);
    h.n_layers = set->n_layers;
    h.rank = set->rank;
    for (int t = 0; t < N_LINEARS; t++) h.enabled[t] = set->enabled[t];
    h.step = progress->step;
    h.total_steps = progress->total_steps;
    h.cursor = progress->cursor;
    h.n_order = progress->n_order;
    h.data_rng = progress->data_rng;
    h.best_val = progress->best_val;
    h.evals_without_improvement = progress->evals_without_improvement;
    Stream s = {f, FNV_OFFSET};
    int failed = write_all(&s, MAGIC, sizeof MAGIC) || write_all(&s, &h, sizeof h) ||
                 write_all(&s, progress->order, sizeof(int) * progress->n_order) ||
                 each_tensor(set, moments, &s, write_tensor);
    // the checksum of everything above, last
    uint64_t checksum = s.hash;
    failed = failed || write_all(&s, &checksum, sizeof checksum) || fflush(f) != 0 || fsync(fileno(f)) != 0;
    if (fclose(f) != 0) failed = 1;
    if (failed || rename(tmp, path) != 0) {
        snprintf(err, err_size, "%s: writing the checkpoint failed: %s (the previous checkpoint is untouched)", path,
                 strerror(errno));
        remove(tmp);
        return -1;
    }
    return 0;
}

// The enabled targets as "q,v" (peft's short names), into out.
static void target_list(const int32_t *enabled, char *out, size_t size) {
    out[0] = '\0';
    for (int t = 0; t < N_LINEARS; t++)
        if (enabled[t])
            snprintf(out + strlen(out), size - strlen(out), "%s%s", out[0] ? "," : "", LINEAR_NAMES[t]);
}

// A flipped byte that made a weight or a moment NaN or Inf (or a step count negative): the first such tensor's name.
static const char *first_bad_tensor(const LoraSet *set, const AdamWState *moments) {
    for (int i = 0; i < set->n_layers * N_LINEARS; i++) {
        const LoraAdapter *a = &set->adapters[i];
        if (!a->A) continue;
        size_t a_size = (size_t)a->rank * a->in_dim, b_size = (size_t)a->out_dim * a->rank;
        const AdamWState *ma = &moments[2 * i], *mb = &moments[2 * i + 1];
        if (!floats_all_finite(a->A, a_size) || !floats_all_finite(ma->m, a_size) ||
            !floats_all_finite(ma->v, a_size) || ma->step < 0)
            return "lora_A";
        if (!floats_all_finite(a->B, b_size) || !floats_all_finite(mb->m, b_size) ||
            !floats_all_finite(mb->v, b_size) || mb->step < 0)
            return "lora_B";
    }
    return NULL;
}

// Version 3: the hash of every byte but the last 8 equals those 8. Checked
// before the header is trusted, so that a flipped bit in it reads as corruption,
// not as a checkpoint of another shape. Leaves f where it was.
static int checksum_matches(FILE *f) {
    long position = ftell(f);
    if (position < 0 || fseek(f, 0, SEEK_END) != 0) return 0;
    long size = ftell(f);
    rewind(f);
    if (size < 8) return 0;
    Stream s = {f, FNV_OFFSET};
    unsigned char chunk[65536];
    for (long left = size - 8; left > 0;) {
        size_t bytes = left < (long)sizeof chunk ? (size_t)left : sizeof chunk;
        if (read_all(&s, chunk, bytes)) return 0;
        left -= (long)bytes;
    }
    uint64_t stored = 0;
    int matches = fread(&stored, 1, sizeof stored, f) == sizeof stored && stored == s.hash;
    return fseek(f, position, SEEK_SET) == 0 && matches;
}

int checkpoint_load(const char *path, LoraSet *set, AdamWState *moments, TrainProgress *progress,
                    char *err, size_t err_size) {
    FILE *f = fopen(path, "rb");
    if (!f) { snprintf(err, err_size, "%s: cannot open: %s", path, strerror(errno)); return -1; }
    Stream s = {f, FNV_OFFSET};
    char magic[8];
    Header h;
    memset(&h, 0, sizeof h);
    int has_magic = read_all(&s, magic, sizeof magic) == 0;
    int version = !has_magic                                  ? 0
                  : memcmp(magic, MAGIC, sizeof magic) == 0    ? 3
                  : memcmp(magic, MAGIC_V2, sizeof magic) == 0 ? 2
                  : memcmp(magic, MAGIC_V1, sizeof magic) == 0 ? 1
                                                               : 0;
    if (version == 3 && !checksum_matches(f)) {
        snprintf(err, err_size, "%s: checkpoint's checksum does not match its contents: the file is corrupted or "
                 "truncated", path);
        fclose(f);
        return -1;
    }
    size_t header_bytes = version == 1 ? offsetof(Header, evals_without_improvement) : sizeof h;
    if (version == 0 || read_all(&s, &h, header_bytes)) {
        snprintf(err, err_size, "%s: not a qlora.c checkpoint (bad magic or truncated header)", path);
        fclose(f);
        return -1;
    }
    int same_shape = h.n_layers == set->n_layers && h.rank == set->rank && h.n_order == progress->n_order;
    for (int t = 0; t < N_LINEARS; t++) same_shape = same_shape && h.enabled[t] == set->enabled[t];
    if (!same_shape) {
        char saved_targets[64], run_targets[64];
        int32_t run_enabled[N_LINEARS];
        for (int t = 0; t < N_LINEARS; t++) run_enabled[t] = set->enabled[t];
        target_list(h.enabled, saved_targets, sizeof saved_targets);
        target_list(run_enabled, run_targets, sizeof run_targets);
        snprintf(err, err_size, "%s: checkpoint is for %d layers, rank %d, targets %s, %d samples; this run "
                 "has %d layers, rank %d, targets %s, %d samples: resume with the same model, data and LoRA options",
                 path, h.n_layers, h.rank, saved_targets, h.n_order, set->n_layers, set->rank, run_targets,
                 progress->n_order);
        fclose(f);
        return -1;
    }
    int failed = read_all(&s, progress->order, sizeof(int) * h.n_order) || each_tensor(set, moments, &s, read_tensor);
    // version 3 ends with the checksum of everything before it (checked above)
    uint64_t stored;
    if (version == 3) failed = failed || read_all(&s, &stored, sizeof stored);
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (failed || extra) {
        snprintf(err, err_size, "%s: checkpoint is %s", path, failed ? "truncated" : "longer than expected");
        return -1;
    }
    for (int i = 0; i < h.n_order; i++)
        if (progress->order[i] < 0 || progress->order[i] >= h.n_order || h.cursor < 0 || h.cursor > h.n_order) {
            snprintf(err, err_size, "%s: checkpoint holds an invalid data order", path);
            return -1;
        }
    if (h.evals_without_improvement < 0) {
        snprintf(err, err_size, "%s: checkpoint holds a negative early-stop count", path);
        return -1;
    }
    if (h.total_steps < 1 || h.step < 0 || h.step > h.total_steps || h.best_val < 0 || isinf(h.best_val)) {
        snprintf(err, err_size, "%s: checkpoint holds an invalid step (%d of %d) or best loss (%g): corrupted?", path,
                 h.step, h.total_steps, h.best_val);
        return -1;
    }
    const char *bad = first_bad_tensor(set, moments);
    if (bad) {
        snprintf(err, err_size, "%s: checkpoint holds a NaN or Inf in a %s weight or moment: corrupted?", path, bad);
        return -1;
    }
    progress->step = h.step;
    progress->total_steps = h.total_steps;
    progress->cursor = h.cursor;
    progress->data_rng = h.data_rng;
    progress->best_val = h.best_val;
    progress->evals_without_improvement = h.evals_without_improvement;
    return 0;
}
