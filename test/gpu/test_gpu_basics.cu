// test_gpu_basics.cu: the shared GPU helpers (conversions, poison, tracking).
#include <doctest/doctest.h>
#include <math.h>
#include "gpu_test_util.h"

TEST_CASE("gpu: float <-> bf16 conversion kernels round to nearest even and back exactly") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    const size_t counts[] = {1, 255, 257, 1000003};   // one element; a block less one; one more; not a multiple
    for (size_t n : counts) {
        INFO("n " << n);
        std::vector<float> x = random_vector(n, seed + n, 100.0f);
        float *d_x = upload_floats(x, "x");
        act16 *d_b = (act16 *)gpu_malloc(sizeof(act16) * n, "b");
        float *d_back = (float *)gpu_malloc(sizeof(float) * n, "back");
        gpu_poison(d_b, sizeof(act16) * n);
        gpu_poison(d_back, sizeof(float) * n);
        float_to_act16_gpu(d_b, d_x, n);
        act16_to_float_gpu(d_back, d_b, n);
        std::vector<float> back = download_floats(d_back, n);
        std::vector<float> want = x;
        round_to_act16(want);
        size_t mismatches = 0;
        for (size_t i = 0; i < n; i++) mismatches += back[i] != want[i];
        CHECK(mismatches == 0);
        gpu_free(d_x);
        gpu_free(d_b);
        gpu_free(d_back);
    }
}

TEST_CASE("gpu: allocations are tracked, poison reads as NaN") {
    size_t before = gpu_bytes_in_use();
    float *p = (float *)gpu_malloc(4096, "probe");
    CHECK(gpu_bytes_in_use() == before + 4096);
    CHECK(gpu_peak_bytes() >= before + 4096);
    gpu_poison(p, 4096);
    std::vector<float> got = download_floats(p, 1024);
    CHECK(isnan(got[0]));
    CHECK(isnan(got[1023]));
    gpu_free(p);
    CHECK(gpu_bytes_in_use() == before);
}
