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

// ---- an input group's adapters together (q|k|v, gate|up) -----------------------

namespace {

// The adapters of one input group on a shared input: A stacked [count * rank, in]
// as the flat layout keeps it, each one's B, dy and pre-filled accumulators; one
// dropout mask for all (keep empty: no dropout).
struct GroupCase {
    LoraGroupShape s;
    std::vector<float> x, A, keep, dx0, dA0;
    std::vector<std::vector<float>> B, dy, y0, dB0;
};

// Outputs of the group: y_t, xa [n, count * rank] (xa_t in columns t rank ..), dx, dA stacked, dB_t.
struct GroupResult {
    std::vector<std::vector<float>> y, dB;
    std::vector<float> xa, dx, dA;
};

LoraShape member_shape(const LoraGroupShape &s, int t) {
    LoraShape one = {s.n, s.in_dim, s.out_dim[t], s.rank, s.scaling};
    return one;
}

size_t a_count(const LoraGroupShape &s) { return (size_t)s.rank * s.in_dim; }

// The textbook: each adapter alone through lora_forward_cpu / lora_backward_cpu on the shared mask.
GroupResult group_cpu(const GroupCase &c) {
    const LoraGroupShape &s = c.s;
    const float *keep = c.keep.empty() ? NULL : c.keep.data();
    int width = s.count * s.rank;
    GroupResult r = {c.y0, c.dB0, std::vector<float>((size_t)s.n * width), c.dx0, c.dA0};
    for (int t = 0; t < s.count; t++) {
        LoraShape one = member_shape(s, t);
        std::vector<float> xa((size_t)s.n * s.rank), scratch((size_t)s.n * (s.rank + s.in_dim + one.out_dim));
        const float *A = c.A.data() + t * a_count(s);
        lora_forward_cpu<float>(r.y[t].data(), c.x.data(), keep, A, c.B[t].data(), one, xa.data(), scratch.data());
        lora_backward_cpu<float>(r.dx.data(), r.dA.data() + t * a_count(s), r.dB[t].data(), c.dy[t].data(),
                                 c.x.data(), keep, A, c.B[t].data(), xa.data(), one, scratch.data());
        for (int i = 0; i < s.n; i++)
            for (int k = 0; k < s.rank; k++) r.xa[(size_t)i * width + t * s.rank + k] = xa[(size_t)i * s.rank + k];
    }
    return r;
}

GroupCase make_group_case(int n, int in_dim, std::vector<int> outs, int rank, float dropout, uint64_t seed) {
    GroupCase c;
    int count = (int)outs.size();
    c.s = {n, in_dim, rank, count, {0}, 2.0f};
    for (int t = 0; t < count; t++) c.s.out_dim[t] = outs[t];
    size_t x_count = (size_t)n * in_dim;
    c.x = random_vector(x_count, seed + 1, 1.0f);
    c.A = random_vector(count * a_count(c.s), seed + 2, 1.0f / sqrtf((float)in_dim));
    round_to_act16(c.x);
    round_to_act16(c.A);
    for (int t = 0; t < count; t++) {
        c.B.push_back(random_vector((size_t)outs[t] * rank, seed + 10 + t, 1.0f / sqrtf((float)rank)));
        c.dy.push_back(random_vector((size_t)n * outs[t], seed + 20 + t, 1.0f));
        round_to_act16(c.B[t]);
        round_to_act16(c.dy[t]);
        c.y0.push_back(std::vector<float>((size_t)n * outs[t], 0.0f));
        c.dB0.push_back(std::vector<float>((size_t)outs[t] * rank, 0.0f));
    }
    if (dropout > 0.0f) {
        c.keep.resize(x_count);
        lora_dropout_mask(c.keep.data(), x_count, dropout, seed + 9);
    }
    c.dx0.assign(x_count, 0.0f);
    c.dA0.assign(count * a_count(c.s), 0.0f);
    // accumulators pre-filled at the size of what is added (as make_case above)
    GroupResult added = group_cpu(c);
    for (int t = 0; t < count; t++) {
        c.y0[t] = random_vector(c.y0[t].size(), seed + 30 + t, max_abs(added.y[t]));
        round_to_act16(c.y0[t]);
        c.dB0[t] = random_vector(c.dB0[t].size(), seed + 40 + t, max_abs(added.dB[t]));
    }
    c.dx0 = random_vector(x_count, seed + 6, max_abs(added.dx));
    c.dA0 = random_vector(c.dA0.size(), seed + 7, max_abs(added.dA));
    return c;
}

// The device copies of a group case's inputs and accumulators.
struct GroupDevice {
    act16 *x, *A, *B[LINEAR_GROUP_MAX], *dy[LINEAR_GROUP_MAX], *y[LINEAR_GROUP_MAX];
    float *keep, *dx, *dA, *dB[LINEAR_GROUP_MAX];
    explicit GroupDevice(const GroupCase &c) {
        x = upload_act16(c.x, "x");
        A = upload_act16(c.A, "A");
        keep = c.keep.empty() ? NULL : upload_floats(c.keep, "keep");
        dx = upload_floats(c.dx0, "dx");
        dA = upload_floats(c.dA0, "dA");
        for (int t = 0; t < c.s.count; t++) {
            B[t] = upload_act16(c.B[t], "B");
            dy[t] = upload_act16(c.dy[t], "dy");
            y[t] = upload_act16(c.y0[t], "y");
            dB[t] = upload_floats(c.dB0[t], "dB");
        }
    }
    GroupResult download(const GroupCase &c, std::vector<float> xa) const {
        GroupResult r;
        for (int t = 0; t < c.s.count; t++) {
            r.y.push_back(download_act16(y[t], c.y0[t].size()));
            r.dB.push_back(download_floats(dB[t], c.dB0[t].size()));
        }
        r.xa = xa;
        r.dx = download_floats(dx, c.dx0.size());
        r.dA = download_floats(dA, c.dA0.size());
        return r;
    }
    void free_all(int count) {
        gpu_free(x); gpu_free(A); gpu_free(keep); gpu_free(dx); gpu_free(dA);
        for (int t = 0; t < count; t++) { gpu_free(B[t]); gpu_free(dy[t]); gpu_free(y[t]); gpu_free(dB[t]); }
    }
};

// lora_group_forward_gpu and lora_group_backward_gpu on the group (dx NULL when with_dx is 0).
GroupResult group_gpu(const GroupCase &c, int with_dx) {
    const LoraGroupShape &s = c.s;
    GroupDevice d(c);
    size_t xa_count = (size_t)s.n * s.count * s.rank, scratch_bytes = lora_group_scratch_bytes_gpu(s);
    act16 *xa = (act16 *)gpu_malloc(sizeof(act16) * xa_count, "xa");
    void *scratch = gpu_malloc(scratch_bytes, "scratch");
    gpu_poison(xa, sizeof(act16) * xa_count);
    gpu_poison(scratch, scratch_bytes);
    lora_group_forward_gpu(d.y, xa, d.x, d.keep, d.A, d.B, s, scratch);
    gpu_poison(scratch, scratch_bytes);
    lora_group_backward_gpu(with_dx ? d.dx : NULL, d.dA, d.dB, d.dy, d.x, d.keep, d.A, d.B, xa, s, scratch);
    GroupResult r = d.download(c, download_act16(xa, xa_count));
    d.free_all(s.count);
    gpu_free(xa);
    gpu_free(scratch);
    return r;
}

// The same adapters one at a time through lora_forward_gpu / lora_backward_gpu, on views of the stacked A and dA.
GroupResult one_at_a_time_gpu(const GroupCase &c) {
    const LoraGroupShape &s = c.s;
    GroupDevice d(c);
    int width = s.count * s.rank;
    std::vector<float> xa_all((size_t)s.n * width);
    for (int t = 0; t < s.count; t++) {
        LoraShape one = member_shape(s, t);
        act16 *xa = (act16 *)gpu_malloc(sizeof(act16) * s.n * s.rank, "xa");
        void *scratch = gpu_malloc(lora_scratch_bytes_gpu(one), "scratch");
        lora_forward_gpu(d.y[t], xa, d.x, d.keep, d.A + t * a_count(s), d.B[t], one, scratch);
        lora_backward_gpu(d.dx, d.dA + t * a_count(s), d.dB[t], d.dy[t], d.x, d.keep, d.A + t * a_count(s), d.B[t], xa,
                          one, scratch);
        std::vector<float> xa_t = download_act16(xa, (size_t)s.n * s.rank);
        for (int i = 0; i < s.n; i++)
            for (int k = 0; k < s.rank; k++) xa_all[(size_t)i * width + t * s.rank + k] = xa_t[(size_t)i * s.rank + k];
        gpu_free(xa);
        gpu_free(scratch);
    }
    GroupResult r = d.download(c, xa_all);
    d.free_all(s.count);
    return r;
}

// Every output of got against want: act16 ones (y, xa) within act16_tol, fp32 gradients within grad_tol
// (relative to each tensor's largest value); dx only when with_dx.
void check_group(const GroupResult &got, const GroupResult &want, double act16_tol, double grad_tol, int with_dx) {
    for (size_t t = 0; t < want.y.size(); t++) {
        INFO("adapter " << t << " of the group");
        CHECK(max_relative_error(got.y[t].data(), want.y[t].data(), want.y[t].size()) < act16_tol);
        CHECK(max_relative_error(got.dB[t].data(), want.dB[t].data(), want.dB[t].size()) < grad_tol);
    }
    CHECK(max_relative_error(got.xa.data(), want.xa.data(), want.xa.size()) < act16_tol);
    CHECK(max_relative_error(got.dA.data(), want.dA.data(), want.dA.size()) < grad_tol);
    if (with_dx) CHECK(max_relative_error(got.dx.data(), want.dx.data(), want.dx.size()) < grad_tol);
}

}  // namespace

// The trainer's input groups: q|k|v with GQA's narrower k and v, gate|up, a subset
// (--targets q,v: two adapters of the three), and a group of one. Against the CPU
// references, the tolerances of the single-adapter test above; against the same
// adapters one at a time on the GPU, which round the same values to act16 (xa and
// d_xa identical, dx summed in another order in fp32), one act16 rounding step for
// y and xa and 1e-3 for the fp32 gradients. A wrong column slice, leading dimension
// or stacking offset gives O(1) errors.
TEST_CASE("gpu: an input group's adapters fused (one A GEMM each way) equal them one at a time and the CPU") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    struct Shape { int n, in_dim; std::vector<int> outs; int rank; };
    const Shape shapes[] = {{37, 96, {96, 32, 32}, 8}, {20, 64, {176, 176}, 4}, {5, 40, {40, 8}, 3}, {9, 24, {56}, 2}};
    for (const Shape &shape : shapes) {
        for (float dropout : {0.0f, 0.1f}) {
            INFO("n " << shape.n << ", in " << shape.in_dim << ", adapters " << shape.outs.size() << ", rank "
                      << shape.rank << ", dropout " << dropout);
            GroupCase c = make_group_case(shape.n, shape.in_dim, shape.outs, shape.rank, dropout, seed);
            GroupResult want = group_cpu(c), fused = group_gpu(c, 1);
            check_group(fused, want, 1e-2, 2e-2, 1);
            check_group(fused, one_at_a_time_gpu(c), 8e-3, 1e-3, 1);
            GroupResult without_dx = group_gpu(c, 0);   // dA, dB as with dx, dx untouched
            check_group(without_dx, want, 1e-2, 2e-2, 0);
            CHECK(without_dx.dx == c.dx0);
            seed += 100;
        }
    }
}
