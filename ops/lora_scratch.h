// ops/lora_scratch.h: the device scratch the LoRA and DoRA GPU functions carve
// (lora.cu, dora.cu), as plain arithmetic so that C code (the memory plan,
// trainer/memory_plan.c) counts the same bytes. act_bytes: 2 (bf16 or fp16).
#pragma once
#include <stddef.h>
#include "ops/workspace.h"

// LoRA, for `count` adapters of rank r reading one input (an input group, or one
// adapter): d_xa [n, count r] in 16-bit, then at this offset [n, in] fp32.
static inline size_t lora_scratch_input_offset(size_t n, int count, int rank, size_t act_bytes) {
    return workspace_round_up(act_bytes * n * (size_t)count * (size_t)rank);
}
static inline size_t lora_scratch_size(size_t n, int in_dim, int count, int rank, size_t act_bytes) {
    return lora_scratch_input_offset(n, count, rank, act_bytes) + sizeof(float) * n * (size_t)in_dim;
}

// DoRA, for one adapter: two [n, out] 16-bit regions, each this long, then [n, in] fp32.
static inline size_t dora_scratch_out_region(size_t n, int out_dim, size_t act_bytes) {
    return workspace_round_up(act_bytes * n * (size_t)out_dim);
}
static inline size_t dora_scratch_size(size_t n, int in_dim, int out_dim, size_t act_bytes) {
    return 2 * dora_scratch_out_region(n, out_dim, act_bytes) + sizeof(float) * n * (size_t)in_dim;
}
