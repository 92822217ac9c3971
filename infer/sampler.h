// infer/sampler.h: choosing the next token from logits: greedy (temperature 0) or
// temperature + top-p (nucleus) sampling with a seeded random generator.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float temperature;   // 0 = greedy (argmax)
    float top_p;         // keep the smallest set of tokens whose probability sums to >= top_p
    uint64_t rng_state;  // xorshift64* state, never 0
    int vocab_size;
    float *probs;        // scratch [vocab_size]
    int *order;          // scratch [vocab_size]
} Sampler;

int sampler_init(Sampler *s, int vocab_size, float temperature, float top_p, uint64_t seed);
void sampler_free(Sampler *s);
int sample_argmax(const float *logits, int n);
// Picks a token from logits [vocab_size]; logits are not modified. Threads may
// sample at once, each with its own Sampler (./serve's workers).
int sampler_next(Sampler *s, const float *logits);
// Uniform float in [0, 1) from the sampler's generator.
float sampler_random(Sampler *s);

#ifdef __cplusplus
}
#endif
