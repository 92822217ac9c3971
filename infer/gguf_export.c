// infer/gguf_export.c: a Model as llama.cpp's GGUF (see infer/gguf_export.h):
// the metadata keys in convert_hf_to_gguf.py's order, then the tensors.
#include "infer/gguf_export.h"
#include "formats/gguf.h"
#include "formats/gguf_write.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The stored types, with general.file_type's value for each (llama.cpp's LLAMA_FTYPE_MOSTLY_*).
typedef struct {
    const char *name;
    DType type;
    uint32_t file_type;
} ExportType;

static const ExportType EXPORT_TYPES[] = {
    {"f16", DT_F16, 1},
    {"bf16", DT_BF16, 32},
    {"q8_0", DT_Q8_0, 7},
};
enum { N_EXPORT_TYPES = 3 };

// llama.cpp's quantization format version (general.quantization_version).
enum { GGML_QUANT_VERSION = 2 };

static const ExportType *find_type(DType type) {
    for (int i = 0; i < N_EXPORT_TYPES; i++)
        if (EXPORT_TYPES[i].type == type) return &EXPORT_TYPES[i];
    return NULL;
}

int gguf_export_type_from_name(const char *name, DType *type) {
    for (int i = 0; i < N_EXPORT_TYPES; i++)
        if (strcmp(name, EXPORT_TYPES[i].name) == 0) {
            *type = EXPORT_TYPES[i].type;
            return 0;
        }
    return -1;
}

const char *gguf_export_type_name(DType type) {
    const ExportType *t = find_type(type);
    return t ? t->name : "unknown";
}

// Llama and EXAONE are written as llama.cpp's "llama" (the same network), Qwen2 as "qwen2".
static const char *gguf_arch(const Config *c) { return c->arch == ARCH_QWEN2 ? "qwen2" : "llama"; }

// general.name: the source's file or folder name without ".gguf".
static void model_name(const Model *m, char *out, size_t size) {
    const char *path = m->path ? m->path : "model";
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') len--;
    const char *start = path + len;
    while (start > path && start[-1] != '/') start--;
    len -= (size_t)(start - path);
    if (len > 5 && strncmp(start + len - 5, ".gguf", 5) == 0) len -= 5;
    snprintf(out, size, "%.*s", (int)len, start);
}

// "{arch}.key" of the hyperparameters.
static void put_arch_u32(GGUFWriter *w, const char *arch, const char *key, uint32_t value) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    gguf_put_u32(w, full, value);
}

static void put_arch_f32(GGUFWriter *w, const char *arch, const char *key, float value) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    gguf_put_f32(w, full, value);
}

static void put_hyperparameters(GGUFWriter *w, const Config *c, uint32_t file_type) {
    const char *arch = gguf_arch(c);
    put_arch_u32(w, arch, "block_count", (uint32_t)c->n_layers);
    put_arch_u32(w, arch, "context_length", (uint32_t)c->max_seq_len);
    put_arch_u32(w, arch, "embedding_length", (uint32_t)c->dim);
    put_arch_u32(w, arch, "feed_forward_length", (uint32_t)c->hidden_dim);
    put_arch_u32(w, arch, "attention.head_count", (uint32_t)c->n_heads);
    put_arch_u32(w, arch, "attention.head_count_kv", (uint32_t)c->n_kv_heads);
    put_arch_f32(w, arch, "rope.freq_base", c->rope_theta);
    put_arch_f32(w, arch, "attention.layer_norm_rms_epsilon", c->norm_eps);
    if (c->head_dim * c->n_heads != c->dim) {   // llama.cpp's default is dim / heads
        put_arch_u32(w, arch, "attention.key_length", (uint32_t)c->head_dim);
        put_arch_u32(w, arch, "attention.value_length", (uint32_t)c->head_dim);
    }
    gguf_put_u32(w, "general.file_type", file_type);
    put_arch_u32(w, arch, "vocab_size", (uint32_t)c->vocab_size);
    put_arch_u32(w, arch, "rope.dimension_count", (uint32_t)c->head_dim);
}

// A special token's id, when the tokenizer has one.
static void put_token_id(GGUFWriter *w, const char *key, int id) {
    if (id >= 0) gguf_put_u32(w, key, (uint32_t)id);
}

// tokenizer.ggml.tokens and token_type: one entry per embedding row; rows the
// vocabulary does not fill are "[PADn]", unused (as llama.cpp's converter pads).
static int put_vocabulary(GGUFWriter *w, const Tokenizer *t, int vocab_size) {
    const char **texts = (const char **)calloc((size_t)vocab_size, sizeof(char *));
    size_t *lens = (size_t *)calloc((size_t)vocab_size, sizeof(size_t));
    int32_t *types = (int32_t *)calloc((size_t)vocab_size, sizeof(int32_t));
    char **pads = (char **)calloc((size_t)vocab_size, sizeof(char *));
    int ok = texts && lens && types && pads;
    for (int id = 0; ok && id < vocab_size; id++) {
        texts[id] = tokenizer_token_text(t, id, &lens[id]);
        types[id] = (int32_t)tokenizer_token_type(t, id);
        if (texts[id]) continue;
        char pad[32];
        snprintf(pad, sizeof pad, "[PAD%d]", id);
        pads[id] = strdup(pad);
        ok = pads[id] != NULL;
        texts[id] = pads[id];
        lens[id] = strlen(pad);
    }
    if (ok) {
        gguf_put_string_array(w, "tokenizer.ggml.tokens", texts, lens, (uint64_t)vocab_size);
        gguf_put_i32_array(w, "tokenizer.ggml.token_type", types, (uint64_t)vocab_size);
    }
    for (int id = 0; pads && id < vocab_size; id++) free(pads[id]);
    free(pads);
    free(texts);
    free(lens);
    free(types);
    return ok;
}

// tokenizer.ggml.merges: "left right" in rank order.
static int put_merges(GGUFWriter *w, const Tokenizer *t) {
    int *pairs;
    int n = tokenizer_merges(t, &pairs);
    if (n < 0) return 0;
    char **merges = (char **)calloc((size_t)n + 1, sizeof(char *));
    size_t *lens = (size_t *)calloc((size_t)n + 1, sizeof(size_t));
    int ok = merges && lens;
    for (int k = 0; ok && k < n; k++) {
        size_t left_len, right_len;
        const char *left = tokenizer_token_text(t, pairs[2 * k], &left_len);
        const char *right = tokenizer_token_text(t, pairs[2 * k + 1], &right_len);
        lens[k] = left_len + 1 + right_len;
        merges[k] = (char *)malloc(lens[k] + 1);
        ok = merges[k] != NULL;
        if (ok) snprintf(merges[k], lens[k] + 1, "%.*s %.*s", (int)left_len, left, (int)right_len, right);
    }
    if (ok) gguf_put_string_array(w, "tokenizer.ggml.merges", (const char *const *)merges, lens, (uint64_t)n);
    for (int k = 0; merges && k < n; k++) free(merges[k]);
    free(merges);
    free(lens);
    free(pairs);
    return ok;
}

// The tokenizer as llama.cpp's "gpt2" (byte-level BPE) vocabulary. No BOS is
// added and no space prefixed, as tokenizer_encode does (and training did).
static int put_tokenizer(GGUFWriter *w, const Tokenizer *t, int vocab_size) {
    gguf_put_bool(w, "tokenizer.ggml.add_space_prefix", 0);
    gguf_put_bool(w, "tokenizer.ggml.add_bos_token", 0);
    gguf_put_string(w, "tokenizer.ggml.model", "gpt2");
    gguf_put_string(w, "tokenizer.ggml.pre", pretokenizer_gguf_name(tokenizer_pretokenizer(t)));
    if (!put_vocabulary(w, t, vocab_size) || !put_merges(w, t)) return 0;
    put_token_id(w, "tokenizer.ggml.bos_token_id", tokenizer_bos_id(t));
    put_token_id(w, "tokenizer.ggml.eos_token_id", tokenizer_eos_id(t));
    put_token_id(w, "tokenizer.ggml.unknown_token_id", tokenizer_unk_id(t));
    put_token_id(w, "tokenizer.ggml.padding_token_id", tokenizer_pad_id(t));
    char *chat_template = tokenizer_chat_template(t);
    if (chat_template) gguf_put_string(w, "tokenizer.chat_template", chat_template);
    free(chat_template);
    return 1;
}

// The stored type of a tensor: vectors in F32; matrices in type, except Q8_0
// rows that are not whole blocks (F16 then, as llama.cpp's converter falls back).
static DType stored_type(const ModelTensor *t, DType type) {
    if (!t->cols) return DT_F32;
    if (type == DT_Q8_0 && t->cols % dtype_block_values(DT_Q8_0) != 0) return DT_F16;
    return type;
}

// Every weight; Wq/Wk of "llama" permuted into *permuted (n_layers * 2 copies, caller frees).
static int put_tensors(GGUFWriter *w, const Model *m, DType type, float **permuted) {
    const Config *c = &m->config;
    ModelTensor *tensors = (ModelTensor *)calloc((size_t)model_max_tensors(c), sizeof(ModelTensor));
    if (!tensors) return 0;
    int n = model_gguf_tensors(m, tensors), n_permuted = 0, ok = 1;
    for (int i = 0; ok && i < n; i++) {
        const ModelTensor *t = &tensors[i];
        const float *values = t->values;
        int is_qk = t->linear == LINEAR_Q || t->linear == LINEAR_K;
        if (is_qk && c->arch != ARCH_QWEN2) {   // qwen2 is NeoX RoPE in llama.cpp: HF's order
            float *copy = (float *)malloc((size_t)(t->rows * t->cols) * sizeof(float));
            ok = copy != NULL;
            if (!ok) break;
            rope_rows_to_gguf(t->values, copy, (int)(t->rows / c->head_dim), c->head_dim, (int)t->cols);
            permuted[n_permuted++] = copy;
            values = copy;
        }
        int64_t shape[2] = {t->rows, t->cols};
        gguf_put_tensor(w, t->name, t->cols ? 2 : 1, shape, stored_type(t, type), values);
    }
    free(tensors);
    return ok;
}

// What llama.cpp and our loader need that m may not have.
int gguf_check_exportable(const Model *m, const char *path, DType type, char *err, size_t err_size) {
    if (!find_type(type)) {
        snprintf(err, err_size, "%s: cannot store the weights as %s (f16, bf16 or q8_0)", path, dtype_name(type));
        return -1;
    }
    if (!m->tokenizer) {
        snprintf(err, err_size, "%s: the model has no tokenizer, which a GGUF file must hold", path);
        return -1;
    }
    if (tokenizer_vocab_size(m->tokenizer) > m->config.vocab_size) {
        snprintf(err, err_size, "%s: the tokenizer has %d tokens, more than the embedding's %d rows", path,
                 tokenizer_vocab_size(m->tokenizer), m->config.vocab_size);
        return -1;
    }
    if (m->config.rope_factor > 0) {
        snprintf(err, err_size, "%s: Llama-3 RoPE scaling is not supported in GGUF export yet (llama.cpp wants a "
                 "rope_freqs tensor); export the HF directory (--merge) and convert it with llama.cpp's "
                 "convert_hf_to_gguf.py", path);
        return -1;
    }
    return 0;
}

int gguf_write_model(const Model *m, const char *path, DType type, char *err, size_t err_size) {
    if (gguf_check_exportable(m, path, type, err, err_size) != 0) return -1;
    const Config *c = &m->config;
    char name[256];
    model_name(m, name, sizeof name);
    GGUFWriter w;
    gguf_writer_init(&w);
    gguf_put_string(&w, "general.architecture", gguf_arch(c));
    gguf_put_string(&w, "general.type", "model");
    gguf_put_string(&w, "general.name", name);
    gguf_put_u32(&w, "general.alignment", GGUF_DEFAULT_ALIGNMENT);
    put_hyperparameters(&w, c, find_type(type)->file_type);
    float **permuted = (float **)calloc(2 * (size_t)c->n_layers, sizeof(float *));
    int ok = permuted && put_tokenizer(&w, m->tokenizer, c->vocab_size);
    if (ok) gguf_put_u32(&w, "general.quantization_version", GGML_QUANT_VERSION);
    ok = ok && put_tensors(&w, m, type, permuted);
    int status = -1;
    if (!ok) snprintf(err, err_size, "%s: out of memory", path);
    else status = gguf_writer_save(&w, path, err, err_size);
    for (int i = 0; permuted && i < 2 * c->n_layers; i++) free(permuted[i]);
    free(permuted);
    gguf_writer_free(&w);
    return status;
}
