// eval/porter.c: the Porter stemmer as NLTK's PorterStemmer() runs it by default
// (mode NLTK_EXTENSIONS; see eval/porter.h for how that differs from the paper).
// The steps and their rule tables follow nltk/stem/porter.py one to one.
//
// Vocabulary of the paper: a consonant (c) is a letter other than a, e, i, o, u,
// and other than a y that follows a consonant; a vowel (v) is any other letter.
// Every word is [C](VC)^m[V], where m is its "measure". A rule reads
// "(condition) SUFFIX -> REPLACEMENT", the condition being on the stem, the
// part of the word before the suffix.
#include "eval/porter.h"

#include <stddef.h>
#include <string.h>

static int is_vowel_letter(char c) {
    return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u';
}

// Whether w[i] is a consonant: a y flips the answer of the letter before it,
// so walk back over the run of y's counting flips (no recursion, linear time).
static int is_consonant(const char *w, int i) {
    if (is_vowel_letter(w[i])) return 0;
    if (w[i] != 'y') return 1;
    int flipped = 0;
    while (i > 0 && w[i] == 'y') {
        flipped = !flipped;
        i--;
    }
    int letter_is_consonant = !is_vowel_letter(w[i]);
    return letter_is_consonant != flipped;
}

// Whether the letter c at position i is a consonant, given whether the letter
// before it was one (for one left-to-right pass over a word).
static int is_consonant_after(char c, int i, int previous_is_consonant) {
    if (is_vowel_letter(c)) return 0;
    if (c != 'y') return 1;
    return i == 0 || !previous_is_consonant;
}

// m of w[0..len): the number of vowel-to-consonant changes. (previous starts
// as a consonant, so the first letter never counts as a change.)
static int measure(const char *w, int len) {
    int m = 0, previous = 1;
    for (int i = 0; i < len; i++) {
        int consonant = is_consonant_after(w[i], i, previous);
        if (!previous && consonant) m++;
        previous = consonant;
    }
    return m;
}

// *v*: w[0..len) contains a vowel.
static int contains_vowel(const char *w, int len) {
    int previous = 1;
    for (int i = 0; i < len; i++) {
        previous = is_consonant_after(w[i], i, previous);
        if (!previous) return 1;
    }
    return 0;
}

// *d: w[0..len) ends with a double consonant (-tt, -ss, ...).
static int ends_double_consonant(const char *w, int len) {
    return len >= 2 && w[len - 1] == w[len - 2] && is_consonant(w, len - 1);
}

// *o: w[0..len) ends consonant-vowel-consonant, the last not w, x or y
// (-wil, -hop); NLTK also counts a two-letter vowel-consonant stem (ow-ed).
static int ends_cvc(const char *w, int len) {
    char last = len > 0 ? w[len - 1] : 0;
    int three = len >= 3 && is_consonant(w, len - 3) && !is_consonant(w, len - 2) &&
                is_consonant(w, len - 1) && last != 'w' && last != 'x' && last != 'y';
    int two = len == 2 && !is_consonant(w, 0) && is_consonant(w, 1);
    return three || two;
}

static int ends_with(const char *w, int len, const char *suffix) {
    int n = (int)strlen(suffix);
    return len >= n && memcmp(w + len - n, suffix, (size_t)n) == 0;
}

// ---- rules ----------------------------------------------------------------

// A condition on the stem w[0..stem_len) (NULL: always).
typedef int (*StemCondition)(const char *w, int stem_len);

typedef struct {
    const char *suffix;
    const char *replacement;   // never longer than suffix, so stemming works in place
    StemCondition condition;
} Rule;

// (m>0)
static int measure_positive(const char *w, int stem_len) { return measure(w, stem_len) > 0; }
// (m>1)
static int measure_above_one(const char *w, int stem_len) { return measure(w, stem_len) > 1; }
// (m>1 and (*S or *T)), for -ion
static int measure_above_one_after_s_or_t(const char *w, int stem_len) {
    return measure(w, stem_len) > 1 && (w[stem_len - 1] == 's' || w[stem_len - 1] == 't');
}
// NLTK's -logi rule measures the stem with its l: (m>0) of w[0..stem_len+1).
static int measure_positive_with_l(const char *w, int stem_len) { return measure(w, stem_len + 1) > 0; }
// Step 5b's -ll rule measures the word less one l: (m>1) of w[0..stem_len+1).
static int measure_above_one_with_l(const char *w, int stem_len) { return measure(w, stem_len + 1) > 1; }
// NLTK's step 1c: the y follows a consonant that is not the first letter.
static int consonant_not_first(const char *w, int stem_len) {
    return stem_len > 1 && is_consonant(w, stem_len - 1);
}

// The first rule whose suffix ends the word decides: the suffix is replaced
// when the condition holds, and either way no later rule is tried.
static void apply_first_rule(char *w, const Rule *rules, int n_rules) {
    int len = (int)strlen(w);
    for (int r = 0; r < n_rules; r++) {
        if (!ends_with(w, len, rules[r].suffix)) continue;
        int stem_len = len - (int)strlen(rules[r].suffix);
        if (!rules[r].condition || rules[r].condition(w, stem_len))
            strcpy(w + stem_len, rules[r].replacement);
        return;
    }
}

#define COUNT(table) ((int)(sizeof(table) / sizeof((table)[0])))

// ---- the steps ------------------------------------------------------------

// Plurals: caresses -> caress, ponies -> poni, ties -> tie (NLTK), cats -> cat.
static void step1a(char *w) {
    static const Rule rules[] = {
        {"sses", "ss", NULL}, {"ies", "i", NULL}, {"ss", "ss", NULL}, {"s", "", NULL},
    };
    int len = (int)strlen(w);
    if (len == 4 && ends_with(w, len, "ies")) {
        strcpy(w + 1, "ie");
        return;
    }
    apply_first_rule(w, rules, COUNT(rules));
}

// -ed and -ing: agreed -> agree, plastered -> plaster, motoring -> motor, and
// the tidying after them: conflat(ed) -> conflate, hopp(ing) -> hop, fil(ing) -> file.
static void step1b(char *w) {
    int len = (int)strlen(w);
    if (ends_with(w, len, "ied")) {   // NLTK: tied -> tie, cried -> cri
        strcpy(w + len - 3, len == 4 ? "ie" : "i");
        return;
    }
    if (ends_with(w, len, "eed")) {   // (m>0) EED -> EE
        if (measure(w, len - 3) > 0) w[len - 1] = '\0';
        return;
    }
    int stem_len;
    if (ends_with(w, len, "ed") && contains_vowel(w, len - 2)) stem_len = len - 2;
    else if (ends_with(w, len, "ing") && contains_vowel(w, len - 3)) stem_len = len - 3;
    else return;
    w[stem_len] = '\0';
    char last = w[stem_len - 1];
    if (ends_with(w, stem_len, "at") || ends_with(w, stem_len, "bl") || ends_with(w, stem_len, "iz")) {
        strcpy(w + stem_len, "e");
    } else if (ends_double_consonant(w, stem_len)) {   // (*d and not (*L or *S or *Z)) -> single letter
        if (last != 'l' && last != 's' && last != 'z') w[stem_len - 1] = '\0';
    } else if (measure(w, stem_len) == 1 && ends_cvc(w, stem_len)) {   // (m=1 and *o) -> E
        strcpy(w + stem_len, "e");
    }
}

// y -> i after a consonant: happy -> happi, enjoy -> enjoy.
static void step1c(char *w) {
    static const Rule rules[] = {{"y", "i", consonant_not_first}};
    apply_first_rule(w, rules, COUNT(rules));
}

// Double suffixes to single ones: relational -> relate, hopefulness -> hopeful.
static void step2(char *w) {
    static const Rule rules[] = {
        {"ational", "ate", measure_positive},  {"tional", "tion", measure_positive},
        {"enci", "ence", measure_positive},    {"anci", "ance", measure_positive},
        {"izer", "ize", measure_positive},     {"bli", "ble", measure_positive},
        {"alli", "al", measure_positive},      {"entli", "ent", measure_positive},
        {"eli", "e", measure_positive},        {"ousli", "ous", measure_positive},
        {"ization", "ize", measure_positive},  {"ation", "ate", measure_positive},
        {"ator", "ate", measure_positive},     {"alism", "al", measure_positive},
        {"iveness", "ive", measure_positive},  {"fulness", "ful", measure_positive},
        {"ousness", "ous", measure_positive},  {"aliti", "al", measure_positive},
        {"iviti", "ive", measure_positive},    {"biliti", "ble", measure_positive},
        {"fulli", "ful", measure_positive},    {"logi", "log", measure_positive_with_l},
    };
    int len = (int)strlen(w);
    if (ends_with(w, len, "alli") && measure(w, len - 4) > 0) {   // NLTK: -alli -> -al, then step 2 again
        strcpy(w + len - 4, "al");
        step2(w);
        return;
    }
    apply_first_rule(w, rules, COUNT(rules));
}

// -ic-, -full, -ness and the like: triplicate -> triplic, goodness -> good.
static void step3(char *w) {
    static const Rule rules[] = {
        {"icate", "ic", measure_positive}, {"ative", "", measure_positive},
        {"alize", "al", measure_positive}, {"iciti", "ic", measure_positive},
        {"ical", "ic", measure_positive},  {"ful", "", measure_positive},
        {"ness", "", measure_positive},
    };
    apply_first_rule(w, rules, COUNT(rules));
}

// Suffixes removed from long stems: revival -> reviv, adoption -> adopt.
static void step4(char *w) {
    static const Rule rules[] = {
        {"al", "", measure_above_one},   {"ance", "", measure_above_one},
        {"ence", "", measure_above_one}, {"er", "", measure_above_one},
        {"ic", "", measure_above_one},   {"able", "", measure_above_one},
        {"ible", "", measure_above_one}, {"ant", "", measure_above_one},
        {"ement", "", measure_above_one}, {"ment", "", measure_above_one},
        {"ent", "", measure_above_one},  {"ion", "", measure_above_one_after_s_or_t},
        {"ou", "", measure_above_one},   {"ism", "", measure_above_one},
        {"ate", "", measure_above_one},  {"iti", "", measure_above_one},
        {"ous", "", measure_above_one},  {"ive", "", measure_above_one},
        {"ize", "", measure_above_one},
    };
    apply_first_rule(w, rules, COUNT(rules));
}

// A final e: probate -> probat, cease -> ceas, rate -> rate.
// (m>1) E -> ; (m=1 and not *o) E ->
static void step5a(char *w) {
    int len = (int)strlen(w);
    if (!ends_with(w, len, "e")) return;
    int m = measure(w, len - 1);
    if (m > 1 || (m == 1 && !ends_cvc(w, len - 1))) w[len - 1] = '\0';
}

// (m>1 and *d and *L) -> single letter: controll -> control, roll -> roll.
static void step5b(char *w) {
    static const Rule rules[] = {{"ll", "l", measure_above_one_with_l}};
    apply_first_rule(w, rules, COUNT(rules));
}

// NLTK's irregular forms, looked up before any step.
static const char *const IRREGULAR[][2] = {
    {"sky", "sky"},         {"skies", "sky"},      {"dying", "die"},       {"lying", "lie"},
    {"tying", "tie"},       {"news", "news"},      {"innings", "inning"},  {"inning", "inning"},
    {"outings", "outing"},  {"outing", "outing"},  {"cannings", "canning"}, {"canning", "canning"},
    {"howe", "howe"},       {"proceed", "proceed"}, {"exceed", "exceed"},  {"succeed", "succeed"},
};

void porter_stem(char *word) {
    for (char *p = word; *p; p++)
        if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
    for (int i = 0; i < COUNT(IRREGULAR); i++) {
        if (strcmp(word, IRREGULAR[i][0]) == 0) {
            strcpy(word, IRREGULAR[i][1]);
            return;
        }
    }
    if (strlen(word) <= 2) return;
    step1a(word);
    step1b(word);
    step1c(word);
    step2(word);
    step3(word);
    step4(word);
    step5a(word);
    step5b(word);
}
