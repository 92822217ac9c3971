// formats/tensor.c: element types, conversion of any of them to fp32, file mapping, and checked host buffers.
#include "formats/tensor.h"
#include "formats/float16.h"
#include "formats/ggml_blocks.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

const char *dtype_name(DType t) {
    switch (t) {
    case DT_F32: return "F32";
    case DT_F16: return "F16";
    case DT_BF16: return "BF16";
    case DT_Q4_0: return "Q4_0";
    case DT_Q4_1: return "Q4_1";
    case DT_Q5_0: return "Q5_0";
    case DT_Q5_1: return "Q5_1";
    case DT_Q8_0: return "Q8_0";
    case DT_I32: return "I32";
    case DT_I64: return "I64";
    default: return "unknown";
    }
}

int dtype_block_values(DType t) {
    switch (t) {
    case DT_Q4_0: case DT_Q4_1: case DT_Q5_0: case DT_Q5_1: case DT_Q8_0: return 32;
    default: return 1;
    }
}

size_t dtype_block_bytes(DType t) {
    switch (t) {
    case DT_F32: case DT_I32: return 4;
    case DT_F16: case DT_BF16: return 2;
    case DT_I64: return 8;
    case DT_Q4_0: return 2 + 16;          // fp16 d, 32 nibbles
    case DT_Q4_1: return 2 + 2 + 16;      // fp16 d, fp16 m, 32 nibbles
    case DT_Q5_0: return 2 + 4 + 16;      // fp16 d, 32 high bits, 32 nibbles
    case DT_Q5_1: return 2 + 2 + 4 + 16;  // fp16 d, fp16 m, 32 high bits, 32 nibbles
    case DT_Q8_0: return 2 + 32;          // fp16 d, 32 int8
    default: return 0;
    }
}

size_t dtype_nbytes(DType t, int64_t n) {
    int64_t block = dtype_block_values(t);
    if (n < 0 || n % block != 0) return 0;
    return (size_t)(n / block) * dtype_block_bytes(t);
}

int64_t tensor_numel(const TensorInfo *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

const TensorInfo *tensor_find(const TensorList *list, const char *name) {
    for (int i = 0; i < list->count; i++)
        if (strcmp(list->tensors[i].name, name) == 0) return &list->tensors[i];
    return NULL;
}

int floats_all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

static void exit_out_of_memory(size_t bytes, const char *what) {
    fprintf(stderr,
            "out of memory: %s needs %.1f MiB, which this machine could not give.\n"
            "  Lower --batch or --seq, or use --recompute 1 (and --quant nf4), to need less.\n",
            what, bytes / 1048576.0);
    exit(3);
}

void *cpu_malloc(size_t bytes, const char *what) {
    void *p = malloc(bytes > 0 ? bytes : 1);
    if (!p) exit_out_of_memory(bytes, what);
    return p;
}

void *cpu_calloc(size_t count, size_t size, const char *what) {
    void *p = calloc(count > 0 ? count : 1, size > 0 ? size : 1);
    // count * size for the message, saturated (calloc refuses a product that overflows)
    if (!p) exit_out_of_memory(size > 0 && count > SIZE_MAX / size ? SIZE_MAX : count * size, what);
    return p;
}

// Element i of an array of 2-, 4- or 8-byte values that may lie at any address:
// a safetensors tensor starts wherever its writer put it, a GGUF tensor at any
// multiple of general.alignment, which may be 1.
static uint16_t load_u16(const unsigned char *p, int64_t i) { uint16_t v; memcpy(&v, p + 2 * i, 2); return v; }
static int32_t load_i32(const unsigned char *p, int64_t i) { int32_t v; memcpy(&v, p + 4 * i, 4); return v; }
static int64_t load_i64(const unsigned char *p, int64_t i) { int64_t v; memcpy(&v, p + 8 * i, 8); return v; }

void tensor_to_f32(DType t, const void *src, float *dst, int64_t n) {
    const unsigned char *p = (const unsigned char *)src;
    switch (t) {
    case DT_F32: memcpy(dst, src, (size_t)n * 4); break;
    case DT_F16: for (int64_t i = 0; i < n; i++) dst[i] = f16_to_f32(load_u16(p, i)); break;
    case DT_BF16: for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(load_u16(p, i)); break;
    case DT_Q4_0: dequantize_q4_0(src, dst, n); break;
    case DT_Q4_1: dequantize_q4_1(src, dst, n); break;
    case DT_Q5_0: dequantize_q5_0(src, dst, n); break;
    case DT_Q5_1: dequantize_q5_1(src, dst, n); break;
    case DT_Q8_0: dequantize_q8_0(src, dst, n); break;
    case DT_I32: for (int64_t i = 0; i < n; i++) dst[i] = (float)load_i32(p, i); break;
    case DT_I64: for (int64_t i = 0; i < n; i++) dst[i] = (float)load_i64(p, i); break;
    default: memset(dst, 0, (size_t)n * 4); break;  // callers validate the type first
    }
}

int map_file(MappedFile *m, const char *path, char *err, size_t err_size) {
    m->data = NULL;
    m->size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) { snprintf(err, err_size, "%s: cannot open: %s", path, strerror(errno)); return -1; }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, err_size, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    if (st.st_size == 0) {
        snprintf(err, err_size, "%s: file is empty", path);
        close(fd);
        return -1;
    }
    void *data = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (data == MAP_FAILED) { snprintf(err, err_size, "%s: mmap failed: %s", path, strerror(errno)); return -1; }
    m->data = data;
    m->size = (size_t)st.st_size;
    return 0;
}

void unmap_file(MappedFile *m) {
    if (m->data) munmap(m->data, m->size);
    m->data = NULL;
    m->size = 0;
}
