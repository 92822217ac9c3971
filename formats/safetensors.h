// formats/safetensors.h: reader and writer for the safetensors file format
// (Hugging Face's tensor container): an 8-byte little-endian header length N,
// N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end)}},
// then the raw little-endian row-major tensor data (offsets count from there).
#pragma once
#include <stddef.h>
#include "formats/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

// Headers longer than this are refused (the same cap as the reference
// implementation): a corrupt length must not make us parse gigabytes.
#define SAFETENSORS_MAX_HEADER (100u * 1000u * 1000u)

typedef struct {
    char *path;
    MappedFile file;
    // In header order. dtype is F32, F16, BF16, I32 or I64; shape is outermost
    // first with 0 to 4 dims (ndim 0 is a scalar holding one value); data
    // points into the mapping and is aligned only as well as the writer placed
    // it (safetensors_write aligns every tensor to its element size).
    TensorList tensors;
} SafetensorsFile;

// Maps path and validates its header: known dtypes, offsets inside the file,
// sizes matching the shapes, no duplicate names, and, as the reference
// implementation, tensors that fill the data section exactly: no two share a
// byte and none is left over (formats/tensor_layout.h).
// "__metadata__" is skipped. On error returns -1 with
// "PATH: tensor 'NAME': what is wrong" (or "PATH: what is wrong") in err,
// and nothing stays allocated or mapped.
int safetensors_open(SafetensorsFile *f, const char *path, char *err, size_t err_size);
void safetensors_close(SafetensorsFile *f);

// Writes n tensors (name, dtype, ndim, shape, data, nbytes; names are
// arbitrary but unique) to path, with "__metadata__": {"format": "pt"} as
// PyTorch/peft expect. Tensors are laid out contiguously, widest element
// type first, so each one starts aligned to its element size. The file is
// written through formats/atomic_file.h (temp, fsync, rename), so an existing
// file is never left half-written. Returns 0, or -1 with a message in err.
int safetensors_write(const char *path, const TensorInfo *tensors, int n, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
