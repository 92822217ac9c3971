// dora.h: DoRA, weight-decomposed low-rank adaptation (Liu et al. 2024;
// HF peft's use_dora=True). The adapted weight is split into a direction and a
// learned magnitude m, one value per output row:
//   W' = m * (W0 + s B A) / ||W0 + s B A||     (the norm per output row j, over the input dimension)
// g = m / ||W0 + s B A|| is the per-row scale. m starts at ||W0|| (B = 0 then,
// so g = 1 and the layer starts equal to the base one), W0 being the base the
// adapter trains on (dequant(NF4(W)) with --quant nf4); m trains with A and B.
//
// peft's choices, followed here (peft/tuners/lora/dora.py and layer.py, 0.21):
//   - the norm is DETACHED: no gradient flows through ||W0 + s B A|| ("section
//     4.3 of the DoRA paper"); only m, A, B and x get gradients.
//   - dropout is applied to the adapter's input x_d = dropout(x) only; the
//     layer's own x W0^T and bias keep the full x, and the scaled part uses x_d:
//       y = x W0^T + b + (g - 1) (x_d W0^T) + g s (x_d A^T) B^T
//     Without dropout (p = 0, or at evaluation) x_d = x and this is
//       y = g (x W0^T + s (x A^T) B^T) + b = x W'^T + b.
//   - the bias is outside the scale.
// Gradients, with u = x_d W0^T and v = s (x_d A^T) B^T (w = u + v is kept from the forward):
//   dm_j = (1/||W0 + s B A||_j) sum_t dy_tj w_tj
//   dA, dB: LoRA's (lora_backward_cpu) with dy replaced by g dy
//   dx = dy W0 + ((g - 1) dy W0) * keep + LoRA's dx for g dy; without dropout, (g dy) W0 + LoRA's dx.
// The functions below are written once for one adapted linear layer; the
// trainer (trainer/train_step.cpp, trainer/train_gpu.cu) calls them in place of
// lora_forward / lora_backward where an adapter has a magnitude vector.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "lora.h"
#include "model.h"

// norm[j] = ||W[j, :] + s (B A)[j, :]||, j < out: the per-row norm of the
// adapted weight (W [out, in], A [rank, in], B [out, rank]), the sum of squares in double.
template <typename Real>
void dora_weight_norm_cpu(Real *norm, const Real *W, const Real *A, const Real *B, float scaling, int out_dim,
                          int in_dim, int rank);

// The forward's last line, per element (t, j), with g_j = m_j / norm_j:
//   y = y + (g - 1) u + g v + bias;   w = u + v
// On entry y holds x W0^T, w holds v = s (x_d A^T) B^T and u holds x_d W0^T
// (u may be y itself: no dropout). bias may be NULL.
template <typename Real>
void dora_combine_cpu(Real *y, Real *w, const Real *u, const Real *m, const Real *norm, const Real *bias, int n,
                      int out_dim);

// dm_j += (1 / norm_j) sum_t dy_tj w_tj
template <typename Real>
void dora_magnitude_grad_cpu(Real *dm, const Real *dy, const Real *w, const Real *norm, int n, int out_dim);

// out_tj = (m_j / norm_j + offset) dy_tj: g dy (offset 0) or (g - 1) dy (offset -1).
template <typename Real>
void dora_scale_dy_cpu(Real *out, const Real *dy, const Real *m, const Real *norm, float offset, int n, int out_dim);

// Scratch (values) that dora_forward_cpu and dora_backward_cpu need: n * (rank + in + 2 out) + n * in.
size_t dora_scratch_count(LoraShape s);

// The whole adapted layer: norm = ||W + s B A|| (kept for backward, [out]),
// y [n, out] = x W^T + b + (g - 1)(x_d W^T) + g s (x_d A^T) B^T (y is written,
// not added to), and what backward needs: xa = x_d A^T [n, rank], w = x_d W^T +
// s xa B^T [n, out]. keep: the dropout mask (NULL: none). bias may be NULL.
template <typename Real>
void dora_forward_cpu(Real *y, Real *w, Real *xa, Real *norm, const Real *x, const float *keep, const Real *W,
                      const Real *bias, const Real *A, const Real *B, const Real *m, LoraShape s, Real *scratch);

// Given dy [n, out]: dm, dA, dB += their gradients, dx [n, in] += d loss / d x
// (dx may be NULL), from the forward's norm, xa and w.
template <typename Real>
void dora_backward_cpu(Real *dx, Real *dA, Real *dB, Real *dm, const Real *dy, const Real *x, const float *keep,
                       const Real *W, const Real *A, const Real *B, const Real *m, const Real *norm, const Real *xa,
                       const Real *w, LoraShape s, Real *scratch);

// m of every adapter of set (set->dora) = ||W0 + s B A|| of its base weight,
// W0 = dequant(NF4(W)) when quant_nf4 (with double_quant as ./train's), else W
// as loaded: the magnitude peft starts from. Returns -1 when out of memory.
int dora_init_magnitudes(LoraSet *set, const Model *model, int quant_nf4, int double_quant);

// W [out, in] = (m / ||W + s B A||) (W + s B A): the adapter merged into W (the
// norm of W + s B A as it is in W's own precision, fp32).
void dora_merge_weight(float *W, const float *A, const float *B, const float *m, float scaling, int out_dim,
                       int in_dim, int rank);

// A CPU training step with DoRA over the same step with plain LoRA, as
// measured (build/bench_train --shape smollm2-135m --batch 1 --seq 128, README
// "DoRA": the mean of two rounds), with adapter dropout (one more base product
// forward and backward) and without; ./train --dora prints the one that applies.
#define DORA_CPU_STEP_COST_DROPOUT 1.9
#define DORA_CPU_STEP_COST_NO_DROPOUT 1.4

// ---- on the GPU ----------------------------------------------------------------
#ifdef __CUDACC__
#include "ops/gpu.h"

// norm [out] (fp32) = ||W + s B A|| per row: W act16 [out, in] (the dequantized
// base the GEMMs use), A [rank, in] and B [out, rank] the fp32 master weights;
// each row's sum of squares in fp32 over one block.
void dora_weight_norm_gpu(float *norm, const act16 *W, const float *A, const float *B, float scaling, int out_dim,
                          int in_dim, int rank);
// dora_combine_cpu on act16 y, w, u (u may be y), fp32 m, norm, bias; computed in fp32, each output rounded once.
void dora_combine_gpu(act16 *y, act16 *w, const act16 *u, const float *m, const float *norm, const float *bias, int n,
                      int out_dim);
// dora_magnitude_grad_cpu: dm fp32 (+=), dy and w act16; one thread per row j, the sum over t in fp32.
void dora_magnitude_grad_gpu(float *dm, const act16 *dy, const act16 *w, const float *norm, int n, int out_dim);
// dora_scale_dy_cpu into act16.
void dora_scale_dy_gpu(act16 *out, const act16 *dy, const float *m, const float *norm, float offset, int n,
                       int out_dim);

// Device scratch that dora_forward_gpu and dora_backward_gpu need besides the
// LoRA scratch (lora_scratch_bytes_gpu): 2 n out act16 (256-byte aligned) + n in fp32.
size_t dora_scratch_bytes_gpu(LoraShape s);

// The adapted layer on the GPU, as dora_forward_cpu: y, w, xa act16, norm fp32 [out];
// A16, B16 the 16-bit copies the GEMMs read, A32, B32 the fp32 masters the norm reads.
void dora_forward_gpu(act16 *y, act16 *w, act16 *xa, float *norm, const act16 *x, const float *keep, const act16 *W,
                      const float *bias, const act16 *A16, const act16 *B16, const float *A32, const float *B32,
                      const float *m, LoraShape s, void *lora_scratch, void *dora_scratch);
// As dora_backward_cpu: dx, dA, dB, dm fp32 (+=; dx may be NULL), dy act16.
void dora_backward_gpu(float *dx, float *dA, float *dB, float *dm, const act16 *dy, const act16 *x, const float *keep,
                       const act16 *W, const act16 *A16, const act16 *B16, const float *m, const float *norm,
                       const act16 *xa, const act16 *w, LoraShape s, void *lora_scratch, void *dora_scratch);
#endif
