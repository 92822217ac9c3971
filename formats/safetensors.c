// formats/safetensors.c: reads a safetensors file by mapping it and checking every
// header entry against the file (a lying header gives an error, never a read
// outside the mapping), and writes one atomically (formats/atomic_file.h).
#include "formats/safetensors.h"
#include "formats/atomic_file.h"
#include "formats/json.h"
#include "formats/tensor_layout.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// JSON numbers are doubles: integers up to 2^53 are exact.
#define MAX_EXACT_INTEGER 9007199254740992.0

static const char *const DTYPE_NAMES[] = {"F32", "F16", "BF16", "I32", "I64"};
static const DType DTYPES[] = {DT_F32, DT_F16, DT_BF16, DT_I32, DT_I64};
#define N_DTYPES 5

static DType dtype_from_name(const char *name) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(name, DTYPE_NAMES[i]) == 0) return DTYPES[i];
    return DT_UNKNOWN;
}

static int dtype_is_supported(DType t) {
    for (int i = 0; i < N_DTYPES; i++)
        if (DTYPES[i] == t) return 1;
    return 0;
}

// ---- reading -----------------------------------------------------------------

// Reads a JSON number that must be a whole number in [0, 2^53].
static int read_count(const JsonValue *v, uint64_t *out) {
    if (!v || v->type != JSON_NUMBER) return 0;
    double d = v->number;
    if (!(d >= 0 && d <= MAX_EXACT_INTEGER) || (double)(uint64_t)d != d) return 0;
    *out = (uint64_t)d;
    return 1;
}

// Fills t's dtype and shape from entry; returns the byte count the shape needs
// in *nbytes. 0 on success, -1 with err set.
static int parse_dtype_and_shape(const char *path, const char *name, const JsonValue *entry, TensorInfo *t,
                                 uint64_t *nbytes, char *err, size_t err_size) {
    const JsonValue *dtype = json_get(entry, "dtype");
    if (!dtype || dtype->type != JSON_STRING) {
        snprintf(err, err_size, "%s: tensor '%s': \"dtype\" is missing or not a string", path, name);
        return -1;
    }
    t->dtype = dtype_from_name(dtype->string);
    if (t->dtype == DT_UNKNOWN) {
        snprintf(err, err_size, "%s: tensor '%s': dtype '%s' is not supported (F32, F16, BF16, I32, I64 are)",
                 path, name, dtype->string);
        return -1;
    }
    const JsonValue *shape = json_get(entry, "shape");
    if (!shape || shape->type != JSON_ARRAY || shape->count > TENSOR_MAX_DIMS) {
        snprintf(err, err_size, "%s: tensor '%s': \"shape\" must be an array of at most %d sizes", path, name,
                 TENSOR_MAX_DIMS);
        return -1;
    }
    // The limit keeps numel * element size (at most 8) inside 64 bits.
    uint64_t numel = 1, limit = UINT64_MAX / 8;
    t->ndim = (int)shape->count;
    for (int i = 0; i < t->ndim; i++) {
        uint64_t size;
        if (!read_count(&shape->items[i], &size)) {
            snprintf(err, err_size, "%s: tensor '%s': shape[%d] is not a non-negative integer", path, name, i);
            return -1;
        }
        if (size != 0 && numel > limit / size) {
            snprintf(err, err_size, "%s: tensor '%s': shape is too large", path, name);
            return -1;
        }
        numel *= size;
        t->shape[i] = (int64_t)size;
    }
    *nbytes = numel * dtype_block_bytes(t->dtype);
    return 0;
}

// Parses one header entry into t and its place in the data section;
// data_size is the length of the data section.
static int parse_entry(const char *path, const char *name, const JsonValue *entry, uint64_t data_size,
                       TensorInfo *t, TensorPlace *place, char *err, size_t err_size) {
    if (entry->type != JSON_OBJECT) {
        snprintf(err, err_size, "%s: tensor '%s': header entry is not an object", path, name);
        return -1;
    }
    uint64_t nbytes;
    if (parse_dtype_and_shape(path, name, entry, t, &nbytes, err, err_size) != 0) return -1;
    const JsonValue *offsets = json_get(entry, "data_offsets");
    uint64_t begin, end;
    if (!offsets || offsets->type != JSON_ARRAY || offsets->count != 2 || !read_count(&offsets->items[0], &begin) ||
        !read_count(&offsets->items[1], &end) || begin > end) {
        snprintf(err, err_size, "%s: tensor '%s': \"data_offsets\" must be [begin, end] with 0 <= begin <= end",
                 path, name);
        return -1;
    }
    if (end > data_size) {
        snprintf(err, err_size, "%s: tensor '%s': data_offsets [%llu, %llu) lie outside the file (%llu data bytes)",
                 path, name, (unsigned long long)begin, (unsigned long long)end, (unsigned long long)data_size);
        return -1;
    }
    if (end - begin != nbytes) {
        snprintf(err, err_size, "%s: tensor '%s': data_offsets cover %llu bytes but its %s shape needs %llu",
                 path, name, (unsigned long long)(end - begin), dtype_name(t->dtype), (unsigned long long)nbytes);
        return -1;
    }
    t->nbytes = (size_t)nbytes;
    place->begin = begin;
    place->nbytes = nbytes;
    return 0;
}

// Fills f->tensors from the parsed header; data begins at data_start. As the
// reference implementation, the tensors must fill the data section exactly:
// no two share a byte, and no byte belongs to none (formats/tensor_layout.h).
static int read_entries(SafetensorsFile *f, const JsonValue *header, size_t data_start, char *err,
                        size_t err_size) {
    f->tensors.tensors = (TensorInfo *)calloc(header->count ? header->count : 1, sizeof(TensorInfo));
    TensorPlace *places = (TensorPlace *)calloc(header->count ? header->count : 1, sizeof(TensorPlace));
    if (!f->tensors.tensors || !places) {
        free(places);
        snprintf(err, err_size, "%s: out of memory", f->path);
        return -1;
    }
    const unsigned char *data = (const unsigned char *)f->file.data + data_start;
    uint64_t data_size = f->file.size - data_start;
    int n = 0, status = 0;
    for (size_t i = 0; i < header->count && status == 0; i++) {
        const char *name = header->keys[i];
        if (strcmp(name, "__metadata__") == 0) continue;
        TensorInfo *t = &f->tensors.tensors[n];
        t->name = strdup(name);
        if (!t->name) { snprintf(err, err_size, "%s: out of memory", f->path); status = -1; break; }
        f->tensors.count = ++n;
        places[n - 1].name = t->name;
        status = parse_entry(f->path, name, &header->items[i], data_size, t, &places[n - 1], err, err_size);
        t->data = data + places[n - 1].begin;
    }
    if (status == 0) status = tensor_places_check(places, n, 1, data_size, f->path, err, err_size);
    free(places);
    return status;
}

static int parse_header(SafetensorsFile *f, char *err, size_t err_size) {
    const unsigned char *base = (const unsigned char *)f->file.data;
    size_t size = f->file.size;
    if (size < 8) {
        snprintf(err, err_size, "%s: file is truncated (%zu bytes, less than the 8-byte header length)", f->path, size);
        return -1;
    }
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = header_len << 8 | base[i];
    if (header_len > SAFETENSORS_MAX_HEADER) {
        snprintf(err, err_size, "%s: header length %llu exceeds the %u-byte limit (not a safetensors file?)",
                 f->path, (unsigned long long)header_len, SAFETENSORS_MAX_HEADER);
        return -1;
    }
    if (header_len > size - 8) {
        snprintf(err, err_size, "%s: header length %llu runs past the end of the file (%zu bytes): truncated?",
                 f->path, (unsigned long long)header_len, size);
        return -1;
    }
    char json_err[256];
    JsonValue *header = json_parse((const char *)base + 8, (size_t)header_len, json_err, sizeof json_err);
    if (!header) {
        snprintf(err, err_size, "%s: header is not valid JSON: %s", f->path, json_err);
        return -1;
    }
    int status = 0;
    if (header->type != JSON_OBJECT) {
        snprintf(err, err_size, "%s: header is not a JSON object", f->path);
        status = -1;
    } else if (header->count > (size_t)INT32_MAX) {
        snprintf(err, err_size, "%s: header has too many entries", f->path);
        status = -1;
    } else {
        status = read_entries(f, header, 8 + (size_t)header_len, err, err_size);
    }
    json_free(header);
    return status;
}

int safetensors_open(SafetensorsFile *f, const char *path, char *err, size_t err_size) {
    memset(f, 0, sizeof *f);
    if (map_file(&f->file, path, err, err_size) != 0) return -1;
    f->path = strdup(path);
    if (!f->path) {
        snprintf(err, err_size, "%s: out of memory", path);
        safetensors_close(f);
        return -1;
    }
    if (parse_header(f, err, err_size) != 0) {
        safetensors_close(f);
        return -1;
    }
    return 0;
}

void safetensors_close(SafetensorsFile *f) {
    for (int i = 0; i < f->tensors.count; i++) free(f->tensors.tensors[i].name);
    free(f->tensors.tensors);
    unmap_file(&f->file);
    free(f->path);
    memset(f, 0, sizeof *f);
}

// ---- writing -----------------------------------------------------------------

static int check_tensor_to_write(const TensorInfo *t, const char *path, char *err, size_t err_size) {
    if (!t->name || strcmp(t->name, "__metadata__") == 0) {
        snprintf(err, err_size, "%s: a tensor has no name or the reserved name '__metadata__'", path);
        return -1;
    }
    if (!dtype_is_supported(t->dtype)) {
        snprintf(err, err_size, "%s: tensor '%s': type %s cannot be stored in safetensors", path, t->name,
                 dtype_name(t->dtype));
        return -1;
    }
    if (t->ndim < 0 || t->ndim > TENSOR_MAX_DIMS) {
        snprintf(err, err_size, "%s: tensor '%s': %d dims (0 to %d allowed)", path, t->name, t->ndim, TENSOR_MAX_DIMS);
        return -1;
    }
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0) {
            snprintf(err, err_size, "%s: tensor '%s': negative size in shape", path, t->name);
            return -1;
        }
    }
    if (t->nbytes != dtype_nbytes(t->dtype, tensor_numel(t)) || (t->nbytes > 0 && !t->data)) {
        snprintf(err, err_size, "%s: tensor '%s': %zu bytes of data do not match its %s shape", path, t->name,
                 t->nbytes, dtype_name(t->dtype));
        return -1;
    }
    return 0;
}

// The order tensors are stored in: widest element type first (so every
// tensor starts aligned to its element size), then as given.
static int compare_storage_order(const void *a, const void *b) {
    const TensorInfo *x = *(const TensorInfo *const *)a, *y = *(const TensorInfo *const *)b;
    size_t wx = dtype_block_bytes(x->dtype), wy = dtype_block_bytes(y->dtype);
    if (wx != wy) return wx > wy ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int compare_name_pointers(const void *a, const void *b) {
    return strcmp((*(const TensorInfo *const *)a)->name, (*(const TensorInfo *const *)b)->name);
}

// Validates the tensors and fills order[] with them in storage order.
static int plan_layout(const char *path, const TensorInfo *tensors, int n, const TensorInfo **order, char *err,
                       size_t err_size) {
    for (int i = 0; i < n; i++) {
        if (check_tensor_to_write(&tensors[i], path, err, err_size) != 0) return -1;
        order[i] = &tensors[i];
    }
    qsort(order, (size_t)n, sizeof *order, compare_name_pointers);
    for (int i = 1; i < n; i++) {
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            snprintf(err, err_size, "%s: tensor '%s': name given twice", path, order[i]->name);
            return -1;
        }
    }
    qsort(order, (size_t)n, sizeof *order, compare_storage_order);
    return 0;
}

// Builds the header JSON, padded with spaces to a multiple of 8 bytes, into
// *header (malloc'd, *len bytes). Returns -1 when memory runs out.
static int build_header(char **header, size_t *len, const TensorInfo *const *order, int n) {
    FILE *f = open_memstream(header, len);
    if (!f) return -1;
    fputs("{\"__metadata__\":{\"format\":\"pt\"}", f);
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const TensorInfo *t = order[i];
        fputc(',', f);
        json_write_string(f, t->name);
        fprintf(f, ":{\"dtype\":\"%s\",\"shape\":[", dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) fprintf(f, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        fprintf(f, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                (unsigned long long)(offset + t->nbytes));
        offset += t->nbytes;
    }
    fputc('}', f);
    long size = ftell(f);
    for (; size >= 0 && size % 8 != 0; size++) fputc(' ', f);
    int failed = size < 0 || ferror(f);
    if (fclose(f) != 0 || failed) {
        free(*header);
        *header = NULL;
        return -1;
    }
    return 0;
}

static int write_all(FILE *out, const void *data, size_t n) {
    return n == 0 || fwrite(data, 1, n, out) == n;
}

// The 8-byte header length, the header, then every tensor's bytes in order.
static void write_contents(FILE *out, const char *header, size_t header_len, const TensorInfo *const *order, int n) {
    unsigned char length[8];
    for (int i = 0; i < 8; i++) length[i] = (unsigned char)((uint64_t)header_len >> (8 * i));
    int ok = write_all(out, length, 8) && write_all(out, header, header_len);
    for (int i = 0; i < n && ok; i++) ok = write_all(out, order[i]->data, order[i]->nbytes);
}

// The file through formats/atomic_file.h: a write error (ferror) is reported by the commit.
static int write_file(const char *path, const char *header, size_t header_len, const TensorInfo *const *order, int n,
                      char *err, size_t err_size) {
    AtomicFile file;
    if (!atomic_file_open(&file, path, err, err_size)) return -1;
    write_contents(file.f, header, header_len, order, n);
    return atomic_file_commit(&file, err, err_size);
}

int safetensors_write(const char *path, const TensorInfo *tensors, int n, char *err, size_t err_size) {
    if (n < 0) { snprintf(err, err_size, "%s: negative tensor count", path); return -1; }
    const TensorInfo **order = (const TensorInfo **)malloc((size_t)(n ? n : 1) * sizeof *order);
    if (!order) { snprintf(err, err_size, "%s: out of memory", path); return -1; }
    int status = plan_layout(path, tensors, n, order, err, err_size);
    char *header = NULL;
    size_t header_len = 0;
    if (status == 0 && build_header(&header, &header_len, order, n) != 0) {
        snprintf(err, err_size, "%s: out of memory building the header", path);
        status = -1;
    }
    if (status == 0) status = write_file(path, header, header_len, order, n, err, err_size);
    free(header);
    free(order);
    return status;
}
