// gpu_test_util.cu: see gpu_test_util.h.
#include "gpu_test_util.h"
#include "ops/random.h"

#include <math.h>
#include <time.h>

uint64_t fresh_seed(void) {
    static uint64_t counter = 0;
    return (uint64_t)time(NULL) * 1000003ULL + (++counter) * SPLITMIX64_GAMMA;
}

std::vector<float> random_vector(size_t n, uint64_t seed, float scale) {
    std::vector<float> x(n);
    uint64_t state = seed;
    // x = scale (2u - 1)
    for (size_t i = 0; i < n; i++) x[i] = scale * (2.0f * random_uniform(splitmix64_next(&state)) - 1.0f);
    return x;
}

void round_to_act16(std::vector<float> &x) {
    for (float &v : x) v = act16_round(v);
}

double act16_underflow_error(void) { return gpu_act16() == ACT16_FP16 ? ldexp(1.0, -25) : 0.0; }

double max_relative_error(const float *got, const float *want, size_t n) {
    double max_diff = 0.0, max_want = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(want[i])) return INFINITY;   // want is a GPU result in some tests
        double diff = fabs((double)got[i] - (double)want[i]);
        if (diff > max_diff) max_diff = diff;
        if (fabs((double)want[i]) > max_want) max_want = fabs((double)want[i]);
    }
    return max_want > 0.0 ? max_diff / max_want : max_diff;
}

double cosine_similarity(const float *got, const float *want, size_t n) {
    double dot = 0.0, gg = 0.0, ww = 0.0;
    for (size_t i = 0; i < n; i++) {
        dot += (double)got[i] * want[i];
        gg += (double)got[i] * got[i];
        ww += (double)want[i] * want[i];
    }
    if (gg == 0.0 && ww == 0.0) return 1.0;
    return dot / sqrt(gg * ww);
}

float *upload_floats(const std::vector<float> &x, const char *what) {
    float *d = (float *)gpu_malloc(sizeof(float) * x.size(), what);
    gpu_upload(d, x.data(), sizeof(float) * x.size());
    return d;
}

act16 *upload_act16(const std::vector<float> &x, const char *what) { return gpu_upload_as_act16(x.data(), x.size(), what); }

std::vector<float> download_floats(const float *device, size_t n) {
    std::vector<float> x(n);
    gpu_download(x.data(), device, sizeof(float) * n);
    return x;
}

std::vector<float> download_act16(const act16 *device, size_t n) {
    std::vector<float> x(n);
    gpu_download_act16(x.data(), device, n);
    return x;
}
