// formats/hf_checkpoint.c: opens a Hugging Face model directory: validates
// config.json into a Config, then maps model.safetensors or the shards named
// by model.safetensors.index.json and lists all their tensors together.
#include "formats/hf_checkpoint.h"
#include "formats/json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// ---- config.json ---------------------------------------------------------------

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
        read_bool(json, "tie_word_embeddings", &c->tied_embeddings, path, err, err_size) != 0)
        return -1;
    return 0;
}

int hf_read_config(const char *path, Config *config, char *err, size_t err_size) {
    memset(config, 0, sizeof *config);
    JsonValue *json = json_parse_file(path, err, err_size);
    if (!json) return -1;
    int status = config_from_json(json, config, path, err, err_size);
    json_free(json);
    if (status != 0) memset(config, 0, sizeof *config);
    return status;
}

// ---- weights -------------------------------------------------------------------

// dir + "/" + name, malloc'd.
static char *join_path(const char *dir, const char *name) {
    size_t size = strlen(dir) + strlen(name) + 2;
    char *path = (char *)malloc(size);
    if (path) snprintf(path, size, "%s/%s", dir, name);
    return path;
}

static int is_regular_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

// Opens DIR/name as the next shard.
static int open_shard(HFCheckpoint *ck, const char *name, char *err, size_t err_size) {
    char *path = join_path(ck->dir, name);
    if (!path) { snprintf(err, err_size, "%s: out of memory", ck->dir); return -1; }
    int status = safetensors_open(&ck->shards[ck->n_shards], path, err, err_size);
    if (status == 0) ck->n_shards++;
    free(path);
    return status;
}

// Shard names from the index must be plain file names inside the directory.
static int is_plain_file_name(const char *name) {
    return name[0] != '\0' && strchr(name, '/') == NULL && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static int find_shard_name(const char *const *names, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0) return i;
    return -1;
}

// Opens every distinct shard of the index's weight_map once, then checks
// that each listed tensor is in the shard the index names.
static int open_indexed_shards(HFCheckpoint *ck, const JsonValue *weight_map, const char *index_path, char *err,
                               size_t err_size) {
    size_t n = weight_map->count;
    const char **names = (const char **)malloc((n ? n : 1) * sizeof *names);
    int *shard_of = (int *)malloc((n ? n : 1) * sizeof *shard_of);
    ck->shards = (SafetensorsFile *)calloc(n ? n : 1, sizeof(SafetensorsFile));
    int status = names && shard_of && ck->shards ? 0 : -1;
    if (status != 0) snprintf(err, err_size, "%s: out of memory", index_path);
    int n_names = 0;
    for (size_t i = 0; i < n && status == 0; i++) {
        const JsonValue *file = &weight_map->items[i];
        if (file->type != JSON_STRING || !is_plain_file_name(file->string)) {
            snprintf(err, err_size, "%s: tensor '%s': shard must be a file name in the model directory",
                     index_path, weight_map->keys[i]);
            status = -1;
            break;
        }
        shard_of[i] = find_shard_name(names, n_names, file->string);
        if (shard_of[i] < 0) {
            names[n_names] = file->string;
            shard_of[i] = n_names++;
            status = open_shard(ck, file->string, err, err_size);
        }
    }
    for (size_t i = 0; i < n && status == 0; i++) {
        if (!tensor_find(&ck->shards[shard_of[i]].tensors, weight_map->keys[i])) {
            snprintf(err, err_size, "%s: tensor '%s': listed in shard '%s', which does not hold it", index_path,
                     weight_map->keys[i], names[shard_of[i]]);
            status = -1;
        }
    }
    free(names);
    free(shard_of);
    return status;
}

static int open_sharded(HFCheckpoint *ck, const char *index_path, char *err, size_t err_size) {
    JsonValue *index = json_parse_file(index_path, err, err_size);
    if (!index) return -1;
    const JsonValue *weight_map = json_get(index, "weight_map");
    int status;
    if (!weight_map || weight_map->type != JSON_OBJECT || weight_map->count == 0) {
        snprintf(err, err_size, "%s: 'weight_map' is missing, empty or not an object", index_path);
        status = -1;
    } else {
        status = open_indexed_shards(ck, weight_map, index_path, err, err_size);
    }
    json_free(index);
    return status;
}

static int compare_tensor_names(const void *a, const void *b) {
    return strcmp(((const TensorInfo *)a)->name, ((const TensorInfo *)b)->name);
}

// Reports a tensor name held by two shards.
static void report_duplicate(const HFCheckpoint *ck, const char *name, char *err, size_t err_size) {
    const char *first = NULL, *second = NULL;
    for (int s = 0; s < ck->n_shards && !second; s++) {
        if (!tensor_find(&ck->shards[s].tensors, name)) continue;
        if (first) second = ck->shards[s].path;
        else first = ck->shards[s].path;
    }
    snprintf(err, err_size, "%s: tensor '%s': found in both %s and %s", ck->dir, name, first, second);
}

// Lists every shard's tensors in ck->tensors; a name in two shards is an error.
static int merge_tensors(HFCheckpoint *ck, char *err, size_t err_size) {
    int total = 0;
    for (int s = 0; s < ck->n_shards; s++) total += ck->shards[s].tensors.count;
    ck->tensors.tensors = (TensorInfo *)malloc((size_t)(total ? total : 1) * sizeof(TensorInfo));
    TensorInfo *sorted = (TensorInfo *)malloc((size_t)(total ? total : 1) * sizeof(TensorInfo));
    if (!ck->tensors.tensors || !sorted) {
        free(sorted);
        snprintf(err, err_size, "%s: out of memory", ck->dir);
        return -1;
    }
    for (int s = 0; s < ck->n_shards; s++) {
        const TensorList *list = &ck->shards[s].tensors;
        memcpy(ck->tensors.tensors + ck->tensors.count, list->tensors, (size_t)list->count * sizeof(TensorInfo));
        ck->tensors.count += list->count;
    }
    memcpy(sorted, ck->tensors.tensors, (size_t)total * sizeof(TensorInfo));
    qsort(sorted, (size_t)total, sizeof(TensorInfo), compare_tensor_names);
    int status = 0;
    for (int i = 1; i < total && status == 0; i++) {
        if (strcmp(sorted[i - 1].name, sorted[i].name) == 0) {
            report_duplicate(ck, sorted[i].name, err, err_size);
            status = -1;
        }
    }
    free(sorted);
    return status;
}

static int open_weights(HFCheckpoint *ck, char *err, size_t err_size) {
    char *single = join_path(ck->dir, "model.safetensors");
    char *index = join_path(ck->dir, "model.safetensors.index.json");
    int status = -1;
    if (!single || !index) {
        snprintf(err, err_size, "%s: out of memory", ck->dir);
    } else if (is_regular_file(single)) {
        ck->shards = (SafetensorsFile *)calloc(1, sizeof(SafetensorsFile));
        if (ck->shards) status = open_shard(ck, "model.safetensors", err, err_size);
        else snprintf(err, err_size, "%s: out of memory", ck->dir);
    } else if (is_regular_file(index)) {
        status = open_sharded(ck, index, err, err_size);
    } else {
        snprintf(err, err_size, "%s: has neither model.safetensors nor model.safetensors.index.json", ck->dir);
    }
    free(single);
    free(index);
    if (status == 0) status = merge_tensors(ck, err, err_size);
    return status;
}

int hf_open(HFCheckpoint *ck, const char *dir, Config *config, char *err, size_t err_size) {
    memset(ck, 0, sizeof *ck);
    memset(config, 0, sizeof *config);
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;   // "dir/" names files as "dir/x", not "dir//x"
    ck->dir = strndup(dir, len);
    char *config_path = ck->dir ? join_path(ck->dir, "config.json") : NULL;
    int status = -1;
    if (!config_path) snprintf(err, err_size, "%s: out of memory", dir);
    else status = hf_read_config(config_path, config, err, err_size);
    free(config_path);
    if (status == 0) status = open_weights(ck, err, err_size);
    if (status != 0) {
        hf_close(ck);
        memset(config, 0, sizeof *config);
    }
    return status;
}

void hf_close(HFCheckpoint *ck) {
    for (int s = 0; s < ck->n_shards; s++) safetensors_close(&ck->shards[s]);
    free(ck->shards);
    free(ck->tensors.tensors);
    free(ck->dir);
    memset(ck, 0, sizeof *ck);
}
