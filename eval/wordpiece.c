// eval/wordpiece.c: BERT's uncased WordPiece tokenizer, as Hugging Face's
// `tokenizers` runs it for all-MiniLM-L6-v2 (tokenizer.json: BertNormalizer,
// BertPreTokenizer, WordPiece with "##" continuations, [CLS] ... [SEP]).
//
// Encoding in five steps:
//  1. Special tokens written in the text ("[SEP]") are cut out first; the text
//     between them goes through steps 2 to 4.
//  2. Normalize (BertNormalizer), one character at a time, in this order:
//     a. clean: drop NUL, U+FFFD and "other" characters (categories Cc, Cf,
//        Co, Cs, but not \t \n \r); turn every white-space character into ' ';
//     b. put a space on each side of a CJK ideograph, so that each one is a word;
//     c. strip accents: decompose (Unicode NFD: 'é' -> 'e' + U+0301) and drop
//        the non-spacing marks (category Mn);
//     d. lower-case.
//  3. Pre-tokenize (BertPreTokenizer): split at white space (which is
//     dropped) and make every punctuation character (ASCII punctuation or a
//     Unicode P* category) a word of its own.
//  4. WordPiece, per word: a word longer than 100 characters is [UNK].
//     Otherwise take the longest vocabulary entry the word starts with, then
//     the longest "##"-prefixed entry the rest starts with, and so on
//     ("unaffable" -> "una", "##ffa", "##ble"). When no entry fits somewhere,
//     the whole word is [UNK].
//  5. Keep at most max_tokens - 2 pieces and wrap them in [CLS] ... [SEP].
//
// Known difference: HF's category tables (the Rust crate unicode_categories)
// predate utf8proc's; a punctuation or mark character added to Unicode since
// (e.g. U+2E4F, Unicode 11) is split or stripped here and not there.
#include "eval/wordpiece.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "formats/json.h"
#include "formats/hash.h"

// Words longer than this many characters are [UNK] (HF's max_input_chars_per_word).
#define MAX_WORD_CHARS 100
// A word's bytes: at most 4 per character.
#define MAX_WORD_BYTES (4 * MAX_WORD_CHARS)

// The special tokens HF matches in the text before normalizing it (the
// "added_tokens" of the model's tokenizer.json).
static const char *const SPECIAL_TOKENS[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
#define N_SPECIAL (int)(sizeof SPECIAL_TOKENS / sizeof SPECIAL_TOKENS[0])

struct WordPiece {
    char *text;          // the vocab file, each '\n' replaced by '\0'
    char **tokens;       // [n_tokens], pointing into text
    int n_tokens;
    int *table;          // open-addressing hash table of ids, -1 = empty
    size_t table_size;   // a power of two, at least twice n_tokens
    int special_ids[N_SPECIAL];   // -1 when the vocabulary lacks one
    int unk, cls, sep;
};

// ---------------------------------------------------------------- the vocabulary

static uint64_t hash_bytes(const char *s, size_t len) { return fnv1a(FNV1A_OFFSET_BASIS, s, len); }

// The id of the token spelled by len bytes at s, or -1.
static int lookup(const WordPiece *t, const char *s, size_t len) {
    size_t mask = t->table_size - 1;
    for (size_t slot = hash_bytes(s, len) & mask;; slot = (slot + 1) & mask) {
        int id = t->table[slot];
        if (id < 0) return -1;
        const char *token = t->tokens[id];
        if (strncmp(token, s, len) == 0 && token[len] == '\0') return id;
    }
}

// Inserts id; returns the id already holding the same string, or -1.
static int insert(WordPiece *t, int id) {
    const char *token = t->tokens[id];
    size_t mask = t->table_size - 1;
    for (size_t slot = hash_bytes(token, strlen(token)) & mask;; slot = (slot + 1) & mask) {
        if (t->table[slot] < 0) {
            t->table[slot] = id;
            return -1;
        }
        if (strcmp(t->tokens[t->table[slot]], token) == 0) return t->table[slot];
    }
}

static int is_valid_utf8(const char *s, size_t len) {
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(len - i), &cp);
        if (n < 0) return 0;
        i += (size_t)n;
    }
    return 1;
}

// Splits t->text (len bytes) into lines and fills t->tokens and the table.
static int read_tokens(WordPiece *t, size_t len, const char *path, char *err, size_t err_size) {
    if (memchr(t->text, '\0', len)) {
        snprintf(err, err_size, "%s: contains a NUL byte (not a vocab.txt)", path);
        return -1;
    }
    int n_lines = 0;
    for (size_t i = 0; i < len; i++) n_lines += t->text[i] == '\n';
    if (len > 0 && t->text[len - 1] != '\n') n_lines++;   // a last line without '\n'
    if (n_lines == 0) {
        snprintf(err, err_size, "%s: the vocabulary is empty", path);
        return -1;
    }
    t->table_size = 1;
    while (t->table_size < 2 * (size_t)n_lines) t->table_size *= 2;
    t->tokens = malloc((size_t)n_lines * sizeof *t->tokens);
    t->table = malloc(t->table_size * sizeof *t->table);
    if (!t->tokens || !t->table) {
        snprintf(err, err_size, "%s: out of memory", path);
        return -1;
    }
    for (size_t i = 0; i < t->table_size; i++) t->table[i] = -1;
    char *line = t->text;
    for (int id = 0; id < n_lines; id++) {
        char *end = memchr(line, '\n', len - (size_t)(line - t->text));
        size_t line_len = end ? (size_t)(end - line) : strlen(line);
        if (end) *end = '\0';
        t->tokens[id] = line;
        t->n_tokens = id + 1;
        if (line_len == 0 || !is_valid_utf8(line, line_len)) {
            snprintf(err, err_size, "%s: line %d: %s", path, id + 1,
                     line_len == 0 ? "empty token" : "token is not valid UTF-8");
            return -1;
        }
        int earlier = insert(t, id);
        if (earlier >= 0) {
            snprintf(err, err_size, "%s: line %d: token '%s' repeats line %d", path, id + 1, line, earlier + 1);
            return -1;
        }
        line += line_len + 1;
    }
    return 0;
}

WordPiece *wordpiece_load(const char *vocab_path, char *err, size_t err_size) {
    WordPiece *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, err_size, "%s: out of memory", vocab_path);
        return NULL;
    }
    size_t len = 0;
    t->text = read_file(vocab_path, &len, err, err_size);
    if (!t->text || read_tokens(t, len, vocab_path, err, err_size) != 0) {
        wordpiece_free(t);
        return NULL;
    }
    for (int i = 0; i < N_SPECIAL; i++) t->special_ids[i] = lookup(t, SPECIAL_TOKENS[i], strlen(SPECIAL_TOKENS[i]));
    t->unk = lookup(t, "[UNK]", 5);
    t->cls = lookup(t, "[CLS]", 5);
    t->sep = lookup(t, "[SEP]", 5);
    if (t->unk < 0 || t->cls < 0 || t->sep < 0) {
        snprintf(err, err_size, "%s: the vocabulary lacks %s (not a BERT vocab.txt?)", vocab_path,
                 t->unk < 0 ? "[UNK]" : t->cls < 0 ? "[CLS]" : "[SEP]");
        wordpiece_free(t);
        return NULL;
    }
    return t;
}

void wordpiece_free(WordPiece *t) {
    if (!t) return;
    free(t->text);
    free(t->tokens);
    free(t->table);
    free(t);
}

int wordpiece_vocab_size(const WordPiece *t) { return t->n_tokens; }

const char *wordpiece_token(const WordPiece *t, int id) {
    return id >= 0 && id < t->n_tokens ? t->tokens[id] : NULL;
}

// ---------------------------------------------------------------- a growable list of ids

typedef struct {
    int *ids;
    int count, capacity;
} IdList;

static int push(IdList *list, int id) {
    if (list->count == list->capacity) {
        int capacity = list->capacity ? 2 * list->capacity : 64;
        int *ids = realloc(list->ids, (size_t)capacity * sizeof *ids);
        if (!ids) return -1;
        list->ids = ids;
        list->capacity = capacity;
    }
    list->ids[list->count++] = id;
    return 0;
}

// ---------------------------------------------------------------- step 2: normalize

// Characters BertNormalizer removes: categories Cc, Cf, Co and Cs, but not
// \t \n \r (which count as white space).
static int is_control(int32_t cp) {
    if (cp == '\t' || cp == '\n' || cp == '\r') return 0;
    utf8proc_category_t cat = utf8proc_category(cp);
    return cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF || cat == UTF8PROC_CATEGORY_CO ||
           cat == UTF8PROC_CATEGORY_CS;
}

// Rust's char::is_whitespace: the White_Space property.
static int is_whitespace(int32_t cp) {
    utf8proc_category_t cat = utf8proc_category(cp);
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x85 || cat == UTF8PROC_CATEGORY_ZS ||
           cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

// The CJK ideograph blocks of HF's BertNormalizer (tokenizers' bert.rs).
static int is_cjk(int32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
           (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
           (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

// ASCII punctuation (which includes $ + < = > ^ ` | ~) or a Unicode P* category.
static int is_punctuation(int32_t cp) {
    if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126))
        return 1;
    utf8proc_category_t cat = utf8proc_category(cp);
    return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

// Steps 2a and 2b: returns a malloc'd UTF-8 string (length in *out_len).
// Invalid UTF-8 bytes are skipped one at a time: HF would read them as
// U+FFFD, which 2a removes anyway.
static char *clean_text(const char *text, size_t len, size_t *out_len) {
    char *out = malloc(3 * len + 1);   // the worst case: a 3-byte ideograph gets 2 spaces
    if (!out) return NULL;
    size_t pos = 0;
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)text + i, (utf8proc_ssize_t)(len - i), &cp);
        if (n < 0) {
            i++;
            continue;
        }
        i += (size_t)n;
        if (cp == 0 || cp == 0xFFFD || is_control(cp)) continue;
        if (is_whitespace(cp)) {
            out[pos++] = ' ';
        } else if (is_cjk(cp)) {
            out[pos++] = ' ';
            pos += (size_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)out + pos);
            out[pos++] = ' ';
        } else {
            pos += (size_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)out + pos);
        }
    }
    out[pos] = '\0';
    *out_len = pos;
    return out;
}

// Steps 2a to 2d: the normalized text as code points (malloc'd, count in *n).
static int32_t *normalize(const char *text, size_t len, size_t *n) {
    size_t clean_len;
    char *clean = clean_text(text, len, &clean_len);
    if (!clean) return NULL;
    // 2c: NFD, the canonical decomposition (with canonical ordering of marks).
    const utf8proc_uint8_t *bytes = (const utf8proc_uint8_t *)clean;
    utf8proc_ssize_t count = utf8proc_decompose(bytes, (utf8proc_ssize_t)clean_len, NULL, 0, UTF8PROC_DECOMPOSE);
    int32_t *cps = count >= 0 ? malloc(((size_t)count + 1) * sizeof *cps) : NULL;
    if (cps) count = utf8proc_decompose(bytes, (utf8proc_ssize_t)clean_len, cps, count, UTF8PROC_DECOMPOSE);
    free(clean);
    if (!cps || count < 0) {
        free(cps);
        return NULL;
    }
    // 2c: drop the non-spacing marks; 2d: lower-case what is left.
    size_t kept = 0;
    for (utf8proc_ssize_t i = 0; i < count; i++) {
        if (utf8proc_category(cps[i]) == UTF8PROC_CATEGORY_MN) continue;
        cps[kept++] = utf8proc_tolower(cps[i]);
    }
    *n = kept;
    return cps;
}

// ---------------------------------------------------------------- step 4: WordPiece

// The id of a piece: the vocabulary entry spelled "##" + piece when it
// continues a word, else piece; -1 when there is none.
static int lookup_piece(const WordPiece *t, const char *piece, size_t len, int continues_word) {
    if (!continues_word) return lookup(t, piece, len);
    char prefixed[2 + MAX_WORD_BYTES];
    memcpy(prefixed, "##", 2);
    memcpy(prefixed + 2, piece, len);
    return lookup(t, prefixed, len + 2);
}

// Appends the pieces of one word (len <= MAX_WORD_BYTES bytes of UTF-8):
// greedy longest match from the left, or a single [UNK] when some part of the
// word matches no piece.
static int encode_word(const WordPiece *t, const char *word, size_t len, IdList *out) {
    int first = out->count;
    for (size_t start = 0; start < len;) {
        int id = -1;
        size_t end = len;
        while (end > start) {
            id = lookup_piece(t, word + start, end - start, start > 0);
            if (id >= 0) break;
            do end--;   // back one character: skip UTF-8 continuation bytes (10xxxxxx)
            while (end > start && ((unsigned char)word[end] & 0xC0) == 0x80);
        }
        if (id < 0) {
            out->count = first;
            return push(out, t->unk);
        }
        if (push(out, id) != 0) return -1;
        start = end;
    }
    return 0;
}

// The word being collected by the pre-tokenizer.
typedef struct {
    char bytes[MAX_WORD_BYTES];
    size_t len;
    int n_chars;   // may exceed MAX_WORD_CHARS; then bytes holds only the start
} Word;

static void word_add(Word *w, int32_t cp) {
    w->n_chars++;
    if (w->n_chars <= MAX_WORD_CHARS) w->len += (size_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)w->bytes + w->len);
}

// Encodes the collected word (if any) and empties it.
static int word_flush(const WordPiece *t, Word *w, IdList *out) {
    int rc = 0;
    if (w->n_chars > MAX_WORD_CHARS) rc = push(out, t->unk);
    else if (w->n_chars > 0) rc = encode_word(t, w->bytes, w->len, out);
    w->len = 0;
    w->n_chars = 0;
    return rc;
}

// Steps 2 to 4 for text without special tokens.
static int encode_segment(const WordPiece *t, const char *text, size_t len, IdList *out) {
    size_t n;
    int32_t *cps = normalize(text, len, &n);
    if (!cps) return -1;
    Word word = {.len = 0, .n_chars = 0};
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (is_whitespace(cps[i])) {
            rc = word_flush(t, &word, out);
        } else if (is_punctuation(cps[i])) {
            rc = word_flush(t, &word, out);
            word_add(&word, cps[i]);
            if (rc == 0) rc = word_flush(t, &word, out);
        } else {
            word_add(&word, cps[i]);
        }
    }
    if (rc == 0) rc = word_flush(t, &word, out);
    free(cps);
    return rc;
}

// ---------------------------------------------------------------- steps 1 and 5

// The special token that text (len bytes) starts with: its id, or -1.
static int special_at(const WordPiece *t, const char *text, size_t len, size_t *token_len) {
    for (int i = 0; i < N_SPECIAL; i++) {
        size_t n = strlen(SPECIAL_TOKENS[i]);
        if (t->special_ids[i] >= 0 && n <= len && memcmp(text, SPECIAL_TOKENS[i], n) == 0) {
            *token_len = n;
            return t->special_ids[i];
        }
    }
    return -1;
}

int wordpiece_encode(const WordPiece *t, const char *text, size_t len, int max_tokens, int **ids) {
    *ids = NULL;
    if (max_tokens < 2) return -1;
    IdList out = {NULL, 0, 0};
    int rc = push(&out, t->cls);
    size_t segment = 0;   // where the text after the last special token starts
    for (size_t i = 0; i < len && rc == 0;) {
        size_t token_len;
        int special = special_at(t, text + i, len - i, &token_len);
        if (special < 0) {
            i++;
            continue;
        }
        rc = encode_segment(t, text + segment, i - segment, &out);
        if (rc == 0) rc = push(&out, special);
        i += token_len;
        segment = i;
    }
    if (rc == 0) rc = encode_segment(t, text + segment, len - segment, &out);
    // Step 5: truncate to max_tokens - 1 ([CLS] and the pieces), then [SEP].
    if (out.count > max_tokens - 1) out.count = max_tokens - 1;
    if (rc == 0) rc = push(&out, t->sep);
    if (rc != 0) {
        free(out.ids);
        return -1;
    }
    *ids = out.ids;
    return out.count;
}
