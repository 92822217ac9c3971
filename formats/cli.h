// formats/cli.h: the number and choice parsing shared by the programs' option parsers (a bad
// value exits with status 2 and "PROGRAM: --flag expects ..., got 'VALUE'"), and
// the output folder they create.
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// A finite number (strtod syntax).
double cli_number(const char *program, const char *flag, const char *value);
// A finite number that fits a float (1e39 would become infinity).
float cli_float(const char *program, const char *flag, const char *value);
// A whole number within int's range.
int cli_int(const char *program, const char *flag, const char *value);
// value itself, unless it is empty: "PROGRAM: --flag expects a value, got ''" (a path, a name).
const char *cli_text(const char *program, const char *flag, const char *value);
// The index of value among the NULL-terminated choices ("nf4", "none", NULL);
// anything else exits with "PROGRAM: --flag expects nf4 or none, got 'VALUE'".
int cli_choice(const char *program, const char *flag, const char *value, const char *const *choices);
// The value of the option argv[*i], moving *i onto it. flags (NULL-terminated) are
// the options that take a value, to tell an unknown option from a missing value.
// NULL, with err saying why, for "--name=value" ("write --name value"), an unknown
// option with no value after it, or a missing value.
const char *cli_option_value(int argc, char **argv, int *i, const char *const *flags, char *err, size_t err_size);

// Checks the options in argv (argv[1..]; flags, NULL-terminated, are the ones
// that take a value, which is skipped): each given at most once, no two of a
// conflicting pair, and each option that needs another given with it.
// conflicts and needs are NULL-terminated lists of pairs ({"--a", "--b", NULL}:
// --a conflicts with, or needs, --b), or NULL for none. Returns -1 with err
// naming the option(s) ("--lr given twice", "--prompt and --prompt-file
// cannot go together", "--system needs --chat"), else 0.
int cli_check_options(int argc, char **argv, const char *const *flags, const char *const *conflicts,
                      const char *const *needs, char *err, size_t err_size);

// Whether a and b name the same file or folder (both existing; by device and inode,
// so "out" and "./out/" are one).
int cli_same_file(const char *a, const char *b);

// mkdir -p: the folder path and any missing ones above it. Returns -1 with err
// naming the folder and why when one cannot be made or path is not a folder.
int cli_make_dirs(const char *path, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
