// formats/ggml_blocks.h: dequantizers for GGML's block-quantized tensor types
// (the ones GGUF files hold): 32 values per block with an fp16 scale.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// n values from src to dst; n must be a multiple of the block size (32).
void dequantize_q4_0(const void *src, float *dst, int64_t n);
void dequantize_q4_1(const void *src, float *dst, int64_t n);
void dequantize_q5_0(const void *src, float *dst, int64_t n);
void dequantize_q5_1(const void *src, float *dst, int64_t n);
void dequantize_q8_0(const void *src, float *dst, int64_t n);

#ifdef __cplusplus
}
#endif
