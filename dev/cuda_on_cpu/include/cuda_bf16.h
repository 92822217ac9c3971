// cuda_bf16.h stand-in (dev/cuda_on_cpu; see README.md): __nv_bfloat16 as its
// 16 bits, converted to and from float as the device does. The real header
// also has implicit conversions and arithmetic operators; they are left out,
// so that a use of them in the project fails to compile here and is seen.
#pragma once
#include "emu_core.h"

struct __nv_bfloat16 {
    unsigned short __x;
};

// Rounds to nearest even; a NaN becomes the canonical bf16 NaN 0x7FFF, as in cuda_bf16.hpp.
static inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        h.__x = 0x7fff;
    else
        h.__x = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return h;
}
static inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.__x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
