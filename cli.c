// cli.c: see cli.h.
#include "cli.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

double cli_number(const char *program, const char *flag, const char *value) {
    char *end;
    double x = strtod(value, &end);
    if (*value == '\0' || *end != '\0' || !isfinite(x)) {
        fprintf(stderr, "%s: %s expects a number, got '%s'\n", program, flag, value);
        exit(2);
    }
    return x;
}

int cli_int(const char *program, const char *flag, const char *value) {
    double x = cli_number(program, flag, value);
    if (x != floor(x) || x < INT_MIN || x > INT_MAX) {
        fprintf(stderr, "%s: %s expects a whole number, got '%s'\n", program, flag, value);
        exit(2);
    }
    return (int)x;
}
