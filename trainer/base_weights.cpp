// trainer/base_weights.cpp: NF4 storage of the frozen linear weights and the loader
// that hands train_step one block at a time.
#include "trainer/base_weights.h"

#include <stdlib.h>
#include <string.h>

static size_t linear_numel(const Config *c, int target) {
    int in_dim, out_dim;
    linear_dims(c, target, &in_dim, &out_dim);
    return (size_t)in_dim * out_dim;
}

// The norms and biases of a block, shared by both modes.
static void fill_small_tensors(const LayerWeights *l, BlockWeights<float> *w) {
    w->attn_norm = l->attn_norm;
    w->mlp_norm = l->mlp_norm;
    w->bq = l->bq;
    w->bk = l->bk;
    w->bv = l->bv;
}

static void load_fp32_block(void *context, int layer, BlockWeights<float> *w) {
    BaseWeights *b = (BaseWeights *)context;
    const LayerWeights *l = &b->model->layers[layer];
    fill_small_tensors(l, w);
    w->wq = l->wq; w->wk = l->wk; w->wv = l->wv; w->wo = l->wo;
    w->w_gate = l->w_gate; w->w_up = l->w_up; w->w_down = l->w_down;
}

// W = dequant(NF4(W)) for the block's seven matrices, into the scratch buffer.
static void load_nf4_block(void *context, int layer, BlockWeights<float> *w) {
    BaseWeights *b = (BaseWeights *)context;
    const Config *c = &b->model->config;
    fill_small_tensors(&b->model->layers[layer], w);
    const float *matrices[N_LINEARS];
    float *next = b->dequantized;
    for (int t = 0; t < N_LINEARS; t++) {
        nf4_dequantize(&b->nf4[layer * N_LINEARS + t], next);
        matrices[t] = next;
        next += linear_numel(c, t);
    }
    w->wq = matrices[LINEAR_Q]; w->wk = matrices[LINEAR_K]; w->wv = matrices[LINEAR_V]; w->wo = matrices[LINEAR_O];
    w->w_gate = matrices[LINEAR_GATE]; w->w_up = matrices[LINEAR_UP]; w->w_down = matrices[LINEAR_DOWN];
}

int base_weights_init(BaseWeights *b, const Model *model, QuantMode quant, int double_quant) {
    memset(b, 0, sizeof *b);
    const Config *c = &model->config;
    b->model = model;
    b->quant = quant;
    b->source.context = b;
    b->source.embed = model->embed;
    b->source.final_norm = model->final_norm;
    b->source.lm_head = model->lm_head;
    b->source.load_block = load_fp32_block;
    if (quant == QUANT_NONE) return 0;
    size_t block_numel = 0;
    for (int t = 0; t < N_LINEARS; t++) block_numel += linear_numel(c, t);
    b->nf4 = (NF4Tensor *)calloc((size_t)c->n_layers * N_LINEARS, sizeof(NF4Tensor));
    b->dequantized = (float *)malloc(block_numel * sizeof(float));
    if (!b->nf4 || !b->dequantized) { base_weights_free(b); return -1; }
    for (int l = 0; l < c->n_layers; l++)
        for (int t = 0; t < N_LINEARS; t++)
            if (nf4_quantize(&b->nf4[l * N_LINEARS + t], linear_weight(&model->layers[l], t),
                             (int64_t)linear_numel(c, t), double_quant) != 0) {
                base_weights_free(b);
                return -1;
            }
    b->source.load_block = load_nf4_block;
    return 0;
}

void base_weights_free(BaseWeights *b) {
    if (b->nf4)
        for (int i = 0; i < b->model->config.n_layers * N_LINEARS; i++) nf4_free(&b->nf4[i]);
    free(b->nf4);
    free(b->dequantized);
    memset(b, 0, sizeof *b);
}

size_t base_weights_linear_bytes(const BaseWeights *b) {
    const Config *c = &b->model->config;
    size_t total = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int t = 0; t < N_LINEARS; t++)
            total += b->quant == QUANT_NF4 ? nf4_bytes(&b->nf4[l * N_LINEARS + t]) : linear_numel(c, t) * sizeof(float);
    return total;
}
