// trainer/checkpoint.cpp: saving and loading training state (see trainer/checkpoint.h).
#include "trainer/checkpoint.h"
#include "formats/atomic_file.h"
#include "formats/hash.h"
#include "formats/tensor.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Every version's magic is "QLORACK" and its number; this build writes and reads version 7.
static const int VERSION = 7;
static const char MAGIC[8] = {'Q', 'L', 'O', 'R', 'A', 'C', 'K', '0' + VERSION};

// The fixed-size part of the file, after the magic: 64-bit fields first, so
// that the struct has no padding and the file no unwritten bytes.
typedef struct {
    uint64_t n_params;        // floats in each of the three flat arrays
    int64_t adam_step;        // AdamW steps taken (t of its bias corrections)
    uint64_t data_rng;        // TrainProgress from here on
    double best_val;
    int32_t n_layers, rank, enabled[N_LINEARS];
    int32_t step, total_steps, cursor, n_order;
    int32_t evals_without_improvement;
    // the loss scaler (trainer/grad_scaler.h), 8-byte fields first again
    double scaler_scale, scaler_growth_factor, scaler_backoff_factor;
    int32_t scaler_enabled, scaler_growth_interval, scaler_growth_tracker, scaler_skipped_steps;
} Header;
static_assert(sizeof(Header) == 128, "the checkpoint header has no padding");

// A file being written or read, and the FNV-1a hash of every byte so far.
typedef struct {
    FILE *f;
    uint64_t hash;
} Stream;

static void hash_bytes(Stream *s, const void *data, size_t bytes) { s->hash = fnv1a(s->hash, data, bytes); }

static int write_all(Stream *s, const void *data, size_t bytes) {
    hash_bytes(s, data, bytes);
    return fwrite(data, 1, bytes, s->f) == bytes ? 0 : -1;
}

static int read_all(Stream *s, void *data, size_t bytes) {
    if (fread(data, 1, bytes, s->f) != bytes) return -1;
    hash_bytes(s, data, bytes);
    return 0;
}

static Header header_of(const LoraSet *set, const AdamWState *adam, const TrainProgress *progress) {
    Header h;
    memset(&h, 0, sizeof h);
    h.n_params = set->n_params;
    h.adam_step = adam->step;
    h.data_rng = progress->data_rng;
    h.best_val = progress->best_val;
    h.n_layers = set->n_layers;
    h.rank = set->rank;
    for (int t = 0; t < N_LINEARS; t++) h.enabled[t] = set->enabled[t];
    h.step = progress->step;
    h.total_steps = progress->total_steps;
    h.cursor = progress->cursor;
    h.n_order = progress->n_order;
    h.evals_without_improvement = progress->evals_without_improvement;
    const GradScaler *scaler = &progress->scaler;
    h.scaler_enabled = scaler->enabled;
    h.scaler_scale = scaler->scale;
    h.scaler_growth_factor = scaler->growth_factor;
    h.scaler_backoff_factor = scaler->backoff_factor;
    h.scaler_growth_interval = scaler->growth_interval;
    h.scaler_growth_tracker = scaler->growth_tracker;
    h.scaler_skipped_steps = scaler->skipped_steps;
    return h;
}

int checkpoint_save(const char *path, const char *identity, const LoraSet *set, const AdamWState *adam,
                    const TrainProgress *progress, char *err, size_t err_size) {
    AtomicFile file;
    if (!atomic_file_open(&file, path, err, err_size)) return -1;
    Header h = header_of(set, adam, progress);
    size_t state_bytes = sizeof(float) * set->n_params;
    uint64_t identity_bytes = strlen(identity);
    Stream s = {file.f, FNV1A_OFFSET_BASIS};
    int failed = write_all(&s, MAGIC, sizeof MAGIC) || write_all(&s, &h, sizeof h) ||
                 write_all(&s, &identity_bytes, sizeof identity_bytes) || write_all(&s, identity, identity_bytes) ||
                 write_all(&s, progress->order, sizeof(int) * progress->n_order) ||
                 write_all(&s, set->params, state_bytes) || write_all(&s, adam->m, state_bytes) ||
                 write_all(&s, adam->v, state_bytes);
    // the checksum of everything above, last
    uint64_t checksum = s.hash;
    failed = failed || write_all(&s, &checksum, sizeof checksum);
    if (failed) {
        snprintf(err, err_size, "%s: cannot write: %s (the previous checkpoint is untouched)", path, strerror(errno));
        atomic_file_abort(&file);
        return -1;
    }
    return atomic_file_commit(&file, err, err_size);
}

// The version a magic names: 1 to VERSION for "QLORACK1" ... , else 0 (not a checkpoint).
static int magic_version(const char magic[8]) {
    if (memcmp(magic, MAGIC, 7) != 0 || magic[7] < '1' || magic[7] > '0' + VERSION) return 0;
    return magic[7] - '0';
}

// The hash of every byte but the last 8 equals those 8. Checked before the
// header is trusted, so that a flipped bit in it reads as corruption, not as a
// checkpoint of another shape. Leaves f where it was.
static int checksum_matches(FILE *f) {
    long position = ftell(f);
    if (position < 0 || fseek(f, 0, SEEK_END) != 0) return 0;
    long size = ftell(f);
    rewind(f);
    if (size < 8) return 0;
    Stream s = {f, FNV1A_OFFSET_BASIS};
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

// Reads the magic and the header, refusing another version and a corrupted
// file (message in err). Returns 0 or -1.
static int read_header(Stream *s, const char *path, Header *h, char *err, size_t err_size) {
    char magic[8];
    int version = read_all(s, magic, sizeof magic) == 0 ? magic_version(magic) : 0;
    if (version == 0) {
        snprintf(err, err_size, "%s: not a qlora.c checkpoint (bad magic)", path);
        return -1;
    }
    if (version != VERSION) {
        snprintf(err, err_size, "%s: checkpoint format version %d is from an older build of qlora.c; this build "
                 "reads version %d only: restart the run, or finish it with the build that wrote it", path, version,
                 VERSION);
        return -1;
    }
    if (!checksum_matches(s->f)) {
        snprintf(err, err_size, "%s: checkpoint's checksum does not match its contents: the file is corrupted or "
                 "truncated", path);
        return -1;
    }
    if (read_all(s, h, sizeof *h)) {
        snprintf(err, err_size, "%s: not a qlora.c checkpoint (truncated header)", path);
        return -1;
    }
    return 0;
}

// The header describes set's shape and n_order samples; else the message in err, -1.
static int check_shape(const char *path, const Header *h, const LoraSet *set, int n_order, char *err,
                       size_t err_size) {
    int same_shape = h->n_layers == set->n_layers && h->rank == set->rank && h->n_params == set->n_params &&
                     h->n_order == n_order;
    for (int t = 0; t < N_LINEARS; t++) same_shape = same_shape && h->enabled[t] == set->enabled[t];
    if (same_shape) return 0;
    char saved_targets[64] = "", run_targets[64] = "";
    for (int t = 0; t < N_LINEARS; t++) {
        if (h->enabled[t]) snprintf(saved_targets + strlen(saved_targets), sizeof saved_targets - strlen(saved_targets),
                                    "%s%s", saved_targets[0] ? "," : "", LINEAR_NAMES[t]);
        if (set->enabled[t]) snprintf(run_targets + strlen(run_targets), sizeof run_targets - strlen(run_targets),
                                      "%s%s", run_targets[0] ? "," : "", LINEAR_NAMES[t]);
    }
    snprintf(err, err_size, "%s: checkpoint is for %d layers, rank %d, targets %s (%llu parameters), %d samples; "
             "this run has %d layers, rank %d, targets %s (%zu parameters), %d samples: resume with the same model, "
             "data and LoRA options", path, h->n_layers, h->rank, saved_targets, (unsigned long long)h->n_params,
             h->n_order, set->n_layers, set->rank, run_targets, set->n_params, n_order);
    return -1;
}

// What a flipped byte the checksum missed could still make impossible: the
// data order, the step counts, the best loss, NaN or Inf in a flat array.
static int check_values(const char *path, const Header *h, const int *order, const LoraSet *set,
                        const AdamWState *adam, char *err, size_t err_size) {
    for (int i = 0; i < h->n_order; i++)
        if (order[i] < 0 || order[i] >= h->n_order || h->cursor < 0 || h->cursor > h->n_order) {
            snprintf(err, err_size, "%s: checkpoint holds an invalid data order", path);
            return -1;
        }
    if (h->evals_without_improvement < 0) {
        snprintf(err, err_size, "%s: checkpoint holds a negative early-stop count", path);
        return -1;
    }
    // a power of two, positive and finite; counts in range
    int scale_exponent;
    int scaler_ok = (h->scaler_enabled == 0 || h->scaler_enabled == 1) && isfinite(h->scaler_scale) &&
                    h->scaler_scale > 0 && frexp(h->scaler_scale, &scale_exponent) == 0.5 &&
                    h->scaler_growth_interval >= 1 && h->scaler_growth_tracker >= 0 &&
                    h->scaler_growth_tracker < h->scaler_growth_interval && h->scaler_skipped_steps >= 0 &&
                    h->scaler_skipped_steps <= h->step && h->scaler_growth_factor > 1 && h->scaler_backoff_factor > 0 &&
                    h->scaler_backoff_factor < 1;
    if (!scaler_ok) {
        snprintf(err, err_size, "%s: checkpoint holds an invalid loss scaler (scale %g, tracker %d of %d, %d skipped "
                 "steps): corrupted?", path, h->scaler_scale, h->scaler_growth_tracker, h->scaler_growth_interval,
                 h->scaler_skipped_steps);
        return -1;
    }
    if (h->total_steps < 1 || h->step < 0 || h->step > h->total_steps || h->adam_step < 0 || h->best_val < 0 ||
        isinf(h->best_val)) {
        snprintf(err, err_size, "%s: checkpoint holds an invalid step (%d of %d, AdamW %lld) or best loss (%g): "
                 "corrupted?", path, h->step, h->total_steps, (long long)h->adam_step, h->best_val);
        return -1;
    }
    const float *arrays[3] = {set->params, adam->m, adam->v};
    const char *names[3] = {"weights", "AdamW first moments", "AdamW second moments"};
    for (int k = 0; k < 3; k++) {
        char tensor[64];
        if (!lora_set_find_non_finite(set, arrays[k], tensor, sizeof tensor)) continue;
        snprintf(err, err_size, "%s: checkpoint holds a NaN or Inf in the %s (first: %s): corrupted?", path, names[k],
                 tensor);
        return -1;
    }
    return 0;
}

// The run's identity after the header: its length (u64), then its text; a
// length the file cannot hold reads as corruption. *identity is malloc'd.
static int read_identity(Stream *s, const char *path, char **identity, char *err, size_t err_size) {
    uint64_t bytes = 0;
    if (read_all(s, &bytes, sizeof bytes) || bytes > CHECKPOINT_IDENTITY_MAX) {
        snprintf(err, err_size, "%s: checkpoint's run identity is truncated or too long: corrupted?", path);
        return -1;
    }
    *identity = (char *)cpu_malloc(bytes + 1, "checkpoint identity");
    if (read_all(s, *identity, bytes)) {
        snprintf(err, err_size, "%s: checkpoint's run identity is truncated", path);
        return -1;
    }
    (*identity)[bytes] = '\0';
    return 0;
}

// The value of line "KEY VALUE" in identity (up to the line's end), or NULL; *length gets its length.
static const char *identity_value(const char *identity, const char *key, size_t key_length, size_t *length) {
    for (const char *line = identity; *line; line += strcspn(line, "\n") + (line[strcspn(line, "\n")] != 0)) {
        if (strncmp(line, key, key_length) != 0 || line[key_length] != ' ') continue;
        const char *value = line + key_length + 1;
        *length = strcspn(value, "\n");
        return value;
    }
    return NULL;
}

// Appends to err (at *used) every key of a whose value in b differs or is missing,
// with both values; returns how many.
static int append_differences(const char *a, const char *b, int a_is_saved, char *err, size_t err_size,
                              size_t *used) {
    int differences = 0;
    for (const char *line = a; *line; line += strcspn(line, "\n") + (line[strcspn(line, "\n")] != 0)) {
        size_t key_length = strcspn(line, " \n"), a_length = 0, b_length = 0;
        const char *a_value = identity_value(a, line, key_length, &a_length);
        const char *b_value = identity_value(b, line, key_length, &b_length);
        if (b_value && !a_is_saved) continue;   // keys in both were compared when a was the saved one
        if (b_value && a_length == b_length && memcmp(a_value, b_value, a_length) == 0) continue;
        const char *saved = a_is_saved ? a_value : b_value, *now = a_is_saved ? b_value : a_value;
        size_t saved_length = a_is_saved ? a_length : b_length, now_length = a_is_saved ? b_length : a_length;
        if (*used < err_size)
            *used += snprintf(err + *used, err_size - *used, "\n  %.*s: the checkpoint's %.*s, this run's %.*s",
                              (int)key_length, line, (int)(saved ? saved_length : 6), saved ? saved : "(none)",
                              (int)(now ? now_length : 6), now ? now : "(none)");
        differences++;
    }
    return differences;
}

// The saved identity equals this run's; else err names every option that
// differs, with both values. Returns 0 or -1.
static int compare_identity(const char *path, const char *saved, const char *now, char *err, size_t err_size) {
    if (strcmp(saved, now) == 0) return 0;
    size_t used = (size_t)snprintf(err, err_size, "%s: this run is not the one the checkpoint holds; resume with "
                                   "its options (or start a new run with --out elsewhere, or --overwrite):", path);
    int differences = append_differences(saved, now, 1, err, err_size, &used);
    differences += append_differences(now, saved, 0, err, err_size, &used);
    if (differences == 0 && used < err_size)
        snprintf(err + used, err_size - used, " the options are written differently");
    return -1;
}

int checkpoint_load(const char *path, const char *identity, LoraSet *set, AdamWState *adam, TrainProgress *progress, char *err,
                    size_t err_size) {
    FILE *f = fopen(path, "rb");
    if (!f) { snprintf(err, err_size, "%s: cannot open: %s", path, strerror(errno)); return -1; }
    Stream s = {f, FNV1A_OFFSET_BASIS};
    Header h;
    char *saved_identity = NULL;
    int refused = read_header(&s, path, &h, err, err_size) != 0 ||
                  read_identity(&s, path, &saved_identity, err, err_size) != 0 ||
                  compare_identity(path, saved_identity, identity, err, err_size) != 0 ||
                  check_shape(path, &h, set, progress->n_order, err, err_size) != 0;
    free(saved_identity);
    if (refused) {
        fclose(f);
        return -1;
    }
    size_t state_bytes = sizeof(float) * set->n_params;
    uint64_t stored_checksum;
    int failed = read_all(&s, progress->order, sizeof(int) * h.n_order) || read_all(&s, set->params, state_bytes) ||
                 read_all(&s, adam->m, state_bytes) || read_all(&s, adam->v, state_bytes) ||
                 read_all(&s, &stored_checksum, sizeof stored_checksum);
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (failed || extra) {
        snprintf(err, err_size, "%s: checkpoint is %s", path, failed ? "truncated" : "longer than expected");
        return -1;
    }
    if (check_values(path, &h, progress->order, set, adam, err, err_size) != 0) return -1;
    adam->step = h.adam_step;
    progress->step = h.step;
    progress->total_steps = h.total_steps;
    progress->cursor = h.cursor;
    progress->data_rng = h.data_rng;
    progress->best_val = h.best_val;
    progress->evals_without_improvement = h.evals_without_improvement;
    GradScaler *scaler = &progress->scaler;
    scaler->enabled = h.scaler_enabled;
    scaler->scale = (float)h.scaler_scale;
    scaler->growth_factor = h.scaler_growth_factor;
    scaler->backoff_factor = h.scaler_backoff_factor;
    scaler->growth_interval = h.scaler_growth_interval;
    scaler->growth_tracker = h.scaler_growth_tracker;
    scaler->skipped_steps = h.scaler_skipped_steps;
    return 0;
}
