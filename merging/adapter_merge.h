// merging/adapter_merge.h: LoRA adapters of the same base merged into one
// adapter, with the methods, names and semantics of peft's
// LoraModel.add_weighted_adapter (tuners/lora/model.py). Each input i has its
// weight w_i and scaling s_i (alpha / r); the output adapter has
// lora_alpha = r, so its scaling is 1 and its B A is the merged delta:
//   linear, ties, dare_linear, dare_ties, magnitude_prune
//             the A's and the B's merged separately (equal ranks needed)
//   cat       ranks concatenated: B A = sum_i w_i s_i B_i A_i exactly
//   svd, ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd
//             the deltas s_i B_i A_i merged, re-factored to a rank by a truncated SVD
// A module adapted by only some inputs gets only theirs (as peft).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "merging/task_merge.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

// One adapted module: the tensors "<name>.lora_A.weight" and "<name>.lora_B.weight".
typedef struct {
    char *name;        // e.g. base_model.model.model.layers.0.self_attn.q_proj
    int in_dim, out_dim;
    float *A;          // [rank, in_dim]
    float *B;          // [out_dim, rank]
} LoraModule;

// An adapter directory in peft's layout (adapter_config.json + adapter_model.safetensors).
typedef struct {
    char *dir;
    int rank;
    float alpha;
    int rslora;
    float scaling;       // s = alpha / r (alpha / sqrt(r) with rsLoRA)
    char *base_model;    // base_model_name_or_path ("" when missing)
    char *task_type;     // task_type ("CAUSAL_LM" when missing)
    int base_recorded;   // 1: the config records the base it was trained on (./train's record), in base
    LoraBase base;
    LoraModule *modules; // in the file's order
    int n_modules;
} PeftAdapter;

// Reads dir (ours or peft's; A and B F32, F16 or BF16). On error returns -1
// with "FILE: what is wrong" in err and a freed adapter.
int peft_adapter_read(PeftAdapter *a, const char *dir, char *err, size_t err_size);
void peft_adapter_free(PeftAdapter *a);
// Writes a as dir/adapter_model.safetensors (F32) and dir/adapter_config.json
// (dir created when missing; target_modules: the modules' whole names in the
// model, "model.layers.0.self_attn.q_proj", which select exactly those).
int peft_adapter_write(const PeftAdapter *a, const char *dir, char *err, size_t err_size);

typedef enum {
    ADAPTER_LINEAR, ADAPTER_CAT, ADAPTER_SVD, ADAPTER_TIES, ADAPTER_TIES_SVD, ADAPTER_DARE_LINEAR,
    ADAPTER_DARE_TIES, ADAPTER_DARE_LINEAR_SVD, ADAPTER_DARE_TIES_SVD, ADAPTER_MAGNITUDE_PRUNE,
    ADAPTER_MAGNITUDE_PRUNE_SVD, N_ADAPTER_METHODS
} AdapterMethod;
// peft's combination_type names, in the enum's order.
extern const char *const ADAPTER_METHOD_NAMES[N_ADAPTER_METHODS];
// The method named name, or -1.
int adapter_method_from_name(const char *name);
// How a method merges its task tensors (the A's and B's, or the deltas).
Combine adapter_method_combine(AdapterMethod method);
// 1 for the methods that re-factor by SVD (and so take a rank).
int adapter_method_is_svd(AdapterMethod method);

// Fills keep[0 .. n) with the DARE keep mask of input `input`'s tensor
// `tensor` (a module's "….lora_A.weight" / "….lora_B.weight", or the module's
// name for the delta of an *_svd method).
typedef void (*KeepMaskFn)(void *context, int input, const char *tensor, float *keep, int64_t n);

typedef struct {
    AdapterMethod method;
    const double *weights;   // w_i, one per input
    double density;          // the share kept by ties, dare_*, magnitude_prune (0 < density <= 1)
    int rank;                // the *_svd methods' rank; 0: the largest input rank (as peft)
    KeepMaskFn keep_mask;    // the dare_* methods' masks
    void *keep_context;
} AdapterMergeOptions;

// What a merge did: the rank written and, for the *_svd methods, the share of
// each delta's energy (squared Frobenius norm) that the rank kept.
typedef struct {
    int rank;
    int n_modules;
    double energy_kept_min, energy_kept_mean;   // 1 for the methods without SVD
} AdapterMergeReport;

// Merges count adapters into out (freed with peft_adapter_free). Checks
// first: the same base (base_model_name_or_path's last path component, where
// both name one; where both record the base they were trained on, the same
// model weights hash, quant and double quant: out records it too), the same shapes for the same module, equal ranks for the
// methods that need them, an SVD rank within every module's shape. With one
// input, every method is linear (as peft). report may be NULL. Returns 0, or
// -1 with "DIR: what is wrong" in err.
int adapters_merge(const PeftAdapter *inputs, int count, const AdapterMergeOptions *options, PeftAdapter *out,
                   AdapterMergeReport *report, char *err, size_t err_size);

// The seed of the keep mask of (input, tensor) from --seed:
// fnv1a(tensor name) mixed with the seed and the input's index.
uint64_t dare_mask_seed(uint64_t seed, int input, const char *tensor);

#ifdef __cplusplus
}
#endif
