// trainer/base_weights.h: the frozen base model as the trainer reads it. With
// --quant nf4 the seven linear matrices of every block are stored in NF4
// (QLoRA) and dequantized to fp32 one transformer block at a time when the
// step needs them; with --quant none they stay fp32 (plain LoRA), for comparison.
// Embeddings, norms, biases and the LM head always stay fp32. Inference
// (./generate, ./evaluate, --merge) runs an adapter on the same base through
// nf4_round_trip_model (nf4.h), which writes dequant(NF4(W)) into a Model.
#pragma once
#include "model.h"
#include "nf4.h"
#include "trainer/train_step.h"

typedef enum { QUANT_NONE, QUANT_NF4 } QuantMode;

typedef struct {
    const Model *model;
    QuantMode quant;
    NF4Tensor *nf4;          // [n_layers * N_LINEARS] when quant == QUANT_NF4
    float *dequantized;      // scratch: one block's seven matrices, dequantized
    WeightSource<float> source;
} BaseWeights;

// Quantizes (or just points at) the model's weights. Returns -1 when out of memory.
int base_weights_init(BaseWeights *b, const Model *model, QuantMode quant, int double_quant);
void base_weights_free(BaseWeights *b);
// Bytes the frozen linear weights take in this mode.
size_t base_weights_linear_bytes(const BaseWeights *b);
