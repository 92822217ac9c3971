// formats/float16.h: the two 16-bit float formats, IEEE half (fp16) and
// bfloat16, to and from fp32 (round to nearest even).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

#ifdef __cplusplus
}
#endif
