// eval/forest_plot.c: the SVG forest plot of eval/forest_plot.h.
#include "eval/forest_plot.h"
#include "formats/atomic_file.h"
#include "trainer/plot.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

// Layout, in pixels: labels right-aligned at LABEL_RIGHT, then the two panels.
#define WIDTH 900
#define LABEL_RIGHT 235.0
#define TOP 72.0
#define ROW_HEIGHT 22.0
#define BOTTOM_MARGIN 48.0
#define MAX_TICKS 8
static const char *const ARM_COLORS[2] = {"#1f77b4", "#ff7f0e"};
static const char *const ARM_NAMES[2] = {"base", "fine-tuned"};

typedef struct {
    double x0, x1;   // pixels
    double lo, hi;   // values
} Panel;

static double pixel_x(const Panel *p, double value) { return p->x0 + (value - p->lo) / (p->hi - p->lo) * (p->x1 - p->x0); }

static double row_y(int row) { return TOP + (row + 0.5) * ROW_HEIGHT; }

static void put_escaped(FILE *f, const char *text) {
    for (const char *c = text; *c; c++) {
        if (*c == '&') fputs("&amp;", f);
        else if (*c == '<') fputs("&lt;", f);
        else if (*c == '>') fputs("&gt;", f);
        else fputc(*c, f);
    }
}

// The left panel spans [min(0, lows), max(1, highs)]: rates, F1 and cosines.
static Panel value_panel(const ForestRow *rows, int n_rows, double x0, double x1) {
    Panel p = {x0, x1, 0.0, 1.0};
    for (int r = 0; r < n_rows; r++)
        for (int a = 0; a < 2; a++) {
            if (rows[r].arm[a].low < p.lo) p.lo = rows[r].arm[a].low;
            if (rows[r].arm[a].high > p.hi) p.hi = rows[r].arm[a].high;
        }
    return p;
}

// The right panel is symmetric around zero and holds every change interval.
static Panel change_panel(const ForestRow *rows, int n_rows, double x0, double x1) {
    double reach = 0.0;
    for (int r = 0; r < n_rows; r++) {
        if (fabs(rows[r].change.low) > reach) reach = fabs(rows[r].change.low);
        if (fabs(rows[r].change.high) > reach) reach = fabs(rows[r].change.high);
    }
    reach = reach > 0.0 ? 1.05 * reach : 0.1;
    return (Panel){x0, x1, -reach, reach};
}

// Grid lines at nice ticks, their values below, the panel's name above.
static void draw_axis(FILE *f, const Panel *p, double bottom, const char *name) {
    double ticks[MAX_TICKS];
    int n = nice_ticks(p->lo, p->hi, ticks, MAX_TICKS);
    for (int i = 0; i < n; i++) {
        double x = pixel_x(p, ticks[i]);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n", x, TOP, x, bottom,
                ticks[i] == 0.0 ? "#444" : "#ddd");
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n", x, bottom + 16, ticks[i]);
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-weight=\"bold\">%s</text>\n",
            (p->x0 + p->x1) / 2, TOP - 8, name);
}

// A whisker from low to high with a dot at the estimate; nothing when the estimate is NaN.
static void draw_interval(FILE *f, const Panel *p, Interval x, double y, const char *color, int filled) {
    if (isnan(x.estimate)) return;
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>\n",
            pixel_x(p, x.low), y, pixel_x(p, x.high), y, color);
    fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\" stroke=\"%s\"/>\n", pixel_x(p, x.estimate), y,
            filled ? color : "white", color);
}

static void draw_rows(FILE *f, const ForestRow *rows, int n_rows, const Panel *values, const Panel *changes) {
    for (int r = 0; r < n_rows; r++) {
        double y = row_y(r);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">", LABEL_RIGHT, y + 4);
        put_escaped(f, rows[r].label);
        fputs("</text>\n", f);
        for (int a = 0; a < 2; a++) draw_interval(f, values, rows[r].arm[a], y + (a ? 4 : -4), ARM_COLORS[a], 1);
        if (!changes) continue;
        int excludes = interval_excludes_zero(rows[r].change);
        draw_interval(f, changes, rows[r].change, y, "black", excludes);
        if (excludes) fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">*</text>\n", changes->x1 + 4, y + 4);
    }
}

// The arms that some row has.
static void draw_legend(FILE *f, const ForestRow *rows, int n_rows) {
    for (int a = 0; a < 2; a++) {
        int present = 0;
        for (int r = 0; r < n_rows; r++) present |= !isnan(rows[r].arm[a].estimate);
        if (!present) continue;
        double x = LABEL_RIGHT + 20 + 110 * a;
        fprintf(f, "<circle cx=\"%.1f\" cy=\"44\" r=\"4\" fill=\"%s\"/>\n", x, ARM_COLORS[a]);
        fprintf(f, "<text x=\"%.1f\" y=\"48\">%s</text>\n", x + 8, ARM_NAMES[a]);
    }
}

int svg_forest_plot(const char *path, const char *title, const ForestRow *rows, int n_rows, char *err,
                    size_t err_size) {
    int has_change = 0;
    for (int r = 0; r < n_rows; r++) has_change |= !isnan(rows[r].change.estimate);
    double bottom = TOP + n_rows * ROW_HEIGHT, height = bottom + BOTTOM_MARGIN;
    AtomicFile file;
    FILE *f = atomic_file_open(&file, path, err, err_size);
    if (!f) return -1;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%.0f\" viewBox=\"0 0 %d %.0f\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"%d\" height=\"%.0f\" fill=\"white\"/>\n",
            WIDTH, height, WIDTH, height, WIDTH, height);
    fprintf(f, "<text x=\"%d\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">", WIDTH / 2);
    put_escaped(f, title);
    fputs("</text>\n", f);
    Panel values = value_panel(rows, n_rows, LABEL_RIGHT + 20, has_change ? 560 : WIDTH - 30);
    Panel changes = change_panel(rows, n_rows, 610, WIDTH - 30);
    draw_axis(f, &values, bottom, "mean, 95% interval");
    if (has_change) draw_axis(f, &changes, bottom, "change, paired 95% interval (* excludes 0)");
    draw_legend(f, rows, n_rows);
    draw_rows(f, rows, n_rows, &values, has_change ? &changes : NULL);
    fputs("</svg>\n", f);
    return atomic_file_commit(&file, err, err_size);
}
