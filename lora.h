// lora.h: Low-Rank Adaptation of a frozen linear layer (HF peft semantics).
//   y = x W^T + s (dropout(x) A^T) B^T,   A [r, in], B [out, r], s = alpha / r
// W stays frozen; only A and B are trained. B starts at zero, so the adapted
// layer starts equal to the base one.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "model.h"

// One adapted linear layer. A, B, dA, dB are views into the LoraSet's flat
// arrays (below), not allocations of their own.
typedef struct {
    int in_dim, out_dim, rank;
    float scaling;   // alpha / rank (or alpha / sqrt(rank) with rsLoRA)
    float *A;        // [rank, in_dim]
    float *B;        // [out_dim, rank]
    float *dA;       // gradients, same shapes
    float *dB;
    float *m;        // DoRA's magnitude vector [out_dim] (dora.h), NULL without DoRA
    float *dm;       // its gradient
} LoraAdapter;

// s = alpha / r, or alpha / sqrt(r) with rsLoRA
float lora_scale(float alpha, int rank, int rslora);

// Fills an adapter whose A and B already point at its storage: A ~ U(-1/sqrt(in),
// 1/sqrt(in)) from the seed (kaiming-uniform with a = sqrt(5), as peft), B = 0.
void lora_init_weights(LoraAdapter *a, uint64_t seed);

// LoRA on input groups (model.h: the linears that read the same input, q|k|v,
// o, gate|up, down): a group's adapters share one dropout mask
// (lora_dropout_seed), their A's lie end to end in the flat layout (LoraSet),
// and the GPU computes their A products as one GEMM.
// The enabled targets of a group, in Linear order, into targets[]; returns how many (0 .. LINEAR_GROUP_MAX).
int lora_group_targets(const int enabled[N_LINEARS], int group, int targets[LINEAR_GROUP_MAX]);

// Inverted dropout mask for n x in_dim inputs: keep[i] = 0 with probability p,
// else 1 / (1 - p). Counter-based: keep[i] depends only on (seed, i), through
// z = splitmix64_at(mix64(seed), i) (ops/random.h), dropped when
// (z >> 40) / 2^24 < p. The caller derives the seed from (step, layer,
// target) with lora_dropout_seed, so recompute regenerates the same mask, and
// the GPU version (lora_dropout_mask_gpu) gives it bit for bit. p == 0 gives all ones.
void lora_dropout_mask(float *keep, size_t count, float p, uint64_t seed);
// The mask seed of the input that (layer, target) reads, within a step whose
// dropout seed is step_seed: one stream per (layer, input group), so the
// adapters of q, k and v (and of gate and up) see the same dropped-out input,
// on the CPU and the GPU alike. peft differs here: each of its modules has its
// own nn.Dropout, so its q, k and v draw independent masks. The distribution of
// each adapter's input is the same; only the masks' correlation across a
// group's adapters differs (and one mask and one masked copy serve the group).
uint64_t lora_dropout_seed(uint64_t step_seed, int layer, int target);
// out[i] = x[i] * keep[i] (a copy of x when keep is NULL): the adapter's dropped-out input.
template <typename Real>
void lora_apply_mask_cpu(Real *out, const Real *x, const float *keep, size_t count);

// The shapes of one adapted linear layer.
typedef struct {
    int n;          // tokens
    int in_dim, out_dim, rank;
    float scaling;
} LoraShape;

// y[n, out] += s ((x * keep) A^T) B^T. Saves xa = (x * keep) A^T [n, rank]
// for backward; keep may be NULL (no dropout). scratch: n * in values (s B^T,
// rank * out values, and a row of out sums per thread are allocated here).
template <typename Real>
void lora_forward_cpu(Real *y, const Real *x, const float *keep, const Real *A, const Real *B, LoraShape s, Real *xa,
                      Real *scratch);

// Given dy [n, out]: dB += s dy^T xa; d_xa = s dy B; dA += d_xa^T (x * keep);
// dx [n, in] += (d_xa A) * keep (dx may be NULL when x needs no gradient).
// scratch: n * (rank + in + out) values.
template <typename Real>
void lora_backward_cpu(Real *dx, Real *dA, Real *dB, const Real *dy, const Real *x, const float *keep, const Real *A,
                       const Real *B, const Real *xa, LoraShape s, Real *scratch);

// ---- all adapters of a model -----------------------------------------------

// The trainable state of a whole model in one flat layout, as llm.c keeps all
// parameters in one buffer with offsets: params holds, layer by layer and
// input group by input group (q|k|v, o, gate|up, down), the A's of the group's
// enabled adapters end to end in Linear order, then each one's B (then its
// magnitude vector m with DoRA). So a group's A's form one matrix
// [A_q; A_k; A_v] ([count * rank, in]) that the GPU multiplies in one GEMM, and
// their gradients one matrix too. grads has the same layout, and so do AdamW's
// moments (adamw.h) and the GPU's copies (trainer/train_gpu.h). Each adapter's
// A, B, dA, dB point into params and grads, so the optimizer, clipping, the GPU
// copies and the checkpoint each see one array.
typedef struct LoraSet {
    int n_layers;
    int enabled[N_LINEARS];   // which targets carry adapters
    int rank;
    float alpha;
    int rslora;
    float dropout;
    int dora;                 // 1: every adapter has a magnitude vector m (DoRA, dora.h)
    size_t n_params;          // floats in params, and in grads
    float *params;            // [n_params] every A and B (and m)
    float *grads;             // [n_params] every dA and dB (and dm)
    LoraAdapter *adapters;    // [n_layers * N_LINEARS] views into params and grads; disabled targets are all NULL
} LoraSet;

// Parses "q,k,v,o,gate,up,down" (any subset) into enabled[]. -1 + message on an unknown name.
int lora_parse_targets(const char *list, int enabled[N_LINEARS], char *err, size_t err_size);
// The targets enabled as --targets names them, in one order (q,k,v,o,gate,up,down
// order, each once): the run's record of them, whatever order and repeats it was given in.
void lora_targets_text(const int enabled[N_LINEARS], char *out, size_t out_size);
// Allocates params and grads for every enabled target of every layer and
// initialises each adapter (lora_init_weights; each A gets its own seed derived
// from seed, layer and target); gradients 0. With dora, each adapter also gets
// a magnitude vector m, 0 until dora_init_magnitudes (dora.h) sets it from the
// base. Returns -1 when out of memory.
int lora_set_init(LoraSet *set, const Config *c, const int enabled[N_LINEARS], int rank, float alpha, int rslora,
                  float dropout, uint64_t seed, int dora);
void lora_set_free(LoraSet *set);
size_t lora_set_num_params(const LoraSet *set);
void lora_set_zero_grads(LoraSet *set);
// Names the first adapter tensor of `flat` (an array in the set's layout: params,
// grads or an AdamW moment) that holds a NaN or Inf, as "layer 3 v lora_B" (or
// lora_A, lora_magnitude_vector), into
// name. Returns 1 if there is one, else 0 (name: "none").
int lora_set_find_non_finite(const LoraSet *set, const float *flat, char *name, size_t name_size);
// peft's tensor names: peft_layers_path(c) + layer + "." + peft_module_path(c, target)
// + ".lora_A.weight" (or lora_B), e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight;
// peft_layers_path starts with PEFT_WRAPPER, the rest is the module's name in the model.
#define PEFT_WRAPPER "base_model.model."
const char *peft_layers_path(const Config *c);
const char *peft_module_path(const Config *c, int target);
// The base the adapters were trained on, which a merge must rebuild:
// adapter_config.json records it as
//   "qlora_c_base": {"quant": "nf4", "double_quant": true, "model_weights_hash": "89abcdef01234567"}
// (quant "none": W as loaded; the fields: LoraBase, model.h). peft drops keys it
// does not know, with a warning. lora_write_base_record writes it.
#define LORA_BASE_KEY "qlora_c_base"
// The record's member, "  \"qlora_c_base\": {...}", without a comma or line end.
void lora_write_base_record(FILE *f, const LoraBase *base);
// Writes dir/adapter_model.safetensors and dir/adapter_config.json in HF
// peft's layout and names, so peft can load the adapter onto the base model;
// the config also records base (LORA_BASE_KEY). With DoRA, each module's m is
// saved as MODULE.lora_magnitude_vector [out] (peft's name, no ".weight") and
// the config says "use_dora": true.
int lora_set_save_peft(const LoraSet *set, const Config *c, const char *dir, const char *base_model,
                       const LoraBase *base, char *err, size_t err_size);

// ---- on the GPU ----------------------------------------------------------------
#ifdef __CUDACC__
#include "ops/gpu.h"

// lora_dropout_mask into device memory, bit for bit the same values.
void lora_dropout_mask_gpu(float *keep, size_t count, float p, uint64_t seed);
// out[i] = act16(x[i] * keep[i]), as lora_apply_mask_cpu.
void lora_apply_mask_gpu(act16 *out, const act16 *x, const float *keep, size_t count);
// dx[i] += d[i] * keep[i]: a gradient through the mask.
void lora_add_masked_gpu(float *dx, const float *d, const float *keep, size_t count);

// y[n, out] (act16) += s ((x * keep) A^T) B^T; saves xa = (x * keep) A^T (act16 [n, rank]) for backward.
// x act16 [n, in]; keep fp32 [n * in] on device or NULL (no dropout); A act16 [rank, in], B act16 [out, rank]
// (16-bit copies of the fp32 master weights); scratch: at least lora_scratch_bytes_gpu(s) bytes of device memory.
// Products accumulate in fp32; x * keep and xa are rounded to act16 (bf16 or fp16: ops/gpu.h).
void lora_forward_gpu(act16 *y, act16 *xa, const act16 *x, const float *keep, const act16 *A, const act16 *B, LoraShape s,
                      void *scratch);
// Given dy (act16 [n, out]): dB (fp32 [out, rank], +=) += s dy^T xa; d_xa = s dy B (rounded to act16);
// dA (fp32 [rank, in], +=) += d_xa^T (x * keep); dx (fp32 [n, in], +=; may be NULL) += (d_xa A) * keep.
void lora_backward_gpu(float *dx, float *dA, float *dB, const act16 *dy, const act16 *x, const float *keep, const act16 *A,
                       const act16 *B, const act16 *xa, LoraShape s, void *scratch);
// Device scratch that lora_forward_gpu and lora_backward_gpu need for shape s:
// n * rank act16 (rounded up to 256 bytes) + n * in fp32.
size_t lora_scratch_bytes_gpu(LoraShape s);

// The adapters of the linears of one input group (count of them, 1 .. LINEAR_GROUP_MAX)
// on their shared input x [n, in]: their A's stacked into one matrix
// A_g = [A_1; ...; A_count] ([count * rank, in], as the flat layout keeps them), each its own B_t.
typedef struct {
    int n, in_dim, rank, count;
    int out_dim[LINEAR_GROUP_MAX];   // of each adapter, in the group's order
    float scaling;
} LoraGroupShape;
// xa = (x * keep) A_g^T (act16 [n, count * rank]: adapter t's xa_t in columns t rank .. (t + 1) rank - 1),
// one GEMM for the group; then y_t (act16 [n, out_t]) += s xa_t B_t^T for each adapter. keep as lora_forward_gpu's.
void lora_group_forward_gpu(act16 *const y[], act16 *xa, const act16 *x, const float *keep, const act16 *A,
                            const act16 *const B[], LoraGroupShape s, void *scratch);
// Given each dy_t (act16 [n, out_t]): dB_t (fp32, +=) += s dy_t^T xa_t and d_xa_t = s dy_t B_t for each adapter,
// into the columns of d_xa [n, count * rank]; then, one GEMM each for the group: dA_g (fp32 [count * rank, in], +=)
// += d_xa^T (x * keep), and dx (fp32 [n, in], +=; may be NULL) += (d_xa A_g) * keep.
void lora_group_backward_gpu(float *dx, float *dA, float *const dB[], const act16 *const dy[], const act16 *x,
                             const float *keep, const act16 *A, const act16 *const B[], const act16 *xa,
                             LoraGroupShape s, void *scratch);
// Device scratch of lora_group_forward_gpu and lora_group_backward_gpu:
// n * count * rank act16 (rounded up to 256 bytes) + n * in fp32.
size_t lora_group_scratch_bytes_gpu(LoraGroupShape s);
#endif
