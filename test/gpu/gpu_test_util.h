// gpu_test_util.h: helpers for the GPU tests (built by nvcc only). Each test
// draws fresh random inputs, rounds them to the 16-bit type (bf16, or fp16 when
// the suite runs with QLORA_GPU_PRECISION=fp16) where the kernel reads it
// (so the CPU reference sees exactly the kernel's inputs), poisons the outputs
// before the launch, and compares with a stated tolerance.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <vector>
#include "ops/gpu.h"

// A seed that differs every run (time and a counter): "fresh random inputs".
// It is printed with each failure so a failing case can be replayed.
uint64_t fresh_seed(void);
// n values uniform in [-scale, scale].
std::vector<float> random_vector(size_t n, uint64_t seed, float scale);
// Rounds every value to the nearest act16 value (bf16 or fp16: gpu_act16), in place.
void round_to_act16(std::vector<float> &x);
// The absolute error rounding to the 16-bit type can add to a value too small
// for its relative bound (below its normal range): half its smallest
// subnormal, 2^-25 for fp16 (0 for bf16, whose range is fp32's).
double act16_underflow_error(void);

// Largest |got - want| divided by the largest |want| (a relative error for
// the tensor as a whole; NaN or Inf in either gives infinity).
double max_relative_error(const float *got, const float *want, size_t n);
// cos(got, want) over the whole tensor, in double.
double cosine_similarity(const float *got, const float *want, size_t n);

// Device buffers in one line from host vectors (freed by the caller with gpu_free).
float *upload_floats(const std::vector<float> &x, const char *what);
act16 *upload_act16(const std::vector<float> &x, const char *what);
std::vector<float> download_floats(const float *device, size_t n);
std::vector<float> download_act16(const act16 *device, size_t n);
