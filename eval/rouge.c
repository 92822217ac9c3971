// eval/rouge.c: ROUGE-1/2/L as rouge-score computes them (see eval/rouge.h): three
// tokenizers, n-gram overlap, the longest common subsequence, and the mean and
// spread over many pairs.
#include "eval/rouge.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "eval/porter.h"

const char *rouge_kind_name(RougeKind kind) {
    static const char *const names[ROUGE_KINDS] = {"rouge1", "rouge2", "rougeL"};
    return names[kind];
}

// ---- writing tokens -------------------------------------------------------

// Tokens written one piece at a time into buffers sized up front.
typedef struct {
    RougeTokens tokens;
    size_t used;    // bytes of tokens.chars written
    int open;       // whether a token is being written
    int stem;       // stem each finished ASCII token (rouge-score's rule)
} TokenWriter;

// Room for a text of n_bytes bytes: at most one token per byte and at most
// 4 bytes (one lower-cased character) plus a terminator per byte.
static TokenWriter writer_for(size_t n_bytes, int stem) {
    TokenWriter w = {0};
    w.tokens.chars = malloc(5 * n_bytes + 1);
    w.tokens.start = malloc((n_bytes + 1) * sizeof(int));
    w.stem = stem;
    return w;
}

static void append_bytes(TokenWriter *w, const char *bytes, size_t n) {
    if (!w->open) {
        w->tokens.start[w->tokens.count++] = (int)w->used;
        w->open = 1;
    }
    memcpy(w->tokens.chars + w->used, bytes, n);
    w->used += n;
}

static int is_ascii_alphanumeric(const char *s) {
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9'))) return 0;
    return 1;
}

// Closes the open token. rouge-score stems only tokens of more than 3
// characters; here also only ASCII ones (the stemmer knows English only).
static void end_token(TokenWriter *w) {
    if (!w->open) return;
    w->tokens.chars[w->used] = '\0';
    w->open = 0;
    int first = w->tokens.start[w->tokens.count - 1];
    char *token = w->tokens.chars + first;
    if (w->stem && strlen(token) > 3 && is_ascii_alphanumeric(token)) porter_stem(token);
    w->used = (size_t)first + strlen(token) + 1;
}

// ---- the tokenizers -------------------------------------------------------

// The next character of text at *i (advancing *i), or -1 for a byte that
// does not start a well-formed UTF-8 character (advancing one byte).
static int32_t next_char(const char *text, size_t len, size_t *i) {
    utf8proc_int32_t c;
    utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)text + *i, (utf8proc_ssize_t)(len - *i), &c);
    if (n <= 0) {
        *i += 1;
        return -1;
    }
    *i += (size_t)n;
    return c;
}

// rouge-score: text.lower(), then every run of characters outside [a-z0-9]
// becomes one space, then split. Python's lower() turns exactly two non-ASCII
// characters into ASCII letters: KELVIN SIGN into k and CAPITAL I WITH DOT
// ABOVE into i + COMBINING DOT ABOVE (which then separates, like a space).
static void tokenize_default(TokenWriter *w, const char *text) {
    size_t len = strlen(text);
    for (size_t i = 0; i < len;) {
        int32_t c = next_char(text, len, &i);
        char ascii = 0;
        if (c >= 'A' && c <= 'Z') ascii = (char)(c - 'A' + 'a');
        else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) ascii = (char)c;
        else if (c == 0x212A) ascii = 'k';
        else if (c == 0x0130) ascii = 'i';
        if (ascii) append_bytes(w, &ascii, 1);
        if (!ascii || c == 0x0130) end_token(w);
    }
    end_token(w);
}

// A copy of text with each byte that does not start a well-formed character
// replaced by a space, so the copy is valid UTF-8.
static char *replace_invalid_bytes(const char *text) {
    size_t len = strlen(text);
    char *out = malloc(len + 1);
    for (size_t i = 0; i < len;) {
        size_t from = i;
        if (next_char(text, len, &i) < 0) out[from] = ' ';
        else memcpy(out + from, text + from, i - from);
    }
    out[len] = '\0';
    return out;
}

// Letters, combining marks and digits (Unicode categories L*, M*, N*, which
// utf8proc numbers 1 to 11) make words; everything else separates them.
static int is_word_character(int32_t c) {
    utf8proc_category_t category = utf8proc_category(c);
    return category >= UTF8PROC_CATEGORY_LU && category <= UTF8PROC_CATEGORY_NO;
}

// WORDS and CHARS: NFC, lower-case, keep letters/marks/digits; CHARS makes
// each kept character a token of its own.
static void tokenize_unicode(TokenWriter *w, const char *text, int one_token_per_char) {
    size_t len = strlen(text);
    for (size_t i = 0; i < len;) {
        int32_t c = next_char(text, len, &i);
        if (c < 0 || !is_word_character(c)) {
            end_token(w);
            continue;
        }
        utf8proc_uint8_t bytes[4];
        utf8proc_ssize_t n = utf8proc_encode_char(utf8proc_tolower(c), bytes);
        append_bytes(w, (const char *)bytes, (size_t)n);
        if (one_token_per_char) end_token(w);
    }
    end_token(w);
}

RougeTokens rouge_tokenize(const char *text, RougeTokenizer tokenizer, int stem) {
    if (tokenizer == ROUGE_TOKENIZE_DEFAULT) {
        TokenWriter w = writer_for(strlen(text), stem);
        tokenize_default(&w, text);
        return w.tokens;
    }
    char *valid = replace_invalid_bytes(text);
    char *composed = (char *)utf8proc_NFC((const utf8proc_uint8_t *)valid);
    const char *source = composed ? composed : valid;
    int chars = tokenizer == ROUGE_TOKENIZE_CHARS;
    TokenWriter w = writer_for(strlen(source), stem && !chars);
    tokenize_unicode(&w, source, chars);
    free(composed);
    free(valid);
    return w.tokens;
}

void rouge_tokens_free(RougeTokens *tokens) {
    free(tokens->chars);
    free(tokens->start);
    tokens->chars = NULL;
    tokens->start = NULL;
    tokens->count = 0;
}

// ---- scores ---------------------------------------------------------------

static int tokens_equal(const RougeTokens *a, int i, const RougeTokens *b, int j) {
    return strcmp(a->chars + a->start[i], b->chars + b->start[j]) == 0;
}

// Whether the n tokens of a from i equal the n tokens of b from j.
static int ngrams_equal(const RougeTokens *a, int i, const RougeTokens *b, int j, int n) {
    for (int k = 0; k < n; k++)
        if (!tokens_equal(a, i + k, b, j + k)) return 0;
    return 1;
}

// F1 = 2 P R / (P + R), 0 when P + R = 0
static double f1_of(double precision, double recall) {
    return precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0.0;
}

static int max_int(int a, int b) { return a > b ? a : b; }

// ROUGE-N. Each candidate n-gram takes one unused equal reference n-gram, so
// an n-gram counts min(times in candidate, times in reference) in all.
static RougeScore ngram_score(const RougeTokens *candidate, const RougeTokens *reference, int n) {
    int n_candidate = max_int(candidate->count - n + 1, 0);
    int n_reference = max_int(reference->count - n + 1, 0);
    char *taken = calloc((size_t)n_reference + 1, 1);
    int shared = 0;
    for (int i = 0; i < n_candidate; i++) {
        for (int j = 0; j < n_reference; j++) {
            if (taken[j] || !ngrams_equal(candidate, i, reference, j, n)) continue;
            taken[j] = 1;
            shared++;
            break;
        }
    }
    free(taken);
    RougeScore s;
    // P = shared / candidate n-grams, R = shared / reference n-grams (rouge-score divides by at least 1)
    s.precision = (double)shared / max_int(n_candidate, 1);
    s.recall = (double)shared / max_int(n_reference, 1);
    s.f1 = f1_of(s.precision, s.recall);
    return s;
}

// Length of the longest common subsequence, by the usual table kept two rows
// at a time: L[i][j] = L[i-1][j-1] + 1 when a_i = b_j, else max(L[i-1][j], L[i][j-1]).
static int lcs_length(const RougeTokens *a, const RougeTokens *b) {
    int *previous = calloc((size_t)b->count + 1, sizeof(int));
    int *current = calloc((size_t)b->count + 1, sizeof(int));
    for (int i = 0; i < a->count; i++) {
        for (int j = 0; j < b->count; j++) {
            current[j + 1] = tokens_equal(a, i, b, j) ? previous[j] + 1 : max_int(previous[j + 1], current[j]);
        }
        int *swap = previous;
        previous = current;
        current = swap;
    }
    int length = previous[b->count];
    free(previous);
    free(current);
    return length;
}

// ROUGE-L: P = LCS / candidate tokens, R = LCS / reference tokens.
static RougeScore lcs_score(const RougeTokens *candidate, const RougeTokens *reference) {
    RougeScore s = {0, 0, 0};
    if (candidate->count == 0 || reference->count == 0) return s;
    int lcs = lcs_length(reference, candidate);
    s.precision = (double)lcs / candidate->count;
    s.recall = (double)lcs / reference->count;
    s.f1 = f1_of(s.precision, s.recall);
    return s;
}

RougeScores rouge_score(const char *candidate, const char *reference, RougeTokenizer tokenizer, int stem) {
    RougeTokens c = rouge_tokenize(candidate, tokenizer, stem);
    RougeTokens r = rouge_tokenize(reference, tokenizer, stem);
    RougeScores scores;
    scores.kind[ROUGE_1] = ngram_score(&c, &r, 1);
    scores.kind[ROUGE_2] = ngram_score(&c, &r, 2);
    scores.kind[ROUGE_L] = lcs_score(&c, &r);
    rouge_tokens_free(&c);
    rouge_tokens_free(&r);
    return scores;
}

// ---- over many pairs ------------------------------------------------------

MeanStd rouge_mean_std(const double *values, int count) {
    MeanStd out = {0, 0};
    if (count == 0) return out;
    double sum = 0;
    for (int i = 0; i < count; i++) sum += values[i];
    out.mean = sum / count;
    if (count < 2) return out;
    // std = sqrt(sum (x - mean)^2 / (count - 1))
    double squares = 0;
    for (int i = 0; i < count; i++) squares += (values[i] - out.mean) * (values[i] - out.mean);
    out.std = sqrt(squares / (count - 1));
    return out;
}

RougeSummary rouge_summarize(const RougeScores *scores, int count) {
    RougeSummary summary;
    double *values = malloc(((size_t)count + 1) * sizeof(double));
    for (int k = 0; k < ROUGE_KINDS; k++) {
        for (int i = 0; i < count; i++) values[i] = scores[i].kind[k].precision;
        summary.kind[k].precision = rouge_mean_std(values, count);
        for (int i = 0; i < count; i++) values[i] = scores[i].kind[k].recall;
        summary.kind[k].recall = rouge_mean_std(values, count);
        for (int i = 0; i < count; i++) values[i] = scores[i].kind[k].f1;
        summary.kind[k].f1 = rouge_mean_std(values, count);
    }
    free(values);
    return summary;
}
