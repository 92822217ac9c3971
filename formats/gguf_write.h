// formats/gguf_write.h: writer for GGUF v3 files (the layout formats/gguf.c
// reads): typed metadata and tensors, given as fp32 and stored as F32, F16,
// BF16 or Q8_0. Metadata and tensor infos are collected first; the file is
// written in one go through formats/atomic_file (temp, fsync, rename), so a
// failed write leaves no half file.
//
//   GGUFWriter w;
//   gguf_writer_init(&w);
//   gguf_put_string(&w, "general.architecture", "llama");
//   gguf_put_tensor(&w, "token_embd.weight", 2, shape, DT_F16, values);
//   gguf_writer_save(&w, "model.gguf", err, sizeof err);
//   gguf_writer_free(&w);
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "formats/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char *name;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];   // outermost first, as TensorInfo
    DType type;                       // what the file stores
    const float *values;              // the caller's; read when the file is saved
} GGUFWriterTensor;

typedef struct {
    unsigned char *metadata;          // the key/value pairs as the file holds them
    size_t metadata_size, metadata_cap;
    uint64_t n_kv;
    GGUFWriterTensor *tensors;
    int n_tensors, tensors_cap;
    char error[256];                  // the first thing that went wrong ("" when none)
} GGUFWriter;

void gguf_writer_init(GGUFWriter *w);
void gguf_writer_free(GGUFWriter *w);

// Metadata, in the order given. A failure (out of memory) is kept in
// w->error and reported by gguf_writer_save.
void gguf_put_string(GGUFWriter *w, const char *key, const char *value);
void gguf_put_u32(GGUFWriter *w, const char *key, uint32_t value);
void gguf_put_f32(GGUFWriter *w, const char *key, float value);
void gguf_put_bool(GGUFWriter *w, const char *key, int value);
// count strings; strings[i] has lens[i] bytes.
void gguf_put_string_array(GGUFWriter *w, const char *key, const char *const *strings, const size_t *lens,
                           uint64_t count);
void gguf_put_i32_array(GGUFWriter *w, const char *key, const int32_t *values, uint64_t count);

// A tensor of shape[0..ndim) (outermost first) whose fp32 values the file
// stores as type: DT_F32, DT_F16, DT_BF16 (round to nearest even) or DT_Q8_0
// (its innermost dimension a multiple of 32). values must stay valid until
// gguf_writer_save. Another type or shape is kept in w->error.
void gguf_put_tensor(GGUFWriter *w, const char *name, int ndim, const int64_t *shape, DType type,
                     const float *values);

// Writes the file: header, metadata, tensor infos, then each tensor's data at
// an offset aligned to GGUF_DEFAULT_ALIGNMENT. Returns 0, or -1 with
// "PATH: what went wrong" in err: no temp left, an old PATH untouched.
int gguf_writer_save(const GGUFWriter *w, const char *path, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
