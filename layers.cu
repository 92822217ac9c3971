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

// ---- attention --------------------------------------------------------------------

// probs[j] = softmax_j(q . k_j / sqrt(d)) over keys j < n_keys of one kv head.
template <typename Real>
static void attention_probs(Real *probs, const Real *q_vec, const Real *k, int n_keys, int kv_dim, int kv_offset,
                            int head_dim) {
    Real scale = 1 / sqrt((Real)head_dim);
    Real max_score = -INFINITY;
    for (int j = 0; j < n_keys; j++) {
        const Real *k_vec = k + (size_t)j * kv_dim + kv_offset;
        Real dot = 0;
        for (int i = 0; i < head_dim; i++) dot += q_vec[i] * k_vec[i];
        probs[j] = dot * scale;
        if (probs[j] > max_score) max_score = probs[j];
    }
    Real sum = 0;
    for (int j = 0; j < n_keys; j++) {
        probs[j] = exp(probs[j] - max_score);
        sum += probs[j];
    }
    for (int j = 0; j < n_keys; j++) probs[j] /= sum;
}

template <typename Real>
void attention_cpu(Real *out, const Real *q, const Real *k, const Real *v, int n, int pos0, int n_heads,
                   int n_kv_heads, int head_dim) {
    int kv_dim = n_kv_heads * head_dim;
    int group = n_heads / n_kv_heads;  // query heads sharing one kv head
    #pragma omp parallel
    {
        Real *probs = (Real *)malloc(sizeof(Real) * (size_t)(pos0 + n));
        #pragma omp for collapse(2) schedule(static)
        for (int t = 0; t < n; t++) {
            for (int h = 0; h < n_heads; h++) {
                int kv_offset = (h / group) * head_dim;
                int n_keys = pos0 + t + 1;  // causal: keys up to and including this position
                attention_probs(probs, q + ((size_t)t * n_heads + h) * head_dim, k, n_keys, kv_dim, kv_offset,
                                head_dim);
                // out = sum_j p_j v_j
                Real *o = out + ((size_t)t * n_heads + h) * head_dim;
                for (int i = 0; i < head_dim; i++) o[i] = 0;
                for (int j = 0; j < n_keys; j++) {
                    const Real *v_vec = v + (size_t)j * kv_dim + kv_offset;
                    for (int i = 0; i < head_dim; i++) o[i] += probs[j] * v_vec[i];
                }
            }
        }
        free(probs);
    }
}

// Runs serially: several query heads write the same d_k/d_v rows.
template <typename Real>
void attention_backward_cpu(Real *d_q, Real *d_k, Real *d_v, const Real *d_out, const Real *q, const Real *k,
                            const Real *v, int n, int n_heads, int n_kv_heads, int head_dim) {
    int kv_dim = n_kv_heads * head_dim;
    int group = n_heads / n_kv_heads;
    Real scale = 1 / sqrt((Real)head_dim);
    Real *probs = (Real *)malloc(sizeof(Real) * (size_t)n);
    Real *d_probs = (Real *)malloc(sizeof(Real) * (size_t)n);
    for (int t = 0; t < n; t++) {
        for (int h = 0; h < n_heads; h++) {
            int kv_offset = (h / group) * head_dim;
            int n_keys = t + 1;
            const Real *q_vec = q + ((size_t)t * n_heads + h) * head_dim;
            const Real *dy = d_out + ((size_t)t * n_heads + h) * head_dim;
            attention_probs(probs, q_vec, k, n_keys, kv_dim, kv_offset, head_dim);
            // dp_j = dy . v_j;  dv_j += p_j dy
            Real weighted = 0;  // sum_j p_j dp_j
            for (int j = 0; j < n_keys; j++) {
                const Real *v_vec = v + (size_t)j * kv_dim + kv_offset;
                Real *dv = d_v + (size_t)j * kv_dim + kv_offset;
                Real dp = 0;
                for (int i = 0; i < head_dim; i++) {
                    dp += dy[i] * v_vec[i];
                    dv[i] += probs[j] * dy[i];
                }
                d_probs[j] = dp;
                weighted += probs[j] * dp;
            }
            // softmax backward: ds_j = p_j (dp_j - sum_k p_k dp_k); then dq += scale ds_j k_j, dk_j += scale ds_j q
            Real *dq = d_q + ((size_t)t * n_heads + h) * head_dim;
            for (int j = 0; j < n_keys; j++) {
                Real ds = probs[j] * (d_probs[j] - weighted) * scale;
                const Real *k_vec = k + (size_t)j * kv_dim + kv_offset;
                Real *dk = d_k + (size_t)j * kv_dim + kv_offset;
                for (int i = 0; i < head_dim; i++) {
                    dq[i] += ds * k_vec[i];
                    dk[i] += ds * q_vec[i];
                }
            }
        }
    }
    free(probs);
    free(d_probs);
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

// ---- cross-entropy ---------------------------------------------------------------------

template <typename Real>
static double log_sum_exp(const Real *row, int vocab) {
    double max_logit = row[0];
    for (int v = 1; v < vocab; v++) if (row[v] > max_logit) max_logit = row[v];
    double sum = 0.0;
    for (int v = 0; v < vocab; v++) sum += exp((double)row[v] - max_logit);
    return log(sum) + max_logit;
}

template <typename Real>
double cross_entropy_sum_cpu(const Real *logits, const int *targets, int n, int vocab, int *n_counted) {
    double total = 0.0;
    int counted = 0;
    for (int t = 0; t < n; t++) {
        if (targets[t] == -100) continue;
        const Real *row = logits + (size_t)t * vocab;
        // -log p = logsumexp(row) - row[target]
        total += log_sum_exp(row, vocab) - row[targets[t]];
        counted++;
    }
    *n_counted = counted;
    return total;
}

template <typename Real>
void cross_entropy_backward_cpu(Real *d_logits, const Real *logits, const int *targets, int n, int vocab,
                                double scale) {
    for (int t = 0; t < n; t++) {
        if (targets[t] == -100) continue;
        const Real *row = logits + (size_t)t * vocab;
        Real *d_row = d_logits + (size_t)t * vocab;
        double lse = log_sum_exp(row, vocab);
        // d loss / d logit_v = softmax_v - [v == target]
        for (int v = 0; v < vocab; v++) d_row[v] += (Real)(scale * exp((double)row[v] - lse));
        d_row[targets[t]] -= (Real)scale;
    }
}

float cross_entropy_cpu(const float *logits, const int *targets, int n, int vocab, int *n_counted) {
    double total = cross_entropy_sum_cpu(logits, targets, n, vocab, n_counted);
    return *n_counted ? (float)(total / *n_counted) : 0.0f;
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
    template void attention_cpu(Real *, const Real *, const Real *, const Real *, int, int, int, int, int);      \
    template void attention_backward_cpu(Real *, Real *, Real *, const Real *, const Real *, const Real *,       \
                                         const Real *, int, int, int, int);                                      \
    template void swiglu_cpu(Real *, const Real *, const Real *, size_t);                                        \
    template void swiglu_backward_cpu(Real *, Real *, const Real *, const Real *, const Real *, size_t);         \
    template double cross_entropy_sum_cpu(const Real *, const int *, int, int, int *);                           \
    template void cross_entropy_backward_cpu(Real *, const Real *, const int *, int, int, double);               \
    template void residual_add_cpu(Real *, const Real *, size_t);

INSTANTIATE_LAYERS(float)
INSTANTIATE_LAYERS(double)
