// infer/gguf_export.h: a model (the merged one, after training) written as one
// GGUF v3 file that llama.cpp runs: llama.cpp's tensor names and metadata
// keys for the "llama" architecture (Llama, SmolLM, TinyLlama; EXAONE too, the
// same network) or "qwen2": hyperparameters, RoPE settings, the tokenizer
// (tokens, token types, merges, special ids, pre-tokenizer name) and the chat
// template, with Wq/Wk rows permuted to llama.cpp's RoPE layout for "llama".
// The key set and values are those llama.cpp's convert_hf_to_gguf.py writes
// (checked key by key against the default model's file, test_gguf_write.cpp).
#pragma once
#include <stddef.h>
#include "formats/tensor.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

// The type the matrices are stored in: "f16" (DT_F16, llama.cpp's convert
// default), "bf16" (DT_BF16) or "q8_0" (DT_Q8_0). Returns 0, or -1 for another name.
int gguf_export_type_from_name(const char *name, DType *type);
const char *gguf_export_type_name(DType type);

// Whether gguf_write_model can write m as type (checked before a long
// training run): 0, or -1 with "PATH: why not" in err.
int gguf_check_exportable(const Model *m, const char *path, DType type, char *err, size_t err_size);

// Writes m to path (through formats/atomic_file: a failed write leaves no
// half file). The 2-D weights are stored as type (with DT_Q8_0, a matrix
// whose rows are not a multiple of 32 long is stored as F16, as llama.cpp's
// converter does), vectors (norms, biases) as F32. Refused, with a message
// (gguf_check_exportable): a model without a tokenizer, a vocabulary larger
// than the embedding, and Llama-3 RoPE scaling (llama.cpp wants it as a
// rope_freqs tensor, which our loader does not read yet). Returns 0, or -1
// with "PATH: what is wrong" in err.
int gguf_write_model(const Model *m, const char *path, DType type, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
