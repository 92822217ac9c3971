// tokenizer.c: byte-level BPE, the tokenizer of GPT-2, SmolLM2, Llama-3 and
// Qwen2, loaded from GGUF metadata or a Hugging Face tokenizer.json.
//
// Byte-level BPE in five steps:
//  1. Special tokens written in the text ("<|im_start|>") are cut out first.
//  2. The rest is split into words (pre-tokens) by a regex: letters with one
//     leading space, numbers, punctuation, whitespace. Merges never cross a
//     word boundary.
//  3. Each byte of a word is written as one printable character (GPT-2's
//     bytes_to_unicode: printable Latin-1 bytes stand for themselves, the 68
//     others become U+0100..U+0143; a space is 'Ġ'). Vocabulary strings are
//     made of these characters, so any byte sequence can be encoded.
//  4. Starting from one symbol per byte, the adjacent pair that comes first in
//     the merge list is merged, again and again, until no adjacent pair is in
//     the list. The symbols left are the tokens.
//  5. Decoding joins the tokens' strings and maps each character back to its
//     byte.
// The regexes are written out by hand below, with utf8proc's Unicode
// categories.
#include "tokenizer.h"
#include "formats/atomic_file.h"

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <utf8proc.h>

#include "formats/json.h"
#include "formats/hash.h"
#include "formats/utf8.h"

// The default system message of SmolLM2's chat template.
static const char SMOLLM_DEFAULT_SYSTEM[] =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

// The Split regexes of Llama-3's and Qwen2's tokenizer.json, as written there.
static const char LLAMA3_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

typedef struct {
    char *text;         // vocabulary string (NUL-terminated); NULL for an unused id
    size_t text_len;
    char *bytes;        // what the token decodes to
    size_t bytes_len;
} Token;

typedef struct {
    int id;
    int special;        // 1: matched only when allow_special is set
} AddedToken;

typedef struct {
    uint64_t pair;      // left id << 32 | right id
    int rank;           // position in the merge list; -1 marks an empty slot
    int merged;         // id of the merged token
} MergeSlot;

struct Tokenizer {
    PreTokenizer pre;
    int nfc;                     // NFC-normalise text before splitting it
    int ignore_merges;           // a word that is a whole token skips BPE (Llama-3)
    int n_tokens;
    Token *tokens;
    int *vocab_slots;            // hash table: vocabulary string -> id (-1: empty)
    size_t vocab_mask;
    MergeSlot *merge_slots;      // hash table: (left, right) -> rank, merged id
    size_t merge_mask;
    int32_t byte_char[256];      // bytes_to_unicode
    int byte_token[256];         // id of the one-byte token, -1 when missing
    AddedToken *added;           // longest first
    int n_added;
    size_t added_cap;
    unsigned char added_first_byte[256];   // 1 if some added token starts with it
    int bos, eos, unk;           // unk: what a byte without a token becomes (HF's model.unk_token)
    int unk_named, pad;          // the unknown and padding tokens the source names, kept for exports
    char *chat_template;         // the source's Jinja chat template; NULL when it has none
    char *chat_template_names;   // the names of a list of templates none of which is "default", else NULL
    int im_start, im_end;
    const ChatFamily *chat;      // the family chat_encode renders; NULL: none recognised
    const char *chat_origin;     // how it was chosen (printed by the programs)
    char *default_system;        // NULL when the chat template has none
};

// ---------------------------------------------------------------- small helpers

static void set_error(char *err, size_t err_size, const char *fmt, ...) {
    if (!err || err_size == 0) return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(err, err_size, fmt, args);
    va_end(args);
}

// Makes *buf hold at least need elements of elem_size bytes; 0 on failure.
static int reserve(void **buf, size_t *cap, size_t need, size_t elem_size) {
    if (need <= *cap) return 1;
    size_t n = *cap ? *cap : 64;
    while (n < need) n *= 2;
    void *bigger = realloc(*buf, n * elem_size);
    if (!bigger) return 0;
    *buf = bigger;
    *cap = n;
    return 1;
}

static size_t table_size_for(size_t entries) {
    size_t n = 16;
    while (n < 2 * entries) n *= 2;
    return n;
}

static uint64_t hash_bytes(const char *s, size_t len) { return fnv1a(FNV1A_OFFSET_BASIS, s, len); }

static uint64_t hash_pair(uint64_t pair) {
    pair ^= pair >> 31;
    pair *= 0x9E3779B97F4A7C15ull;
    return pair ^ (pair >> 29);
}

// ---------------------------------------------------------------- bytes <-> characters

static int byte_is_printable(int b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

static void make_byte_chars(Tokenizer *t) {
    int next = 256;
    for (int b = 0; b < 256; b++) t->byte_char[b] = byte_is_printable(b) ? b : next++;
}

// The byte a vocabulary character stands for, or -1.
static int char_to_byte(int32_t c) {
    if (c < 256) return byte_is_printable(c) ? c : -1;
    if (c >= 256 + 68) return -1;
    int k = c - 256;
    for (int b = 0; b < 256; b++)
        if (!byte_is_printable(b) && k-- == 0) return b;
    return -1;
}

// Decodes a vocabulary string to bytes as HF's ByteLevel decoder does: every
// character mapped back to its byte, or (when some character is not one of
// the 256) the string's own UTF-8 bytes, as for "<|im_start|>".
static int make_token_bytes(Token *tok) {
    tok->bytes = malloc(tok->text_len + 1);
    if (!tok->bytes) return 0;
    const utf8proc_uint8_t *s = (const utf8proc_uint8_t *)tok->text;
    size_t n = 0;
    for (utf8proc_ssize_t i = 0; i < (utf8proc_ssize_t)tok->text_len;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t step = utf8proc_iterate(s + i, (utf8proc_ssize_t)tok->text_len - i, &c);
        int b = step > 0 ? char_to_byte(c) : -1;
        if (b < 0) {
            memcpy(tok->bytes, tok->text, tok->text_len);
            n = tok->text_len;
            break;
        }
        tok->bytes[n++] = (char)b;
        i += step;
    }
    tok->bytes[n] = '\0';
    tok->bytes_len = n;
    return 1;
}

// ---------------------------------------------------------------- vocabulary table

static int vocab_lookup(const Tokenizer *t, const char *s, size_t len) {
    if (!t->vocab_slots) return -1;
    for (size_t i = hash_bytes(s, len) & t->vocab_mask;; i = (i + 1) & t->vocab_mask) {
        int id = t->vocab_slots[i];
        if (id < 0) return -1;
        const Token *tok = &t->tokens[id];
        if (tok->text_len == len && memcmp(tok->text, s, len) == 0) return id;
    }
}

// Adds every token's string; when a string is there twice the first id wins.
static int build_vocab_table(Tokenizer *t) {
    size_t size = table_size_for((size_t)t->n_tokens);
    t->vocab_slots = malloc(size * sizeof(int));
    if (!t->vocab_slots) return 0;
    memset(t->vocab_slots, 0xff, size * sizeof(int));
    t->vocab_mask = size - 1;
    for (int id = 0; id < t->n_tokens; id++) {
        const Token *tok = &t->tokens[id];
        if (!tok->text || vocab_lookup(t, tok->text, tok->text_len) >= 0) continue;
        size_t i = hash_bytes(tok->text, tok->text_len) & t->vocab_mask;
        while (t->vocab_slots[i] >= 0) i = (i + 1) & t->vocab_mask;
        t->vocab_slots[i] = id;
    }
    return 1;
}

// ---------------------------------------------------------------- merge table

static const MergeSlot *merge_lookup(const Tokenizer *t, int left, int right) {
    uint64_t pair = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (size_t i = hash_pair(pair) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const MergeSlot *slot = &t->merge_slots[i];
        if (slot->rank < 0) return NULL;
        if (slot->pair == pair) return slot;
    }
}

static int alloc_merge_table(Tokenizer *t, size_t n_merges) {
    size_t size = table_size_for(n_merges);
    t->merge_slots = malloc(size * sizeof(MergeSlot));
    if (!t->merge_slots) return 0;
    for (size_t i = 0; i < size; i++) t->merge_slots[i].rank = -1;
    t->merge_mask = size - 1;
    return 1;
}

// Adds merge number rank, "left right"; a pair listed twice keeps its first
// rank. On error writes what is wrong (without the path) and returns 0.
static int add_merge(Tokenizer *t, const char *left, size_t left_len, const char *right,
                     size_t right_len, int rank, char *err, size_t err_size) {
    int a = vocab_lookup(t, left, left_len), b = vocab_lookup(t, right, right_len);
    char *joined = malloc(left_len + right_len + 1);
    if (!joined) { set_error(err, err_size, "out of memory"); return 0; }
    memcpy(joined, left, left_len);
    memcpy(joined + left_len, right, right_len);
    int merged = vocab_lookup(t, joined, left_len + right_len);
    free(joined);
    if (a < 0 || b < 0 || merged < 0) {
        set_error(err, err_size, "merge %d (\"%.*s\" \"%.*s\") uses a string that is not in the vocabulary",
                  rank, (int)left_len, left, (int)right_len, right);
        return 0;
    }
    if (merge_lookup(t, a, b)) return 1;
    uint64_t pair = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = hash_pair(pair) & t->merge_mask;
    while (t->merge_slots[i].rank >= 0) i = (i + 1) & t->merge_mask;
    t->merge_slots[i] = (MergeSlot){pair, rank, merged};
    return 1;
}

// Splits a GGUF-style merge "left right" at its first space after the first byte.
static int add_merge_string(Tokenizer *t, const char *s, size_t len, int rank, char *err, size_t err_size) {
    const char *space = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
    if (!space || space + 1 == s + len) {
        set_error(err, err_size, "merge %d (\"%.*s\") is not two strings separated by a space",
                  rank, (int)len, s);
        return 0;
    }
    return add_merge(t, s, (size_t)(space - s), space + 1, (size_t)(s + len - space - 1), rank, err, err_size);
}

// ---------------------------------------------------------------- building

static Tokenizer *tokenizer_alloc(int n_tokens) {
    Tokenizer *t = calloc(1, sizeof(Tokenizer));
    if (!t) return NULL;
    t->tokens = calloc((size_t)n_tokens, sizeof(Token));
    if (!t->tokens) { free(t); return NULL; }
    t->n_tokens = n_tokens;
    t->bos = t->eos = t->unk = t->unk_named = t->pad = t->im_start = t->im_end = -1;
    return t;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_tokens; i++) {
        free(t->tokens[i].text);
        free(t->tokens[i].bytes);
    }
    free(t->tokens);
    free(t->vocab_slots);
    free(t->merge_slots);
    free(t->added);
    free(t->chat_template);
    free(t->chat_template_names);
    free(t->default_system);
    free(t);
}

static int set_token_text(Tokenizer *t, int id, const char *s, size_t len) {
    Token *tok = &t->tokens[id];
    tok->text = malloc(len + 1);
    if (!tok->text) return 0;
    memcpy(tok->text, s, len);
    tok->text[len] = '\0';
    tok->text_len = len;
    return 1;
}

static int add_added_token(Tokenizer *t, int id, int special) {
    if (!reserve((void **)&t->added, &t->added_cap, (size_t)t->n_added + 1, sizeof(AddedToken))) return 0;
    t->added[t->n_added++] = (AddedToken){id, special};
    return 1;
}

// Orders the added tokens longest first (insertion sort: there are few) and
// notes the bytes they start with.
static void sort_added_tokens(Tokenizer *t) {
    for (int i = 1; i < t->n_added; i++) {
        AddedToken a = t->added[i];
        size_t len = t->tokens[a.id].text_len;
        int j = i;
        for (; j > 0 && t->tokens[t->added[j - 1].id].text_len < len; j--) t->added[j] = t->added[j - 1];
        t->added[j] = a;
    }
    for (int i = 0; i < t->n_added; i++)
        t->added_first_byte[(unsigned char)t->tokens[t->added[i].id].text[0]] = 1;
}

// Everything derived from the vocabulary once it is loaded.
static int finish_tokenizer(Tokenizer *t) {
    make_byte_chars(t);
    for (int id = 0; id < t->n_tokens; id++)
        if (t->tokens[id].text && !make_token_bytes(&t->tokens[id])) return 0;
    for (int b = 0; b < 256; b++) {
        char s[4];
        utf8proc_ssize_t n = utf8proc_encode_char(t->byte_char[b], (utf8proc_uint8_t *)s);
        t->byte_token[b] = vocab_lookup(t, s, (size_t)n);
    }
    sort_added_tokens(t);
    t->im_start = tokenizer_find(t, "<|im_start|>");
    t->im_end = tokenizer_find(t, "<|im_end|>");
    return 1;
}

// The chat family of the source's template (NULL when it matches none: the
// programs that render refuse then); without a template, ChatML for a ChatML
// vocabulary, with SmolLM2's default system message for SmolLM tokenizers.
// 0 when out of memory.
static int choose_chat(Tokenizer *t) {
    if (t->chat_template) {
        t->chat = chat_family_recognise(t->chat_template);
        t->chat_origin = "the model's chat template";
        if (!t->chat) return 1;
        int failed;
        t->default_system = chat_default_system(t->chat, t->chat_template, &failed);
        return !failed;
    }
    if (t->chat_template_names || t->im_start < 0 || t->im_end < 0) return 1;
    t->chat = chat_family_named("chatml");
    t->chat_origin = "the model has no chat template; its vocabulary has <|im_start|>";
    if (t->pre != PRETOK_SMOLLM) return 1;
    t->default_system = strdup(SMOLLM_DEFAULT_SYSTEM);
    return t->default_system != NULL;
}

// ---------------------------------------------------------------- loading from GGUF

static const GGUFKeyValue *gguf_array(const GGUFFile *f, const char *key, GGUFType type) {
    const GGUFKeyValue *kv = gguf_find(f, key);
    if (!kv || kv->type != GGUF_ARRAY || kv->array_type != type) return NULL;
    return kv;
}

static int pretokenizer_from_name(const char *name, PreTokenizer *pre) {
    if (strcmp(name, "smollm") == 0 || strcmp(name, "exaone") == 0) *pre = PRETOK_SMOLLM;
    else if (strcmp(name, "gpt-2") == 0 || strcmp(name, "gpt2") == 0 || strcmp(name, "default") == 0) *pre = PRETOK_GPT2;
    else if (strcmp(name, "llama-bpe") == 0 || strcmp(name, "llama3") == 0) *pre = PRETOK_LLAMA3;
    else if (strcmp(name, "qwen2") == 0) *pre = PRETOK_QWEN2;
    else return 0;
    return 1;
}

const char *pretokenizer_gguf_name(PreTokenizer pre) {
    switch (pre) {
    case PRETOK_GPT2: return "gpt-2";
    case PRETOK_SMOLLM: return "smollm";
    case PRETOK_LLAMA3: return "llama-bpe";
    case PRETOK_QWEN2: return "qwen2";
    }
    return "default";
}

// tokenizer.ggml.model must be "gpt2" and tokenizer.ggml.pre a known name
// (missing means "default", as in llama.cpp).
static int read_gguf_kind(const GGUFFile *f, const char *path, PreTokenizer *pre, char *err, size_t err_size) {
    char *model = gguf_get_string(f, "tokenizer.ggml.model");
    int is_gpt2 = model && strcmp(model, "gpt2") == 0;
    if (!model) set_error(err, err_size, "%s: tokenizer.ggml.model is missing", path);
    else if (!is_gpt2)
        set_error(err, err_size, "%s: tokenizer.ggml.model is \"%s\", only \"gpt2\" (byte-level BPE) is supported",
                  path, model);
    free(model);
    if (!is_gpt2) return 0;
    char *name = gguf_get_string(f, "tokenizer.ggml.pre");
    int ok = pretokenizer_from_name(name ? name : "default", pre);
    if (!ok) set_error(err, err_size, "%s: unsupported tokenizer.ggml.pre \"%s\"", path, name);
    free(name);
    return ok;
}

static int read_gguf_merges(Tokenizer *t, const GGUFFile *f, const char *path, char *err, size_t err_size) {
    const GGUFKeyValue *merges = gguf_array(f, "tokenizer.ggml.merges", GGUF_STRING);
    if (!merges) {
        set_error(err, err_size, "%s: tokenizer.ggml.merges is missing or not a string array", path);
        return 0;
    }
    if (merges->array_count > INT_MAX || !alloc_merge_table(t, (size_t)merges->array_count)) {
        set_error(err, err_size, "%s: out of memory for %llu merges", path, (unsigned long long)merges->array_count);
        return 0;
    }
    char what[256];
    for (uint64_t i = 0; i < merges->array_count; i++) {
        const GGUFString *m = &merges->array_strings[i];
        if (!add_merge_string(t, m->ptr, (size_t)m->len, (int)i, what, sizeof what)) {
            set_error(err, err_size, "%s: tokenizer.ggml.merges: %s", path, what);
            return 0;
        }
    }
    return 1;
}

// Control tokens (type 3) are special; user-defined ones (type 4) are matched
// in any text, as llama.cpp and HF do with non-special added tokens.
static int read_gguf_token_types(Tokenizer *t, const GGUFFile *f, const char *path, char *err, size_t err_size) {
    const GGUFKeyValue *kv = gguf_find(f, "tokenizer.ggml.token_type");
    if (!kv) return 1;
    if (kv->type != GGUF_ARRAY || kv->array_type != GGUF_INT32 || kv->array_count != (uint64_t)t->n_tokens) {
        set_error(err, err_size, "%s: tokenizer.ggml.token_type is not an int32 array with one entry per token", path);
        return 0;
    }
    for (int id = 0; id < t->n_tokens; id++) {
        int32_t type;
        memcpy(&type, (const char *)kv->array_data + 4 * (size_t)id, 4);
        if ((type != 3 && type != 4) || t->tokens[id].text_len == 0) continue;
        if (!add_added_token(t, id, type == 3)) {
            set_error(err, err_size, "%s: out of memory", path);
            return 0;
        }
    }
    return 1;
}

static int read_gguf_token_id(const GGUFFile *f, const char *key, int n_tokens, const char *path,
                              int *id, char *err, size_t err_size) {
    int64_t value = gguf_get_int(f, key, -1);
    if (value < -1 || value >= n_tokens) {
        set_error(err, err_size, "%s: %s = %lld is not a token id (vocabulary size %d)", path, key,
                  (long long)value, n_tokens);
        return 0;
    }
    *id = (int)value;
    return 1;
}

static Tokenizer *gguf_tokens(const GGUFFile *f, const char *path, char *err, size_t err_size) {
    const GGUFKeyValue *tokens = gguf_array(f, "tokenizer.ggml.tokens", GGUF_STRING);
    if (!tokens || tokens->array_count == 0 || tokens->array_count > INT_MAX) {
        set_error(err, err_size, "%s: tokenizer.ggml.tokens is missing, empty or not a string array", path);
        return NULL;
    }
    Tokenizer *t = tokenizer_alloc((int)tokens->array_count);
    int ok = t != NULL;
    for (int id = 0; ok && id < t->n_tokens; id++)
        ok = set_token_text(t, id, tokens->array_strings[id].ptr, (size_t)tokens->array_strings[id].len);
    if (ok) ok = build_vocab_table(t);
    if (!ok) {
        set_error(err, err_size, "%s: out of memory for %llu tokens", path, (unsigned long long)tokens->array_count);
        tokenizer_free(t);
        return NULL;
    }
    return t;
}

Tokenizer *tokenizer_from_gguf(const GGUFFile *f, char *err, size_t err_size) {
    const char *path = f->path ? f->path : "gguf";
    PreTokenizer pre;
    if (!read_gguf_kind(f, path, &pre, err, err_size)) return NULL;
    Tokenizer *t = gguf_tokens(f, path, err, err_size);
    if (!t) return NULL;
    t->pre = pre;
    t->nfc = pre == PRETOK_QWEN2;
    t->ignore_merges = pre == PRETOK_LLAMA3;
    if (!read_gguf_merges(t, f, path, err, err_size) ||
        !read_gguf_token_types(t, f, path, err, err_size) ||
        !read_gguf_token_id(f, "tokenizer.ggml.bos_token_id", t->n_tokens, path, &t->bos, err, err_size) ||
        !read_gguf_token_id(f, "tokenizer.ggml.eos_token_id", t->n_tokens, path, &t->eos, err, err_size) ||
        !read_gguf_token_id(f, "tokenizer.ggml.unknown_token_id", t->n_tokens, path, &t->unk_named, err, err_size) ||
        !read_gguf_token_id(f, "tokenizer.ggml.padding_token_id", t->n_tokens, path, &t->pad, err, err_size)) {
        tokenizer_free(t);
        return NULL;
    }
    const GGUFKeyValue *template_kv = gguf_find(f, "tokenizer.chat_template");
    if (template_kv && template_kv->type == GGUF_STRING)
        t->chat_template = strndup(template_kv->string.ptr, (size_t)template_kv->string.len);
    if (!finish_tokenizer(t) || (template_kv && template_kv->type == GGUF_STRING && !t->chat_template) ||
        !choose_chat(t)) {
        set_error(err, err_size, "%s: out of memory", path);
        tokenizer_free(t);
        return NULL;
    }
    return t;
}

// ---------------------------------------------------------------- loading from tokenizer.json

static int is_type(const JsonValue *v, const char *type) {
    return v && v->type == JSON_OBJECT && strcmp(json_get_string(v, "type", ""), type) == 0;
}

static int json_bool(const JsonValue *object, const char *key, int fallback) {
    const JsonValue *v = json_get(object, key);
    return v && v->type == JSON_BOOL ? v->boolean : fallback;
}

// A token id: an integer in [0, limit).
static int json_token_id(const JsonValue *v, int limit, int *id) {
    if (!v || v->type != JSON_NUMBER || v->number < 0 || v->number >= limit || v->number != (int)v->number)
        return 0;
    *id = (int)v->number;
    return 1;
}

// ByteLevel without a prefix space, splitting with the GPT-2 regex or not.
static int is_byte_level(const JsonValue *v, int use_regex) {
    return is_type(v, "ByteLevel") && json_bool(v, "add_prefix_space", 1) == 0 &&
           json_bool(v, "use_regex", 1) == use_regex;
}

static int is_split_with(const JsonValue *v, const char *pattern) {
    const JsonValue *p = json_get(v, "pattern");
    return is_type(v, "Split") && strcmp(json_get_string(p, "Regex", ""), pattern) == 0 &&
           strcmp(json_get_string(v, "behavior", ""), "Isolated") == 0 && !json_bool(v, "invert", 0);
}

// Recognises the four pre_tokenizer configurations; 0 for anything else.
static int json_pretokenizer(const JsonValue *root, PreTokenizer *pre) {
    const JsonValue *p = json_get(root, "pre_tokenizer");
    if (is_byte_level(p, 1)) { *pre = PRETOK_GPT2; return 1; }
    const JsonValue *seq = is_type(p, "Sequence") ? json_get(p, "pretokenizers") : NULL;
    if (!seq || seq->type != JSON_ARRAY || seq->count != 2) return 0;
    const JsonValue *first = &seq->items[0], *second = &seq->items[1];
    if (is_type(first, "Digits") && json_bool(first, "individual_digits", 0) && is_byte_level(second, 1)) {
        *pre = PRETOK_SMOLLM;
        return 1;
    }
    if (!is_byte_level(second, 0)) return 0;
    if (is_split_with(first, LLAMA3_PATTERN)) { *pre = PRETOK_LLAMA3; return 1; }
    if (is_split_with(first, QWEN2_PATTERN)) { *pre = PRETOK_QWEN2; return 1; }
    return 0;
}

// null or NFC; sets *nfc. 0 for any other normalizer.
static int json_normalizer(const JsonValue *root, int *nfc) {
    const JsonValue *n = json_get(root, "normalizer");
    *nfc = is_type(n, "NFC");
    return !n || n->type == JSON_NULL || *nfc;
}

// The model options we do not implement must be off.
static const char *unsupported_model_option(const JsonValue *model) {
    const char *prefix = json_get_string(model, "continuing_subword_prefix", "");
    const char *suffix = json_get_string(model, "end_of_word_suffix", "");
    if (prefix[0]) return "continuing_subword_prefix";
    if (suffix[0]) return "end_of_word_suffix";
    if (json_bool(model, "byte_fallback", 0)) return "byte_fallback";
    return NULL;
}

// The vocabulary size: one more than the largest id in model.vocab and
// added_tokens. Ids must be below the number of entries of both together.
static int json_vocab_size(const JsonValue *vocab, const JsonValue *added, const char *path, char *err,
                           size_t err_size) {
    size_t entries = vocab->count + (added ? added->count : 0);
    int limit = entries < INT_MAX ? (int)entries : INT_MAX, size = 0, id;
    for (size_t i = 0; i < vocab->count; i++) {
        if (!json_token_id(&vocab->items[i], limit, &id)) {
            set_error(err, err_size, "%s: model.vocab[\"%s\"] is not a token id below %d", path, vocab->keys[i], limit);
            return -1;
        }
        if (id >= size) size = id + 1;
    }
    for (size_t i = 0; added && i < added->count; i++) {
        if (!json_token_id(json_get(&added->items[i], "id"), limit, &id)) {
            set_error(err, err_size, "%s: added_tokens[%zu].id is not a token id below %d", path, i, limit);
            return -1;
        }
        if (id >= size) size = id + 1;
    }
    if (size == 0) set_error(err, err_size, "%s: model.vocab is empty", path);
    return size > 0 ? size : -1;
}

static int json_vocab(Tokenizer *t, const JsonValue *vocab, const char *path, char *err, size_t err_size) {
    for (size_t i = 0; i < vocab->count; i++) {
        int id = (int)vocab->items[i].number;
        if (t->tokens[id].text) {
            set_error(err, err_size, "%s: model.vocab gives id %d twice", path, id);
            return 0;
        }
        if (!set_token_text(t, id, vocab->keys[i], strlen(vocab->keys[i]))) {
            set_error(err, err_size, "%s: out of memory", path);
            return 0;
        }
    }
    return 1;
}

// added_tokens: [{"id", "content", "special"}]. A token may repeat a
// vocabulary entry with the same id, but not give an id another string.
static int json_added_tokens(Tokenizer *t, const JsonValue *added, const char *path, char *err, size_t err_size) {
    for (size_t i = 0; added && i < added->count; i++) {
        const JsonValue *item = &added->items[i], *content = json_get(item, "content");
        int id = (int)json_get(item, "id")->number;
        if (!content || content->type != JSON_STRING || content->string_len == 0) {
            set_error(err, err_size, "%s: added_tokens[%zu].content is missing or not a non-empty string", path, i);
            return 0;
        }
        Token *tok = &t->tokens[id];
        if (tok->text && (tok->text_len != content->string_len || memcmp(tok->text, content->string, tok->text_len))) {
            set_error(err, err_size, "%s: added_tokens[%zu] \"%s\" takes id %d from \"%s\"", path, i,
                      content->string, id, tok->text);
            return 0;
        }
        if ((!tok->text && !set_token_text(t, id, content->string, content->string_len)) ||
            !add_added_token(t, id, json_bool(item, "special", 0))) {
            set_error(err, err_size, "%s: out of memory", path);
            return 0;
        }
    }
    return 1;
}

// merges: ["a b", ...] (older files) or [["a", "b"], ...].
static int json_merges(Tokenizer *t, const JsonValue *merges, const char *path, char *err, size_t err_size) {
    if (merges->count > INT_MAX || !alloc_merge_table(t, merges->count)) {
        set_error(err, err_size, "%s: out of memory", path);
        return 0;
    }
    char what[256];
    for (size_t i = 0; i < merges->count; i++) {
        const JsonValue *m = &merges->items[i];
        int ok;
        if (m->type == JSON_STRING) {
            ok = add_merge_string(t, m->string, m->string_len, (int)i, what, sizeof what);
        } else if (m->type == JSON_ARRAY && m->count == 2 && m->items[0].type == JSON_STRING &&
                   m->items[1].type == JSON_STRING) {
            ok = add_merge(t, m->items[0].string, m->items[0].string_len, m->items[1].string,
                           m->items[1].string_len, (int)i, what, sizeof what);
        } else {
            ok = 0;
            set_error(what, sizeof what, "merge %zu is neither \"a b\" nor [\"a\", \"b\"]", i);
        }
        if (!ok) {
            set_error(err, err_size, "%s: model.merges: %s", path, what);
            return 0;
        }
    }
    return 1;
}

// model.unk_token: null or a vocabulary string.
static int json_unk(Tokenizer *t, const JsonValue *model, const char *path, char *err, size_t err_size) {
    const JsonValue *unk = json_get(model, "unk_token");
    if (!unk || unk->type == JSON_NULL) return 1;
    if (unk->type == JSON_STRING) t->unk = tokenizer_find(t, unk->string);
    if (t->unk < 0) set_error(err, err_size, "%s: model.unk_token is not a string of the vocabulary", path);
    return t->unk >= 0;
}

// Checks the shape of the file and settles the pre-tokenizer; NULL + error otherwise.
static const JsonValue *json_model(const JsonValue *root, const char *path, PreTokenizer *pre, int *nfc,
                                   char *err, size_t err_size) {
    const JsonValue *model = json_get(root, "model"), *added = json_get(root, "added_tokens");
    const JsonValue *vocab = json_get(model, "vocab"), *merges = json_get(model, "merges");
    const char *type = json_get_string(model, "type", "BPE"), *option = NULL;
    if (!model || model->type != JSON_OBJECT) set_error(err, err_size, "%s: no \"model\" object", path);
    else if (strcmp(type, "BPE") != 0) set_error(err, err_size, "%s: model.type is \"%s\", only \"BPE\" is supported", path, type);
    else if (!vocab || vocab->type != JSON_OBJECT) set_error(err, err_size, "%s: model.vocab is missing or not an object", path);
    else if (!merges || merges->type != JSON_ARRAY) set_error(err, err_size, "%s: model.merges is missing or not an array", path);
    else if (added && added->type != JSON_ARRAY && added->type != JSON_NULL) set_error(err, err_size, "%s: added_tokens is not an array", path);
    else if ((option = unsupported_model_option(model))) set_error(err, err_size, "%s: model.%s is not supported", path, option);
    else if (!json_pretokenizer(root, pre))
        set_error(err, err_size, "%s: unsupported pre_tokenizer (known: ByteLevel; Digits + ByteLevel; "
                  "Split with the Llama-3 or Qwen2 regex + ByteLevel)", path);
    else if (!json_normalizer(root, nfc)) set_error(err, err_size, "%s: unsupported normalizer (only null or NFC)", path);
    else return model;
    return NULL;
}

static Tokenizer *json_tokenizer(const JsonValue *root, const char *path, char *err, size_t err_size) {
    PreTokenizer pre;
    int nfc;
    const JsonValue *model = json_model(root, path, &pre, &nfc, err, err_size);
    if (!model) return NULL;
    const JsonValue *added = json_get(root, "added_tokens");
    if (added && added->type != JSON_ARRAY) added = NULL;
    int size = json_vocab_size(json_get(model, "vocab"), added, path, err, err_size);
    if (size < 0) return NULL;
    Tokenizer *t = tokenizer_alloc(size);
    if (!t) {
        set_error(err, err_size, "%s: out of memory", path);
        return NULL;
    }
    t->pre = pre;
    t->nfc = nfc;
    t->ignore_merges = json_bool(model, "ignore_merges", 0);
    int ok = json_vocab(t, json_get(model, "vocab"), path, err, err_size) &&
             json_added_tokens(t, added, path, err, err_size);
    if (ok && !build_vocab_table(t)) {
        set_error(err, err_size, "%s: out of memory", path);
        ok = 0;
    }
    ok = ok && json_merges(t, json_get(model, "merges"), path, err, err_size) &&
         json_unk(t, model, path, err, err_size);
    if (ok && !finish_tokenizer(t)) {
        set_error(err, err_size, "%s: out of memory", path);
        ok = 0;
    }
    if (!ok) {
        tokenizer_free(t);
        return NULL;
    }
    return t;
}

// A token of tokenizer_config.json (bos_token, eos_token, ...): a string,
// {"content": ...} or null. One the vocabulary lacks is an error when
// required, else left at -1 (an unk or pad token only an export keeps).
static int config_token(Tokenizer *t, const JsonValue *config, const char *key, int required, const char *path,
                        int *id, char *err, size_t err_size) {
    const JsonValue *v = json_get(config, key);
    if (v && v->type == JSON_OBJECT) v = json_get(v, "content");
    if (!v || v->type == JSON_NULL) return 1;
    *id = v->type == JSON_STRING ? tokenizer_find(t, v->string) : -1;
    if (*id < 0 && required) set_error(err, err_size, "%s: %s is not a token of the vocabulary", path, key);
    return *id >= 0 || !required;
}

// chat_template of tokenizer_config.json: a string, or transformers' named
// templates, a list of {"name": N, "template": T}, of which we take the one
// named "default" (what apply_chat_template renders without tools). A list
// without one leaves no template, its names kept for the error the programs
// that render give. 0 with err.
static int config_chat_template(Tokenizer *t, const JsonValue *config, const char *path, char *err, size_t err_size) {
    const JsonValue *v = json_get(config, "chat_template");
    if (!v || v->type == JSON_NULL) return 1;
    if (v->type != JSON_STRING && v->type != JSON_ARRAY) {
        set_error(err, err_size, "%s: chat_template is neither a string nor a list of named templates", path);
        return 0;
    }
    const char *text = v->type == JSON_STRING ? v->string : NULL;
    size_t names_len = 1;
    for (size_t i = 0; v->type == JSON_ARRAY && i < v->count; i++) {
        const char *name = json_get_string(&v->items[i], "name", NULL);
        const char *template_text = json_get_string(&v->items[i], "template", NULL);
        if (v->items[i].type != JSON_OBJECT || !name || !template_text) {
            set_error(err, err_size, "%s: chat_template[%zu] is not {\"name\": ..., \"template\": ...}", path, i);
            return 0;
        }
        if (strcmp(name, "default") == 0) text = template_text;
        names_len += strlen(name) + 2;
    }
    if (text) {
        t->chat_template = strdup(text);
    } else if ((t->chat_template_names = calloc(1, names_len)) != NULL) {
        for (size_t i = 0; i < v->count; i++) {
            if (i > 0) strcat(t->chat_template_names, ", ");
            strcat(t->chat_template_names, json_get_string(&v->items[i], "name", ""));
        }
    }
    if (!t->chat_template && !t->chat_template_names) set_error(err, err_size, "%s: out of memory", path);
    return t->chat_template || t->chat_template_names;
}

// The chat template of chat_template.jinja at jinja_path when there is one: where
// transformers' save_pretrained puts it (since 4.43, instead of the config's
// chat_template), and, as when transformers loads, over the config's. 0 with err.
static int jinja_chat_template(Tokenizer *t, const char *jinja_path, char *err, size_t err_size) {
    if (access(jinja_path, F_OK) != 0) return 1;
    size_t len;
    char *text = read_file(jinja_path, &len, err, err_size);
    if (!text) return 0;
    if (strlen(text) != len) {
        set_error(err, err_size, "%s: contains a NUL byte (not a chat template)", jinja_path);
        free(text);
        return 0;
    }
    free(t->chat_template);
    free(t->chat_template_names);
    t->chat_template = text;
    t->chat_template_names = NULL;
    return 1;
}

// Reads bos/eos (and the unk, pad and chat template an export keeps) from
// the tokenizer_config.json next to path when there is one, and the chat
// template from chat_template.jinja there. Without an eos, a ChatML
// vocabulary ends turns with <|im_end|>.
static int load_config(Tokenizer *t, const char *path, char *err, size_t err_size) {
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash ? (size_t)(slash - path + 1) : 0;
    char *config_path = malloc(dir_len + sizeof "tokenizer_config.json");
    char *jinja_path = malloc(dir_len + sizeof "chat_template.jinja");
    if (!config_path || !jinja_path) {
        free(config_path);
        free(jinja_path);
        set_error(err, err_size, "%s: out of memory", path);
        return 0;
    }
    memcpy(config_path, path, dir_len);
    strcpy(config_path + dir_len, "tokenizer_config.json");
    memcpy(jinja_path, path, dir_len);
    strcpy(jinja_path + dir_len, "chat_template.jinja");
    int ok = 1;
    if (access(config_path, F_OK) == 0) {
        JsonValue *config = json_parse_file(config_path, err, err_size);
        if (config && config->type != JSON_OBJECT) set_error(err, err_size, "%s: not a JSON object", config_path);
        ok = config && config->type == JSON_OBJECT &&
             config_token(t, config, "bos_token", 1, config_path, &t->bos, err, err_size) &&
             config_token(t, config, "eos_token", 1, config_path, &t->eos, err, err_size) &&
             config_token(t, config, "unk_token", 0, config_path, &t->unk_named, err, err_size) &&
             config_token(t, config, "pad_token", 0, config_path, &t->pad, err, err_size);
        ok = ok && config_chat_template(t, config, config_path, err, err_size);
        json_free(config);
    }
    free(config_path);
    ok = ok && jinja_chat_template(t, jinja_path, err, err_size);
    free(jinja_path);
    if (ok && !choose_chat(t)) {
        set_error(err, err_size, "%s: out of memory", path);
        ok = 0;
    }
    if (t->eos < 0) t->eos = t->im_end;
    if (t->unk_named < 0) t->unk_named = t->unk;
    return ok;
}

Tokenizer *tokenizer_from_json(const char *path, char *err, size_t err_size) {
    JsonValue *root = json_parse_file(path, err, err_size);
    if (!root) return NULL;
    Tokenizer *t = NULL;
    if (root->type != JSON_OBJECT) set_error(err, err_size, "%s: not a JSON object", path);
    else t = json_tokenizer(root, path, err, err_size);
    json_free(root);
    if (t && !load_config(t, path, err, err_size)) {
        tokenizer_free(t);
        return NULL;
    }
    return t;
}

// ---------------------------------------------------------------- accessors

int tokenizer_vocab_size(const Tokenizer *t) { return t->n_tokens; }
PreTokenizer tokenizer_pretokenizer(const Tokenizer *t) { return t->pre; }
int tokenizer_bos_id(const Tokenizer *t) { return t->bos; }
int tokenizer_eos_id(const Tokenizer *t) { return t->eos; }

int tokenizer_unk_id(const Tokenizer *t) { return t->unk_named; }
int tokenizer_pad_id(const Tokenizer *t) { return t->pad; }

const char *tokenizer_token_text(const Tokenizer *t, int id, size_t *len) {
    if (id < 0 || id >= t->n_tokens || !t->tokens[id].text) return NULL;
    if (len) *len = t->tokens[id].text_len;
    return t->tokens[id].text;
}

TokenType tokenizer_token_type(const Tokenizer *t, int id) {
    if (id < 0 || id >= t->n_tokens || !t->tokens[id].text) return TOKEN_UNUSED;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id == id) return t->added[i].special ? TOKEN_CONTROL : TOKEN_USER_DEFINED;
    return TOKEN_NORMAL;
}

int tokenizer_find(const Tokenizer *t, const char *token) {
    return vocab_lookup(t, token, strlen(token));
}

const char *tokenizer_token_bytes(const Tokenizer *t, int id, size_t *len) {
    if (id < 0 || id >= t->n_tokens || !t->tokens[id].text) return NULL;
    if (len) *len = t->tokens[id].bytes_len;
    return t->tokens[id].bytes;
}

char *tokenizer_decode(const Tokenizer *t, const int *ids, int n, size_t *len) {
    size_t total = 0, piece;
    for (int i = 0; i < n; i++)
        if (tokenizer_token_bytes(t, ids[i], &piece)) total += piece;
    char *bytes = malloc(total + 1);
    if (!bytes) return NULL;
    size_t pos = 0;
    for (int i = 0; i < n; i++) {
        const char *token = tokenizer_token_bytes(t, ids[i], &piece);
        if (!token) continue;
        memcpy(bytes + pos, token, piece);
        pos += piece;
    }
    size_t clean_len;
    char *out = utf8_clean(bytes, pos, &clean_len);
    free(bytes);
    if (out && len) *len = clean_len;
    return out;
}

char *tokenizer_stream_next(const Tokenizer *t, TokenStream *stream, int id, size_t *len) {
    size_t piece = 0;
    const char *token = tokenizer_token_bytes(t, id, &piece);
    char *bytes = malloc(stream->n_held + piece + 1);
    if (!bytes) return NULL;
    memcpy(bytes, stream->held, stream->n_held);
    if (token) memcpy(bytes + stream->n_held, token, piece);
    size_t n = stream->n_held + piece, tail = utf8_incomplete_tail(bytes, n);
    memcpy(stream->held, bytes + n - tail, tail);
    stream->n_held = tail;
    char *out = utf8_clean(bytes, n - tail, len);
    free(bytes);
    return out;
}

char *tokenizer_stream_end(TokenStream *stream, size_t *len) {
    char *out = utf8_clean(stream->held, stream->n_held, len);
    stream->n_held = 0;
    return out;
}

// ---------------------------------------------------------------- pre-tokenizer

enum { CH_LETTER, CH_NUMBER, CH_SPACE, CH_OTHER };

typedef struct {
    int32_t cp;       // code point
    int cls;          // CH_*
    size_t start;     // byte offset in the text
} Char;

// \s as the Rust regex crate reads it: the White_Space property.
static int is_white_space(int32_t cp, utf8proc_category_t cat) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x85 || cat == UTF8PROC_CATEGORY_ZS ||
           cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

static int char_class(int32_t cp) {
    utf8proc_category_t cat = utf8proc_category(cp);
    if (is_white_space(cp, cat)) return CH_SPACE;
    if (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) return CH_LETTER;
    if (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) return CH_NUMBER;
    return CH_OTHER;
}

static int is_newline(int32_t cp) { return cp == '\r' || cp == '\n'; }

// Number of characters of class cls from i on (before end).
static size_t run_of(const Char *c, size_t i, size_t end, int cls) {
    size_t j = i;
    while (j < end && c[j].cls == cls) j++;
    return j - i;
}

// Does cp match the ASCII letter lower, ignoring case when asked? Case
// insensitive matching folds as Unicode does: 's' also matches U+017F 'ſ'.
static int letter_matches(int32_t cp, char lower, int ignore_case) {
    if (cp == lower) return 1;
    if (!ignore_case) return 0;
    return cp == lower - 'a' + 'A' || (lower == 's' && cp == 0x17F);
}

// 's|'t|'re|'ve|'m|'ll|'d
static size_t match_contraction(const Char *c, size_t i, size_t end, int ignore_case) {
    static const char *const endings[] = {"s", "t", "re", "ve", "m", "ll", "d"};
    if (c[i].cp != '\'') return 0;
    for (int k = 0; k < 7; k++) {
        size_t n = strlen(endings[k]), j = 0;
        while (j < n && i + 1 + j < end && letter_matches(c[i + 1 + j].cp, endings[k][j], ignore_case)) j++;
        if (j == n) return n + 1;
    }
    return 0;
}

// ' ?X+' where X is a class: an optional space, then one or more of X.
static size_t match_space_then_run(const Char *c, size_t i, size_t end, int cls) {
    size_t from = (c[i].cp == ' ' && i + 1 < end && c[i + 1].cls == cls) ? i + 1 : i;
    size_t n = run_of(c, from, end, cls);
    return n ? from - i + n : 0;
}

// \s+(?!\S)|\s+ : a run of whitespace, less its last character when that
// one is followed by a non-space (it then goes with the next word).
static size_t match_whitespace(const Char *c, size_t i, size_t end) {
    size_t n = run_of(c, i, end, CH_SPACE);
    if (n <= 1 || i + n == end) return n;
    return n - 1;
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
static size_t match_gpt2(const Char *c, size_t i, size_t end) {
    size_t n;
    if ((n = match_contraction(c, i, end, 0))) return n;
    if ((n = match_space_then_run(c, i, end, CH_LETTER))) return n;
    if ((n = match_space_then_run(c, i, end, CH_NUMBER))) return n;
    if ((n = match_space_then_run(c, i, end, CH_OTHER))) return n;
    return match_whitespace(c, i, end);
}

// [^\r\n\p{L}\p{N}]?\p{L}+ : letters, maybe after one space or symbol.
static size_t match_prefixed_letters(const Char *c, size_t i, size_t end) {
    int may_prefix = (c[i].cls == CH_SPACE || c[i].cls == CH_OTHER) && !is_newline(c[i].cp);
    size_t from = (may_prefix && i + 1 < end && c[i + 1].cls == CH_LETTER) ? i + 1 : i;
    size_t n = run_of(c, from, end, CH_LETTER);
    return n ? from - i + n : 0;
}

// ' ?[^\s\p{L}\p{N}]+[\r\n]*'
static size_t match_symbols_newlines(const Char *c, size_t i, size_t end) {
    size_t n = match_space_then_run(c, i, end, CH_OTHER);
    if (n == 0) return 0;
    while (i + n < end && is_newline(c[i + n].cp)) n++;
    return n;
}

// \s*[\r\n]+ : whitespace up to and including its last \r or \n.
static size_t match_space_to_newline(const Char *c, size_t i, size_t end) {
    size_t n = run_of(c, i, end, CH_SPACE);
    while (n > 0 && !is_newline(c[i + n - 1].cp)) n--;
    return n;
}

// \p{N}{1,max_digits} (without looking further: a long number stays linear)
static size_t match_digits(const Char *c, size_t i, size_t end, size_t max_digits) {
    size_t n = 0;
    while (n < max_digits && i + n < end && c[i + n].cls == CH_NUMBER) n++;
    return n;
}

// Llama-3 (max_digits 3) and Qwen2 (max_digits 1):
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}|
// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
static size_t match_llama3(const Char *c, size_t i, size_t end, size_t max_digits) {
    size_t n;
    if ((n = match_contraction(c, i, end, 1))) return n;
    if ((n = match_prefixed_letters(c, i, end))) return n;
    if ((n = match_digits(c, i, end, max_digits))) return n;
    if ((n = match_symbols_newlines(c, i, end))) return n;
    if ((n = match_space_to_newline(c, i, end))) return n;
    return match_whitespace(c, i, end);
}

static size_t match_word(PreTokenizer pre, const Char *c, size_t i, size_t end) {
    size_t n = 0;
    switch (pre) {
    case PRETOK_GPT2:
    case PRETOK_SMOLLM: n = match_gpt2(c, i, end); break;
    case PRETOK_LLAMA3: n = match_llama3(c, i, end, 3); break;
    case PRETOK_QWEN2: n = match_llama3(c, i, end, 1); break;
    }
    return n > 0 ? n : 1;   // every character matches some branch; this only guards the loop
}

// SmolLM splits each digit off on its own before the GPT-2 regex runs: the
// end of the piece that starts at i.
static size_t smollm_piece_end(const Char *c, size_t i, size_t n) {
    if (c[i].cls == CH_NUMBER) return i + 1;
    while (i < n && c[i].cls != CH_NUMBER) i++;
    return i;
}

// Writes the end (a character index) of each word of c[0..n) into ends;
// returns the number of words.
static size_t split_words(PreTokenizer pre, const Char *c, size_t n, size_t *ends) {
    size_t count = 0;
    for (size_t i = 0; i < n;) {
        size_t piece_end = pre == PRETOK_SMOLLM ? smollm_piece_end(c, i, n) : n;
        while (i < piece_end) {
            i += match_word(pre, c, i, piece_end);
            ends[count++] = i;
        }
    }
    return count;
}

// ---------------------------------------------------------------- BPE

typedef struct {
    int id;             // token id; -1 once merged into the symbol on its left
    int prev, next;     // neighbours, -1 at the ends
} Symbol;

typedef struct {
    int rank, left;     // lower rank first, then the leftmost
    int left_id, right_id, merged;
} Candidate;

typedef struct {
    int *ids;
    size_t count, cap;
} IdList;

// Scratch space reused across words and segments of one encode call.
typedef struct {
    IdList out;
    Symbol *symbols;
    size_t symbols_cap;
    Candidate *heap;
    size_t heap_count, heap_cap;
    char *word;
    size_t word_cap;
    Char *chars;
    size_t chars_cap;
    size_t *ends;
    size_t ends_cap;
    int failed;         // an allocation failed
} Encoder;

static void encoder_free(Encoder *e) {
    free(e->out.ids);
    free(e->symbols);
    free(e->heap);
    free(e->word);
    free(e->chars);
    free(e->ends);
}

static void push_id(Encoder *e, int id) {
    if (!reserve((void **)&e->out.ids, &e->out.cap, e->out.count + 1, sizeof(int))) {
        e->failed = 1;
        return;
    }
    e->out.ids[e->out.count++] = id;
}

static int candidate_before(const Candidate *a, const Candidate *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(Encoder *e, Candidate c) {
    if (!reserve((void **)&e->heap, &e->heap_cap, e->heap_count + 1, sizeof(Candidate))) {
        e->failed = 1;
        return;
    }
    size_t i = e->heap_count++;
    while (i > 0 && candidate_before(&c, &e->heap[(i - 1) / 2])) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = c;
}

static Candidate heap_pop(Encoder *e) {
    Candidate top = e->heap[0], last = e->heap[--e->heap_count];
    size_t i = 0, n = e->heap_count;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && candidate_before(&e->heap[child + 1], &e->heap[child])) child++;
        if (!candidate_before(&e->heap[child], &last)) break;
        e->heap[i] = e->heap[child];
        i = child;
    }
    if (n > 0) e->heap[i] = last;
    return top;
}

// Queues the merge of symbols left and right when their pair is in the list.
static void queue_pair(const Tokenizer *t, Encoder *e, int left, int right) {
    const MergeSlot *m = merge_lookup(t, e->symbols[left].id, e->symbols[right].id);
    if (m) heap_push(e, (Candidate){m->rank, left, e->symbols[left].id, e->symbols[right].id, m->merged});
}

// With ignore_merges a word that is itself a token is taken whole.
static int push_whole_word(const Tokenizer *t, Encoder *e, const unsigned char *bytes, size_t n) {
    if (!reserve((void **)&e->word, &e->word_cap, 2 * n, 1)) {
        e->failed = 1;
        return 0;
    }
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += (size_t)utf8proc_encode_char(t->byte_char[bytes[i]], (utf8proc_uint8_t *)e->word + len);
    int id = vocab_lookup(t, e->word, len);
    if (id >= 0) push_id(e, id);
    return id >= 0;
}

// One symbol per byte. A byte without a token becomes unk, or is dropped
// when there is no unk (as HF does).
static int bytes_to_symbols(const Tokenizer *t, Encoder *e, const unsigned char *bytes, size_t n) {
    if (!reserve((void **)&e->symbols, &e->symbols_cap, n, sizeof(Symbol))) {
        e->failed = 1;
        return 0;
    }
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        int id = t->byte_token[bytes[i]] >= 0 ? t->byte_token[bytes[i]] : t->unk;
        if (id < 0) continue;
        e->symbols[count] = (Symbol){id, count - 1, count + 1};
        count++;
    }
    if (count > 0) e->symbols[count - 1].next = -1;
    return count;
}

// Encodes one word: merges the best-ranked adjacent pair until none is left.
static void bpe_word(const Tokenizer *t, Encoder *e, const unsigned char *bytes, size_t n) {
    if (t->ignore_merges && push_whole_word(t, e, bytes, n)) return;
    int count = bytes_to_symbols(t, e, bytes, n);
    if (count == 0) return;
    e->heap_count = 0;
    for (int i = 0; i + 1 < count; i++) queue_pair(t, e, i, i + 1);
    while (e->heap_count > 0) {
        Candidate c = heap_pop(e);
        Symbol *left = &e->symbols[c.left];
        if (left->id != c.left_id || left->next < 0 || e->symbols[left->next].id != c.right_id) continue;
        Symbol *right = &e->symbols[left->next];
        left->id = c.merged;
        right->id = -1;
        left->next = right->next;
        if (left->next >= 0) e->symbols[left->next].prev = c.left;
        if (left->prev >= 0) queue_pair(t, e, left->prev, c.left);
        if (left->next >= 0) queue_pair(t, e, c.left, left->next);
    }
    for (int i = 0; i >= 0; i = e->symbols[i].next) push_id(e, e->symbols[i].id);
}

// ---------------------------------------------------------------- encoding

// Reads the (valid UTF-8) text into e->chars; returns the number of characters.
static size_t read_chars(Encoder *e, const char *text, size_t len) {
    if (!reserve((void **)&e->chars, &e->chars_cap, len, sizeof(Char)) ||
        !reserve((void **)&e->ends, &e->ends_cap, len, sizeof(size_t))) {
        e->failed = 1;
        return 0;
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t step = utf8proc_iterate((const utf8proc_uint8_t *)text + i, (utf8proc_ssize_t)(len - i), &cp);
        if (step <= 0) { cp = 0xFFFD; step = 1; }   // cannot happen: the text is clean
        e->chars[n++] = (Char){cp, char_class(cp), i};
        i += (size_t)step;
    }
    return n;
}

// Encodes text that holds no special tokens: words, then BPE on each.
static void encode_words(const Tokenizer *t, Encoder *e, const char *text, size_t len) {
    size_t n = read_chars(e, text, len);
    size_t words = split_words(t->pre, e->chars, n, e->ends);
    size_t start = 0;
    for (size_t w = 0; w < words; w++) {
        size_t from = e->chars[start].start, to = e->ends[w] < n ? e->chars[e->ends[w]].start : len;
        bpe_word(t, e, (const unsigned char *)text + from, to - from);
        start = e->ends[w];
    }
}

// NFC when the tokenizer wants it; *normalized is then malloc'd (NULL otherwise).
static const char *normalize(const Tokenizer *t, const char *text, size_t *len, char **normalized) {
    *normalized = NULL;
    if (!t->nfc || *len == 0) return text;
    utf8proc_uint8_t *out = NULL;
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)*len, &out,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (n < 0) return text;   // cannot happen: the text is clean
    *normalized = (char *)out;
    *len = (size_t)n;
    return *normalized;
}

static void encode_segment(const Tokenizer *t, Encoder *e, const char *text, size_t len) {
    if (len == 0) return;
    char *normalized;
    text = normalize(t, text, &len, &normalized);
    encode_words(t, e, text, len);
    free(normalized);
}

// Length of the added token at text[i] (the longest that fits), or 0.
static size_t match_added(const Tokenizer *t, const char *text, size_t len, int allow_special, int *id) {
    if (!t->added_first_byte[(unsigned char)text[0]]) return 0;
    for (int k = 0; k < t->n_added; k++) {
        const Token *tok = &t->tokens[t->added[k].id];
        if (t->added[k].special && !allow_special) continue;
        if (tok->text_len <= len && memcmp(text, tok->text, tok->text_len) == 0) {
            *id = t->added[k].id;
            return tok->text_len;
        }
    }
    return 0;
}

// Encodes clean UTF-8: added tokens are cut out, the pieces between encoded.
static void encode_clean(const Tokenizer *t, Encoder *e, const char *text, size_t len, int allow_special) {
    size_t segment = 0;
    for (size_t i = 0; i < len;) {
        int id;
        size_t n = match_added(t, text + i, len - i, allow_special, &id);
        if (n == 0) { i++; continue; }
        encode_segment(t, e, text + segment, i - segment);
        push_id(e, id);
        i += n;
        segment = i;
    }
    encode_segment(t, e, text + segment, len - segment);
}

static void encode_text(const Tokenizer *t, Encoder *e, const char *text, size_t len, int allow_special) {
    size_t clean_len;
    char *clean = utf8_clean(text, len, &clean_len);
    if (!clean) {
        e->failed = 1;
        return;
    }
    encode_clean(t, e, clean, clean_len, allow_special);
    free(clean);
}

int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int allow_special, int **ids) {
    Encoder e = {0};
    encode_text(t, &e, text, len, allow_special);
    *ids = NULL;
    if (e.failed || e.out.count > INT_MAX) {
        encoder_free(&e);
        return -1;
    }
    int count = (int)e.out.count;
    *ids = e.out.ids;
    e.out.ids = NULL;
    encoder_free(&e);
    if (!*ids) *ids = malloc(sizeof(int));   // an empty list is still a list
    return *ids ? count : -1;
}

// ---------------------------------------------------------------- chat template

typedef struct {
    Encoder enc;
    unsigned char *flags;   // is_answer, parallel to enc.out.ids
    size_t flags_cap;
} ChatOutput;

// Bytes that text[0..len) takes once cleaned (and normalised): where byte len
// of the text lies in what the tokens hold.
static size_t encoded_offset(const Tokenizer *t, const char *text, size_t len) {
    size_t clean_len;
    char *clean = utf8_clean(text, len, &clean_len), *normalized;
    if (!clean) return len;
    normalize(t, clean, &clean_len, &normalized);
    free(normalized);
    free(clean);
    return clean_len;
}

// Flags the tokens that hold bytes of an answer: a token reaching into an
// answer from the text before it (a "\n" merged with the answer's first
// letters) counts as answer.
static void flag_answers(const Tokenizer *t, ChatOutput *c, const ChatText *chat) {
    if (!reserve((void **)&c->flags, &c->flags_cap, c->enc.out.count, 1)) {
        c->enc.failed = 1;
        return;
    }
    memset(c->flags, 0, c->enc.out.count);
    for (int a = 0; a < chat->n_answers; a++) {
        size_t from = encoded_offset(t, chat->text, chat->answer_start[a]);
        size_t to = encoded_offset(t, chat->text, chat->answer_end[a]);
        size_t start = 0, len = 0;
        for (size_t i = 0; i < c->enc.out.count; i++) {
            size_t end = start + (tokenizer_token_bytes(t, c->enc.out.ids[i], &len) ? len : 0);
            if (end > from && start < to) c->flags[i] = 1;
            start = end;
        }
    }
}

// The tokenizer's bos_token text (NUL-terminated), or NULL.
static const char *bos_text(const Tokenizer *t) {
    return t->bos >= 0 ? t->tokens[t->bos].text : NULL;
}

int chat_encode(const Tokenizer *t, const ChatMessage *messages, int n_messages, int add_generation_prompt,
                int **ids, unsigned char **is_answer) {
    *ids = NULL;
    *is_answer = NULL;
    if (tokenizer_end_of_turn_id(t) < 0) return -1;
    ChatText chat;
    if (chat_render(t->chat, bos_text(t), t->default_system, messages, n_messages, add_generation_prompt, &chat) != 0)
        return -1;
    ChatOutput c = {0};
    encode_text(t, &c.enc, chat.text, chat.len, 1);
    if (!c.enc.failed) flag_answers(t, &c, &chat);
    chat_text_free(&chat);
    if (c.enc.failed || c.enc.out.count > INT_MAX) {
        encoder_free(&c.enc);
        free(c.flags);
        return -1;
    }
    int count = (int)c.enc.out.count;
    *ids = c.enc.out.ids ? c.enc.out.ids : malloc(sizeof(int));   // empty lists are still lists
    *is_answer = c.flags ? c.flags : malloc(1);
    c.enc.out.ids = NULL;
    encoder_free(&c.enc);
    if (*ids && *is_answer) return count;
    free(*ids);
    free(*is_answer);
    *ids = NULL;
    *is_answer = NULL;
    return -1;
}

// ---------------------------------------------------------------- saving as tokenizer.json

static int is_valid_utf8(const char *s, size_t len) {
    for (size_t i = 0; i < len;) {
        int valid;
        i += utf8_sequence((const unsigned char *)s + i, len - i, &valid);
        if (!valid) return 0;
    }
    return 1;
}

static int compare_rank(const void *a, const void *b) {
    return ((const MergeSlot *)a)->rank - ((const MergeSlot *)b)->rank;
}

// The merges in rank order (their ranks may have gaps where a pair was listed
// twice); NULL when out of memory.
static MergeSlot *merges_by_rank(const Tokenizer *t, size_t *count) {
    *count = 0;
    for (size_t i = 0; t->merge_slots && i <= t->merge_mask; i++) *count += t->merge_slots[i].rank >= 0;
    MergeSlot *merges = malloc((*count ? *count : 1) * sizeof(MergeSlot));
    if (!merges) return NULL;
    size_t n = 0;
    for (size_t i = 0; t->merge_slots && i <= t->merge_mask; i++)
        if (t->merge_slots[i].rank >= 0) merges[n++] = t->merge_slots[i];
    qsort(merges, n, sizeof(MergeSlot), compare_rank);
    return merges;
}

int tokenizer_merges(const Tokenizer *t, int **pairs) {
    size_t count;
    MergeSlot *merges = merges_by_rank(t, &count);
    *pairs = merges ? malloc((count ? count : 1) * 2 * sizeof(int)) : NULL;
    if (!*pairs) {
        free(merges);
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        (*pairs)[2 * i] = (int)(merges[i].pair >> 32);
        (*pairs)[2 * i + 1] = (int)(uint32_t)merges[i].pair;
    }
    free(merges);
    return (int)count;
}

static void put_byte_level(FILE *f, int use_regex) {
    fprintf(f, "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": %s}",
            use_regex ? "true" : "false");
}

// The pre_tokenizer that json_pretokenizer reads back as t->pre.
static void put_pretokenizer(FILE *f, const Tokenizer *t) {
    if (t->pre == PRETOK_GPT2) { put_byte_level(f, 1); return; }
    fputs("{\"type\": \"Sequence\", \"pretokenizers\": [", f);
    if (t->pre == PRETOK_SMOLLM) {
        fputs("{\"type\": \"Digits\", \"individual_digits\": true}, ", f);
        put_byte_level(f, 1);
    } else {
        const char *pattern = t->pre == PRETOK_LLAMA3 ? LLAMA3_PATTERN : QWEN2_PATTERN;
        fputs("{\"type\": \"Split\", \"pattern\": {\"Regex\": ", f);
        json_write_string(f, pattern);
        fputs("}, \"behavior\": \"Isolated\", \"invert\": false}, ", f);
        put_byte_level(f, 0);
    }
    fputs("]}", f);
}

// A token's vocabulary string as a JSON string.
static void put_token(FILE *f, const Tokenizer *t, int id) {
    json_write_string_len(f, t->tokens[id].text, t->tokens[id].text_len);
}

// added_tokens (their order does not matter: matching tries the longest first).
static void put_added_tokens(FILE *f, const Tokenizer *t) {
    fputs("  \"added_tokens\": [", f);
    for (int i = 0; i < t->n_added; i++) {
        fprintf(f, "%s\n    {\"id\": %d, \"content\": ", i ? "," : "", t->added[i].id);
        put_token(f, t, t->added[i].id);
        fprintf(f, ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, "
                   "\"special\": %s}", t->added[i].special ? "true" : "false");
    }
    fputs("\n  ],\n", f);
}

// The BPE model: vocabulary and merges as ["left", "right"] pairs.
static void put_model(FILE *f, const Tokenizer *t, const MergeSlot *merges, size_t n_merges) {
    fputs("  \"model\": {\n    \"type\": \"BPE\", \"dropout\": null, \"unk_token\": ", f);
    if (t->unk >= 0) put_token(f, t, t->unk);
    else fputs("null", f);
    fprintf(f, ", \"continuing_subword_prefix\": null, \"end_of_word_suffix\": null, \"fuse_unk\": false, "
               "\"byte_fallback\": false, \"ignore_merges\": %s,\n    \"vocab\": {", t->ignore_merges ? "true" : "false");
    int first = 1;
    for (int id = 0; id < t->n_tokens; id++) {
        if (!t->tokens[id].text) continue;
        fputs(first ? "\n      " : ",\n      ", f);
        put_token(f, t, id);
        fprintf(f, ": %d", id);
        first = 0;
    }
    fputs("\n    },\n    \"merges\": [", f);
    for (size_t i = 0; i < n_merges; i++) {
        fputs(i ? ",\n      [" : "\n      [", f);
        put_token(f, t, (int)(merges[i].pair >> 32));
        fputs(", ", f);
        put_token(f, t, (int)(uint32_t)merges[i].pair);
        fputs("]", f);
    }
    fputs("\n    ]\n  }\n", f);
}

static int write_tokenizer_json(const Tokenizer *t, const char *path, char *err, size_t err_size) {
    for (int id = 0; id < t->n_tokens; id++)
        if (t->tokens[id].text && !is_valid_utf8(t->tokens[id].text, t->tokens[id].text_len)) {
            set_error(err, err_size, "%s: token %d is not valid UTF-8, which tokenizer.json cannot hold", path, id);
            return -1;
        }
    size_t n_merges;
    MergeSlot *merges = merges_by_rank(t, &n_merges);
    if (!merges) { set_error(err, err_size, "%s: out of memory", path); return -1; }
    AtomicFile file;
    FILE *f = atomic_file_open(&file, path, err, err_size);
    if (!f) {
        free(merges);
        return -1;
    }
    fputs("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n", f);
    put_added_tokens(f, t);
    fprintf(f, "  \"normalizer\": %s,\n  \"pre_tokenizer\": ", t->nfc ? "{\"type\": \"NFC\"}" : "null");
    put_pretokenizer(f, t);
    // no BOS added: tokenizer_encode adds none either
    fputs(",\n  \"post_processor\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": false, "
          "\"use_regex\": true},\n  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, "
          "\"trim_offsets\": true, \"use_regex\": true},\n", f);
    put_model(f, t, merges, n_merges);
    fputs("}\n", f);
    free(merges);
    return atomic_file_commit(&file, err, err_size);
}

// "bos_token": a token's string, or null.
static void put_config_token(FILE *f, const Tokenizer *t, const char *key, int id) {
    fprintf(f, "  \"%s\": ", key);
    if (id >= 0) put_token(f, t, id);
    else fputs("null", f);
    fputs(",\n", f);
}

// The source's template when it is the one chat_encode renders (or matches
// no family), else the family's Jinja template with the default system message.
char *tokenizer_chat_template(const Tokenizer *t) {
    if (t->chat_template && (!t->chat || chat_family_recognise(t->chat_template) == t->chat))
        return strdup(t->chat_template);
    if (!t->chat) return NULL;
    return chat_family_jinja(t->chat, t->default_system);
}

const ChatFamily *tokenizer_chat_family(const Tokenizer *t) { return t->chat; }
const char *tokenizer_chat_origin(const Tokenizer *t) { return t->chat_origin; }

int tokenizer_end_of_turn_id(const Tokenizer *t) {
    return t->chat ? tokenizer_find(t, t->chat->end_of_turn) : -1;
}

// Makes chat_encode render with family, with the default system message of
// the source's template when that is of the family, else the family's own
// (SmolLM2's for a SmolLM ChatML vocabulary). 0 when out of memory.
static int set_chat_family(Tokenizer *t, const ChatFamily *family) {
    free(t->default_system);
    t->default_system = NULL;
    t->chat = family;
    t->chat_origin = "--template";
    const char *fallback = family->default_system;
    if (!t->chat_template && strcmp(family->name, "chatml") == 0 && t->pre == PRETOK_SMOLLM)
        fallback = SMOLLM_DEFAULT_SYSTEM;
    int failed = 0;
    if (t->chat_template && chat_family_recognise(t->chat_template) == family)
        t->default_system = chat_default_system(family, t->chat_template, &failed);
    else if (fallback)
        failed = !(t->default_system = strdup(fallback));
    return !failed;
}

int tokenizer_use_chat_template(Tokenizer *t, const char *name, char *err, size_t err_size) {
    if (name) {
        const ChatFamily *family = chat_family_named(name);
        if (!family) {
            set_error(err, err_size, "--template %s: not a chat template we render (those are: %s)", name,
                      chat_family_names());
            return -1;
        }
        if (!set_chat_family(t, family)) {
            set_error(err, err_size, "out of memory");
            return -1;
        }
    }
    if (!t->chat && t->chat_template_names) {
        set_error(err, err_size, "the model's chat templates are named (%s), none \"default\"; "
                  "--template NAME renders one of: %s", t->chat_template_names, chat_family_names());
        return -1;
    }
    if (!t->chat && t->chat_template) {
        set_error(err, err_size, "the model's chat template is none of those we render (%s); "
                  "--template NAME renders one of them", chat_family_names());
        return -1;
    }
    if (!t->chat) {
        set_error(err, err_size, "the model has no chat template and its vocabulary no <|im_start|>; "
                  "--template NAME renders one of: %s", chat_family_names());
        return -1;
    }
    if (tokenizer_end_of_turn_id(t) < 0) {
        set_error(err, err_size, "chat template %s: the vocabulary has no %s token", t->chat->name,
                  t->chat->end_of_turn);
        return -1;
    }
    return 0;
}

static int write_tokenizer_config(const Tokenizer *t, const char *path, char *err, size_t err_size) {
    AtomicFile file;
    FILE *f = atomic_file_open(&file, path, err, err_size);
    if (!f) return -1;
    fputs("{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n", f);
    put_config_token(f, t, "bos_token", t->bos);
    put_config_token(f, t, "eos_token", t->eos);
    char *chat_template = tokenizer_chat_template(t);
    if (chat_template) {
        fputs("  \"chat_template\": ", f);
        json_write_string(f, chat_template);
        fputs(",\n", f);
    }
    free(chat_template);
    fputs("  \"add_prefix_space\": false,\n  \"clean_up_tokenization_spaces\": false\n}\n", f);
    return atomic_file_commit(&file, err, err_size);
}

int tokenizer_save_hf(const Tokenizer *t, const char *dir, char *err, size_t err_size) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (write_tokenizer_json(t, path, err, err_size) != 0) return -1;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    return write_tokenizer_config(t, path, err, err_size);
}
