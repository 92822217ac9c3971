// layers.cu: the transformer's operations on the CPU, forward and backward,
// written to be read: one loop nest per formula, OpenMP across independent
// rows. Instantiated for float (the model) and double (the gradient tests).
#include "layers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// ---- matmul ------------------------------------------------------------------

template <typename Real>
void matmul_cpu(Real *out, const Real *in, const Real *weight, const Real *bias, int n, int in_dim, int out_dim) {
    // out[t][o] = sum_i in[t][i] * W[o][i] + b[o]
    #pragma omp parallel for schedule(static)
    for (int o = 0; o < out_dim; o++) {
        const Real *w_row = weight + (size_t)o * in_dim;
        for (int t = 0; t < n; t++) {
            const Real *x = in + (size_t)t * in_dim;
            Real sum = 0;
            #pragma omp simd reduction(+ : sum)
            for (int i = 0; i < in_dim; i++) sum += x[i] * w_row[i];
            out[(size_t)t * out_dim + o] = sum + (bias ? bias[o] : 0);
        }
    }
}

template <typename Real>
void matmul_backward_input_cpu(Real *d_in, const Real *d_out, const Real *weight, int n, int in_dim, int out_dim) {
    // d_in[t][i] += sum_o d_out[t][o] * W[o][i], for a tile of tokens at a
    // time so that each row of W is read from memory once per tile
    const int tile = 16;
    #pragma omp parallel for schedule(dynamic)
    for (int first = 0; first < n; first += tile) {
        int last = first + tile < n ? first + tile : n;
        for (int o = 0; o < out_dim; o++) {
            const Real *w_row = weight + (size_t)o * in_dim;
            for (int t = first; t < last; t++) {
                Real g = d_out[(size_t)t * out_dim + o];
                Real *dx = d_in + (size_t)t * in_dim;
                #pragma omp simd
                for (int i = 0; i < in_dim; i++) dx[i] += g * w_row[i];
            }
        }
    }
}

template <typename Real>
void matmul_backward_weight_cpu(Real *d_weight, const Real *d_out, const Real *in, int n, int in_dim, int out_dim) {
    // d_W[o][i] += sum_t d_out[t][o] * in[t][i]
    #pragma omp parallel for schedule(static)
    for (int o = 0; o < out_dim; o++) {
        Real *dw = d_weight + (size_t)o * in_dim;
        for (int t = 0; t < n; t++) {
            Real g = d_out[(size_t)t * out_dim + o];
            const Real *x = in + (size_t)t * in_dim;
            #pragma omp simd
            for (int i = 0; i < in_dim; i++) dw[i] += g * x[i];
        }
    }
}

// ---- RMSNorm -------------------------------------------------------------------

template <typename Real>
static Real rms_reciprocal(const Real *x, int dim, float eps) {
    // rstd = 1 / sqrt(mean(x^2) + eps)
    Real sum_sq = 0;
    for (int i = 0; i < dim; i++) sum_sq += x[i] * x[i];
    return 1 / sqrt(sum_sq / dim + (Real)eps);
}

template <typename Real>
void rmsnorm_cpu(Real *out, const Real *x, const Real *weight, int n, int dim, float eps) {
    for (int t = 0; t < n; t++) {
        const Real *row = x + (size_t)t * dim;
        Real *y = out + (size_t)t * dim;
        Real rstd = rms_reciprocal(row, dim, eps);
        // y = x * rstd * w
        for (int i = 0; i < dim; i++) y[i] = row[i] * rstd * weight[i];
    }
}

template <typename Real>
void rmsnorm_backward_cpu(Real *d_x, const Real *d_out, const Real *x, const Real *weight, int n, int dim, float eps) {
    for (int t = 0; t < n; t++) {
        const Real *row = x + (size_t)t * dim, *dy = d_out + (size_t)t * dim;
        Real *dx = d_x + (size_t)t * dim;
        Real rstd = rms_reciprocal(row, dim, eps);
        // dot = sum_i dy_i w_i x_i
        Real dot = 0;
        for (int i = 0; i < dim; i++) dot += dy[i] * weight[i] * row[i];
        // dx_j = rstd w_j dy_j - x_j rstd^3 dot / dim
        for (int j = 0; j < dim; j++) dx[j] += rstd * weight[j] * dy[j] - row[j] * rstd * rstd * rstd * dot / dim;
    }
}

// ---- RoPE -----------------------------------------------------------------------

void rope_inv_freq(const Config *c, float *inv_freq) {
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        // inv_freq = theta^(-2i/d)
        float freq = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim);
        if (c->rope_factor > 0.0f) {
            // Llama-3: long wavelengths slowed by factor, short ones kept, smooth in between
            float wavelength = 2.0f * (float)M_PI / freq;
            float low_wavelength = (float)c->rope_original_max_pos / c->rope_low_freq_factor;
            float high_wavelength = (float)c->rope_original_max_pos / c->rope_high_freq_factor;
            if (wavelength > low_wavelength) {
                freq = freq / c->rope_factor;
            } else if (wavelength >= high_wavelength) {
                float smooth = ((float)c->rope_original_max_pos / wavelength - c->rope_low_freq_factor) /
                               (c->rope_high_freq_factor - c->rope_low_freq_factor);
                freq = (1.0f - smooth) * freq / c->rope_factor + smooth * freq;
            }
        }
        inv_freq[i] = freq;
    }
}

// Rotates every (i, i + half) pair of every head by direction * pos * inv_freq[i].
template <typename Real>
static void rotate_pairs(Real *x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim,
                         float direction) {
    int half = head_dim / 2;
    for (int t = 0; t < n; t++) {
        for (int h = 0; h < n_heads; h++) {
            Real *v = x + ((size_t)t * n_heads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                // (a, b) -> (a cos - b sin, b cos + a sin), angle = pos * inv_freq[i]
                float angle = (float)positions[t] * inv_freq[i];
                Real cos_a = cosf(angle), sin_a = direction * sinf(angle);
                Real a = v[i], b = v[i + half];
                v[i] = a * cos_a - b * sin_a;
                v[i + half] = b * cos_a + a * sin_a;
            }
        }
    }
}

template <typename Real>
void rope_cpu(Real *x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim) {
    rotate_pairs(x, positions, inv_freq, n, n_heads, head_dim, 1.0f);
}

template <typename Real>
void rope_backward_cpu(Real *d_x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim) {
    rotate_pairs(d_x, positions, inv_freq, n, n_heads, head_dim, -1.0f);
}

// ---- SwiGLU -------------------------------------------------------------------------

template <typename Real>
void swiglu_cpu(Real *out, const Real *gate, const Real *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        // silu(g) * u
        Real g = gate[i];
        out[i] = g / (1 + exp(-g)) * up[i];
    }
}

template <typename Real>
void swiglu_backward_cpu(Real *d_gate, Real *d_up, const Real *d_out, const Real *gate, const Real *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        Real g = gate[i];
        Real sigmoid = 1 / (1 + exp(-g));
        // d silu(g)/dg = sigmoid(g) (1 + g (1 - sigmoid(g)))
        Real d_silu = sigmoid * (1 + g * (1 - sigmoid));
        d_gate[i] += d_out[i] * up[i] * d_silu;
        d_up[i] += d_out[i] * g * sigmoid;
    }
}

template <typename Real>
void residual_add_cpu(Real *x, const Real *y, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

// ---- the two instantiations -------------------------------------------------------------

#define INSTANTIATE_LAYERS(Real)                                                                                  \
    template void matmul_cpu(Real *, const Real *, const Real *, const Real *, int, int, int);                   \
    template void matmul_backward_input_cpu(Real *, const Real *, const Real *, int, int, int);                  \
    template void matmul_backward_weight_cpu(Real *, const Real *, const Real *, int, int, int);                 \
    template void rmsnorm_cpu(Real *, const Real *, const Real *, int, int, float);                              \
    template void rmsnorm_backward_cpu(Real *, const Real *, const Real *, const Real *, int, int, float);        \
    template void rope_cpu(Real *, const int *, const float *, int, int, int);                                   \
    template void rope_backward_cpu(Real *, const int *, const float *, int, int, int);                          \
    template void swiglu_cpu(Real *, const Real *, const Real *, size_t);                                        \
    template void swiglu_backward_cpu(Real *, Real *, const Real *, const Real *, const Real *, size_t);         \
    template void residual_add_cpu(Real *, const Real *, size_t);

INSTANTIATE_LAYERS(float)
INSTANTIATE_LAYERS(double)
