// model.c: turns a GGUF file or an HF checkpoint directory into a Model:
// reads the config (GGUF metadata or config.json), finds every expected tensor
// by its architecture's name, checks its shape and type, converts it to fp32
// and checks the values are finite; then checks that the file holds no tensor
// the model did not use.
#include "model.h"
#include "formats/gguf.h"
#include "formats/hash.h"
#include "formats/hf_checkpoint.h"
#include "formats/json.h"
#include "ops/random.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// What a tensor is for; each role has a name per naming scheme.
typedef enum {
    ROLE_EMBED, ROLE_FINAL_NORM, ROLE_LM_HEAD,
    ROLE_ATTN_NORM, ROLE_WQ, ROLE_WK, ROLE_WV, ROLE_BQ, ROLE_BK, ROLE_BV, ROLE_WO,
    ROLE_MLP_NORM, ROLE_GATE, ROLE_UP, ROLE_DOWN
} Role;

typedef enum { NAMES_GGUF, NAMES_HF_LLAMA, NAMES_HF_EXAONE } NameScheme;

// Tensor name templates, indexed [scheme][role]; %d is the layer.
static const char *const TENSOR_NAMES[3][15] = {
    {"token_embd.weight", "output_norm.weight", "output.weight",
     "blk.%d.attn_norm.weight", "blk.%d.attn_q.weight", "blk.%d.attn_k.weight",
     "blk.%d.attn_v.weight", "blk.%d.attn_q.bias", "blk.%d.attn_k.bias", "blk.%d.attn_v.bias",
     "blk.%d.attn_output.weight", "blk.%d.ffn_norm.weight", "blk.%d.ffn_gate.weight",
     "blk.%d.ffn_up.weight", "blk.%d.ffn_down.weight"},
    {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
     "model.layers.%d.input_layernorm.weight", "model.layers.%d.self_attn.q_proj.weight",
     "model.layers.%d.self_attn.k_proj.weight", "model.layers.%d.self_attn.v_proj.weight",
     "model.layers.%d.self_attn.q_proj.bias", "model.layers.%d.self_attn.k_proj.bias",
     "model.layers.%d.self_attn.v_proj.bias", "model.layers.%d.self_attn.o_proj.weight",
     "model.layers.%d.post_attention_layernorm.weight", "model.layers.%d.mlp.gate_proj.weight",
     "model.layers.%d.mlp.up_proj.weight", "model.layers.%d.mlp.down_proj.weight"},
    {"transformer.wte.weight", "transformer.ln_f.weight", "lm_head.weight",
     "transformer.h.%d.ln_1.weight", "transformer.h.%d.attn.attention.q_proj.weight",
     "transformer.h.%d.attn.attention.k_proj.weight", "transformer.h.%d.attn.attention.v_proj.weight",
     "transformer.h.%d.attn.attention.q_proj.bias", "transformer.h.%d.attn.attention.k_proj.bias",
     "transformer.h.%d.attn.attention.v_proj.bias", "transformer.h.%d.attn.attention.out_proj.weight",
     "transformer.h.%d.ln_2.weight", "transformer.h.%d.mlp.c_fc_0.weight",
     "transformer.h.%d.mlp.c_fc_1.weight", "transformer.h.%d.mlp.c_proj.weight"},
};

const char *arch_name(Arch arch) {
    switch (arch) {
    case ARCH_LLAMA: return "llama";
    case ARCH_QWEN2: return "qwen2";
    case ARCH_EXAONE: return "exaone";
    }
    return "unknown";
}

const char *const LINEAR_NAMES[N_LINEARS] = {"q", "k", "v", "o", "gate", "up", "down"};

const int LINEAR_GROUP_FIRST[N_LINEAR_GROUPS + 1] = {LINEAR_Q, LINEAR_O, LINEAR_GATE, LINEAR_DOWN, N_LINEARS};

int linear_group_of(int linear) {
    int group = 0;
    while (linear >= LINEAR_GROUP_FIRST[group + 1]) group++;
    return group;
}

void linear_dims(const Config *c, int linear, int *in_dim, int *out_dim) {
    int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    int ins[N_LINEARS] = {c->dim, c->dim, c->dim, q_dim, c->dim, c->dim, c->hidden_dim};
    int outs[N_LINEARS] = {q_dim, kv_dim, kv_dim, c->dim, c->hidden_dim, c->hidden_dim, c->dim};
    *in_dim = ins[linear];
    *out_dim = outs[linear];
}

float *linear_weight(const LayerWeights *l, int linear) {
    float *weights[N_LINEARS] = {l->wq, l->wk, l->wv, l->wo, l->w_gate, l->w_up, l->w_down};
    return weights[linear];
}

// Shape [rows, cols] of a role's tensor (cols == 0 for vectors).
static void role_shape(const Config *c, Role role, int64_t *rows, int64_t *cols) {
    int64_t q_dim = (int64_t)c->n_heads * c->head_dim, kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    *cols = 0;
    switch (role) {
    case ROLE_EMBED: case ROLE_LM_HEAD: *rows = c->vocab_size; *cols = c->dim; break;
    case ROLE_FINAL_NORM: case ROLE_ATTN_NORM: case ROLE_MLP_NORM: *rows = c->dim; break;
    case ROLE_WQ: *rows = q_dim; *cols = c->dim; break;
    case ROLE_WK: case ROLE_WV: *rows = kv_dim; *cols = c->dim; break;
    case ROLE_BQ: *rows = q_dim; break;
    case ROLE_BK: case ROLE_BV: *rows = kv_dim; break;
    case ROLE_WO: *rows = c->dim; *cols = q_dim; break;
    case ROLE_GATE: case ROLE_UP: *rows = c->hidden_dim; *cols = c->dim; break;
    case ROLE_DOWN: *rows = c->dim; *cols = c->hidden_dim; break;
    }
}

static int64_t role_numel(const Config *c, Role role) {
    int64_t rows, cols;
    role_shape(c, role, &rows, &cols);
    return cols ? rows * cols : rows;
}

static int role_is_used(const Config *c, Role role) {
    if (role == ROLE_LM_HEAD) return !c->tied_embeddings;
    if (role == ROLE_BQ || role == ROLE_BK || role == ROLE_BV) return c->attention_bias;
    return 1;
}

static int role_is_per_layer(Role role) { return role >= ROLE_ATTN_NORM; }

size_t model_num_params(const Config *c) {
    size_t total = 0;
    for (int r = ROLE_EMBED; r <= ROLE_DOWN; r++) {
        if (!role_is_used(c, (Role)r)) continue;
        size_t n = (size_t)role_numel(c, (Role)r);
        total += role_is_per_layer((Role)r) ? n * (size_t)c->n_layers : n;
    }
    return total;
}

// The types a weight may have: F32, F16, BF16, and for a matrix also the GGML
// block types (llama.cpp quantizes only matrices, so a block-typed norm or
// bias has been relabelled).
static int type_allowed(DType t, int is_matrix) {
    switch (t) {
    case DT_F32: case DT_F16: case DT_BF16: return 1;
    case DT_Q4_0: case DT_Q4_1: case DT_Q5_0: case DT_Q5_1: case DT_Q8_0: return is_matrix;
    default: return 0;
    }
}

// Checks a file tensor against the expected shape and a type we can convert.
static int check_tensor(const TensorInfo *t, const Config *c, Role role, const char *path,
                        char *err, size_t err_size) {
    int64_t rows, cols;
    role_shape(c, role, &rows, &cols);
    int want_ndim = cols ? 2 : 1;
    int shape_ok = t->ndim == want_ndim && t->shape[0] == rows && (!cols || t->shape[1] == cols);
    if (!shape_ok) {
        char got[96] = "", want[64];
        for (int i = 0; i < t->ndim; i++) {
            size_t used = strlen(got);
            snprintf(got + used, sizeof got - used, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        }
        if (cols) snprintf(want, sizeof want, "%lld, %lld", (long long)rows, (long long)cols);
        else snprintf(want, sizeof want, "%lld", (long long)rows);
        snprintf(err, err_size, "%s: tensor '%s' has shape [%s], expected [%s]", path, t->name, got, want);
        return -1;
    }
    if (!type_allowed(t->dtype, cols != 0)) {
        snprintf(err, err_size, "%s: tensor '%s' has type %s, expected %s", path, t->name, dtype_name(t->dtype),
                 cols ? "F32, F16, BF16 or a GGML block type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)"
                      : "F32, F16 or BF16 (norms and biases are never block-quantized)");
        return -1;
    }
    return 0;
}

// llama.cpp stores Llama's Wq/Wk with each head's rows interleaved for its
// RoPE: file row (h, j, i) holds HF row (h, i, j) for i in {0,1}, j < head_dim/2.
// Undo it so the weights pair dimensions (j, j + head_dim/2) like HF's rotate_half.
static void unpermute_rows(float *w, int n_heads, int head_dim, int cols) {
    size_t head_size = (size_t)head_dim * cols;
    float *head = (float *)malloc(head_size * sizeof(float));
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *rows = w + (size_t)h * head_size;
        memcpy(head, rows, head_size * sizeof(float));
        for (int j = 0; j < half; j++)
            for (int i = 0; i < 2; i++)
                memcpy(rows + (size_t)(i * half + j) * cols, head + (size_t)(j * 2 + i) * cols,
                       (size_t)cols * sizeof(float));
    }
    free(head);
}

void rope_rows_to_gguf(const float *w, float *out, int n_heads, int head_dim, int cols) {
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        const float *head = w + (size_t)h * head_dim * cols;
        float *rows = out + (size_t)h * head_dim * cols;
        for (int j = 0; j < half; j++)
            for (int i = 0; i < 2; i++)
                memcpy(rows + (size_t)(j * 2 + i) * cols, head + (size_t)(i * half + j) * cols,
                       (size_t)cols * sizeof(float));
    }
}

static float **role_slot(Model *m, Role role, int layer) {
    LayerWeights *l = &m->layers[layer];
    switch (role) {
    case ROLE_EMBED: return &m->embed;
    case ROLE_FINAL_NORM: return &m->final_norm;
    case ROLE_LM_HEAD: return &m->lm_head;
    case ROLE_ATTN_NORM: return &l->attn_norm;
    case ROLE_WQ: return &l->wq;
    case ROLE_WK: return &l->wk;
    case ROLE_WV: return &l->wv;
    case ROLE_BQ: return &l->bq;
    case ROLE_BK: return &l->bk;
    case ROLE_BV: return &l->bv;
    case ROLE_WO: return &l->wo;
    case ROLE_MLP_NORM: return &l->mlp_norm;
    case ROLE_GATE: return &l->w_gate;
    case ROLE_UP: return &l->w_up;
    case ROLE_DOWN: return &l->w_down;
    }
    return NULL;
}

static int check_config(const Config *c, const char *path, char *err, size_t err_size) {
    if (c->dim <= 0 || c->hidden_dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->head_dim <= 0 || c->vocab_size <= 0) {
        snprintf(err, err_size, "%s: config has a zero or negative size (dim %d, hidden %d, layers %d, heads %d, "
                 "kv heads %d, head_dim %d, vocab %d)", path, c->dim, c->hidden_dim, c->n_layers, c->n_heads,
                 c->n_kv_heads, c->head_dim, c->vocab_size);
        return -1;
    }
    if (c->n_heads % c->n_kv_heads != 0 || c->head_dim % 2 != 0) {
        snprintf(err, err_size, "%s: config has %d heads, %d kv heads, head_dim %d: heads must be a multiple of "
                 "kv heads and head_dim even", path, c->n_heads, c->n_kv_heads, c->head_dim);
        return -1;
    }
    if (c->dim > 65536 || c->hidden_dim > 262144 || c->n_layers > 1024 || c->vocab_size > 1 << 22 ||
        c->head_dim > MAX_HEAD_DIM) {
        snprintf(err, err_size, "%s: config sizes are implausibly large", path);
        return -1;
    }
    return 0;
}

// Every tensor the config names is in the list, in its shape and a float
// type. Checked before the weights' storage is allocated: the config's sizes
// are only a claim until the file's tensors bear them out.
static int check_tensors(const Config *c, const TensorList *tensors, NameScheme scheme, const char *path,
                         char *err, size_t err_size) {
    for (int r = ROLE_EMBED; r <= ROLE_DOWN; r++) {
        Role role = (Role)r;
        if (!role_is_used(c, role)) continue;
        int n_copies = role_is_per_layer(role) ? c->n_layers : 1;
        for (int layer = 0; layer < n_copies; layer++) {
            char name[128];
            snprintf(name, sizeof name, TENSOR_NAMES[scheme][role], layer);
            const TensorInfo *t = tensor_find(tensors, name);
            if (!t) {
                snprintf(err, err_size, "%s: tensor '%s' is missing", path, name);
                return -1;
            }
            if (check_tensor(t, c, role, path, err, err_size) != 0) return -1;
        }
    }
    return 0;
}

// What model_from_tensors reads: the file's tensors, their naming scheme,
// and which of them the model has taken.
typedef struct {
    const TensorList *tensors;
    NameScheme scheme;
    unsigned char *used;   // [tensors->count]: 1 once the model took the tensor
    const char *path;
} TensorSource;

// Converts the tensor of role (in layer), there and checked (check_tensors),
// to fp32 at dst ([role_numel] floats), and marks it used.
static int load_role(const Config *c, TensorSource *src, Role role, int layer, float *dst, char *err,
                     size_t err_size) {
    char name[128];
    snprintf(name, sizeof name, TENSOR_NAMES[src->scheme][role], layer);
    const TensorInfo *t = tensor_find(src->tensors, name);
    src->used[t - src->tensors->tensors] = 1;
    int64_t numel = role_numel(c, role), rows, cols;
    tensor_to_f32(t->dtype, t->data, dst, numel);
    // corrupt bytes, or a relabelled type the layout check missed, can decode to NaN/Inf: refused here, by name
    if (!floats_all_finite(dst, (size_t)numel)) {
        snprintf(err, err_size, "%s: tensor '%s' (%s) decodes to NaN or Inf values: its data is corrupt or its "
                 "type is mislabelled", src->path, name, dtype_name(t->dtype));
        return -1;
    }
    role_shape(c, role, &rows, &cols);
    int permuted = src->scheme == NAMES_GGUF && c->arch == ARCH_LLAMA;
    if (permuted && role == ROLE_WQ) unpermute_rows(dst, c->n_heads, c->head_dim, (int)cols);
    if (permuted && role == ROLE_WK) unpermute_rows(dst, c->n_kv_heads, c->head_dim, (int)cols);
    return 0;
}

// Loads every weight the config asks for into m->storage, in role order.
static int load_roles(Model *m, TensorSource *src, char *err, size_t err_size) {
    const Config *c = &m->config;
    float *next = m->storage;
    for (int r = ROLE_EMBED; r <= ROLE_DOWN; r++) {
        Role role = (Role)r;
        if (!role_is_used(c, role)) continue;
        int n_copies = role_is_per_layer(role) ? c->n_layers : 1;
        for (int layer = 0; layer < n_copies; layer++) {
            if (load_role(c, src, role, layer, next, err, err_size) != 0) return -1;
            *role_slot(m, role, layer) = next;
            next += role_numel(c, role);
        }
    }
    return 0;
}

// The tensors an HF checkpoint may hold that the model does not use, and
// ignores as transformers does. Any other tensor the model does not use is
// an error; a GGUF file gets no exceptions (llama.cpp's loader refuses a
// file with tensors it does not use: "wrong number of tensors").
typedef struct {
    const char *name;
    int is_suffix;    // 1: any name ending with it
    int when_tied;    // 1: only with tie_word_embeddings
} IgnoredTensor;
static const IgnoredTensor HF_IGNORED_TENSORS[] = {
    // RoPE's frequencies, which older transformers saved as a buffer: they
    // follow from rope_theta, and transformers drops them on load
    {".rotary_emb.inv_freq", 1, 0},
    // with tie_word_embeddings, transformers ties lm_head to the embedding
    // after loading, so a stored copy is never read
    {"lm_head.weight", 0, 1},
};
#define N_HF_IGNORED_TENSORS (sizeof HF_IGNORED_TENSORS / sizeof HF_IGNORED_TENSORS[0])

static int is_ignored_tensor(const Config *c, NameScheme scheme, const char *name) {
    if (scheme == NAMES_GGUF) return 0;
    for (size_t i = 0; i < N_HF_IGNORED_TENSORS; i++) {
        const IgnoredTensor *ignored = &HF_IGNORED_TENSORS[i];
        size_t len = strlen(name), want = strlen(ignored->name);
        int matches = ignored->is_suffix ? len >= want && strcmp(name + len - want, ignored->name) == 0
                                         : strcmp(name, ignored->name) == 0;
        if (matches && (!ignored->when_tied || c->tied_embeddings)) return 1;
    }
    return 0;
}

// The layer number in name when name fits template ("blk.%d.attn_q.weight"), else -1.
static int template_layer(const char *template, const char *name) {
    const char *mark = strstr(template, "%d");
    size_t prefix = (size_t)(mark - template);
    if (strncmp(name, template, prefix) != 0 || name[prefix] < '0' || name[prefix] > '9') return -1;
    char *end;
    long layer = strtol(name + prefix, &end, 10);
    if (strcmp(end, mark + 2) != 0) return -1;
    return layer > INT_MAX ? INT_MAX : (int)layer;
}

// Why the model has no use for the tensor called name, in words.
static void describe_unused(const Config *c, NameScheme scheme, const char *name, char *why, size_t why_size) {
    for (int r = ROLE_ATTN_NORM; r <= ROLE_DOWN; r++) {
        int layer = template_layer(TENSOR_NAMES[scheme][r], name);
        if (layer < 0) continue;
        if (layer >= c->n_layers && scheme == NAMES_GGUF)
            snprintf(why, why_size, "the metadata's %s.block_count says %d layers", arch_name(c->arch), c->n_layers);
        else if (layer >= c->n_layers)
            snprintf(why, why_size, "config.json says %d layer%s", c->n_layers, c->n_layers == 1 ? "" : "s");
        else
            snprintf(why, why_size, "%s models have no q/k/v biases", arch_name(c->arch));
        return;
    }
    snprintf(why, why_size, "no %s weight has this name", arch_name(c->arch));
}

// Every tensor in the file must have been used, or be one HF_IGNORED_TENSORS names.
static int check_all_used(const Config *c, const TensorSource *src, char *err, size_t err_size) {
    for (int i = 0; i < src->tensors->count; i++) {
        const char *name = src->tensors->tensors[i].name;
        if (src->used[i] || is_ignored_tensor(c, src->scheme, name)) continue;
        char why[128];
        describe_unused(c, src->scheme, name, why, sizeof why);
        snprintf(err, err_size, "%s: tensor '%s' is in the file but not used: %s", src->path, name, why);
        return -1;
    }
    return 0;
}

int model_from_tensors(Model *m, const Config *config, const TensorList *tensors, int is_gguf,
                       const char *path, char *err, size_t err_size) {
    memset(m, 0, sizeof *m);
    if (check_config(config, path, err, err_size) != 0) return -1;
    NameScheme scheme = is_gguf ? NAMES_GGUF : (config->arch == ARCH_EXAONE ? NAMES_HF_EXAONE : NAMES_HF_LLAMA);
    if (check_tensors(config, tensors, scheme, path, err, err_size) != 0) return -1;
    m->config = *config;
    const Config *c = &m->config;
    TensorSource src = {tensors, scheme, (unsigned char *)calloc(tensors->count ? tensors->count : 1, 1), path};
    m->storage_floats = model_num_params(c);
    m->storage = (float *)malloc(m->storage_floats * sizeof(float));
    m->layers = (LayerWeights *)calloc((size_t)c->n_layers, sizeof(LayerWeights));
    int status = 0;
    if (!m->storage || !m->layers || !src.used) {
        snprintf(err, err_size, "%s: out of memory for %zu weights", path, m->storage_floats);
        status = -1;
    }
    if (status == 0) status = load_roles(m, &src, err, err_size);
    if (status == 0) status = check_all_used(c, &src, err, err_size);
    free(src.used);
    if (status != 0) {
        model_free(m);
        return -1;
    }
    if (c->tied_embeddings) m->lm_head = m->embed;
    m->path = strdup(path);
    return 0;
}

// The linear layer a role's weight is, or -1.
static int role_linear(Role role) {
    switch (role) {
    case ROLE_WQ: return LINEAR_Q;
    case ROLE_WK: return LINEAR_K;
    case ROLE_WV: return LINEAR_V;
    case ROLE_WO: return LINEAR_O;
    case ROLE_GATE: return LINEAR_GATE;
    case ROLE_UP: return LINEAR_UP;
    case ROLE_DOWN: return LINEAR_DOWN;
    default: return -1;
    }
}

int model_max_tensors(const Config *c) { return 3 + (ROLE_DOWN - ROLE_ATTN_NORM + 1) * c->n_layers; }

int model_gguf_tensors(const Model *m, ModelTensor *out) {
    const Config *c = &m->config;
    int n = 0;
    for (int r = ROLE_EMBED; r <= ROLE_DOWN; r++) {
        Role role = (Role)r;
        if (!role_is_used(c, role)) continue;
        int n_copies = role_is_per_layer(role) ? c->n_layers : 1;
        for (int layer = 0; layer < n_copies; layer++) {
            ModelTensor *t = &out[n++];
            snprintf(t->name, sizeof t->name, TENSOR_NAMES[NAMES_GGUF][role], layer);
            t->values = *role_slot((Model *)m, role, layer);
            role_shape(c, role, &t->rows, &t->cols);
            t->linear = role_linear(role);
        }
    }
    return n;
}

int model_init_random(Model *m, const Config *config, uint64_t seed, char *err, size_t err_size) {
    memset(m, 0, sizeof *m);
    if (check_config(config, "random model", err, err_size) != 0) return -1;
    m->config = *config;
    const Config *c = &m->config;
    m->storage_floats = model_num_params(c);
    m->storage = (float *)malloc(m->storage_floats * sizeof(float));
    m->layers = (LayerWeights *)calloc((size_t)c->n_layers, sizeof(LayerWeights));
    if (!m->storage || !m->layers) {
        snprintf(err, err_size, "random model: out of memory for %zu weights", m->storage_floats);
        model_free(m);
        return -1;
    }
    uint64_t drawn = 0;   // values drawn so far: value k is splitmix64_at(seed, k)
    float *next = m->storage;
    for (int r = ROLE_EMBED; r <= ROLE_DOWN; r++) {
        Role role = (Role)r;
        if (!role_is_used(c, role)) continue;
        int64_t rows, cols;
        role_shape(c, role, &rows, &cols);
        int is_norm = role == ROLE_FINAL_NORM || role == ROLE_ATTN_NORM || role == ROLE_MLP_NORM;
        // matrices ~ U(-1/sqrt(in), 1/sqrt(in)); norms 1 + U(-0.1, 0.1); biases and embeddings U(-0.1, 0.1)
        float bound = cols && role != ROLE_EMBED ? 1.0f / sqrtf((float)cols) : 0.1f;
        int n_copies = role_is_per_layer(role) ? c->n_layers : 1;
        for (int layer = 0; layer < n_copies; layer++) {
            int64_t numel = role_numel(c, role);
            #pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < numel; i++) {
                float u = random_uniform(splitmix64_at(seed, drawn + (uint64_t)i));
                next[i] = (is_norm ? 1.0f : 0.0f) + bound * (2.0f * u - 1.0f);
            }
            *role_slot(m, role, layer) = next;
            next += numel;
            drawn += (uint64_t)numel;
        }
    }
    if (c->tied_embeddings) m->lm_head = m->embed;
    m->path = strdup("random model");
    return 0;
}

// ---- the config: from GGUF metadata or from an HF config.json ----------------------

// GGUF metadata keys are prefixed with the architecture: "llama.block_count".
static int64_t arch_int(const GGUFFile *f, const char *arch, const char *key, int64_t fallback) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    return gguf_get_int(f, full, fallback);
}

static double arch_float(const GGUFFile *f, const char *arch, const char *key, double fallback) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    return gguf_get_float(f, full, fallback);
}

// A size from the metadata (fallback when missing) into *out; -1 with a
// message when it does not fit a non-negative int (a uint64 or a negative
// int64: the casts would give any int, and INT_MIN / -1 traps).
static int arch_size(const GGUFFile *f, const char *arch, const char *key, int64_t fallback, int *out, char *err,
                     size_t err_size) {
    int64_t value = arch_int(f, arch, key, fallback);
    if (value < 0 || value > INT_MAX) {
        snprintf(err, err_size, "%s: metadata '%s.%s' is %lld, not a size", f->path, arch, key, (long long)value);
        return -1;
    }
    *out = (int)value;
    return 0;
}

static int config_from_gguf(const GGUFFile *f, Config *c, char *err, size_t err_size) {
    memset(c, 0, sizeof *c);
    char *arch = gguf_get_string(f, "general.architecture");
    if (!arch) {
        snprintf(err, err_size, "%s: metadata 'general.architecture' is missing", f->path);
        return -1;
    }
    if (strcmp(arch, "llama") == 0) c->arch = ARCH_LLAMA;
    else if (strcmp(arch, "qwen2") == 0) c->arch = ARCH_QWEN2;
    else if (strcmp(arch, "exaone") == 0) c->arch = ARCH_EXAONE;
    else {
        snprintf(err, err_size, "%s: architecture '%s' is not supported (llama, qwen2, exaone are)", f->path, arch);
        free(arch);
        return -1;
    }
    const GGUFKeyValue *tokens = gguf_find(f, "tokenizer.ggml.tokens");
    int sizes_ok = arch_size(f, arch, "embedding_length", 0, &c->dim, err, err_size) == 0 &&
                   arch_size(f, arch, "feed_forward_length", 0, &c->hidden_dim, err, err_size) == 0 &&
                   arch_size(f, arch, "block_count", 0, &c->n_layers, err, err_size) == 0 &&
                   arch_size(f, arch, "attention.head_count", 0, &c->n_heads, err, err_size) == 0 &&
                   arch_size(f, arch, "attention.head_count_kv", c->n_heads, &c->n_kv_heads, err, err_size) == 0 &&
                   arch_size(f, arch, "attention.key_length", c->n_heads ? c->dim / c->n_heads : 0, &c->head_dim,
                             err, err_size) == 0 &&
                   arch_size(f, arch, "context_length", 2048, &c->max_seq_len, err, err_size) == 0 &&
                   arch_size(f, arch, "vocab_size", tokens ? (int64_t)tokens->array_count : 0, &c->vocab_size, err,
                             err_size) == 0;
    c->norm_eps = (float)arch_float(f, arch, "attention.layer_norm_rms_epsilon", 1e-5);
    c->rope_theta = (float)arch_float(f, arch, "rope.freq_base", 10000.0);
    c->attention_bias = c->arch == ARCH_QWEN2;
    free(arch);
    if (!sizes_ok) return -1;
    c->tied_embeddings = tensor_find(&f->tensors, "output.weight") == NULL;
    if (tensor_find(&f->tensors, "rope_freqs.weight")) {
        snprintf(err, err_size, "%s: Llama-3 RoPE scaling stored as 'rope_freqs.weight' is not supported for GGUF "
                 "yet; load the HF checkpoint directory instead", f->path);
        return -1;
    }
    return 0;
}

// HF's config.json names the architecture by class or model_type; each has its own defaults.
typedef struct {
    const char *class_name;   // "architectures"[0]
    const char *model_type;
    Arch arch;
    int default_max_position;
    float default_norm_eps;
    float default_rope_theta;
} ArchInfo;

// Defaults are those of transformers' LlamaConfig, Qwen2Config and ExaoneConfig.
static const ArchInfo ARCHS[] = {
    {"LlamaForCausalLM", "llama", ARCH_LLAMA, 2048, 1e-6f, 10000.0f},
    {"Qwen2ForCausalLM", "qwen2", ARCH_QWEN2, 32768, 1e-6f, 10000.0f},
    {"ExaoneForCausalLM", "exaone", ARCH_EXAONE, 4096, 1e-5f, 500000.0f},
};
#define N_ARCHS 3

// A member by its name or its alias (NULL alias: none); JSON null counts as missing.
static const JsonValue *get_member(const JsonValue *object, const char *key, const char *alias) {
    const JsonValue *v = json_get(object, key);
    if ((!v || v->type == JSON_NULL) && alias) v = json_get(object, alias);
    return v && v->type != JSON_NULL ? v : NULL;
}

// Reads a positive integer; a missing key gives fallback, or an error when fallback is 0.
static int read_positive_int(const JsonValue *object, const char *key, const char *alias, int fallback,
                             int *out, const char *path, char *err, size_t err_size) {
    const JsonValue *v = get_member(object, key, alias);
    if (!v) {
        if (fallback > 0) { *out = fallback; return 0; }
        snprintf(err, err_size, "%s: '%s'%s%s%s is missing", path, key, alias ? " (or '" : "", alias ? alias : "",
                 alias ? "')" : "");
        return -1;
    }
    if (v->type != JSON_NUMBER || !(v->number >= 1 && v->number <= 1 << 30) || v->number != floor(v->number)) {
        snprintf(err, err_size, "%s: '%s' must be a positive integer", path, key);
        return -1;
    }
    *out = (int)v->number;
    return 0;
}

// Reads a positive finite number; a missing key gives fallback, or an error when fallback is 0.
static int read_positive_float(const JsonValue *object, const char *key, const char *alias, float fallback,
                               float *out, const char *path, char *err, size_t err_size) {
    const JsonValue *v = get_member(object, key, alias);
    if (!v) {
        if (fallback > 0) { *out = fallback; return 0; }
        snprintf(err, err_size, "%s: '%s' is missing", path, key);
        return -1;
    }
    if (v->type != JSON_NUMBER || !(v->number > 0 && v->number < 1e30)) {
        snprintf(err, err_size, "%s: '%s' must be a positive number", path, key);
        return -1;
    }
    *out = (float)v->number;
    return 0;
}

static int read_bool(const JsonValue *object, const char *key, int *out, const char *path, char *err,
                     size_t err_size) {
    const JsonValue *v = get_member(object, key, NULL);
    if (!v) { *out = 0; return 0; }
    if (v->type != JSON_BOOL) {
        snprintf(err, err_size, "%s: '%s' must be true or false", path, key);
        return -1;
    }
    *out = v->boolean;
    return 0;
}

static const ArchInfo *read_arch(const JsonValue *json, const char *path, char *err, size_t err_size) {
    const JsonValue *classes = json_get(json, "architectures");
    const JsonValue *model_type = json_get(json, "model_type");
    const char *name = NULL, *key = NULL;
    if (classes && classes->type == JSON_ARRAY && classes->count > 0 && classes->items[0].type == JSON_STRING) {
        name = classes->items[0].string;
        key = "architectures";
    } else if (model_type && model_type->type == JSON_STRING) {
        name = model_type->string;
        key = "model_type";
    }
    if (!name) {
        snprintf(err, err_size, "%s: neither 'architectures' nor 'model_type' names the architecture", path);
        return NULL;
    }
    for (int i = 0; i < N_ARCHS; i++)
        if (strcmp(name, ARCHS[i].class_name) == 0 || strcmp(name, ARCHS[i].model_type) == 0) return &ARCHS[i];
    snprintf(err, err_size, "%s: %s '%s' is not supported (LlamaForCausalLM, Qwen2ForCausalLM and "
             "ExaoneForCausalLM are)", path, key, name);
    return NULL;
}

static int read_sizes(const JsonValue *json, const ArchInfo *arch, Config *c, const char *path, char *err,
                      size_t err_size) {
    if (read_positive_int(json, "hidden_size", NULL, 0, &c->dim, path, err, err_size) != 0 ||
        read_positive_int(json, "intermediate_size", NULL, 0, &c->hidden_dim, path, err, err_size) != 0 ||
        read_positive_int(json, "num_hidden_layers", "num_layers", 0, &c->n_layers, path, err, err_size) != 0 ||
        read_positive_int(json, "num_attention_heads", NULL, 0, &c->n_heads, path, err, err_size) != 0 ||
        read_positive_int(json, "num_key_value_heads", NULL, c->n_heads, &c->n_kv_heads, path, err, err_size) != 0 ||
        read_positive_int(json, "vocab_size", NULL, 0, &c->vocab_size, path, err, err_size) != 0 ||
        read_positive_int(json, "max_position_embeddings", NULL, arch->default_max_position, &c->max_seq_len, path,
                          err, err_size) != 0 ||
        read_positive_float(json, "rms_norm_eps", "layer_norm_epsilon", arch->default_norm_eps, &c->norm_eps, path,
                            err, err_size) != 0)
        return -1;
    if (!get_member(json, "head_dim", NULL) && c->dim % c->n_heads != 0) {
        snprintf(err, err_size, "%s: hidden_size %d is not a multiple of num_attention_heads %d", path, c->dim,
                 c->n_heads);
        return -1;
    }
    if (read_positive_int(json, "head_dim", NULL, c->dim / c->n_heads, &c->head_dim, path, err, err_size) != 0)
        return -1;
    if (c->n_heads % c->n_kv_heads != 0) {
        snprintf(err, err_size, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path,
                 c->n_heads, c->n_kv_heads);
        return -1;
    }
    if (c->head_dim % 2 != 0) {
        snprintf(err, err_size, "%s: head_dim %d is odd (RoPE rotates pairs)", path, c->head_dim);
        return -1;
    }
    return 0;
}

// Llama-3 scaling parameters from a rope_scaling / rope_parameters object.
static int read_llama3_scaling(const JsonValue *scaling, Config *c, const char *path, char *err, size_t err_size) {
    if (read_positive_float(scaling, "factor", NULL, 0, &c->rope_factor, path, err, err_size) != 0 ||
        read_positive_float(scaling, "low_freq_factor", NULL, 0, &c->rope_low_freq_factor, path, err, err_size) != 0 ||
        read_positive_float(scaling, "high_freq_factor", NULL, 0, &c->rope_high_freq_factor, path, err,
                            err_size) != 0 ||
        read_positive_int(scaling, "original_max_position_embeddings", NULL, c->max_seq_len,
                          &c->rope_original_max_pos, path, err, err_size) != 0)
        return -1;
    if (c->rope_high_freq_factor <= c->rope_low_freq_factor) {
        snprintf(err, err_size, "%s: llama3 rope scaling needs high_freq_factor > low_freq_factor (got %g and %g)",
                 path, c->rope_high_freq_factor, c->rope_low_freq_factor);
        return -1;
    }
    return 0;
}

// rope_theta and RoPE scaling. Older files have "rope_theta" and
// "rope_scaling"; transformers 5 writes both into "rope_parameters".
static int read_rope(const JsonValue *json, const ArchInfo *arch, Config *c, const char *path, char *err,
                     size_t err_size) {
    const JsonValue *scaling = get_member(json, "rope_scaling", "rope_parameters");
    if (scaling && scaling->type != JSON_OBJECT) {
        snprintf(err, err_size, "%s: 'rope_scaling' must be an object or null", path);
        return -1;
    }
    const JsonValue *theta_holder = scaling && json_get(scaling, "rope_theta") ? scaling : json;
    if (read_positive_float(theta_holder, "rope_theta", NULL, arch->default_rope_theta, &c->rope_theta, path, err,
                            err_size) != 0)
        return -1;
    if (!scaling) return 0;
    const char *type = json_get_string(scaling, "rope_type", json_get_string(scaling, "type", "default"));
    if (strcmp(type, "default") == 0) return 0;
    if (strcmp(type, "llama3") == 0) return read_llama3_scaling(scaling, c, path, err, err_size);
    snprintf(err, err_size, "%s: rope_scaling type '%s' is not supported (only 'llama3' is)", path, type);
    return -1;
}

// Everything the Config does not describe must be what our network computes.
static int check_unsupported(const JsonValue *json, const ArchInfo *arch, const char *path, char *err,
                             size_t err_size) {
    const char *activation = json_get_string(json, "hidden_act", json_get_string(json, "activation_function", "silu"));
    if (strcmp(activation, "silu") != 0) {
        snprintf(err, err_size, "%s: activation '%s' is not supported (only silu is)", path, activation);
        return -1;
    }
    int attention_bias, mlp_bias;
    if (read_bool(json, "attention_bias", &attention_bias, path, err, err_size) != 0 ||
        read_bool(json, "mlp_bias", &mlp_bias, path, err, err_size) != 0)
        return -1;
    if ((attention_bias && arch->arch != ARCH_QWEN2) || mlp_bias) {
        snprintf(err, err_size, "%s: %s is true: biases on o_proj or the MLP are not supported", path,
                 mlp_bias ? "mlp_bias" : "attention_bias");
        return -1;
    }
    // weights saved already quantized (bitsandbytes' "-bnb-4bit" models, GPTQ, AWQ, FP8): their tensors are not W
    const JsonValue *quantization = get_member(json, "quantization_config", NULL);
    if (quantization && (quantization->type != JSON_OBJECT || quantization->count > 0)) {
        snprintf(err, err_size, "%s: 'quantization_config' says the weights are stored quantized (quant_method "
                 "'%s'), which this program does not read: take the model's unquantized (bf16 or fp16) weights; "
                 "./train quantizes them to NF4 itself", path, json_get_string(quantization, "quant_method", "?"));
        return -1;
    }
    return 0;
}

// Qwen2Config's default first layer of sliding-window attention
static const int QWEN2_DEFAULT_MAX_WINDOW_LAYERS = 28;

// Qwen2's sliding-window attention (use_sliding_window: the layers from
// max_window_layers on see only the last sliding_window positions). Within
// sliding_window tokens that is full attention, which is what we compute, so
// the context is limited to it.
static int read_sliding_window(const JsonValue *json, Config *c, const char *path, char *err, size_t err_size) {
    int use = 0, window = 0;
    if (read_bool(json, "use_sliding_window", &use, path, err, err_size) != 0) return -1;
    if (!use || !get_member(json, "sliding_window", NULL)) return 0;
    if (read_positive_int(json, "sliding_window", NULL, 0, &window, path, err, err_size) != 0) return -1;
    const JsonValue *first = get_member(json, "max_window_layers", NULL);
    if (first && (first->type != JSON_NUMBER || !(first->number >= 0) || first->number != floor(first->number))) {
        snprintf(err, err_size, "%s: 'max_window_layers' must be a whole number", path);
        return -1;
    }
    double first_windowed = first ? first->number : QWEN2_DEFAULT_MAX_WINDOW_LAYERS;
    if (first_windowed < c->n_layers && window < c->max_seq_len) c->max_seq_len = window;
    return 0;
}

static int config_from_json(const JsonValue *json, Config *c, const char *path, char *err, size_t err_size) {
    if (json->type != JSON_OBJECT) {
        snprintf(err, err_size, "%s: not a JSON object", path);
        return -1;
    }
    const ArchInfo *arch = read_arch(json, path, err, err_size);
    if (!arch) return -1;
    c->arch = arch->arch;
    c->attention_bias = arch->arch == ARCH_QWEN2;   // Qwen2 always has q/k/v biases
    if (read_sizes(json, arch, c, path, err, err_size) != 0 || read_rope(json, arch, c, path, err, err_size) != 0 ||
        check_unsupported(json, arch, path, err, err_size) != 0 ||
        read_bool(json, "tie_word_embeddings", &c->tied_embeddings, path, err, err_size) != 0 ||
        (arch->arch == ARCH_QWEN2 && read_sliding_window(json, c, path, err, err_size) != 0))
        return -1;
    return 0;
}

int model_read_hf_config(const char *path, Config *config, char *err, size_t err_size) {
    memset(config, 0, sizeof *config);
    JsonValue *json = json_parse_file(path, err, err_size);
    if (!json) return -1;
    int status = config_from_json(json, config, path, err, err_size);
    json_free(json);
    if (status != 0) memset(config, 0, sizeof *config);
    return status;
}

// ---- loading -------------------------------------------------------------------------

static int load_gguf(Model *m, const char *path, char *err, size_t err_size) {
    GGUFFile f;
    if (gguf_open(&f, path, err, err_size) != 0) return -1;
    Config config;
    int status = config_from_gguf(&f, &config, err, err_size);
    if (status == 0) status = model_from_tensors(m, &config, &f.tensors, 1, path, err, err_size);
    if (status == 0) {
        m->tokenizer = tokenizer_from_gguf(&f, err, err_size);
        if (!m->tokenizer) { model_free(m); status = -1; }
    }
    gguf_close(&f);
    return status;
}

// 0 when dir has tokenizer.json; else -1 saying so, and what it has instead when
// that is SentencePiece's tokenizer.model.
static int check_has_tokenizer_json(const char *dir, char *err, size_t err_size) {
    char path[4096], sentencepiece[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    snprintf(sentencepiece, sizeof sentencepiece, "%s/tokenizer.model", dir);
    if (access(path, F_OK) == 0) return 0;
    if (access(sentencepiece, F_OK) == 0)
        snprintf(err, err_size, "%s: no such file; %s is there instead, a SentencePiece tokenizer (as Llama-2 and "
                 "Mistral use), which this program does not read: it reads the byte-level BPE tokenizer.json of the "
                 "Llama-3, Qwen2, SmolLM2 and EXAONE families", path, sentencepiece);
    else
        snprintf(err, err_size, "%s: no such file (a model directory holds config.json, its weights and "
                 "tokenizer.json)", path);
    return -1;
}

static int load_hf_dir(Model *m, const char *dir, char *err, size_t err_size) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    Config config;
    if (model_read_hf_config(path, &config, err, err_size) != 0) return -1;
    HFCheckpoint ck;
    if (hf_open(&ck, dir, err, err_size) != 0) return -1;
    int status = model_from_tensors(m, &config, &ck.tensors, 0, dir, err, err_size);
    hf_close(&ck);
    if (status != 0) return -1;
    if (check_has_tokenizer_json(dir, err, err_size) != 0) {
        model_free(m);
        return -1;
    }
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    m->tokenizer = tokenizer_from_json(path, err, err_size);
    if (!m->tokenizer) { model_free(m); return -1; }
    return 0;
}

// Every id the tokenizer can produce needs a row of the embedding (and of the
// LM head); the embedding may have more rows than the tokenizer has tokens
// (models pad it, e.g. to a multiple of 64), never fewer.
static int check_tokenizer_fits(Model *m, const char *path, char *err, size_t err_size) {
    int n_tokens = tokenizer_vocab_size(m->tokenizer);
    if (n_tokens <= m->config.vocab_size) return 0;
    snprintf(err, err_size,
             "%s: the tokenizer has %d tokens but the embedding only %d rows (vocab_size): ids %d..%d "
             "would read past it; is the tokenizer from another model?",
             path, n_tokens, m->config.vocab_size, m->config.vocab_size, n_tokens - 1);
    model_free(m);
    return -1;
}

int model_load(Model *m, const char *path, char *err, size_t err_size) {
    memset(m, 0, sizeof *m);
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, err_size, "%s: no such file or directory (a .gguf file or an HF model directory)", path);
        return -1;
    }
    int status = S_ISDIR(st.st_mode) ? load_hf_dir(m, path, err, err_size) : load_gguf(m, path, err, err_size);
    if (status != 0) return status;
    return check_tokenizer_fits(m, path, err, err_size);
}

void model_free(Model *m) {
    free(m->storage);
    free(m->layers);
    free(m->path);
    if (m->tokenizer) tokenizer_free(m->tokenizer);
    memset(m, 0, sizeof *m);
}

uint64_t model_weights_hash(const Model *m) {
    return fnv1a(FNV1A_OFFSET_BASIS, m->storage, sizeof(float) * m->storage_floats);
}

void model_print_summary(const Model *m, FILE *out) {
    const Config *c = &m->config;
    fprintf(out, "model: %s (%s)\n", m->path, arch_name(c->arch));
    fprintf(out, "  %d layers, dim %d, mlp %d, heads %d (kv %d, head_dim %d), vocab %d, context %d\n",
            c->n_layers, c->dim, c->hidden_dim, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab_size,
            c->max_seq_len);
    fprintf(out, "  rope theta %g%s, rms eps %g, %s embeddings, %.1fM parameters\n", c->rope_theta,
            c->rope_factor > 0 ? " (llama3 scaling)" : "", c->norm_eps, c->tied_embeddings ? "tied" : "untied",
            model_num_params(c) / 1e6);
}
