// eval/porter.h: the Porter stemmer (Porter 1980, "An algorithm for suffix
// stripping") exactly as NLTK's PorterStemmer() implements it in its default
// mode, NLTK_EXTENSIONS, which is the stemmer Google's rouge-score package
// uses for `use_stemmer=True`. Tested word by word against NLTK
// (test/test_rouge.cpp, fixture from dev/fixtures/make_rouge_fixtures.py).
//
// NLTK_EXTENSIONS differs from the 1980 paper in these places (all followed here):
//   - a table of irregular forms is looked up first (skies -> sky, dying -> die,
//     news -> news, proceed -> proceed, ...), and words of 1-2 letters are kept;
//   - step 1a: "ies" in a 4-letter word -> "ie" (ties -> tie);
//   - step 1b: "ied" -> "ie" in a 4-letter word, "i" otherwise;
//   - step 1c: y -> i only after a consonant that is not the first letter
//     (happy -> happi, enjoy -> enjoy, cry -> cri, by -> by);
//   - *o also holds for a 2-letter stem vowel-consonant (owed -> owe);
//   - step 2: "alli" -> "al" and step 2 again; "bli" -> "ble" (instead of
//     "abli" -> "able"); extra rules "fulli" -> "ful" and "logi" -> "log".
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

// Stems word in place (the stem is never longer than the word). The word
// should be ASCII; it is lower-cased first. Other bytes count as consonants.
void porter_stem(char *word);

#ifdef __cplusplus
}
#endif
