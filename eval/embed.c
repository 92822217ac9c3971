// eval/embed.c: the sentence encoder of eval/embed.h, all-MiniLM-L6-v2: a 6-layer BERT
// in fp32 on the CPU, followed by sentence-transformers' mean pooling and
// L2 normalisation.
//
// BERT is a transformer like the Llama model of infer/forward.cpp, with five
// differences worth knowing:
//  1. Bidirectional attention. Every token attends to every token, before and
//     after it: there is no causal mask and so no key/value cache. BERT reads
//     a whole text at once; it does not generate.
//  2. Absolute positions. A learned vector per position (and one per
//     "token type", sentence A or B) is added to the word's vector once, at
//     the input; Llama instead rotates queries and keys in every layer (RoPE).
//  3. Post-norm. Each block normalises AFTER adding its residual,
//     x = LayerNorm(x + f(x)); Llama normalises the block's input,
//     x = x + f(RMSNorm(x)), and keeps the residual stream unnormalised.
//  4. LayerNorm with a bias: (x - mean) / std * w + b, where Llama's RMSNorm
//     only divides by the root mean square and scales. Every linear map has
//     a bias too.
//  5. A GELU feed-forward block, W2 gelu(W1 x + b1) + b2, instead of
//     Llama's gated SwiGLU with three matrices.
// Attention itself is the same: 12 heads of 32 dimensions, softmax(q k^T /
// sqrt(32)) v, here with as many key/value heads as query heads.
#include "eval/embed.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/json.h"
#include "formats/safetensors.h"

// ---------------------------------------------------------------- the configuration files

// A positive integer member; an error naming the file when missing or not one.
static int read_int(const JsonValue *json, const char *key, int *out, const char *path, char *err,
                    size_t err_size) {
    const JsonValue *v = json_get(json, key);
    if (!v || v->type != JSON_NUMBER || !(v->number >= 1 && v->number <= 1 << 30) || v->number != floor(v->number)) {
        snprintf(err, err_size, "%s: '%s' is %s", path, key, v ? "not a positive integer" : "missing");
        return -1;
    }
    *out = (int)v->number;
    return 0;
}

// Checks that a string member, when present, has the value we implement.
static int expect_string(const JsonValue *json, const char *key, const char *want, const char *path, char *err,
                         size_t err_size) {
    const char *got = json_get_string(json, key, want);
    if (strcmp(got, want) == 0) return 0;
    snprintf(err, err_size, "%s: '%s' is \"%s\"; only \"%s\" is supported", path, key, got, want);
    return -1;
}

static int read_config_json(BertConfig *c, const char *path, char *err, size_t err_size) {
    JsonValue *json = json_parse_file(path, err, err_size);
    if (!json) return -1;
    int rc = -1;
    if (json->type != JSON_OBJECT) {
        snprintf(err, err_size, "%s: not a JSON object", path);
    } else if (expect_string(json, "model_type", "bert", path, err, err_size) == 0 &&
               expect_string(json, "hidden_act", "gelu", path, err, err_size) == 0 &&
               expect_string(json, "position_embedding_type", "absolute", path, err, err_size) == 0 &&
               read_int(json, "vocab_size", &c->vocab_size, path, err, err_size) == 0 &&
               read_int(json, "hidden_size", &c->dim, path, err, err_size) == 0 &&
               read_int(json, "num_hidden_layers", &c->n_layers, path, err, err_size) == 0 &&
               read_int(json, "num_attention_heads", &c->n_heads, path, err, err_size) == 0 &&
               read_int(json, "intermediate_size", &c->hidden_dim, path, err, err_size) == 0 &&
               read_int(json, "max_position_embeddings", &c->max_positions, path, err, err_size) == 0 &&
               read_int(json, "type_vocab_size", &c->n_token_types, path, err, err_size) == 0) {
        c->norm_eps = (float)json_get_number(json, "layer_norm_eps", 1e-12);
        if (c->dim % c->n_heads != 0) {
            snprintf(err, err_size, "%s: hidden_size %d is not a multiple of num_attention_heads %d", path, c->dim,
                     c->n_heads);
        } else if (!(c->norm_eps > 0)) {
            snprintf(err, err_size, "%s: 'layer_norm_eps' must be positive", path);
        } else {
            c->head_dim = c->dim / c->n_heads;
            c->max_tokens = c->max_positions;
            rc = 0;
        }
    }
    json_free(json);
    return rc;
}

// The files of sentence-transformers and the tokenizer that say how the
// encoder is used. Each is optional; when present it must agree with what we
// do: max_seq_length (cut to the position table), an uncased tokenizer,
// mean pooling.
static int read_usage_configs(BertConfig *c, const char *dir, char *err, size_t err_size) {
    char path[4096];
    snprintf(path, sizeof path, "%s/sentence_bert_config.json", dir);
    if (access(path, F_OK) == 0) {
        JsonValue *json = json_parse_file(path, err, err_size);
        if (!json) return -1;
        int rc = read_int(json, "max_seq_length", &c->max_tokens, path, err, err_size);
        json_free(json);
        if (rc != 0) return -1;
        if (c->max_tokens > c->max_positions) c->max_tokens = c->max_positions;
    }
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (access(path, F_OK) == 0) {
        JsonValue *json = json_parse_file(path, err, err_size);
        if (!json) return -1;
        const JsonValue *lower = json_get(json, "do_lower_case");
        int cased = lower && lower->type == JSON_BOOL && !lower->boolean;
        json_free(json);
        if (cased) {
            snprintf(err, err_size, "%s: do_lower_case is false; only uncased BERT tokenizers are supported", path);
            return -1;
        }
    }
    snprintf(path, sizeof path, "%s/1_Pooling/config.json", dir);
    if (access(path, F_OK) == 0) {
        JsonValue *json = json_parse_file(path, err, err_size);
        if (!json) return -1;
        const JsonValue *mean = json_get(json, "pooling_mode_mean_tokens");
        int is_mean = mean && mean->type == JSON_BOOL && mean->boolean;
        json_free(json);
        if (!is_mean) {
            snprintf(err, err_size, "%s: pooling_mode_mean_tokens is not true; only mean pooling is supported", path);
            return -1;
        }
    }
    return 0;
}

// ---------------------------------------------------------------- the weights

// Floats of all the tensors the encoder uses.
static size_t parameter_count(const BertConfig *c) {
    size_t dim = (size_t)c->dim, hidden = (size_t)c->hidden_dim;
    size_t embeddings = ((size_t)c->vocab_size + (size_t)c->max_positions + (size_t)c->n_token_types + 2) * dim;
    size_t attention = 4 * (dim * dim + dim) + 2 * dim;
    size_t feed_forward = 2 * hidden * dim + hidden + dim + 2 * dim;
    return embeddings + (size_t)c->n_layers * (attention + feed_forward);
}

// Copies tensors out of the safetensors file, one after the other, into the
// weight block, checking each one's shape and that its values are finite.
typedef struct {
    const SafetensorsFile *file;
    float *next;        // where the next tensor goes
    unsigned char *used;   // [file->tensors.count]: 1 once taken
    char *err;
    size_t err_size;
    int failed;         // set by the first error; later calls do nothing
} TensorReader;

// The tensor name as fp32, of shape [rows, cols], or [rows] when cols is 0.
static const float *take(TensorReader *r, const char *name, int rows, int cols) {
    if (r->failed) return NULL;
    const TensorInfo *t = tensor_find(&r->file->tensors, name);
    int ndim = cols ? 2 : 1;
    if (!t) {
        snprintf(r->err, r->err_size, "%s: tensor '%s' is missing", r->file->path, name);
    } else if (t->dtype != DT_F32 && t->dtype != DT_F16 && t->dtype != DT_BF16) {
        snprintf(r->err, r->err_size, "%s: tensor '%s' is %s; F32, F16 or BF16 expected", r->file->path, name,
                 dtype_name(t->dtype));
    } else if (t->ndim != ndim || t->shape[0] != rows || (cols && t->shape[1] != cols)) {
        char want[64];
        if (cols) snprintf(want, sizeof want, "[%d, %d]", rows, cols);
        else snprintf(want, sizeof want, "[%d]", rows);
        snprintf(r->err, r->err_size, "%s: tensor '%s' has the wrong shape; %s expected (from config.json)",
                 r->file->path, name, want);
    } else {
        float *out = r->next;
        tensor_to_f32(t->dtype, t->data, out, tensor_numel(t));
        r->used[t - r->file->tensors.tensors] = 1;
        r->next += tensor_numel(t);
        if (floats_all_finite(out, (size_t)tensor_numel(t))) return out;
        snprintf(r->err, r->err_size, "%s: tensor '%s' (%s) decodes to NaN or Inf values: its data is corrupt",
                 r->file->path, name, dtype_name(t->dtype));
    }
    r->failed = 1;
    return NULL;
}

// take() for "encoder.layer.L.suffix".
static const float *take_layer(TensorReader *r, int layer, const char *suffix, int rows, int cols) {
    char name[128];
    snprintf(name, sizeof name, "encoder.layer.%d.%s", layer, suffix);
    return take(r, name, rows, cols);
}

// The tensors of the file the encoder does not use, and ignores as
// sentence-transformers does; any other unused tensor is an error (a layer
// past num_hidden_layers, say). BertModel's pooler: mean pooling replaces it.
// The position-id buffer: 0, 1, 2, ..., which the encoder counts itself.
static const char *const IGNORED_TENSORS[] = {"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"};
#define N_IGNORED_TENSORS (sizeof IGNORED_TENSORS / sizeof IGNORED_TENSORS[0])

static int is_ignored_tensor(const char *name) {
    for (size_t i = 0; i < N_IGNORED_TENSORS; i++)
        if (strcmp(name, IGNORED_TENSORS[i]) == 0) return 1;
    return 0;
}

// Every tensor of the file must have been taken, or be one IGNORED_TENSORS names.
static int check_all_used(const TensorReader *r, int n_layers) {
    const TensorList *tensors = &r->file->tensors;
    for (int i = 0; i < tensors->count; i++) {
        const char *name = tensors->tensors[i].name;
        if (r->used[i] || is_ignored_tensor(name)) continue;
        int layer;
        if (sscanf(name, "encoder.layer.%d.", &layer) == 1 && layer >= n_layers)
            snprintf(r->err, r->err_size, "%s: tensor '%s' is in the file but not used: config.json says %d layers",
                     r->file->path, name, n_layers);
        else
            snprintf(r->err, r->err_size, "%s: tensor '%s' is in the file but not used: no BERT weight has this name",
                     r->file->path, name);
        return -1;
    }
    return 0;
}

// Reads every tensor the encoder uses (HF BertModel's names) into e->weights;
// the file may hold no other (but IGNORED_TENSORS).
static int read_weights(Embedder *e, const SafetensorsFile *file, char *err, size_t err_size) {
    const BertConfig *c = &e->config;
    TensorReader r = {file, e->weights, calloc(file->tensors.count ? file->tensors.count : 1, 1), err, err_size, 0};
    if (!r.used) {
        snprintf(err, err_size, "%s: out of memory", file->path);
        return -1;
    }
    e->word_embeddings = take(&r, "embeddings.word_embeddings.weight", c->vocab_size, c->dim);
    e->position_embeddings = take(&r, "embeddings.position_embeddings.weight", c->max_positions, c->dim);
    e->token_type_embeddings = take(&r, "embeddings.token_type_embeddings.weight", c->n_token_types, c->dim);
    e->embed_norm_w = take(&r, "embeddings.LayerNorm.weight", c->dim, 0);
    e->embed_norm_b = take(&r, "embeddings.LayerNorm.bias", c->dim, 0);
    for (int l = 0; l < c->n_layers; l++) {
        BertLayer *L = &e->layers[l];
        L->query_w = take_layer(&r, l, "attention.self.query.weight", c->dim, c->dim);
        L->query_b = take_layer(&r, l, "attention.self.query.bias", c->dim, 0);
        L->key_w = take_layer(&r, l, "attention.self.key.weight", c->dim, c->dim);
        L->key_b = take_layer(&r, l, "attention.self.key.bias", c->dim, 0);
        L->value_w = take_layer(&r, l, "attention.self.value.weight", c->dim, c->dim);
        L->value_b = take_layer(&r, l, "attention.self.value.bias", c->dim, 0);
        L->attn_out_w = take_layer(&r, l, "attention.output.dense.weight", c->dim, c->dim);
        L->attn_out_b = take_layer(&r, l, "attention.output.dense.bias", c->dim, 0);
        L->attn_norm_w = take_layer(&r, l, "attention.output.LayerNorm.weight", c->dim, 0);
        L->attn_norm_b = take_layer(&r, l, "attention.output.LayerNorm.bias", c->dim, 0);
        L->ffn_in_w = take_layer(&r, l, "intermediate.dense.weight", c->hidden_dim, c->dim);
        L->ffn_in_b = take_layer(&r, l, "intermediate.dense.bias", c->hidden_dim, 0);
        L->ffn_out_w = take_layer(&r, l, "output.dense.weight", c->dim, c->hidden_dim);
        L->ffn_out_b = take_layer(&r, l, "output.dense.bias", c->dim, 0);
        L->ffn_norm_w = take_layer(&r, l, "output.LayerNorm.weight", c->dim, 0);
        L->ffn_norm_b = take_layer(&r, l, "output.LayerNorm.bias", c->dim, 0);
    }
    int status = r.failed ? -1 : check_all_used(&r, c->n_layers);
    free(r.used);
    return status;
}

int embedder_load(Embedder *e, const char *dir, char *err, size_t err_size) {
    memset(e, 0, sizeof *e);
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path) {
        snprintf(err, err_size, "%s: path too long", dir);
        return -1;
    }
    if (read_config_json(&e->config, path, err, err_size) != 0 ||
        read_usage_configs(&e->config, dir, err, err_size) != 0)
        return -1;

    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    e->tokenizer = wordpiece_load(path, err, err_size);
    if (!e->tokenizer) return -1;
    if (wordpiece_vocab_size(e->tokenizer) != e->config.vocab_size) {
        snprintf(err, err_size, "%s: %d tokens, but config.json says vocab_size %d", path,
                 wordpiece_vocab_size(e->tokenizer), e->config.vocab_size);
        embedder_free(e);
        return -1;
    }

    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    SafetensorsFile file;
    if (safetensors_open(&file, path, err, err_size) != 0) {
        embedder_free(e);
        return -1;
    }
    e->weights = malloc(parameter_count(&e->config) * sizeof(float));
    e->layers = calloc((size_t)e->config.n_layers, sizeof *e->layers);
    int rc = -1;
    if (!e->weights || !e->layers) snprintf(err, err_size, "%s: out of memory", path);
    else rc = read_weights(e, &file, err, err_size);
    safetensors_close(&file);
    if (rc != 0) embedder_free(e);
    return rc;
}

void embedder_free(Embedder *e) {
    wordpiece_free(e->tokenizer);
    free(e->weights);
    free(e->layers);
    memset(e, 0, sizeof *e);
}

int embedder_dim(const Embedder *e) { return e->config.dim; }

// ---------------------------------------------------------------- the layers

// out[n, out_dim] = in[n, in_dim] W^T + bias   (W is [out_dim, in_dim])
// Nearly all the time goes here. The sanitizers of the test build would keep
// the compiler from vectorising the inner loop (20 times slower), so this one
// function is built without them; the other layers check every access to
// the same buffers.
__attribute__((no_sanitize("address", "undefined")))
static void linear(float *out, const float *in, const float *weight, const float *bias, int n, int in_dim,
                   int out_dim) {
    for (int o = 0; o < out_dim; o++) {
        const float *w_row = weight + (size_t)o * in_dim;
        for (int t = 0; t < n; t++) {
            const float *x = in + (size_t)t * in_dim;
            float sum = 0;
            #pragma omp simd reduction(+ : sum)
            for (int i = 0; i < in_dim; i++) sum += x[i] * w_row[i];
            out[(size_t)t * out_dim + o] = sum + bias[o];
        }
    }
}

// x = LayerNorm(x + add) per row: (v - mean(v)) / sqrt(var(v) + eps) * w + b,
// v = x + add (add may be NULL), var the mean of (v - mean)^2.
static void add_layer_norm(float *x, const float *add, const float *weight, const float *bias, int n, int dim,
                           float eps) {
    for (int t = 0; t < n; t++) {
        float *row = x + (size_t)t * dim;
        if (add)
            for (int i = 0; i < dim; i++) row[i] += add[(size_t)t * dim + i];
        double sum = 0;
        for (int i = 0; i < dim; i++) sum += row[i];
        float mean = (float)(sum / dim);
        double squares = 0;
        for (int i = 0; i < dim; i++) squares += (double)(row[i] - mean) * (row[i] - mean);
        float inv_std = (float)(1.0 / sqrt(squares / dim + eps));
        for (int i = 0; i < dim; i++) row[i] = (row[i] - mean) * inv_std * weight[i] + bias[i];
    }
}

// gelu(x) = x/2 (1 + erf(x / sqrt 2)), the exact form (HF's "gelu"), in place
static void gelu(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
}

// Multi-head attention over all n tokens, both directions:
// out_i = sum_j softmax_j(q_i . k_j / sqrt(head_dim)) v_j, per head.
// sentence-transformers embeds a batch padded to its longest text and adds a
// large negative number to the scores of the padding keys (the padding mask)
// so that they get no weight. We embed one text at a time: there is no
// padding, and every key is a real token. scores is scratch, [n_heads, n, n].
static void attention(float *out, const float *q, const float *k, const float *v, float *scores, int n,
                      int n_heads, int head_dim) {
    int dim = n_heads * head_dim;
    float scale = 1.0f / sqrtf((float)head_dim);
    for (int h = 0; h < n_heads; h++) {
        for (int i = 0; i < n; i++) {
            const float *qi = q + (size_t)i * dim + h * head_dim;
            float *s = scores + ((size_t)h * n + i) * n;
            float max = -INFINITY;
            for (int j = 0; j < n; j++) {
                const float *kj = k + (size_t)j * dim + h * head_dim;
                float dot = 0;
                #pragma omp simd reduction(+ : dot)
                for (int d = 0; d < head_dim; d++) dot += qi[d] * kj[d];
                s[j] = dot * scale;
                if (s[j] > max) max = s[j];
            }
            // softmax: exp(s_j - max) / sum_j exp(s_j - max)
            float total = 0;
            for (int j = 0; j < n; j++) {
                s[j] = expf(s[j] - max);
                total += s[j];
            }
            float *oi = out + (size_t)i * dim + h * head_dim;
            for (int d = 0; d < head_dim; d++) oi[d] = 0;
            for (int j = 0; j < n; j++) {
                const float *vj = v + (size_t)j * dim + h * head_dim;
                float weight = s[j] / total;
                for (int d = 0; d < head_dim; d++) oi[d] += weight * vj[d];
            }
        }
    }
}

// ---------------------------------------------------------------- the encoder

// The activations of one text of n tokens, in one allocation.
typedef struct {
    float *block;
    float *x;             // the residual stream [n, dim]
    float *q, *k, *v;     // [n, dim]
    float *attended;      // attention output [n, dim]
    float *proj;          // output of a block's last linear map [n, dim]
    float *hidden;        // feed-forward activations [n, hidden_dim]
    float *scores;        // attention weights [n_heads, n, n]
} Activations;

static int activations_alloc(Activations *a, const BertConfig *c, int n) {
    size_t row = (size_t)n * c->dim;
    size_t hidden = (size_t)n * c->hidden_dim, scores = (size_t)c->n_heads * n * n;
    a->block = malloc((6 * row + hidden + scores) * sizeof(float));
    if (!a->block) return -1;
    a->x = a->block;
    a->q = a->x + row;
    a->k = a->q + row;
    a->v = a->k + row;
    a->attended = a->v + row;
    a->proj = a->attended + row;
    a->hidden = a->proj + row;
    a->scores = a->hidden + hidden;
    return 0;
}

// x_i = LayerNorm(word[t_i] + position[i] + token_type[0])   (one sentence: type 0)
static void embed_input(const Embedder *e, const int *ids, int n, float *x) {
    int dim = e->config.dim;
    for (int i = 0; i < n; i++) {
        const float *word = e->word_embeddings + (size_t)ids[i] * dim;
        const float *position = e->position_embeddings + (size_t)i * dim;
        for (int d = 0; d < dim; d++) x[(size_t)i * dim + d] = word[d] + position[d] + e->token_type_embeddings[d];
    }
    add_layer_norm(x, NULL, e->embed_norm_w, e->embed_norm_b, n, dim, e->config.norm_eps);
}

// One post-norm encoder layer:
//   x = LayerNorm(x + Wo attention(Wq x, Wk x, Wv x) + bo)
//   x = LayerNorm(x + W2 gelu(W1 x + b1) + b2)
static void encoder_layer(const BertConfig *c, const BertLayer *L, Activations *a, int n) {
    linear(a->q, a->x, L->query_w, L->query_b, n, c->dim, c->dim);
    linear(a->k, a->x, L->key_w, L->key_b, n, c->dim, c->dim);
    linear(a->v, a->x, L->value_w, L->value_b, n, c->dim, c->dim);
    attention(a->attended, a->q, a->k, a->v, a->scores, n, c->n_heads, c->head_dim);
    linear(a->proj, a->attended, L->attn_out_w, L->attn_out_b, n, c->dim, c->dim);
    add_layer_norm(a->x, a->proj, L->attn_norm_w, L->attn_norm_b, n, c->dim, c->norm_eps);

    linear(a->hidden, a->x, L->ffn_in_w, L->ffn_in_b, n, c->dim, c->hidden_dim);
    gelu(a->hidden, (size_t)n * c->hidden_dim);
    linear(a->proj, a->hidden, L->ffn_out_w, L->ffn_out_b, n, c->hidden_dim, c->dim);
    add_layer_norm(a->x, a->proj, L->ffn_norm_w, L->ffn_norm_b, n, c->dim, c->norm_eps);
}

// out = m / max(|m|, 1e-12), m = (1/n) sum_i x_i: mean pooling over the
// tokens ([CLS] and [SEP] included, as sentence-transformers does), then
// L2 normalisation (torch's F.normalize).
static void mean_pool_normalize(const float *x, int n, int dim, float *out) {
    double length_squared = 0;
    for (int d = 0; d < dim; d++) {
        double sum = 0;
        for (int i = 0; i < n; i++) sum += x[(size_t)i * dim + d];
        out[d] = (float)(sum / n);
        length_squared += (double)out[d] * out[d];
    }
    double length = sqrt(length_squared);
    if (length < 1e-12) length = 1e-12;
    for (int d = 0; d < dim; d++) out[d] = (float)(out[d] / length);
}

int embed_tokens(const Embedder *e, const int *ids, int n, float *out) {
    const BertConfig *c = &e->config;
    if (n < 1 || n > c->max_tokens) return -1;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size) return -1;
    Activations a;
    if (activations_alloc(&a, c, n) != 0) return -1;
    embed_input(e, ids, n, a.x);
    for (int l = 0; l < c->n_layers; l++) encoder_layer(c, &e->layers[l], &a, n);
    mean_pool_normalize(a.x, n, c->dim, out);
    free(a.block);
    return 0;
}

int embed_text(const Embedder *e, const char *text, float *out) {
    int *ids = NULL;
    int n = wordpiece_encode(e->tokenizer, text, strlen(text), e->config.max_tokens, &ids);
    int rc = n < 0 ? -1 : embed_tokens(e, ids, n, out);
    free(ids);
    return rc;
}

// One text per thread: a text's matrices are small (a 10-token answer is
// 10 x 384 against 384 x 384), so splitting one text's work between threads
// costs more in synchronisation than it gains, while texts are independent.
int embed_texts(const Embedder *e, const char *const *texts, int n_texts, float *out) {
    int failed = 0;
    #pragma omp parallel for schedule(dynamic) reduction(| : failed)
    for (int i = 0; i < n_texts; i++) failed |= embed_text(e, texts[i], out + (size_t)i * e->config.dim) != 0;
    return failed ? -1 : 0;
}

// cos(a, b) = a.b / (|a| |b|)
float embed_cosine(const float *a, const float *b, int dim) {
    double dot = 0, aa = 0, bb = 0;
    for (int i = 0; i < dim; i++) {
        dot += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    if (aa == 0 || bb == 0) return 0;
    return (float)(dot / sqrt(aa * bb));
}
