// trainer/plot.c: a tiny SVG chart writer: line charts (the loss curve that ./train
// redraws as it goes) and bar charts with optional error whiskers. Every chart
// has the same canvas: a title on top, the plot area in the middle with grid
// lines at nice ticks, axis labels below and to the left. The file is written
// through formats/atomic_file.h, so a viewer never sees half of it.
#include "trainer/plot.h"
#include "formats/atomic_file.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Canvas and plot area, in pixels.
#define CANVAS_WIDTH 720
#define CANVAS_HEIGHT 440
#define PLOT_LEFT 80.0
#define PLOT_RIGHT 700.0
#define PLOT_TOP 48.0
#define PLOT_BOTTOM 372.0

#define TARGET_TICKS 5
#define MAX_TICKS 8
// A series with more points than this is drawn without point markers (a
// training curve of thousands of steps would be all dots).
#define MAX_MARKED_POINTS 200

enum { PALETTE_SIZE = 6 };
static const char *const PALETTE[PALETTE_SIZE] = {
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
};

// ---- ticks -----------------------------------------------------------------

// n * mantissa * 10^exponent. Negative exponents divide, so that the value is
// the double nearest the decimal (0.8, not 0.8000000000000002).
static double multiple_of_step(long long n, int mantissa, int exponent) {
    double units = (double)n * mantissa;
    return exponent < 0 ? units / pow(10.0, -exponent) : units * pow(10.0, exponent);
}

// How many multiples of step lie in [lo, hi]; the first is *first * step.
// 0 when step is too small for the range to be counted exactly.
static int count_multiples(double lo, double hi, double step, long long *first) {
    if (!(step > 0)) return 0;
    double lo_units = lo / step, hi_units = hi / step;
    if (fabs(lo_units) > 1e15 || fabs(hi_units) > 1e15) return 0;
    long long first_multiple = (long long)ceil(lo_units - 1e-9);
    long long last_multiple = (long long)floor(hi_units + 1e-9);
    *first = first_multiple;
    if (last_multiple < first_multiple) return 0;
    long long count = last_multiple - first_multiple + 1;
    return count > INT_MAX ? INT_MAX : (int)count;
}

int nice_ticks(double lo, double hi, double *ticks, int max_ticks) {
    if (max_ticks < 1 || !isfinite(lo) || !isfinite(hi) || hi < lo || !isfinite(hi - lo)) return 0;
    if (hi == lo) {
        ticks[0] = lo;
        return 1;
    }
    static const int mantissas[3] = {1, 2, 5};
    int decade = (int)floor(log10(hi - lo));
    int best_count = 0, best_mantissa = 1, best_exponent = 0;
    long long best_first = 0;
    for (int exponent = decade - 2; exponent <= decade + 1; exponent++) {
        for (int m = 0; m < 3; m++) {
            long long first;
            int count = count_multiples(lo, hi, mantissas[m] * pow(10.0, exponent), &first);
            if (count == 0 || count > max_ticks) continue;
            if (best_count == 0 || abs(count - TARGET_TICKS) < abs(best_count - TARGET_TICKS)) {
                best_count = count;
                best_mantissa = mantissas[m];
                best_exponent = exponent;
                best_first = first;
            }
        }
    }
    for (int i = 0; i < best_count; i++) {
        double tick = multiple_of_step(best_first + i, best_mantissa, best_exponent);
        ticks[i] = fmin(fmax(tick, lo), hi);
    }
    return best_count;
}

// ---- writing the file ------------------------------------------------------

// Writes text with the characters XML gives a meaning (& < > ") escaped and
// control characters, which XML forbids, as spaces. NULL writes nothing.
static void put_escaped(FILE *f, const char *text) {
    for (const char *c = text ? text : ""; *c; c++) {
        switch (*c) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc((unsigned char)*c < 0x20 ? ' ' : *c, f);
        }
    }
}

// ---- the canvas ------------------------------------------------------------

// The data range that the plot area shows.
typedef struct {
    double x_lo, x_hi, y_lo, y_hi;
} Frame;

static double pixel_x(const Frame *frame, double x) {
    return PLOT_LEFT + (x - frame->x_lo) / (frame->x_hi - frame->x_lo) * (PLOT_RIGHT - PLOT_LEFT);
}

static double pixel_y(const Frame *frame, double y) {
    return PLOT_BOTTOM - (y - frame->y_lo) / (frame->y_hi - frame->y_lo) * (PLOT_BOTTOM - PLOT_TOP);
}

// Widens [*lo, *hi] by margin times its span on each side; a single value
// gets a small span around it, so that the frame is never empty.
static void pad_range(double *lo, double *hi, double margin) {
    double span = *hi - *lo;
    if (span > 0) {
        *lo -= span * margin;
        *hi += span * margin;
    } else {
        double half = *lo != 0 ? fabs(*lo) * 0.1 : 0.5;
        *lo -= half;
        *hi += half;
    }
}

static void write_header(FILE *f, const char *title) {
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n",
            CANVAS_WIDTH, CANVAS_HEIGHT, CANVAS_WIDTH, CANVAS_HEIGHT);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", CANVAS_WIDTH, CANVAS_HEIGHT);
    fprintf(f, "<text x=\"%.1f\" y=\"28\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">",
            CANVAS_WIDTH / 2.0);
    put_escaped(f, title);
    fputs("</text>\n", f);
}

static void write_footer(FILE *f) {
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#444\"/>\n",
            PLOT_LEFT, PLOT_TOP, PLOT_RIGHT - PLOT_LEFT, PLOT_BOTTOM - PLOT_TOP);
    fputs("</svg>\n", f);
}

// Horizontal grid lines with their values on the left, and the y label.
static void draw_y_axis(FILE *f, const Frame *frame, const char *label) {
    double ticks[MAX_TICKS];
    int count = nice_ticks(frame->y_lo, frame->y_hi, ticks, MAX_TICKS);
    for (int i = 0; i < count; i++) {
        double y = pixel_y(frame, ticks[i]);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>\n",
                PLOT_LEFT, y, PLOT_RIGHT, y);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                PLOT_LEFT - 6, y + 4, ticks[i]);
    }
    fprintf(f, "<text transform=\"translate(18 %.1f) rotate(-90)\" text-anchor=\"middle\">",
            (PLOT_TOP + PLOT_BOTTOM) / 2);
    put_escaped(f, label);
    fputs("</text>\n", f);
}

// Vertical grid lines with their values below, and the x label.
static void draw_x_axis(FILE *f, const Frame *frame, const char *label) {
    double ticks[MAX_TICKS];
    int count = nice_ticks(frame->x_lo, frame->x_hi, ticks, MAX_TICKS);
    for (int i = 0; i < count; i++) {
        double x = pixel_x(frame, ticks[i]);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>\n",
                x, PLOT_TOP, x, PLOT_BOTTOM);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n",
                x, PLOT_BOTTOM + 18, ticks[i]);
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">", (PLOT_LEFT + PLOT_RIGHT) / 2,
            CANVAS_HEIGHT - 16);
    put_escaped(f, label);
    fputs("</text>\n", f);
}

static void draw_no_data(FILE *f) {
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"16\" fill=\"#888\">"
               "no data yet</text>\n",
            (PLOT_LEFT + PLOT_RIGHT) / 2, (PLOT_TOP + PLOT_BOTTOM) / 2);
}

// ---- line charts -----------------------------------------------------------

static int is_point(const PlotSeries *s, int i) {
    return isfinite(s->x[i]) && isfinite(s->y[i]);
}

static int has_points(const PlotSeries *s) {
    for (int i = 0; i < s->count; i++)
        if (is_point(s, i)) return 1;
    return 0;
}

static const char *series_color(const PlotSeries *series, int index) {
    return series[index].color ? series[index].color : PALETTE[index % PALETTE_SIZE];
}

// Sets the frame to the range of all points; 0 when there is no point.
static int data_bounds(const PlotSeries *series, int n_series, Frame *frame) {
    int found = 0;
    for (int s = 0; s < n_series; s++) {
        for (int i = 0; i < series[s].count; i++) {
            if (!is_point(&series[s], i)) continue;
            double x = series[s].x[i], y = series[s].y[i];
            if (!found || x < frame->x_lo) frame->x_lo = x;
            if (!found || x > frame->x_hi) frame->x_hi = x;
            if (!found || y < frame->y_lo) frame->y_lo = y;
            if (!found || y > frame->y_hi) frame->y_hi = y;
            found = 1;
        }
    }
    return found;
}

// One <path> for the whole series; a point that is not finite lifts the pen.
static void draw_series_line(FILE *f, const Frame *frame, const PlotSeries *s, const char *color) {
    fputs("<path class=\"series\" fill=\"none\" stroke-width=\"1.5\" stroke=\"", f);
    put_escaped(f, color);
    fputs("\" d=\"", f);
    int pen_down = 0, points_written = 0;
    for (int i = 0; i < s->count; i++) {
        if (!is_point(s, i)) {
            pen_down = 0;
            continue;
        }
        fprintf(f, "%s%c%.1f %.1f", points_written > 0 ? " " : "", pen_down ? 'L' : 'M',
                pixel_x(frame, s->x[i]), pixel_y(frame, s->y[i]));
        pen_down = 1;
        points_written++;
    }
    fputs("\"/>\n", f);
}

static void draw_series_markers(FILE *f, const Frame *frame, const PlotSeries *s, const char *color) {
    if (s->count > MAX_MARKED_POINTS) return;
    for (int i = 0; i < s->count; i++) {
        if (!is_point(s, i)) continue;
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"", pixel_x(frame, s->x[i]),
                pixel_y(frame, s->y[i]));
        put_escaped(f, color);
        fputs("\"/>\n", f);
    }
}

// A box in the top right corner of the plot with a line sample and the name
// of each named series (empty ones too: they are the ones still to come).
static void draw_legend(FILE *f, const PlotSeries *series, int n_series) {
    int entries = 0;
    size_t longest_name = 0;
    for (int s = 0; s < n_series; s++) {
        if (!series[s].name) continue;
        entries++;
        size_t len = strlen(series[s].name);
        if (len > longest_name) longest_name = len;
    }
    if (entries == 0) return;
    double width = 44 + 7.0 * longest_name, height = 8 + 18.0 * entries;
    double left = PLOT_RIGHT - 8 - width, top = PLOT_TOP + 8;
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"white\" "
               "fill-opacity=\"0.85\" stroke=\"#999\"/>\n",
            left, top, width, height);
    int row = 0;
    for (int s = 0; s < n_series; s++) {
        if (!series[s].name) continue;
        double y = top + 4 + 18.0 * row + 9;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke-width=\"2\" stroke=\"",
                left + 8, y, left + 28, y);
        put_escaped(f, series_color(series, s));
        fprintf(f, "\"/>\n<text x=\"%.1f\" y=\"%.1f\">", left + 36, y + 4);
        put_escaped(f, series[s].name);
        fputs("</text>\n", f);
        row++;
    }
}

static void write_line_chart(FILE *f, const char *title, const char *x_label, const char *y_label,
                             const PlotSeries *series, int n_series) {
    Frame frame = {0, 1, 0, 1};
    int has_data = data_bounds(series, n_series, &frame);
    if (has_data) {
        pad_range(&frame.x_lo, &frame.x_hi, 0);
        pad_range(&frame.y_lo, &frame.y_hi, 0.05);
    }
    write_header(f, title);
    draw_x_axis(f, &frame, x_label);
    draw_y_axis(f, &frame, y_label);
    for (int s = 0; s < n_series; s++) {
        if (!has_points(&series[s])) continue;
        draw_series_line(f, &frame, &series[s], series_color(series, s));
        draw_series_markers(f, &frame, &series[s], series_color(series, s));
    }
    if (!has_data) draw_no_data(f);
    draw_legend(f, series, n_series);
    write_footer(f);
}

int svg_line_chart(const char *path, const char *title, const char *x_label, const char *y_label,
                   const PlotSeries *series, int n_series, char *err, size_t err_size) {
    AtomicFile file;
    if (!atomic_file_open(&file, path, err, err_size)) return -1;
    write_line_chart(file.f, title, x_label, y_label, series, n_series);
    return atomic_file_commit(&file, err, err_size);
}

// ---- bar charts ------------------------------------------------------------

static double spread_of(const double *errors, int i) {
    return errors && isfinite(errors[i]) ? fabs(errors[i]) : 0;
}

// Sets the frame to one unit of x per bar and a y range that holds zero, every
// bar and every whisker; 0 when no value is finite.
static int bar_bounds(const double *values, const double *errors, int count, Frame *frame) {
    int found = 0;
    double lo = 0, hi = 0;
    for (int i = 0; i < count; i++) {
        if (!isfinite(values[i])) continue;
        lo = fmin(lo, values[i] - spread_of(errors, i));
        hi = fmax(hi, values[i] + spread_of(errors, i));
        found = 1;
    }
    if (hi == lo) hi = 1;
    double span = hi - lo;
    if (hi > 0) hi += 0.08 * span;   // room for the value written above the bar
    if (lo < 0) lo -= 0.08 * span;
    *frame = (Frame){0, count > 0 ? count : 1, lo, hi};
    return found;
}

// The bar, its whisker and its value written beyond both.
static void draw_bar(FILE *f, const Frame *frame, double value, double spread) {
    double slot = (PLOT_RIGHT - PLOT_LEFT) / (frame->x_hi - frame->x_lo);
    fprintf(f, "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n",
            -0.3 * slot, pixel_y(frame, fmax(value, 0)), 0.6 * slot,
            pixel_y(frame, fmin(value, 0)) - pixel_y(frame, fmax(value, 0)), PALETTE[0]);
    if (spread > 0) {
        double top = pixel_y(frame, value + spread), bottom = pixel_y(frame, value - spread);
        fprintf(f, "<path class=\"whisker\" fill=\"none\" stroke=\"#333\" "
                   "d=\"M0 %.1f L0 %.1f M%.1f %.1f L%.1f %.1f M%.1f %.1f L%.1f %.1f\"/>\n",
                top, bottom, -0.1 * slot, top, 0.1 * slot, top, -0.1 * slot, bottom, 0.1 * slot, bottom);
    }
    double label_y = value >= 0 ? pixel_y(frame, value + spread) - 5 : pixel_y(frame, value - spread) + 14;
    fprintf(f, "<text x=\"0\" y=\"%.1f\" text-anchor=\"middle\">%.3g</text>\n", label_y, value);
}

// Each bar is drawn in a group moved to the middle of its slot, with its
// label below the plot (slanted when there are many).
static void draw_bars(FILE *f, const Frame *frame, const char *const *labels, const double *values,
                      const double *errors, int count) {
    for (int i = 0; i < count; i++) {
        fprintf(f, "<g transform=\"translate(%.1f 0)\">\n", pixel_x(frame, i + 0.5));
        if (isfinite(values[i])) draw_bar(f, frame, values[i], spread_of(errors, i));
        if (count > 6)
            fprintf(f, "<text transform=\"translate(0 %.1f) rotate(-30)\" text-anchor=\"end\">",
                    PLOT_BOTTOM + 16);
        else
            fprintf(f, "<text x=\"0\" y=\"%.1f\" text-anchor=\"middle\">", PLOT_BOTTOM + 18);
        put_escaped(f, labels[i]);
        fputs("</text>\n</g>\n", f);
    }
    double zero = pixel_y(frame, 0);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444\"/>\n",
            PLOT_LEFT, zero, PLOT_RIGHT, zero);
}

static void write_bar_chart(FILE *f, const char *title, const char *y_label, const char *const *labels,
                            const double *values, const double *errors, int count) {
    Frame frame;
    int has_data = bar_bounds(values, errors, count, &frame);
    write_header(f, title);
    draw_y_axis(f, &frame, y_label);
    draw_bars(f, &frame, labels, values, errors, count);
    if (!has_data) draw_no_data(f);
    write_footer(f);
}

int svg_bar_chart(const char *path, const char *title, const char *y_label,
                  const char *const *labels, const double *values, const double *errors,
                  int count, char *err, size_t err_size) {
    AtomicFile file;
    if (!atomic_file_open(&file, path, err, err_size)) return -1;
    write_bar_chart(file.f, title, y_label, labels, values, errors, count);
    return atomic_file_commit(&file, err, err_size);
}
