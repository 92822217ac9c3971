// infer/merge.cpp: the merged model (see infer/merge.h): NF4 round trip of the base,
// W += s B A from the adapter, then model.safetensors in bf16, config.json
// and the tokenizer files. Plain host code.
#include "infer/merge.h"
#include "formats/atomic_file.h"
#include "formats/float16.h"
#include "nf4.h"
#include "formats/safetensors.h"
#include "tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

// ---- model.safetensors --------------------------------------------------------

static void add_weight(NamedWeight *list, int *count, const char *name, int layer, float *values,
                       int64_t rows, int64_t cols) {
    NamedWeight *w = &list[(*count)++];
    snprintf(w->name, sizeof w->name, name, layer);
    w->values = values;
    w->rows = rows;
    w->cols = cols;
}

int model_list_weights(const Model *m, NamedWeight *list) {
    const Config *c = &m->config;
    int64_t q_dim = (int64_t)c->n_heads * c->head_dim, kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    int n = 0;
    add_weight(list, &n, "model.embed_tokens.weight", 0, m->embed, c->vocab_size, c->dim);
    for (int i = 0; i < c->n_layers; i++) {
        const LayerWeights *l = &m->layers[i];
        add_weight(list, &n, "model.layers.%d.input_layernorm.weight", i, l->attn_norm, c->dim, 0);
        add_weight(list, &n, "model.layers.%d.self_attn.q_proj.weight", i, l->wq, q_dim, c->dim);
        add_weight(list, &n, "model.layers.%d.self_attn.k_proj.weight", i, l->wk, kv_dim, c->dim);
        add_weight(list, &n, "model.layers.%d.self_attn.v_proj.weight", i, l->wv, kv_dim, c->dim);
        if (c->attention_bias) {
            add_weight(list, &n, "model.layers.%d.self_attn.q_proj.bias", i, l->bq, q_dim, 0);
            add_weight(list, &n, "model.layers.%d.self_attn.k_proj.bias", i, l->bk, kv_dim, 0);
            add_weight(list, &n, "model.layers.%d.self_attn.v_proj.bias", i, l->bv, kv_dim, 0);
        }
        add_weight(list, &n, "model.layers.%d.self_attn.o_proj.weight", i, l->wo, c->dim, q_dim);
        add_weight(list, &n, "model.layers.%d.post_attention_layernorm.weight", i, l->mlp_norm, c->dim, 0);
        add_weight(list, &n, "model.layers.%d.mlp.gate_proj.weight", i, l->w_gate, c->hidden_dim, c->dim);
        add_weight(list, &n, "model.layers.%d.mlp.up_proj.weight", i, l->w_up, c->hidden_dim, c->dim);
        add_weight(list, &n, "model.layers.%d.mlp.down_proj.weight", i, l->w_down, c->dim, c->hidden_dim);
    }
    add_weight(list, &n, "model.norm.weight", 0, m->final_norm, c->dim, 0);
    if (!c->tied_embeddings) add_weight(list, &n, "lm_head.weight", 0, m->lm_head, c->vocab_size, c->dim);
    return n;
}

// Every weight rounded to bf16 (to nearest, ties to even) into one file.
static int write_weights(const Model *m, const char *path, char *err, size_t err_size) {
    int capacity = MODEL_MAX_WEIGHTS(m->config.n_layers);
    NamedWeight *weights = (NamedWeight *)calloc((size_t)capacity, sizeof(NamedWeight));
    TensorInfo *tensors = (TensorInfo *)calloc((size_t)capacity, sizeof(TensorInfo));
    uint16_t *bf16 = (uint16_t *)malloc(m->storage_floats * sizeof(uint16_t));
    int status = -1;
    if (!weights || !tensors || !bf16) {
        snprintf(err, err_size, "%s: out of memory for %zu bf16 weights", path, m->storage_floats);
    } else {
        int n = model_list_weights(m, weights);
        uint16_t *next = bf16;
        for (int i = 0; i < n; i++) {
            int64_t count = weights[i].cols ? weights[i].rows * weights[i].cols : weights[i].rows;
            #pragma omp parallel for schedule(static)
            for (int64_t k = 0; k < count; k++) next[k] = f32_to_bf16(weights[i].values[k]);
            TensorInfo *t = &tensors[i];
            t->name = weights[i].name;
            t->dtype = DT_BF16;
            t->ndim = weights[i].cols ? 2 : 1;
            t->shape[0] = weights[i].rows;
            t->shape[1] = weights[i].cols;
            t->data = next;
            t->nbytes = sizeof(uint16_t) * (size_t)count;
            next += count;
        }
        status = safetensors_write(path, tensors, n, err, err_size);
    }
    free(weights);
    free(tensors);
    free(bf16);
    return status;
}

// ---- config.json ---------------------------------------------------------------

// The shortest decimal that reads back as the same float (1e-05 for 1e-5f).
static void format_float(char *out, size_t size, float x) {
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(out, size, "%.*g", digits, x);
        if (strtof(out, NULL) == x) return;
    }
}

// A token id, or null when there is none.
static void put_token_id(FILE *f, const char *key, int id) {
    if (id >= 0) fprintf(f, "  \"%s\": %d,\n", key, id);
    else fprintf(f, "  \"%s\": null,\n", key);
}

static void put_rope(FILE *f, const Config *c) {
    char theta[32], factor[32], low[32], high[32];
    format_float(theta, sizeof theta, c->rope_theta);
    fprintf(f, "  \"rope_theta\": %s,\n", theta);
    if (c->rope_factor <= 0) { fputs("  \"rope_scaling\": null,\n", f); return; }
    format_float(factor, sizeof factor, c->rope_factor);
    format_float(low, sizeof low, c->rope_low_freq_factor);
    format_float(high, sizeof high, c->rope_high_freq_factor);
    fprintf(f, "  \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": %s, \"low_freq_factor\": %s, "
               "\"high_freq_factor\": %s, \"original_max_position_embeddings\": %d},\n",
            factor, low, high, c->rope_original_max_pos);
}

// transformers' LlamaConfig (or Qwen2Config) keys for our Config.
static int write_config(const Model *m, const char *path, char *err, size_t err_size) {
    const Config *c = &m->config;
    AtomicFile file;
    FILE *f = atomic_file_open(&file, path, err, err_size);
    if (!f) return -1;
    int qwen2 = c->arch == ARCH_QWEN2;
    char eps[32];
    format_float(eps, sizeof eps, c->norm_eps);
    fprintf(f, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n", qwen2 ? "Qwen2ForCausalLM" :
            "LlamaForCausalLM", qwen2 ? "qwen2" : "llama");
    fprintf(f, "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
               "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n"
               "  \"vocab_size\": %d,\n  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": %s,\n",
            c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab_size,
            c->max_seq_len, eps);
    put_rope(f, c);
    if (qwen2) fputs("  \"use_sliding_window\": false,\n", f);
    else fputs("  \"attention_bias\": false,\n  \"mlp_bias\": false,\n", f);
    put_token_id(f, "bos_token_id", m->tokenizer ? tokenizer_bos_id(m->tokenizer) : -1);
    put_token_id(f, "eos_token_id", m->tokenizer ? tokenizer_eos_id(m->tokenizer) : -1);
    fprintf(f, "  \"hidden_act\": \"silu\",\n  \"tie_word_embeddings\": %s,\n  \"torch_dtype\": \"bfloat16\",\n"
               "  \"use_cache\": true\n}\n", c->tied_embeddings ? "true" : "false");
    return atomic_file_commit(&file, err, err_size);
}

// ---- the whole directory -------------------------------------------------------

// Files of a model directory that we do not write but that transformers (and
// our loader, for the first two) would read with ours: another model's.
static const char *const FOREIGN_MODEL_FILES[] = {
    "chat_template.jinja", "model.safetensors.index.json", "generation_config.json", "special_tokens_map.json",
    "added_tokens.json", "tokenizer.model", "pytorch_model.bin", "pytorch_model.bin.index.json"};

// 0 when out_dir holds none of FOREIGN_MODEL_FILES; else -1 naming the first.
static int check_no_foreign_files(const char *out_dir, char *err, size_t err_size) {
    for (const char *name : FOREIGN_MODEL_FILES) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", out_dir, name);
        if (access(path, F_OK) != 0) continue;
        snprintf(err, err_size, "%s: another model's file is in the output directory, and would be read with the "
                 "model written there (for chat_template.jinja, over its chat template); write to a new directory, "
                 "or remove it", path);
        return -1;
    }
    return 0;
}

int model_save_hf(const Model *m, const char *out_dir, char *err, size_t err_size) {
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, err_size, "%s: cannot create: %s", out_dir, strerror(errno));
        return -1;
    }
    if (check_no_foreign_files(out_dir, err, err_size) != 0) return -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    if (write_weights(m, path, err, err_size) != 0) return -1;
    snprintf(path, sizeof path, "%s/config.json", out_dir);
    if (write_config(m, path, err, err_size) != 0) return -1;
    return m->tokenizer ? tokenizer_save_hf(m->tokenizer, out_dir, err, err_size) : 0;
}

// The base the adapter was trained on (nf4.h), then W += s B A (infer/adapter.h), then the directory.
int merge_into_base(Model *m, const char *adapter_dir, int quantize_nf4, int double_quant, AdapterInfo *info,
                    char *err, size_t err_size) {
    if (quantize_nf4 && nf4_round_trip_model(m, double_quant, err, err_size) != 0) return -1;
    return adapter_merge_peft(m, adapter_dir, info, err, err_size);
}

int merge_export(Model *m, const char *adapter_dir, int quantize_nf4, int double_quant, const char *out_dir,
                 AdapterInfo *info, char *err, size_t err_size) {
    if (merge_into_base(m, adapter_dir, quantize_nf4, double_quant, info, err, err_size) != 0) return -1;
    return model_save_hf(m, out_dir, err, err_size);
}
