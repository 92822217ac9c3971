// formats/cli.c: see formats/cli.h.
#include "formats/cli.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

double cli_number(const char *program, const char *flag, const char *value) {
    char *end;
    double x = strtod(value, &end);
    if (*value == '\0' || *end != '\0' || !isfinite(x)) {
        fprintf(stderr, "%s: %s expects a number, got '%s'\n", program, flag, value);
        exit(2);
    }
    return x;
}

float cli_float(const char *program, const char *flag, const char *value) {
    double x = cli_number(program, flag, value);
    if (fabs(x) > FLT_MAX) {
        fprintf(stderr, "%s: %s expects a number of at most %g in size, got '%s'\n", program, flag, FLT_MAX, value);
        exit(2);
    }
    return (float)x;
}

int cli_int(const char *program, const char *flag, const char *value) {
    double x = cli_number(program, flag, value);
    if (x != floor(x)) {
        fprintf(stderr, "%s: %s expects a whole number, got '%s'\n", program, flag, value);
        exit(2);
    }
    if (x < INT_MIN || x > INT_MAX) {
        fprintf(stderr, "%s: %s expects a whole number from %d to %d, got '%s'\n", program, flag, INT_MIN, INT_MAX,
                value);
        exit(2);
    }
    return (int)x;
}

const char *cli_text(const char *program, const char *flag, const char *value) {
    if (*value == '\0') {
        fprintf(stderr, "%s: %s expects a value, got ''\n", program, flag);
        exit(2);
    }
    return value;
}

int cli_choice(const char *program, const char *flag, const char *value, const char *const *choices) {
    for (int i = 0; choices[i]; i++)
        if (strcmp(value, choices[i]) == 0) return i;
    fprintf(stderr, "%s: %s expects ", program, flag);
    for (int i = 0; choices[i]; i++) {
        // "a", "a or b", "a, b or c"
        const char *separator = i == 0 ? "" : choices[i + 1] ? ", " : " or ";
        fprintf(stderr, "%s%s", separator, choices[i]);
    }
    fprintf(stderr, ", got '%s'\n", value);
    exit(2);
}

// Whether the first len bytes of flag are one of the NULL-terminated flags.
static int is_flag(const char *flag, size_t len, const char *const *flags) {
    for (int i = 0; flags[i]; i++)
        if (strlen(flags[i]) == len && strncmp(flag, flags[i], len) == 0) return 1;
    return 0;
}

const char *cli_option_value(int argc, char **argv, int *i, const char *const *flags, char *err, size_t err_size) {
    const char *flag = argv[*i], *equals = strchr(flag, '=');
    size_t name_len = equals ? (size_t)(equals - flag) : strlen(flag);
    int known = is_flag(flag, name_len, flags), has_value = *i + 1 < argc;
    if (equals && known)
        snprintf(err, err_size, "%s: the value goes after a space: %.*s %s", flag, (int)name_len, flag, equals + 1);
    else if (equals || (!known && !has_value))
        snprintf(err, err_size, "unknown option %s", flag);
    else if (!has_value)
        snprintf(err, err_size, "missing value for %s", flag);
    else
        return argv[++*i];
    return NULL;
}

// Whether option is one of the options in argv (a value is not an option).
static int given(int argc, char **argv, const char *const *flags, const char *option) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], option) == 0) return 1;
        if (is_flag(argv[i], strlen(argv[i]), flags)) i++;   // its value
    }
    return 0;
}

// The first option in argv given a second time, or NULL.
static const char *repeated(int argc, char **argv, const char *const *flags) {
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "-", 1) != 0) continue;
        for (int j = 1; j < i; j++) {
            if (strcmp(argv[j], argv[i]) == 0) return argv[i];
            if (is_flag(argv[j], strlen(argv[j]), flags)) j++;   // its value
        }
        if (is_flag(argv[i], strlen(argv[i]), flags)) i++;
    }
    return NULL;
}

int cli_check_options(int argc, char **argv, const char *const *flags, const char *const *conflicts,
                      const char *const *needs, char *err, size_t err_size) {
    const char *twice = repeated(argc, argv, flags);
    if (twice) {
        snprintf(err, err_size, "%s given twice (which one was meant?)", twice);
        return -1;
    }
    for (int i = 0; conflicts && conflicts[i]; i += 2) {
        if (!given(argc, argv, flags, conflicts[i]) || !given(argc, argv, flags, conflicts[i + 1])) continue;
        snprintf(err, err_size, "%s and %s cannot go together: give one", conflicts[i], conflicts[i + 1]);
        return -1;
    }
    for (int i = 0; needs && needs[i]; i += 2) {
        if (!given(argc, argv, flags, needs[i]) || given(argc, argv, flags, needs[i + 1])) continue;
        snprintf(err, err_size, "%s needs %s", needs[i], needs[i + 1]);
        return -1;
    }
    return 0;
}

int cli_same_file(const char *a, const char *b) {
    struct stat sa, sb;
    if (stat(a, &sa) != 0 || stat(b, &sb) != 0) return 0;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int cli_make_dirs(const char *path, char *err, size_t err_size) {
    char partial[4096];
    size_t len = strlen(path);
    if (len >= sizeof partial) { snprintf(err, err_size, "%s: path too long", path); return -1; }
    for (size_t i = 1; i <= len; i++) {
        if (path[i] != '/' && path[i] != '\0') continue;
        memcpy(partial, path, i);
        partial[i] = '\0';
        if (mkdir(partial, 0755) != 0 && errno != EEXIST) {
            snprintf(err, err_size, "%s: cannot create: %s", partial, strerror(errno));
            return -1;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, err_size, "%s: cannot write into it: not a directory", path);
        return -1;
    }
    return 0;
}
