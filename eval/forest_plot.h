// eval/forest_plot.h: an SVG "forest plot" of ./evaluate's intervals. One row
// per metric; on the left each model's mean as a dot with its 95% interval as
// a whisker (base blue, fine-tuned orange), on the right the paired change
// (fine-tuned minus base) with its interval around a line at zero, drawn
// filled and starred where the interval excludes zero. trainer/plot.h's bar
// chart only draws symmetric whiskers, and bootstrap intervals are not.
#pragma once
#include <stddef.h>
#include "eval/bootstrap.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char label[64];      // "ROUGE-1 F1, English (n = 13)"
    Interval arm[2];     // base, fine-tuned (a NaN estimate: not drawn)
    Interval change;     // a NaN estimate: not drawn
} ForestRow;

// Writes the plot to path (the right panel only when some row has a change).
// Returns 0, or -1 with a message naming the path in err.
int svg_forest_plot(const char *path, const char *title, const ForestRow *rows, int n_rows, char *err,
                    size_t err_size);

#ifdef __cplusplus
}
#endif
