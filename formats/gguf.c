// formats/gguf.c: GGUF v3 reader. Layout (all little-endian):
//   "GGUF", u32 version, u64 tensor_count, u64 kv_count,
//   kv_count x (string key, u32 type, value),
//   tensor_count x (string name, u32 n_dims, u64 dims[n_dims] innermost first,
//                   u32 type, u64 offset),
//   padding to general.alignment, then the tensor data (offsets relative to it).
// A string is u64 length + bytes. Every read is bounds-checked: a truncated or
// lying file gives an error, never a read past the end of the mapping. The
// file is checked against itself: each tensor's rows are whole blocks of its
// type, and the tensors fill the data section exactly, each padded to the
// alignment (as llama.cpp writes and reads them), so the bytes its type and
// shape imply are the room it has; no key or tensor name appears twice.
#include "formats/gguf.h"
#include "formats/tensor_layout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The fewest bytes a metadata entry takes (key length, value type, a 1-byte
// value) and a tensor info (name length, dimension count, one dimension,
// type, offset): a header's counts are checked against the bytes left.
#define MIN_KV_BYTES (8 + 4 + 1)
#define MIN_TENSOR_INFO_BYTES (8 + 4 + 8 + 4 + 8)

typedef struct {
    const unsigned char *base;
    size_t size;
    size_t pos;
    const char *path;
    char *err;
    size_t err_size;
    int failed;
} Reader;

static int read_fail(Reader *r, const char *what) {
    if (!r->failed) snprintf(r->err, r->err_size, "%s: %s (at byte %zu)", r->path, what, r->pos);
    r->failed = 1;
    return 0;
}

static int read_bytes(Reader *r, void *out, size_t n) {
    if (r->failed) return 0;
    if (n > r->size - r->pos) return read_fail(r, "file is truncated");
    memcpy(out, r->base + r->pos, n);
    r->pos += n;
    return 1;
}

static uint32_t read_u32(Reader *r) { uint32_t v = 0; read_bytes(r, &v, 4); return v; }
static uint64_t read_u64(Reader *r) { uint64_t v = 0; read_bytes(r, &v, 8); return v; }

static GGUFString read_string(Reader *r) {
    GGUFString s = {NULL, 0};
    uint64_t len = read_u64(r);
    if (r->failed) return s;
    if (len > r->size - r->pos) { read_fail(r, "string length runs past the end of the file"); return s; }
    s.ptr = (const char *)r->base + r->pos;
    s.len = len;
    r->pos += len;
    return s;
}

static size_t scalar_size(GGUFType t) {
    switch (t) {
    case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL: return 1;
    case GGUF_UINT16: case GGUF_INT16: return 2;
    case GGUF_UINT32: case GGUF_INT32: case GGUF_FLOAT32: return 4;
    case GGUF_UINT64: case GGUF_INT64: case GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

// Reads a scalar of type t at p into the integer and float views of kv.
static void decode_scalar(GGUFType t, const unsigned char *p, GGUFKeyValue *kv) {
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
            uint64_t u64; int64_t i64; float f32; double f64; } v;
    memcpy(&v, p, scalar_size(t));
    switch (t) {
    case GGUF_UINT8: case GGUF_BOOL: kv->int_value = v.u8; break;
    case GGUF_INT8: kv->int_value = v.i8; break;
    case GGUF_UINT16: kv->int_value = v.u16; break;
    case GGUF_INT16: kv->int_value = v.i16; break;
    case GGUF_UINT32: kv->int_value = v.u32; break;
    case GGUF_INT32: kv->int_value = v.i32; break;
    case GGUF_UINT64: kv->int_value = (int64_t)v.u64; break;
    case GGUF_INT64: kv->int_value = v.i64; break;
    case GGUF_FLOAT32: kv->float_value = v.f32; break;
    case GGUF_FLOAT64: kv->float_value = v.f64; break;
    default: break;
    }
    if (t != GGUF_FLOAT32 && t != GGUF_FLOAT64) kv->float_value = (double)kv->int_value;
}

static void read_array(Reader *r, GGUFKeyValue *kv) {
    kv->array_type = (GGUFType)read_u32(r);
    kv->array_count = read_u64(r);
    if (r->failed) return;
    if (kv->array_type == GGUF_STRING) {
        // each string needs at least its 8-byte length
        if (kv->array_count > (r->size - r->pos) / 8) { read_fail(r, "array count runs past the end of the file"); return; }
        kv->array_strings = (GGUFString *)calloc(kv->array_count ? kv->array_count : 1, sizeof(GGUFString));
        if (!kv->array_strings) { read_fail(r, "out of memory"); return; }
        for (uint64_t i = 0; i < kv->array_count && !r->failed; i++) kv->array_strings[i] = read_string(r);
        return;
    }
    size_t elem = scalar_size(kv->array_type);
    if (elem == 0) { read_fail(r, "unsupported array element type (nested arrays are not supported)"); return; }
    if (kv->array_count > (r->size - r->pos) / elem) { read_fail(r, "array runs past the end of the file"); return; }
    kv->array_data = r->base + r->pos;
    r->pos += kv->array_count * elem;
}

static void read_kv(Reader *r, GGUFKeyValue *kv) {
    GGUFString key = read_string(r);
    if (r->failed) return;
    kv->key = strndup(key.ptr, key.len);
    if (!kv->key) { read_fail(r, "out of memory"); return; }
    kv->type = (GGUFType)read_u32(r);
    if (r->failed) return;
    if (kv->type == GGUF_STRING) { kv->string = read_string(r); return; }
    if (kv->type == GGUF_ARRAY) { read_array(r, kv); return; }
    size_t n = scalar_size(kv->type);
    if (n == 0) { read_fail(r, "unknown metadata value type"); return; }
    if (n > r->size - r->pos) { read_fail(r, "file is truncated"); return; }
    decode_scalar(kv->type, r->base + r->pos, kv);
    r->pos += n;
}

static int is_supported_type(uint32_t t) {
    return t == DT_F32 || t == DT_F16 || t == DT_BF16 || t == DT_Q4_0 || t == DT_Q4_1 ||
           t == DT_Q5_0 || t == DT_Q5_1 || t == DT_Q8_0;
}

// ggml's names of its tensor types (ggml.h's enum ggml_type), by number; NULL:
// a number ggml never used or no longer uses.
static const char *const GGML_TYPE_NAMES[] = {
    "F32", "F16", "Q4_0", "Q4_1", NULL, NULL, "Q5_0", "Q5_1", "Q8_0", "Q8_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
    "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
    "BF16", NULL, NULL, NULL, "TQ1_0", "TQ2_0",
};
#define N_GGML_TYPE_NAMES (sizeof GGML_TYPE_NAMES / sizeof GGML_TYPE_NAMES[0])

// Why a tensor of type t cannot be read, naming ggml's type where it is one
// (llama.cpp's k-quants, Q4_K_M files among them, are the common case).
static void describe_unsupported_type(const char *name, uint32_t t, char *what, size_t what_size) {
    const char *type = t < N_GGML_TYPE_NAMES ? GGML_TYPE_NAMES[t] : NULL;
    snprintf(what, what_size, "tensor '%s' has GGUF type %u%s%s%s, which this reader does not support (it reads "
             "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: take such a file, e.g. Q8_0 or F16, or the HF model "
             "directory)", name, t, type ? " (" : "", type ? type : "", type ? ")" : "");
}

static void read_tensor_info(Reader *r, TensorInfo *t, uint64_t *offset) {
    GGUFString name = read_string(r);
    uint32_t ndim = read_u32(r);
    if (r->failed) return;
    t->name = strndup(name.ptr, name.len);
    if (!t->name) { read_fail(r, "out of memory"); return; }
    if (ndim == 0 || ndim > TENSOR_MAX_DIMS) { read_fail(r, "tensor has an unsupported number of dimensions"); return; }
    t->ndim = (int)ndim;
    int64_t numel = 1;
    for (uint32_t i = 0; i < ndim; i++) {
        uint64_t d = read_u64(r);
        if (r->failed) return;
        if (d == 0 || d > ((uint64_t)1 << 40) || (uint64_t)numel > ((uint64_t)1 << 42) / d) {
            read_fail(r, "tensor dimension is zero or absurdly large");
            return;
        }
        t->shape[ndim - 1 - i] = (int64_t)d;   // GGUF lists innermost first
        numel *= (int64_t)d;
    }
    uint32_t type = read_u32(r);
    *offset = read_u64(r);
    if (r->failed) return;
    if (!is_supported_type(type)) {
        char what[512];
        describe_unsupported_type(t->name, type, what, sizeof what);
        read_fail(r, what);
        return;
    }
    t->dtype = (DType)type;
    // blocks run along the innermost dimension: each row is a whole number of them (as llama.cpp requires)
    if (t->shape[ndim - 1] % dtype_block_values(t->dtype) != 0) {
        char what[200];
        snprintf(what, sizeof what, "tensor '%s' has rows of %lld values, not a whole number of %s blocks (%d values)",
                 t->name, (long long)t->shape[ndim - 1], dtype_name(t->dtype), dtype_block_values(t->dtype));
        read_fail(r, what);
        return;
    }
    t->nbytes = dtype_nbytes(t->dtype, numel);
}

// Checks each tensor's [offset, offset + nbytes) is aligned and lies inside
// the data section, and that the tensors fill it exactly, each padded to the
// alignment (formats/tensor_layout.h): the nbytes its type and shape imply
// must be the room it has, so a relabelled type or shape is caught here.
static int place_tensors(GGUFFile *f, const uint64_t *offsets, Reader *r) {
    size_t data_size = f->file.size - f->data_offset;
    TensorPlace *places = (TensorPlace *)calloc(f->tensors.count ? f->tensors.count : 1, sizeof(TensorPlace));
    if (!places) return read_fail(r, "out of memory");
    for (int i = 0; i < f->tensors.count; i++) {
        TensorInfo *t = &f->tensors.tensors[i];
        char what[200];
        if (offsets[i] % f->alignment != 0) {
            snprintf(what, sizeof what, "tensor '%s' offset %llu is not aligned to %zu", t->name,
                     (unsigned long long)offsets[i], f->alignment);
            free(places);
            return read_fail(r, what);
        }
        if (offsets[i] > data_size || t->nbytes > data_size - offsets[i]) {
            snprintf(what, sizeof what, "tensor '%s' data [%llu, +%zu) lies outside the file", t->name,
                     (unsigned long long)offsets[i], t->nbytes);
            free(places);
            return read_fail(r, what);
        }
        t->data = (const unsigned char *)f->file.data + f->data_offset + offsets[i];
        places[i] = (TensorPlace){t->name, offsets[i], t->nbytes};
    }
    int status = tensor_places_check(places, f->tensors.count, f->alignment, data_size, f->path, r->err, r->err_size);
    free(places);
    if (status != 0) r->failed = 1;
    return status == 0;
}

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

// The first of n names that is given twice, or NULL; sorts names.
static const char *find_duplicate(const char **names, int n) {
    qsort(names, (size_t)n, sizeof *names, compare_strings);
    for (int i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) return names[i];
    return NULL;
}

// A metadata key or a tensor name given twice would mean two things (llama.cpp refuses both).
static int check_unique_names(const GGUFFile *f, Reader *r) {
    int n = f->n_kv > f->tensors.count ? f->n_kv : f->tensors.count;
    const char **names = (const char **)malloc((size_t)(n ? n : 1) * sizeof *names);
    if (!names) return read_fail(r, "out of memory");
    char what[200];
    for (int i = 0; i < f->n_kv; i++) names[i] = f->kv[i].key;
    const char *twice = find_duplicate(names, f->n_kv);
    if (twice) {
        snprintf(what, sizeof what, "metadata key '%s' is given twice", twice);
    } else {
        for (int i = 0; i < f->tensors.count; i++) names[i] = f->tensors.tensors[i].name;
        twice = find_duplicate(names, f->tensors.count);
        if (twice) snprintf(what, sizeof what, "tensor '%s' is listed twice", twice);
    }
    free(names);
    return twice ? read_fail(r, what) : 1;
}

static int parse(GGUFFile *f, Reader *r) {
    char magic[4];
    read_bytes(r, magic, 4);
    if (r->failed) return 0;
    if (memcmp(magic, "GGUF", 4) != 0) return read_fail(r, "not a GGUF file (bad magic)");
    f->version = read_u32(r);
    if (!r->failed && f->version != 3) return read_fail(r, "unsupported GGUF version (only 3 is supported)");
    uint64_t n_tensors = read_u64(r);
    uint64_t n_kv = read_u64(r);
    if (r->failed) return 0;
    if (n_tensors > 1000000 || n_kv > 1000000) return read_fail(r, "absurd tensor or metadata count in header");
    if (n_kv > (r->size - r->pos) / MIN_KV_BYTES || n_tensors > (r->size - r->pos) / MIN_TENSOR_INFO_BYTES) {
        char what[160];
        int kv_too_many = n_kv > (r->size - r->pos) / MIN_KV_BYTES;
        snprintf(what, sizeof what, "the header counts %llu %s, more than the file's %zu bytes can hold",
                 (unsigned long long)(kv_too_many ? n_kv : n_tensors), kv_too_many ? "metadata entries" : "tensors",
                 r->size);
        return read_fail(r, what);
    }
    f->kv = (GGUFKeyValue *)calloc(n_kv ? n_kv : 1, sizeof(GGUFKeyValue));
    if (!f->kv) return read_fail(r, "out of memory");
    for (uint64_t i = 0; i < n_kv && !r->failed; i++) {
        read_kv(r, &f->kv[i]);
        f->n_kv = (int)i + 1;
    }
    if (r->failed) return 0;
    int64_t alignment = gguf_get_int(f, "general.alignment", GGUF_DEFAULT_ALIGNMENT);
    if (alignment <= 0 || alignment > 65536 || (alignment & (alignment - 1)) != 0)
        return read_fail(r, "general.alignment is not a power of two");
    f->alignment = (size_t)alignment;
    f->tensors.tensors = (TensorInfo *)calloc(n_tensors ? n_tensors : 1, sizeof(TensorInfo));
    uint64_t *offsets = (uint64_t *)calloc(n_tensors ? n_tensors : 1, sizeof(uint64_t));
    if (!f->tensors.tensors || !offsets) { free(offsets); return read_fail(r, "out of memory"); }
    for (uint64_t i = 0; i < n_tensors && !r->failed; i++) {
        read_tensor_info(r, &f->tensors.tensors[i], &offsets[i]);
        f->tensors.count = (int)i + 1;
    }
    if (!r->failed) check_unique_names(f, r);
    if (!r->failed) {
        f->data_offset = (r->pos + f->alignment - 1) / f->alignment * f->alignment;
        if (f->data_offset > f->file.size) read_fail(r, "file ends before the tensor data");
        else place_tensors(f, offsets, r);
    }
    free(offsets);
    return !r->failed;
}

int gguf_open(GGUFFile *f, const char *path, char *err, size_t err_size) {
    memset(f, 0, sizeof *f);
    if (map_file(&f->file, path, err, err_size) != 0) return -1;
    f->path = strdup(path);
    Reader r = {(const unsigned char *)f->file.data, f->file.size, 0, path, err, err_size, 0};
    if (!parse(f, &r)) {
        gguf_close(f);
        return -1;
    }
    return 0;
}

void gguf_close(GGUFFile *f) {
    for (int i = 0; i < f->n_kv; i++) {
        free(f->kv[i].key);
        free(f->kv[i].array_strings);
    }
    free(f->kv);
    for (int i = 0; i < f->tensors.count; i++) free(f->tensors.tensors[i].name);
    free(f->tensors.tensors);
    unmap_file(&f->file);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const GGUFKeyValue *gguf_find(const GGUFFile *f, const char *key) {
    for (int i = 0; i < f->n_kv; i++)
        if (f->kv[i].key && strcmp(f->kv[i].key, key) == 0) return &f->kv[i];
    return NULL;
}

int64_t gguf_get_int(const GGUFFile *f, const char *key, int64_t fallback) {
    const GGUFKeyValue *kv = gguf_find(f, key);
    if (!kv || kv->type == GGUF_STRING || kv->type == GGUF_ARRAY || kv->type == GGUF_FLOAT32 ||
        kv->type == GGUF_FLOAT64)
        return fallback;
    return kv->int_value;
}

double gguf_get_float(const GGUFFile *f, const char *key, double fallback) {
    const GGUFKeyValue *kv = gguf_find(f, key);
    if (!kv || kv->type == GGUF_STRING || kv->type == GGUF_ARRAY) return fallback;
    return kv->float_value;
}

char *gguf_get_string(const GGUFFile *f, const char *key) {
    const GGUFKeyValue *kv = gguf_find(f, key);
    if (!kv || kv->type != GGUF_STRING) return NULL;
    return strndup(kv->string.ptr, kv->string.len);
}
