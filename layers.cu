// layers.cu: the transformer's operations on the CPU in fp32, written to be
// read: one loop nest per formula, OpenMP across independent rows.
#include "layers.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void matmul_cpu(float *out, const float *in, const float *weight, const float *bias,
                int n, int in_dim, int out_dim) {
    // out[t][o] = sum_i in[t][i] * W[o][i] + b[o]
    #pragma omp parallel for schedule(static)
    for (int o = 0; o < out_dim; o++) {
        const float *w_row = weight + (size_t)o * in_dim;
        for (int t = 0; t < n; t++) {
            const float *x = in + (size_t)t * in_dim;
            float sum = 0.0f;
            #pragma omp simd reduction(+ : sum)
            for (int i = 0; i < in_dim; i++) sum += x[i] * w_row[i];
            out[(size_t)t * out_dim + o] = sum + (bias ? bias[o] : 0.0f);
        }
    }
}

void rmsnorm_cpu(float *out, const float *x, const float *weight, int n, int dim, float eps) {
    for (int t = 0; t < n; t++) {
        const float *row = x + (size_t)t * dim;
        float *y = out + (size_t)t * dim;
        // rstd = 1 / sqrt(mean(x^2) + eps)
        float sum_sq = 0.0f;
        for (int i = 0; i < dim; i++) sum_sq += row[i] * row[i];
        float rstd = 1.0f / sqrtf(sum_sq / (float)dim + eps);
        for (int i = 0; i < dim; i++) y[i] = row[i] * rstd * weight[i];
    }
}

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

void rope_cpu(float *x, const int *positions, const float *inv_freq, int n, int n_heads, int head_dim) {
    int half = head_dim / 2;
    for (int t = 0; t < n; t++) {
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                // (a, b) -> (a cos - b sin, b cos + a sin), angle = pos * inv_freq[i]
                float angle = (float)positions[t] * inv_freq[i];
                float cos_a = cosf(angle), sin_a = sinf(angle);
                float a = v[i], b = v[i + half];
                v[i] = a * cos_a - b * sin_a;
                v[i + half] = b * cos_a + a * sin_a;
            }
        }
    }
}

void attention_cpu(float *out, const float *q, const float *k_cache, const float *v_cache,
                   int n, int pos0, int n_heads, int n_kv_heads, int head_dim) {
    int kv_dim = n_kv_heads * head_dim;
    int group = n_heads / n_kv_heads;          // query heads sharing one kv head
    float scale = 1.0f / sqrtf((float)head_dim);
    #pragma omp parallel
    {
        float *scores = (float *)malloc(sizeof(float) * (size_t)(pos0 + n));
        #pragma omp for collapse(2) schedule(static)
        for (int t = 0; t < n; t++) {
            for (int h = 0; h < n_heads; h++) {
                const float *q_vec = q + ((size_t)t * n_heads + h) * head_dim;
                int kv_head = h / group;
                int n_keys = pos0 + t + 1;     // causal: keys up to and including this position
                // scores[j] = q . k_j / sqrt(d)
                float max_score = -INFINITY;
                for (int j = 0; j < n_keys; j++) {
                    const float *k_vec = k_cache + (size_t)j * kv_dim + kv_head * head_dim;
                    float dot = 0.0f;
                    for (int i = 0; i < head_dim; i++) dot += q_vec[i] * k_vec[i];
                    scores[j] = dot * scale;
                    if (scores[j] > max_score) max_score = scores[j];
                }
                // softmax
                float sum = 0.0f;
                for (int j = 0; j < n_keys; j++) {
                    scores[j] = expf(scores[j] - max_score);
                    sum += scores[j];
                }
                // out = sum_j softmax_j v_j
                float *o = out + ((size_t)t * n_heads + h) * head_dim;
                memset(o, 0, sizeof(float) * (size_t)head_dim);
                for (int j = 0; j < n_keys; j++) {
                    const float *v_vec = v_cache + (size_t)j * kv_dim + kv_head * head_dim;
                    float p = scores[j] / sum;
                    for (int i = 0; i < head_dim; i++) o[i] += p * v_vec[i];
                }
            }
        }
        free(scores);
    }
}

void swiglu_cpu(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        // silu(g) * u
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

float cross_entropy_cpu(const float *logits, const int *targets, int n, int vocab, int *n_counted) {
    double total = 0.0;
    int counted = 0;
    for (int t = 0; t < n; t++) {
        if (targets[t] == -100) continue;
        const float *row = logits + (size_t)t * vocab;
        // -log p = logsumexp(row) - row[target]
        float max_logit = row[0];
        for (int v = 1; v < vocab; v++) if (row[v] > max_logit) max_logit = row[v];
        double sum = 0.0;
        for (int v = 0; v < vocab; v++) sum += exp((double)(row[v] - max_logit));
        total += log(sum) + max_logit - row[targets[t]];
        counted++;
    }
    *n_counted = counted;
    return counted ? (float)(total / counted) : 0.0f;
}

void residual_add_cpu(float *x, const float *y, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}
