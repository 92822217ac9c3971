// data/jsonl.c: reading JSON Lines files line by line (see jsonl.h).
#include "data/jsonl.h"
#include "formats/utf8.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Why text (size bytes) cannot be read as JSON Lines although it may be fine
// text: in UTF-16 or with CR-only line ends. NULL when it is neither.
static const char *wrong_encoding(const char *text, size_t size) {
    const unsigned char *u = (const unsigned char *)text;
    if (size >= 2 && ((u[0] == 0xFF && u[1] == 0xFE) || (u[0] == 0xFE && u[1] == 0xFF)))
        return "is in UTF-16 (it starts with a UTF-16 byte-order mark): save it as UTF-8";
    if (size >= 2 && (u[0] == 0 || u[1] == 0))
        return "looks like UTF-16 (NUL bytes in its first character): save it as UTF-8";
    const char *cr = (const char *)memchr(text, '\r', size);
    if (cr && !memchr(text, '\n', size) && cr + 1 < text + size)
        return "ends its lines with CR alone (classic Mac line ends): save it with LF (or CRLF) line ends";
    return NULL;
}

int jsonl_open(JsonlFile *f, const char *path, char *err, size_t err_size) {
    memset(f, 0, sizeof *f);
    f->path = path;
    f->text = read_file(path, &f->size, err, err_size);
    if (!f->text) return -1;
    const char *why = wrong_encoding(f->text, f->size);
    if (why) {
        snprintf(err, err_size, "%s: %s", path, why);
        jsonl_close(f);
        return -1;
    }
    // a UTF-8 byte-order mark is not part of the first line
    f->next = utf8_bom_length(f->text, f->size);
    return 0;
}

void jsonl_close(JsonlFile *f) {
    free(f->text);
    memset(f, 0, sizeof *f);
}

static int is_blank(const char *text, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (text[i] != ' ' && text[i] != '\t' && text[i] != '\r') return 0;
    return 1;
}

const char *jsonl_next(JsonlFile *f, size_t *len) {
    while (f->next < f->size) {
        const char *start = f->text + f->next;
        const char *newline = (const char *)memchr(start, '\n', f->size - f->next);
        size_t line_len = newline ? (size_t)(newline - start) : f->size - f->next;
        f->next += line_len + 1;
        f->line_number++;
        if (line_len > 0 && start[line_len - 1] == '\r') line_len--;
        if (is_blank(start, line_len)) continue;
        *len = line_len;
        return start;
    }
    *len = 0;
    return NULL;
}

JsonValue *jsonl_parse_line(const char *line, size_t len, char *reason, size_t reason_size) {
    if (len > JSONL_MAX_LINE_BYTES) {
        snprintf(reason, reason_size, "line is %zu bytes, longer than the limit of %u bytes", len,
                 JSONL_MAX_LINE_BYTES);
        return NULL;
    }
    char parse_error[512];
    JsonValue *value = json_parse(line, len, parse_error, sizeof parse_error);
    if (!value) {
        // The text is one line, so json_parse's "line 1, " position prefix says nothing.
        const char *where = strncmp(parse_error, "line 1, ", 8) == 0 ? parse_error + 8 : parse_error;
        snprintf(reason, reason_size, "invalid JSON: %s", where);
    }
    return value;
}
