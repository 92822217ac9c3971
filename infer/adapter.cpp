// infer/adapter.cpp: merging a LoRA adapter saved in HF peft's layout into a
// model's fp32 weights (see infer/adapter.h). Plain host code: every name and shape
// is checked first, then each adapted weight gets W += s B A.
#include "infer/adapter.h"
#include "formats/json.h"
#include "lora.h"
#include "formats/safetensors.h"
#include "formats/tensor.h"

#include <ctype.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// A (layer, module)'s two tensors in the adapter file; NULL until seen.
typedef struct {
    const TensorInfo *A;   // [r, in]
    const TensorInfo *B;   // [out, r]
} LoraPair;

// ---- adapter_config.json ----------------------------------------------------

// A member that is JSON true (missing, null or false all read as false).
static int json_is_true(const JsonValue *object, const char *key) {
    const JsonValue *v = json_get(object, key);
    return v && v->type == JSON_BOOL && v->boolean;
}

// A member holding a non-empty object, as peft's per-module overrides do.
static int json_has_entries(const JsonValue *object, const char *key) {
    const JsonValue *v = json_get(object, key);
    return v && v->type == JSON_OBJECT && v->count > 0;
}

int adapter_config_from_json(AdapterConfig *ac, const JsonValue *config, const char *path, char *err,
                             size_t err_size) {
    if (config->type != JSON_OBJECT) { snprintf(err, err_size, "%s: not a JSON object", path); return -1; }
    const char *peft_type = json_get_string(config, "peft_type", "(missing)");
    if (strcmp(peft_type, "LORA") != 0) {
        snprintf(err, err_size, "%s: peft_type is '%s', expected 'LORA' (only LoRA adapters can be merged)", path,
                 peft_type);
        return -1;
    }
    if (json_is_true(config, "use_dora")) {
        snprintf(err, err_size, "%s: use_dora is true: DoRA adapters are not supported, only plain LoRA", path);
        return -1;
    }
    if (json_is_true(config, "fan_in_fan_out")) {
        snprintf(err, err_size, "%s: fan_in_fan_out is true: only [out, in] Linear weights are supported", path);
        return -1;
    }
    if (json_has_entries(config, "rank_pattern") || json_has_entries(config, "alpha_pattern")) {
        snprintf(err, err_size, "%s: per-module rank_pattern / alpha_pattern is not supported", path);
        return -1;
    }
    const JsonValue *r = json_get(config, "r"), *alpha = json_get(config, "lora_alpha");
    if (!r || r->type != JSON_NUMBER || r->number < 1 || r->number > 65536 || r->number != floor(r->number)) {
        snprintf(err, err_size, "%s: 'r' must be a positive integer", path);
        return -1;
    }
    if (!alpha || alpha->type != JSON_NUMBER || fabs(alpha->number) > FLT_MAX) {
        snprintf(err, err_size, "%s: 'lora_alpha' must be a number that fits a float", path);
        return -1;
    }
    ac->rank = (int)r->number;
    ac->alpha = (float)alpha->number;
    ac->rslora = json_is_true(config, "use_rslora");
    return 0;
}

static int read_adapter_config(AdapterConfig *ac, const char *path, char *err, size_t err_size) {
    JsonValue *config = json_parse_file(path, err, err_size);
    if (!config) return -1;
    int status = adapter_config_from_json(ac, config, path, err, err_size);
    json_free(config);
    return status;
}

// ---- tensor names -----------------------------------------------------------

// Splits "<layers path>N.<module>.lora_A.weight" (or lora_B) into the layer,
// the target and which of the two it is. -1 with the reason in why.
static int parse_tensor_name(const Config *c, const char *name, int *layer, int *target, int *is_b, char *why,
                             size_t why_size) {
    static const char SUFFIX_A[] = ".lora_A.weight", SUFFIX_B[] = ".lora_B.weight";
    size_t suffix_len = strlen(SUFFIX_A), prefix_len = strlen(peft_layers_path(c));
    snprintf(why, why_size, "not a LoRA weight of a %s model in peft's layout (expected %sN.MODULE.lora_A.weight "
             "or lora_B)", arch_name(c->arch), peft_layers_path(c));
    if (strncmp(name, peft_layers_path(c), prefix_len) != 0) return -1;
    const char *digits = name + prefix_len, *p = digits;
    while (isdigit((unsigned char)*p)) p++;
    if (p == digits || *p != '.') return -1;
    const char *module = p + 1;
    size_t rest_len = strlen(module);
    if (rest_len <= suffix_len) return -1;
    const char *suffix = module + rest_len - suffix_len;
    if (strcmp(suffix, SUFFIX_A) != 0 && strcmp(suffix, SUFFIX_B) != 0) return -1;
    *is_b = strcmp(suffix, SUFFIX_B) == 0;
    size_t module_len = rest_len - suffix_len;
    *target = -1;
    for (int t = 0; t < N_LINEARS; t++)
        if (strlen(peft_module_path(c, t)) == module_len && strncmp(module, peft_module_path(c, t), module_len) == 0) *target = t;
    if (*target < 0) {
        int n = snprintf(why, why_size, "unknown module '%.*s' (a %s layer has", (int)module_len, module,
                         arch_name(c->arch));
        for (int t = 0; t < N_LINEARS && n > 0 && (size_t)n < why_size; t++)
            n += snprintf(why + n, why_size - n, " %s", peft_module_path(c, t));
        if (n > 0 && (size_t)n < why_size) snprintf(why + n, why_size - n, ")");
        return -1;
    }
    // digits are bounded by the model's layer count before they can overflow
    long value = 0;
    for (const char *d = digits; d < p && value < c->n_layers; d++) value = value * 10 + (*d - '0');
    if (value >= c->n_layers) {
        snprintf(why, why_size, "layer %.*s is out of range (the model has %d layers)", (int)(p - digits), digits,
                 c->n_layers);
        return -1;
    }
    *layer = (int)value;
    return 0;
}

// ---- shapes -----------------------------------------------------------------

// The fp32 weight of (layer, target), row-major [out_dim, in_dim].
static float *target_weight(Model *m, int layer, int target, int *in_dim, int *out_dim) {
    linear_dims(&m->config, target, in_dim, out_dim);
    return linear_weight(&m->layers[layer], target);
}

// "[16, 576]": a tensor's shape as text.
static void format_shape(const TensorInfo *t, char *out, size_t size) {
    int n = snprintf(out, size, "[");
    for (int d = 0; d < t->ndim && n > 0 && (size_t)n < size; d++)
        n += snprintf(out + n, size - n, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (n > 0 && (size_t)n < size) snprintf(out + n, size - n, "]");
}

// A tensor must be a float matrix [rows, cols]. -1 with the reason in why.
static int check_tensor(const TensorInfo *t, int64_t rows, int64_t cols, char *why, size_t why_size) {
    if (t->dtype != DT_F32 && t->dtype != DT_F16 && t->dtype != DT_BF16) {
        snprintf(why, why_size, "dtype %s, expected F32, F16 or BF16", dtype_name(t->dtype));
        return -1;
    }
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols) {
        char shape[96];
        format_shape(t, shape, sizeof shape);
        snprintf(why, why_size, "shape %s, expected [%lld, %lld]", shape, (long long)rows, (long long)cols);
        return -1;
    }
    return 0;
}

// Files every tensor of the adapter under its (layer, target) in pairs,
// checking names, dtypes and shapes. Returns the number of complete pairs,
// or -1 with "PATH: tensor 'NAME': what is wrong" in err.
static int collect_pairs(Model *m, const AdapterConfig *ac, const SafetensorsFile *f, LoraPair *pairs, char *err,
                         size_t err_size) {
    char why[512];
    for (int i = 0; i < f->tensors.count; i++) {
        const TensorInfo *t = &f->tensors.tensors[i];
        int layer, target, is_b, in_dim, out_dim;
        if (parse_tensor_name(&m->config, t->name, &layer, &target, &is_b, why, sizeof why) != 0) {
            snprintf(err, err_size, "%s: tensor '%s': %s", f->path, t->name, why);
            return -1;
        }
        target_weight(m, layer, target, &in_dim, &out_dim);
        // A is [r, in], B is [out, r]
        int64_t rows = is_b ? out_dim : ac->rank, cols = is_b ? ac->rank : in_dim;
        if (check_tensor(t, rows, cols, why, sizeof why) != 0) {
            snprintf(err, err_size, "%s: tensor '%s': %s (r = %d)", f->path, t->name, why, ac->rank);
            return -1;
        }
        LoraPair *pair = &pairs[layer * N_LINEARS + target];
        if (is_b) pair->B = t;
        else pair->A = t;
    }
    int n_pairs = 0;
    for (int i = 0; i < m->config.n_layers * N_LINEARS; i++) {
        const TensorInfo *present = pairs[i].A ? pairs[i].A : pairs[i].B;
        if (!present) continue;
        if (!pairs[i].A || !pairs[i].B) {
            snprintf(err, err_size, "%s: tensor '%s' has no matching lora_%s", f->path, present->name,
                     pairs[i].A ? "B" : "A");
            return -1;
        }
        n_pairs++;
    }
    if (n_pairs == 0) { snprintf(err, err_size, "%s: holds no LoRA weights", f->path); return -1; }
    return n_pairs;
}

// ---- the merge --------------------------------------------------------------

// The name of the pair's A or B when it holds a NaN or Inf (a corrupted
// file), else NULL. A and B are scratch for r * in and out * r values.
static const char *non_finite_tensor(const LoraPair *pair, int in_dim, int out_dim, int rank, float *A, float *B) {
    tensor_to_f32(pair->A->dtype, pair->A->data, A, (int64_t)rank * in_dim);
    tensor_to_f32(pair->B->dtype, pair->B->data, B, (int64_t)out_dim * rank);
    if (!floats_all_finite(A, (size_t)rank * in_dim)) return pair->A->name;
    if (!floats_all_finite(B, (size_t)out_dim * rank)) return pair->B->name;
    return NULL;
}

// Adds s B A to W [out_dim, in_dim]; A and B are converted to fp32 in the
// caller's buffers (r * in and out * r values).
static void merge_pair(float *W, const LoraPair *pair, int in_dim, int out_dim, int rank, float scaling, float *A,
                       float *B) {
    tensor_to_f32(pair->A->dtype, pair->A->data, A, (int64_t)rank * in_dim);
    tensor_to_f32(pair->B->dtype, pair->B->data, B, (int64_t)out_dim * rank);
    // W[o, i] += s sum_k B[o, k] A[k, i]
    #pragma omp parallel for schedule(static)
    for (int o = 0; o < out_dim; o++) {
        for (int i = 0; i < in_dim; i++) {
            float sum = 0.0f;
            for (int k = 0; k < rank; k++) sum += B[(size_t)o * rank + k] * A[(size_t)k * in_dim + i];
            W[(size_t)o * in_dim + i] += scaling * sum;
        }
    }
}

int adapter_merge_peft(Model *m, const char *dir, AdapterInfo *info, char *err, size_t err_size) {
    char path[4096];
    AdapterConfig ac;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (read_adapter_config(&ac, path, err, err_size) != 0) return -1;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    SafetensorsFile f;
    if (safetensors_open(&f, path, err, err_size) != 0) return -1;
    const Config *c = &m->config;
    // the widest in or out dimension of any target
    int widest = c->dim > c->hidden_dim ? c->dim : c->hidden_dim;
    if (c->n_heads * c->head_dim > widest) widest = c->n_heads * c->head_dim;
    LoraPair *pairs = (LoraPair *)calloc((size_t)c->n_layers * N_LINEARS, sizeof(LoraPair));
    float *A = (float *)malloc(sizeof(float) * (size_t)ac.rank * widest);
    float *B = (float *)malloc(sizeof(float) * (size_t)ac.rank * widest);
    int n_pairs = -1;
    if (!pairs || !A || !B) snprintf(err, err_size, "%s: out of memory", path);
    else n_pairs = collect_pairs(m, &ac, &f, pairs, err, err_size);
    float scaling = lora_scale(ac.alpha, ac.rank, ac.rslora);
    for (int i = 0; n_pairs > 0 && i < c->n_layers * N_LINEARS; i++) {
        if (!pairs[i].A) continue;
        int in_dim, out_dim;
        target_weight(m, i / N_LINEARS, i % N_LINEARS, &in_dim, &out_dim);
        const char *bad = non_finite_tensor(&pairs[i], in_dim, out_dim, ac.rank, A, B);
        if (bad) {
            snprintf(err, err_size, "%s: tensor '%s' holds NaN or Inf values (corrupted?)", path, bad);
            n_pairs = -1;
        }
    }
    for (int i = 0; n_pairs > 0 && i < c->n_layers * N_LINEARS; i++) {
        if (!pairs[i].A) continue;
        int in_dim, out_dim;
        float *W = target_weight(m, i / N_LINEARS, i % N_LINEARS, &in_dim, &out_dim);
        merge_pair(W, &pairs[i], in_dim, out_dim, ac.rank, scaling, A, B);
    }
    free(pairs);
    free(A);
    free(B);
    safetensors_close(&f);
    if (n_pairs < 0) return -1;
    if (info) {
        info->n_merged = n_pairs;
        info->rank = ac.rank;
        info->scaling = scaling;
    }
    return 0;
}
