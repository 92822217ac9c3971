// formats/gguf.h: reader for GGUF v3 files (llama.cpp's single-file model format):
// header, typed metadata, tensor infos (formats/ggml_blocks.h dequantizes the
// block types they may have).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "formats/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

// Where tensor data starts and each tensor's offset is a multiple of this,
// unless general.alignment says otherwise (GGUF v3's default).
enum { GGUF_DEFAULT_ALIGNMENT = 32 };

typedef enum {
    GGUF_UINT8 = 0, GGUF_INT8 = 1, GGUF_UINT16 = 2, GGUF_INT16 = 3, GGUF_UINT32 = 4,
    GGUF_INT32 = 5, GGUF_FLOAT32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9,
    GGUF_UINT64 = 10, GGUF_INT64 = 11, GGUF_FLOAT64 = 12
} GGUFType;

typedef struct {
    const char *ptr;   // into the mapped file, NOT NUL-terminated
    uint64_t len;
} GGUFString;

typedef struct {
    char *key;
    GGUFType type;
    // scalars (any integer or bool type is also readable as int_value)
    int64_t int_value;
    double float_value;
    GGUFString string;
    // arrays
    GGUFType array_type;
    uint64_t array_count;
    const void *array_data;    // numeric arrays: the packed values in the file
    GGUFString *array_strings; // string arrays: one entry per element
} GGUFKeyValue;

typedef struct {
    char *path;
    MappedFile file;
    uint32_t version;
    int n_kv;
    GGUFKeyValue *kv;
    TensorList tensors;   // names as in the file; shape reversed to outermost first
    size_t alignment;
    size_t data_offset;   // start of the tensor data section
} GGUFFile;

// Opens and validates path: every read in bounds, supported tensor types,
// rows of whole blocks, tensors that fill the data section exactly (no gap,
// no overlap, no trailing bytes: formats/tensor_layout.h), no name given
// twice. On error returns -1 and a message naming the file (and the tensor or
// key) and what is wrong; nothing stays allocated.
int gguf_open(GGUFFile *f, const char *path, char *err, size_t err_size);
void gguf_close(GGUFFile *f);

const GGUFKeyValue *gguf_find(const GGUFFile *f, const char *key);
// Typed getters; they return fallback when the key is missing or has another type.
int64_t gguf_get_int(const GGUFFile *f, const char *key, int64_t fallback);
double gguf_get_float(const GGUFFile *f, const char *key, double fallback);
// A malloc'd NUL-terminated copy, or NULL when missing.
char *gguf_get_string(const GGUFFile *f, const char *key);

#ifdef __cplusplus
}
#endif
