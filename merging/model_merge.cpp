// merging/model_merge.cpp: linear, slerp and passthrough merges of whole
// models (see merging/model_merge.h). Plain host code.
#include "merging/model_merge.h"
#include "formats/tensor.h"
#include "infer/merge.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- shapes -------------------------------------------------------------------

int models_check_same_shape(const Model *a, const Model *b, int compare_layers, char *err, size_t err_size) {
    const Config *x = &a->config, *y = &b->config;
    struct { const char *what; long long mine, theirs; } fields[] = {
        {"architecture", x->arch, y->arch},
        {"hidden_size", x->dim, y->dim},
        {"intermediate_size", x->hidden_dim, y->hidden_dim},
        {"num_attention_heads", x->n_heads, y->n_heads},
        {"num_key_value_heads", x->n_kv_heads, y->n_kv_heads},
        {"head_dim", x->head_dim, y->head_dim},
        {"vocab_size", x->vocab_size, y->vocab_size},
        {"attention_bias", x->attention_bias, y->attention_bias},
        {"tie_word_embeddings", x->tied_embeddings, y->tied_embeddings},
        {"num_hidden_layers", compare_layers ? x->n_layers : 0, compare_layers ? y->n_layers : 0},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if (fields[i].mine == fields[i].theirs) continue;
        snprintf(err, err_size, "%s: %s is %lld, but %s's is %lld (merging needs models of the same shape)", b->path,
                 fields[i].what, fields[i].theirs, a->path, fields[i].mine);
        return -1;
    }
    return 0;
}

static int64_t weight_count(const NamedWeight *w) { return w->cols ? w->rows * w->cols : w->rows; }

// ---- linear -------------------------------------------------------------------

void models_merge_linear(Model *inputs, int count, const double *weights) {
    int capacity = MODEL_MAX_WEIGHTS(inputs[0].config.n_layers);
    NamedWeight *lists = (NamedWeight *)cpu_calloc((size_t)count * capacity, sizeof(NamedWeight), "weight lists");
    int n = 0;
    for (int i = 0; i < count; i++) n = model_list_weights(&inputs[i], &lists[(size_t)i * capacity]);
    double weight_sum = 0.0;
    for (int i = 0; i < count; i++) weight_sum += weights[i];
    for (int j = 0; j < n; j++) {
        float *out = lists[j].values;
        int64_t size = weight_count(&lists[j]);
        // W = sum_i w_i W_i / sum_i w_i
        #pragma omp parallel for schedule(static)
        for (int64_t k = 0; k < size; k++) {
            double sum = 0.0;
            for (int i = 0; i < count; i++) sum += weights[i] * lists[(size_t)i * capacity + j].values[k];
            out[k] = (float)(sum / weight_sum);
        }
    }
    free(lists);
}

// ---- slerp --------------------------------------------------------------------

static double norm_or_one(const float *v, int64_t n) {
    double sum = 0.0;
    for (int64_t k = 0; k < n; k++) sum += (double)v[k] * v[k];
    double norm = sqrt(sum);
    return norm > SLERP_EPS ? norm : 1.0;
}

int slerp_tensor(float *out, const float *v0, const float *v1, int64_t n, double t) {
    double norm0 = norm_or_one(v0, n), norm1 = norm_or_one(v1, n);
    double dot = 0.0;
    for (int64_t k = 0; k < n; k++) dot += (v0[k] / norm0) * (v1[k] / norm1);
    dot = dot > 1.0 ? 1.0 : dot < -1.0 ? -1.0 : dot;
    int linear = fabs(dot) > SLERP_DOT_THRESHOLD;
    double c0 = 1.0 - t, c1 = t;
    if (!linear) {
        double theta = acos(dot), sin_theta = sin(theta);
        c0 = sin((1.0 - t) * theta) / sin_theta;
        c1 = sin(t * theta) / sin_theta;
    }
    for (int64_t k = 0; k < n; k++) out[k] = (float)(c0 * v0[k] + c1 * v1[k]);
    return linear;
}

int models_merge_slerp(Model *inputs, double t) {
    int capacity = MODEL_MAX_WEIGHTS(inputs[0].config.n_layers);
    NamedWeight *first = (NamedWeight *)cpu_calloc((size_t)capacity, sizeof(NamedWeight), "weight list");
    NamedWeight *second = (NamedWeight *)cpu_calloc((size_t)capacity, sizeof(NamedWeight), "weight list");
    int n = model_list_weights(&inputs[0], first);
    model_list_weights(&inputs[1], second);
    int n_linear = 0;
    for (int j = 0; j < n; j++)
        n_linear += slerp_tensor(first[j].values, first[j].values, second[j].values, weight_count(&first[j]), t);
    free(first);
    free(second);
    return n_linear;
}

// ---- passthrough --------------------------------------------------------------

// A whole number at *p, moving *p past it; -1 when there is none.
static long read_number(const char **p) {
    if (!isdigit((unsigned char)**p)) return -1;
    long value = 0;
    while (isdigit((unsigned char)**p) && value < 1000000) value = value * 10 + (*(*p)++ - '0');
    return value;
}

int parse_layer_ranges(const char *spec, LayerRange *ranges, int max, char *err, size_t err_size) {
    const char *p = spec;
    int n = 0;
    while (1) {
        const char *start = p;
        long input = read_number(&p), first = -1, last = -1;
        if (input >= 0 && *p == ':') { p++; first = read_number(&p); }
        if (first >= 0 && *p == '-') { p++; last = read_number(&p); }
        if (last < 0 || (*p != ',' && *p != '\0')) {
            snprintf(err, err_size, "--layers: '%s' is not INPUT:FIRST-LAST (e.g. 0:0-15,1:8-29), at '%s'", spec,
                     start);
            return -1;
        }
        if (first > last) {
            snprintf(err, err_size, "--layers: range %ld:%ld-%ld ends before it starts", input, first, last);
            return -1;
        }
        if (n == max) { snprintf(err, err_size, "--layers: more than %d ranges", max); return -1; }
        ranges[n++] = LayerRange{(int)input, (int)first, (int)last};
        if (*p == '\0') return n;
        p++;
    }
}

// Copies one block's weights (shapes from c) from src to dst.
static void copy_layer(const Config *c, LayerWeights *dst, const LayerWeights *src) {
    size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    size_t dim = (size_t)c->dim, hidden = (size_t)c->hidden_dim;
    memcpy(dst->attn_norm, src->attn_norm, sizeof(float) * dim);
    memcpy(dst->wq, src->wq, sizeof(float) * q_dim * dim);
    memcpy(dst->wk, src->wk, sizeof(float) * kv_dim * dim);
    memcpy(dst->wv, src->wv, sizeof(float) * kv_dim * dim);
    if (c->attention_bias) {
        memcpy(dst->bq, src->bq, sizeof(float) * q_dim);
        memcpy(dst->bk, src->bk, sizeof(float) * kv_dim);
        memcpy(dst->bv, src->bv, sizeof(float) * kv_dim);
    }
    memcpy(dst->wo, src->wo, sizeof(float) * dim * q_dim);
    memcpy(dst->mlp_norm, src->mlp_norm, sizeof(float) * dim);
    memcpy(dst->w_gate, src->w_gate, sizeof(float) * hidden * dim);
    memcpy(dst->w_up, src->w_up, sizeof(float) * hidden * dim);
    memcpy(dst->w_down, src->w_down, sizeof(float) * dim * hidden);
}

static int check_ranges(const Model *inputs, int count, const LayerRange *ranges, int n_ranges, int *total,
                        char *err, size_t err_size) {
    *total = 0;
    for (int r = 0; r < n_ranges; r++) {
        const LayerRange *range = &ranges[r];
        if (range->input >= count) {
            snprintf(err, err_size, "--layers: range %d:%d-%d names input %d, but there are %d inputs (0 to %d)",
                     range->input, range->first, range->last, range->input, count, count - 1);
            return -1;
        }
        int n_layers = inputs[range->input].config.n_layers;
        if (range->last >= n_layers) {
            snprintf(err, err_size, "--layers: range %d:%d-%d, but %s has layers 0 to %d", range->input,
                     range->first, range->last, inputs[range->input].path, n_layers - 1);
            return -1;
        }
        *total += range->last - range->first + 1;
    }
    if (*total > 1024) { snprintf(err, err_size, "--layers: %d layers in all (at most 1024)", *total); return -1; }
    return 0;
}

int models_merge_passthrough(const Model *inputs, int count, const LayerRange *ranges, int n_ranges, Model *out,
                             char *err, size_t err_size) {
    memset(out, 0, sizeof *out);
    for (int i = 1; i < count; i++)
        if (models_check_same_shape(&inputs[0], &inputs[i], 0, err, err_size) != 0) return -1;
    int total;
    if (check_ranges(inputs, count, ranges, n_ranges, &total, err, err_size) != 0) return -1;
    Config config = inputs[0].config;
    config.n_layers = total;
    if (model_init_random(out, &config, 0, err, err_size) != 0) return -1;
    const Model *head = &inputs[ranges[0].input], *tail = &inputs[ranges[n_ranges - 1].input];
    size_t embed_floats = (size_t)config.vocab_size * config.dim;
    memcpy(out->embed, head->embed, sizeof(float) * embed_floats);
    memcpy(out->final_norm, tail->final_norm, sizeof(float) * config.dim);
    if (!config.tied_embeddings) memcpy(out->lm_head, tail->lm_head, sizeof(float) * embed_floats);
    int layer = 0;
    for (int r = 0; r < n_ranges; r++)
        for (int l = ranges[r].first; l <= ranges[r].last; l++)
            copy_layer(&config, &out->layers[layer++], &inputs[ranges[r].input].layers[l]);
    out->tokenizer = head->tokenizer;
    return 0;
}
