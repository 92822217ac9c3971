// merging/adapter_merge.cpp: peft's add_weighted_adapter on adapter files (see
// merging/adapter_merge.h): reading and checking the inputs, one function per
// family of methods (linear-like, cat, svd-like), and writing the result.
// Plain host code.
#include "merging/adapter_merge.h"
#include "formats/atomic_file.h"
#include "formats/cli.h"
#include "formats/hash.h"
#include "formats/json.h"
#include "formats/safetensors.h"
#include "formats/tensor.h"
#include "infer/adapter.h"
#include "lora.h"
#include "merging/svd.h"
#include "ops/random.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const ADAPTER_METHOD_NAMES[N_ADAPTER_METHODS] = {
    "linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd",
    "magnitude_prune", "magnitude_prune_svd",
};

int adapter_method_from_name(const char *name) {
    for (int m = 0; m < N_ADAPTER_METHODS; m++)
        if (strcmp(name, ADAPTER_METHOD_NAMES[m]) == 0) return m;
    return -1;
}

Combine adapter_method_combine(AdapterMethod method) {
    switch (method) {
    case ADAPTER_TIES: case ADAPTER_TIES_SVD: return COMBINE_TIES;
    case ADAPTER_DARE_LINEAR: case ADAPTER_DARE_LINEAR_SVD: return COMBINE_DARE_LINEAR;
    case ADAPTER_DARE_TIES: case ADAPTER_DARE_TIES_SVD: return COMBINE_DARE_TIES;
    case ADAPTER_MAGNITUDE_PRUNE: case ADAPTER_MAGNITUDE_PRUNE_SVD: return COMBINE_MAGNITUDE_PRUNE;
    default: return COMBINE_LINEAR;
    }
}

int adapter_method_is_svd(AdapterMethod method) {
    return method == ADAPTER_SVD || method == ADAPTER_TIES_SVD || method == ADAPTER_DARE_LINEAR_SVD ||
           method == ADAPTER_DARE_TIES_SVD || method == ADAPTER_MAGNITUDE_PRUNE_SVD;
}

uint64_t dare_mask_seed(uint64_t seed, int input, const char *tensor) {
    return mix64(fnv1a(FNV1A_OFFSET_BASIS, tensor, strlen(tensor)) ^ mix64(seed + (uint64_t)input * SPLITMIX64_GAMMA));
}

// ---- reading ------------------------------------------------------------------

static char *copy_text(const char *text) {
    char *copy = (char *)cpu_malloc(strlen(text) + 1, "adapter text");
    strcpy(copy, text);
    return copy;
}

void peft_adapter_free(PeftAdapter *a) {
    for (int i = 0; i < a->n_modules; i++) {
        free(a->modules[i].name);
        free(a->modules[i].A);
        free(a->modules[i].B);
    }
    free(a->modules);
    free(a->dir);
    free(a->base_model);
    free(a->task_type);
    memset(a, 0, sizeof *a);
}

static int read_config(PeftAdapter *a, const char *dir, char *err, size_t err_size) {
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    JsonValue *json = json_parse_file(path, err, err_size);
    if (!json) return -1;
    AdapterConfig ac;
    int status = adapter_config_from_json(&ac, json, path, err, err_size);
    if (status == 0 && ac.dora) {
        snprintf(err, err_size, "%s: use_dora is set: ./merge combines plain LoRA adapters only (a DoRA adapter's "
                 "magnitudes have no such combination here; merge it into a model with --base instead)", path);
        status = -1;
    }
    if (status == 0) {
        a->rank = ac.rank;
        a->alpha = ac.alpha;
        a->rslora = ac.rslora;
        a->scaling = lora_scale(ac.alpha, ac.rank, ac.rslora);
        a->base_model = copy_text(json_get_string(json, "base_model_name_or_path", ""));
        a->task_type = copy_text(json_get_string(json, "task_type", "CAUSAL_LM"));
    }
    json_free(json);
    if (status == 0) a->base_recorded = adapter_read_base(dir, &a->base, err, err_size);
    return a->base_recorded < 0 ? -1 : status;
}

// The module a tensor name belongs to and whether it is B; -1 when it is not a LoRA weight.
static int split_tensor_name(const char *name, size_t *module_len, int *is_b) {
    static const char SUFFIX_A[] = ".lora_A.weight", SUFFIX_B[] = ".lora_B.weight";
    size_t len = strlen(name), suffix_len = strlen(SUFFIX_A);
    if (len <= suffix_len) return -1;
    const char *suffix = name + len - suffix_len;
    if (strcmp(suffix, SUFFIX_A) != 0 && strcmp(suffix, SUFFIX_B) != 0) return -1;
    *is_b = strcmp(suffix, SUFFIX_B) == 0;
    *module_len = len - suffix_len;
    return 0;
}

// The module named by the first len bytes of name, added when new.
static LoraModule *find_or_add_module(PeftAdapter *a, const char *name, size_t len) {
    for (int i = 0; i < a->n_modules; i++)
        if (strlen(a->modules[i].name) == len && strncmp(a->modules[i].name, name, len) == 0) return &a->modules[i];
    LoraModule *m = &a->modules[a->n_modules++];
    m->name = (char *)cpu_malloc(len + 1, "module name");
    memcpy(m->name, name, len);
    m->name[len] = '\0';
    return m;
}

// One lora_A [r, in] or lora_B [out, r] tensor into its module, converted to fp32.
static int read_tensor(PeftAdapter *a, const TensorInfo *t, const char *path, char *err, size_t err_size) {
    size_t module_len;
    int is_b;
    if (split_tensor_name(t->name, &module_len, &is_b) != 0) {
        snprintf(err, err_size, "%s: tensor '%s' is not a LoRA weight (NAME.lora_A.weight or NAME.lora_B.weight); "
                 "only LoRA adapters can be merged", path, t->name);
        return -1;
    }
    if (t->dtype != DT_F32 && t->dtype != DT_F16 && t->dtype != DT_BF16) {
        snprintf(err, err_size, "%s: tensor '%s': dtype %s, expected F32, F16 or BF16", path, t->name,
                 dtype_name(t->dtype));
        return -1;
    }
    int64_t rank_dim = is_b ? (t->ndim == 2 ? t->shape[1] : -1) : t->shape[0];
    if (t->ndim != 2 || rank_dim != a->rank || t->shape[0] < 1 || t->shape[1] < 1 || t->shape[0] > INT32_MAX ||
        t->shape[1] > INT32_MAX) {
        snprintf(err, err_size, "%s: tensor '%s': %d dims of shape [%lld, %lld], expected %s with r = %d", path,
                 t->name, t->ndim, (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0),
                 is_b ? "[out, r]" : "[r, in]", a->rank);
        return -1;
    }
    LoraModule *m = find_or_add_module(a, t->name, module_len);
    float **slot = is_b ? &m->B : &m->A;
    if (*slot) { snprintf(err, err_size, "%s: tensor '%s' appears twice", path, t->name); return -1; }
    if (is_b) m->out_dim = (int)t->shape[0];
    else m->in_dim = (int)t->shape[1];
    int64_t n = tensor_numel(t);
    *slot = (float *)cpu_malloc(sizeof(float) * (size_t)n, "adapter tensor");
    tensor_to_f32(t->dtype, t->data, *slot, n);
    if (!floats_all_finite(*slot, (size_t)n)) {
        snprintf(err, err_size, "%s: tensor '%s' holds NaN or Inf values (corrupted?)", path, t->name);
        return -1;
    }
    return 0;
}

static int read_tensors(PeftAdapter *a, const char *dir, char *err, size_t err_size) {
    char path[4096];
    SafetensorsFile f;
    if (adapter_weights_path(dir, path, sizeof path, err, err_size) != 0 ||
        safetensors_open(&f, path, err, err_size) != 0)
        return -1;
    a->modules = (LoraModule *)cpu_calloc((size_t)f.tensors.count + 1, sizeof(LoraModule), "adapter modules");
    int status = 0;
    for (int i = 0; i < f.tensors.count && status == 0; i++)
        status = read_tensor(a, &f.tensors.tensors[i], path, err, err_size);
    safetensors_close(&f);
    for (int i = 0; i < a->n_modules && status == 0; i++) {
        if (a->modules[i].A && a->modules[i].B) continue;
        snprintf(err, err_size, "%s: module '%s' has lora_%s but no lora_%s", path, a->modules[i].name,
                 a->modules[i].A ? "A" : "B", a->modules[i].A ? "B" : "A");
        status = -1;
    }
    if (status == 0 && a->n_modules == 0) { snprintf(err, err_size, "%s: holds no LoRA weights", path); status = -1; }
    return status;
}

int peft_adapter_read(PeftAdapter *a, const char *dir, char *err, size_t err_size) {
    memset(a, 0, sizeof *a);
    a->dir = copy_text(dir);
    if (read_config(a, dir, err, err_size) != 0 || read_tensors(a, dir, err, err_size) != 0) {
        peft_adapter_free(a);
        return -1;
    }
    return 0;
}

// ---- writing ------------------------------------------------------------------

// A module's name in the model ("model.layers.0.self_attn.q_proj"): its tensors'
// prefix without peft's wrapper, the name peft matches target_modules against.
static const char *module_name_in_model(const char *name) {
    size_t wrapper = strlen(PEFT_WRAPPER);
    return strncmp(name, PEFT_WRAPPER, wrapper) == 0 ? name + wrapper : name;
}

static int write_config(const PeftAdapter *a, const char *path, char *err, size_t err_size) {
    AtomicFile file;
    FILE *f = atomic_file_open(&file, path, err, err_size);
    if (!f) return -1;
    fputs("{\n  \"peft_type\": \"LORA\",\n  \"task_type\": ", f);
    json_write_string(f, a->task_type);
    fputs(",\n  \"base_model_name_or_path\": ", f);
    json_write_string(f, a->base_model);
    fprintf(f, ",\n  \"r\": %d,\n  \"lora_alpha\": %.9g,\n  \"lora_dropout\": 0.0,\n  \"target_modules\": [", a->rank,
            a->alpha);
    // every module by its whole name: exactly the modules the file holds (leaf names
    // like "q_proj" would select every layer's, more than inputs adapting some layers hold)
    for (int i = 0; i < a->n_modules; i++) {
        fputs(i ? ", " : "", f);
        json_write_string(f, module_name_in_model(a->modules[i].name));
    }
    fprintf(f, "],\n  \"bias\": \"none\",\n  \"fan_in_fan_out\": false,\n  \"use_rslora\": %s,\n"
               "  \"use_dora\": false,\n  \"init_lora_weights\": true,\n  \"inference_mode\": true",
            a->rslora ? "true" : "false");
    if (a->base_recorded) {
        fputs(",\n", f);
        lora_write_base_record(f, &a->base);
    }
    fputs("\n}\n", f);
    return atomic_file_commit(&file, err, err_size);
}

int peft_adapter_write(const PeftAdapter *a, const char *dir, char *err, size_t err_size) {
    if (cli_make_dirs(dir, err, err_size) != 0) return -1;
    int n = 2 * a->n_modules;
    TensorInfo *tensors = (TensorInfo *)cpu_calloc((size_t)n, sizeof(TensorInfo), "adapter tensors");
    char (*names)[512] = (char (*)[512])cpu_calloc((size_t)n, 512, "adapter tensor names");
    for (int i = 0; i < n; i++) {
        const LoraModule *m = &a->modules[i / 2];
        int is_b = i % 2;
        snprintf(names[i], 512, "%s.lora_%s.weight", m->name, is_b ? "B" : "A");
        tensors[i].name = names[i];
        tensors[i].dtype = DT_F32;
        tensors[i].ndim = 2;
        tensors[i].shape[0] = is_b ? m->out_dim : a->rank;
        tensors[i].shape[1] = is_b ? a->rank : m->in_dim;
        tensors[i].data = is_b ? m->B : m->A;
        tensors[i].nbytes = sizeof(float) * (size_t)a->rank * (size_t)(is_b ? m->out_dim : m->in_dim);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    int status = safetensors_write(path, tensors, n, err, err_size);
    free(tensors);
    free(names);
    if (status != 0) return -1;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    return write_config(a, path, err, err_size);
}

// ---- checks -------------------------------------------------------------------

// The last path component of a base model's name ("models/x.gguf" and "/abs/models/x.gguf/" are the same base).
static void base_name(const char *path, char *out, size_t size) {
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && path[start - 1] != '/') start--;
    snprintf(out, size, "%.*s", (int)(len - start), path + start);
}

// "--quant nf4 --double-quant 1" or "--quant none": a recorded base as ./train's options name it.
static const char *base_options(const LoraBase *base) {
    if (!base->quant_nf4) return "--quant none";
    return base->double_quant ? "--quant nf4 --double-quant 1" : "--quant nf4 --double-quant 0";
}

// The first input that records its base, or -1.
static int first_recorded(const PeftAdapter *inputs, int count) {
    for (int i = 0; i < count; i++)
        if (inputs[i].base_recorded) return i;
    return -1;
}

// Inputs that record the base they were trained on must record the same one:
// the merged adapter records it, to be merged onto it.
static int check_same_recorded_base(const PeftAdapter *inputs, int count, char *err, size_t err_size) {
    int first = first_recorded(inputs, count);
    for (int i = first + 1; first >= 0 && i < count; i++) {
        const LoraBase *a = &inputs[first].base, *b = &inputs[i].base;
        if (!inputs[i].base_recorded) continue;
        if (a->model_hash != b->model_hash) {
            snprintf(err, err_size, "%s: adapter of another base: it records the base model's weights hash %016llx, "
                     "%s records %016llx (merging needs fine-tunes of the same base)", inputs[i].dir,
                     (unsigned long long)b->model_hash, inputs[first].dir, (unsigned long long)a->model_hash);
            return -1;
        }
        int same_quant = a->quant_nf4 == b->quant_nf4 && (!a->quant_nf4 || a->double_quant == b->double_quant);
        if (same_quant) continue;
        snprintf(err, err_size, "%s: trained on the base of ./train %s, %s on that of %s: the merged adapter would "
                 "have no one base to be merged onto (merge each into a model instead: --base MODEL)", inputs[i].dir,
                 base_options(b), inputs[first].dir, base_options(a));
        return -1;
    }
    return 0;
}

static int check_same_base(const PeftAdapter *inputs, int count, char *err, size_t err_size) {
    if (check_same_recorded_base(inputs, count, err, err_size) != 0) return -1;
    for (int i = 1; i < count; i++) {
        char first[1024], other[1024];
        base_name(inputs[0].base_model, first, sizeof first);
        base_name(inputs[i].base_model, other, sizeof other);
        if (!first[0] || !other[0] || strcmp(first, other) == 0) continue;
        snprintf(err, err_size, "%s: adapter of another base: base_model_name_or_path '%s', but %s's is '%s' "
                 "(merging needs fine-tunes of the same base)", inputs[i].dir, inputs[i].base_model, inputs[0].dir,
                 inputs[0].base_model);
        return -1;
    }
    return 0;
}

static const LoraModule *find_module(const PeftAdapter *a, const char *name) {
    for (int i = 0; i < a->n_modules; i++)
        if (strcmp(a->modules[i].name, name) == 0) return &a->modules[i];
    return NULL;
}

static int check_same_shapes(const PeftAdapter *inputs, int count, char *err, size_t err_size) {
    for (int i = 1; i < count; i++)
        for (int j = 0; j < inputs[i].n_modules; j++) {
            const LoraModule *m = &inputs[i].modules[j];
            for (int k = 0; k < i; k++) {
                const LoraModule *seen = find_module(&inputs[k], m->name);
                if (!seen || (seen->in_dim == m->in_dim && seen->out_dim == m->out_dim)) continue;
                snprintf(err, err_size, "%s: module '%s' is [out %d, in %d], but in %s it is [out %d, in %d] "
                         "(adapters of different bases?)", inputs[i].dir, m->name, m->out_dim, m->in_dim,
                         inputs[k].dir, seen->out_dim, seen->in_dim);
                return -1;
            }
        }
    return 0;
}

// linear, ties, dare_*, magnitude_prune merge A's with A's: the ranks must agree (as peft).
static int check_equal_ranks(const PeftAdapter *inputs, int count, AdapterMethod method, char *err, size_t err_size) {
    for (int i = 1; i < count; i++) {
        if (inputs[i].rank == inputs[0].rank) continue;
        snprintf(err, err_size, "%s: rank %d, but %s has rank %d: --method %s merges the A's and the B's "
                 "entry by entry and needs equal ranks (as peft); cat or svd combine any ranks", inputs[i].dir,
                 inputs[i].rank, inputs[0].dir, inputs[0].rank, ADAPTER_METHOD_NAMES[method]);
        return -1;
    }
    return 0;
}

static int check_svd_rank(const PeftAdapter *inputs, int count, int rank, char *err, size_t err_size) {
    for (int i = 0; i < count; i++)
        for (int j = 0; j < inputs[i].n_modules; j++) {
            const LoraModule *m = &inputs[i].modules[j];
            if (rank <= m->in_dim && rank <= m->out_dim) continue;
            snprintf(err, err_size, "%s: --rank %d exceeds module '%s''s shape [out %d, in %d]: a truncated SVD "
                     "keeps at most min(out, in) directions", inputs[i].dir, rank, m->name, m->out_dim, m->in_dim);
            return -1;
        }
    return 0;
}

// ---- the three families of methods -------------------------------------------------

// One output module and the inputs that adapt it.
typedef struct {
    const char *name;
    int in_dim, out_dim;
    int n_present;
    const LoraModule *present[64];     // the inputs' modules, in input order
    const PeftAdapter *adapter[64];    // their adapters
    int input[64];                     // their input indices
    double weight[64];                 // their weights w_i
} ModuleInputs;

static float *copy_floats(const float *x, size_t n) {
    float *copy = (float *)cpu_malloc(sizeof(float) * n, "task tensor");
    memcpy(copy, x, sizeof(float) * n);
    return copy;
}

// The A's (which = 0) or the B's (1) of the present inputs, combined:
//   out = combine_i(w'_i, T_i)
static void combine_factor(const ModuleInputs *mi, const AdapterMergeOptions *o, int which, const double *weights,
                           float *out) {
    int rank = mi->adapter[0]->rank;
    int64_t n = (int64_t)rank * (which ? mi->out_dim : mi->in_dim);
    float *tasks[64], *keep[64];
    char tensor[600];
    snprintf(tensor, sizeof tensor, "%s.lora_%s.weight", mi->name, which ? "B" : "A");
    Combine how = adapter_method_combine(o->method);
    for (int i = 0; i < mi->n_present; i++) {
        tasks[i] = copy_floats(which ? mi->present[i]->B : mi->present[i]->A, (size_t)n);
        keep[i] = NULL;
        if (!combine_is_random(how)) continue;
        keep[i] = (float *)cpu_malloc(sizeof(float) * (size_t)n, "keep mask");
        o->keep_mask(o->keep_context, mi->input[i], tensor, keep[i], n);
    }
    combine_tasks(how, out, tasks, keep, weights, mi->n_present, n, o->density);
    for (int i = 0; i < mi->n_present; i++) {
        free(tasks[i]);
        free(keep[i]);
    }
}

// linear (and ties, dare_linear, dare_ties, magnitude_prune): peft combines the
// A's and the B's separately, each weighted by sqrt(|w_i s_i|), the sign on A:
//   A = combine_i(sign(w_i s_i) sqrt(|w_i s_i|), A_i),   B = combine_i(sqrt(|w_i s_i|), B_i)
// For linear B A = sum_i sum_j sqrt(w_i s_i w_j s_j) B_i A_j: NOT the weighted sum of
// the deltas sum_i w_i s_i B_i A_i (cat is), but of the same rank (peft calls it "a rough approximation").
static void merge_factors(const ModuleInputs *mi, const AdapterMergeOptions *o, LoraModule *out) {
    double weights_A[64], weights_B[64];
    for (int i = 0; i < mi->n_present; i++) {
        double ws = mi->weight[i] * mi->adapter[i]->scaling;
        weights_B[i] = sqrt(fabs(ws));
        weights_A[i] = ws >= 0 ? weights_B[i] : -weights_B[i];
    }
    combine_factor(mi, o, 0, weights_A, out->A);
    combine_factor(mi, o, 1, weights_B, out->B);
}

// cat: the ranks side by side, the weight and scaling on A (rank = sum of the inputs' ranks;
// rows and columns of inputs that do not adapt the module stay 0, at the end):
//   A = [w_1 s_1 A_1; w_2 s_2 A_2; ...],  B = [B_1 | B_2 | ...]   =>   B A = sum_i w_i s_i B_i A_i
static void merge_cat(const ModuleInputs *mi, int rank, LoraModule *out) {
    int offset = 0;
    for (int i = 0; i < mi->n_present; i++) {
        const LoraModule *m = mi->present[i];
        int r = mi->adapter[i]->rank;
        float ws = (float)(mi->weight[i] * mi->adapter[i]->scaling);
        for (int k = 0; k < r; k++)
            for (int c = 0; c < mi->in_dim; c++)
                out->A[(size_t)(offset + k) * mi->in_dim + c] = ws * m->A[(size_t)k * mi->in_dim + c];
        for (int o = 0; o < mi->out_dim; o++)
            for (int k = 0; k < r; k++) out->B[(size_t)o * rank + offset + k] = m->B[(size_t)o * r + k];
        offset += r;
    }
}

// The input's delta in fp32, as peft's get_delta_weight: D = s (B A) [out, in].
static float *module_delta(const LoraModule *m, int rank, float scaling) {
    float *delta = (float *)cpu_malloc(sizeof(float) * (size_t)m->out_dim * m->in_dim, "delta");
    for (int o = 0; o < m->out_dim; o++)
        for (int c = 0; c < m->in_dim; c++) {
            float sum = 0.0f;
            for (int k = 0; k < rank; k++) sum += m->B[(size_t)o * rank + k] * m->A[(size_t)k * m->in_dim + c];
            delta[(size_t)o * m->in_dim + c] = sum * scaling;
        }
    return delta;
}

// The merged delta of the svd methods as a product P Q (P [out, k], Q [k, in]).
// Plain svd keeps the low rank: P = [w_1 s_1 B_1 | w_2 s_2 B_2 | ...], Q = [A_1; A_2; ...].
// The others prune entries, which makes it full rank: D = combine_i(w_i, s_i B_i A_i), then
// P = D, Q = I (k = in <= out) or P = I, Q = D (k = out < in).
static int merged_delta_product(const ModuleInputs *mi, const AdapterMergeOptions *o, int rank, double **P,
                                double **Q) {
    int out_dim = mi->out_dim, in_dim = mi->in_dim;
    int low_rank_k = 0;
    for (int i = 0; i < mi->n_present; i++) low_rank_k += mi->adapter[i]->rank;
    if (o->method == ADAPTER_SVD && rank <= low_rank_k) {
        *P = (double *)cpu_calloc((size_t)out_dim * low_rank_k, sizeof(double), "svd factor");
        *Q = (double *)cpu_calloc((size_t)low_rank_k * in_dim, sizeof(double), "svd factor");
        int offset = 0;
        for (int i = 0; i < mi->n_present; i++) {
            const LoraModule *m = mi->present[i];
            int r = mi->adapter[i]->rank;
            double ws = mi->weight[i] * mi->adapter[i]->scaling;
            for (int row = 0; row < out_dim; row++)
                for (int k = 0; k < r; k++)
                    (*P)[(size_t)row * low_rank_k + offset + k] = ws * m->B[(size_t)row * r + k];
            for (int k = 0; k < r; k++)
                for (int c = 0; c < in_dim; c++) (*Q)[(size_t)(offset + k) * in_dim + c] = m->A[(size_t)k * in_dim + c];
            offset += r;
        }
        return low_rank_k;
    }
    float *deltas[64], *keep[64];
    float *merged = (float *)cpu_malloc(sizeof(float) * (size_t)out_dim * in_dim, "merged delta");
    Combine how = adapter_method_combine(o->method);
    for (int i = 0; i < mi->n_present; i++) {
        deltas[i] = module_delta(mi->present[i], mi->adapter[i]->rank, mi->adapter[i]->scaling);
        keep[i] = NULL;
        if (!combine_is_random(how)) continue;
        keep[i] = (float *)cpu_malloc(sizeof(float) * (size_t)out_dim * in_dim, "keep mask");
        o->keep_mask(o->keep_context, mi->input[i], mi->name, keep[i], (int64_t)out_dim * in_dim);
    }
    combine_tasks(how, merged, deltas, keep, mi->weight, mi->n_present, (int64_t)out_dim * in_dim, o->density);
    for (int i = 0; i < mi->n_present; i++) {
        free(deltas[i]);
        free(keep[i]);
    }
    int k = in_dim <= out_dim ? in_dim : out_dim;
    double *dense = (double *)cpu_malloc(sizeof(double) * (size_t)out_dim * in_dim, "svd input");
    double *identity = (double *)cpu_calloc((size_t)k * k, sizeof(double), "svd identity");
    for (size_t j = 0; j < (size_t)out_dim * in_dim; j++) dense[j] = merged[j];
    for (int j = 0; j < k; j++) identity[(size_t)j * k + j] = 1.0;
    free(merged);
    *P = in_dim <= out_dim ? dense : identity;
    *Q = in_dim <= out_dim ? identity : dense;
    return k;
}

// svd (and ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd):
//   D = combine_i(w_i, s_i B_i A_i),   D ~ U_r S_r V_r^T,   B = U_r S_r,  A = V_r^T
// (merging/svd.h); the share of D's energy kept is sum_{j<r} S_j^2 / ||D||_F^2.
static int merge_svd(const ModuleInputs *mi, const AdapterMergeOptions *o, int rank, LoraModule *out,
                     double *energy_kept) {
    double *P, *Q;
    int k = merged_delta_product(mi, o, rank, &P, &Q);
    double *US = (double *)cpu_malloc(sizeof(double) * (size_t)mi->out_dim * rank, "svd U S");
    double *Vt = (double *)cpu_malloc(sizeof(double) * (size_t)rank * mi->in_dim, "svd V");
    int status = svd_truncated(P, Q, mi->out_dim, k, mi->in_dim, rank, US, Vt, energy_kept);
    for (size_t j = 0; j < (size_t)mi->out_dim * rank; j++) out->B[j] = (float)US[j];
    for (size_t j = 0; j < (size_t)rank * mi->in_dim; j++) out->A[j] = (float)Vt[j];
    free(P);
    free(Q);
    free(US);
    free(Vt);
    return status;
}

// ---- the merge ----------------------------------------------------------------

// Every module of any input, in first-seen order.
static int union_of_modules(const PeftAdapter *inputs, int count, const char **names) {
    int n = 0;
    for (int i = 0; i < count; i++)
        for (int j = 0; j < inputs[i].n_modules; j++) {
            const char *name = inputs[i].modules[j].name;
            int seen = 0;
            for (int k = 0; k < n && !seen; k++) seen = strcmp(names[k], name) == 0;
            if (!seen) names[n++] = name;
        }
    return n;
}

static void gather_inputs(const PeftAdapter *inputs, int count, const double *weights, const char *name,
                          ModuleInputs *mi) {
    memset(mi, 0, sizeof *mi);
    mi->name = name;
    for (int i = 0; i < count; i++) {
        const LoraModule *m = find_module(&inputs[i], name);
        if (!m) continue;
        mi->in_dim = m->in_dim;
        mi->out_dim = m->out_dim;
        mi->present[mi->n_present] = m;
        mi->adapter[mi->n_present] = &inputs[i];
        mi->input[mi->n_present] = i;
        mi->weight[mi->n_present] = weights[i];
        mi->n_present++;
    }
}

// The rank of the merged adapter: the inputs' (linear-like), their sum (cat), or --rank / the largest (svd).
static int output_rank(const PeftAdapter *inputs, int count, const AdapterMergeOptions *o) {
    int sum = 0, largest = 0;
    for (int i = 0; i < count; i++) {
        sum += inputs[i].rank;
        if (inputs[i].rank > largest) largest = inputs[i].rank;
    }
    if (o->method == ADAPTER_CAT) return sum;
    if (adapter_method_is_svd(o->method)) return o->rank > 0 ? o->rank : largest;
    return inputs[0].rank;
}

static int check_inputs(const PeftAdapter *inputs, int count, const AdapterMergeOptions *o, int rank, char *err,
                        size_t err_size) {
    if (count < 1 || count > 64) {
        snprintf(err, err_size, "adapter merge: %d inputs (1 to 64 can be merged)", count);
        return -1;
    }
    if (check_same_base(inputs, count, err, err_size) != 0) return -1;
    if (check_same_shapes(inputs, count, err, err_size) != 0) return -1;
    int equal_ranks = !adapter_method_is_svd(o->method) && o->method != ADAPTER_CAT;
    if (equal_ranks && check_equal_ranks(inputs, count, o->method, err, err_size) != 0) return -1;
    if (adapter_method_is_svd(o->method) && check_svd_rank(inputs, count, rank, err, err_size) != 0) return -1;
    return 0;
}

int adapters_merge(const PeftAdapter *inputs, int count, const AdapterMergeOptions *options, PeftAdapter *out,
                   AdapterMergeReport *report, char *err, size_t err_size) {
    AdapterMergeOptions o = *options;
    if (count == 1) o.method = ADAPTER_LINEAR;   // as peft: one adapter can only be scaled
    memset(out, 0, sizeof *out);
    int rank = output_rank(inputs, count, &o);
    if (check_inputs(inputs, count, &o, rank, err, err_size) != 0) return -1;
    int total = 0;
    for (int i = 0; i < count; i++) total += inputs[i].n_modules;
    const char **names = (const char **)cpu_calloc((size_t)total, sizeof(char *), "module names");
    int n_modules = union_of_modules(inputs, count, names);
    out->dir = copy_text("(merged)");
    out->rank = rank;
    out->alpha = (float)rank;   // scaling alpha / r = 1: B A is the merged delta itself
    out->scaling = 1.0f;
    out->base_model = copy_text(inputs[0].base_model);
    out->task_type = copy_text(inputs[0].task_type);
    int recorded = first_recorded(inputs, count);
    out->base_recorded = recorded >= 0;
    if (recorded >= 0) out->base = inputs[recorded].base;
    out->modules = (LoraModule *)cpu_calloc((size_t)n_modules, sizeof(LoraModule), "merged modules");
    double energy_min = 1.0, energy_sum = 0.0;
    int status = 0;
    for (int j = 0; j < n_modules && status == 0; j++) {
        ModuleInputs mi;
        gather_inputs(inputs, count, o.weights, names[j], &mi);
        LoraModule *m = &out->modules[out->n_modules++];
        m->name = copy_text(names[j]);
        m->in_dim = mi.in_dim;
        m->out_dim = mi.out_dim;
        m->A = (float *)cpu_calloc((size_t)rank * mi.in_dim, sizeof(float), "merged A");
        m->B = (float *)cpu_calloc((size_t)mi.out_dim * rank, sizeof(float), "merged B");
        double energy = 1.0;
        if (o.method == ADAPTER_CAT) merge_cat(&mi, rank, m);
        else if (adapter_method_is_svd(o.method)) status = merge_svd(&mi, &o, rank, m, &energy);
        else merge_factors(&mi, &o, m);
        if (status != 0)
            snprintf(err, err_size, "%s: the SVD of module '%s' did not converge in %d sweeps", inputs[0].dir,
                     names[j], SVD_MAX_SWEEPS);
        if (energy < energy_min) energy_min = energy;
        energy_sum += energy;
    }
    free(names);
    if (status != 0) { peft_adapter_free(out); return -1; }
    if (report) {
        report->rank = rank;
        report->n_modules = n_modules;
        report->energy_kept_min = energy_min;
        report->energy_kept_mean = energy_sum / n_modules;
    }
    return 0;
}
