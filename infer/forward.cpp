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
    free(s->lora_mid);
    memset(s, 0, sizeof *s);
}

float hidden_state_norm(const float *x, int dim) {
    // sqrt(sum_i x_i^2)
    double sum = 0.0;
    for (int i = 0; i < dim; i++) sum += (double)x[i] * x[i];
    return (float)sqrt(sum);
}

// out [n, out_dim] += s (x A^T) B^T for the adapter's (layer, linear), when it adapts it.
static void add_lora(float *out, const float *x, const Config *c, const AdapterWeights *adapter, InferState *s,
                     int layer, int linear, int n) {
    if (!adapter) return;
    const float *A = adapter->A[layer * N_LINEARS + linear], *B = adapter->B[layer * N_LINEARS + linear];
    if (!A) return;
    int in_dim, out_dim, rank = adapter->rank;
    linear_dims(c, linear, &in_dim, &out_dim);
    // mid = x A^T   [n, r]
    matmul_cpu<float>(s->lora_mid, x, A, NULL, n, in_dim, rank);
    // out += s mid B^T
    #pragma omp parallel for collapse(2) schedule(static)
    for (int t = 0; t < n; t++) {
        for (int o = 0; o < out_dim; o++) {
            const float *mid = s->lora_mid + (size_t)t * rank;
            float sum = 0.0f;
            for (int k = 0; k < rank; k++) sum += mid[k] * B[(size_t)o * rank + k];
            out[(size_t)t * out_dim + o] += adapter->scaling * sum;
        }
    }
}

// x += Wo attention(rope(q), rope(k), v) for the chunk, filling this layer's cache.
static void attention_block(const Config *c, const LayerWeights *w, const AdapterWeights *adapter, int layer,
                            InferState *s, float *k_cache, float *v_cache, int n, int pos) {
    int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    float *k_new = k_cache + (size_t)pos * kv_dim;
    float *v_new = v_cache + (size_t)pos * kv_dim;
    rmsnorm_cpu(s->xn, s->x, w->attn_norm, n, c->dim, c->norm_eps);
    matmul_cpu<float>(s->q, s->xn, w->wq, w->bq, n, c->dim, q_dim);
    matmul_cpu<float>(k_new, s->xn, w->wk, w->bk, n, c->dim, kv_dim);
    matmul_cpu<float>(v_new, s->xn, w->wv, w->bv, n, c->dim, kv_dim);
    add_lora(s->q, s->xn, c, adapter, s, layer, LINEAR_Q, n);
    add_lora(k_new, s->xn, c, adapter, s, layer, LINEAR_K, n);
    add_lora(v_new, s->xn, c, adapter, s, layer, LINEAR_V, n);
    rope_cpu(s->q, s->positions, s->inv_freq, n, c->n_heads, c->head_dim);
    rope_cpu(k_new, s->positions, s->inv_freq, n, c->n_kv_heads, c->head_dim);
    attention_cpu(s->att, s->q, k_cache, v_cache, n, pos, c->n_heads, c->n_kv_heads, c->head_dim, (const int *)NULL);
    matmul_cpu<float>(s->proj, s->att, w->wo, NULL, n, q_dim, c->dim);
    add_lora(s->proj, s->att, c, adapter, s, layer, LINEAR_O, n);
    residual_add_cpu(s->x, s->proj, (size_t)n * c->dim);
}

// x += Wdown (silu(Wgate xn) * Wup xn)
static void mlp_block(const Config *c, const LayerWeights *w, const AdapterWeights *adapter, int layer,
                      InferState *s, int n) {
    rmsnorm_cpu(s->xn, s->x, w->mlp_norm, n, c->dim, c->norm_eps);
    matmul_cpu<float>(s->gate, s->xn, w->w_gate, NULL, n, c->dim, c->hidden_dim);
    matmul_cpu<float>(s->up, s->xn, w->w_up, NULL, n, c->dim, c->hidden_dim);
    add_lora(s->gate, s->xn, c, adapter, s, layer, LINEAR_GATE, n);
    add_lora(s->up, s->xn, c, adapter, s, layer, LINEAR_UP, n);
    swiglu_cpu(s->gate, s->gate, s->up, (size_t)n * c->hidden_dim);
    matmul_cpu<float>(s->proj, s->gate, w->w_down, NULL, n, c->hidden_dim, c->dim);
    add_lora(s->proj, s->gate, c, adapter, s, layer, LINEAR_DOWN, n);
    residual_add_cpu(s->x, s->proj, (size_t)n * c->dim);
}

// Makes lora_mid hold max_chunk rows of rank values; -1 when out of memory.
static int reserve_lora_mid(InferState *s, int rank) {
    if (rank <= s->lora_mid_rank) return 0;
    float *grown = (float *)realloc(s->lora_mid, sizeof(float) * (size_t)s->max_chunk * rank);
    if (!grown) return -1;
    s->lora_mid = grown;
    s->lora_mid_rank = rank;
    return 0;
}

const float *forward_cpu(const Model *m, InferState *s, const int *tokens, int n, int pos,
                         int all_logits, float *hidden_norms) {
    return forward_cpu_adapter(m, NULL, s, tokens, n, pos, all_logits, hidden_norms);
}

const float *forward_cpu_adapter(const Model *m, const AdapterWeights *adapter, InferState *s, const int *tokens,
                                 int n, int pos, int all_logits, float *hidden_norms) {
    const Config *c = &m->config;
    if (adapter && reserve_lora_mid(s, adapter->rank) != 0) return NULL;
    size_t kv_layer = (size_t)s->max_seq * c->n_kv_heads * c->head_dim;
    for (int t = 0; t < n; t++) {
        memcpy(s->x + (size_t)t * c->dim, m->embed + (size_t)tokens[t] * c->dim, sizeof(float) * c->dim);
        s->positions[t] = pos + t;
    }
    const float *last_x = s->x + (size_t)(n - 1) * c->dim;
    for (int l = 0; l < c->n_layers; l++) {
        if (hidden_norms) hidden_norms[l] = hidden_state_norm(last_x, c->dim);
        attention_block(c, &m->layers[l], adapter, l, s, s->key_cache + l * kv_layer, s->value_cache + l * kv_layer,
                        n, pos);
        mlp_block(c, &m->layers[l], adapter, l, s, n);
    }
    int first = all_logits ? 0 : n - 1;
    int n_out = n - first;
    rmsnorm_cpu(s->xn, s->x + (size_t)first * c->dim, m->final_norm, n_out, c->dim, c->norm_eps);
    if (hidden_norms) hidden_norms[c->n_layers] = hidden_state_norm(s->xn + (size_t)(n_out - 1) * c->dim, c->dim);
    matmul_cpu<float>(s->logits, s->xn, m->lm_head, NULL, n_out, c->dim, c->vocab_size);
    return s->logits;
}
