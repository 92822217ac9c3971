// trainer/plot.h: a tiny SVG chart writer: line charts (the loss curve that ./train
// redraws as it goes) and bar charts with optional error whiskers (./evaluate).
// Charts are written through formats/atomic_file.h (temp, fsync, rename), so
// a viewer that reloads the file never sees half of one.
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// One line of a line chart: count points (x[i], y[i]). A NaN (or infinite)
// y leaves a gap in the line; a series may be empty (count 0).
typedef struct {
    const char *name;    // legend text, or NULL for no legend entry
    const char *color;   // any SVG colour ("#1f77b4", "red"), or NULL for the palette
    const double *x;
    const double *y;
    int count;
} PlotSeries;

// Writes a line chart to path: axes with nice ticks, a legend, and each series
// as a line with point markers. When no series has a point the chart still has
// its axes and says "no data yet". Returns 0, or -1 with a message naming the
// path in err.
int svg_line_chart(const char *path, const char *title, const char *x_label, const char *y_label,
                   const PlotSeries *series, int n_series, char *err, size_t err_size);

// Writes a bar chart to path: one bar per label with its value above it, and
// when errors is not NULL a whisker from values[i] - errors[i] to
// values[i] + errors[i]. A NaN value draws no bar. Returns 0, or -1 with a
// message naming the path in err.
int svg_bar_chart(const char *path, const char *title, const char *y_label,
                  const char *const *labels, const double *values, const double *errors,
                  int count, char *err, size_t err_size);

// Fills ticks with up to max_ticks evenly spaced round values (a multiple of
// 1, 2 or 5 x 10^k) inside [lo, hi], about five of them; returns how many.
// lo == hi gives that one value; a range that is empty or not finite gives 0.
int nice_ticks(double lo, double hi, double *ticks, int max_ticks);

#ifdef __cplusplus
}
#endif
