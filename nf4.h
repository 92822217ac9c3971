// nf4.h: NF4 ("4-bit NormalFloat", QLoRA) quantization of the frozen linear
// weights, byte for byte as bitsandbytes' quantize_4bit(x, blocksize=64,
// quant_type="nf4") on the CPU, with optional double quantization of the
// block scales (compress_statistics=True). These are the CPU reference
// functions; the CUDA kernels, equal to them bit for bit, sit at the bottom
// of nf4.cu (declared at the bottom of this file).
//
// A tensor of n values (row-major W[out, in], flattened) is cut into blocks
// of 64; a short last block has its own scale.
//   absmax[b] = max |x| over block b                      (fp32)
//   code[i]   = nearest NF4 code to x[i] * (1 / absmax[b])  (4 bits)
// Nearest means: above midpoint k (strictly) -> past code k, so a value
// exactly on a midpoint takes the LOWER code. Byte j holds element 2j in its
// high nibble and 2j+1 in its low nibble; an odd count is padded with 7.
// An all-zero block has absmax 0 and every nibble 7 (the code for 0.0), as
// bitsandbytes' CPU path gives (its CUDA kernel writes 0x00 there; both
// dequantize to 0).
//
// Double quantization stores the absmax vector in 8 bits:
//   offset      = mean(absmax)                            (fp32, summed in double)
//   absmax2[c]  = max |absmax - offset| over 256-block c  (fp32)
//   absmax_q[b] = the entry of the signed dynamic map nearest to
//                 (absmax[b] - offset) * (1 / absmax2[b / 256])  (ties: the lower)
//   dequant:     absmax[b] = dyn[absmax_q[b]] * absmax2[b / 256] + offset
//                (one fused multiply-add, so the CPU and the GPU agree whatever
//                the compiler flags; bitsandbytes rounds the product first,
//                which can differ in the last bit)
// Where we knowingly differ from bitsandbytes 0.50.2 on the CPU (all
// documented in dev/fixtures/make_nf4_fixtures.py and checked by test/test_nf4.cpp):
//   - its short last 64-block divides x / absmax instead of multiplying by
//     1 / absmax (its full blocks and its CUDA kernel multiply), which can
//     move a value lying within an ulp of a midpoint to the other code;
//   - its float32 mean can differ from ours by an ulp or two;
//   - its 8-bit quantizer reads a 65536-entry table over [-1, 1], which picks
//     the neighbouring code for values within about 1.5e-5 of a midpoint;
//     we take the true nearest;
//   - a 256-block whose absmax values all equal the offset (absmax2 = 0) gets
//     code 127 (dyn = 0) here, code 0 there; both dequantize to the offset;
//   - an all-zero SHORT last 64-block gets absmax 0 here, 1e-38 (its floor)
//     there; both dequantize to 0.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NF4_BLOCK_SIZE 64      // values per absmax
#define NF4_DQ_BLOCK_SIZE 256  // absmax values per absmax2 under double quant
#define NF4_ZERO_CODE 7        // NF4_CODE[7] == 0.0: all-zero blocks and the odd-count pad

// The 16 NF4 values, ascending; normal quantiles scaled to [-1, 1].
extern const float NF4_CODE[16];
// NF4_MIDPOINT[k] = (NF4_CODE[k] + NF4_CODE[k+1]) / 2, in fp32.
extern const float NF4_MIDPOINT[15];

typedef struct {
    int64_t n;              // number of values
    int double_quant;       // 1: absmax_q/absmax2/absmax_offset hold the scales; 0: absmax does
    uint8_t *packed;        // [(n + 1) / 2] two 4-bit codes per byte, high nibble first
    float *absmax;          // [n_blocks] when !double_quant, else NULL
    uint8_t *absmax_q;      // [n_blocks] when double_quant, else NULL
    float *absmax2;         // [n_dq_blocks] when double_quant, else NULL
    float absmax_offset;    // when double_quant
} NF4Tensor;

// Blocks of 64 for n values, and blocks of 256 of those.
int64_t nf4_num_blocks(int64_t n);
int64_t nf4_num_dq_blocks(int64_t n);

// Index of the NF4 code nearest to v (v is x / absmax, in [-1, 1]); a tie
// goes to the lower code.
int nf4_nearest_code(float v);

// bitsandbytes' signed dynamic 8-bit map (create_dynamic_map(signed=True)),
// ascending: map[0] = -0.99297, map[127] = 0, map[128] = 5.5e-7, map[255] = 1.
// Computed in double and rounded once; bitsandbytes' float32 torch.linspace
// copy differs from it by one ulp in some entries.
void dynamic_map_signed(float map[256]);

// Quantizes n > 0 values of x into q (which it allocates). Returns 0, or -1
// (out of memory or n <= 0) with q left empty.
int nf4_quantize(NF4Tensor *q, const float *x, int64_t n, int double_quant);
// The double-quant step on its own: the absmax vector (n_blocks values) with a
// given offset into absmax_q [n_blocks] and absmax2 [ceil(n_blocks / 256)].
void nf4_double_quantize(const float *absmax, int64_t n_blocks, float offset, uint8_t *absmax_q, float *absmax2);
// The fp32 absmax of every block (dequantized when double_quant).
void nf4_absmax_values(const NF4Tensor *q, float *absmax);
// out[i] = NF4_CODE[code of i] * absmax[i / 64], for all n values.
void nf4_dequantize(const NF4Tensor *q, float *out);
void nf4_free(NF4Tensor *q);

// The base that ./train --quant nf4 trains on, as an fp32 model for inference:
// the seven linear weights of every block (q, k, v, o, gate, up, down: the
// ones trainer/base_weights.cpp stores in NF4) become W = dequant(NF4(W)), quantized as
// training does (blocks of 64, double_quant as there), in place. Embeddings,
// norms, biases and the LM head are left as they are, as training leaves them.
// Returns 0, or -1 (out of memory) with a message in err and the model half
// converted.
int nf4_round_trip_model(Model *m, int double_quant, char *err, size_t err_size);

// Bytes of storage for n values: the packed codes plus the constants
// (absmax fp32 per block; or, with double quant, a byte per block, an fp32
// absmax2 per 256 blocks and the fp32 offset).
size_t nf4_bytes_for(int64_t n, int double_quant);
size_t nf4_bytes(const NF4Tensor *q);

// Prints what the seven linear weights per layer (q, k, v, o, gate, up, down)
// take in bf16, in NF4 and in NF4 with double quant, and the bits per
// parameter of the quantization constants (0.5 without double quant, about
// 0.127 with it).
void nf4_print_memory_story(const Config *c, FILE *out);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include "ops/gpu.h"

// An NF4 tensor in GPU memory: the same fields as NF4Tensor, device pointers.
typedef struct {
    int64_t n;
    int double_quant;
    uint8_t *packed;
    float *absmax;
    uint8_t *absmax_q;
    float *absmax2;
    float absmax_offset;
} NF4TensorGPU;

// Copies a CPU-quantized tensor to the GPU (allocating with gpu_malloc; `what`
// names it for out-of-memory messages).
void nf4_upload(NF4TensorGPU *d, const NF4Tensor *q, const char *what);
void nf4_free_gpu(NF4TensorGPU *d);
// out[i] (act16: bf16 or fp16) = NF4_CODE[code of i] * absmax[i / 64] (absmax from the
// double-quant constants when double_quant), for all n values: the fp32
// product rounded once to that type, so it equals nf4_dequantize rounded to it.
void nf4_dequantize_gpu(act16 *out, const NF4TensorGPU *q);
// Quantizes n > 0 fp32 values already on the device into q (allocating its
// buffers), byte for byte equal to nf4_quantize: the same packed bytes and
// absmax, or with double quant the same absmax_q, absmax2 and offset.
void nf4_quantize_gpu(NF4TensorGPU *q, const float *x, int64_t n, int double_quant, const char *what);
#endif
