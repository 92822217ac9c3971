// test_gpu_lora.cu: the LoRA kernels against lora.cu's CPU references: the
// dropout mask bit for bit, forward and backward within bf16 tolerances.
#include <doctest/doctest.h>
#include <math.h>
#include <string.h>
#include "gpu_test_util.h"
#include "lora.h"

TEST_CASE("gpu: dropout masks equal the CPU's bit for bit and drop about p") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    const float ps[] = {0.0f, 0.1f, 0.5f};
    const size_t counts[] = {1, 255, 1001, 1000003};   // none but 1 a multiple of the block size
    for (float p : ps) {
        for (size_t count : counts) {
            INFO("p " << p << ", count " << count);
            std::vector<float> want(count);
            lora_dropout_mask(want.data(), count, p, seed + count);
            float *d_keep = (float *)gpu_malloc(sizeof(float) * count, "keep");
            gpu_poison(d_keep, sizeof(float) * count);
            lora_dropout_mask_gpu(d_keep, count, p, seed + count);
            std::vector<float> got = download_floats(d_keep, count);
            gpu_free(d_keep);
            CHECK(memcmp(got.data(), want.data(), sizeof(float) * count) == 0);
            if (count < 1000003) continue;
            // dropped fraction: its standard deviation is sqrt(p (1 - p) / count) < 5e-4, so 3e-3 is 6 sigma
            size_t dropped = 0;
            for (float k : got) dropped += k == 0.0f;
            CHECK(fabs((double)dropped / count - p) < 3e-3);
            for (size_t i = 0; i < count; i += 997) CHECK((got[i] == 0.0f || got[i] == 1.0f / (1.0f - p)));
        }
    }
}

namespace {

// The inputs of one adapted layer, rounded to bf16 where the GPU reads bf16,
// and the pre-filled accumulators (the same values on both sides).
struct LoraCase {
    LoraShape s;
    std::vector<float> x, A, B, dy, keep;   // keep empty: no dropout
    std::vector<float> y0, dx0, dA0, dB0;
};

// CPU reference outputs (float), from the same inputs.
struct LoraResult {
    std::vector<float> y, xa, dx, dA, dB;
};

LoraResult run_cpu(const LoraCase &c) {
    const LoraShape &s = c.s;
    const float *keep = c.keep.empty() ? NULL : c.keep.data();
    LoraResult r;
    r.y = c.y0;
    r.dx = c.dx0;
    r.dA = c.dA0;
    r.dB = c.dB0;
    r.xa.resize((size_t)s.n * s.rank);
    std::vector<float> scratch((size_t)s.n * (s.rank + s.in_dim + s.out_dim));
    lora_forward_cpu<float>(r.y.data(), c.x.data(), keep, c.A.data(), c.B.data(), s, r.xa.data(), scratch.data());
    lora_backward_cpu<float>(r.dx.data(), r.dA.data(), r.dB.data(), c.dy.data(), c.x.data(), keep, c.A.data(),
                             c.B.data(), r.xa.data(), s, scratch.data());
    return r;
}

float max_abs(const std::vector<float> &x) {
    float largest = 0.0f;
    for (float v : x) largest = fmaxf(largest, fabsf(v));
    return largest;
}

LoraCase make_case(int n, int in_dim, int out_dim, int rank, float dropout, uint64_t seed) {
    LoraCase c;
    c.s = {n, in_dim, out_dim, rank, 2.0f};
    size_t x_count = (size_t)n * in_dim, y_count = (size_t)n * out_dim;
    // x and dy O(1); A as lora_init_weights; B random (not peft's zero start) so every product is nonzero
    c.x = random_vector(x_count, seed + 1, 1.0f);
    c.A = random_vector((size_t)rank * in_dim, seed + 2, 1.0f / sqrtf((float)in_dim));
    c.B = random_vector((size_t)out_dim * rank, seed + 3, 1.0f / sqrtf((float)rank));
    c.dy = random_vector(y_count, seed + 4, 1.0f);
    round_to_act16(c.x);
    round_to_act16(c.A);
    round_to_act16(c.B);
    round_to_act16(c.dy);
    if (dropout > 0.0f) {
        c.keep.resize(x_count);
        lora_dropout_mask(c.keep.data(), x_count, dropout, seed + 9);
    }
    // The accumulators are pre-filled at the size of what is added to them
    // (measured by a CPU run from zero), so that a kernel which overwrites
    // instead of adding, or adds nothing, is far outside the tolerance.
    c.y0.assign(y_count, 0.0f);
    c.dx0.assign(x_count, 0.0f);
    c.dA0.assign((size_t)rank * in_dim, 0.0f);
    c.dB0.assign((size_t)out_dim * rank, 0.0f);
    LoraResult added = run_cpu(c);
    c.y0 = random_vector(y_count, seed + 5, max_abs(added.y));
    c.dx0 = random_vector(x_count, seed + 6, max_abs(added.dx));
    c.dA0 = random_vector((size_t)rank * in_dim, seed + 7, max_abs(added.dA));
    c.dB0 = random_vector((size_t)out_dim * rank, seed + 8, max_abs(added.dB));
    round_to_act16(c.y0);   // y is bf16 on the GPU
    return c;
}

LoraResult run_gpu(const LoraCase &c) {
    const LoraShape &s = c.s;
    size_t xa_count = (size_t)s.n * s.rank, y_count = (size_t)s.n * s.out_dim;
    act16 *x = upload_act16(c.x, "x"), *A = upload_act16(c.A, "A"), *B = upload_act16(c.B, "B");
    act16 *dy = upload_act16(c.dy, "dy"), *y = upload_act16(c.y0, "y");
    float *keep = c.keep.empty() ? NULL : upload_floats(c.keep, "keep");
    float *dx = upload_floats(c.dx0, "dx"), *dA = upload_floats(c.dA0, "dA"), *dB = upload_floats(c.dB0, "dB");
    act16 *xa = (act16 *)gpu_malloc(sizeof(act16) * xa_count, "xa");
    size_t scratch_bytes = lora_scratch_bytes_gpu(s);
    void *scratch = gpu_malloc(scratch_bytes, "scratch");
    gpu_poison(xa, sizeof(act16) * xa_count);
    gpu_poison(scratch, scratch_bytes);
    lora_forward_gpu(y, xa, x, keep, A, B, s, scratch);
    gpu_poison(scratch, scratch_bytes);   // backward must not rely on what forward left there
    lora_backward_gpu(dx, dA, dB, dy, x, keep, A, B, xa, s, scratch);
    LoraResult r;
    r.y = download_act16(y, y_count);
    r.xa = download_act16(xa, xa_count);
    r.dx = download_floats(dx, c.dx0.size());
    r.dA = download_floats(dA, c.dA0.size());
    r.dB = download_floats(dB, c.dB0.size());
    gpu_free(x); gpu_free(A); gpu_free(B); gpu_free(dy); gpu_free(y); gpu_free(keep);
    gpu_free(dx); gpu_free(dA); gpu_free(dB); gpu_free(xa); gpu_free(scratch);
    return r;
}

// Backward with dx == NULL: dA and dB as with dx, nothing else touched.
void check_backward_without_dx(const LoraCase &c, const LoraResult &cpu) {
    const LoraShape &s = c.s;
    act16 *x = upload_act16(c.x, "x"), *A = upload_act16(c.A, "A"), *B = upload_act16(c.B, "B");
    act16 *dy = upload_act16(c.dy, "dy"), *xa = upload_act16(cpu.xa, "xa");
    float *keep = c.keep.empty() ? NULL : upload_floats(c.keep, "keep");
    float *dA = upload_floats(c.dA0, "dA"), *dB = upload_floats(c.dB0, "dB");
    void *scratch = gpu_malloc(lora_scratch_bytes_gpu(s), "scratch");
    gpu_poison(scratch, lora_scratch_bytes_gpu(s));
    lora_backward_gpu(NULL, dA, dB, dy, x, keep, A, B, xa, s, scratch);
    std::vector<float> got_dA = download_floats(dA, c.dA0.size()), got_dB = download_floats(dB, c.dB0.size());
    CHECK(max_relative_error(got_dA.data(), cpu.dA.data(), got_dA.size()) < 2e-2);
    CHECK(max_relative_error(got_dB.data(), cpu.dB.data(), got_dB.size()) < 2e-2);
    gpu_free(x); gpu_free(A); gpu_free(B); gpu_free(dy); gpu_free(xa); gpu_free(keep);
    gpu_free(dA); gpu_free(dB); gpu_free(scratch);
}

}  // namespace

// Tolerances: the GPU rounds x * keep, xa and d_xa to bf16 (relative error up
// to 2^-9 each) and stores y in bf16; the CPU reference keeps all of these in
// float. The rounding errors are independent per element and average out in
// the products' sums, so the error relative to each tensor's largest value is
// a few 1e-3: 1e-2 for y and xa, 2e-2 for dA, dB and dx (two bf16 roundings
// in a row). A wrong index, transpose, scale or mask gives O(1) errors.
TEST_CASE("gpu: LoRA forward and backward match lora_forward_cpu / lora_backward_cpu") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    const int shapes[][4] = {{37, 576, 192, 16}, {64, 1536, 576, 8}, {5, 100, 7, 3}};   // n, in, out, rank
    const float dropouts[] = {0.0f, 0.1f};
    for (const auto &shape : shapes) {
        for (float dropout : dropouts) {
            INFO("n " << shape[0] << ", in " << shape[1] << ", out " << shape[2] << ", rank " << shape[3]
                      << ", dropout " << dropout);
            LoraCase c = make_case(shape[0], shape[1], shape[2], shape[3], dropout, seed);
            LoraResult want = run_cpu(c);
            LoraResult got = run_gpu(c);
            CHECK(max_relative_error(got.y.data(), want.y.data(), want.y.size()) < 1e-2);
            CHECK(max_relative_error(got.xa.data(), want.xa.data(), want.xa.size()) < 1e-2);
            CHECK(max_relative_error(got.dx.data(), want.dx.data(), want.dx.size()) < 2e-2);
            CHECK(max_relative_error(got.dA.data(), want.dA.data(), want.dA.size()) < 2e-2);
            CHECK(max_relative_error(got.dB.data(), want.dB.data(), want.dB.size()) < 2e-2);
            check_backward_without_dx(c, want);
            seed += 100;
        }
    }
}
