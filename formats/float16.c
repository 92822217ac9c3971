// formats/float16.c: IEEE half and bfloat16 to and from fp32 (round to nearest even).
#include "formats/float16.h"

#include <string.h>

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1F;
    uint32_t mantissa = h & 0x3FF;
    uint32_t bits;
    if (exponent == 0x1F) {                 // inf / nan
        bits = sign | 0x7F800000 | (mantissa << 13);
    } else if (exponent != 0) {             // normal
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {             // zero
        bits = sign;
    } else {                                // subnormal: value = mantissa * 2^-24
        float value = (float)mantissa * (1.0f / 16777216.0f);
        memcpy(&bits, &value, 4);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t abs_bits = x & 0x7FFFFFFF;
    if (abs_bits > 0x7F800000) return sign | 0x7E00;                // nan
    if (abs_bits >= 0x477FF000) return sign | 0x7C00;               // rounds to inf
    if (abs_bits < 0x38800000) {                                   // subnormal or zero
        // half subnormal step is 2^-24; round to nearest even
        float a;
        memcpy(&a, &abs_bits, 4);
        float scaled = a * 16777216.0f;
        uint32_t m = (uint32_t)scaled;
        float rest = scaled - (float)m;
        if (rest > 0.5f || (rest == 0.5f && (m & 1))) m++;
        return sign | (uint16_t)m;
    }
    // normal: keep 10 mantissa bits, round to nearest even on the 13 dropped bits
    uint32_t rounded = abs_bits + 0xFFF + ((abs_bits >> 13) & 1);
    return sign | (uint16_t)((rounded - 0x38000000) >> 13);
}

float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7FFFFFFF) > 0x7F800000) return (uint16_t)((x >> 16) | 0x40);  // quiet nan
    // round to nearest even on the 16 dropped bits
    x += 0x7FFF + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}
