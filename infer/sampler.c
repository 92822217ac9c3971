// infer/sampler.c: greedy, temperature and top-p sampling.
#include "infer/sampler.h"
#include "ops/random.h"

#include <math.h>
#include <stdlib.h>

int sampler_init(Sampler *s, int vocab_size, float temperature, float top_p, uint64_t seed) {
    s->temperature = temperature;
    s->top_p = top_p;
    s->rng_state = seed ? seed : 0x9E3779B97F4A7C15ULL;
    s->vocab_size = vocab_size;
    s->probs = (float *)malloc(sizeof(float) * (size_t)vocab_size);
    s->order = (int *)malloc(sizeof(int) * (size_t)vocab_size);
    if (!s->probs || !s->order) {
        sampler_free(s);
        return -1;
    }
    return 0;
}

void sampler_free(Sampler *s) {
    free(s->probs);
    free(s->order);
    s->probs = NULL;
    s->order = NULL;
}

float sampler_random(Sampler *s) {
    // xorshift64*
    s->rng_state ^= s->rng_state >> 12;
    s->rng_state ^= s->rng_state << 25;
    s->rng_state ^= s->rng_state >> 27;
    return random_uniform(s->rng_state * 0x2545F4914F6CDD1DULL);
}

int sample_argmax(const float *logits, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

// the probabilities by_probability_desc compares (qsort has no context argument):
// one per thread, as ./serve's workers sample at once
static _Thread_local const float *g_sort_probs;

static int by_probability_desc(const void *a, const void *b) {
    float pa = g_sort_probs[*(const int *)a], pb = g_sort_probs[*(const int *)b];
    return (pa < pb) - (pa > pb);
}

int sampler_next(Sampler *s, const float *logits) {
    int n = s->vocab_size;
    if (s->temperature <= 0.0f) return sample_argmax(logits, n);
    // p_i = exp((l_i - max) / T) / Z
    float max_logit = logits[sample_argmax(logits, n)];
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        s->probs[i] = expf((logits[i] - max_logit) / s->temperature);
        total += s->probs[i];
    }
    for (int i = 0; i < n; i++) s->probs[i] = (float)(s->probs[i] / total);
    // nucleus: candidates sorted by probability, cut where the mass reaches top_p
    int n_keep = 0;
    float tiny = (1.0f - s->top_p) / (float)(n - 1);   // tokens below this can never be in the nucleus
    for (int i = 0; i < n; i++)
        if (s->top_p >= 1.0f || s->probs[i] >= tiny) s->order[n_keep++] = i;
    g_sort_probs = s->probs;
    qsort(s->order, (size_t)n_keep, sizeof(int), by_probability_desc);
    float mass = 0.0f;
    int cut = n_keep;
    for (int i = 0; i < n_keep; i++) {
        mass += s->probs[s->order[i]];
        if (mass >= s->top_p) { cut = i + 1; break; }
    }
    // draw from the kept tokens, renormalised
    float r = sampler_random(s) * mass, running = 0.0f;
    for (int i = 0; i < cut; i++) {
        running += s->probs[s->order[i]];
        if (r < running) return s->order[i];
    }
    return s->order[cut - 1];
}
