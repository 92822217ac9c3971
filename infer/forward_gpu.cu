// infer/forward_gpu.cu: the inference forward pass on one GPU (see infer/forward_gpu.h),
// line for line infer/forward.cpp's forward_cpu_adapter with the training path's
// kernels (ops/layers.h, lora.h) and the cache attention kernel (ops/attention.h).
// A build without nvcc has the functions too; they say that it has no CUDA.
#include "infer/forward_gpu.h"
#include "ops/gpu.h"
#include "trainer/precision.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *gpu_infer_choose_precision(void) {
    Precision chosen = PRECISION_BF16;
    char err[256];
    precision_resolve(PRECISION_AUTO, 1, gpu_compute_capability(), &chosen, err, sizeof err);
    gpu_set_act16(chosen == PRECISION_FP16 ? ACT16_FP16 : ACT16_BF16);
    return precision_name(chosen);
}

#ifndef __CUDACC__
static const char NO_CUDA[] = "this build has no CUDA (nvcc was not found at build time)";

GpuModel *gpu_model_upload(const Model *m, char *err, size_t err_size) {
    snprintf(err, err_size, "%s", NO_CUDA);
    return NULL;
}
void gpu_model_free(GpuModel *g) {}
size_t gpu_model_bytes(const GpuModel *g) { return 0; }
GpuAdapter *gpu_adapter_upload(const GpuModel *g, const AdapterWeights *adapter, char *err, size_t err_size) {
    snprintf(err, err_size, "%s", NO_CUDA);
    return NULL;
}
void gpu_adapter_free(GpuAdapter *a) {}
size_t gpu_adapter_bytes(const GpuAdapter *a) { return 0; }
GpuInferState *gpu_infer_state_create(const GpuModel *g, int max_seq, int max_chunk, int max_rank, char *err,
                                      size_t err_size) {
    snprintf(err, err_size, "%s", NO_CUDA);
    return NULL;
}
void gpu_infer_state_free(GpuInferState *s) {}
size_t gpu_infer_state_bytes(const GpuInferState *s) { return 0; }
const float *forward_gpu(const GpuModel *g, const GpuAdapter *adapter, GpuInferState *s, const int *tokens, int n,
                         int pos, int all_logits, float *hidden_norms) {
    return NULL;
}
#else
#include "infer/forward.h"
#include "lora.h"
#include "ops/attention.h"
#include "ops/layers.h"

// The frozen weights of one block on the device.
typedef struct {
    act16 *w[N_LINEARS];              // [out, in] each, by Linear
    float *attn_norm, *mlp_norm;      // [dim]
    float *bq, *bk, *bv;              // NULL unless the model has attention biases
} GpuLayer;

struct GpuModel {
    Config c;
    GpuLayer *layers;       // [n_layers], on the host
    act16 *embed;           // [vocab, dim]
    act16 *lm_head;         // [vocab, dim]; == embed when tied
    float *final_norm;      // [dim]
    float *inv_freq;        // [head_dim / 2]
    size_t bytes;
};

struct GpuAdapter {
    int rank;
    float scaling;          // s
    int n_slots;            // n_layers * N_LINEARS
    act16 **A, **B;         // [n_slots] on the host: device A [r, in], B [out, r]; NULL when not adapted
    size_t bytes;
};

struct GpuInferState {
    Config c;               // the model's
    int max_seq, max_chunk, max_rank;
    act16 *key_cache;       // [n_layers, max_seq, kv_dim], after RoPE
    act16 *value_cache;     // [n_layers, max_seq, kv_dim]
    // one chunk's activations
    float *x;               // residual stream [chunk, dim]
    act16 *xn;              // normalised input of a sublayer [chunk, dim]
    act16 *q, *att;         // [chunk, q_dim]
    act16 *proj;            // output of Wo or Wdown [chunk, dim]
    act16 *gate, *up;       // [chunk, hidden_dim]
    act16 *lora_mid;        // x A^T [chunk, max_rank]
    void *lora_scratch;     // lora_scratch_bytes_gpu of the widest adapted linear
    float *logits;          // [chunk, vocab]
    int *tokens, *positions;   // [chunk]
    float *norm_rows;       // [n_layers, dim]: the last token's residual row entering each layer (hidden_norms)
    act16 *final_row;       // [dim]: its final-normed row (hidden_norms)
    // on the host
    int *host_positions;    // [chunk]
    float *host_logits;     // [chunk, vocab]
    float *host_norm_rows;  // [n_layers + 1, dim]
    size_t bytes;
};

// ---- device memory --------------------------------------------------------------

// 0 when bytes fit in the device's free memory, else -1 with a message naming what needs them.
static int check_free_memory(size_t bytes, const char *what, char *err, size_t err_size) {
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    if (bytes <= free_bytes) return 0;
    snprintf(err, err_size, "out of GPU memory: %s needs %.1f MiB, but only %.1f MiB of %.1f MiB are free", what,
             bytes / 1048576.0, free_bytes / 1048576.0, total_bytes / 1048576.0);
    return -1;
}

// n floats copied to a new device buffer (NULL stays NULL), added to *total.
static float *device_floats(const float *host, size_t n, const char *what, size_t *total) {
    if (!host) return NULL;
    *total += sizeof(float) * n;
    float *device = (float *)gpu_malloc(sizeof(float) * n, what);
    gpu_upload(device, host, sizeof(float) * n);
    return device;
}

// n floats rounded into a new device buffer of the 16-bit type, added to *total.
static act16 *device_act16(const float *host, size_t n, const char *what, size_t *total) {
    *total += sizeof(act16) * n;
    return gpu_upload_as_act16(host, n, what);
}

// ---- the base --------------------------------------------------------------------

// Device bytes of the base: the 16-bit matrices and the fp32 vectors.
static size_t model_bytes(const Config *c, int has_lm_head) {
    size_t matrices = (size_t)c->vocab_size * c->dim * (has_lm_head ? 2 : 1), vectors = (size_t)c->dim + c->head_dim / 2;
    for (int t = 0; t < N_LINEARS; t++) {
        int in_dim, out_dim;
        linear_dims(c, t, &in_dim, &out_dim);
        matrices += (size_t)c->n_layers * in_dim * out_dim;
    }
    vectors += (size_t)c->n_layers * (2 * c->dim + (c->attention_bias ? (size_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim : 0));
    return sizeof(act16) * matrices + sizeof(float) * vectors;
}

GpuModel *gpu_model_upload(const Model *m, char *err, size_t err_size) {
    const Config *c = &m->config;
    if (!gpu_available()) {
        snprintf(err, err_size, "no CUDA device is visible");
        return NULL;
    }
    if (c->head_dim > ATTENTION_CACHE_MAX_HEAD_DIM) {
        snprintf(err, err_size, "%s: head_dim %d: the GPU inference path handles up to %d (use --device cpu)", m->path,
                 c->head_dim, ATTENTION_CACHE_MAX_HEAD_DIM);
        return NULL;
    }
    int tied = m->lm_head == m->embed;
    if (check_free_memory(model_bytes(c, !tied), "the base model", err, err_size) != 0) return NULL;
    GpuModel *g = (GpuModel *)cpu_calloc(1, sizeof(GpuModel), "GPU model");
    g->c = *c;
    g->layers = (GpuLayer *)cpu_calloc((size_t)c->n_layers, sizeof(GpuLayer), "GPU model layers");
    size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    for (int l = 0; l < c->n_layers; l++) {
        const LayerWeights *w = &m->layers[l];
        GpuLayer *d = &g->layers[l];
        for (int t = 0; t < N_LINEARS; t++) {
            int in_dim, out_dim;
            linear_dims(c, t, &in_dim, &out_dim);
            d->w[t] = device_act16(linear_weight(w, t), (size_t)out_dim * in_dim, "a base weight", &g->bytes);
        }
        d->attn_norm = device_floats(w->attn_norm, (size_t)c->dim, "attention norm", &g->bytes);
        d->mlp_norm = device_floats(w->mlp_norm, (size_t)c->dim, "MLP norm", &g->bytes);
        d->bq = device_floats(w->bq, q_dim, "q bias", &g->bytes);
        d->bk = device_floats(w->bk, kv_dim, "k bias", &g->bytes);
        d->bv = device_floats(w->bv, kv_dim, "v bias", &g->bytes);
    }
    size_t table = (size_t)c->vocab_size * c->dim;
    g->embed = device_act16(m->embed, table, "embedding", &g->bytes);
    g->lm_head = tied ? g->embed : device_act16(m->lm_head, table, "LM head", &g->bytes);
    g->final_norm = device_floats(m->final_norm, (size_t)c->dim, "final norm", &g->bytes);
    float *inv_freq = (float *)cpu_malloc(sizeof(float) * (size_t)(c->head_dim / 2), "RoPE frequencies");
    rope_inv_freq(c, inv_freq);
    g->inv_freq = device_floats(inv_freq, (size_t)(c->head_dim / 2), "RoPE frequencies", &g->bytes);
    free(inv_freq);
    return g;
}

void gpu_model_free(GpuModel *g) {
    if (!g) return;
    for (int l = 0; l < g->c.n_layers; l++) {
        GpuLayer *d = &g->layers[l];
        for (int t = 0; t < N_LINEARS; t++) gpu_free(d->w[t]);
        for (float *p : {d->attn_norm, d->mlp_norm, d->bq, d->bk, d->bv}) gpu_free(p);
    }
    if (g->lm_head != g->embed) gpu_free(g->lm_head);
    gpu_free(g->embed);
    gpu_free(g->final_norm);
    gpu_free(g->inv_freq);
    free(g->layers);
    free(g);
}

size_t gpu_model_bytes(const GpuModel *g) { return g->bytes; }

// ---- adapters --------------------------------------------------------------------

GpuAdapter *gpu_adapter_upload(const GpuModel *g, const AdapterWeights *adapter, char *err, size_t err_size) {
    const Config *c = &g->c;
    // A and B in 16-bit: half the fp32 bytes adapter_load_peft holds
    if (check_free_memory(adapter->bytes / 2, "the adapter", err, err_size) != 0) return NULL;
    GpuAdapter *a = (GpuAdapter *)cpu_calloc(1, sizeof(GpuAdapter), "GPU adapter");
    a->rank = adapter->rank;
    a->scaling = adapter->scaling;
    a->n_slots = adapter->n_slots;
    a->A = (act16 **)cpu_calloc((size_t)a->n_slots, sizeof(act16 *), "GPU adapter A");
    a->B = (act16 **)cpu_calloc((size_t)a->n_slots, sizeof(act16 *), "GPU adapter B");
    for (int slot = 0; slot < a->n_slots; slot++) {
        if (!adapter->A[slot]) continue;
        int in_dim, out_dim;
        linear_dims(c, slot % N_LINEARS, &in_dim, &out_dim);
        a->A[slot] = device_act16(adapter->A[slot], (size_t)a->rank * in_dim, "LoRA A", &a->bytes);
        a->B[slot] = device_act16(adapter->B[slot], (size_t)out_dim * a->rank, "LoRA B", &a->bytes);
    }
    return a;
}

void gpu_adapter_free(GpuAdapter *a) {
    if (!a) return;
    for (int slot = 0; slot < a->n_slots; slot++) {
        gpu_free(a->A[slot]);
        gpu_free(a->B[slot]);
    }
    free(a->A);
    free(a->B);
    free(a);
}

size_t gpu_adapter_bytes(const GpuAdapter *a) { return a->bytes; }

// ---- the cache and the activations -------------------------------------------------

// The widest input of an adapted linear: the LoRA scratch's rows.
static int widest_input(const Config *c) {
    int widest = 0;
    for (int t = 0; t < N_LINEARS; t++) {
        int in_dim, out_dim;
        linear_dims(c, t, &in_dim, &out_dim);
        if (in_dim > widest) widest = in_dim;
    }
    return widest;
}

typedef enum { BUFFERS_MEASURE, BUFFERS_ALLOCATE, BUFFERS_FREE } BuffersAction;

// s's device buffers: adds up their bytes into s->bytes, and allocates or frees them.
static void state_buffers(GpuInferState *s, BuffersAction action) {
    const Config *c = &s->c;
    size_t chunk = (size_t)s->max_chunk, dim = (size_t)c->dim, hidden = (size_t)c->hidden_dim;
    size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    size_t cache = (size_t)c->n_layers * s->max_seq * kv_dim;
    LoraShape widest = {s->max_chunk, widest_input(c), 0, s->max_rank, 0.0f};
    struct { void **p; size_t bytes; const char *what; } buffers[] = {
        {(void **)&s->key_cache, sizeof(act16) * cache, "key cache"},
        {(void **)&s->value_cache, sizeof(act16) * cache, "value cache"},
        {(void **)&s->x, sizeof(float) * chunk * dim, "residual stream"},
        {(void **)&s->xn, sizeof(act16) * chunk * dim, "normed activations"},
        {(void **)&s->q, sizeof(act16) * chunk * q_dim, "queries"},
        {(void **)&s->att, sizeof(act16) * chunk * q_dim, "attention output"},
        {(void **)&s->proj, sizeof(act16) * chunk * dim, "projection output"},
        {(void **)&s->gate, sizeof(act16) * chunk * hidden, "MLP gate"},
        {(void **)&s->up, sizeof(act16) * chunk * hidden, "MLP up"},
        {(void **)&s->lora_mid, sizeof(act16) * chunk * (s->max_rank > 0 ? s->max_rank : 1), "LoRA x A^T"},
        {(void **)&s->lora_scratch, lora_scratch_bytes_gpu(widest), "LoRA scratch"},
        {(void **)&s->logits, sizeof(float) * chunk * c->vocab_size, "logits"},
        {(void **)&s->tokens, sizeof(int) * chunk, "tokens"},
        {(void **)&s->positions, sizeof(int) * chunk, "positions"},
        {(void **)&s->norm_rows, sizeof(float) * c->n_layers * dim, "hidden-state rows"},
        {(void **)&s->final_row, sizeof(act16) * dim, "final-normed row"},
    };
    s->bytes = 0;
    for (auto &b : buffers) {
        s->bytes += b.bytes;
        if (action == BUFFERS_ALLOCATE) *b.p = gpu_malloc(b.bytes, b.what);
        if (action == BUFFERS_FREE) gpu_free(*b.p);
    }
}

GpuInferState *gpu_infer_state_create(const GpuModel *g, int max_seq, int max_chunk, int max_rank, char *err,
                                      size_t err_size) {
    const Config *c = &g->c;
    GpuInferState *s = (GpuInferState *)cpu_calloc(1, sizeof(GpuInferState), "GPU inference state");
    s->c = *c;
    s->max_seq = max_seq;
    s->max_chunk = max_chunk;
    s->max_rank = max_rank;
    state_buffers(s, BUFFERS_MEASURE);
    char what[96];
    snprintf(what, sizeof what, "a %d-token key/value cache and its activations", max_seq);
    if (check_free_memory(s->bytes, what, err, err_size) != 0) {
        free(s);
        return NULL;
    }
    state_buffers(s, BUFFERS_ALLOCATE);
    s->host_positions = (int *)cpu_malloc(sizeof(int) * (size_t)max_chunk, "positions");
    s->host_logits = (float *)cpu_malloc(sizeof(float) * (size_t)max_chunk * c->vocab_size, "logits");
    s->host_norm_rows = (float *)cpu_malloc(sizeof(float) * (size_t)(c->n_layers + 1) * c->dim, "hidden-state rows");
    return s;
}

void gpu_infer_state_free(GpuInferState *s) {
    if (!s) return;
    state_buffers(s, BUFFERS_FREE);
    free(s->host_positions);
    free(s->host_logits);
    free(s->host_norm_rows);
    free(s);
}

size_t gpu_infer_state_bytes(const GpuInferState *s) { return s->bytes; }

// ---- the forward pass -------------------------------------------------------------

// out [n, out_dim] += s (x A^T) B^T for the adapter's (layer, linear), when it adapts it.
static void add_lora(act16 *out, const act16 *x, const Config *c, const GpuAdapter *adapter, GpuInferState *s,
                     int layer, int linear, int n) {
    if (!adapter) return;
    const act16 *A = adapter->A[layer * N_LINEARS + linear], *B = adapter->B[layer * N_LINEARS + linear];
    if (!A) return;
    LoraShape shape = {n, 0, 0, adapter->rank, adapter->scaling};
    linear_dims(c, linear, &shape.in_dim, &shape.out_dim);
    lora_forward_gpu(out, s->lora_mid, x, NULL, A, B, shape, s->lora_scratch);
}

// x += Wo attention(rope(q), rope(k), v) for the chunk, filling this layer's cache.
static void attention_block(const Config *c, const GpuLayer *w, const GpuAdapter *adapter, int layer,
                            const float *inv_freq, GpuInferState *s, act16 *k_cache, act16 *v_cache, int n, int pos) {
    int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    act16 *k_new = k_cache + (size_t)pos * kv_dim, *v_new = v_cache + (size_t)pos * kv_dim;
    rmsnorm_gpu(s->xn, s->x, w->attn_norm, n, c->dim, c->norm_eps);
    matmul_gpu(s->q, s->xn, w->w[LINEAR_Q], w->bq, n, c->dim, q_dim);
    matmul_gpu(k_new, s->xn, w->w[LINEAR_K], w->bk, n, c->dim, kv_dim);
    matmul_gpu(v_new, s->xn, w->w[LINEAR_V], w->bv, n, c->dim, kv_dim);
    add_lora(s->q, s->xn, c, adapter, s, layer, LINEAR_Q, n);
    add_lora(k_new, s->xn, c, adapter, s, layer, LINEAR_K, n);
    add_lora(v_new, s->xn, c, adapter, s, layer, LINEAR_V, n);
    rope_gpu(s->q, s->positions, inv_freq, n, c->n_heads, c->head_dim);
    rope_gpu(k_new, s->positions, inv_freq, n, c->n_kv_heads, c->head_dim);
    attention_cached_gpu(s->att, s->q, k_cache, v_cache, n, pos, c->n_heads, c->n_kv_heads, c->head_dim);
    matmul_gpu(s->proj, s->att, w->w[LINEAR_O], NULL, n, q_dim, c->dim);
    add_lora(s->proj, s->att, c, adapter, s, layer, LINEAR_O, n);
    residual_add_gpu(s->x, s->proj, (size_t)n * c->dim);
}

// x += Wdown (silu(Wgate xn) * Wup xn)
static void mlp_block(const Config *c, const GpuLayer *w, const GpuAdapter *adapter, int layer, GpuInferState *s,
                      int n) {
    rmsnorm_gpu(s->xn, s->x, w->mlp_norm, n, c->dim, c->norm_eps);
    matmul_gpu(s->gate, s->xn, w->w[LINEAR_GATE], NULL, n, c->dim, c->hidden_dim);
    matmul_gpu(s->up, s->xn, w->w[LINEAR_UP], NULL, n, c->dim, c->hidden_dim);
    add_lora(s->gate, s->xn, c, adapter, s, layer, LINEAR_GATE, n);
    add_lora(s->up, s->xn, c, adapter, s, layer, LINEAR_UP, n);
    swiglu_gpu(s->gate, s->gate, s->up, (size_t)n * c->hidden_dim);
    matmul_gpu(s->proj, s->gate, w->w[LINEAR_DOWN], NULL, n, c->hidden_dim, c->dim);
    add_lora(s->proj, s->gate, c, adapter, s, layer, LINEAR_DOWN, n);
    residual_add_gpu(s->x, s->proj, (size_t)n * c->dim);
}

// hidden_norms from the rows kept in s: the n_layers residual rows (fp32) and the
// final-normed row (16-bit), their norms taken on the host as the CPU forward's.
static void hidden_norms_of(const Config *c, GpuInferState *s, float *hidden_norms) {
    size_t dim = (size_t)c->dim;
    gpu_download(s->host_norm_rows, s->norm_rows, sizeof(float) * c->n_layers * dim);
    gpu_download_act16(s->host_norm_rows + c->n_layers * dim, s->final_row, dim);
    for (int l = 0; l <= c->n_layers; l++) hidden_norms[l] = hidden_state_norm(s->host_norm_rows + l * dim, c->dim);
}

const float *forward_gpu(const GpuModel *g, const GpuAdapter *adapter, GpuInferState *s, const int *tokens, int n,
                         int pos, int all_logits, float *hidden_norms) {
    const Config *c = &g->c;
    size_t dim = (size_t)c->dim, kv_layer = (size_t)s->max_seq * c->n_kv_heads * c->head_dim;
    for (int t = 0; t < n; t++) s->host_positions[t] = pos + t;
    gpu_upload(s->tokens, tokens, sizeof(int) * n);
    gpu_upload(s->positions, s->host_positions, sizeof(int) * n);
    embedding_gpu(s->x, g->embed, s->tokens, n, c->dim);
    const float *last_x = s->x + (size_t)(n - 1) * dim;
    for (int l = 0; l < c->n_layers; l++) {
        if (hidden_norms)
            CUDA_CHECK(cudaMemcpy(s->norm_rows + l * dim, last_x, sizeof(float) * dim, cudaMemcpyDeviceToDevice));
        attention_block(c, &g->layers[l], adapter, l, g->inv_freq, s, s->key_cache + l * kv_layer,
                        s->value_cache + l * kv_layer, n, pos);
        mlp_block(c, &g->layers[l], adapter, l, s, n);
    }
    int first = all_logits ? 0 : n - 1;
    int n_out = n - first;
    rmsnorm_gpu(s->xn, s->x + (size_t)first * dim, g->final_norm, n_out, c->dim, c->norm_eps);
    if (hidden_norms)
        CUDA_CHECK(cudaMemcpy(s->final_row, s->xn + (size_t)(n_out - 1) * dim, sizeof(act16) * dim,
                              cudaMemcpyDeviceToDevice));
    // logits = xn lm_head^T, in fp32
    gemm_act16(s->logits, CUDA_R_32F, s->xn, false, g->lm_head, true, n_out, c->vocab_size, c->dim, 1.0f, 0.0f);
    gpu_download(s->host_logits, s->logits, sizeof(float) * n_out * c->vocab_size);
    if (hidden_norms) hidden_norms_of(c, s, hidden_norms);
    return s->host_logits;
}
#endif
