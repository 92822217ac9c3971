// trainer/grad_scaler.h: dynamic loss scaling for fp16 training, as
// torch.amp.GradScaler does it. fp16's largest value is 65504 and its smallest
// normal 6e-5: small gradients underflow to zero. So the loss is multiplied by
// a large scale before backward (every gradient with it), the gradients are
// divided by it again before clipping and the optimizer step, and the scale
// adapts: a step whose gradients hold an inf or NaN (the scale overflowed fp16
// somewhere) is skipped and the scale halved; after growth_interval steps in a
// row without one it doubles. bf16 and fp32 have fp32's range: no scaling there
// (the scaler is off, its scale 1, as GradScaler(enabled=False)).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// torch.amp.GradScaler's defaults.
#define GRAD_SCALER_INIT_SCALE 65536.0f     // 2^16
#define GRAD_SCALER_GROWTH_FACTOR 2.0
#define GRAD_SCALER_BACKOFF_FACTOR 0.5
#define GRAD_SCALER_GROWTH_INTERVAL 2000

typedef struct {
    int enabled;                 // 0: scale stays 1 and no step is skipped (bf16, fp32)
    float scale;                 // the loss is multiplied by it before backward
    double growth_factor, backoff_factor;
    int32_t growth_interval;     // steps without overflow before the scale grows
    int32_t growth_tracker;      // steps without overflow since the last overflow or growth
    int32_t skipped_steps;       // steps skipped so far (gradients not finite)
} GradScaler;

// A scaler with torch's defaults (enabled) or off.
GradScaler grad_scaler_default(int enabled);
// The multiplier for the gradients before clipping: 1 / scale, in fp32 as
// torch's unscale_ computes it (exact: the scale is a power of two).
float grad_scaler_inverse(const GradScaler *s);
// After a step's gradients were checked: found_inf (some gradient inf or NaN)
// means the step was skipped: scale *= backoff, tracker = 0, skipped += 1;
// else tracker += 1 and at growth_interval scale *= growth (when finite), tracker = 0.
// torch's _amp_update_scale_. Nothing changes when the scaler is off.
void grad_scaler_update(GradScaler *s, int found_inf);

#ifdef __cplusplus
}
#endif
