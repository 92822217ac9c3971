// formats/gguf_write.c: GGUF v3 writer (see formats/gguf_write.h; the layout
// is in formats/gguf.c). Metadata is serialized as it is put; the tensors are
// converted to their stored type one at a time while the file is written.
#include "formats/gguf_write.h"
#include "formats/atomic_file.h"
#include "formats/float16.h"
#include "formats/ggml_blocks.h"
#include "formats/gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Values converted per parallel chunk (a multiple of the Q8_0 block).
enum { ENCODE_CHUNK = 32 * 1024 };

static void fail(GGUFWriter *w, const char *what, const char *name) {
    if (!w->error[0]) snprintf(w->error, sizeof w->error, "%s '%s'", what, name);
}

void gguf_writer_init(GGUFWriter *w) { memset(w, 0, sizeof *w); }

void gguf_writer_free(GGUFWriter *w) {
    free(w->metadata);
    for (int i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    memset(w, 0, sizeof *w);
}

// Appends n bytes to the metadata; 0 when out of memory (noted in w->error).
static int append(GGUFWriter *w, const void *bytes, size_t n) {
    if (w->error[0]) return 0;
    if (w->metadata_size + n > w->metadata_cap) {
        size_t cap = w->metadata_cap ? w->metadata_cap : 4096;
        while (cap < w->metadata_size + n) cap *= 2;
        unsigned char *grown = (unsigned char *)realloc(w->metadata, cap);
        if (!grown) {
            snprintf(w->error, sizeof w->error, "out of memory for %zu bytes of metadata", cap);
            return 0;
        }
        w->metadata = grown;
        w->metadata_cap = cap;
    }
    memcpy(w->metadata + w->metadata_size, bytes, n);
    w->metadata_size += n;
    return 1;
}

static void append_u32(GGUFWriter *w, uint32_t v) { append(w, &v, 4); }
static void append_u64(GGUFWriter *w, uint64_t v) { append(w, &v, 8); }

// A GGUF string: u64 length, then the bytes.
static void append_string(GGUFWriter *w, const char *s, size_t len) {
    append_u64(w, len);
    append(w, s, len);
}

static void put_key(GGUFWriter *w, const char *key, GGUFType type) {
    append_string(w, key, strlen(key));
    append_u32(w, (uint32_t)type);
    w->n_kv++;
}

void gguf_put_string(GGUFWriter *w, const char *key, const char *value) {
    put_key(w, key, GGUF_STRING);
    append_string(w, value, strlen(value));
}

void gguf_put_u32(GGUFWriter *w, const char *key, uint32_t value) {
    put_key(w, key, GGUF_UINT32);
    append_u32(w, value);
}

void gguf_put_f32(GGUFWriter *w, const char *key, float value) {
    put_key(w, key, GGUF_FLOAT32);
    append(w, &value, 4);
}

void gguf_put_bool(GGUFWriter *w, const char *key, int value) {
    put_key(w, key, GGUF_BOOL);
    unsigned char byte = value ? 1 : 0;
    append(w, &byte, 1);
}

void gguf_put_string_array(GGUFWriter *w, const char *key, const char *const *strings, const size_t *lens,
                           uint64_t count) {
    put_key(w, key, GGUF_ARRAY);
    append_u32(w, GGUF_STRING);
    append_u64(w, count);
    for (uint64_t i = 0; i < count; i++) append_string(w, strings[i], lens[i]);
}

void gguf_put_i32_array(GGUFWriter *w, const char *key, const int32_t *values, uint64_t count) {
    put_key(w, key, GGUF_ARRAY);
    append_u32(w, GGUF_INT32);
    append_u64(w, count);
    append(w, values, count * sizeof(int32_t));
}

void gguf_put_tensor(GGUFWriter *w, const char *name, int ndim, const int64_t *shape, DType type,
                     const float *values) {
    if (w->error[0]) return;
    const char *problem = NULL;
    if (type != DT_F32 && type != DT_F16 && type != DT_BF16 && type != DT_Q8_0)
        problem = "cannot store this type for tensor";
    else if (ndim < 1 || ndim > TENSOR_MAX_DIMS) problem = "unsupported number of dimensions for tensor";
    else if (shape[ndim - 1] % dtype_block_values(type) != 0)
        problem = "innermost dimension is not a multiple of the block size for tensor";
    if (problem) {
        fail(w, problem, name);
        return;
    }
    if (w->n_tensors == w->tensors_cap) {
        int cap = w->tensors_cap ? 2 * w->tensors_cap : 64;
        GGUFWriterTensor *grown = (GGUFWriterTensor *)realloc(w->tensors, (size_t)cap * sizeof *grown);
        if (!grown) {
            fail(w, "out of memory for tensor", name);
            return;
        }
        w->tensors = grown;
        w->tensors_cap = cap;
    }
    GGUFWriterTensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) {
        fail(w, "out of memory for tensor", name);
        return;
    }
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof(int64_t));
    t->type = type;
    t->values = values;
    w->n_tensors++;
}

static int64_t numel(const GGUFWriterTensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

static uint64_t align_up(uint64_t x) {
    return (x + GGUF_DEFAULT_ALIGNMENT - 1) / GGUF_DEFAULT_ALIGNMENT * GGUF_DEFAULT_ALIGNMENT;
}

// n values from src to dst in the stored type, in parallel chunks.
static void encode(DType type, const float *src, unsigned char *dst, int64_t n) {
    size_t chunk_bytes = dtype_nbytes(type, ENCODE_CHUNK);
    #pragma omp parallel for schedule(static) if (n > ENCODE_CHUNK)
    for (int64_t start = 0; start < n; start += ENCODE_CHUNK) {
        int64_t count = n - start < ENCODE_CHUNK ? n - start : ENCODE_CHUNK;
        const float *in = src + start;
        unsigned char *out = dst + (size_t)(start / ENCODE_CHUNK) * chunk_bytes;
        uint16_t *half = (uint16_t *)out;
        if (type == DT_F32) memcpy(out, in, (size_t)count * sizeof(float));
        else if (type == DT_F16) for (int64_t i = 0; i < count; i++) half[i] = f32_to_f16(in[i]);
        else if (type == DT_BF16) for (int64_t i = 0; i < count; i++) half[i] = f32_to_bf16(in[i]);
        else quantize_q8_0(in, out, count);
    }
}

// Zero bytes up to the next multiple of the alignment.
static void write_padding(FILE *f, uint64_t *pos) {
    static const unsigned char zeros[GGUF_DEFAULT_ALIGNMENT] = {0};
    uint64_t padded = align_up(*pos);
    fwrite(zeros, 1, (size_t)(padded - *pos), f);
    *pos = padded;
}

// Header, metadata and tensor infos; returns the bytes written.
static uint64_t write_header(const GGUFWriter *w, FILE *f) {
    const uint32_t version = 3;
    const uint64_t n_tensors = (uint64_t)w->n_tensors;
    uint64_t pos = 0;
    pos += fwrite("GGUF", 1, 4, f);
    pos += 4 * fwrite(&version, 4, 1, f);
    pos += 8 * fwrite(&n_tensors, 8, 1, f);
    pos += 8 * fwrite(&w->n_kv, 8, 1, f);
    if (w->metadata_size) pos += fwrite(w->metadata, 1, w->metadata_size, f);   // none: metadata is NULL
    uint64_t offset = 0;   // of each tensor's data, from the start of the data section
    for (int i = 0; i < w->n_tensors; i++) {
        const GGUFWriterTensor *t = &w->tensors[i];
        uint64_t name_len = strlen(t->name), ndim = (uint64_t)t->ndim;
        uint32_t ndim32 = (uint32_t)ndim, type = (uint32_t)t->type;
        pos += 8 * fwrite(&name_len, 8, 1, f);
        pos += fwrite(t->name, 1, name_len, f);
        pos += 4 * fwrite(&ndim32, 4, 1, f);
        for (int d = t->ndim - 1; d >= 0; d--) {   // GGUF lists the innermost dimension first
            uint64_t dim = (uint64_t)t->shape[d];
            pos += 8 * fwrite(&dim, 8, 1, f);
        }
        pos += 4 * fwrite(&type, 4, 1, f);
        pos += 8 * fwrite(&offset, 8, 1, f);
        offset = align_up(offset + dtype_nbytes(t->type, numel(t)));
    }
    return pos;
}

int gguf_writer_save(const GGUFWriter *w, const char *path, char *err, size_t err_size) {
    if (w->error[0]) {
        snprintf(err, err_size, "%s: %s", path, w->error);
        return -1;
    }
    size_t largest = 0;
    for (int i = 0; i < w->n_tensors; i++) {
        size_t bytes = dtype_nbytes(w->tensors[i].type, numel(&w->tensors[i]));
        if (bytes > largest) largest = bytes;
    }
    unsigned char *scratch = (unsigned char *)malloc(largest ? largest : 1);
    if (!scratch) {
        snprintf(err, err_size, "%s: out of memory for a %zu-byte tensor", path, largest);
        return -1;
    }
    AtomicFile file;
    FILE *f = atomic_file_open(&file, path, err, err_size);
    if (!f) {
        free(scratch);
        return -1;
    }
    uint64_t pos = write_header(w, f);
    write_padding(f, &pos);
    for (int i = 0; i < w->n_tensors && !ferror(f); i++) {
        const GGUFWriterTensor *t = &w->tensors[i];
        size_t bytes = dtype_nbytes(t->type, numel(t));
        encode(t->type, t->values, scratch, numel(t));
        pos += fwrite(scratch, 1, bytes, f);
        write_padding(f, &pos);
    }
    free(scratch);
    return atomic_file_commit(&file, err, err_size);   // a failed fwrite above is reported here
}
