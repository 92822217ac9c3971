// ops/random.h: splitmix64 (Steele, Lea and Flood 2014), the one random number
// generator: random models, LoRA's A, dropout masks (on the CPU and in CUDA
// kernels, bit for bit the same), the data order, and the tests' inputs; and
// random_uniform, which also serves the sampler's xorshift64* (infer/sampler.c).
// Plain C, usable from C, C++ and CUDA (HOST_DEVICE).
#pragma once
#include <stdint.h>
#include "ops/gpu.h"

// The increment of splitmix64's state: 2^64 / phi (the golden ratio), made odd.
#define SPLITMIX64_GAMMA 0x9E3779B97F4A7C15ULL

// splitmix64's output function: a bijection of 64-bit words that mixes every
// input bit into every output bit.
HOST_DEVICE static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// The next number: state += GAMMA, then mix64(state).
HOST_DEVICE static inline uint64_t splitmix64_next(uint64_t *state) {
    *state += SPLITMIX64_GAMMA;
    return mix64(*state);
}

// The i-th number (i = 0, 1, ...) that splitmix64_next would give from state,
// computed alone (counter-based: one GPU thread each): mix64(state + (i + 1) GAMMA).
HOST_DEVICE static inline uint64_t splitmix64_at(uint64_t state, uint64_t i) {
    return mix64(state + (i + 1) * SPLITMIX64_GAMMA);
}

// u in [0, 1) from the top 24 bits of a random number (exact in a float).
HOST_DEVICE static inline float random_uniform(uint64_t random) {
    return (float)(random >> 40) / 16777216.0f;
}
