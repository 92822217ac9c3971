// test_gpu_mma.cu: the tensor-core instructions of ops/mma.h themselves
// (mma.sync m16n8k16 in bf16 and fp16, ldmatrix .x1/.x2/.x4 with and without
// .trans), one warp each, against a plain matrix product and plain indexing
// on the CPU. The fragment layouts are written out here a second time, from
// the PTX ISA's tables, by hand (lane = 4 * group + t), not taken from
// ops/mma.h; and a layout that is deliberately wrong must fail the same check.
// On the CPU emulation this tests dev/cuda_on_cpu's emu_mma.cpp; on a GPU,
// the hardware (and that the wrappers name the right instruction).
#include <doctest/doctest.h>
#include <math.h>
#include <string.h>
#include "ops/mma.h"
#include "gpu_test_util.h"

namespace {

// How the test kernel builds its fragments: as the PTX ISA says, or wrong in one of two ways.
enum Layout { LAYOUT_PTX, LAYOUT_A_HALVES_SWAPPED, LAYOUT_B_TRANSPOSED };

template <typename T>
__device__ uint32_t pair_bits(const T *p) {   // p[0] in the low half, p[1] in the high half
    unsigned short lo, hi;
    memcpy(&lo, p, 2);
    memcpy(&hi, p + 1, 2);
    return (uint32_t)lo | (uint32_t)hi << 16;
}

// One warp: d = a b + c with a [16][16], b [16][8], c and d [16][8], all row-major in global memory.
template <typename T>
__global__ void mma_kernel(float *d, const T *a, const T *b, const float *c, int layout) {
    int lane = threadIdx.x, group = lane / 4, t = lane % 4;
    uint32_t a_frag[4], b_frag[2];
    // A: rows group and group + 8, columns 2t, 2t+1 (registers 0, 1) and 2t+8, 2t+9 (registers 2, 3)
    a_frag[0] = pair_bits(a + group * 16 + 2 * t);
    a_frag[1] = pair_bits(a + (group + 8) * 16 + 2 * t);
    a_frag[2] = pair_bits(a + group * 16 + 2 * t + 8);
    a_frag[3] = pair_bits(a + (group + 8) * 16 + 2 * t + 8);
    if (layout == LAYOUT_A_HALVES_SWAPPED) {   // registers 1 and 2 exchanged: rows and column halves mixed up
        uint32_t keep = a_frag[1];
        a_frag[1] = a_frag[2];
        a_frag[2] = keep;
    }
    // B: column group, rows 2t, 2t+1 (register 0) and 2t+8, 2t+9 (register 1)
    T pair[2];
    for (int r = 0; r < 2; r++) {
        for (int e = 0; e < 2; e++) {
            int k = 2 * t + e + 8 * r;
            // wrong: B read as if stored [n][k] (the first 8 rows of b as 8 x 16)
            pair[e] = layout == LAYOUT_B_TRANSPOSED ? b[group * 16 + k] : b[k * 8 + group];
        }
        b_frag[r] = pair_bits(pair);
    }
    float acc[4];
    for (int e = 0; e < 4; e++) acc[e] = c[(group + 8 * (e / 2)) * 8 + 2 * t + e % 2];
    mma_m16n8k16<T>(acc, a_frag, b_frag);
    for (int e = 0; e < 4; e++) d[(group + 8 * (e / 2)) * 8 + 2 * t + e % 2] = acc[e];
}

// The largest |d - (a b + c)| over the largest |a b + c| for the given layout, on the
// instruction of type T; inputs uniform in [-1, 1] rounded to T.
template <typename T>
double mma_error(Layout layout, uint64_t seed) {
    std::vector<float> a = random_vector(16 * 16, seed, 1.0f), b = random_vector(16 * 8, seed + 1, 1.0f);
    std::vector<float> c = random_vector(16 * 8, seed + 2, 1.0f);
    std::vector<T> a16(a.size()), b16(b.size());
    for (size_t i = 0; i < a.size(); i++) a16[i] = from_float<T>(a[i]), a[i] = to_float(a16[i]);
    for (size_t i = 0; i < b.size(); i++) b16[i] = from_float<T>(b[i]), b[i] = to_float(b16[i]);
    T *a_d = (T *)gpu_malloc(sizeof(T) * a16.size(), "a"), *b_d = (T *)gpu_malloc(sizeof(T) * b16.size(), "b");
    gpu_upload(a_d, a16.data(), sizeof(T) * a16.size());
    gpu_upload(b_d, b16.data(), sizeof(T) * b16.size());
    float *c_d = upload_floats(c, "c"), *d_d = (float *)gpu_malloc(sizeof(float) * 16 * 8, "d");
    gpu_poison(d_d, sizeof(float) * 16 * 8);
    mma_kernel<T><<<1, 32>>>(d_d, a_d, b_d, c_d, (int)layout);
    CUDA_CHECK_LAUNCH();
    std::vector<float> got = download_floats(d_d, 16 * 8), want(16 * 8);
    for (int i = 0; i < 16; i++) {
        for (int j = 0; j < 8; j++) {
            // want_ij = c_ij + sum_k a_ik b_kj
            double sum = c[i * 8 + j];
            for (int k = 0; k < 16; k++) sum += (double)a[i * 16 + k] * b[k * 8 + j];
            want[i * 8 + j] = (float)sum;
        }
    }
    for (void *p : {(void *)a_d, (void *)b_d, (void *)c_d, (void *)d_d}) gpu_free(p);
    return max_relative_error(got.data(), want.data(), got.size());
}

// One warp: ldmatrix .x<count> (.trans if trans) of `count` 8 x 8 matrices
// stored one after another in m (row-major, [count * 8][8]); out[lane][i] is register i.
template <int count, bool trans>
__global__ void ldmatrix_kernel(uint32_t *out, const unsigned short *m) {
    __shared__ __align__(16) unsigned short tile[4 * 8][8];
    int lane = threadIdx.x;
    for (int e = lane; e < count * 64; e += 32) tile[e / 8][e % 8] = m[e];
    __syncwarp();
    // lane 8 i + r names row r of matrix i (lanes past 8 * count repeat the valid ones)
    const unsigned short *row = tile[lane % (8 * count)];
    uint32_t r[4] = {0, 0, 0, 0};
    if (count == 1) trans ? ldmatrix_x1_trans(r, row) : ldmatrix_x1(r, row);
    if (count == 2) trans ? ldmatrix_x2_trans(r, row) : ldmatrix_x2(r, row);
    if (count == 4) trans ? ldmatrix_x4_trans(r, row) : ldmatrix_x4(r, row);
    for (int i = 0; i < count; i++) out[lane * count + i] = r[i];
}

// The registers every lane got, checked element by element against the
// layout: register i of lane (group, t) holds M_i[group][2t], M_i[group][2t+1]
// (trans: M_i[2t][group], M_i[2t+1][group]). Returns the mismatches.
template <int count, bool trans>
int ldmatrix_mismatches(uint64_t seed) {
    std::vector<unsigned short> m(count * 64);
    uint64_t state = seed;
    for (auto &v : m) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        v = (unsigned short)(state >> 48);
    }
    unsigned short *m_d = (unsigned short *)gpu_malloc(2 * m.size(), "matrices");
    gpu_upload(m_d, m.data(), 2 * m.size());
    uint32_t *out_d = (uint32_t *)gpu_malloc(4 * 32 * count, "registers");
    gpu_poison(out_d, 4 * 32 * count);
    ldmatrix_kernel<count, trans><<<1, 32>>>(out_d, m_d);
    CUDA_CHECK_LAUNCH();
    std::vector<uint32_t> out(32 * count);
    gpu_download(out.data(), out_d, 4 * out.size());
    gpu_free(m_d);
    gpu_free(out_d);
    int mismatches = 0;
    for (int lane = 0; lane < 32; lane++) {
        int group = lane / 4, t = lane % 4;
        for (int i = 0; i < count; i++) {
            const unsigned short *mi = m.data() + i * 64;   // mi[row * 8 + col]
            unsigned low = trans ? mi[(2 * t) * 8 + group] : mi[group * 8 + 2 * t];
            unsigned high = trans ? mi[(2 * t + 1) * 8 + group] : mi[group * 8 + 2 * t + 1];
            mismatches += out[lane * count + i] != (low | high << 16);
        }
    }
    return mismatches;
}

bool has_mma(void) { return gpu_compute_capability() >= 80; }

}   // namespace

// Tolerance: the products of 16-bit values are exact in fp32 and 17 terms of
// size <= 1 are summed in fp32: 1e-5 of the largest |d| (about 2.5 units of
// fp32's last place at sums of 4) allows any summation order.
TEST_CASE("gpu: mma.sync m16n8k16 (bf16 and fp16 in, fp32 accumulate) equals the plain matrix product") {
    if (!has_mma()) {
        MESSAGE("skipped: mma.sync m16n8k16 with 16-bit inputs needs sm_80 or newer");
        return;
    }
    for (int rep = 0; rep < 3; rep++) {
        uint64_t seed = fresh_seed();
        INFO("seed " << seed);
        CHECK(mma_error<bf16>(LAYOUT_PTX, seed) < 1e-5);
        CHECK(mma_error<fp16>(LAYOUT_PTX, seed) < 1e-5);
    }
}

// The same check fails for fragments built in a wrong layout: it can tell.
TEST_CASE("gpu: mma.sync with fragments in a wrong layout is caught by the same check") {
    if (!has_mma()) {
        MESSAGE("skipped: mma.sync m16n8k16 with 16-bit inputs needs sm_80 or newer");
        return;
    }
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    CHECK(mma_error<bf16>(LAYOUT_A_HALVES_SWAPPED, seed) > 0.05);
    CHECK(mma_error<bf16>(LAYOUT_B_TRANSPOSED, seed) > 0.05);
    CHECK(mma_error<fp16>(LAYOUT_A_HALVES_SWAPPED, seed) > 0.05);
}

TEST_CASE("gpu: ldmatrix .x1, .x2, .x4 and .trans give each lane the PTX layout's elements") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    CHECK(ldmatrix_mismatches<1, false>(seed) == 0);
    CHECK(ldmatrix_mismatches<2, false>(seed + 1) == 0);
    CHECK(ldmatrix_mismatches<4, false>(seed + 2) == 0);
    CHECK(ldmatrix_mismatches<1, true>(seed + 3) == 0);
    CHECK(ldmatrix_mismatches<2, true>(seed + 4) == 0);
    CHECK(ldmatrix_mismatches<4, true>(seed + 5) == 0);
}
