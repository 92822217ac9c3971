// serving/stop.c: finding stop sequences in generated text (see serving/stop.h).
#include "serving/stop.h"

#include <string.h>

long stop_find(const char *text, size_t len, size_t from, char *const *stops, int n_stops, size_t *safe_len) {
    size_t longest = 0;
    for (int k = 0; k < n_stops; k++) longest = strlen(stops[k]) > longest ? strlen(stops[k]) : longest;
    size_t start = from >= longest ? from - longest + 1 : 0;
    long first = -1;
    for (int k = 0; k < n_stops; k++) {
        size_t stop_len = strlen(stops[k]);
        for (size_t i = start; i + stop_len <= len && (first < 0 || (long)i < first); i++)
            if (memcmp(text + i, stops[k], stop_len) == 0) { first = (long)i; break; }
    }
    *safe_len = len;
    if (first >= 0) { *safe_len = (size_t)first; return first; }
    // the longest tail text[len - t, len) that begins some stop sequence
    for (int k = 0; k < n_stops; k++) {
        size_t stop_len = strlen(stops[k]);
        for (size_t t = stop_len - 1; t > 0; t--)
            if (t <= len && len - t < *safe_len && memcmp(text + len - t, stops[k], t) == 0) { *safe_len = len - t; break; }
    }
    return -1;
}
