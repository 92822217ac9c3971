// infer/merge.h: ./train --merge: the trained adapter folded into the base weights
// and written as a Hugging Face model directory that transformers and our own
// model_load read: model.safetensors (bf16), config.json, tokenizer.json and
// tokenizer_config.json. For each adapted linear layer
//   W_merged = bf16( dequant(NF4(W)) + s B A )
// i.e. onto the dequantized base the adapter was trained on, not quantized
// again (with --quant none: onto the fp32 base). Everything else (embeddings,
// norms, biases, an untied LM head) is W rounded to bf16.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "infer/adapter.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

// Turns m into the merged model, in place: with quantize_nf4 the seven linear
// weights of every block become dequant(NF4(W)) first (double_quant as
// training), then the peft adapter in adapter_dir is added
// (adapter_merge_peft, which fills info; info may be NULL). -1 with a message
// on error (m may then be half changed). merge_export is this, then
// model_save_hf; ./train --merge-gguf writes the same model with
// gguf_write_model (infer/gguf_export.h).
int merge_into_base(Model *m, const char *adapter_dir, int quantize_nf4, int double_quant, AdapterInfo *info,
                    char *err, size_t err_size);

// Turns m into the merged model, in place, and writes it to out_dir (created
// when missing): with quantize_nf4 the seven linear weights of every block
// become dequant(NF4(W)) first, quantized as training did (double_quant as
// there); then the peft adapter in adapter_dir is added (adapter_merge_peft,
// which fills info; info may be NULL). Llama and Qwen2 models keep their
// names; an EXAONE model is written as Llama (the same network, without
// remote code). Tied embeddings stay tied. The tokenizer files are written
// when m has a tokenizer. On error returns -1 with a message in err; m may
// then be half changed (the caller is done with it).
int merge_export(Model *m, const char *adapter_dir, int quantize_nf4, int double_quant, const char *out_dir,
                 AdapterInfo *info, char *err, size_t err_size);

// One weight of a model under its HF name: values (inside m->storage) and
// shape (cols 0 for a vector).
typedef struct {
    char name[96];
    float *values;
    int64_t rows, cols;
} NamedWeight;

// The most weights model_list_weights lists for a model of n_layers layers.
#define MODEL_MAX_WEIGHTS(n_layers) (3 + 12 * (n_layers))

// Every weight of m under transformers' Llama/Qwen2 names, in the order
// model.safetensors holds them (an untied lm_head last); returns the count.
int model_list_weights(const Model *m, NamedWeight *list);

// Writes m as an HF model directory (out_dir created when missing): every
// weight rounded to bf16 in model.safetensors, config.json, and the
// tokenizer files when m has a tokenizer. An out_dir holding another model's
// files that would be read with ours (chat_template.jinja, a shard index,
// generation_config.json, ...) is refused before anything is written; ours
// from an earlier write are replaced. Returns 0, or -1 with a message.
int model_save_hf(const Model *m, const char *out_dir, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
