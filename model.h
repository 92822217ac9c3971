// model.h: the one description of a Llama-family model: its configuration,
// the layout of its weights, and loading from a GGUF file or an HF directory.
//
// Every architecture we load (Llama / SmolLM / TinyLlama / Llama 3.x, Qwen2,
// EXAONE 3.x) is the same network:
//   x = embed[token]
//   per layer:  x += Wo attention(rope(Wq rmsnorm(x)), rope(Wk ...), Wv ...)
//               x += Wdown (silu(Wgate rmsnorm(x)) * Wup rmsnorm(x))
//   logits = lm_head rmsnorm(x)
// They differ only in tensor names, config keys, and Qwen2's q/k/v biases.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "formats/tensor.h"
#include "tokenizer.h"

// The model the programs and tests load without --model (make fetch downloads it).
#define DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { ARCH_LLAMA, ARCH_QWEN2, ARCH_EXAONE } Arch;

// The largest head_dim the loader accepts (RoPE frequency tables are sized by it).
enum { MAX_HEAD_DIM = 1024 };

typedef struct {
    Arch arch;
    int dim;              // hidden_size: width of the residual stream
    int hidden_dim;       // intermediate_size: width of the MLP
    int n_layers;
    int n_heads;          // query heads
    int n_kv_heads;       // key/value heads (grouped-query attention when < n_heads)
    int head_dim;
    int vocab_size;
    int max_seq_len;      // context length the model was trained for
    float norm_eps;       // RMSNorm epsilon
    float rope_theta;
    // Llama-3 RoPE scaling; rope_factor == 0 means none.
    float rope_factor;
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int rope_original_max_pos;
    int attention_bias;   // q, k, v projections have biases (Qwen2)
    int tied_embeddings;  // lm_head shares the embedding matrix
} Config;

// One transformer block. Matrices are row-major [out, in], as PyTorch's Linear.
typedef struct {
    float *attn_norm;        // [dim]
    float *wq;               // [n_heads * head_dim, dim]
    float *wk;               // [n_kv_heads * head_dim, dim]
    float *wv;               // [n_kv_heads * head_dim, dim]
    float *bq, *bk, *bv;     // biases (NULL unless attention_bias)
    float *wo;               // [dim, n_heads * head_dim]
    float *mlp_norm;         // [dim]
    float *w_gate;           // [hidden_dim, dim]
    float *w_up;             // [hidden_dim, dim]
    float *w_down;           // [dim, hidden_dim]
} LayerWeights;

// The seven linear layers of a block (the ones NF4 quantizes and LoRA adapts).
typedef enum { LINEAR_Q, LINEAR_K, LINEAR_V, LINEAR_O, LINEAR_GATE, LINEAR_UP, LINEAR_DOWN, N_LINEARS } Linear;
extern const char *const LINEAR_NAMES[N_LINEARS];   // "q", "k", "v", "o", "gate", "up", "down"
// In and out width of a linear layer in this model: its weight is [out_dim, in_dim].
void linear_dims(const Config *c, int linear, int *in_dim, int *out_dim);
// The weight of a linear layer in a block, [out_dim, in_dim].
float *linear_weight(const LayerWeights *l, int linear);
// The linears that read the same input form an input group: q, k, v read the
// attention norm's output, o the attention's, gate and up the MLP norm's, down
// SwiGLU's. A group's linears are consecutive: group g holds
// LINEAR_GROUP_FIRST[g] .. LINEAR_GROUP_FIRST[g + 1] - 1.
enum { LINEAR_GROUP_QKV, LINEAR_GROUP_O, LINEAR_GROUP_GATE_UP, LINEAR_GROUP_DOWN, N_LINEAR_GROUPS };
#define LINEAR_GROUP_MAX 3   // linears in the largest group (q, k, v)
extern const int LINEAR_GROUP_FIRST[N_LINEAR_GROUPS + 1];
// The input group of a linear.
int linear_group_of(int linear);

typedef struct {
    Config config;
    float *embed;            // [vocab_size, dim]
    LayerWeights *layers;    // [n_layers]
    float *final_norm;       // [dim]
    float *lm_head;          // [vocab_size, dim]; equals embed when tied
    Tokenizer *tokenizer;
    char *path;
    float *storage;          // one allocation holding every fp32 weight above
    size_t storage_floats;
} Model;

// Loads path: a .gguf file, or a directory with config.json, model.safetensors
// (or model.safetensors.index.json + shards) and tokenizer.json. Weights are
// converted to fp32. On any problem returns -1 with a message naming the file,
// the tensor and what is wrong; the model is then left empty.
int model_load(Model *m, const char *path, char *err, size_t err_size);
void model_free(Model *m);
// The base's identity: FNV-1a (formats/hash.h) of every fp32 weight as loaded,
// the bytes of storage. A run's checkpoints and its adapter record it.
uint64_t model_weights_hash(const Model *m);
// The base an adapter was trained on, as its adapter_config.json records it (lora.h's LORA_BASE_KEY).
typedef struct {
    int quant_nf4;          // 1: the linear weights were dequant(NF4(W)) (QLoRA); 0: W as loaded
    int double_quant;       // with quant_nf4: NF4's block scales quantized again
    uint64_t model_hash;    // model_weights_hash of the base as loaded
} LoraBase;

// Reads an HF config.json (path: the file itself) into *config. On any
// problem returns -1 with a message naming the file (and the key) and what is
// wrong; *config is then zeroed.
//
// The architecture comes from "architectures"[0] when present, else
// "model_type": LlamaForCausalLM/llama, Qwen2ForCausalLM/qwen2,
// ExaoneForCausalLM/exaone. Required: hidden_size, intermediate_size,
// num_hidden_layers (or num_layers), num_attention_heads, vocab_size.
// Optional, with transformers' defaults: num_key_value_heads (= heads),
// head_dim (= hidden / heads), max_position_embeddings (llama 2048, qwen2
// 32768, exaone 4096), rms_norm_eps or layer_norm_epsilon (llama/qwen2 1e-6,
// exaone 1e-5), rope_theta (10000; exaone 500000; also read from
// rope_parameters), tie_word_embeddings (false for all three),
// attention_bias (false; Qwen2 always has q/k/v biases). RoPE scaling from
// rope_scaling (or rope_parameters): null or type "default" means none,
// "llama3" is read, any other type is refused. Refused too: a bias on o_proj
// or the MLP (attention_bias / mlp_bias on Llama or EXAONE) and any
// activation other than silu.
int model_read_hf_config(const char *path, Config *config, char *err, size_t err_size);

// Fills a Model from named tensors (the part shared by the GGUF and HF paths).
// names: GGUF ("blk.N.attn_q.weight") or HF (Llama/Qwen2 or EXAONE naming),
// chosen by is_gguf and config->arch. Validates each expected tensor's
// presence, shape and type (norms and biases F32/F16/BF16, matrices also the
// GGML block types) and that its values decode finite; and that the list
// holds no tensor the model leaves unused (a layer past the config's count,
// an unknown name), except the few an HF checkpoint may carry harmlessly
// (model.c's HF_IGNORED_TENSORS). Each error names the tensor.
int model_from_tensors(Model *m, const Config *config, const TensorList *tensors, int is_gguf,
                       const char *path, char *err, size_t err_size);

// A model of the given shape with seeded random weights and no tokenizer, for
// tests and benchmarks: matrices ~ U(-1/sqrt(in), 1/sqrt(in)), norms near 1.
int model_init_random(Model *m, const Config *config, uint64_t seed, char *err, size_t err_size);

// One weight of a model under its name in GGUF files ("blk.3.attn_q.weight"):
// [rows, cols] row-major as the Model holds it (cols 0 for a vector), and
// which linear layer it is (a Linear, or -1 for the embedding, norms, biases
// and LM head).
typedef struct {
    char name[64];
    const float *values;
    int64_t rows, cols;
    int linear;
} ModelTensor;
// The most tensors a model of this config has (the size for model_gguf_tensors' out).
int model_max_tensors(const Config *c);
// Fills out with every weight of m (the LM head only when untied), in the
// loader's order; returns the count.
int model_gguf_tensors(const Model *m, ModelTensor *out);

// llama.cpp's GGUF files hold Llama's Wq and Wk rows permuted for its RoPE:
// file row (h, j, i) is HF row (h, i, j), i in {0, 1}, j < head_dim / 2. The
// loader undoes it; this does it, copying w [n_heads * head_dim, cols] (HF
// order) into out (GGUF order).
void rope_rows_to_gguf(const float *w, float *out, int n_heads, int head_dim, int cols);

const char *arch_name(Arch arch);
size_t model_num_params(const Config *c);
void model_print_summary(const Model *m, FILE *out);

#ifdef __cplusplus
}
#endif
