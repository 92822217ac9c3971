// test_gpu_dora.cu: DoRA's kernels (dora.cu) against their CPU references on
// fresh random inputs, rounded to the 16-bit type where the kernel reads it,
// outputs poisoned first: the row norm ||W + s B A||, the forward's combine,
// the magnitude gradient, the g-scaled dy, and the whole adapted layer's
// forward and backward (with and without dropout).
#include <doctest/doctest.h>
#include <math.h>
#include <string.h>
#include "dora.h"
#include "gpu_test_util.h"
#include "lora.h"

namespace {

// A layer's inputs: x, W, A, B rounded to act16 (the GPU's GEMMs read those);
// m positive around the row norms; bias, dy, a dropout mask.
struct DoraCase {
    LoraShape s;
    std::vector<float> x, W, bias, A, B, m, dy, keep;   // keep empty: no dropout
    const float *mask() const { return keep.empty() ? NULL : keep.data(); }
};

DoraCase make_case(int n, int in_dim, int out_dim, int rank, float dropout, uint64_t seed) {
    DoraCase c;
    c.s = {n, in_dim, out_dim, rank, 2.0f};
    c.x = random_vector((size_t)n * in_dim, seed + 1, 1.0f);
    c.W = random_vector((size_t)out_dim * in_dim, seed + 2, 1.0f / sqrtf((float)in_dim));
    c.bias = random_vector(out_dim, seed + 3, 0.1f);
    c.A = random_vector((size_t)rank * in_dim, seed + 4, 1.0f / sqrtf((float)in_dim));
    c.B = random_vector((size_t)out_dim * rank, seed + 5, 0.3f / sqrtf((float)rank));
    c.dy = random_vector((size_t)n * out_dim, seed + 6, 1.0f);
    std::vector<float> r = random_vector(out_dim, seed + 7, 0.3f);
    c.m.resize(out_dim);
    for (int j = 0; j < out_dim; j++) c.m[j] = 0.6f * (1.0f + r[j]);   // W's rows have norm about 0.6
    round_to_act16(c.x);
    round_to_act16(c.W);
    round_to_act16(c.A);
    round_to_act16(c.B);
    round_to_act16(c.dy);
    if (dropout > 0.0f) {
        c.keep.resize((size_t)n * in_dim);
        lora_dropout_mask(c.keep.data(), c.keep.size(), dropout, seed + 8);
    }
    return c;
}

struct DoraResult {
    std::vector<float> y, w, xa, norm, dx, dA, dB, dm;
};

DoraResult run_cpu(const DoraCase &c) {
    const LoraShape &s = c.s;
    DoraResult r;
    r.y.resize((size_t)s.n * s.out_dim);
    r.w.resize(r.y.size());
    r.xa.resize((size_t)s.n * s.rank);
    r.norm.resize(s.out_dim);
    r.dx.assign(c.x.size(), 0.0f);
    r.dA.assign(c.A.size(), 0.0f);
    r.dB.assign(c.B.size(), 0.0f);
    r.dm.assign(c.m.size(), 0.0f);
    std::vector<float> scratch(dora_scratch_count(s));
    dora_forward_cpu<float>(r.y.data(), r.w.data(), r.xa.data(), r.norm.data(), c.x.data(), c.mask(), c.W.data(),
                            c.bias.data(), c.A.data(), c.B.data(), c.m.data(), s, scratch.data());
    dora_backward_cpu<float>(r.dx.data(), r.dA.data(), r.dB.data(), r.dm.data(), c.dy.data(), c.x.data(), c.mask(),
                             c.W.data(), c.A.data(), c.B.data(), c.m.data(), r.norm.data(), r.xa.data(), r.w.data(), s,
                             scratch.data());
    return r;
}

DoraResult run_gpu(const DoraCase &c) {
    const LoraShape &s = c.s;
    size_t y_count = (size_t)s.n * s.out_dim, xa_count = (size_t)s.n * s.rank;
    act16 *x = upload_act16(c.x, "x"), *W = upload_act16(c.W, "W"), *A16 = upload_act16(c.A, "A16");
    act16 *B16 = upload_act16(c.B, "B16"), *dy = upload_act16(c.dy, "dy");
    float *A32 = upload_floats(c.A, "A32"), *B32 = upload_floats(c.B, "B32"), *m = upload_floats(c.m, "m");
    float *bias = upload_floats(c.bias, "bias");
    float *keep = c.keep.empty() ? NULL : upload_floats(c.keep, "keep");
    act16 *y = (act16 *)gpu_malloc(sizeof(act16) * y_count, "y"), *w = (act16 *)gpu_malloc(sizeof(act16) * y_count, "w");
    act16 *xa = (act16 *)gpu_malloc(sizeof(act16) * xa_count, "xa");
    float *norm = (float *)gpu_malloc(sizeof(float) * s.out_dim, "norm");
    std::vector<float> zeros_x(c.x.size(), 0.0f), zeros_A(c.A.size(), 0.0f), zeros_B(c.B.size(), 0.0f),
        zeros_m(c.m.size(), 0.0f);
    float *dx = upload_floats(zeros_x, "dx"), *dA = upload_floats(zeros_A, "dA"), *dB = upload_floats(zeros_B, "dB");
    float *dm = upload_floats(zeros_m, "dm");
    size_t lora_bytes = lora_scratch_bytes_gpu(s), dora_bytes = dora_scratch_bytes_gpu(s);
    void *lora_scratch = gpu_malloc(lora_bytes, "LoRA scratch"), *dora_scratch = gpu_malloc(dora_bytes, "DoRA scratch");
    gpu_poison(y, sizeof(act16) * y_count);
    gpu_poison(w, sizeof(act16) * y_count);
    gpu_poison(xa, sizeof(act16) * xa_count);
    gpu_poison(norm, sizeof(float) * s.out_dim);
    gpu_poison(lora_scratch, lora_bytes);
    gpu_poison(dora_scratch, dora_bytes);
    dora_forward_gpu(y, w, xa, norm, x, keep, W, bias, A16, B16, A32, B32, m, s, lora_scratch, dora_scratch);
    // backward must not rely on what forward left in the scratch
    gpu_poison(lora_scratch, lora_bytes);
    gpu_poison(dora_scratch, dora_bytes);
    dora_backward_gpu(dx, dA, dB, dm, dy, x, keep, W, A16, B16, m, norm, xa, w, s, lora_scratch, dora_scratch);
    DoraResult r;
    r.y = download_act16(y, y_count);
    r.w = download_act16(w, y_count);
    r.xa = download_act16(xa, xa_count);
    r.norm = download_floats(norm, s.out_dim);
    r.dx = download_floats(dx, c.x.size());
    r.dA = download_floats(dA, c.A.size());
    r.dB = download_floats(dB, c.B.size());
    r.dm = download_floats(dm, c.m.size());
    for (void *p : {(void *)x, (void *)W, (void *)A16, (void *)B16, (void *)dy, (void *)A32, (void *)B32, (void *)m,
                    (void *)bias, (void *)keep, (void *)y, (void *)w, (void *)xa, (void *)norm, (void *)dx,
                    (void *)dA, (void *)dB, (void *)dm, lora_scratch, dora_scratch})
        gpu_free(p);
    return r;
}

}  // namespace

// The row norm reads fp32 A and B and act16 W, sums in fp32 per block: 1e-5
// relative to the CPU's double sum. combine and scale_dy compute in fp32 and
// round their outputs to act16 once: within 2 act16 ulps (2^-7 relative for
// bf16) of each value's magnitude. The magnitude gradient sums n products in
// fp32: 1e-4 relative to the largest.
TEST_CASE("gpu: DoRA's kernels match dora_weight_norm_cpu, dora_combine_cpu, dora_magnitude_grad_cpu, dora_scale_dy_cpu") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    const int shapes[][4] = {{37, 576, 192, 16}, {5, 100, 7, 3}, {64, 300, 1000, 8}};   // n, in, out, rank
    for (const auto &shape : shapes) {
        int n = shape[0], in_dim = shape[1], out_dim = shape[2], rank = shape[3];
        INFO("n " << n << ", in " << in_dim << ", out " << out_dim << ", rank " << rank);
        DoraCase c = make_case(n, in_dim, out_dim, rank, 0.0f, seed);
        size_t y_count = (size_t)n * out_dim;
        // the row norm
        std::vector<float> want_norm(out_dim);
        dora_weight_norm_cpu<float>(want_norm.data(), c.W.data(), c.A.data(), c.B.data(), c.s.scaling, out_dim, in_dim,
                                    rank);
        act16 *W = upload_act16(c.W, "W");
        float *A = upload_floats(c.A, "A"), *B = upload_floats(c.B, "B");
        float *norm = (float *)gpu_malloc(sizeof(float) * out_dim, "norm");
        gpu_poison(norm, sizeof(float) * out_dim);
        dora_weight_norm_gpu(norm, W, A, B, c.s.scaling, out_dim, in_dim, rank);
        std::vector<float> got_norm = download_floats(norm, out_dim);
        CHECK(max_relative_error(got_norm.data(), want_norm.data(), out_dim) < 1e-5);
        // combine: y = y + (g - 1) u + g v + b; w = u + v, with u apart and u = y
        std::vector<float> y0 = random_vector(y_count, seed + 11, 1.0f), u = random_vector(y_count, seed + 12, 1.0f),
                           v = random_vector(y_count, seed + 13, 1.0f);
        round_to_act16(y0);
        round_to_act16(u);
        round_to_act16(v);
        float *m = upload_floats(c.m, "m"), *bias = upload_floats(c.bias, "bias");
        for (int aliased = 0; aliased < 2; aliased++) {
            INFO("u is y: " << aliased);
            std::vector<float> want_y = aliased ? u : y0, want_w = v;
            dora_combine_cpu<float>(want_y.data(), want_w.data(), aliased ? want_y.data() : u.data(), c.m.data(),
                                    want_norm.data(), c.bias.data(), n, out_dim);
            act16 *y = upload_act16(aliased ? u : y0, "y"), *w = upload_act16(v, "w"), *du = upload_act16(u, "u");
            dora_combine_gpu(y, w, aliased ? y : du, m, norm, bias, n, out_dim);
            std::vector<float> got_y = download_act16(y, y_count), got_w = download_act16(w, y_count);
            CHECK(max_relative_error(got_y.data(), want_y.data(), y_count) < 2e-2);
            CHECK(max_relative_error(got_w.data(), want_w.data(), y_count) < 2e-2);
            gpu_free(y); gpu_free(w); gpu_free(du);
        }
        // the magnitude gradient, added to what dm held
        std::vector<float> dm0 = random_vector(out_dim, seed + 14, 1.0f), want_dm = dm0;
        dora_magnitude_grad_cpu<float>(want_dm.data(), c.dy.data(), u.data(), want_norm.data(), n, out_dim);
        act16 *dy = upload_act16(c.dy, "dy"), *du = upload_act16(u, "u");
        float *dm = upload_floats(dm0, "dm");
        dora_magnitude_grad_gpu(dm, dy, du, norm, n, out_dim);
        std::vector<float> got_dm = download_floats(dm, out_dim);
        CHECK(max_relative_error(got_dm.data(), want_dm.data(), out_dim) < 1e-4);
        // (g + offset) dy
        for (float offset : {0.0f, -1.0f}) {
            INFO("offset " << offset);
            std::vector<float> want(y_count);
            dora_scale_dy_cpu<float>(want.data(), c.dy.data(), c.m.data(), want_norm.data(), offset, n, out_dim);
            act16 *out = (act16 *)gpu_malloc(sizeof(act16) * y_count, "scaled dy");
            gpu_poison(out, sizeof(act16) * y_count);
            dora_scale_dy_gpu(out, dy, m, norm, offset, n, out_dim);
            std::vector<float> got = download_act16(out, y_count);
            CHECK(max_relative_error(got.data(), want.data(), y_count) < 2e-2);
            gpu_free(out);
        }
        gpu_free(W); gpu_free(A); gpu_free(B); gpu_free(norm); gpu_free(m); gpu_free(bias);
        gpu_free(dy); gpu_free(du); gpu_free(dm);
        seed += 100;
    }
}

// The whole layer: as LoRA's layer test (test_gpu_lora.cu), x W^T, x_d,
// xa and w are rounded to act16 and the dy products go through bf16 GEMMs:
// 2e-2 relative to each tensor's largest value for y, w, xa, and 3e-2 for
// the gradients (one more bf16 rounding: g dy). The norm reads the same
// values as the CPU's: 1e-5. A wrong index, transpose, scale, mask or a lost
// term (the (g - 1) x_d W^T of dropout) gives O(1) errors.
TEST_CASE("gpu: DoRA's layer forward and backward match dora_forward_cpu / dora_backward_cpu") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    const int shapes[][4] = {{37, 576, 192, 16}, {64, 300, 576, 8}, {5, 100, 7, 3}};   // n, in, out, rank
    for (const auto &shape : shapes) {
        for (float dropout : {0.0f, 0.1f}) {
            INFO("n " << shape[0] << ", in " << shape[1] << ", out " << shape[2] << ", rank " << shape[3]
                      << ", dropout " << dropout);
            DoraCase c = make_case(shape[0], shape[1], shape[2], shape[3], dropout, seed);
            DoraResult want = run_cpu(c), got = run_gpu(c);
            CHECK(max_relative_error(got.norm.data(), want.norm.data(), want.norm.size()) < 1e-5);
            CHECK(max_relative_error(got.y.data(), want.y.data(), want.y.size()) < 2e-2);
            CHECK(max_relative_error(got.w.data(), want.w.data(), want.w.size()) < 2e-2);
            CHECK(max_relative_error(got.xa.data(), want.xa.data(), want.xa.size()) < 2e-2);
            CHECK(max_relative_error(got.dx.data(), want.dx.data(), want.dx.size()) < 3e-2);
            CHECK(max_relative_error(got.dA.data(), want.dA.data(), want.dA.size()) < 3e-2);
            CHECK(max_relative_error(got.dB.data(), want.dB.data(), want.dB.size()) < 3e-2);
            CHECK(max_relative_error(got.dm.data(), want.dm.data(), want.dm.size()) < 3e-2);
            seed += 100;
        }
    }
}
