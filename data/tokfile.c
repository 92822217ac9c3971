// data/tokfile.c: writing and reading the tokenized training file (layout in
// tokfile.h), byte by byte in little-endian order on every machine.
#include "data/tokfile.h"
#include "formats/json.h"
#include "data/raft.h"
#include "formats/atomic_file.h"
#include "formats/hash.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void put_u32(unsigned char *out, uint32_t x) {
    for (int i = 0; i < 4; i++) out[i] = (unsigned char)(x >> (8 * i));
}

static void put_u64(unsigned char *out, uint64_t x) {
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)(x >> (8 * i));
}

static uint32_t get_u32(const unsigned char *in) {
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) x |= (uint32_t)in[i] << (8 * i);
    return x;
}

static uint64_t get_u64(const unsigned char *in) {
    uint64_t x = 0;
    for (int i = 0; i < 8; i++) x |= (uint64_t)in[i] << (8 * i);
    return x;
}


uint64_t tokenizer_id(const Tokenizer *t) {
    uint64_t h = FNV1A_OFFSET_BASIS;
    for (int id = 0; id < tokenizer_vocab_size(t); id++) {
        size_t len = 0;
        const char *bytes = tokenizer_token_bytes(t, id, &len);
        if (!bytes) len = 0;
        unsigned char len_bytes[4];
        put_u32(len_bytes, (uint32_t)len);
        h = fnv1a(h, len_bytes, 4);
        h = fnv1a(h, (const unsigned char *)bytes, len);
    }
    return h;
}

// ---- writing --------------------------------------------------------------------

// A sample's bytes as the file holds them: count, ids, targets, oracle,
// document count, document lengths (malloc'd; NULL when out of memory).
static unsigned char *sample_bytes(const TokSample *s, size_t *size) {
    size_t n = (size_t)s->n_tokens;
    *size = 4 + 8 * n + 8 + 4 * (size_t)s->n_documents;
    unsigned char *bytes = (unsigned char *)malloc(*size);
    if (!bytes) return NULL;
    put_u32(bytes, (uint32_t)s->n_tokens);
    for (size_t t = 0; t < n; t++) {
        put_u32(bytes + 4 + 4 * t, (uint32_t)s->ids[t]);
        put_u32(bytes + 4 + 4 * (n + t), (uint32_t)s->targets[t]);
    }
    unsigned char *meta = bytes + 4 + 8 * n;
    put_u32(meta, (uint32_t)s->oracle);
    put_u32(meta + 4, (uint32_t)s->n_documents);
    for (int d = 0; d < s->n_documents; d++) put_u32(meta + 8 + 4 * (size_t)d, (uint32_t)s->document_bytes[d]);
    return bytes;
}

// Writes a sample's bytes; -1 when out of memory (a failed write sets the
// stream's error flag, which atomic_file_close reports).
static int write_sample(FILE *f, const TokSample *s) {
    size_t size;
    unsigned char *bytes = sample_bytes(s, &size);
    if (!bytes) return -1;
    fwrite(bytes, 1, size, f);
    free(bytes);
    return 0;
}

// Every sample's bytes as written, one after another, hashed on into h.
static uint64_t hash_sample_bytes(uint64_t h, const TokSample *samples, long n) {
    for (long i = 0; i < n; i++) {
        size_t size;
        unsigned char *bytes = sample_bytes(&samples[i], &size);
        if (!bytes) { fprintf(stderr, "out of memory hashing the samples\n"); exit(3); }
        h = fnv1a(h, bytes, size);
        free(bytes);
    }
    return h;
}

// The sample count (u64), then every sample's bytes, hashed on into h.
static uint64_t hash_samples(uint64_t h, const TokSample *samples, long n) {
    unsigned char count[8];
    put_u64(count, (uint64_t)n);
    return hash_sample_bytes(fnv1a(h, count, sizeof count), samples, n);
}

uint64_t tokfile_set_id(const TokSample *train, long n_train, const TokSample *val, long n_val) {
    return hash_samples(hash_samples(FNV1A_OFFSET_BASIS, train, n_train), val, n_val);
}

int tokfile_write_temp(AtomicFile *file, const char *path, const Tokenizer *t, const TokSample *samples, long n,
                       uint64_t set_id, char *err, size_t err_size) {
    uint64_t n_tokens = 0, n_labelled = 0;
    for (long i = 0; i < n; i++) {
        if (samples[i].oracle < -1 || samples[i].oracle >= samples[i].n_documents) {
            snprintf(err, err_size, "%s: sample %ld: oracle %d is neither -1 nor one of its %d documents", path, i + 1,
                     samples[i].oracle, samples[i].n_documents);
            return -1;
        }
        n_tokens += (uint64_t)samples[i].n_tokens;
        for (int k = 0; k < samples[i].n_tokens; k++) n_labelled += samples[i].targets[k] != IGNORE_TARGET;
    }
    unsigned char header[TOKFILE_HEADER_BYTES];
    memcpy(header, TOKFILE_MAGIC, 8);
    put_u32(header + 8, TOKFILE_VERSION);
    put_u32(header + 12, (uint32_t)tokenizer_vocab_size(t));
    put_u64(header + 16, tokenizer_id(t));
    put_u64(header + 24, (uint64_t)n);
    put_u64(header + 32, n_tokens);
    put_u64(header + 40, n_labelled);
    put_u64(header + 48, set_id);
    // the checksum: FNV-1a of every byte after the header
    put_u64(header + 56, hash_sample_bytes(FNV1A_OFFSET_BASIS, samples, n));
    FILE *f = atomic_file_open(file, path, err, err_size);
    if (!f) return -1;
    fwrite(header, 1, sizeof header, f);
    for (long i = 0; i < n; i++)
        if (write_sample(f, &samples[i]) != 0) {
            snprintf(err, err_size, "%s: out of memory", path);
            atomic_file_abort(file);
            return -1;
        }
    return atomic_file_close(file, err, err_size);
}

int tokfile_write(const char *path, const Tokenizer *t, const TokSample *samples, long n, uint64_t set_id, char *err,
                  size_t err_size) {
    AtomicFile file;
    if (tokfile_write_temp(&file, path, t, samples, n, set_id, err, err_size) != 0) return -1;
    return atomic_file_rename(&file, err, err_size);
}

// ---- reading --------------------------------------------------------------------

void tokfile_free(TokFile *f) {
    for (long i = 0; i < f->count; i++) {
        free(f->samples[i].ids);
        free(f->samples[i].targets);
        free(f->samples[i].document_bytes);
    }
    free(f->samples);
    memset(f, 0, sizeof *f);
}

// Checks the header; fills f's counts. Returns -1 with the message in err.
static int read_header(TokFile *f, const unsigned char *data, size_t size, const char *path, const Tokenizer *t,
                       uint64_t *n_samples, char *err, size_t err_size) {
    if (size == 0) { snprintf(err, err_size, "%s: the file is empty", path); return -1; }
    if (size < TOKFILE_HEADER_BYTES || memcmp(data, TOKFILE_MAGIC, 8) != 0) {
        snprintf(err, err_size, "%s: not a tokenized training file (no \"%s\" header); make one with ./prepare", path,
                 TOKFILE_MAGIC);
        return -1;
    }
    uint32_t version = get_u32(data + 8);
    if (version != TOKFILE_VERSION) {
        snprintf(err, err_size, "%s: format version %u, this program reads version %d; run ./prepare again", path,
                 version, TOKFILE_VERSION);
        return -1;
    }
    f->vocab_size = get_u32(data + 12);
    f->tokenizer_id = get_u64(data + 16);
    *n_samples = get_u64(data + 24);
    f->set_id = get_u64(data + 48);
    uint64_t checksum = fnv1a(FNV1A_OFFSET_BASIS, data + TOKFILE_HEADER_BYTES, size - TOKFILE_HEADER_BYTES);
    if (checksum != get_u64(data + 56)) {
        snprintf(err, err_size, "%s: the samples do not match the file's checksum (the file was damaged or changed "
                                "after ./prepare wrote it); run ./prepare again", path);
        return -1;
    }
    if (t && (f->vocab_size != (uint32_t)tokenizer_vocab_size(t) || f->tokenizer_id != tokenizer_id(t))) {
        snprintf(err, err_size,
                 "%s: made with a different tokenizer (vocabulary of %u tokens, id %016llx) than this model's "
                 "(%d tokens, id %016llx): run ./prepare again with --model set to this model",
                 path, f->vocab_size, (unsigned long long)f->tokenizer_id, tokenizer_vocab_size(t),
                 (unsigned long long)tokenizer_id(t));
        return -1;
    }
    // each sample takes at least 20 bytes: its count, one id, one target, the oracle, the document count
    if (*n_samples > (size - TOKFILE_HEADER_BYTES) / 20) {
        snprintf(err, err_size, "%s: the header says %llu samples, more than the file can hold (truncated?)", path,
                 (unsigned long long)*n_samples);
        return -1;
    }
    return 0;
}

// Reads sample i's oracle and document lengths at *offset. Returns -1 with the message in err.
static int read_documents(TokFile *f, const unsigned char *data, size_t size, size_t *offset, long i,
                          const char *path, char *err, size_t err_size) {
    TokSample *s = &f->samples[i];
    if (size - *offset < 8) {
        snprintf(err, err_size, "%s: truncated: sample %ld of %ld lacks its oracle and documents", path, i + 1, f->count);
        return -1;
    }
    s->oracle = (int32_t)get_u32(data + *offset);
    uint32_t d = get_u32(data + *offset + 4);
    if ((size - *offset - 8) / 4 < d) {
        snprintf(err, err_size, "%s: sample %ld of %ld claims %u documents, more than the rest of the file: truncated?",
                 path, i + 1, f->count, d);
        return -1;
    }
    if (s->oracle < -1 || (int64_t)s->oracle >= (int64_t)d) {
        snprintf(err, err_size, "%s: sample %ld: oracle %d is neither -1 nor one of its %u documents", path, i + 1,
                 s->oracle, d);
        return -1;
    }
    s->document_bytes = (int *)malloc(sizeof(int) * (d ? d : 1));
    if (!s->document_bytes) { snprintf(err, err_size, "%s: out of memory", path); return -1; }
    s->n_documents = (int)d;
    for (uint32_t k = 0; k < d; k++) {
        uint32_t bytes = get_u32(data + *offset + 8 + 4 * (size_t)k);
        if (bytes > INT32_MAX) {
            snprintf(err, err_size, "%s: sample %ld: document %u claims %u bytes", path, i + 1, k + 1, bytes);
            return -1;
        }
        s->document_bytes[k] = (int)bytes;
    }
    *offset += 8 + 4 * (size_t)d;
    return 0;
}

// Reads sample i at *offset; checks its ids and targets. Returns -1 with the message in err.
static int read_sample(TokFile *f, const unsigned char *data, size_t size, size_t *offset, long i, const char *path,
                       char *err, size_t err_size) {
    if (size - *offset < 4) {
        snprintf(err, err_size, "%s: truncated: sample %ld of %ld is missing", path, i + 1, f->count);
        return -1;
    }
    uint32_t n = get_u32(data + *offset);
    if (n == 0 || (size - *offset - 4) / 8 < n) {
        snprintf(err, err_size, "%s: sample %ld of %ld claims %u tokens (%s)", path, i + 1, f->count, n,
                 n == 0 ? "a sample has at least one" : "more than the rest of the file: truncated?");
        return -1;
    }
    const unsigned char *ids = data + *offset + 4, *targets = ids + 4 * (size_t)n;
    TokSample *s = &f->samples[i];
    s->ids = (int *)malloc(sizeof(int) * n);
    s->targets = (int *)malloc(sizeof(int) * n);
    if (!s->ids || !s->targets) { snprintf(err, err_size, "%s: out of memory", path); return -1; }
    s->n_tokens = (int)n;
    for (uint32_t k = 0; k < n; k++) {
        s->ids[k] = (int32_t)get_u32(ids + 4 * (size_t)k);
        s->targets[k] = (int32_t)get_u32(targets + 4 * (size_t)k);
    }
    for (uint32_t k = 0; k < n; k++) {
        if (s->ids[k] < 0 || (uint32_t)s->ids[k] >= f->vocab_size) {
            snprintf(err, err_size, "%s: sample %ld, position %u: token id %d is outside the vocabulary of %u", path,
                     i + 1, k, s->ids[k], f->vocab_size);
            return -1;
        }
        int next = k + 1 < n ? (int)get_u32(ids + 4 * ((size_t)k + 1)) : IGNORE_TARGET;
        if (s->targets[k] != IGNORE_TARGET && s->targets[k] != next) {
            snprintf(err, err_size, "%s: sample %ld, position %u: target %d is neither %d nor the next token", path,
                     i + 1, k, s->targets[k], IGNORE_TARGET);
            return -1;
        }
        f->n_tokens++;
        f->n_labelled += s->targets[k] != IGNORE_TARGET;
    }
    *offset += 4 + 8 * (size_t)n;
    return read_documents(f, data, size, offset, i, path, err, err_size);
}

int tokfile_read(TokFile *f, const char *path, const Tokenizer *t, char *err, size_t err_size) {
    memset(f, 0, sizeof *f);
    size_t size;
    unsigned char *data = (unsigned char *)read_file(path, &size, err, err_size);
    if (!data) return -1;
    uint64_t n_samples = 0;
    int status = read_header(f, data, size, path, t, &n_samples, err, err_size);
    if (status == 0) {
        f->samples = (TokSample *)calloc((size_t)(n_samples ? n_samples : 1), sizeof(TokSample));
        if (!f->samples) { snprintf(err, err_size, "%s: out of memory", path); status = -1; }
        else f->count = (long)n_samples;
    }
    size_t offset = TOKFILE_HEADER_BYTES;
    for (long i = 0; i < f->count && status == 0; i++)
        status = read_sample(f, data, size, &offset, i, path, err, err_size);
    if (status == 0 && offset != size) {
        snprintf(err, err_size, "%s: %zu bytes after the last sample (the header says %ld samples)", path,
                 size - offset, f->count);
        status = -1;
    }
    if (status == 0 && (f->n_tokens != (long)get_u64(data + 32) || f->n_labelled != (long)get_u64(data + 40))) {
        snprintf(err, err_size, "%s: the header's token counts (%llu tokens, %llu labelled) do not match the samples "
                 "(%ld, %ld)", path, (unsigned long long)get_u64(data + 32), (unsigned long long)get_u64(data + 40),
                 f->n_tokens, f->n_labelled);
        status = -1;
    }
    free(data);
    if (status != 0) tokfile_free(f);
    return status;
}

// ---- finishing a set that a kill left half renamed --------------------------------

// The set id in path's header, or 0 when path is not a complete token file.
static uint64_t file_set_id(const char *path) {
    TokFile f;
    char err[512];
    if (tokfile_read(&f, path, NULL, err, sizeof err) != 0) return 0;
    uint64_t id = f.set_id;
    tokfile_free(&f);
    return id;
}

// The "set_id" of a report.json (16 hex digits), or 0 when it has none.
static uint64_t report_set_id(const char *path) {
    char err[512];
    JsonValue *report = json_parse_file(path, err, sizeof err);
    if (!report) return 0;
    uint64_t id = strtoull(json_get_string(report, "set_id", "0"), NULL, 16);
    json_free(report);
    return id;
}

// Renames the temps of path (atomic_file_find_temps) that carry set id
// `committed` over path. Returns how many it renamed, or -1 with the message in err.
static int finish_file(const char *path, int is_report, uint64_t committed, char *err, size_t err_size) {
    char **temps;
    int count = atomic_file_find_temps(path, &temps), renamed = 0;
    for (int i = 0; i < count; i++) {
        uint64_t id = is_report ? report_set_id(temps[i]) : file_set_id(temps[i]);
        // another run's temp (older, or killed before its renames) is not part of this set
        if (id == committed && renamed >= 0) {
            AtomicFile temp = {0};
            snprintf(temp.path, sizeof temp.path, "%s", path);
            snprintf(temp.temp_path, sizeof temp.temp_path, "%s", temps[i]);
            renamed = atomic_file_rename(&temp, err, err_size) == 0 ? renamed + 1 : -1;
        }
        free(temps[i]);
    }
    free(temps);
    return renamed;
}

int tokfile_finish_set(const char *path, char *err, size_t err_size) {
    const char *slash = strrchr(path, '/'), *name = slash ? slash + 1 : path;
    if (strcmp(name, "train.bin") != 0 && strcmp(name, "val.bin") != 0) return 0;
    char dir[ATOMIC_FILE_PATH_MAX], file[ATOMIC_FILE_PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    snprintf(file, sizeof file, "%s/train.bin", dir);
    uint64_t committed = file_set_id(file);
    if (!committed) return 0;   // no set yet, or a damaged train.bin: its reader says so
    snprintf(file, sizeof file, "%s/val.bin", dir);
    int val = finish_file(file, 0, committed, err, err_size);
    snprintf(file, sizeof file, "%s/report.json", dir);
    int report = val < 0 ? -1 : finish_file(file, 1, committed, err, err_size);
    return report < 0 ? -1 : val + report;
}
