// trainer/examples.cpp: ./train's samples: loading, the held-out split, shuffling
// and batching (see trainer/examples.h).
#include "trainer/examples.h"
#include "data/packing.h"
#include "data/raft.h"
#include "data/tokfile.h"
#include "formats/tensor.h"
#include "ops/random.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void examples_free(ExampleSet *set) {
    for (int i = 0; i < set->count; i++) {
        free(set->examples[i].ids);
        free(set->examples[i].targets);
        free(set->examples[i].positions);
    }
    free(set->examples);
    set->examples = NULL;
    set->count = 0;
}

int examples_longest(const ExampleSet *set) {
    int longest = 0;
    for (int i = 0; i < set->count; i++)
        if (set->examples[i].n_tokens > longest) longest = set->examples[i].n_tokens;
    return longest;
}

// Answer tokens: the targets that are learned.
static int count_answer(const int *targets, int n_tokens) {
    int n = 0;
    for (int t = 0; t < n_tokens; t++) n += targets[t] != IGNORE_TARGET;
    return n;
}

// Encodes the samples whose indices are listed; skips (and counts) those longer than max_seq.
static int encode_examples(const Tokenizer *tok, const RaftData *data, const int *indices, int n, int max_seq,
                           ExampleSet *out, int *skipped) {
    out->examples = (Example *)cpu_calloc((size_t)(n > 0 ? n : 1), sizeof(Example), "samples");
    out->count = 0;
    *skipped = 0;
    for (int i = 0; i < n; i++) {
        Example e = {NULL, NULL, 0, 0, 1, NULL};
        e.n_tokens = raft_encode(tok, &data->samples[indices[i]], &e.ids, &e.targets);
        if (e.n_tokens < 0) return -1;
        if (e.n_tokens > max_seq) {
            free(e.ids);
            free(e.targets);
            (*skipped)++;
            continue;
        }
        e.n_answer = count_answer(e.targets, e.n_tokens);
        out->examples[out->count++] = e;
    }
    return 0;
}


void examples_shuffle(int *items, int n, uint64_t *state) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(splitmix64_next(state) % (uint64_t)(i + 1));
        int tmp = items[i]; items[i] = items[j]; items[j] = tmp;
    }
}

int examples_next_micro_batch(int *order, int n_samples, int batch, int *cursor, uint64_t *rng, int *first) {
    if (*cursor >= n_samples) {
        examples_shuffle(order, n_samples, rng);
        *cursor = 0;
    }
    int left = n_samples - *cursor;
    int count = batch < left ? batch : left;
    *first = *cursor;
    *cursor += count;
    return count;
}

int examples_micro_batches_per_epoch(int n_samples, int batch) { return (n_samples + batch - 1) / batch; }

// ---- packing -----------------------------------------------------------------------

// Appends sample e to the packed row (whose arrays hold max_seq tokens).
static void append_sample(Example *row, const Example *e) {
    memcpy(row->ids + row->n_tokens, e->ids, sizeof(int) * e->n_tokens);
    memcpy(row->targets + row->n_tokens, e->targets, sizeof(int) * e->n_tokens);
    // positions restart at 0 with each sample
    for (int t = 0; t < e->n_tokens; t++) row->positions[row->n_tokens + t] = t;
    row->n_tokens += e->n_tokens;
    row->n_answer += e->n_answer;
    row->n_samples++;
}

static Example new_row(int max_seq) {
    Example row = {NULL, NULL, 0, 0, 0, NULL};
    row.ids = (int *)cpu_malloc(sizeof(int) * max_seq, "packed sequence");
    row.targets = (int *)cpu_malloc(sizeof(int) * max_seq, "packed sequence");
    row.positions = (int *)cpu_malloc(sizeof(int) * max_seq, "packed sequence");
    return row;
}

int examples_pack(const ExampleSet *set, int max_seq, int seed, ExampleSet *packed) {
    int n = set->count;
    int *order = (int *)cpu_malloc(sizeof(int) * (n > 0 ? n : 1), "packing order");
    int *lengths = (int *)cpu_malloc(sizeof(int) * (n > 0 ? n : 1), "packing lengths");
    int *row_of = (int *)cpu_malloc(sizeof(int) * (n > 0 ? n : 1), "packing rows");
    for (int i = 0; i < n; i++) order[i] = i;
    uint64_t state = (uint64_t)seed ^ 0xBACC;
    examples_shuffle(order, n, &state);
    for (int i = 0; i < n; i++) lengths[i] = set->examples[order[i]].n_tokens;
    int rows = pack_first_fit(lengths, n, max_seq, row_of);
    packed->examples = NULL;
    packed->count = 0;
    if (rows < 0) {
        fprintf(stderr, "train: --pack: a sample of %d tokens does not fit --seq %d\n", examples_longest(set),
                max_seq);
    } else {
        packed->examples = (Example *)cpu_calloc((size_t)(rows > 0 ? rows : 1), sizeof(Example), "packed sequences");
        packed->count = rows;
        for (int r = 0; r < rows; r++) packed->examples[r] = new_row(max_seq);
        for (int i = 0; i < n; i++) append_sample(&packed->examples[row_of[i]], &set->examples[order[i]]);
    }
    free(order);
    free(lengths);
    free(row_of);
    return rows < 0 ? -1 : 0;
}

double examples_fill(const ExampleSet *set, int seq_len) {
    double tokens = 0.0;
    for (int i = 0; i < set->count; i++) tokens += set->examples[i].n_tokens;
    return set->count && seq_len ? tokens / ((double)set->count * seq_len) : 0.0;
}

// ---- batches -------------------------------------------------------------------------

// Token t is the last of its sample (it has no next token to learn).
static int last_of_sample(const Example *e, int t) {
    return t + 1 == e->n_tokens || (e->positions && e->positions[t + 1] == 0);
}

double example_loss_weight(const Example *e, float prompt_weight) {
    // every token but each sample's last has a target: n_answer weigh 1, the rest prompt_weight
    int with_target = e->n_tokens - e->n_samples;
    return e->n_answer + (double)prompt_weight * (with_target - e->n_answer);
}

// Token t's position in its own sample: t when e is one sample; packed, the
// sample's own, and padding continues the last sample's.
static int position_in_sample(const Example *e, int t) {
    if (!e->positions) return t;
    if (t < e->n_tokens) return e->positions[t];
    return e->positions[e->n_tokens - 1] + (t - e->n_tokens + 1);
}

// One row of the batch: example e, padded to seq_len. weights and positions may be NULL.
static void fill_row(const Example *e, int seq_len, float prompt_weight, int *tokens, int *targets, float *weights,
                     int *positions) {
    for (int t = 0; t < seq_len; t++) {
        int real = t < e->n_tokens;
        tokens[t] = e->ids[real ? t : e->n_tokens - 1];
        targets[t] = real ? e->targets[t] : IGNORE_TARGET;
        if (positions) positions[t] = position_in_sample(e, t);
        if (!weights) continue;
        // the answer's targets weigh 1; the other tokens learn their next token too, weighted
        // prompt_weight; padding and each sample's last token learn nothing
        if (!real || last_of_sample(e, t)) {
            weights[t] = 0.0f;
        } else if (e->targets[t] != IGNORE_TARGET) {
            weights[t] = 1.0f;
        } else {
            targets[t] = e->ids[t + 1];
            weights[t] = prompt_weight;
        }
    }
}

Batch examples_batch(const ExampleSet *set, const int *order, int first, int count, float prompt_weight,
                     BatchArrays *arrays) {
    int seq_len = 0, packed = 0;
    for (int i = 0; i < count; i++) {
        const Example *e = &set->examples[order[first + i]];
        if (e->n_tokens > seq_len) seq_len = e->n_tokens;
        packed |= e->positions != NULL;
    }
    size_t n = (size_t)count * seq_len;
    arrays->tokens = (int *)cpu_malloc(sizeof(int) * n, "batch tokens");
    arrays->targets = (int *)cpu_malloc(sizeof(int) * n, "batch targets");
    arrays->weights = prompt_weight > 0.0f ? (float *)cpu_malloc(sizeof(float) * n, "batch loss weights") : NULL;
    arrays->positions = packed ? (int *)cpu_malloc(sizeof(int) * n, "batch positions") : NULL;
    for (int i = 0; i < count; i++) {
        size_t row = (size_t)i * seq_len;
        fill_row(&set->examples[order[first + i]], seq_len, prompt_weight, arrays->tokens + row,
                 arrays->targets + row, arrays->weights ? arrays->weights + row : NULL,
                 arrays->positions ? arrays->positions + row : NULL);
    }
    Batch batch = {arrays->tokens, arrays->targets, count, seq_len, arrays->weights, arrays->positions};
    return batch;
}

void batch_arrays_free(BatchArrays *arrays) {
    free(arrays->tokens);
    free(arrays->targets);
    free(arrays->weights);
    free(arrays->positions);
}

// The held-out split of JSONL data: a shuffle (seeded) whose first val_frac
// share is the validation set (none when there is a val_path).
static void split_data(const RaftData *data, const ExampleSource *src, int *train_idx, int *n_train, int *val_idx,
                       int *n_val) {
    int *order = (int *)cpu_malloc(sizeof(int) * data->count, "sample order");
    for (int i = 0; i < data->count; i++) order[i] = i;
    uint64_t state = (uint64_t)src->seed ^ 0xDA7A;
    examples_shuffle(order, data->count, &state);
    int held_out = src->val_path ? 0 : (int)(src->val_frac * data->count + 0.5);
    if (held_out >= data->count) held_out = data->count - 1;
    *n_val = held_out;
    *n_train = data->count - held_out;
    for (int i = 0; i < held_out; i++) val_idx[i] = order[i];
    for (int i = held_out; i < data->count; i++) train_idx[i - held_out] = order[i];
    free(order);
}

int examples_is_tokfile(const char *path) {
    size_t n = strlen(path);
    return n >= 4 && strcmp(path + n - 4, ".bin") == 0;
}

// When validation was asked for (n_asked samples, from where) but none of them
// fits in max_seq, the run would validate nothing: -1 with a message for a
// validation file (named), a warning for a share held out of --data (0).
static int check_some_validation(int n_asked, int n_kept, const char *where, int from_file, int max_seq) {
    if (n_asked == 0 || n_kept > 0) return 0;
    if (!from_file) {
        printf("data: warning: %s: none of the %d samples held out for validation (--val-frac) fits in --seq %d "
               "tokens: no val loss, best checkpoint or early stop\n", where, n_asked, max_seq);
        return 0;
    }
    fprintf(stderr, "train: %s: none of the %d validation samples fits in --seq %d tokens: give a larger --seq (up to "
                    "the model's context) or other validation data\n", where, n_asked, max_seq);
    return -1;
}

// JSONL samples: rendered here, validation held out of --data unless --val-data.
static int load_jsonl_examples(const ExampleSource *src, const Tokenizer *tok, ExampleSet *train_set,
                               ExampleSet *val_set, int *skipped) {
    char err[1024];
    if (src->val_path && examples_is_tokfile(src->val_path)) {
        fprintf(stderr, "train: --val-data is a .bin file from ./prepare, so --data must be one too (got %s)\n",
                src->data_path);
        return -1;
    }
    RaftData data, val_data;
    memset(&val_data, 0, sizeof val_data);
    if (raft_read_jsonl(&data, src->data_path, err, sizeof err) != 0) { fprintf(stderr, "train: %s\n", err); return -1; }
    if (src->val_path && raft_read_jsonl(&val_data, src->val_path, err, sizeof err) != 0) {
        fprintf(stderr, "train: %s\n", err);
        return -1;
    }
    int *train_idx = (int *)cpu_malloc(sizeof(int) * data.count, "sample split");
    int *val_idx = (int *)cpu_malloc(sizeof(int) * data.count, "sample split");
    int n_train, n_val, skipped_train, skipped_val;
    split_data(&data, src, train_idx, &n_train, val_idx, &n_val);
    int encode_failed = encode_examples(tok, &data, train_idx, n_train, src->max_seq, train_set, &skipped_train);
    if (src->val_path) {
        int *all = (int *)cpu_malloc(sizeof(int) * val_data.count, "validation samples");
        for (int i = 0; i < val_data.count; i++) all[i] = i;
        encode_failed |= encode_examples(tok, &val_data, all, val_data.count, src->max_seq, val_set, &skipped_val);
        free(all);
    } else {
        encode_failed |= encode_examples(tok, &data, val_idx, n_val, src->max_seq, val_set, &skipped_val);
    }
    *skipped = skipped_train + skipped_val;
    int n_val_asked = src->val_path ? val_data.count : n_val;
    free(train_idx);
    free(val_idx);
    raft_free(&data);
    raft_free(&val_data);
    if (encode_failed) { fprintf(stderr, "train: cannot render samples: out of memory\n"); return -1; }
    const char *where = src->val_path ? src->val_path : src->data_path;
    return check_some_validation(n_val_asked, val_set->count, where, src->val_path != NULL, src->max_seq);
}

// Reads a ./prepare file into set (refusing one made with another tokenizer);
// skips and counts the samples longer than max_seq. *set_id: the file's (tokfile.h).
static int read_tokfile_examples(const char *path, const Tokenizer *tok, int max_seq, ExampleSet *set, int *skipped,
                                 uint64_t *set_id) {
    TokFile file;
    char err[1024];
    int finished = tokfile_finish_set(path, err, sizeof err);
    if (finished < 0) { fprintf(stderr, "train: %s\n", err); return -1; }
    if (finished > 0) printf("data: %s: renamed %d file(s) a killed ./prepare left in their temps\n", path, finished);
    if (tokfile_read(&file, path, tok, err, sizeof err) != 0) { fprintf(stderr, "train: %s\n", err); return -1; }
    *set_id = file.set_id;
    set->examples = (Example *)cpu_calloc((size_t)(file.count > 0 ? file.count : 1), sizeof(Example), "samples");
    set->count = 0;
    for (long i = 0; i < file.count; i++) {
        TokSample *s = &file.samples[i];
        if (s->n_tokens > max_seq) { (*skipped)++; continue; }
        Example e = {s->ids, s->targets, s->n_tokens, count_answer(s->targets, s->n_tokens), 1, NULL};
        set->examples[set->count++] = e;
        s->ids = s->targets = NULL;   // the example owns them now
    }
    tokfile_free(&file);
    return 0;
}

// ./prepare's train.bin, and its validation set: --val-data, else the val.bin
// beside a file named train.bin (./prepare writes both), else none.
static int load_tokfile_examples(const ExampleSource *src, const Tokenizer *tok, ExampleSet *train_set,
                                 ExampleSet *val_set, int *skipped) {
    memset(val_set, 0, sizeof *val_set);
    *skipped = 0;
    if (src->val_path && !examples_is_tokfile(src->val_path)) {
        fprintf(stderr, "train: --data is a .bin file from ./prepare, so --val-data must be one too (got %s)\n",
                src->val_path);
        return -1;
    }
    uint64_t train_set_id, val_set_id;
    if (read_tokfile_examples(src->data_path, tok, src->max_seq, train_set, skipped, &train_set_id) != 0) return -1;
    const char *val_path = src->val_path;
    char beside[4096];
    size_t len = strlen(src->data_path), name_len = strlen("train.bin");
    if (!val_path && len >= name_len && strcmp(src->data_path + len - name_len, "train.bin") == 0) {
        snprintf(beside, sizeof beside, "%.*sval.bin", (int)(len - name_len), src->data_path);
        struct stat st;
        if (stat(beside, &st) == 0) {
            val_path = beside;
            printf("data: validation samples from %s\n", val_path);
        }
    }
    if (!val_path) return 0;
    int skipped_before = *skipped;
    if (read_tokfile_examples(val_path, tok, src->max_seq, val_set, skipped, &val_set_id) != 0) return -1;
    if (check_some_validation(val_set->count + *skipped - skipped_before, val_set->count, val_path, 1, src->max_seq) != 0)
        return -1;
    // the val.bin beside a train.bin must be of the same ./prepare run (--val-data may be any other)
    if (val_path == beside && val_set_id != train_set_id) {
        fprintf(stderr, "train: %s: from another run of ./prepare than %s (set id %016llx, not %016llx): the pair is "
                        "mixed; run ./prepare again, or name the validation file with --val-data\n", val_path,
                src->data_path, (unsigned long long)val_set_id, (unsigned long long)train_set_id);
        return -1;
    }
    return 0;
}

// -1 with a message naming path when more than half of set's samples have no
// labelled token: such a set trains on next to nothing while the loss looks fine.
static int check_labelled(const ExampleSet *set, const char *path) {
    int unlabelled = 0;
    for (int i = 0; i < set->count; i++) unlabelled += set->examples[i].n_answer == 0;
    if (2 * unlabelled <= set->count) return 0;
    fprintf(stderr, "train: %s: %d of %d samples have no labelled (answer) token: nothing to learn from them; "
                    "run ./prepare again, which drops such samples\n", path, unlabelled, set->count);
    return -1;
}

int examples_load(const ExampleSource *src, const Tokenizer *tok, ExampleSet *train, ExampleSet *val, int *skipped) {
    *skipped = 0;
    int status = examples_is_tokfile(src->data_path) ? load_tokfile_examples(src, tok, train, val, skipped)
                                                     : load_jsonl_examples(src, tok, train, val, skipped);
    return status == 0 ? check_labelled(train, src->data_path) : status;
}
