// trainer/grad_scaler.c: dynamic loss scaling (see trainer/grad_scaler.h).
#include "trainer/grad_scaler.h"

#include <math.h>
#include <string.h>

GradScaler grad_scaler_default(int enabled) {
    GradScaler s;
    memset(&s, 0, sizeof s);
    s.enabled = enabled;
    s.scale = enabled ? GRAD_SCALER_INIT_SCALE : 1.0f;
    s.growth_factor = GRAD_SCALER_GROWTH_FACTOR;
    s.backoff_factor = GRAD_SCALER_BACKOFF_FACTOR;
    s.growth_interval = GRAD_SCALER_GROWTH_INTERVAL;
    return s;
}

// inv_scale = fp32(1 / double(scale)), as torch's unscale_
float grad_scaler_inverse(const GradScaler *s) { return (float)(1.0 / (double)s->scale); }

void grad_scaler_update(GradScaler *s, int found_inf) {
    if (!s->enabled) return;
    if (found_inf) {
        // scale = scale * backoff (in double, stored as fp32, as ATen's kernel)
        s->scale = (float)(s->scale * s->backoff_factor);
        s->growth_tracker = 0;
        s->skipped_steps++;
        return;
    }
    int32_t successful = s->growth_tracker + 1;
    if (successful < s->growth_interval) {
        s->growth_tracker = successful;
        return;
    }
    // scale = scale * growth, kept only when it is still finite
    float grown = (float)(s->scale * s->growth_factor);
    if (isfinite(grown)) s->scale = grown;
    s->growth_tracker = 0;
}
