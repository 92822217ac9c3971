// cuda_fp16.h stand-in (dev/cuda_on_cpu; see README.md): __half as its 16
// bits, converted to and from float as the device does (round to nearest
// even, subnormals kept, 65520 and above to infinity). As in cuda_bf16.h, the
// real header's implicit conversions and arithmetic operators are left out.
#pragma once
#include <math.h>
#include "emu_core.h"

struct __half {
    unsigned short __x;
};

// fp16 = 1 sign, 5 exponent (bias 15), 10 mantissa bits; a NaN becomes 0x7FFF, as in cuda_fp16.hpp.
static inline __half __float2half(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u, magnitude = u & 0x7fffffffu;
    __half h;
    if (magnitude > 0x7f800000u) {
        h.__x = 0x7fff;
        return h;
    }
    if (magnitude >= 0x477ff000u) {           // |f| >= 65520: rounds to infinity
        h.__x = (unsigned short)(sign | 0x7c00u);
    } else if (magnitude < 0x38800000u) {     // |f| < 2^-14: a subnormal, in units of 2^-24
        float a = fabsf(f);
        h.__x = (unsigned short)(sign | (uint32_t)nearbyintf(a * 16777216.0f));
    } else {                                  // exponent rebiased (127 -> 15), mantissa rounded to 10 bits
        uint32_t r = magnitude - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1u);
        h.__x = (unsigned short)(sign | (r >> 13));
    }
    return h;
}

static inline float __half2float(__half h) {
    uint32_t sign = (uint32_t)(h.__x & 0x8000u) << 16, exponent = (h.__x >> 10) & 0x1fu, mantissa = h.__x & 0x3ffu;
    float f;
    if (exponent == 0) {                      // zero or subnormal: mantissa * 2^-24
        f = (float)mantissa / 16777216.0f;
        return sign ? -f : f;
    }
    uint32_t u = exponent == 31 ? sign | 0x7f800000u | (mantissa << 13)
                                : sign | ((exponent + 112u) << 23) | (mantissa << 13);
    memcpy(&f, &u, 4);
    return f;
}
