// adamw.cu: the optimizer side of a training step on the CPU: AdamW, the
// warmup + cosine learning-rate schedule, global-norm gradient clipping and
// gradient-accumulation loss normalisation. Each formula follows the torch /
// HF transformers function named in adamw.h, so that runs can be compared.
#include "adamw.h"

#include <math.h>
#include <stdlib.h>

// ---- AdamW -------------------------------------------------------------------

AdamWConfig adamw_default_config(void) {
    AdamWConfig c;
    c.lr = 1e-3f;
    c.beta1 = 0.9f;
    c.beta2 = 0.999f;
    c.eps = 1e-8f;
    c.weight_decay = 0.0f;
    return c;
}

int adamw_init(AdamWState *s, size_t n) {
    s->n = n;
    s->step = 0;
    s->m = (float *)calloc(n > 0 ? n : 1, sizeof(float));
    s->v = (float *)calloc(n > 0 ? n : 1, sizeof(float));
    if (!s->m || !s->v) {
        adamw_free(s);
        return -1;
    }
    return 0;
}

void adamw_free(AdamWState *s) {
    free(s->m);
    free(s->v);
    s->m = NULL;
    s->v = NULL;
    s->n = 0;
}

void adamw_step_cpu(float *params, const float *grads, AdamWState *s, const AdamWConfig *c, float lr) {
    s->step++;
    // The scalars are computed in double and then rounded once, as torch does
    // with its Python-float hyperparameters.
    double t = (double)s->step;
    // bias corrections: 1 - b1^t and sqrt(1 - b2^t)
    double bias_correction1 = 1.0 - pow((double)c->beta1, t);
    double bias_correction2_sqrt = sqrt(1.0 - pow((double)c->beta2, t));
    float step_size = (float)((double)lr / bias_correction1);
    float decay = (float)(1.0 - (double)lr * (double)c->weight_decay);
    float one_minus_beta1 = (float)(1.0 - (double)c->beta1);
    float one_minus_beta2 = (float)(1.0 - (double)c->beta2);
    float denom_scale = (float)bias_correction2_sqrt;

    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < s->n; i++) {
        float g = grads[i];
        // decoupled weight decay: p = p (1 - lr wd)
        float p = params[i] * decay;
        // m = b1 m + (1 - b1) g
        float m = c->beta1 * s->m[i] + one_minus_beta1 * g;
        // v = b2 v + (1 - b2) g^2
        float v = c->beta2 * s->v[i] + one_minus_beta2 * g * g;
        // p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        float denom = sqrtf(v) / denom_scale + c->eps;
        params[i] = p - step_size * m / denom;
        s->m[i] = m;
        s->v[i] = v;
    }
}

// ---- learning-rate schedule ------------------------------------------------

float lr_at_step(const LRSchedule *s, int64_t step) {
    double max_lr = s->max_lr;
    if (step < s->warmup_steps) {
        // lr = max_lr (step + 1) / W
        return (float)(max_lr * (double)(step + 1) / (double)s->warmup_steps);
    }
    // p = (step - W + 1) / max(1, T - W), clamped to [0, 1]
    int64_t decay_steps = s->total_steps - s->warmup_steps;
    double progress = (double)(step - s->warmup_steps + 1) / (double)(decay_steps > 1 ? decay_steps : 1);
    if (progress > 1.0) progress = 1.0;
    if (progress < 0.0) progress = 0.0;
    // lr = min + 0.5 (1 + cos(pi p)) (max_lr - min)
    double min_lr = max_lr * (double)s->min_lr_frac;
    return (float)(min_lr + 0.5 * (1.0 + cos(M_PI * progress)) * (max_lr - min_lr));
}

int64_t warmup_steps_from(double warmup, int64_t total_steps) {
    if (!(warmup >= 0.0)) return -1;
    if (warmup >= 1.0) return (int64_t)warmup;
    // W = ceil(T * fraction)
    return (int64_t)ceil((double)total_steps * warmup);
}

// ---- gradient clipping -----------------------------------------------------

double global_grad_norm(float *const *grads, const size_t *sizes, int n_tensors) {
    // norm = sqrt(sum g^2) over every element of every tensor. Serial on
    // purpose: a threaded reduction adds the partial sums in whichever order
    // the threads finish, which changes the last bit from run to run and
    // would break bitwise-reproducible resumes.
    double sum_squares = 0.0;
    for (int k = 0; k < n_tensors; k++) {
        const float *g = grads[k];
        for (size_t i = 0; i < sizes[k]; i++) sum_squares += (double)g[i] * (double)g[i];
    }
    return sqrt(sum_squares);
}

float clip_scale(double norm, float max_norm) {
    if (max_norm <= 0.0f) return 1.0f;
    // scale = min(1, max_norm / (norm + 1e-6))
    double scale = (double)max_norm / (norm + 1e-6);
    return scale > 1.0 ? 1.0f : (float)scale;
}

void scale_grads_cpu(float *const *grads, const size_t *sizes, int n_tensors, float scale) {
    for (int k = 0; k < n_tensors; k++) {
        float *g = grads[k];
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < sizes[k]; i++) g[i] *= scale;
    }
}

// ---- gradient accumulation ---------------------------------------------------

StepLoss step_loss_from_micro_batches(const double *loss_sums, const int64_t *answer_tokens, int n_micro) {
    StepLoss out;
    double loss_sum = 0.0;
    out.answer_tokens = 0;
    for (int i = 0; i < n_micro; i++) {
        loss_sum += loss_sums[i];
        out.answer_tokens += answer_tokens[i];
    }
    if (out.answer_tokens == 0) {
        out.loss = 0.0;
        out.grad_scale = 0.0f;
        return out;
    }
    // loss = sum of token losses / number of answer tokens; grad_scale = 1 / that number
    out.loss = loss_sum / (double)out.answer_tokens;
    out.grad_scale = (float)(1.0 / (double)out.answer_tokens);
    return out;
}
