// test_gpu_adamw.cu: the optimizer kernels against adamw.cu's CPU
// references: the AdamW step, the sum of squares (for the gradient norm) and
// the gradient scaling.
#include <doctest/doctest.h>
#include <math.h>
#include <string.h>
#include "adamw.h"
#include "gpu_test_util.h"

// Largest |got - want| / |want| over the elements where they differ.
static double max_elementwise_relative_error(const float *got, const float *want, size_t n) {
    double largest = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        if (got[i] == want[i]) continue;
        largest = fmax(largest, fabs((double)got[i] - (double)want[i]) / fabs((double)want[i]));
    }
    return largest;
}

// Tolerance 1e-6 relative: the same float formula on both sides, which may
// differ by an ulp or two where one compiler fuses a multiply-add and the
// other does not. params and m are compared relative to the tensor's largest
// value (m can cancel to near zero when g changes sign; so can p - update),
// v element by element (a sum of non-negative terms: no cancellation).
// Three steps on n parameters, the first numbered first_step + 1 (m and v start at 0).
static void check_adamw_steps(size_t n, float weight_decay, int64_t first_step) {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed << ", n " << n << ", weight decay " << weight_decay << ", first step " << first_step + 1);
    AdamWConfig c = adamw_default_config();
    c.weight_decay = weight_decay;
    AdamWState cpu;
    REQUIRE(adamw_init(&cpu, n) == 0);
    cpu.step = first_step;
    std::vector<float> params = random_vector(n, seed, 1.0f);
    float *d_params = upload_floats(params, "params");
    float *d_m = upload_floats(std::vector<float>(n, 0.0f), "m");
    float *d_v = upload_floats(std::vector<float>(n, 0.0f), "v");
    // large learning rates, so that the update is a visible part of p
    const float lrs[] = {0.05f, 0.03f, 0.01f};
    for (int step = 0; step < 3; step++) {
        INFO("step " << cpu.step + 1);
        std::vector<float> grads = random_vector(n, seed + 1 + step, 1.0f);
        // one parameter has no larger one to measure its error against: g of the
        // sign opposite to p's, so that m never cancels and p moves away from 0
        if (n == 1) grads[0] = params[0] > 0.0f ? -fabsf(grads[0]) : fabsf(grads[0]);
        float *d_grads = upload_floats(grads, "grads");
        adamw_step_cpu(params.data(), grads.data(), &cpu, &c, lrs[step]);
        adamw_step_gpu(d_params, d_grads, d_m, d_v, n, cpu.step, &c, lrs[step]);
        gpu_free(d_grads);
        std::vector<float> got_params = download_floats(d_params, n);
        std::vector<float> got_m = download_floats(d_m, n), got_v = download_floats(d_v, n);
        CHECK(max_relative_error(got_params.data(), params.data(), n) < 1e-6);
        CHECK(max_relative_error(got_m.data(), cpu.m, n) < 1e-6);
        CHECK(max_elementwise_relative_error(got_v.data(), cpu.v, n) < 1e-6);
    }
    gpu_free(d_params);
    gpu_free(d_m);
    gpu_free(d_v);
    adamw_free(&cpu);
}

TEST_CASE("gpu: AdamW steps match adamw_step_cpu") {
    const size_t counts[] = {1, 255, 257, 100003};   // one element; a block less one; one more; many blocks
    for (size_t n : counts) check_adamw_steps(n, 0.1f, 0);
    // no weight decay (decay factor exactly 1), steps 998-1000: 1 - b1^t = 1 to
    // float precision, sqrt(1 - b2^t) about 0.8
    check_adamw_steps(100003, 0.0f, 997);
}

// Tolerance 1e-12 relative: every square is exact in double, and both sums
// (serial on the CPU, a tree on the GPU) round about n times at 1.1e-16.
TEST_CASE("gpu: sum_squares_gpu matches a double sum and is the same on every run") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    const size_t counts[] = {1, 255, 257, 262145, 1000003, 5000011};   // up to more than one pass of the grid
    for (size_t n : counts) {
        INFO("n " << n);
        std::vector<float> x = random_vector(n, seed + n, 3.0f);
        double want = 0.0;
        for (size_t i = 0; i < n; i++) want += (double)x[i] * (double)x[i];
        float *d_x = upload_floats(x, "x");
        size_t workspace_bytes = sum_squares_workspace_bytes(n);
        void *workspace = gpu_malloc(workspace_bytes, "sum of squares workspace");
        gpu_poison(workspace, workspace_bytes);
        size_t mallocs = gpu_malloc_count();
        double first = sum_squares_gpu(d_x, n, workspace, workspace_bytes);
        double second = sum_squares_gpu(d_x, n, workspace, workspace_bytes);
        CHECK(gpu_malloc_count() == mallocs);   // the block sums are in the workspace
        gpu_free(workspace);
        gpu_free(d_x);
        CHECK(fabs(first - want) <= 1e-12 * want);
        CHECK(memcmp(&first, &second, sizeof(double)) == 0);
    }
    CHECK(sum_squares_gpu(NULL, 0, NULL, 0) == 0.0);
    // the block sums and the total: one block for up to 256 values, at most 1024 blocks
    CHECK(sum_squares_workspace_bytes(1) == 2 * sizeof(double));
    CHECK(sum_squares_workspace_bytes(257) == 3 * sizeof(double));
    CHECK(sum_squares_workspace_bytes(5000011) == 1025 * sizeof(double));
}

TEST_CASE("gpu: scale_gpu multiplies exactly as the CPU") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    const size_t counts[] = {1, 255, 257, 100003};   // one element; a block less one; one more; many blocks
    for (size_t n : counts) {
        INFO("n " << n);
        std::vector<float> x = random_vector(n, seed + n, 10.0f);
        float *d_x = upload_floats(x, "x");
        float scale = 0.37f;
        scale_gpu(d_x, n, scale);
        std::vector<float> got = download_floats(d_x, n);
        gpu_free(d_x);
        // x[i] *= scale, one IEEE multiply on each side: bitwise equal
        size_t mismatches = 0;
        for (size_t i = 0; i < n; i++) mismatches += got[i] != x[i] * scale;
        CHECK(mismatches == 0);
    }
}
