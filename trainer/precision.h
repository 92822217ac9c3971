// trainer/precision.h: ./train --precision, the number format the training
// step computes in, and which device can run which:
//   fp32  the CPU trainer (the reference: fp32 throughout); the GPU path has no
//         fp32 mode (its GEMMs and activations are 16-bit).
//   bf16  the GPU path's default where the GPU has bf16 tensor cores (sm_80 and
//         newer: A100, RTX 30xx/40xx, L4, H100): fp32's range, no loss scaling.
//   fp16  every GPU from the T4 (sm_75) up; fp16's range (+-65504) needs the
//         loss scaled (trainer/grad_scaler.h), which it gets.
//   auto  fp32 on the CPU; bf16 on a GPU of sm_80 and newer; fp16 before.
// In every mode the LoRA weights, their gradients and AdamW's moments are fp32,
// as are the residual stream and every reduction.
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { PRECISION_AUTO, PRECISION_FP32, PRECISION_BF16, PRECISION_FP16 } Precision;

// The oldest compute capability (without the dot) with bf16 tensor cores: sm_80.
#define PRECISION_BF16_MIN_CAPABILITY 80

// "auto", "fp32", "bf16", "fp16" -> *out; -1 for anything else.
int precision_parse(const char *name, Precision *out);
const char *precision_name(Precision p);
// The precision a run of `asked` computes in: on the CPU (on_gpu 0) or on a GPU
// of compute capability `capability` (75 for a T4's 7.5). An explicit choice
// the device cannot run: -1 with why in err, naming what it can.
int precision_resolve(Precision asked, int on_gpu, int capability, Precision *chosen, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
