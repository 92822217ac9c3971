// infer/adapter.h: merging a trained LoRA adapter, saved in HF peft's layout
// (adapter_config.json + adapter_model.safetensors), into a model's weights:
//   W' = W + s B A,   A [r, in], B [out, r],   s = alpha / r (alpha / sqrt(r) with rsLoRA)
// or, for a DoRA adapter (use_dora, a lora_magnitude_vector m [out] per module; dora.h):
//   W' = m (W + s B A) / ||W + s B A||   (the norm per output row)
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
    int dora;       // use_dora: each module also has a lora_magnitude_vector (dora.h)
} AdapterConfig;

// Reads them from a parsed adapter_config.json (path: for messages), refusing
// what a merge cannot honour: a peft_type other than LORA, the options this
// program does not implement (fan_in_fan_out, rank_pattern, ...), an r
// that is not a positive integer, lora_alpha <= 0 or not a float, and a module
// selection peft would refuse. -1 with "PATH: what is wrong".
int adapter_config_from_json(AdapterConfig *ac, const JsonValue *config, const char *path, char *err,
                             size_t err_size);

// Reads and checks dir/adapter_config.json alone (adapter_config_from_json), and
// that dir has its weights file (adapter_weights_path), so a program refuses a
// broken adapter in a moment, before it loads the model. -1 with "PATH: what is wrong".
int adapter_check_config(const char *dir, char *err, size_t err_size);

// dir/adapter_model.safetensors, the adapter's weights, into path: 0 when it is
// a file. -1 with err when it is not, saying so; where dir holds
// adapter_model.bin instead (older peft's default: a PyTorch pickle, which this
// program does not read), naming it and the command that converts it.
int adapter_weights_path(const char *dir, char *path, size_t path_size, char *err, size_t err_size);

// What a merge did, for the caller to report.
typedef struct {
    int n_merged;    // (layer, module) pairs whose weight got its B A product
    int rank;        // r
    float scaling;   // s
} AdapterInfo;

// Reads dir/adapter_config.json and dir/adapter_model.safetensors and adds
// s B A to the fp32 weight of every adapted module (DoRA: W' as above, with
// the norm of W as it is in m, so merge onto the base the adapter trained on). Tensor names must be
// peft's: base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight
// (Llama, Qwen2) or base_model.model.transformer.h.N.attn.attention.q_proj...
// (EXAONE); A and B may be F32, F16 or BF16. Everything is checked before any
// weight changes: on error returns -1 with "FILE: tensor 'NAME': what is
// wrong" in err and the model untouched. info may be NULL.
int adapter_merge_peft(Model *m, const char *dir, AdapterInfo *info, char *err, size_t err_size);

// An adapter kept apart from the base (multi-LoRA serving, ./serve): A and B
// of every adapted module in fp32, applied at inference as
//   y = x W^T + s (x A^T) B^T
// (infer/forward.h's forward_cpu_adapter) instead of merged into W.
typedef struct {
    int rank;         // r
    float scaling;    // s
    int n_modules;    // (layer, module) pairs that have A and B
    int n_slots;      // n_layers * N_LINEARS: the length of A and B
    float **A;        // [n_slots], by layer * N_LINEARS + module: A [r, in], NULL when not adapted
    float **B;        // [n_slots]: B [out, r], NULL when not adapted
    float **M;        // [n_slots]: DoRA's magnitudes m [out]; NULL (the whole array) without use_dora
    size_t bytes;     // the memory A, B (and M) take
} AdapterWeights;

// Reads dir's adapter with the same checks and messages as
// adapter_merge_peft (one reader serves both and adapter_load_into_set) but
// keeps A and B apart, converted to fp32; m is only read.
// A DoRA adapter is refused (its magnitudes apply merged only: ./generate,
// ./evaluate --adapter). 0, or -1 with "FILE: what is wrong" in err and aw empty.
int adapter_load_peft(const Model *m, const char *dir, AdapterWeights *aw, char *err, size_t err_size);
void adapter_weights_free(AdapterWeights *aw);

// The base an adapter is merged onto, and which of it the user chose.
typedef struct {
    int quant_nf4;            // 1: the linear weights round-tripped through NF4 first, W = dequant(NF4(W))
    int double_quant;         // with quant_nf4: NF4's block scales quantized again (./train's --double-quant)
    int quant_given;          // the user passed --quant
    int double_quant_given;   // the user passed --double-quant
} AdapterBaseChoice;

// The base dir's adapter was trained on, when its adapter_config.json records
// it (LORA_BASE_KEY in lora.h; ./train writes it): the options the user did
// not give take the recorded values (double_quant only from an NF4 record). A given option that differs from the
// record, or a model m (as loaded, before any NF4 round trip) whose
// model_weights_hash differs from the recorded one, is described in warning,
// naming both; warning is "" when all agree. An adapter without the record
// (peft's own) leaves choice as it was. Returns 1 with a record, 0 without,
// -1 with "PATH: what is wrong" in err when the config cannot be read or its
// record is malformed.
int adapter_choose_base(const char *dir, const Model *m, AdapterBaseChoice *choice, char *warning,
                        size_t warning_size, char *err, size_t err_size);
// The base dir's adapter_config.json records into *base: 1; 0 when it records
// none (peft's own adapters); -1 with "PATH: what is wrong" when the config cannot
// be read or its record is malformed.
int adapter_read_base(const char *dir, LoraBase *base, char *err, size_t err_size);
// The same comparison for a base already chosen (served), whose weights hashed
// to model_hash as loaded (model_name's): ./serve's adapters loaded at run time,
// when the base can no longer change. 1 with a record, 0 without, -1 with err.
int adapter_check_base(const char *dir, const AdapterBaseChoice *served, uint64_t model_hash, const char *model_name,
                       char *warning, size_t warning_size, char *err, size_t err_size);
// The chosen base in words, and where the choice came from (recorded: what
// adapter_choose_base returned), e.g. "linear weights round-tripped through
// NF4 with double quant (as ./train --quant nf4 --double-quant 1; from the
// adapter's record)". Returns out.
const char *adapter_describe_base(const AdapterBaseChoice *choice, int recorded, char *out, size_t out_size);

// ---- training on from an adapter (./train --init-adapter) ----------------------

struct LoraSet;   // lora.h (C++: its CPU functions are templates)

// What ./train takes from an adapter it trains on from: r, lora_alpha,
// use_rslora and use_dora (ac), and the projections it adapts (enabled[t]), which must be
// the same in every layer (./train adapts a projection in all layers or none).
// -1 with "PATH: what is wrong" when it cannot be read, is refused as by a
// merge, or adapts a projection in some layers only.
int adapter_training_options(const char *dir, const Config *c, AdapterConfig *ac, int enabled[N_LINEARS], char *err,
                             size_t err_size);

// Copies dir's A and B (and DoRA's m) into set, whose rank, targets, DoRA
// setting and shapes must be the adapter's (set up from adapter_training_options). Everything is checked
// before set changes: -1 with "FILE: tensor 'NAME': what is wrong" and set
// untouched.
int adapter_load_into_set(const char *dir, Model *m, struct LoraSet *set, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
