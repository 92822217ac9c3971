// formats/ggml_blocks.h: dequantizers for GGML's block-quantized tensor types
// (the ones GGUF files hold): 32 values per block with an fp16 scale; and the
// Q8_0 quantizer the GGUF export writes with.
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

// n values (a multiple of 32) to Q8_0 blocks, byte for byte as ggml's
// quantize_row_q8_0_ref and the gguf package: per block d = max|x| / 127,
// q = round(x * (1 / d)) with halves away from zero, d stored as fp16.
void quantize_q8_0(const float *src, void *dst, int64_t n);

#ifdef __cplusplus
}
#endif
