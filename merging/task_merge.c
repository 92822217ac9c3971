// merging/task_merge.c: peft's merge_utils (see merging/task_merge.h) on fp32
// arrays, summing in double.
#include "merging/task_merge.h"
#include "formats/tensor.h"
#include "ops/random.h"

#include <math.h>
#include <stdlib.h>

int combine_is_random(Combine how) { return how == COMBINE_DARE_LINEAR || how == COMBINE_DARE_TIES; }

int combine_uses_density(Combine how) { return how != COMBINE_LINEAR; }

// An entry's magnitude and index, for sorting.
typedef struct {
    float magnitude;
    int64_t index;
} Ranked;

// Largest magnitude first; ties by index, so that the order is deterministic.
static int by_magnitude_descending(const void *a, const void *b) {
    const Ranked *x = (const Ranked *)a, *y = (const Ranked *)b;
    if (x->magnitude != y->magnitude) return x->magnitude > y->magnitude ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

void prune_magnitude(float *x, int64_t n, double density) {
    if (density >= 1.0) return;
    int64_t keep = (int64_t)(density * (double)n);   // peft: k = int(density * numel)
    Ranked *ranked = (Ranked *)cpu_malloc(sizeof(Ranked) * (size_t)n, "magnitude ranking");
    for (int64_t i = 0; i < n; i++) ranked[i] = (Ranked){fabsf(x[i]), i};
    qsort(ranked, (size_t)n, sizeof(Ranked), by_magnitude_descending);
    for (int64_t i = keep; i < n; i++) x[ranked[i].index] = 0.0f;
    free(ranked);
}

void prune_random(float *x, const float *keep, int64_t n, double density) {
    if (density >= 1.0) return;
    // x_i keep_i / density
    for (int64_t i = 0; i < n; i++) x[i] = (float)((double)(x[i] * keep[i]) / density);
}

void dare_keep_mask(float *keep, int64_t n, double density, uint64_t seed) {
    for (int64_t i = 0; i < n; i++) keep[i] = random_uniform(splitmix64_at(seed, (uint64_t)i)) < density ? 1.0f : 0.0f;
}

void task_arithmetic(float *out, float *const *tasks, const double *weights, int count, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        double sum = 0.0;
        for (int i = 0; i < count; i++) sum += weights[i] * tasks[i][j];
        out[j] = (float)sum;
    }
}

void ties_merge(float *out, float *const *tasks, const double *weights, int count, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        // elect: the sign of the total mass
        double mass = 0.0;
        for (int i = 0; i < count; i++) mass += tasks[i][j];
        float sign = mass >= 0 ? 1.0f : -1.0f;
        // disjoint mean over the inputs that agree with it (a pruned 0 agrees with neither)
        double sum = 0.0;
        int agree = 0;
        for (int i = 0; i < count; i++) {
            float t = tasks[i][j];
            if ((t > 0 && sign > 0) || (t < 0 && sign < 0)) {
                sum += weights[i] * t;
                agree++;
            }
        }
        out[j] = (float)(sum / (agree > 1 ? agree : 1));
    }
}

void combine_tasks(Combine how, float *out, float *const *tasks, const float *const *keep, const double *weights,
                   int count, int64_t n, double density) {
    for (int i = 0; i < count; i++) {
        if (how == COMBINE_TIES || how == COMBINE_MAGNITUDE_PRUNE) prune_magnitude(tasks[i], n, density);
        if (combine_is_random(how)) prune_random(tasks[i], keep[i], n, density);
    }
    if (how == COMBINE_TIES || how == COMBINE_DARE_TIES) ties_merge(out, tasks, weights, count, n);
    else task_arithmetic(out, tasks, weights, count, n);
}
