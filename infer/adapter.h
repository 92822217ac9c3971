// infer/adapter.h: merging a trained LoRA adapter, saved in HF peft's layout
// (adapter_config.json + adapter_model.safetensors), into a model's weights:
//   W' = W + s B A,   A [r, in], B [out, r],   s = alpha / r (alpha / sqrt(r) with rsLoRA)
// The merged model then runs at the base model's speed with no adapter code.
#pragma once
#include <stddef.h>
#include "formats/json.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

// The numbers of adapter_config.json that a merge needs.
typedef struct {
    int rank;       // r
    float alpha;    // lora_alpha
    int rslora;     // use_rslora
} AdapterConfig;

// Reads them from a parsed adapter_config.json (path: for messages), refusing
// what a merge cannot honour: a peft_type other than LORA, DoRA,
// fan_in_fan_out, per-module rank_pattern / alpha_pattern, an r that is not a
// positive integer, an alpha that is not a float. -1 with "PATH: what is wrong".
int adapter_config_from_json(AdapterConfig *ac, const JsonValue *config, const char *path, char *err,
                             size_t err_size);

// What a merge did, for the caller to report.
typedef struct {
    int n_merged;    // (layer, module) pairs whose weight got its B A product
    int rank;        // r
    float scaling;   // s
} AdapterInfo;

// Reads dir/adapter_config.json and dir/adapter_model.safetensors and adds
// s B A to the fp32 weight of every adapted module. Tensor names must be
// peft's: base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight
// (Llama, Qwen2) or base_model.model.transformer.h.N.attn.attention.q_proj...
// (EXAONE); A and B may be F32, F16 or BF16. Everything is checked before any
// weight changes: on error returns -1 with "FILE: tensor 'NAME': what is
// wrong" in err and the model untouched. info may be NULL.
int adapter_merge_peft(Model *m, const char *dir, AdapterInfo *info, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
