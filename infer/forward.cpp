// infer/forward.cpp: the inference forward pass on the CPU (the textbook version).
// Tokens are processed in chunks; each layer appends its keys and values to
// the cache so that generation only computes the newest token.
#include "infer/forward.h"
#include "ops/layers.h"
#include "ops/attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int infer_state_init(InferState *s, const Config *c, int max_seq, int max_chunk) {
    memset(s, 0, sizeof *s);
    size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    size_t chunk = (size_t)max_chunk;
    s->max_seq = max_seq;
    s->max_chunk = max_chunk;
    s->key_cache = (float *)calloc((size_t)c->n_layers * max_seq * kv_dim, sizeof(float));
    s->value_cache = (float *)calloc((size_t)c->n_layers * max_seq * kv_dim, sizeof(float));
    s->inv_freq = (float *)malloc(sizeof(float) * (size_t)(c->head_dim / 2));
    s->x = (float *)malloc(sizeof(float) * chunk * c->dim);
    s->xn = (float *)malloc(sizeof(float) * chunk * c->dim);
    s->q = (float *)malloc(sizeof(float) * chunk * q_dim);
    s->att = (float *)malloc(sizeof(float) * chunk * q_dim);
    s->proj = (float *)malloc(sizeof(float) * chunk * c->dim);
    s->gate = (float *)malloc(sizeof(float) * chunk * c->hidden_dim);
    s->up = (float *)malloc(sizeof(float) * chunk * c->hidden_dim);
    s->logits = (float *)malloc(sizeof(float) * chunk * c->vocab_size);
    s->positions = (int *)malloc(sizeof(int) * chunk);
    if (!s->key_cache || !s->value_cache || !s->inv_freq || !s->x || !s->xn || !s->q || !s->att || !s->proj ||
        !s->gate || !s->up || !s->logits || !s->positions) {
        infer_state_free(s);
        return -1;
    }
    rope_inv_freq(c, s->inv_freq);
    return 0;
}

void infer_state_free(InferState *s) {
    free(s->key_cache);
    free(s->value_cache);
    free(s->inv_freq);
    free(s->x);
    free(s->xn);
    free(s->q);
    free(s->att);
    free(s->proj);
    free(s->gate);
    free(s->up);
    free(s->logits);
    free(s->positions);
    memset(s, 0, sizeof *s);
}

static float l2_norm(const float *x, int n) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)x[i] * x[i];
    return (float)sqrt(sum);
}

// x += Wo attention(rope(q), rope(k), v) for the chunk, filling this layer's cache.
static void attention_block(const Config *c, const LayerWeights *w, InferState *s, float *k_cache,
                            float *v_cache, int n, int pos) {
    int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    float *k_new = k_cache + (size_t)pos * kv_dim;
    float *v_new = v_cache + (size_t)pos * kv_dim;
    rmsnorm_cpu(s->xn, s->x, w->attn_norm, n, c->dim, c->norm_eps);
    matmul_cpu<float>(s->q, s->xn, w->wq, w->bq, n, c->dim, q_dim);
    matmul_cpu<float>(k_new, s->xn, w->wk, w->bk, n, c->dim, kv_dim);
    matmul_cpu<float>(v_new, s->xn, w->wv, w->bv, n, c->dim, kv_dim);
    rope_cpu(s->q, s->positions, s->inv_freq, n, c->n_heads, c->head_dim);
    rope_cpu(k_new, s->positions, s->inv_freq, n, c->n_kv_heads, c->head_dim);
    attention_cpu(s->att, s->q, k_cache, v_cache, n, pos, c->n_heads, c->n_kv_heads, c->head_dim, (const int *)NULL);
    matmul_cpu<float>(s->proj, s->att, w->wo, NULL, n, q_dim, c->dim);
    residual_add_cpu(s->x, s->proj, (size_t)n * c->dim);
}

// x += Wdown (silu(Wgate xn) * Wup xn)
static void mlp_block(const Config *c, const LayerWeights *w, InferState *s, int n) {
    rmsnorm_cpu(s->xn, s->x, w->mlp_norm, n, c->dim, c->norm_eps);
    matmul_cpu<float>(s->gate, s->xn, w->w_gate, NULL, n, c->dim, c->hidden_dim);
    matmul_cpu<float>(s->up, s->xn, w->w_up, NULL, n, c->dim, c->hidden_dim);
    swiglu_cpu(s->gate, s->gate, s->up, (size_t)n * c->hidden_dim);
    matmul_cpu<float>(s->proj, s->gate, w->w_down, NULL, n, c->hidden_dim, c->dim);
    residual_add_cpu(s->x, s->proj, (size_t)n * c->dim);
}

const float *forward_cpu(const Model *m, InferState *s, const int *tokens, int n, int pos,
                         int all_logits, float *hidden_norms) {
    const Config *c = &m->config;
    size_t kv_layer = (size_t)s->max_seq * c->n_kv_heads * c->head_dim;
    for (int t = 0; t < n; t++) {
        memcpy(s->x + (size_t)t * c->dim, m->embed + (size_t)tokens[t] * c->dim, sizeof(float) * c->dim);
        s->positions[t] = pos + t;
    }
    const float *last_x = s->x + (size_t)(n - 1) * c->dim;
    for (int l = 0; l < c->n_layers; l++) {
        if (hidden_norms) hidden_norms[l] = l2_norm(last_x, c->dim);
        attention_block(c, &m->layers[l], s, s->key_cache + l * kv_layer, s->value_cache + l * kv_layer, n, pos);
        mlp_block(c, &m->layers[l], s, n);
    }
    int first = all_logits ? 0 : n - 1;
    int n_out = n - first;
    rmsnorm_cpu(s->xn, s->x + (size_t)first * c->dim, m->final_norm, n_out, c->dim, c->norm_eps);
    if (hidden_norms) hidden_norms[c->n_layers] = l2_norm(s->xn + (size_t)(n_out - 1) * c->dim, c->dim);
    matmul_cpu<float>(s->logits, s->xn, m->lm_head, NULL, n_out, c->dim, c->vocab_size);
    return s->logits;
}
