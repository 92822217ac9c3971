// formats/tensor_layout.h: the check that a file's tensors fill its data
// section exactly. Taken by offset, the first tensor starts at 0, each next
// one where the one before ends (rounded up to the file's alignment), and the
// last one ends the file: no byte belongs to two tensors, none to no tensor.
// safetensors (alignment 1) and GGUF (general.alignment, as llama.cpp's
// reader and writer) both lay files out so; a tensor whose type or shape was
// changed, or whose offset lies, breaks the tiling and is caught at load.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// A tensor's place in a file's data section: bytes [begin, begin + nbytes),
// where nbytes is what its shape and type imply.
typedef struct {
    const char *name;
    uint64_t begin;
    uint64_t nbytes;
} TensorPlace;

// Sorts places by begin and checks that they tile the data section of
// data_size bytes. The last tensor's padding may be absent (a file may end
// where its data ends). 0, or -1 with "PATH: what is wrong" in err, naming the
// tensor (both tensors for an overlap or a gap between two).
int tensor_places_check(TensorPlace *places, int n, uint64_t alignment, uint64_t data_size, const char *path,
                        char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
