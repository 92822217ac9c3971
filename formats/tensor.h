// formats/tensor.h: the element types a checkpoint can hold, a named view of a
// tensor's bytes inside a loaded (memory-mapped) file, and checked host buffers.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Values are GGUF's type ids, so a GGUF tensor's type maps one to one;
// the integer types only appear in safetensors (test fixtures).
typedef enum {
    DT_F32 = 0, DT_F16 = 1, DT_Q4_0 = 2, DT_Q4_1 = 3, DT_Q5_0 = 6, DT_Q5_1 = 7,
    DT_Q8_0 = 8, DT_BF16 = 30, DT_I32 = 100, DT_I64 = 101, DT_UNKNOWN = -1
} DType;

#define TENSOR_MAX_DIMS 4

typedef struct {
    char *name;
    DType dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];  // outermost first (row-major), as PyTorch writes it
    const void *data;                // points into the mapped file
    size_t nbytes;
} TensorInfo;

typedef struct {
    TensorInfo *tensors;
    int count;
} TensorList;

const char *dtype_name(DType t);
// Values per block and bytes per block (1 and the element size for plain types).
int dtype_block_values(DType t);
size_t dtype_block_bytes(DType t);
// Bytes needed for n values of type t; 0 when n is not a whole number of blocks.
size_t dtype_nbytes(DType t, int64_t n);
int64_t tensor_numel(const TensorInfo *t);
const TensorInfo *tensor_find(const TensorList *list, const char *name);

// Converts n values of any supported type to fp32.
void tensor_to_f32(DType t, const void *src, float *dst, int64_t n);
// 1 when none of the n values is NaN or Inf (a file that holds them is corrupted).
int floats_all_finite(const float *x, size_t n);

// malloc and calloc for buffers that the model or the options size: when the
// memory is not there they say which buffer did not fit and how big it is, and
// exit with status 3 (as gpu_malloc does on the GPU), instead of handing back
// NULL for a crash later.
void *cpu_malloc(size_t bytes, const char *what);
void *cpu_calloc(size_t count, size_t size, const char *what);

// A read-only memory map of a whole file.
typedef struct {
    void *data;
    size_t size;
} MappedFile;
int map_file(MappedFile *m, const char *path, char *err, size_t err_size);
void unmap_file(MappedFile *m);

#ifdef __cplusplus
}
#endif
