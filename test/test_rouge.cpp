// Tests for eval/rouge.c and eval/porter.c: the Porter stemmer word by word against
// NLTK, the default tokenizer's tokens and the ROUGE-1/2/L scores against
// Google's rouge-score (the fixture of dev/fixtures/make_rouge_fixtures.py), the
// Unicode tokenizers on Korean pairs worked out by hand, invalid UTF-8 and
// empty texts, and the mean and spread over pairs.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "formats/json.h"
#include "eval/porter.h"
#include "eval/rouge.h"

namespace {

const char *const FIXTURE = "test/fixtures/rouge_reference.json";
const double TOLERANCE = 1e-6;   // against rouge-score (in practice they agree to the last bit)

// The parsed fixture, loaded once; fails the test when missing or broken.
const JsonValue *fixture() {
    static JsonValue *root = nullptr;
    if (root) return root;
    char err[512] = "";
    root = json_parse_file(FIXTURE, err, sizeof err);
    REQUIRE_MESSAGE(root, err, " (regenerate with python3 dev/fixtures/make_rouge_fixtures.py)");
    return root;
}

const JsonValue *member(const JsonValue *object, const char *key, JsonType type) {
    const JsonValue *v = json_get(object, key);
    REQUIRE_MESSAGE((v && v->type == type), "fixture lacks member ", key);
    return v;
}

std::vector<std::string> strings(const JsonValue *array) {
    std::vector<std::string> out;
    for (size_t i = 0; i < array->count; i++) out.push_back(array->items[i].string);
    return out;
}

std::vector<std::string> tokens_of(const char *text, RougeTokenizer tokenizer, int stem) {
    RougeTokens tokens = rouge_tokenize(text, tokenizer, stem);
    std::vector<std::string> out;
    for (int i = 0; i < tokens.count; i++) out.push_back(tokens.chars + tokens.start[i]);
    rouge_tokens_free(&tokens);
    return out;
}

std::string stem_of(const std::string &word) {
    std::vector<char> buffer(word.begin(), word.end());
    buffer.push_back('\0');
    porter_stem(buffer.data());
    return buffer.data();
}

bool is_ascii(const std::string &s) {
    for (unsigned char c : s)
        if (c >= 0x80) return false;
    return true;
}

// Checks all nine numbers of got against the fixture's {"rouge1": [P, R, F], ...}
// and returns the largest difference.
double compare_scores(const RougeScores &got, const JsonValue *expected) {
    double worst = 0;
    for (int k = 0; k < ROUGE_KINDS; k++) {
        const JsonValue *prf = member(expected, rouge_kind_name((RougeKind)k), JSON_ARRAY);
        REQUIRE(prf->count == 3);
        const RougeScore &s = got.kind[k];
        double values[3] = {s.precision, s.recall, s.f1};
        for (int i = 0; i < 3; i++) {
            double diff = std::fabs(values[i] - prf->items[i].number);
            CHECK_MESSAGE(diff < TOLERANCE, rouge_kind_name((RougeKind)k), " [P, R, F][", i, "]: ours ",
                          values[i], ", rouge-score ", prf->items[i].number);
            worst = std::fmax(worst, diff);
        }
    }
    return worst;
}

// Expects the same P = R = F for all of one kind.
void check_all(const RougeScore &s, double value) {
    CHECK(s.precision == doctest::Approx(value).epsilon(1e-12));
    CHECK(s.recall == doctest::Approx(value).epsilon(1e-12));
    CHECK(s.f1 == doctest::Approx(value).epsilon(1e-12));
}

// Scores candidate against reference with tokenizer and expects P = R = F
// of rouge1, rouge2, rougeL to be r1, r2, rl.
void check_symmetric(const char *candidate, const char *reference, RougeTokenizer tokenizer, int stem,
                     double r1, double r2, double rl) {
    CAPTURE(candidate);
    CAPTURE(reference);
    RougeScores s = rouge_score(candidate, reference, tokenizer, stem);
    check_all(s.kind[ROUGE_1], r1);
    check_all(s.kind[ROUGE_2], r2);
    check_all(s.kind[ROUGE_L], rl);
}

}  // namespace

TEST_CASE("rouge: the Porter stemmer equals NLTK's PorterStemmer() word by word") {
    const JsonValue *stems = member(fixture(), "stems", JSON_ARRAY);
    REQUIRE(stems->count > 200);
    int wrong = 0;
    for (size_t i = 0; i < stems->count; i++) {
        std::string word = stems->items[i].items[0].string;
        std::string expected = stems->items[i].items[1].string;
        std::string got = stem_of(word);
        if (got != expected) {
            wrong++;
            MESSAGE(word, ": nltk ", expected, ", ours ", got);
        }
    }
    CHECK(wrong == 0);
    CHECK(stem_of("CARESSES") == "caress");   // lower-cased first, as NLTK does
}

TEST_CASE("rouge: the default tokenizer gives rouge-score's tokens") {
    const JsonValue *pairs = member(fixture(), "pairs", JSON_ARRAY);
    REQUIRE(pairs->count >= 40);
    for (size_t i = 0; i < pairs->count; i++) {
        const JsonValue *pair = &pairs->items[i];
        const JsonValue *tokens = member(pair, "tokens", JSON_OBJECT);
        for (int stem = 0; stem <= 1; stem++) {
            const JsonValue *expected = member(tokens, stem ? "stemmed" : "plain", JSON_OBJECT);
            for (const char *side : {"candidate", "reference"}) {
                const char *text = member(pair, side, JSON_STRING)->string;
                CAPTURE(text);
                CAPTURE(stem);
                CHECK(tokens_of(text, ROUGE_TOKENIZE_DEFAULT, stem) == strings(member(expected, side, JSON_ARRAY)));
            }
        }
    }
}

TEST_CASE("rouge: ROUGE-1/2/L equal rouge-score's, with and without the stemmer") {
    const JsonValue *pairs = member(fixture(), "pairs", JSON_ARRAY);
    double worst = 0;
    for (size_t i = 0; i < pairs->count; i++) {
        const JsonValue *pair = &pairs->items[i];
        const char *candidate = member(pair, "candidate", JSON_STRING)->string;
        const char *reference = member(pair, "reference", JSON_STRING)->string;
        const JsonValue *scores = member(pair, "scores", JSON_OBJECT);
        CAPTURE(candidate);
        CAPTURE(reference);
        for (int stem = 0; stem <= 1; stem++) {
            CAPTURE(stem);
            RougeScores got = rouge_score(candidate, reference, ROUGE_TOKENIZE_DEFAULT, stem);
            double diff = compare_scores(got, member(scores, stem ? "stemmed" : "plain", JSON_OBJECT));
            worst = std::fmax(worst, diff);
        }
    }
    MESSAGE("largest difference from rouge-score: ", worst);
}

TEST_CASE("rouge: the WORDS tokenizer equals the default one on ASCII text") {
    const JsonValue *pairs = member(fixture(), "pairs", JSON_ARRAY);
    int ascii_pairs = 0;
    for (size_t i = 0; i < pairs->count; i++) {
        const JsonValue *pair = &pairs->items[i];
        const char *candidate = member(pair, "candidate", JSON_STRING)->string;
        const char *reference = member(pair, "reference", JSON_STRING)->string;
        if (!is_ascii(candidate) || !is_ascii(reference)) continue;
        ascii_pairs++;
        CAPTURE(candidate);
        CAPTURE(reference);
        const JsonValue *scores = member(pair, "scores", JSON_OBJECT);
        for (int stem = 0; stem <= 1; stem++) {
            RougeScores got = rouge_score(candidate, reference, ROUGE_TOKENIZE_WORDS, stem);
            compare_scores(got, member(scores, stem ? "stemmed" : "plain", JSON_OBJECT));
        }
    }
    CHECK(ascii_pairs > 30);
}

TEST_CASE("rouge: Unicode tokens: words and characters, punctuation dropped") {
    const char *text = "서울은, 한국의 수도! (Seoul) ÉCOLE 2024년";
    CHECK(tokens_of(text, ROUGE_TOKENIZE_WORDS, 0) ==
          std::vector<std::string>{"서울은", "한국의", "수도", "seoul", "école", "2024년"});
    CHECK(tokens_of("서울은, 수도!", ROUGE_TOKENIZE_CHARS, 0) ==
          std::vector<std::string>{"서", "울", "은", "수", "도"});
    CHECK(tokens_of(text, ROUGE_TOKENIZE_DEFAULT, 0) == std::vector<std::string>{"seoul", "cole", "2024"});
    // Decomposed Hangul (three jamo) is composed first: the same token as the precomposed syllable.
    CHECK(tokens_of("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB", ROUGE_TOKENIZE_WORDS, 0) ==
          std::vector<std::string>{"한"});
    CHECK(tokens_of("Running 서울에서", ROUGE_TOKENIZE_WORDS, 1) == std::vector<std::string>{"run", "서울에서"});
    CHECK(tokens_of("Running 서울에서", ROUGE_TOKENIZE_CHARS, 1).size() == 11);   // stem ignored
}

TEST_CASE("rouge: Korean pairs, worked out by hand") {
    const char *sentence = "대한민국의 수도는 서울입니다.";
    // Identical: 1 everywhere, except rouge-score's tokenizer, which sees no token at all.
    check_symmetric(sentence, sentence, ROUGE_TOKENIZE_WORDS, 0, 1, 1, 1);
    check_symmetric(sentence, sentence, ROUGE_TOKENIZE_CHARS, 0, 1, 1, 1);
    check_symmetric(sentence, sentence, ROUGE_TOKENIZE_DEFAULT, 0, 0, 0, 0);

    // A different particle (은 / 이): words share 2 of 3 tokens and 1 of 2
    // bigrams, LCS 2; characters share 9 of 10 (서울 한국의 수도 이다, one 이),
    // 7 of 9 bigrams (all but 울은/울이 and 은한/이한), LCS 9.
    const char *candidate = "서울은 한국의 수도이다";
    const char *reference = "서울이 한국의 수도이다";
    check_symmetric(candidate, reference, ROUGE_TOKENIZE_WORDS, 0, 2.0 / 3, 0.5, 2.0 / 3);
    check_symmetric(candidate, reference, ROUGE_TOKENIZE_CHARS, 0, 0.9, 7.0 / 9, 0.9);

    // Spacing only: one word against two, but the same characters.
    check_symmetric("한국의수도", "한국의 수도", ROUGE_TOKENIZE_CHARS, 0, 1, 1, 1);
    RougeScores spacing = rouge_score("한국의수도", "한국의 수도", ROUGE_TOKENIZE_WORDS, 0);
    check_all(spacing.kind[ROUGE_1], 0);

    // Different lengths: candidate 수도 서울 (4 chars), reference 서울은 수도 (5 chars).
    // Chars: shared 4 -> P 1, R 4/5; bigrams: 수도 and 서울 shared of 3 and 4
    // -> P 2/3, R 2/4; LCS 2 (서울 or 수도) -> P 2/4, R 2/5.
    RougeScores s = rouge_score("수도 서울", "서울은 수도", ROUGE_TOKENIZE_CHARS, 0);
    CHECK(s.kind[ROUGE_1].precision == doctest::Approx(1.0));
    CHECK(s.kind[ROUGE_1].recall == doctest::Approx(0.8));
    CHECK(s.kind[ROUGE_1].f1 == doctest::Approx(2 * 0.8 / 1.8));
    CHECK(s.kind[ROUGE_2].precision == doctest::Approx(2.0 / 3));
    CHECK(s.kind[ROUGE_2].recall == doctest::Approx(0.5));
    CHECK(s.kind[ROUGE_L].precision == doctest::Approx(0.5));
    CHECK(s.kind[ROUGE_L].recall == doctest::Approx(0.4));

    check_symmetric("사과", "바나나", ROUGE_TOKENIZE_CHARS, 0, 0, 0, 0);
    check_symmetric("Running 서울에서", "runs 서울에서", ROUGE_TOKENIZE_WORDS, 1, 1, 1, 1);
    check_symmetric("Running 서울에서", "runs 서울에서", ROUGE_TOKENIZE_WORDS, 0, 0.5, 0, 0.5);
}

TEST_CASE("rouge: invalid UTF-8 separates tokens and never matches; empty texts score 0") {
    // An answer cut in the middle of 은 (EC 9D 80): the two bytes left count as spaces.
    CHECK(tokens_of("서울\xEC\x9D", ROUGE_TOKENIZE_WORDS, 0) == std::vector<std::string>{"서울"});
    CHECK(tokens_of("서울\xEC\x9D", ROUGE_TOKENIZE_CHARS, 0) == std::vector<std::string>{"서", "울"});
    CHECK(tokens_of("abc\xFF" "def", ROUGE_TOKENIZE_DEFAULT, 0) == std::vector<std::string>{"abc", "def"});
    // lone continuation byte, overlong '/', a UTF-16 surrogate, beyond U+10FFFF
    const char *broken = "a\x80" "b \xC0\xAF c\xED\xA0\x80" "d \xF4\x90\x80\x80" "e";
    for (RougeTokenizer t : {ROUGE_TOKENIZE_DEFAULT, ROUGE_TOKENIZE_WORDS}) {
        CAPTURE(t);
        CHECK(tokens_of(broken, t, 0) == std::vector<std::string>{"a", "b", "c", "d", "e"});
    }
    check_symmetric("\xFF\xFE", "\xFF\xFE", ROUGE_TOKENIZE_CHARS, 0, 0, 0, 0);

    for (RougeTokenizer t : {ROUGE_TOKENIZE_DEFAULT, ROUGE_TOKENIZE_WORDS, ROUGE_TOKENIZE_CHARS}) {
        CAPTURE(t);
        CHECK(tokens_of("", t, 1).empty());
        CHECK(tokens_of(" .,!? \t\n", t, 1).empty());
        check_symmetric("", "", t, 1, 0, 0, 0);
        check_symmetric("", "서울 Seoul", t, 0, 0, 0, 0);
        check_symmetric("서울 Seoul", "", t, 0, 0, 0, 0);
    }
    // One token: no bigram, so ROUGE-2 is 0 even for identical texts (as in rouge-score).
    check_symmetric("seoul", "seoul", ROUGE_TOKENIZE_WORDS, 0, 1, 0, 1);
}

TEST_CASE("rouge: mean and spread over pairs") {
    const double values[] = {1, 2, 3, 4};
    MeanStd m = rouge_mean_std(values, 4);
    CHECK(m.mean == doctest::Approx(2.5));
    CHECK(m.std == doctest::Approx(std::sqrt(5.0 / 3)));   // sum of squares 5, over n - 1
    m = rouge_mean_std(values, 1);
    CHECK(m.mean == 1);
    CHECK(m.std == 0);
    m = rouge_mean_std(values, 0);
    CHECK(m.mean == 0);
    CHECK(m.std == 0);

    RougeScores scores[3] = {
        rouge_score("the cat sat", "the cat sat", ROUGE_TOKENIZE_DEFAULT, 0),   // all 1
        rouge_score("a dog", "the cat sat", ROUGE_TOKENIZE_DEFAULT, 0),         // all 0
        rouge_score("the cat", "the cat sat", ROUGE_TOKENIZE_DEFAULT, 0),       // R1: P 1, R 2/3
    };
    RougeSummary summary = rouge_summarize(scores, 3);
    CHECK(summary.kind[ROUGE_1].precision.mean == doctest::Approx(2.0 / 3));
    CHECK(summary.kind[ROUGE_1].precision.std == doctest::Approx(std::sqrt(1.0 / 3)));
    CHECK(summary.kind[ROUGE_1].recall.mean == doctest::Approx((1 + 2.0 / 3) / 3));
    CHECK(summary.kind[ROUGE_1].f1.mean == doctest::Approx((1 + 0.8) / 3));
    CHECK(summary.kind[ROUGE_2].recall.mean == doctest::Approx((1 + 0.5) / 3));
    CHECK(summary.kind[ROUGE_L].f1.mean == doctest::Approx((1 + 0.8) / 3));
    CHECK(std::string(rouge_kind_name(ROUGE_L)) == "rougeL");
}
