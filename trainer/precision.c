// trainer/precision.c: which precision a run computes in (see trainer/precision.h).
#include "trainer/precision.h"

#include <stdio.h>
#include <string.h>

static const char *const NAMES[] = {"auto", "fp32", "bf16", "fp16"};

int precision_parse(const char *name, Precision *out) {
    for (int p = PRECISION_AUTO; p <= PRECISION_FP16; p++) {
        if (strcmp(name, NAMES[p]) != 0) continue;
        *out = (Precision)p;
        return 0;
    }
    return -1;
}

const char *precision_name(Precision p) { return NAMES[p]; }

int precision_resolve(Precision asked, int on_gpu, int capability, Precision *chosen, char *err, size_t err_size) {
    int has_bf16 = capability >= PRECISION_BF16_MIN_CAPABILITY;
    if (!on_gpu) {
        *chosen = PRECISION_FP32;
        if (asked == PRECISION_AUTO || asked == PRECISION_FP32) return 0;
        snprintf(err, err_size, "--precision %s: the CPU trainer computes in fp32 (it is the reference); bf16 and "
                 "fp16 are the GPU path's (--device cuda)", NAMES[asked]);
        return -1;
    }
    if (asked == PRECISION_FP32) {
        snprintf(err, err_size, "--precision fp32: the GPU path computes in 16 bits (%s on this GPU, sm_%d); fp32 "
                 "throughout is the CPU trainer's (--device cpu)", has_bf16 ? "bf16 or fp16" : "fp16", capability);
        return -1;
    }
    if (asked == PRECISION_BF16 && !has_bf16) {
        snprintf(err, err_size, "--precision bf16: this GPU (sm_%d) has no bf16 tensor cores (they start at sm_%d: "
                 "A100, RTX 30xx); use --precision fp16 (or auto), which scales the loss", capability,
                 PRECISION_BF16_MIN_CAPABILITY);
        return -1;
    }
    *chosen = asked != PRECISION_AUTO ? asked : has_bf16 ? PRECISION_BF16 : PRECISION_FP16;
    return 0;
}
