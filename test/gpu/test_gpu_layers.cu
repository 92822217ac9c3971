// test_gpu_layers.cu: each ops/layers.cu kernel against its CPU reference (the
// float instantiation), on fresh random inputs at several shapes, including
// widths that are not multiples of the block size.
//
// Tolerances (max_relative_error: largest difference over largest reference value):
//   bf16 outputs: 1e-2 (the output rounding alone is up to 2^-9 of each value);
//   fp32 outputs of fp32 math: 1e-5 (only the order of the sums differs);
//   fp32 GEMM outputs from bf16 inputs: 2e-3 (identical inputs, only the
//   accumulation order differs); embedding and residual add: exact.
#include <doctest/doctest.h>
#include <math.h>
#include <vector>
#include "gpu_test_util.h"
#include "ops/layers.h"

static const double bf16_tolerance = 1e-2;
static const double fp32_tolerance = 1e-5;
static const double gemm_fp32_tolerance = 2e-3;

// n integers uniform in [0, limit).
static std::vector<int> random_ints(size_t n, uint64_t seed, int limit) {
    std::vector<float> u = random_vector(n, seed, 1.0f);
    std::vector<int> out(n);
    for (size_t i = 0; i < n; i++) {
        int v = (int)((u[i] + 1.0f) * 0.5f * (float)limit);
        out[i] = v < limit ? v : limit - 1;
    }
    return out;
}

static int *upload_ints(const std::vector<int> &x, const char *what) {
    int *d = (int *)gpu_malloc(sizeof(int) * x.size(), what);
    gpu_upload(d, x.data(), sizeof(int) * x.size());
    return d;
}

// Adds offset to every value (random weights around 1 for the norms).
static std::vector<float> shifted(std::vector<float> x, float offset) {
    for (float &v : x) v += offset;
    return x;
}

TEST_CASE("gpu: embedding_gpu copies the token rows exactly") {
    struct Shape { int n, dim, vocab; };
    const Shape shapes[] = {{7, 576, 1000}, {33, 100, 50}, {1, 1, 3}};
    for (const Shape &s : shapes) {
        uint64_t seed = fresh_seed();
        INFO("seed " << seed << ", n " << s.n << ", dim " << s.dim);
        std::vector<float> table = random_vector((size_t)s.vocab * s.dim, seed, 3.0f);
        round_to_act16(table);
        std::vector<int> tokens = random_ints(s.n, seed + 1, s.vocab);
        act16 *d_table = upload_act16(table, "table");
        int *d_tokens = upload_ints(tokens, "tokens");
        float *d_out = (float *)gpu_malloc(sizeof(float) * s.n * s.dim, "out");
        gpu_poison(d_out, sizeof(float) * s.n * s.dim);
        embedding_gpu(d_out, d_table, d_tokens, s.n, s.dim);
        std::vector<float> got = download_floats(d_out, (size_t)s.n * s.dim);
        size_t mismatches = 0;
        for (int t = 0; t < s.n; t++)
            for (int j = 0; j < s.dim; j++)
                mismatches += got[(size_t)t * s.dim + j] != table[(size_t)tokens[t] * s.dim + j];
        CHECK(mismatches == 0);
        gpu_free(d_table);
        gpu_free(d_tokens);
        gpu_free(d_out);
    }
}

struct RowShape { int n, dim; };
static const RowShape row_shapes[] = {{7, 576}, {5, 100}, {4, 1536}, {3, 31}};

TEST_CASE("gpu: rmsnorm_gpu matches rmsnorm_cpu (bf16 output)") {
    const float eps = 1e-5f;
    for (const RowShape &s : row_shapes) {
        uint64_t seed = fresh_seed();
        INFO("seed " << seed << ", n " << s.n << ", dim " << s.dim);
        size_t size = (size_t)s.n * s.dim;
        std::vector<float> x = random_vector(size, seed, 2.0f);
        std::vector<float> weight = shifted(random_vector(s.dim, seed + 1, 0.5f), 1.0f);
        std::vector<float> want(size);
        rmsnorm_cpu<float>(want.data(), x.data(), weight.data(), s.n, s.dim, eps);

        float *d_x = upload_floats(x, "x"), *d_weight = upload_floats(weight, "weight");
        act16 *d_out = (act16 *)gpu_malloc(sizeof(act16) * size, "out");
        gpu_poison(d_out, sizeof(act16) * size);
        rmsnorm_gpu(d_out, d_x, d_weight, s.n, s.dim, eps);
        std::vector<float> got = download_act16(d_out, size);
        CHECK(max_relative_error(got.data(), want.data(), size) < bf16_tolerance);
        gpu_free(d_x);
        gpu_free(d_weight);
        gpu_free(d_out);
    }
}

TEST_CASE("gpu: rmsnorm_backward_gpu accumulates what rmsnorm_backward_cpu does (fp32)") {
    const float eps = 1e-5f;
    for (const RowShape &s : row_shapes) {
        uint64_t seed = fresh_seed();
        INFO("seed " << seed << ", n " << s.n << ", dim " << s.dim);
        size_t size = (size_t)s.n * s.dim;
        std::vector<float> x = random_vector(size, seed, 2.0f);
        std::vector<float> weight = shifted(random_vector(s.dim, seed + 1, 0.5f), 1.0f);
        std::vector<float> d_out = random_vector(size, seed + 2, 1.0f);
        std::vector<float> want = random_vector(size, seed + 3, 1.0f);   // the earlier gradient, on both sides
        float *d_dx = upload_floats(want, "d_x");
        rmsnorm_backward_cpu<float>(want.data(), d_out.data(), x.data(), weight.data(), s.n, s.dim, eps);

        float *d_x = upload_floats(x, "x"), *d_weight = upload_floats(weight, "weight");
        float *d_dout = upload_floats(d_out, "d_out");
        rmsnorm_backward_gpu(d_dx, d_dout, d_x, d_weight, s.n, s.dim, eps);
        std::vector<float> got = download_floats(d_dx, size);
        CHECK(max_relative_error(got.data(), want.data(), size) < fp32_tolerance);
        gpu_free(d_dx);
        gpu_free(d_x);
        gpu_free(d_weight);
        gpu_free(d_dout);
    }
}

TEST_CASE("gpu: rope_gpu and rope_backward_gpu match rope_cpu and rope_backward_cpu (bf16)") {
    struct Shape { int n, n_heads, head_dim; };
    const Shape shapes[] = {{7, 9, 64}, {5, 3, 128}, {37, 3, 64}, {3, 1, 2}};
    for (const Shape &s : shapes) {
        for (int backward = 0; backward < 2; backward++) {
            uint64_t seed = fresh_seed();
            INFO("seed " << seed << ", n " << s.n << ", heads " << s.n_heads << ", head_dim " << s.head_dim
                         << (backward ? ", backward" : ", forward"));
            size_t size = (size_t)s.n * s.n_heads * s.head_dim;
            std::vector<float> x = random_vector(size, seed, 2.0f);
            round_to_act16(x);
            std::vector<int> positions = random_ints(s.n, seed + 1, 8192);
            // inv_freq[i] = theta^(-2i/head_dim), theta = 10000
            std::vector<float> inv_freq(s.head_dim / 2);
            for (int i = 0; i < s.head_dim / 2; i++) inv_freq[i] = 1.0f / powf(10000.0f, (float)(2 * i) / s.head_dim);

            act16 *d_x = upload_act16(x, "x");
            int *d_positions = upload_ints(positions, "positions");
            float *d_inv_freq = upload_floats(inv_freq, "inv_freq");
            std::vector<float> want = x;
            if (backward) {
                rope_backward_cpu<float>(want.data(), positions.data(), inv_freq.data(), s.n, s.n_heads, s.head_dim);
                rope_backward_gpu(d_x, d_positions, d_inv_freq, s.n, s.n_heads, s.head_dim);
            } else {
                rope_cpu<float>(want.data(), positions.data(), inv_freq.data(), s.n, s.n_heads, s.head_dim);
                rope_gpu(d_x, d_positions, d_inv_freq, s.n, s.n_heads, s.head_dim);
            }
            std::vector<float> got = download_act16(d_x, size);
            CHECK(max_relative_error(got.data(), want.data(), size) < bf16_tolerance);
            gpu_free(d_x);
            gpu_free(d_positions);
            gpu_free(d_inv_freq);
        }
    }
}

static const size_t elementwise_sizes[] = {1, 255, 7 * 1536, 100003};

TEST_CASE("gpu: swiglu_gpu matches swiglu_cpu (bf16)") {
    for (size_t n : elementwise_sizes) {
        uint64_t seed = fresh_seed();
        INFO("seed " << seed << ", n " << n);
        std::vector<float> gate = random_vector(n, seed, 6.0f), up = random_vector(n, seed + 1, 2.0f);
        round_to_act16(gate);
        round_to_act16(up);
        std::vector<float> want(n);
        swiglu_cpu<float>(want.data(), gate.data(), up.data(), n);

        act16 *d_gate = upload_act16(gate, "gate"), *d_up = upload_act16(up, "up");
        act16 *d_out = (act16 *)gpu_malloc(sizeof(act16) * n, "out");
        gpu_poison(d_out, sizeof(act16) * n);
        swiglu_gpu(d_out, d_gate, d_up, n);
        std::vector<float> got = download_act16(d_out, n);
        CHECK(max_relative_error(got.data(), want.data(), n) < bf16_tolerance);
        gpu_free(d_gate);
        gpu_free(d_up);
        gpu_free(d_out);
    }
}

TEST_CASE("gpu: swiglu_backward_gpu writes what swiglu_backward_cpu adds to zero (bf16)") {
    for (size_t n : elementwise_sizes) {
        uint64_t seed = fresh_seed();
        INFO("seed " << seed << ", n " << n);
        std::vector<float> gate = random_vector(n, seed, 6.0f), up = random_vector(n, seed + 1, 2.0f);
        std::vector<float> d_out = random_vector(n, seed + 2, 1.0f);
        round_to_act16(gate);
        round_to_act16(up);
        round_to_act16(d_out);
        // the CPU function accumulates; the GPU one overwrites
        std::vector<float> want_d_gate(n, 0.0f), want_d_up(n, 0.0f);
        swiglu_backward_cpu<float>(want_d_gate.data(), want_d_up.data(), d_out.data(), gate.data(), up.data(), n);

        act16 *d_gate = upload_act16(gate, "gate"), *d_up = upload_act16(up, "up"), *d_dout = upload_act16(d_out, "d_out");
        act16 *d_dgate = (act16 *)gpu_malloc(sizeof(act16) * n, "d_gate");
        act16 *d_dup = (act16 *)gpu_malloc(sizeof(act16) * n, "d_up");
        gpu_poison(d_dgate, sizeof(act16) * n);
        gpu_poison(d_dup, sizeof(act16) * n);
        swiglu_backward_gpu(d_dgate, d_dup, d_dout, d_gate, d_up, n);
        std::vector<float> got_d_gate = download_act16(d_dgate, n), got_d_up = download_act16(d_dup, n);
        CHECK(max_relative_error(got_d_gate.data(), want_d_gate.data(), n) < bf16_tolerance);
        CHECK(max_relative_error(got_d_up.data(), want_d_up.data(), n) < bf16_tolerance);
        gpu_free(d_gate);
        gpu_free(d_up);
        gpu_free(d_dout);
        gpu_free(d_dgate);
        gpu_free(d_dup);
    }
}

TEST_CASE("gpu: residual_add_gpu adds bf16 to fp32 exactly as residual_add_cpu") {
    for (size_t n : elementwise_sizes) {
        uint64_t seed = fresh_seed();
        INFO("seed " << seed << ", n " << n);
        std::vector<float> x = random_vector(n, seed, 3.0f), y = random_vector(n, seed + 1, 1.0f);
        round_to_act16(y);
        float *d_x = upload_floats(x, "x");
        act16 *d_y = upload_act16(y, "y");
        residual_add_cpu<float>(x.data(), y.data(), n);
        residual_add_gpu(d_x, d_y, n);
        std::vector<float> got = download_floats(d_x, n);
        size_t mismatches = 0;
        for (size_t i = 0; i < n; i++) mismatches += got[i] != x[i];
        CHECK(mismatches == 0);
        gpu_free(d_x);
        gpu_free(d_y);
    }
}

struct GemmShape { int n, in_dim, out_dim; };
static const GemmShape gemm_shapes[] = {{37, 576, 192}, {64, 1536, 576}, {1, 100, 7}, {5, 49, 33}};

TEST_CASE("gpu: matmul_gpu matches matmul_cpu (bf16 output, with and without bias)") {
    for (const GemmShape &s : gemm_shapes) {
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            uint64_t seed = fresh_seed();
            INFO("seed " << seed << ", n " << s.n << ", in " << s.in_dim << ", out " << s.out_dim
                         << (with_bias ? ", bias" : ", no bias"));
            size_t out_size = (size_t)s.n * s.out_dim;
            std::vector<float> in = random_vector((size_t)s.n * s.in_dim, seed, 1.0f);
            std::vector<float> weight = random_vector((size_t)s.out_dim * s.in_dim, seed + 1, 0.1f);
            std::vector<float> bias = random_vector(s.out_dim, seed + 2, 0.5f);
            round_to_act16(in);
            round_to_act16(weight);
            std::vector<float> want(out_size);
            matmul_cpu<float>(want.data(), in.data(), weight.data(), with_bias ? bias.data() : NULL, s.n, s.in_dim,
                              s.out_dim);

            act16 *d_in = upload_act16(in, "in"), *d_weight = upload_act16(weight, "weight");
            float *d_bias = upload_floats(bias, "bias");
            act16 *d_out = (act16 *)gpu_malloc(sizeof(act16) * out_size, "out");
            gpu_poison(d_out, sizeof(act16) * out_size);
            matmul_gpu(d_out, d_in, d_weight, with_bias ? d_bias : NULL, s.n, s.in_dim, s.out_dim);
            std::vector<float> got = download_act16(d_out, out_size);
            CHECK(max_relative_error(got.data(), want.data(), out_size) < bf16_tolerance);
            gpu_free(d_in);
            gpu_free(d_weight);
            gpu_free(d_bias);
            gpu_free(d_out);
        }
    }
}

TEST_CASE("gpu: matmul_backward_input_gpu accumulates what matmul_backward_input_cpu does (fp32)") {
    for (const GemmShape &s : gemm_shapes) {
        uint64_t seed = fresh_seed();
        INFO("seed " << seed << ", n " << s.n << ", in " << s.in_dim << ", out " << s.out_dim);
        size_t in_size = (size_t)s.n * s.in_dim;
        std::vector<float> d_out = random_vector((size_t)s.n * s.out_dim, seed, 1.0f);
        std::vector<float> weight = random_vector((size_t)s.out_dim * s.in_dim, seed + 1, 0.1f);
        round_to_act16(d_out);
        round_to_act16(weight);
        std::vector<float> want = random_vector(in_size, seed + 2, 1.0f);   // the earlier gradient, on both sides
        float *d_din = upload_floats(want, "d_in");
        matmul_backward_input_cpu<float>(want.data(), d_out.data(), weight.data(), s.n, s.in_dim, s.out_dim);

        act16 *d_dout = upload_act16(d_out, "d_out"), *d_weight = upload_act16(weight, "weight");
        matmul_backward_input_gpu(d_din, d_dout, d_weight, s.n, s.in_dim, s.out_dim);
        std::vector<float> got = download_floats(d_din, in_size);
        CHECK(max_relative_error(got.data(), want.data(), in_size) < gemm_fp32_tolerance);
        gpu_free(d_din);
        gpu_free(d_dout);
        gpu_free(d_weight);
    }
}
