// test/fuzz/fuzz_json.c: the JSON reader (formats/json.c) on any bytes, and
// the JSON string writer on the same bytes read back: json_parse of
// json_write_string_len(x) must give x itself when x is valid UTF-8 (the
// writer replaces ill-formed bytes by U+FFFD, so then only "some string").
#include "formats/json.h"
#include "formats/utf8.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// 1 when every byte of text[0, len) belongs to a well-formed UTF-8 character.
static int is_valid_utf8(const unsigned char *text, size_t len) {
    for (size_t i = 0; i < len;) {
        int valid;
        i += utf8_sequence(text + i, len - i, &valid);
        if (!valid) return 0;
    }
    return 1;
}

// Looks every member up by its name, as the loaders do, all the way down.
static void walk(const JsonValue *v) {
    for (size_t i = 0; i < v->count; i++) {
        if (v->type == JSON_OBJECT && json_get(v, v->keys[i]) != &v->items[i]) abort();   // names are unique
        walk(&v->items[i]);
    }
}

static void check_round_trip(const uint8_t *data, size_t size) {
    char *written = NULL;
    size_t written_len = 0;
    FILE *out = open_memstream(&written, &written_len);
    if (!out) return;
    json_write_string_len(out, (const char *)data, size);
    if (fclose(out) != 0) return;
    char err[256];
    JsonValue *back = json_parse(written, written_len, err, sizeof err);
    if (!back || back->type != JSON_STRING) abort();   // the writer wrote something its reader refuses
    if (is_valid_utf8(data, size) && (back->string_len != size || memcmp(back->string, data, size) != 0)) abort();
    json_free(back);
    free(written);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    JsonValue *value = json_parse((const char *)data, size, err, sizeof err);
    if (value) {
        walk(value);
        json_free(value);
    }
    check_round_trip(data, size);
    return 0;
}
