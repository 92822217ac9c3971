// merging/model_merge.h: whole models of the same architecture merged weight
// by weight, as mergekit does (the course's chapter on merging):
//   linear       W = sum_i w_i W_i / sum_i w_i            (a weighted average)
//   slerp        W = spherical interpolation of W_0 and W_1 at t, per tensor
//   passthrough  a new model stacked from layer ranges of the inputs
//                (frankenmerging; SOLAR's depthwise upscaling)
// The result is written with model_save_hf (infer/merge.h).
#pragma once
#include <stddef.h>
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

// SLERP falls back to linear interpolation when |cos| of the two tensors is above this (mergekit's DOT_THRESHOLD).
#define SLERP_DOT_THRESHOLD 0.9995
// A tensor whose norm is at most this is not normalized (mergekit's eps).
#define SLERP_EPS 1e-8

// -1 with "PATH: what differs" when b's shape differs from a's in anything
// but the layer count (with compare_layers 0) or in anything at all (1).
int models_check_same_shape(const Model *a, const Model *b, int compare_layers, char *err, size_t err_size);

// mergekit's slerp of two tensors of n values into out (which may be v0):
//   v0n = v0 / |v0|, v1n = v1 / |v1| (a norm <= SLERP_EPS counts as 1), dot = clamp(v0n . v1n, -1, 1)
//   |dot| > SLERP_DOT_THRESHOLD: out = (1 - t) v0 + t v1
//   else theta = acos(dot): out = sin((1 - t) theta) / sin(theta) v0 + sin(t theta) / sin(theta) v1
// Returns 1 when it fell back to linear interpolation, else 0.
int slerp_tensor(float *out, const float *v0, const float *v1, int64_t n, double t);

// Merges inputs[1 .. count) into inputs[0], in place (every weight, norms
// and embeddings included): W_0 = sum_i w_i W_i / sum_i w_i. The models must
// have the same shape; weights >= 0 with a positive sum.
void models_merge_linear(Model *inputs, int count, const double *weights);

// inputs[0] = slerp(inputs[0], inputs[1], t), tensor by tensor. Returns the
// number of tensors that fell back to linear interpolation.
int models_merge_slerp(Model *inputs, double t);

// One layer range of passthrough: input's layers first .. last (inclusive).
typedef struct {
    int input, first, last;
} LayerRange;

// Parses "0:0-15,1:8-29" (input:first-last, inclusive, comma-separated) into
// ranges (at most max). Returns the count, or -1 with the reason in err.
int parse_layer_ranges(const char *spec, LayerRange *ranges, int max, char *err, size_t err_size);

// Builds out (freed with model_free) from the ranges in order: its layers
// are copies of the inputs' layers, the embedding comes from the first
// range's input and the final norm and lm_head from the last range's (as
// mergekit's slices); its config is input 0's with the new depth. out
// borrows the tokenizer of the first range's input: set out->tokenizer =
// NULL before model_free(out). Checks the ranges against the inputs. Returns
// 0, or -1 with a message in err.
int models_merge_passthrough(const Model *inputs, int count, const LayerRange *ranges, int n_ranges, Model *out,
                             char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
