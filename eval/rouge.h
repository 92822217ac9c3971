// eval/rouge.h: ROUGE-1, ROUGE-2 and ROUGE-L between a candidate text (a model's
// answer) and a reference text, as Google's rouge-score package computes them,
// with three tokenizers, and the mean and spread of scores over many pairs.
//
//   ROUGE-N  counts the n-grams the two texts share, each at most as often as
//            it occurs in either: precision = shared / candidate n-grams,
//            recall = shared / reference n-grams.
//   ROUGE-L  uses the longest common subsequence of the two token lists
//            (sentence level, rouge-score's `rougeL`, not `rougeLsum`):
//            precision = LCS / candidate tokens, recall = LCS / reference tokens.
//   F1       = 2 P R / (P + R), and 0 when P + R = 0.
// A text with no tokens (or fewer than n for ROUGE-N) scores 0, as in rouge-score.
//
// Which tokenizer:
//   ROUGE_TOKENIZE_DEFAULT  English. rouge-score's default tokenizer exactly:
//       lower-case, every character outside [a-z0-9] separates tokens (so
//       punctuation is dropped), and with stem = 1 each token longer than 3
//       characters goes through NLTK's Porter stemmer (eval/porter.h). The scores
//       equal rouge-score's `RougeScorer([...], use_stemmer=stem)` (tested on a
//       fixture of English pairs). But it throws away every non-ASCII
//       character: a Korean answer has no tokens at all and always scores 0.
//   ROUGE_TOKENIZE_WORDS    Korean and any other language written with spaces.
//       The same rule over all of Unicode: text is NFC-composed and lower-cased
//       (utf8proc's one-to-one mappings), a token is a maximal run of letters,
//       combining marks and digits (Unicode categories L*, M*, N*), and
//       everything else (spaces, punctuation, symbols) separates tokens and is
//       dropped, as rouge-score drops it. On ASCII text it gives exactly the
//       DEFAULT tokens (and stem = 1 stems the ASCII tokens the same way).
//       In Korean a word (eojeol) carries its particles: 서울은 and 서울이 are
//       different tokens, so word-level scores undercount shared content.
//   ROUGE_TOKENIZE_CHARS    Korean, Chinese, Japanese: each letter, mark or
//       digit (the characters WORDS keeps) is one token, spaces and
//       punctuation dropped; ROUGE-2 then counts character bigrams, across
//       word boundaries too. 서울은 and 서울이 share two of three tokens, so
//       particles and spacing differences cost little. Prefer it for Korean;
//       stem is ignored.
//
// Bad input: invalid UTF-8 (for example an answer cut in the middle of a
// character by a token limit) never fails: each byte that does not start a
// well-formed character counts as a space, separating tokens and never
// matching. An empty text has no tokens and scores 0.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ROUGE_TOKENIZE_DEFAULT,   // rouge-score's tokenizer: ASCII letters and digits only
    ROUGE_TOKENIZE_WORDS,     // Unicode words, punctuation dropped
    ROUGE_TOKENIZE_CHARS,     // Unicode characters, spaces and punctuation dropped
} RougeTokenizer;

typedef enum { ROUGE_1, ROUGE_2, ROUGE_L, ROUGE_KINDS } RougeKind;

typedef struct {
    double precision, recall, f1;
} RougeScore;

typedef struct {
    RougeScore kind[ROUGE_KINDS];   // kind[ROUGE_1], kind[ROUGE_2], kind[ROUGE_L]
} RougeScores;

// "rouge1", "rouge2", "rougeL" (rouge-score's names).
const char *rouge_kind_name(RougeKind kind);

// The three scores of candidate against reference (UTF-8, NUL-terminated).
// stem = 1 applies the Porter stemmer to ASCII tokens (not with CHARS).
RougeScores rouge_score(const char *candidate, const char *reference, RougeTokenizer tokenizer, int stem);

// A text's tokens: count NUL-terminated UTF-8 strings packed in chars,
// token i starting at chars + start[i].
typedef struct {
    char *chars;
    int *start;
    int count;
} RougeTokens;

// Tokenizes text as rouge_score does. Free with rouge_tokens_free.
RougeTokens rouge_tokenize(const char *text, RougeTokenizer tokenizer, int stem);
void rouge_tokens_free(RougeTokens *tokens);

// Mean and sample standard deviation (divisor count - 1; 0 when count < 2)
// of count values; both 0 when count is 0.
typedef struct {
    double mean, std;
} MeanStd;
MeanStd rouge_mean_std(const double *values, int count);

// Mean and standard deviation of each precision, recall and F1 over count pairs.
typedef struct {
    MeanStd precision, recall, f1;
} RougeSpread;

typedef struct {
    RougeSpread kind[ROUGE_KINDS];
} RougeSummary;

RougeSummary rouge_summarize(const RougeScores *scores, int count);

#ifdef __cplusplus
}
#endif
