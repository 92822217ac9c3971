// formats/json.c: a recursive-descent JSON parser. Every value is a JsonValue tree
// node; strings are decoded (escapes, surrogate pairs) and must be valid UTF-8.
// At the bottom, the JSON string writer.
#include "formats/json.h"
#include "formats/utf8.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define JSON_MAX_DEPTH 256

typedef struct {
    const char *text;
    size_t len;
    size_t pos;
    int depth;
    char *err;
    size_t err_size;
    int failed;
} Parser;

// The line and column (from 1) of byte pos of the text.
static void line_column(const Parser *p, size_t pos, size_t *line, size_t *column) {
    *line = 1, *column = 1;
    for (size_t i = 0; i < pos && i < p->len; i++) {
        if (p->text[i] == '\n') { (*line)++; *column = 1; } else (*column)++;
    }
}

// Records the first error, at the current position.
static void fail(Parser *p, const char *what) {
    if (p->failed) return;
    p->failed = 1;
    size_t line, column;
    line_column(p, p->pos, &line, &column);
    snprintf(p->err, p->err_size, "line %zu, column %zu: %s", line, column, what);
}

static void skip_space(Parser *p) {
    while (p->pos < p->len) {
        char c = p->text[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int peek(Parser *p) { return p->pos < p->len ? (unsigned char)p->text[p->pos] : -1; }

static int expect_word(Parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->text + p->pos, word, n) != 0) {
        fail(p, "unexpected word (expected true, false or null)");
        return 0;
    }
    p->pos += n;
    return 1;
}

static size_t encode_utf8(unsigned cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int read_hex4(Parser *p, unsigned *value) {
    if (p->len - p->pos < 4) { fail(p, "truncated \\u escape"); return 0; }
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->text[p->pos++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else { fail(p, "bad hex digit in \\u escape"); return 0; }
    }
    *value = v;
    return 1;
}

// Reads one escape after the backslash; appends its UTF-8 bytes to out.
static size_t read_escape(Parser *p, char *out) {
    if (p->pos >= p->len) { fail(p, "truncated escape"); return 0; }
    char c = p->text[p->pos++];
    switch (c) {
    case '"': out[0] = '"'; return 1;
    case '\\': out[0] = '\\'; return 1;
    case '/': out[0] = '/'; return 1;
    case 'b': out[0] = '\b'; return 1;
    case 'f': out[0] = '\f'; return 1;
    case 'n': out[0] = '\n'; return 1;
    case 'r': out[0] = '\r'; return 1;
    case 't': out[0] = '\t'; return 1;
    case 'u': break;
    default: fail(p, "unknown escape in string"); return 0;
    }
    unsigned cp;
    if (!read_hex4(p, &cp)) return 0;
    if (cp >= 0xDC00 && cp <= 0xDFFF) { fail(p, "lone low surrogate in \\u escape"); return 0; }
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        unsigned low;
        if (p->len - p->pos < 2 || p->text[p->pos] != '\\' || p->text[p->pos + 1] != 'u') {
            fail(p, "high surrogate not followed by a low surrogate");
            return 0;
        }
        p->pos += 2;
        if (!read_hex4(p, &low)) return 0;
        if (low < 0xDC00 || low > 0xDFFF) { fail(p, "bad low surrogate in \\u escape"); return 0; }
        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    }
    return encode_utf8(cp, out);
}

// Parses a string (p at the opening quote) into a malloc'd buffer.
static char *parse_string(Parser *p, size_t *out_len) {
    p->pos++;  // opening quote
    // The decoded string is never longer than the raw text up to the closing quote.
    size_t start = p->pos, end = start;
    while (end < p->len && p->text[end] != '"') end += (p->text[end] == '\\') ? 2 : 1;
    if (end >= p->len) { fail(p, "unterminated string"); return NULL; }
    char *out = (char *)malloc(end - start + 1);
    if (!out) { fail(p, "out of memory"); return NULL; }
    size_t n = 0;
    while (!p->failed) {
        unsigned char c = (unsigned char)p->text[p->pos];
        if (c == '"') { p->pos++; break; }
        if (c < 0x20) { fail(p, "control character inside string"); break; }
        if (c == '\\') {
            p->pos++;
            n += read_escape(p, out + n);
            continue;
        }
        int valid;
        size_t seq = utf8_sequence((const unsigned char *)p->text + p->pos, p->len - p->pos, &valid);
        if (!valid) { fail(p, "invalid UTF-8 inside string"); break; }
        memcpy(out + n, p->text + p->pos, seq);
        n += seq;
        p->pos += seq;
    }
    if (p->failed) { free(out); return NULL; }
    out[n] = '\0';
    *out_len = n;
    return out;
}

static void parse_number(Parser *p, JsonValue *v) {
    size_t start = p->pos;
    if (peek(p) == '-') p->pos++;
    if (peek(p) == '0') p->pos++;
    else if (peek(p) >= '1' && peek(p) <= '9') while (peek(p) >= '0' && peek(p) <= '9') p->pos++;
    else { fail(p, "bad number"); return; }
    if (peek(p) == '.') {
        p->pos++;
        if (!(peek(p) >= '0' && peek(p) <= '9')) { fail(p, "bad number: digits expected after '.'"); return; }
        while (peek(p) >= '0' && peek(p) <= '9') p->pos++;
    }
    if (peek(p) == 'e' || peek(p) == 'E') {
        p->pos++;
        if (peek(p) == '+' || peek(p) == '-') p->pos++;
        if (!(peek(p) >= '0' && peek(p) <= '9')) { fail(p, "bad number: digits expected in exponent"); return; }
        while (peek(p) >= '0' && peek(p) <= '9') p->pos++;
    }
    char buf[64];
    size_t n = p->pos - start;
    if (n >= sizeof buf) { fail(p, "number too long"); return; }
    memcpy(buf, p->text + start, n);
    buf[n] = '\0';
    v->type = JSON_NUMBER;
    v->number = strtod(buf, NULL);
}

static void parse_value(Parser *p, JsonValue *v);
static void parse_members(Parser *p, JsonValue *v, size_t **key_pos);

// Grows a vector of items (and keys for objects) to hold one more.
static int grow(Parser *p, JsonValue *v, size_t *capacity, int with_keys) {
    if (v->count < *capacity) return 1;
    size_t cap = *capacity ? *capacity * 2 : 8;
    JsonValue *items = (JsonValue *)realloc(v->items, cap * sizeof(JsonValue));
    if (!items) { fail(p, "out of memory"); return 0; }
    v->items = items;
    if (with_keys) {
        char **keys = (char **)realloc(v->keys, cap * sizeof(char *));
        if (!keys) { fail(p, "out of memory"); return 0; }
        v->keys = keys;
    }
    *capacity = cap;
    return 1;
}

static void parse_array(Parser *p, JsonValue *v) {
    size_t capacity = 0;
    v->type = JSON_ARRAY;
    p->pos++;  // '['
    skip_space(p);
    if (peek(p) == ']') { p->pos++; return; }
    while (!p->failed) {
        if (!grow(p, v, &capacity, 0)) return;
        JsonValue *item = &v->items[v->count++];
        memset(item, 0, sizeof *item);
        parse_value(p, item);
        if (p->failed) return;
        skip_space(p);
        if (peek(p) == ',') { p->pos++; continue; }
        if (peek(p) == ']') { p->pos++; return; }
        fail(p, "expected ',' or ']' in array");
    }
}

// An object member's name and where it starts in the text.
typedef struct {
    const char *key;
    size_t pos;
} KeyAt;

// Orders by name, then by place in the text.
static int by_key_then_pos(const void *a, const void *b) {
    const KeyAt *x = (const KeyAt *)a, *y = (const KeyAt *)b;
    int order = strcmp(x->key, y->key);
    return order ? order : (x->pos > y->pos) - (x->pos < y->pos);
}

// Fails at the first key (in the text) that repeats an earlier one: a member
// given twice would mean two things (Python's json takes the last, we took
// the first). Sorting keeps a 49152-entry vocabulary fast.
static void check_unique_keys(Parser *p, const JsonValue *v, const size_t *key_pos) {
    if (v->count < 2) return;
    KeyAt *keys = (KeyAt *)malloc(v->count * sizeof(KeyAt));
    if (!keys) { fail(p, "out of memory"); return; }
    for (size_t i = 0; i < v->count; i++) keys[i] = (KeyAt){v->keys[i], key_pos[i]};
    qsort(keys, v->count, sizeof(KeyAt), by_key_then_pos);
    // the earliest repeat in the text and the first use of its key, as indices into keys
    size_t repeat = 0, first = 0;
    for (size_t start = 0, i = 1; i < v->count; i++) {
        if (strcmp(keys[i].key, keys[start].key) != 0) { start = i; continue; }
        if (i == start + 1 && (repeat == 0 || keys[i].pos < keys[repeat].pos)) repeat = i, first = start;
    }
    if (repeat) {
        size_t line, column, repeat_line, repeat_column;
        line_column(p, keys[first].pos, &line, &column);
        line_column(p, keys[repeat].pos, &repeat_line, &repeat_column);
        char what[320], at[64] = "";
        if (line != repeat_line) snprintf(at, sizeof at, "line %zu, ", line);
        snprintf(what, sizeof what, "duplicate key \"%.200s\" (first at %scolumn %zu)", keys[repeat].key, at, column);
        p->pos = keys[repeat].pos;
        fail(p, what);
    }
    free(keys);
}

// Parses an object (p at '{'); where each key starts is kept to name a repeat.
static void parse_object(Parser *p, JsonValue *v) {
    size_t *key_pos = NULL;
    parse_members(p, v, &key_pos);
    if (!p->failed) check_unique_keys(p, v, key_pos);
    free(key_pos);
}

// The members of an object, with each key's start in (*key_pos)[i].
static void parse_members(Parser *p, JsonValue *v, size_t **key_pos) {
    size_t capacity = 0;
    v->type = JSON_OBJECT;
    p->pos++;  // '{'
    skip_space(p);
    if (peek(p) == '}') { p->pos++; return; }
    while (!p->failed) {
        skip_space(p);
        if (peek(p) != '"') { fail(p, "expected a string key in object"); return; }
        size_t old_capacity = capacity;
        if (!grow(p, v, &capacity, 1)) return;
        if (capacity != old_capacity) {
            size_t *positions = (size_t *)realloc(*key_pos, capacity * sizeof(size_t));
            if (!positions) { fail(p, "out of memory"); return; }
            *key_pos = positions;
        }
        (*key_pos)[v->count] = p->pos;
        size_t key_len;
        char *key = parse_string(p, &key_len);
        if (!key) return;
        JsonValue *item = &v->items[v->count];
        memset(item, 0, sizeof *item);
        v->keys[v->count++] = key;
        skip_space(p);
        if (peek(p) != ':') { fail(p, "expected ':' after object key"); return; }
        p->pos++;
        parse_value(p, item);
        if (p->failed) return;
        skip_space(p);
        if (peek(p) == ',') { p->pos++; continue; }
        if (peek(p) == '}') { p->pos++; return; }
        fail(p, "expected ',' or '}' in object");
    }
}

static void parse_value(Parser *p, JsonValue *v) {
    if (++p->depth > JSON_MAX_DEPTH) { fail(p, "nesting too deep"); return; }
    skip_space(p);
    int c = peek(p);
    if (c == '{') parse_object(p, v);
    else if (c == '[') parse_array(p, v);
    else if (c == '"') {
        v->string = parse_string(p, &v->string_len);
        if (v->string) v->type = JSON_STRING;
    } else if (c == 't') { if (expect_word(p, "true")) { v->type = JSON_BOOL; v->boolean = 1; } }
    else if (c == 'f') { if (expect_word(p, "false")) { v->type = JSON_BOOL; v->boolean = 0; } }
    else if (c == 'n') { if (expect_word(p, "null")) v->type = JSON_NULL; }
    else if (c == '-' || (c >= '0' && c <= '9')) parse_number(p, v);
    else if (c < 0) fail(p, "unexpected end of input");
    else fail(p, "unexpected character");
    p->depth--;
}

static void free_children(JsonValue *v) {
    if (v->type == JSON_STRING) free(v->string);
    for (size_t i = 0; i < v->count; i++) {
        free_children(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
}

JsonValue *json_parse(const char *text, size_t len, char *err, size_t err_size) {
    Parser p = {text, len, 0, 0, err, err_size, 0};
    JsonValue *root = (JsonValue *)calloc(1, sizeof(JsonValue));
    if (!root) { snprintf(err, err_size, "out of memory"); return NULL; }
    parse_value(&p, root);
    if (!p.failed) {
        skip_space(&p);
        if (p.pos != p.len) fail(&p, "extra text after the JSON value");
    }
    if (p.failed) { json_free(root); return NULL; }
    return root;
}

void json_free(JsonValue *value) {
    if (!value) return;
    free_children(value);
    free(value);
}

const JsonValue *json_get(const JsonValue *object, const char *key) {
    if (!object || object->type != JSON_OBJECT) return NULL;
    for (size_t i = 0; i < object->count; i++)
        if (strcmp(object->keys[i], key) == 0) return &object->items[i];
    return NULL;
}

double json_get_number(const JsonValue *object, const char *key, double fallback) {
    const JsonValue *v = json_get(object, key);
    return (v && v->type == JSON_NUMBER) ? v->number : fallback;
}

const char *json_get_string(const JsonValue *object, const char *key, const char *fallback) {
    const JsonValue *v = json_get(object, key);
    return (v && v->type == JSON_STRING) ? v->string : fallback;
}

JsonValue *json_parse_file(const char *path, char *err, size_t err_size) {
    size_t len;
    char *text = read_file(path, &len, err, err_size);
    if (!text) return NULL;
    char why[256];
    JsonValue *value = json_parse(text, len, why, sizeof why);
    free(text);
    if (!value) snprintf(err, err_size, "%s: %s (not valid JSON)", path, why);
    return value;
}

char *read_file(const char *path, size_t *len, char *err, size_t err_size) {
    FILE *f = fopen(path, "rb");
    if (!f) { snprintf(err, err_size, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    // a device (/dev/zero, /dev/urandom) would be read until memory runs out
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))) {
        fclose(f);
        snprintf(err, err_size, "%s: is a device, not a file", path);
        return NULL;
    }
    char *data = NULL;
    size_t size = 0, capacity = 0;
    for (;;) {
        if (size + 65536 + 1 > capacity) {
            capacity = capacity ? capacity * 2 : 1 << 20;
            char *bigger = (char *)realloc(data, capacity);
            if (!bigger) { free(data); fclose(f); snprintf(err, err_size, "%s: out of memory", path); return NULL; }
            data = bigger;
        }
        size_t got = fread(data + size, 1, 65536, f);
        size += got;
        if (got < 65536) break;
    }
    int read_errno = ferror(f) ? errno : 0;   // EISDIR for a directory
    fclose(f);
    if (read_errno) {
        free(data);
        snprintf(err, err_size, "%s: cannot read: %s", path, strerror(read_errno));
        return NULL;
    }
    data[size] = '\0';
    *len = size;
    return data;
}

// ---- writing -------------------------------------------------------------------

// The two-character escape of c, or NULL when it has none.
static const char *short_escape(unsigned char c) {
    switch (c) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\b': return "\\b";
    case '\f': return "\\f";
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    default: return NULL;
    }
}

void json_write_string_len(FILE *f, const char *text, size_t len) {
    const unsigned char *s = (const unsigned char *)text;
    fputc('"', f);
    for (size_t i = 0; i < len;) {
        int valid;
        size_t seq = utf8_sequence(s + i, len - i, &valid);
        const char *escape = short_escape(s[i]);
        if (!valid) fputs("\\ufffd", f);   // one per maximal ill-formed subpart, as HF's decode
        else if (escape) fputs(escape, f);
        else if (s[i] < 0x20) fprintf(f, "\\u%04x", s[i]);
        else fwrite(s + i, 1, seq, f);
        i += seq;
    }
    fputc('"', f);
}

void json_write_string(FILE *f, const char *text) { json_write_string_len(f, text, strlen(text)); }
