// merging/task_merge.h: merging "task tensors" (one per input: a LoRA A, a
// LoRA B, or a whole delta B A) into one, as peft's utils/merge_utils.py
// does: task arithmetic (the weighted sum), TIES (trim, elect sign, disjoint
// merge), DARE (random drop and rescale) and magnitude pruning. The DARE
// drop masks are an input (dare_keep_mask makes them), so that a test can
// feed in the masks peft drew from torch's generator.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// How the task tensors are combined (peft's combination types, without the svd step).
typedef enum {
    COMBINE_LINEAR,           // sum_i w_i t_i
    COMBINE_TIES,             // magnitude trim, then TIES
    COMBINE_DARE_LINEAR,      // random drop + rescale, then sum_i w_i t_i
    COMBINE_DARE_TIES,        // random drop + rescale, then TIES
    COMBINE_MAGNITUDE_PRUNE,  // magnitude trim, then sum_i w_i t_i
} Combine;

// 1 for the combinations that drop at random (and so need keep masks).
int combine_is_random(Combine how);
// 1 for the combinations that take --density.
int combine_uses_density(Combine how);

// Keeps the k = floor(density n) entries of largest |x| and zeroes the rest
// (density >= 1 keeps all, as peft).
void prune_magnitude(float *x, int64_t n, double density);

// x_i = x_i keep_i / density: drops the entries whose keep is 0 and rescales
// the rest so that the expectation is unchanged (DARE; density >= 1 keeps all).
void prune_random(float *x, const float *keep, int64_t n, double density);

// The keep mask of prune_random: keep_i = 1 with probability density, else 0,
// drawn from splitmix64 (ops/random.h) seeded with seed: keep_i = [u_i < density],
// u_i = random_uniform(splitmix64_at(seed, i)).
void dare_keep_mask(float *keep, int64_t n, double density, uint64_t seed);

// out = sum_i w_i t_i over count tensors of n values.
void task_arithmetic(float *out, float *const *tasks, const double *weights, int count, int64_t n);

// TIES's elect and disjoint merge (peft's calculate_majority_sign_mask with
// "total", then disjoint_merge), per entry:
//   sign = +1 if sum_i t_i >= 0 else -1;   agree_i = [sign(t_i) == sign]
//   out  = sum_i agree_i w_i t_i / max(1, sum_i agree_i)
void ties_merge(float *out, float *const *tasks, const double *weights, int count, int64_t n);

// The whole combination: each task tensor pruned in place as `how` says
// (keep[i]: input i's mask, needed only when combine_is_random), then summed
// or TIES-merged into out.
void combine_tasks(Combine how, float *out, float *const *tasks, const float *const *keep, const double *weights,
                   int count, int64_t n, double density);

#ifdef __cplusplus
}
#endif
