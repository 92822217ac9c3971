// formats/ggml_blocks.c: GGML's block-quantized types (Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0) dequantized to fp32. Each block holds 32 values and an fp16 scale (and,
// for the _1 types, an fp16 minimum).
#include "formats/ggml_blocks.h"
#include "formats/float16.h"

#include <math.h>
#include <string.h>

static float read_f16(const unsigned char *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return f16_to_f32(h);
}

// Q4_0: fp16 d, 16 bytes; value = d * (q - 8). Byte j holds value j in its low
// nibble and value j + 16 in its high nibble.
void dequantize_q4_0(const void *src, float *dst, int64_t n) {
    const unsigned char *block = (const unsigned char *)src;
    for (int64_t b = 0; b < n / 32; b++, block += 18, dst += 32) {
        float d = read_f16(block);
        const unsigned char *qs = block + 2;
        for (int j = 0; j < 16; j++) {
            dst[j] = d * (float)((qs[j] & 0x0F) - 8);
            dst[j + 16] = d * (float)((qs[j] >> 4) - 8);
        }
    }
}

// Q4_1: fp16 d, fp16 m, 16 bytes; value = d * q + m.
void dequantize_q4_1(const void *src, float *dst, int64_t n) {
    const unsigned char *block = (const unsigned char *)src;
    for (int64_t b = 0; b < n / 32; b++, block += 20, dst += 32) {
        float d = read_f16(block), m = read_f16(block + 2);
        const unsigned char *qs = block + 4;
        for (int j = 0; j < 16; j++) {
            dst[j] = d * (float)(qs[j] & 0x0F) + m;
            dst[j + 16] = d * (float)(qs[j] >> 4) + m;
        }
    }
}

// Q5_0: fp16 d, u32 high bits qh, 16 bytes; q = nibble | (bit << 4); value = d * (q - 16).
// Bit j of qh is the fifth bit of value j (j < 32).
void dequantize_q5_0(const void *src, float *dst, int64_t n) {
    const unsigned char *block = (const unsigned char *)src;
    for (int64_t b = 0; b < n / 32; b++, block += 22, dst += 32) {
        float d = read_f16(block);
        uint32_t qh;
        memcpy(&qh, block + 2, 4);
        const unsigned char *qs = block + 6;
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 0x0F) | (int)(((qh >> j) & 1) << 4);
            int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            dst[j] = d * (float)(lo - 16);
            dst[j + 16] = d * (float)(hi - 16);
        }
    }
}

// Q5_1: fp16 d, fp16 m, u32 qh, 16 bytes; value = d * q + m.
void dequantize_q5_1(const void *src, float *dst, int64_t n) {
    const unsigned char *block = (const unsigned char *)src;
    for (int64_t b = 0; b < n / 32; b++, block += 24, dst += 32) {
        float d = read_f16(block), m = read_f16(block + 2);
        uint32_t qh;
        memcpy(&qh, block + 4, 4);
        const unsigned char *qs = block + 8;
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 0x0F) | (int)(((qh >> j) & 1) << 4);
            int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            dst[j] = d * (float)lo + m;
            dst[j + 16] = d * (float)hi + m;
        }
    }
}

// Q8_0: fp16 d, 32 int8; value = d * q.
void dequantize_q8_0(const void *src, float *dst, int64_t n) {
    const unsigned char *block = (const unsigned char *)src;
    for (int64_t b = 0; b < n / 32; b++, block += 34, dst += 32) {
        float d = read_f16(block);
        const int8_t *qs = (const int8_t *)(block + 2);
        for (int j = 0; j < 32; j++) dst[j] = d * (float)qs[j];
    }
}

enum { Q8_0_MAX = 127 };   // the largest |q| of a Q8_0 value

void quantize_q8_0(const float *src, void *dst, int64_t n) {
    unsigned char *block = (unsigned char *)dst;
    for (int64_t b = 0; b < n / 32; b++, block += 34, src += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(src[j]));
        // d = max|x| / 127; q = round(x / d), computed as x * (1 / d) as ggml does
        float d = amax / Q8_0_MAX;
        float inverse = d != 0.0f ? 1.0f / d : 0.0f;
        uint16_t h = f32_to_f16(d);
        memcpy(block, &h, 2);
        int8_t *qs = (int8_t *)(block + 2);
        for (int j = 0; j < 32; j++) qs[j] = (int8_t)roundf(src[j] * inverse);
    }
}
