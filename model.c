// model.c: turns a GGUF file or an HF checkpoint directory into a Model:
// reads the config, finds every expected tensor by its architecture's name,
// checks its shape and type, and converts it to fp32.
#include "model.h"
#include "formats/gguf.h"
#include "formats/hf_checkpoint.h"
#include "ops/random.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
    if (t->dtype == DT_I32 || t->dtype == DT_I64 || dtype_block_bytes(t->dtype) == 0) {
        snprintf(err, err_size, "%s: tensor '%s' has type %s, expected a float type", path, t->name,
                 dtype_name(t->dtype));
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

int model_from_tensors(Model *m, const Config *config, const TensorList *tensors, int is_gguf,
                       const char *path, char *err, size_t err_size) {
    memset(m, 0, sizeof *m);
    if (check_config(config, path, err, err_size) != 0) return -1;
    m->config = *config;
    const Config *c = &m->config;
    NameScheme scheme = is_gguf ? NAMES_GGUF : (c->arch == ARCH_EXAONE ? NAMES_HF_EXAONE : NAMES_HF_LLAMA);
    m->storage_floats = model_num_params(c);
    m->storage = (float *)malloc(m->storage_floats * sizeof(float));
    m->layers = (LayerWeights *)calloc((size_t)c->n_layers, sizeof(LayerWeights));
    if (!m->storage || !m->layers) {
        snprintf(err, err_size, "%s: out of memory for %zu weights", path, m->storage_floats);
        model_free(m);
        return -1;
    }
    float *next = m->storage;
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
                model_free(m);
                return -1;
            }
            if (check_tensor(t, c, role, path, err, err_size) != 0) {
                model_free(m);
                return -1;
            }
            tensor_to_f32(t->dtype, t->data, next, role_numel(c, role));
            int64_t rows, cols;
            role_shape(c, role, &rows, &cols);
            if (is_gguf && c->arch == ARCH_LLAMA && role == ROLE_WQ) unpermute_rows(next, c->n_heads, c->head_dim, (int)cols);
            if (is_gguf && c->arch == ARCH_LLAMA && role == ROLE_WK) unpermute_rows(next, c->n_kv_heads, c->head_dim, (int)cols);
            *role_slot(m, role, layer) = next;
            next += role_numel(c, role);
        }
    }
    if (c->tied_embeddings) m->lm_head = m->embed;
    m->path = strdup(path);
    return 0;
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
    c->dim = (int)arch_int(f, arch, "embedding_length", 0);
    c->hidden_dim = (int)arch_int(f, arch, "feed_forward_length", 0);
    c->n_layers = (int)arch_int(f, arch, "block_count", 0);
    c->n_heads = (int)arch_int(f, arch, "attention.head_count", 0);
    c->n_kv_heads = (int)arch_int(f, arch, "attention.head_count_kv", c->n_heads);
    c->head_dim = c->n_heads ? (int)arch_int(f, arch, "attention.key_length", c->dim / c->n_heads) : 0;
    c->max_seq_len = (int)arch_int(f, arch, "context_length", 2048);
    c->norm_eps = (float)arch_float(f, arch, "attention.layer_norm_rms_epsilon", 1e-5);
    c->rope_theta = (float)arch_float(f, arch, "rope.freq_base", 10000.0);
    c->attention_bias = c->arch == ARCH_QWEN2;
    const GGUFKeyValue *tokens = gguf_find(f, "tokenizer.ggml.tokens");
    c->vocab_size = (int)arch_int(f, arch, "vocab_size", tokens ? (int64_t)tokens->array_count : 0);
    free(arch);
    c->tied_embeddings = tensor_find(&f->tensors, "output.weight") == NULL;
    if (tensor_find(&f->tensors, "rope_freqs.weight")) {
        snprintf(err, err_size, "%s: Llama-3 RoPE scaling stored as 'rope_freqs.weight' is not supported for GGUF "
                 "yet; load the HF checkpoint directory instead", f->path);
        return -1;
    }
    return 0;
}

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

static int load_hf_dir(Model *m, const char *dir, char *err, size_t err_size) {
    HFCheckpoint ck;
    Config config;
    if (hf_open(&ck, dir, &config, err, err_size) != 0) return -1;
    int status = model_from_tensors(m, &config, &ck.tensors, 0, dir, err, err_size);
    hf_close(&ck);
    if (status != 0) return -1;
    char tokenizer_path[4096];
    snprintf(tokenizer_path, sizeof tokenizer_path, "%s/tokenizer.json", dir);
    m->tokenizer = tokenizer_from_json(tokenizer_path, err, err_size);
    if (!m->tokenizer) { model_free(m); return -1; }
    return 0;
}

int model_load(Model *m, const char *path, char *err, size_t err_size) {
    memset(m, 0, sizeof *m);
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, err_size, "%s: no such file or directory (a .gguf file or an HF model directory)", path);
        return -1;
    }
    if (S_ISDIR(st.st_mode)) return load_hf_dir(m, path, err, err_size);
    return load_gguf(m, path, err, err_size);
}

void model_free(Model *m) {
    free(m->storage);
    free(m->layers);
    free(m->path);
    if (m->tokenizer) tokenizer_free(m->tokenizer);
    memset(m, 0, sizeof *m);
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
