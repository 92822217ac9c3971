// eval/bootstrap.c: percentile and paired bootstrap intervals (see bootstrap.h).
#include "eval/bootstrap.h"
#include "ops/random.h"

#include <math.h>
#include <stdlib.h>

// sum(num[i]) / sum(den[i]) over the items picked[0..n)
static double ratio_of(RatioItems items, const int *picked, int n) {
    double num = 0.0, den = 0.0;
    for (int k = 0; k < n; k++) {
        num += items.num[picked[k]];
        den += items.den ? items.den[picked[k]] : 1.0;
    }
    return num / den;
}

// The statistic (b's minus a's when a is given) over the items picked.
static double statistic(const RatioItems *a, RatioItems b, const int *picked, int n) {
    return ratio_of(b, picked, n) - (a ? ratio_of(*a, picked, n) : 0.0);
}

static int compare_doubles(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

// The q-quantile of n sorted values: at h = (n - 1) q, sorted[floor h] + (h - floor h) (sorted[floor h + 1] - sorted[floor h])
static double percentile(const double *sorted, int n, double q) {
    double h = (n - 1) * q;
    int below = (int)floor(h);
    if (below >= n - 1) return sorted[n - 1];
    return sorted[below] + (h - below) * (sorted[below + 1] - sorted[below]);
}

static Interval bootstrap(const RatioItems *a, RatioItems b, int n, int resamples, uint64_t seed) {
    Interval out = {NAN, NAN, NAN};
    int *picked = (int *)malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    double *values = (double *)malloc(sizeof(double) * (size_t)(resamples > 0 ? resamples : 1));
    if (n < 1 || resamples < 1 || !picked || !values) { free(picked); free(values); return out; }
    for (int k = 0; k < n; k++) picked[k] = k;
    out.estimate = statistic(a, b, picked, n);
    uint64_t state = seed;
    for (int r = 0; r < resamples; r++) {
        for (int k = 0; k < n; k++) picked[k] = (int)(splitmix64_next(&state) % (uint64_t)n);
        values[r] = statistic(a, b, picked, n);
    }
    qsort(values, (size_t)resamples, sizeof(double), compare_doubles);
    out.low = percentile(values, resamples, (1.0 - BOOTSTRAP_LEVEL) / 2);
    out.high = percentile(values, resamples, 1.0 - (1.0 - BOOTSTRAP_LEVEL) / 2);
    free(picked);
    free(values);
    return out;
}

Interval bootstrap_ratio(RatioItems items, int n, int resamples, uint64_t seed) {
    return bootstrap(NULL, items, n, resamples, seed);
}

Interval bootstrap_change(RatioItems a, RatioItems b, int n, int resamples, uint64_t seed) {
    return bootstrap(&a, b, n, resamples, seed);
}

int interval_excludes_zero(Interval x) { return x.low > 0.0 || x.high < 0.0; }
