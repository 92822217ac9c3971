// formats/hf_checkpoint.h: a Hugging Face model directory: config.json read into a
// Config, and the weights of model.safetensors (or of every shard listed in
// model.safetensors.index.json) gathered into one list of named tensors.
#pragma once
#include <stddef.h>
#include "model.h"
#include "formats/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char *dir;
    SafetensorsFile *shards;   // one per distinct file (a single one when unsharded)
    int n_shards;
    // Every tensor of every shard. The entries are copies whose name and data
    // point into the shards: valid until hf_close.
    TensorList tensors;
} HFCheckpoint;

// Reads DIR/config.json into *config and opens the weights. On any problem
// returns -1 with a message naming the file (and the key or tensor) and what
// is wrong; nothing stays allocated. tokenizer.json is not read here.
//
// config.json: the architecture comes from "architectures"[0] when present,
// else "model_type": LlamaForCausalLM/llama, Qwen2ForCausalLM/qwen2,
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
int hf_open(HFCheckpoint *ck, const char *dir, Config *config, char *err, size_t err_size);
void hf_close(HFCheckpoint *ck);

// Only the config.json part of hf_open: path is the config.json file itself.
int hf_read_config(const char *path, Config *config, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
