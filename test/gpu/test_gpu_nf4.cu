// test_gpu_nf4.cu: the NF4 kernels (nf4.cu) against the CPU reference:
// dequantize and quantize equal bit for bit (with and without double quant),
// and a GPU round trip within the per-block quantization bound.
#include <doctest/doctest.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "gpu_test_util.h"
#include "nf4.h"

namespace {

// One test tensor: n values, optionally with special 64-blocks (all zeros; ties).
struct Case {
    int64_t n;
    bool special_blocks;
};

// Odd with more than one 256-block and a short last block; single values; one
// block short and one over; a real weight size; and special blocks: all-zero
// ones (in the middle, in the second 256-block, the short last one) and one
// whose values lie exactly on the code midpoints (ties).
const Case CASES[] = {
    {64 * 256 * 3 + 64 * 5 + 17, false}, {1, false}, {63, false}, {65, false},
    {4096 * 576, false},                 {64 * 300 + 33, true},
};

// Normal-ish weights: the sum of four uniforms in [-0.02, 0.02]; some 64-blocks
// scaled by 1e3, 1e-3 or 1e-30, so the scales (and the double-quant offset)
// span a wide range.
std::vector<float> test_weights(const Case &c, uint64_t seed) {
    std::vector<float> x((size_t)c.n, 0.0f);
    for (uint64_t k = 0; k < 4; k++) {
        std::vector<float> u = random_vector((size_t)c.n, seed + k, 0.02f);
        for (size_t i = 0; i < x.size(); i++) x[i] += u[i];
    }
    const float scales[3] = {1e3f, 1e-3f, 1e-30f};
    int64_t n_blocks = nf4_num_blocks(c.n);
    for (int64_t b = 0; b < n_blocks; b++) {
        uint64_t pick = (uint64_t)b * 7 + seed % 23;
        if (pick % 23 >= 3) continue;
        for (int64_t i = b * NF4_BLOCK_SIZE; i < c.n && i < (b + 1) * NF4_BLOCK_SIZE; i++) x[(size_t)i] *= scales[pick % 23];
    }
    if (c.special_blocks) {
        // blocks 4 and 260, and the last (short) one: zeros
        const int64_t zeroed[3] = {4, 260, n_blocks - 1};
        for (int64_t b : zeroed)
            for (int64_t i = b * NF4_BLOCK_SIZE; i < c.n && i < (b + 1) * NF4_BLOCK_SIZE; i++) x[(size_t)i] = 0.0f;
        // block 7: absmax 1 (so 1 / absmax = 1), then every midpoint with both signs: ties, which take the lower code
        float *tie_block = &x[7 * NF4_BLOCK_SIZE];
        tie_block[0] = 1.0f;
        for (int k = 0; k < 15; k++) {
            tie_block[1 + 2 * k] = NF4_MIDPOINT[k];
            tie_block[2 + 2 * k] = -NF4_MIDPOINT[k];
        }
    }
    return x;
}

// Positions where two byte strings of length n differ.
size_t byte_mismatches(const uint8_t *got, const uint8_t *want, size_t n) {
    size_t count = 0;
    for (size_t i = 0; i < n; i++) count += got[i] != want[i];
    return count;
}

// Positions where two float arrays differ in their bits.
size_t bit_mismatches(const float *got, const float *want, size_t n) {
    size_t count = 0;
    for (size_t i = 0; i < n; i++) count += memcmp(&got[i], &want[i], sizeof(float)) != 0;
    return count;
}

// A host copy of a GPU tensor (host buffers from malloc, freed by nf4_free).
NF4Tensor download_nf4(const NF4TensorGPU *d) {
    NF4Tensor q;
    memset(&q, 0, sizeof q);
    int64_t n_blocks = nf4_num_blocks(d->n);
    size_t n_bytes = (size_t)(d->n + 1) / 2;
    q.n = d->n;
    q.double_quant = d->double_quant;
    q.absmax_offset = d->absmax_offset;
    q.packed = (uint8_t *)malloc(n_bytes);
    REQUIRE(q.packed);
    gpu_download(q.packed, d->packed, n_bytes);
    if (!d->double_quant) {
        q.absmax = (float *)malloc((size_t)n_blocks * sizeof(float));
        REQUIRE(q.absmax);
        gpu_download(q.absmax, d->absmax, (size_t)n_blocks * sizeof(float));
        return q;
    }
    size_t n_dq_blocks = (size_t)nf4_num_dq_blocks(d->n);
    q.absmax_q = (uint8_t *)malloc((size_t)n_blocks);
    q.absmax2 = (float *)malloc(n_dq_blocks * sizeof(float));
    REQUIRE(q.absmax_q);
    REQUIRE(q.absmax2);
    gpu_download(q.absmax_q, d->absmax_q, (size_t)n_blocks);
    gpu_download(q.absmax2, d->absmax2, n_dq_blocks * sizeof(float));
    return q;
}

// The GPU dequantization of q, as floats on the host (output poisoned first),
// written `shift` values past a 256-byte aligned start (1 and 4 shifts miss the
// kernel's 16-byte stores, so they take its one-by-one path). The GUARD values
// after the output must keep their poison (NaN): nothing is written past n.
const size_t GUARD = 16;
std::vector<float> dequantize_on_gpu(const NF4TensorGPU *q, int shift = 0) {
    size_t n = (size_t)q->n, total = shift + n + GUARD;
    act16 *d_buffer = (act16 *)gpu_malloc(sizeof(act16) * total, "nf4 out");
    gpu_poison(d_buffer, sizeof(act16) * total);
    nf4_dequantize_gpu(d_buffer + shift, q);
    std::vector<float> out = download_act16(d_buffer + shift, n + GUARD);
    gpu_free(d_buffer);
    size_t overwritten = 0;
    for (size_t i = n; i < n + GUARD; i++) overwritten += !isnan(out[i]);
    CHECK(overwritten == 0);
    out.resize(n);
    return out;
}

}  // namespace

// Tolerance: none. The kernel computes the same fp32 product as the CPU and
// rounds it once, so it must equal the CPU result rounded to bf16 exactly.
TEST_CASE("gpu: nf4_dequantize_gpu equals nf4_dequantize rounded to the 16-bit type, with and without double quant") {
    for (const Case &c : CASES) {
        for (int double_quant = 0; double_quant <= 1; double_quant++) {
            uint64_t seed = fresh_seed();
            INFO("seed " << seed << ", n " << c.n << ", double quant " << double_quant);
            std::vector<float> x = test_weights(c, seed);
            NF4Tensor q;
            REQUIRE(nf4_quantize(&q, x.data(), c.n, double_quant) == 0);
            std::vector<float> want((size_t)c.n);
            nf4_dequantize(&q, want.data());
            round_to_act16(want);

            NF4TensorGPU d;
            nf4_upload(&d, &q, "nf4 weight");
            CHECK(d.n == c.n);
            CHECK(d.double_quant == double_quant);
            for (int shift : {0, 1, 4, 8}) {
                INFO("output " << shift << " values past an aligned start");
                std::vector<float> got = dequantize_on_gpu(&d, shift);
                size_t mismatches = 0;
                for (size_t i = 0; i < got.size(); i++) mismatches += !(got[i] == want[i]);
                CHECK(mismatches == 0);
            }
            nf4_free_gpu(&d);
            CHECK(d.packed == nullptr);
            nf4_free(&q);
        }
    }
}

// Tolerance: none; the same bytes and the same fp32 bits. (The buffers are
// allocated inside nf4_quantize_gpu, so they cannot be poisoned here; the
// fresh random inputs make stale memory holding the right bytes implausible.)
TEST_CASE("gpu: nf4_quantize_gpu equals nf4_quantize byte for byte, with and without double quant") {
    for (const Case &c : CASES) {
        for (int double_quant = 0; double_quant <= 1; double_quant++) {
            uint64_t seed = fresh_seed();
            INFO("seed " << seed << ", n " << c.n << ", double quant " << double_quant);
            std::vector<float> x = test_weights(c, seed);
            NF4Tensor want;
            REQUIRE(nf4_quantize(&want, x.data(), c.n, double_quant) == 0);

            float *d_x = upload_floats(x, "x");
            NF4TensorGPU d;
            nf4_quantize_gpu(&d, d_x, c.n, double_quant, "nf4 weight");
            CHECK(d.n == c.n);
            CHECK(d.double_quant == double_quant);
            NF4Tensor got = download_nf4(&d);
            int64_t n_blocks = nf4_num_blocks(c.n);
            CHECK(byte_mismatches(got.packed, want.packed, (size_t)(c.n + 1) / 2) == 0);
            if (!double_quant) {
                CHECK(d.absmax_q == nullptr);
                CHECK(bit_mismatches(got.absmax, want.absmax, (size_t)n_blocks) == 0);
            } else {
                CHECK(d.absmax == nullptr);
                CHECK(byte_mismatches(got.absmax_q, want.absmax_q, (size_t)n_blocks) == 0);
                CHECK(bit_mismatches(got.absmax2, want.absmax2, (size_t)nf4_num_dq_blocks(c.n)) == 0);
                CHECK(bit_mismatches(&got.absmax_offset, &want.absmax_offset, 1) == 0);
            }
            nf4_free(&got);
            nf4_free(&want);
            nf4_free_gpu(&d);
            gpu_free(d_x);
        }
    }
}

// Tolerance: the quantization bound per value. With A the block's true absmax
// and A' the absmax the tensor stores (A' = A without double quant), x / A
// lies within half the largest code gap of its code c, so
//   |x - c A'| <= A * max_gap / 2 + |A - A'|   (|c| <= 1),
// plus 1e-6 relative for the fp32 arithmetic and 2^-7 of |dq| for the 16-bit
// rounding of the output (bf16's; fp16's is 2^-11, and below its normal range
// 2^-25 absolute). A wrong code or nibble breaks it by a code gap.
TEST_CASE("gpu: nf4 round trip on the GPU stays within the per-block bound") {
    float max_gap = 0.0f;
    for (int k = 0; k + 1 < 16; k++) max_gap = fmaxf(max_gap, NF4_CODE[k + 1] - NF4_CODE[k]);
    for (const Case &c : CASES) {
        for (int double_quant = 0; double_quant <= 1; double_quant++) {
            uint64_t seed = fresh_seed();
            INFO("seed " << seed << ", n " << c.n << ", double quant " << double_quant);
            std::vector<float> x = test_weights(c, seed);
            float *d_x = upload_floats(x, "x");
            NF4TensorGPU d;
            nf4_quantize_gpu(&d, d_x, c.n, double_quant, "nf4 weight");
            std::vector<float> dq = dequantize_on_gpu(&d);

            // A' as stored (dequantized double-quant constants) from the downloaded tensor
            NF4Tensor host = download_nf4(&d);
            int64_t n_blocks = nf4_num_blocks(c.n);
            std::vector<float> stored_absmax((size_t)n_blocks);
            nf4_absmax_values(&host, stored_absmax.data());
            size_t violations = 0;
            double worst_excess = 0.0;
            for (int64_t b = 0; b < n_blocks; b++) {
                int64_t begin = b * NF4_BLOCK_SIZE, end = begin + NF4_BLOCK_SIZE < c.n ? begin + NF4_BLOCK_SIZE : c.n;
                double true_absmax = 0.0;
                for (int64_t i = begin; i < end; i++) true_absmax = fmax(true_absmax, fabs((double)x[(size_t)i]));
                double stored = stored_absmax[(size_t)b];
                double block_bound = true_absmax * (max_gap / 2.0 + 1e-6) + fabs(true_absmax - stored) * (1.0 + 1e-6);
                for (int64_t i = begin; i < end; i++) {
                    double err = fabs((double)x[(size_t)i] - (double)dq[(size_t)i]);
                    double bound = block_bound + fabs((double)dq[(size_t)i]) / 128.0 + act16_underflow_error();
                    if (!(err <= bound)) {
                        violations++;
                        worst_excess = fmax(worst_excess, err - bound);
                    }
                }
            }
            INFO("worst excess over the bound " << worst_excess);
            CHECK(violations == 0);
            nf4_free(&host);
            nf4_free_gpu(&d);
            gpu_free(d_x);
        }
    }
}
