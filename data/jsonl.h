// data/jsonl.h: JSON Lines files, one JSON value a line. The file is read
// whole; lines come back one by one with their numbers (blank lines are
// skipped, "\r\n" ends are fine, a UTF-8 byte-order mark at the start is
// ignored), and each is parsed with a size limit so that one huge line
// cannot take all the memory.
#pragma once
#include <stddef.h>
#include "formats/json.h"

#ifdef __cplusplus
extern "C" {
#endif

// The longest line we parse; longer ones are reported, not parsed.
#define JSONL_MAX_LINE_BYTES (16u << 20)

typedef struct {
    const char *path;
    char *text;          // the whole file, NUL-terminated
    size_t size;
    size_t next;         // where the next line starts
    int line_number;     // the number of the line last returned (1-based)
} JsonlFile;

// Reads path. Returns -1 with "PATH: what is wrong" in err when it cannot be
// read, or is in UTF-16 or has CR-only line ends (the message says so). An
// empty file opens fine (jsonl_next then returns NULL at once).
int jsonl_open(JsonlFile *f, const char *path, char *err, size_t err_size);
void jsonl_close(JsonlFile *f);

// The next line that is not blank (without its line end), its length in *len,
// its number in f->line_number; NULL at the end of the file.
const char *jsonl_next(JsonlFile *f, size_t *len);

// Parses one line. On failure returns NULL with the reason in reason:
// "invalid JSON: column C: what is wrong" (formats/json.h's messages: syntax, invalid
// UTF-8 inside a string, ...) or "line is N bytes, longer than the limit".
JsonValue *jsonl_parse_line(const char *line, size_t len, char *reason, size_t reason_size);

#ifdef __cplusplus
}
#endif
