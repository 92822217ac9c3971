// ops/workspace.h: a workspace is one device buffer that a GPU function carves
// into regions, so that it allocates nothing per call: the caller allocates it
// once, of the size the function's *_workspace_bytes says, and hands it over.
// The function's one layout function places every region (each start 256-byte
// aligned, as cudaMalloc's allocations are, for cuBLAS and wide loads): without a
// buffer it gives the size, with one the regions. Plain arithmetic, so that C
// code (trainer/memory_plan.c) can count the same bytes.
#pragma once
#include <stddef.h>

// Every region of a workspace starts at a multiple of this many bytes.
#define WORKSPACE_ALIGN_BYTES 256

// bytes rounded up to a multiple of WORKSPACE_ALIGN_BYTES.
static inline size_t workspace_round_up(size_t bytes) {
    return (bytes + WORKSPACE_ALIGN_BYTES - 1) / WORKSPACE_ALIGN_BYTES * WORKSPACE_ALIGN_BYTES;
}

// Lays out the next region of `bytes`: returns its offset from the workspace's
// start, and moves *used (the bytes laid out so far) past it.
static inline size_t workspace_region(size_t *used, size_t bytes) {
    size_t offset = *used;
    *used += workspace_round_up(bytes);
    return offset;
}
