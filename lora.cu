// lora.cu: LoRA adapters on the CPU: initialisation, dropout masks, forward
// and backward. The frozen base product x W^T is computed by the caller.
#include "lora.h"
#include "layers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// splitmix64: a small, well-mixed generator; one call per random number.
static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// Uniform in [0, 1) with 24 random bits.
static float uniform01(uint64_t *state) { return (float)(splitmix64(state) >> 40) / 16777216.0f; }

int lora_init(LoraAdapter *a, int in_dim, int out_dim, int rank, float alpha, int rslora, uint64_t seed) {
    memset(a, 0, sizeof *a);
    a->in_dim = in_dim;
    a->out_dim = out_dim;
    a->rank = rank;
    // s = alpha / r, or alpha / sqrt(r) with rsLoRA
    a->scaling = rslora ? alpha / sqrtf((float)rank) : alpha / (float)rank;
    size_t a_size = (size_t)rank * in_dim, b_size = (size_t)out_dim * rank;
    a->A = (float *)malloc(a_size * sizeof(float));
    a->B = (float *)calloc(b_size, sizeof(float));
    a->dA = (float *)calloc(a_size, sizeof(float));
    a->dB = (float *)calloc(b_size, sizeof(float));
    if (!a->A || !a->B || !a->dA || !a->dB) {
        lora_free(a);
        return -1;
    }
    // A ~ U(-1/sqrt(in), 1/sqrt(in))
    float bound = 1.0f / sqrtf((float)in_dim);
    uint64_t state = seed;
    for (size_t i = 0; i < a_size; i++) a->A[i] = (2.0f * uniform01(&state) - 1.0f) * bound;
    return 0;
}

void lora_free(LoraAdapter *a) {
    free(a->A);
    free(a->B);
    free(a->dA);
    free(a->dB);
    memset(a, 0, sizeof *a);
}

void lora_dropout_mask(float *keep, size_t count, float p, uint64_t seed) {
    uint64_t state = seed;
    float kept_value = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
    for (size_t i = 0; i < count; i++) keep[i] = (p > 0.0f && uniform01(&state) < p) ? 0.0f : kept_value;
}

// out[i] = x[i] * keep[i] (a copy of x when keep is NULL)
template <typename Real>
static void apply_mask(Real *out, const Real *x, const float *keep, size_t count) {
    for (size_t i = 0; i < count; i++) out[i] = keep ? x[i] * keep[i] : x[i];
}

template <typename Real>
void lora_forward_cpu(Real *y, const Real *x, const float *keep, const Real *A, const Real *B, LoraShape s, Real *xa,
                      Real *scratch) {
    size_t x_count = (size_t)s.n * s.in_dim, y_count = (size_t)s.n * s.out_dim;
    Real *dropped = scratch, *update = scratch + x_count;
    apply_mask(dropped, x, keep, x_count);
    // xa = dropout(x) A^T            [n, r]
    matmul_cpu<Real>(xa, dropped, A, NULL, s.n, s.in_dim, s.rank);
    // y += s xa B^T                  [n, out]
    matmul_cpu<Real>(update, xa, B, NULL, s.n, s.rank, s.out_dim);
    for (size_t i = 0; i < y_count; i++) y[i] += s.scaling * update[i];
}

template <typename Real>
void lora_backward_cpu(Real *dx, Real *dA, Real *dB, const Real *dy, const Real *x, const float *keep, const Real *A,
                       const Real *B, const Real *xa, LoraShape s, Real *scratch) {
    size_t x_count = (size_t)s.n * s.in_dim, y_count = (size_t)s.n * s.out_dim;
    Real *d_xa = scratch;                              // [n, r]
    Real *dropped = d_xa + (size_t)s.n * s.rank;       // [n, in]
    Real *dy_scaled = dropped + x_count;               // [n, out]
    // dy_s = s dy: the scaling applies to every product below
    for (size_t i = 0; i < y_count; i++) dy_scaled[i] = s.scaling * dy[i];
    // dB += dy_s^T xa
    matmul_backward_weight_cpu<Real>(dB, dy_scaled, xa, s.n, s.rank, s.out_dim);
    // d_xa = dy_s B
    for (size_t i = 0; i < (size_t)s.n * s.rank; i++) d_xa[i] = 0;
    matmul_backward_input_cpu<Real>(d_xa, dy_scaled, B, s.n, s.rank, s.out_dim);
    // dA += d_xa^T dropout(x)
    apply_mask(dropped, x, keep, x_count);
    matmul_backward_weight_cpu<Real>(dA, d_xa, dropped, s.n, s.in_dim, s.rank);
    if (!dx) return;
    // dx += (d_xa A) * keep
    Real *d_dropped = dropped;
    for (size_t i = 0; i < x_count; i++) d_dropped[i] = 0;
    matmul_backward_input_cpu<Real>(d_dropped, d_xa, A, s.n, s.in_dim, s.rank);
    for (size_t i = 0; i < x_count; i++) dx[i] += keep ? d_dropped[i] * keep[i] : d_dropped[i];
}

template void lora_forward_cpu(float *, const float *, const float *, const float *, const float *, LoraShape, float *,
                               float *);
template void lora_forward_cpu(double *, const double *, const float *, const double *, const double *, LoraShape,
                               double *, double *);
template void lora_backward_cpu(float *, float *, float *, const float *, const float *, const float *, const float *,
                                const float *, const float *, LoraShape, float *);
template void lora_backward_cpu(double *, double *, double *, const double *, const double *, const float *,
                                const double *, const double *, const double *, LoraShape, double *);
