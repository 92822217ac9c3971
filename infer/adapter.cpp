// infer/adapter.cpp: merging a LoRA adapter saved in HF peft's layout into a
// model's fp32 weights, or keeping it apart (see infer/adapter.h). Plain host
// code: one reader checks every name, shape and value and copies the tensors
// into fp32; then each adapted weight gets W += s B A, or the copies are kept.
#include "infer/adapter.h"
#include "dora.h"
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
#include <strings.h>
#include <sys/stat.h>

// GCC 12 warns inside <regex> that std::function "may be used uninitialized"
// when built with -fsanitize (the test build): a false positive, GCC bug 105562
// (clang, which builds the fuzz targets, has no such warning).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <regex>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#include <string>
#include <vector>

// A (layer, module)'s tensors in the adapter file; NULL until seen.
typedef struct {
    const TensorInfo *A;   // [r, in]
    const TensorInfo *B;   // [out, r]
    const TensorInfo *M;   // [out] DoRA's lora_magnitude_vector (use_dora only)
} LoraPair;

// ---- adapter_config.json ----------------------------------------------------

// peft's options that change what a merge must do and that we do not
// implement, with what they are: refused when set.
static const char *const UNSUPPORTED_OPTIONS[][2] = {
    {"fan_in_fan_out", "[in, out] (Conv1D) weights"},
    {"rank_pattern", "a rank per module"},
    {"alpha_pattern", "an alpha per module"},
    {"modules_to_save", "whole modules trained beside the adapter"},
    {"lora_bias", "a bias on lora_B"},
    {"layer_replication", "layers repeated"},
    {"target_parameters", "adapters on parameters rather than modules"},
    {"trainable_token_indices", "trained embedding rows"},
    {"use_qalora", "QALoRA (pooled inputs)"},
    {"alora_invocation_tokens", "activated LoRA (on only after its invocation tokens)"},
    {"use_bdlora", "block-diagonal LoRA"},
    {"arrow_config", "Arrow routing"},
    {"kasa_config", "KaSA"},
    {"velora_config", "VeLoRA"},
    {"monteclora_config", "MonteCLoRA"},
};

// init_lora_weights that change the base weights too (the adapter then needs
// that residual base): PiSSA ("pissa", "pissa_niter_N"), OLoRA, CorDA, LoftQ, LoRA-GA.
static const char *const BASE_CHANGING_INITS[] = {"pissa", "olora", "corda", "loftq", "lora_ga"};

// A member that is set: present and not null, false, "", an empty list or an empty object.
static int json_is_set(const JsonValue *v) {
    if (!v || v->type == JSON_NULL) return 0;
    if (v->type == JSON_BOOL) return v->boolean;
    if (v->type == JSON_STRING) return v->string_len > 0;
    if (v->type == JSON_ARRAY || v->type == JSON_OBJECT) return v->count > 0;
    return 1;
}

// A true/false option into *out (missing or null: false); -1 with a message for
// any other value, which peft would read by Python's truthiness (1, "yes": true).
static int read_flag(const JsonValue *config, const char *key, int *out, const char *path, char *err,
                     size_t err_size) {
    const JsonValue *v = json_get(config, key);
    *out = v && v->type == JSON_BOOL && v->boolean;
    if (!v || v->type == JSON_NULL || v->type == JSON_BOOL) return 0;
    snprintf(err, err_size, "%s: '%s' must be true or false", path, key);
    return -1;
}

// -1 with a message when the config uses an option we do not implement.
static int check_supported(const JsonValue *config, const char *path, char *err, size_t err_size) {
    for (const auto &option : UNSUPPORTED_OPTIONS) {
        if (!json_is_set(json_get(config, option[0]))) continue;
        snprintf(err, err_size, "%s: '%s' is set: %s is not supported, only plain LoRA adapters can be merged", path,
                 option[0], option[1]);
        return -1;
    }
    const char *bias = json_get_string(config, "bias", "none");
    if (strcmp(bias, "none") != 0) {
        snprintf(err, err_size, "%s: 'bias' is '%s': trained biases are not supported, only bias \"none\"", path, bias);
        return -1;
    }
    const char *init = json_get_string(config, "init_lora_weights", "");
    for (const char *changing : BASE_CHANGING_INITS) {
        if (strncmp(init, changing, strlen(changing)) != 0) continue;
        snprintf(err, err_size, "%s: 'init_lora_weights' is '%s': that initialisation changes the base weights too, "
                 "which this adapter then needs (convert it with peft's path_initial_model_for_weight_conversion)",
                 path, init);
        return -1;
    }
    return 0;
}

// A regex of ours (std::regex, ECMAScript) reads text as Python's re does for
// the patterns adapter configs use; -1 with a message when it cannot read it.
static int check_regex(const char *text, const char *key, const char *path, char *err, size_t err_size) {
    try {
        std::regex compiled(text);
    } catch (const std::regex_error &e) {
        snprintf(err, err_size, "%s: '%s' holds '%s', not a regular expression this program reads (ECMAScript "
                 "syntax): %s", path, key, text, e.what());
        return -1;
    }
    return 0;
}

// An option that is a regex (a string) or a list of names, each name then
// also a regex when names_are_regexes. -1 with a message when it is neither.
static int check_names(const JsonValue *config, const char *key, int names_are_regexes, const char *path, char *err,
                       size_t err_size) {
    const JsonValue *v = json_get(config, key);
    if (!json_is_set(v)) return 0;
    if (v->type == JSON_STRING) return check_regex(v->string, key, path, err, err_size);
    int all_strings = v->type == JSON_ARRAY;
    for (size_t i = 0; all_strings && i < v->count; i++) all_strings = v->items[i].type == JSON_STRING;
    if (!all_strings) {
        snprintf(err, err_size, "%s: '%s' must be a string (a regex) or a list of strings", path, key);
        return -1;
    }
    for (size_t i = 0; names_are_regexes && i < v->count; i++)
        if (check_regex(v->items[i].string, key, path, err, err_size) != 0) return -1;
    return 0;
}

static int is_layer_index(const JsonValue *v) {
    return v->type == JSON_NUMBER && v->number >= 0 && v->number == floor(v->number);
}

// The options peft_selects reads, checked as peft's LoraConfig checks them.
static int check_selection(const JsonValue *config, const char *path, char *err, size_t err_size) {
    const JsonValue *target = json_get(config, "target_modules"), *layers = json_get(config, "layers_to_transform");
    if (!target || target->type == JSON_NULL) {
        snprintf(err, err_size, "%s: 'target_modules' is missing (peft would take the model type's default; name "
                 "the modules)", path);
        return -1;
    }
    if (check_names(config, "target_modules", 0, path, err, err_size) != 0 ||
        check_names(config, "exclude_modules", 0, path, err, err_size) != 0 ||
        check_names(config, "layers_pattern", 1, path, err, err_size) != 0)
        return -1;
    int uses_layers = json_is_set(layers), uses_pattern = json_is_set(json_get(config, "layers_pattern"));
    if (target->type == JSON_STRING && (uses_layers || uses_pattern)) {
        snprintf(err, err_size, "%s: 'layers_to_transform' and 'layers_pattern' need a list 'target_modules' (peft "
                 "refuses them with a string)", path);
        return -1;
    }
    if (uses_pattern && !uses_layers) {
        snprintf(err, err_size, "%s: 'layers_pattern' is set without 'layers_to_transform'", path);
        return -1;
    }
    int indices = !uses_layers || is_layer_index(layers) || layers->type == JSON_ARRAY;
    for (size_t i = 0; uses_layers && layers->type == JSON_ARRAY && i < layers->count; i++)
        indices = indices && is_layer_index(&layers->items[i]);
    if (!indices) {
        snprintf(err, err_size, "%s: 'layers_to_transform' must be a layer index or a list of them", path);
        return -1;
    }
    return 0;
}

// r and lora_alpha: r a positive integer, alpha positive and finite (a merge
// with alpha <= 0 would subtract or drop the adapter); use_rslora and use_dora.
static int check_numbers(AdapterConfig *ac, const JsonValue *config, const char *path, char *err, size_t err_size) {
    const JsonValue *r = json_get(config, "r"), *alpha = json_get(config, "lora_alpha");
    if (!r || r->type != JSON_NUMBER || r->number < 1 || r->number > 65536 || r->number != floor(r->number)) {
        snprintf(err, err_size, "%s: 'r' must be a positive integer", path);
        return -1;
    }
    if (!alpha || alpha->type != JSON_NUMBER || !(alpha->number > 0) || alpha->number > FLT_MAX) {
        snprintf(err, err_size, "%s: 'lora_alpha' must be a positive number that fits a float", path);
        return -1;
    }
    ac->rank = (int)r->number;
    ac->alpha = (float)alpha->number;
    if (read_flag(config, "use_rslora", &ac->rslora, path, err, err_size) != 0) return -1;
    return read_flag(config, "use_dora", &ac->dora, path, err, err_size);
}

// ---- which modules the config adapts: peft's rule -----------------------------

// key == name, or key ends with "." + name: how peft matches a list of names.
static bool matches_name(const std::string &key, const std::string &name) {
    if (key.size() == name.size()) return key == name;
    return key.size() > name.size() && key.compare(key.size() - name.size(), name.size(), name) == 0 &&
           key[key.size() - name.size() - 1] == '.';
}

// A string option is a regex that must match all of key (re.fullmatch); a list holds names.
static bool matches_option(const JsonValue *option, const std::string &key) {
    if (option->type == JSON_STRING) return std::regex_match(key, std::regex(option->string));
    for (size_t i = 0; i < option->count; i++)
        if (matches_name(key, option->items[i].string)) return true;
    return false;
}

// The layer index peft reads from key for layers_to_transform: the first
// number between dots after one of layers_pattern ("layers" in
// "model.layers.3.mlp.up_proj"), or after the first name when there is none;
// -1 when there is no such number.
static long layer_index(const std::string &key, const JsonValue *layers_pattern) {
    std::vector<std::string> patterns;
    if (json_is_set(layers_pattern) && layers_pattern->type == JSON_STRING) patterns.push_back(layers_pattern->string);
    for (size_t i = 0; json_is_set(layers_pattern) && layers_pattern->type == JSON_ARRAY && i < layers_pattern->count; i++)
        patterns.push_back(layers_pattern->items[i].string);
    std::vector<std::string> regexes;
    if (patterns.empty()) regexes.push_back(R"(.*?\.[^.]*\.(\d+)\.)");
    for (const std::string &pattern : patterns) regexes.push_back(R"((?:^|.*?\.))" + pattern + R"(\.(\d+)\.)");
    for (const std::string &regex : regexes) {
        std::smatch found;   // re.match: anchored at the start only
        if (std::regex_search(key, found, std::regex(regex), std::regex_constants::match_continuous))
            return std::stol(found[1].str());
    }
    return -1;
}

// Whether peft adapts the module named key (its name in the model, e.g.
// "model.layers.3.self_attn.q_proj"): check_target_module_exists and
// _maybe_include_all_linear_layers of peft/tuners/tuners_utils.py (peft 0.21),
// for the options a Llama-family adapter carries (check_supported refuses the rest):
//   exclude_modules      a module it matches is never adapted
//   target_modules       a string: "all-linear" (any case: every Linear but the LM
//                        head, here all seven of a block) or a regex matching all of
//                        key; a list: names equal to key or ending it after a "."
//   layers_to_transform  with a list target_modules: only these layers (an index or
//                        a list; empty: all), read from key after layers_pattern
static bool peft_selects(const JsonValue *config, const std::string &key) {
    const JsonValue *exclude = json_get(config, "exclude_modules"), *target = json_get(config, "target_modules");
    if (json_is_set(exclude) && matches_option(exclude, key)) return false;
    if (target->type == JSON_STRING) return strcasecmp(target->string, "all-linear") == 0 || matches_option(target, key);
    if (!matches_option(target, key)) return false;
    const JsonValue *layers = json_get(config, "layers_to_transform");
    if (!json_is_set(layers)) return true;
    long index = layer_index(key, json_get(config, "layers_pattern"));
    if (layers->type == JSON_NUMBER) return index == (long)layers->number;
    for (size_t i = 0; i < layers->count; i++)
        if (index == (long)layers->items[i].number) return true;
    return false;
}

// The module of (layer, target) as the model names it, e.g. "model.layers.3.mlp.up_proj".
static std::string module_key(const Config *c, int layer, int target) {
    return std::string(peft_layers_path(c) + strlen(PEFT_WRAPPER)) + std::to_string(layer) + "." +
           peft_module_path(c, target);
}

// selected[layer * N_LINEARS + target]: whether the config adapts that module.
// -1 with a message when it adapts none of the model's (peft refuses that too).
static int select_modules(const Config *c, const JsonValue *config, const char *path, unsigned char *selected,
                          char *err, size_t err_size) {
    int n_selected = 0;
    try {
        for (int i = 0; i < c->n_layers * N_LINEARS; i++) {
            selected[i] = peft_selects(config, module_key(c, i / N_LINEARS, i % N_LINEARS));
            n_selected += selected[i];
        }
    } catch (const std::regex_error &e) {   // a pattern too complex to match
        snprintf(err, err_size, "%s: a regex of target_modules, exclude_modules or layers_pattern fails: %s", path,
                 e.what());
        return -1;
    }
    if (n_selected == 0) {
        snprintf(err, err_size, "%s: target_modules (with exclude_modules, layers_to_transform) selects no linear "
                 "layer of this %s model (its layers are %s0.%s and so on)", path, arch_name(c->arch),
                 peft_layers_path(c) + strlen(PEFT_WRAPPER), peft_module_path(c, 0));
        return -1;
    }
    return 0;
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
    if (check_supported(config, path, err, err_size) != 0 || check_numbers(ac, config, path, err, err_size) != 0)
        return -1;
    return check_selection(config, path, err, err_size);
}

static int is_regular_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int adapter_weights_path(const char *dir, char *path, size_t path_size, char *err, size_t err_size) {
    snprintf(path, path_size, "%s/adapter_model.safetensors", dir);
    if (is_regular_file(path)) return 0;
    char pickle[4096];
    snprintf(pickle, sizeof pickle, "%s/adapter_model.bin", dir);
    if (!is_regular_file(pickle)) {
        snprintf(err, err_size, "%s: no such file (an adapter directory holds adapter_config.json and "
                 "adapter_model.safetensors)", path);
        return -1;
    }
    snprintf(err, err_size, "%s: no such file; %s is there instead, PyTorch's pickle format (older peft's default), "
             "which this program does not read; convert it: python3 -c \"import torch, safetensors.torch as st; "
             "st.save_file(torch.load('%s', map_location='cpu', weights_only=True), '%s')\"", path, pickle, pickle, path);
    return -1;
}

int adapter_check_config(const char *dir, char *err, size_t err_size) {
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    JsonValue *config = json_parse_file(path, err, err_size);
    if (!config) return -1;
    AdapterConfig ac;
    int status = adapter_config_from_json(&ac, config, path, err, err_size);
    json_free(config);
    if (status != 0) return -1;
    return adapter_weights_path(dir, path, sizeof path, err, err_size);
}

// Reads and checks path, and marks in selected which of c's modules it adapts.
static int read_adapter_config(AdapterConfig *ac, const Config *c, const char *path, unsigned char *selected,
                               char *err, size_t err_size) {
    JsonValue *config = json_parse_file(path, err, err_size);
    if (!config) return -1;
    int status = adapter_config_from_json(ac, config, path, err, err_size);
    if (status == 0) status = select_modules(c, config, path, selected, err, err_size);
    json_free(config);
    return status;
}

// ---- tensor names -----------------------------------------------------------

// The tensors of a module, by the suffix after its name: which (TENSOR_A, ...) is the index.
enum { TENSOR_A, TENSOR_B, TENSOR_MAGNITUDE, N_TENSOR_KINDS };
static const char *const TENSOR_SUFFIXES[N_TENSOR_KINDS] = {".lora_A.weight", ".lora_B.weight",
                                                            ".lora_magnitude_vector"};

// Splits "<layers path>N.<module>.lora_A.weight" (or lora_B, or DoRA's
// lora_magnitude_vector) into the layer, the target and which tensor it is. -1
// with the reason in why.
static int parse_tensor_name(const Config *c, const char *name, int *layer, int *target, int *which, char *why,
                             size_t why_size) {
    size_t prefix_len = strlen(peft_layers_path(c));
    snprintf(why, why_size, "not a LoRA weight of a %s model in peft's layout (expected %sN.MODULE.lora_A.weight, "
             "lora_B.weight or DoRA's lora_magnitude_vector)", arch_name(c->arch), peft_layers_path(c));
    if (strncmp(name, peft_layers_path(c), prefix_len) != 0) return -1;
    const char *digits = name + prefix_len, *p = digits;
    while (isdigit((unsigned char)*p)) p++;
    if (p == digits || *p != '.') return -1;
    const char *module = p + 1;
    size_t rest_len = strlen(module), suffix_len = 0;
    *which = -1;
    for (int k = 0; k < N_TENSOR_KINDS; k++) {
        size_t len = strlen(TENSOR_SUFFIXES[k]);
        if (rest_len > len && strcmp(module + rest_len - len, TENSOR_SUFFIXES[k]) == 0) { *which = k; suffix_len = len; }
    }
    if (*which < 0) return -1;
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

// The first module that config_path selects but the file holds no tensors
// for, named with how many more there are; peft would leave them at their
// initial value (B = 0: no change) with a warning, we refuse: a file that
// lacks part of what its config describes is truncated or belongs elsewhere.
static int check_none_missing(const Config *c, const LoraPair *pairs, const unsigned char *selected,
                              const char *config_path, const char *path, char *err, size_t err_size) {
    int n_missing = 0, first = -1;
    for (int i = 0; i < c->n_layers * N_LINEARS; i++) {
        if (!selected[i] || pairs[i].A) continue;
        if (first < 0) first = i;
        n_missing++;
    }
    if (n_missing == 0) return 0;
    snprintf(err, err_size, "%s: no lora_A / lora_B for module '%s' (layer %d), which %s selects (%d such modules "
             "missing in all)", path, module_key(c, first / N_LINEARS, first % N_LINEARS).c_str(), first / N_LINEARS,
             config_path, n_missing);
    return -1;
}

// A DoRA magnitude vector must be a float vector [out]. -1 with the reason in why.
static int check_magnitude(const TensorInfo *t, int64_t out_dim, char *why, size_t why_size) {
    if (t->dtype != DT_F32 && t->dtype != DT_F16 && t->dtype != DT_BF16) {
        snprintf(why, why_size, "dtype %s, expected F32, F16 or BF16", dtype_name(t->dtype));
        return -1;
    }
    if (t->ndim != 1 || t->shape[0] != out_dim) {
        char shape[96];
        format_shape(t, shape, sizeof shape);
        snprintf(why, why_size, "shape %s, expected [%lld] (one magnitude per output)", shape, (long long)out_dim);
        return -1;
    }
    return 0;
}

// Files every tensor of the adapter under its (layer, target) in pairs,
// checking names (each of a module the config selects), dtypes and shapes,
// and that every selected module has its pair (and, with use_dora, its
// magnitude vector; without, none). Returns the number of pairs, or -1 with
// "PATH: tensor 'NAME': what is wrong" in err.
static int collect_pairs(Model *m, const AdapterConfig *ac, const unsigned char *selected, const char *config_path,
                         const SafetensorsFile *f, LoraPair *pairs, char *err, size_t err_size) {
    char why[512];
    for (int i = 0; i < f->tensors.count; i++) {
        const TensorInfo *t = &f->tensors.tensors[i];
        int layer, target, which, in_dim, out_dim;
        if (parse_tensor_name(&m->config, t->name, &layer, &target, &which, why, sizeof why) != 0) {
            snprintf(err, err_size, "%s: tensor '%s': %s", f->path, t->name, why);
            return -1;
        }
        if (!selected[layer * N_LINEARS + target]) {
            snprintf(err, err_size, "%s: tensor '%s': module '%s' is not one that %s selects (target_modules, "
                     "exclude_modules, layers_to_transform): peft would not load it", f->path, t->name,
                     module_key(&m->config, layer, target).c_str(), config_path);
            return -1;
        }
        target_weight(m, layer, target, &in_dim, &out_dim);
        LoraPair *pair = &pairs[layer * N_LINEARS + target];
        if (which == TENSOR_MAGNITUDE) {
            if (!ac->dora) {
                snprintf(err, err_size, "%s: tensor '%s': a DoRA magnitude vector, but %s does not set use_dora",
                         f->path, t->name, config_path);
                return -1;
            }
            if (check_magnitude(t, out_dim, why, sizeof why) != 0) {
                snprintf(err, err_size, "%s: tensor '%s': %s", f->path, t->name, why);
                return -1;
            }
            pair->M = t;
            continue;
        }
        // A is [r, in], B is [out, r]
        int is_b = which == TENSOR_B;
        int64_t rows = is_b ? out_dim : ac->rank, cols = is_b ? ac->rank : in_dim;
        if (check_tensor(t, rows, cols, why, sizeof why) != 0) {
            snprintf(err, err_size, "%s: tensor '%s': %s (r = %d)", f->path, t->name, why, ac->rank);
            return -1;
        }
        if (is_b) pair->B = t;
        else pair->A = t;
    }
    int n_pairs = 0;
    for (int i = 0; i < m->config.n_layers * N_LINEARS; i++) {
        const TensorInfo *present = pairs[i].A ? pairs[i].A : pairs[i].B ? pairs[i].B : pairs[i].M;
        if (!present) continue;
        if (!pairs[i].A || !pairs[i].B) {
            snprintf(err, err_size, "%s: tensor '%s' has no matching lora_%s", f->path, present->name,
                     pairs[i].A ? "B" : "A");
            return -1;
        }
        if (ac->dora && !pairs[i].M) {
            snprintf(err, err_size, "%s: module '%s' has no lora_magnitude_vector, which %s's use_dora needs",
                     f->path, module_key(&m->config, i / N_LINEARS, i % N_LINEARS).c_str(), config_path);
            return -1;
        }
        n_pairs++;
    }
    if (n_pairs == 0) { snprintf(err, err_size, "%s: holds no LoRA weights", f->path); return -1; }
    if (check_none_missing(&m->config, pairs, selected, config_path, f->path, err, err_size) != 0) return -1;
    return n_pairs;
}

// ---- reading an adapter into fp32 ---------------------------------------------

void adapter_weights_free(AdapterWeights *aw) {
    for (int i = 0; aw->A && i < aw->n_slots; i++) {
        free(aw->A[i]);
        free(aw->B[i]);
        if (aw->M) free(aw->M[i]);
    }
    free(aw->A);
    free(aw->B);
    free(aw->M);
    memset(aw, 0, sizeof *aw);
}

// A copy of tensor t in fp32 (count values) into *out, or the reason it
// cannot be: -1 with "PATH: ..." in err when out of memory or when t holds NaN or Inf.
static int copy_to_f32(const TensorInfo *t, int64_t count, float **out, size_t *bytes, const char *path, char *err,
                       size_t err_size) {
    *out = (float *)malloc(sizeof(float) * (size_t)count);
    if (!*out) { snprintf(err, err_size, "%s: out of memory", path); return -1; }
    *bytes += sizeof(float) * (size_t)count;
    tensor_to_f32(t->dtype, t->data, *out, count);
    if (floats_all_finite(*out, (size_t)count)) return 0;
    snprintf(err, err_size, "%s: tensor '%s' holds NaN or Inf values (corrupted?)", path, t->name);
    return -1;
}

// Copies every pair's A, B (and DoRA's m) into aw as fp32.
static int copy_pairs(const Config *c, const LoraPair *pairs, int rank, const char *path, AdapterWeights *aw,
                      char *err, size_t err_size) {
    for (int i = 0; i < c->n_layers * N_LINEARS; i++) {
        if (!pairs[i].A) continue;
        int in_dim, out_dim;
        linear_dims(c, i % N_LINEARS, &in_dim, &out_dim);
        if (copy_to_f32(pairs[i].A, (int64_t)rank * in_dim, &aw->A[i], &aw->bytes, path, err, err_size) != 0 ||
            copy_to_f32(pairs[i].B, (int64_t)out_dim * rank, &aw->B[i], &aw->bytes, path, err, err_size) != 0)
            return -1;
        if (pairs[i].M && copy_to_f32(pairs[i].M, out_dim, &aw->M[i], &aw->bytes, path, err, err_size) != 0) return -1;
    }
    return 0;
}

// The one reader: dir's adapter_config.json (into ac) and every tensor of
// adapter_model.safetensors checked (names, modules, shapes, finite) and
// copied into aw in fp32. 0, or -1 with "FILE: what is wrong" and aw empty.
static int read_adapter(const Model *m, const char *dir, AdapterConfig *ac, AdapterWeights *aw, char *err,
                        size_t err_size) {
    char config_path[4096], path[4096];
    const Config *c = &m->config;
    size_t n_slots = (size_t)c->n_layers * N_LINEARS;
    memset(aw, 0, sizeof *aw);
    std::vector<unsigned char> selected(n_slots);
    snprintf(config_path, sizeof config_path, "%s/adapter_config.json", dir);
    if (read_adapter_config(ac, c, config_path, selected.data(), err, err_size) != 0) return -1;
    SafetensorsFile f;
    if (adapter_weights_path(dir, path, sizeof path, err, err_size) != 0 ||
        safetensors_open(&f, path, err, err_size) != 0)
        return -1;
    std::vector<LoraPair> pairs(n_slots, LoraPair{NULL, NULL, NULL});
    // collect_pairs only reads the model (its shapes)
    int n_pairs = collect_pairs((Model *)m, ac, selected.data(), config_path, &f, pairs.data(), err, err_size);
    int status = n_pairs > 0 ? 0 : -1;
    if (status == 0) {
        aw->n_slots = (int)n_slots;
        aw->A = (float **)calloc(n_slots, sizeof(float *));
        aw->B = (float **)calloc(n_slots, sizeof(float *));
        aw->M = ac->dora ? (float **)calloc(n_slots, sizeof(float *)) : NULL;
        if (!aw->A || !aw->B || (ac->dora && !aw->M)) { snprintf(err, err_size, "%s: out of memory", path); status = -1; }
    }
    if (status == 0) status = copy_pairs(c, pairs.data(), ac->rank, path, aw, err, err_size);
    safetensors_close(&f);
    if (status != 0) { adapter_weights_free(aw); return -1; }
    aw->rank = ac->rank;
    aw->scaling = lora_scale(ac->alpha, ac->rank, ac->rslora);
    aw->n_modules = n_pairs;
    return 0;
}

// ---- the merge --------------------------------------------------------------

// Adds s B A to W [out_dim, in_dim], or with DoRA makes W = m (W + s B A) /
// ||W + s B A|| (dora_merge_weight).
static void merge_module(float *W, const float *A, const float *B, const float *M, int in_dim, int out_dim, int rank,
                         float scaling) {
    if (M) {
        dora_merge_weight(W, A, B, M, scaling, out_dim, in_dim, rank);
        return;
    }
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
    AdapterConfig ac;
    AdapterWeights aw;
    if (read_adapter(m, dir, &ac, &aw, err, err_size) != 0) return -1;
    for (int i = 0; i < aw.n_slots; i++) {
        if (!aw.A[i]) continue;
        int in_dim, out_dim;
        float *W = target_weight(m, i / N_LINEARS, i % N_LINEARS, &in_dim, &out_dim);
        merge_module(W, aw.A[i], aw.B[i], aw.M ? aw.M[i] : NULL, in_dim, out_dim, aw.rank, aw.scaling);
    }
    if (info) {
        info->n_merged = aw.n_modules;
        info->rank = aw.rank;
        info->scaling = aw.scaling;
    }
    adapter_weights_free(&aw);
    return 0;
}

// ---- an adapter kept apart (serving) ------------------------------------------

int adapter_load_peft(const Model *m, const char *dir, AdapterWeights *aw, char *err, size_t err_size) {
    AdapterConfig ac;
    if (read_adapter(m, dir, &ac, aw, err, err_size) != 0) return -1;
    if (!ac.dora) return 0;
    adapter_weights_free(aw);
    snprintf(err, err_size, "%s/adapter_config.json: use_dora is set: a DoRA adapter's magnitudes are applied merged "
             "into the base (./generate --adapter, ./evaluate --adapter, ./train --merge), not kept apart as here", dir);
    return -1;
}

// ---- the recorded base ------------------------------------------------------------

// The record of ./train (LORA_BASE_KEY) from config; -1 with a message when malformed.
static int read_base_record(const JsonValue *record, const char *path, LoraBase *base, char *err, size_t err_size) {
    const JsonValue *quant = json_get(record, "quant"), *double_quant = json_get(record, "double_quant");
    const char *hash = json_get_string(record, "model_weights_hash", "");
    int hash_ok = strlen(hash) == 16;
    for (int i = 0; hash_ok && i < 16; i++) hash_ok = isxdigit((unsigned char)hash[i]);
    int quant_ok = quant && quant->type == JSON_STRING && (!strcmp(quant->string, "nf4") || !strcmp(quant->string, "none"));
    if (!quant_ok || !double_quant || double_quant->type != JSON_BOOL || !hash_ok) {
        snprintf(err, err_size, "%s: '%s' must be {\"quant\": \"nf4\" or \"none\", \"double_quant\": true or false, "
                 "\"model_weights_hash\": 16 hex digits}", path, LORA_BASE_KEY);
        return -1;
    }
    base->quant_nf4 = strcmp(quant->string, "nf4") == 0;
    base->double_quant = double_quant->boolean;
    base->model_hash = strtoull(hash, NULL, 16);
    return 0;
}

// "--quant nf4 --double-quant 1" or "--quant none": a base as ./train's options name it.
static const char *base_options(int quant_nf4, int double_quant) {
    if (!quant_nf4) return "--quant none";
    return double_quant ? "--quant nf4 --double-quant 1" : "--quant nf4 --double-quant 0";
}

// The warning when the base an adapter records (base, in config at path) is not
// the chosen one, or its weights hash differs from model_hash (model_name's).
static void base_warning(const char *path, const JsonValue *config, const LoraBase &base,
                         const AdapterBaseChoice *choice, uint64_t model_hash, const char *model_name, char *warning,
                         size_t warning_size) {
    int same_base = choice->quant_nf4 == base.quant_nf4 && (!base.quant_nf4 || choice->double_quant == base.double_quant);
    size_t n = 0;
    if (!same_base)
        n += snprintf(warning, warning_size, "%s records that the adapter was trained on the base of %s, but it "
                      "is merged onto %s: not the model that was trained", path,
                      base_options(base.quant_nf4, base.double_quant),
                      base_options(choice->quant_nf4, choice->double_quant));
    if (model_hash != base.model_hash && n < warning_size)
        snprintf(warning + n, warning_size - n, "%s%s records the base model's weights hash %016llx (%s), but "
                 "%s's weights hash to %016llx: the adapter was trained on another model", n ? "; " : "", path,
                 (unsigned long long)base.model_hash, json_get_string(config, "base_model_name_or_path", "?"),
                 model_name, (unsigned long long)model_hash);
}

// dir's adapter_config.json and, when it has one, its record of the base (1; 0
// without). -1 with err when unreadable or the record is malformed; *config
// is the caller's to free when not -1.
static int read_base_of(const char *dir, char *path, size_t path_size, JsonValue **config, LoraBase *base, char *err,
                        size_t err_size) {
    snprintf(path, path_size, "%s/adapter_config.json", dir);
    *config = json_parse_file(path, err, err_size);
    if (!*config) return -1;
    const JsonValue *record = json_get(*config, LORA_BASE_KEY);
    int status = !record ? 0 : read_base_record(record, path, base, err, err_size) == 0 ? 1 : -1;
    if (status < 0) json_free(*config);
    return status;
}

int adapter_read_base(const char *dir, LoraBase *base, char *err, size_t err_size) {
    char path[4096];
    JsonValue *config;
    int status = read_base_of(dir, path, sizeof path, &config, base, err, err_size);
    if (status >= 0) json_free(config);
    return status;
}

int adapter_choose_base(const char *dir, const Model *m, AdapterBaseChoice *choice, char *warning,
                        size_t warning_size, char *err, size_t err_size) {
    char path[4096];
    JsonValue *config;
    LoraBase base;
    warning[0] = '\0';
    int status = read_base_of(dir, path, sizeof path, &config, &base, err, err_size);
    if (status < 0) return -1;
    if (status == 1) {
        if (!choice->quant_given) choice->quant_nf4 = base.quant_nf4;
        if (!choice->double_quant_given && base.quant_nf4) choice->double_quant = base.double_quant;
        base_warning(path, config, base, choice, model_weights_hash(m), m->path ? m->path : "the model", warning,
                     warning_size);
    }
    json_free(config);
    return status;
}

int adapter_check_base(const char *dir, const AdapterBaseChoice *served, uint64_t model_hash, const char *model_name,
                       char *warning, size_t warning_size, char *err, size_t err_size) {
    char path[4096];
    JsonValue *config;
    LoraBase base;
    warning[0] = '\0';
    int status = read_base_of(dir, path, sizeof path, &config, &base, err, err_size);
    if (status < 0) return -1;
    if (status == 1) base_warning(path, config, base, served, model_hash, model_name, warning, warning_size);
    json_free(config);
    return status;
}

const char *adapter_describe_base(const AdapterBaseChoice *choice, int recorded, char *out, size_t out_size) {
    const char *source = choice->quant_given ? "--quant" : recorded ? "the adapter's record" : "the default";
    if (choice->quant_nf4)
        snprintf(out, out_size, "linear weights round-tripped through NF4%s (as ./train %s; from %s)",
                 choice->double_quant ? " with double quant" : "", base_options(1, choice->double_quant), source);
    else
        snprintf(out, out_size, "weights as loaded (as ./train --quant none; from %s)", source);
    return out;
}

// ---- training on from an adapter ----------------------------------------------------

int adapter_training_options(const char *dir, const Config *c, AdapterConfig *ac, int enabled[N_LINEARS], char *err,
                             size_t err_size) {
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    std::vector<unsigned char> selected((size_t)c->n_layers * N_LINEARS);
    if (read_adapter_config(ac, c, path, selected.data(), err, err_size) != 0) return -1;
    for (int t = 0; t < N_LINEARS; t++) {
        int layers = 0, first_missing = -1;
        for (int l = 0; l < c->n_layers; l++) {
            if (selected[(size_t)l * N_LINEARS + t]) layers++;
            else if (first_missing < 0) first_missing = l;
        }
        if (layers != 0 && layers != c->n_layers) {
            snprintf(err, err_size, "%s: adapts %s in %d of the %d layers (not in layer %d): ./train adapts a "
                     "projection in every layer or in none", path, peft_module_path(c, t), layers, c->n_layers,
                     first_missing);
            return -1;
        }
        enabled[t] = layers > 0;
    }
    return 0;
}

int adapter_load_into_set(const char *dir, Model *m, LoraSet *set, char *err, size_t err_size) {
    const Config *c = &m->config;
    AdapterConfig ac;
    int enabled[N_LINEARS];
    if (adapter_training_options(dir, c, &ac, enabled, err, err_size) != 0) return -1;
    int same_targets = 1;
    for (int t = 0; t < N_LINEARS; t++) same_targets = same_targets && enabled[t] == set->enabled[t];
    if (ac.rank != set->rank || !same_targets || set->n_layers != c->n_layers || ac.dora != set->dora) {
        snprintf(err, err_size, "%s/adapter_config.json: the adapter's rank, targets or DoRA setting differ from the "
                 "ones being trained", dir);
        return -1;
    }
    // every tensor read and checked into fp32 first, so that a bad one leaves set untouched
    AdapterWeights aw;
    if (read_adapter(m, dir, &ac, &aw, err, err_size) != 0) return -1;
    for (int i = 0; i < aw.n_slots; i++) {
        if (!aw.A[i]) continue;
        LoraAdapter *a = &set->adapters[i];
        int in_dim, out_dim;
        linear_dims(c, i % N_LINEARS, &in_dim, &out_dim);
        memcpy(a->A, aw.A[i], sizeof(float) * (size_t)aw.rank * in_dim);
        memcpy(a->B, aw.B[i], sizeof(float) * (size_t)out_dim * aw.rank);
        if (a->m) memcpy(a->m, aw.M[i], sizeof(float) * (size_t)out_dim);
    }
    adapter_weights_free(&aw);
    return 0;
}
