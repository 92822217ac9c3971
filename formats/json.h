// formats/json.h: a small JSON reader (RFC 8259) for config.json, tokenizer.json,
// safetensors headers and the training data. Strings come back as UTF-8.
// And the one JSON string writer, which every JSON file we write goes through.
#pragma once
#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonValue JsonValue;
struct JsonValue {
    JsonType type;
    int boolean;         // JSON_BOOL
    double number;       // JSON_NUMBER
    char *string;        // JSON_STRING: UTF-8, NUL-terminated (may hold \u0000, see string_len)
    size_t string_len;
    size_t count;        // JSON_ARRAY / JSON_OBJECT: number of items
    JsonValue *items;    // the items (array) or member values (object)
    char **keys;         // JSON_OBJECT: member names, parallel to items
};

// Parses len bytes of text. On error returns NULL and writes
// "line L, column C: what is wrong" into err. An object that names a member
// twice is an error at the second (the data would mean two things).
JsonValue *json_parse(const char *text, size_t len, char *err, size_t err_size);
void json_free(JsonValue *value);

// Member of an object by name (names are unique), or NULL.
const JsonValue *json_get(const JsonValue *object, const char *key);
// Convenience lookups with a default when the member is missing or of another type.
double json_get_number(const JsonValue *object, const char *key, double fallback);
const char *json_get_string(const JsonValue *object, const char *key, const char *fallback);

// Reads a whole file into memory (NUL-terminated). NULL + err on failure.
char *read_file(const char *path, size_t *len, char *err, size_t err_size);

// Reads and parses a JSON file. On failure returns NULL with
// "PATH: line L, column C: what is wrong (not valid JSON)" (or the read error) in err.
JsonValue *json_parse_file(const char *path, char *err, size_t err_size);

// Writes text as a quoted JSON string (RFC 8259): '"' and '\\' escaped, control
// characters as \b \f \n \r \t or \u00XX, bytes that are not UTF-8 (a text cut
// mid-character, say) as \ufffd per maximal ill-formed subpart, as HF's decode
// (JSON text is UTF-8), everything else as it is.
void json_write_string(FILE *f, const char *text);
// The same for len bytes, which may hold NUL bytes (written as \u0000).
void json_write_string_len(FILE *f, const char *text, size_t len);

#ifdef __cplusplus
}
#endif
