// infer/forward.h: the CPU inference forward pass with a key/value cache, used by
// ./generate and by the tests that compare our logits with transformers'.
#pragma once
#include "infer/adapter.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int max_seq;          // positions the cache holds
    int max_chunk;        // tokens one forward call may process
    float *key_cache;     // [n_layers, max_seq, n_kv_heads * head_dim], after RoPE
    float *value_cache;   // [n_layers, max_seq, n_kv_heads * head_dim]
    float *inv_freq;      // [head_dim / 2]
    // activations for one chunk of tokens
    float *x;             // residual stream [chunk, dim]
    float *xn;            // normalised input of a sublayer [chunk, dim]
    float *q;             // [chunk, n_heads * head_dim]
    float *att;           // attention output [chunk, n_heads * head_dim]
    float *proj;          // output of Wo or Wdown [chunk, dim]
    float *gate, *up;     // [chunk, hidden_dim]
    float *logits;        // [chunk, vocab] (or [1, vocab] for the last token only)
    int *positions;       // [chunk]
    float *lora_mid;      // x A^T of an unmerged adapter [chunk, lora_mid_rank], grown on first use
    int lora_mid_rank;
} InferState;

int infer_state_init(InferState *s, const Config *c, int max_seq, int max_chunk);
void infer_state_free(InferState *s);

// The L2 norm of one row of the residual stream, x [dim]: what hidden_norms holds.
float hidden_state_norm(const float *x, int dim);

// Runs tokens[0..n) at positions pos..pos+n-1 (the cache must hold 0..pos-1),
// appending their keys and values to the cache. Returns the logits: for every
// token ([n, vocab]) when all_logits, else for the last token only ([vocab]).
// hidden_norms (optional, [n_layers + 1]): L2 norm of the last token's
// residual stream entering each layer, then of the final-normed output.
// n must be <= max_chunk and pos + n <= max_seq.
const float *forward_cpu(const Model *m, InferState *s, const int *tokens, int n, int pos,
                         int all_logits, float *hidden_norms);
// The same with an adapter kept apart from the base (NULL: none): every
// adapted linear computes y = x W^T + s (x A^T) B^T. Equal to forward_cpu on
// the model with the adapter merged, to float rounding. NULL when the scratch
// for the adapter's rank cannot be allocated.
const float *forward_cpu_adapter(const Model *m, const AdapterWeights *adapter, InferState *s, const int *tokens,
                                 int n, int pos, int all_logits, float *hidden_norms);

#ifdef __cplusplus
}
#endif
