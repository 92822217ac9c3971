// eval/bootstrap.h: 95% confidence intervals for the means ./evaluate
// reports, by the percentile bootstrap, and for the change between two models
// that answered the same samples, by the paired bootstrap (Efron and
// Tibshirani, An Introduction to the Bootstrap, 1993, ch. 13 and 16).
//
// A statistic here is a ratio of sums over n items, sum(num) / sum(den): a
// mean when every den is 1, the answer loss pooled over answer tokens when
// num is a sample's summed loss and den its token count.
//   estimate  the statistic of the n items as they are.
//   interval  draw n item indices uniformly with replacement, B times (index
//             = splitmix64 draw mod n, the generator seeded with the seed for
//             every interval, so the same items get the same resamples); the
//             statistic of each resample; the 2.5th and 97.5th percentiles of
//             those B values, interpolated linearly between order statistics
//             (numpy.percentile's default).
//   change    each resample's indices are used for both models, and the value
//             is the statistic of b minus that of a: the questions' own
//             difficulty cancels, which an interval from two independent
//             resamplings would not allow.
// B = 2000 (./evaluate --resamples): the Monte Carlo error of a 2.5% percentile
// is then small next to the interval's width (Efron and Tibshirani suggest at
// least 1000 for percentile intervals), and it costs milliseconds.
// The intervals are checked against numpy on the same resamples
// (dev/fixtures/make_bootstrap_fixture.py) and on cases with a known answer.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BOOTSTRAP_LEVEL 0.95
#define BOOTSTRAP_DEFAULT_RESAMPLES 2000
#define BOOTSTRAP_DEFAULT_SEED 1234

typedef struct {
    double estimate, low, high;   // all NaN when there are no items
} Interval;

// n items' numerators and denominators (den NULL: every den is 1; each den > 0).
typedef struct {
    const double *num, *den;
} RatioItems;

// The statistic of items and its percentile interval.
Interval bootstrap_ratio(RatioItems items, int n, int resamples, uint64_t seed);
// statistic(b) - statistic(a) on the same n items, and its paired interval.
Interval bootstrap_change(RatioItems a, RatioItems b, int n, int resamples, uint64_t seed);
// 1 when the interval lies wholly above or wholly below zero.
int interval_excludes_zero(Interval x);

#ifdef __cplusplus
}
#endif
