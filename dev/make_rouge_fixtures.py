#!/usr/bin/env python3
"""Writes test/fixtures/rouge_reference.json, the reference for test/test_rouge.cpp.

Regenerate (from the repository root, CPU only, a second):

    pip install rouge-score nltk
    python3 dev/make_rouge_fixtures.py

Made with rouge-score 0.1.2 and nltk 3.10.4 (the versions are stored in the
file). Floats are written with repr(), which reads back exactly.

  pairs   English (candidate, reference) pairs written for this test, each with
          rouge-score's tokens and scores, without and with the stemmer:
          {"candidate", "reference",
           "tokens": {"plain": {"candidate": [...], "reference": [...]},
                      "stemmed": {...}},
           "scores": {"plain":   {"rouge1": [P, R, F], "rouge2": [...], "rougeL": [...]},
                      "stemmed": {...}}}
          from RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False/True)
          .score(target=reference, prediction=candidate).
  stems   [[word, stem], ...]: nltk.stem.porter.PorterStemmer() (its default
          mode, NLTK_EXTENSIONS, the one rouge-score uses) on the paper's
          examples, NLTK's extra rules, edge cases, and every word of
          data/sample_raft.jsonl.
"""
import json
import re

import nltk
import rouge_score
from importlib.metadata import version
from nltk.stem import porter
from rouge_score import rouge_scorer

OUT = "test/fixtures/rouge_reference.json"

PAIRS = [
    # identical, disjoint, empty
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("completely different words here", "nothing shared at all"),
    ("", "the reference is not empty"),
    ("the candidate is not empty", ""),
    ("", ""),
    ("...!?", "only punctuation in the candidate"),
    ("one", "one"),
    ("one", "two"),
    # partial overlap, order
    ("the quick brown fox jumps over the lazy dog", "the quick brown dog jumps on the log"),
    ("the dog bit the man", "the man bit the dog"),
    ("a b c d e f", "f e d c b a"),
    ("police killed the gunman", "the gunman killed police"),
    ("Run apt update to refresh the package lists.", "Run `apt update`: it downloads the package lists from every source."),
    ("It downloads the lists.", "Run apt update. It downloads the package lists from every configured source, so apt knows which versions are available."),
    # repeated words (clipped counts)
    ("the the the the the the the", "the cat is on the mat"),
    ("the cat is on the mat", "the the the the the the the"),
    ("yes yes no yes", "no yes no no"),
    ("to be or not to be", "to be is to do and to do is to be"),
    ("a a a b b b", "a b a b a b"),
    # punctuation, numbers, capitals, underscores, apostrophes
    ("Hello, World! HELLO world.", "hello world; hello, WORLD?"),
    ("It's 3.14 -- not 22/7 (approx.)", "its 3 14 not 22 7 approx"),
    ("snake_case and kebab-case and CamelCase", "snake case kebab case camelcase"),
    ("In 2023, 1,000,000 users ran v2.0.1", "In 2023 there were 1000000 users of version 2.0.1"),
    ("e-mail me at user@example.com", "email user at example dot com"),
    ("don't won't can't", "do not will not cannot"),
    ("\tTabs\nand\r\nnewlines   and  spaces ", "tabs and newlines and spaces"),
    # stemming-sensitive words
    ("running runs ran runner", "he runs and he ran while running"),
    ("He gave generously to the generous donors", "generosity and generous generously given"),
    ("caresses ponies ties caress cats", "caress pony tie caressed cat"),
    ("the relational conditional rational operators", "relate condition rationale operator"),
    ("happily happy happiness", "happy happier happiest"),
    ("hopping hoped hopeful hopefully", "hop hope hopes hoping"),
    ("The connection connected connecting connections", "connect connects connective"),
    ("agreed feed plastered bled motoring sing", "agree feeding plaster bleed motor singing"),
    ("dying lying tying skies news innings", "die lie tie sky new inning"),
    ("analogies apologies generalization", "analogy apology generalize general"),
    # non-ASCII: rouge-score drops it, except the two letters Python lower-cases to ASCII
    ("café naïve résumé", "cafe naive resume"),
    ("İstanbul and the KELVIN K", "istanbul and the kelvin k"),
    ("대한민국의 수도는 서울입니다", "서울은 대한민국의 수도입니다"),
    ("The answer is 서울 (Seoul).", "Seoul is the answer"),
    ("emoji 🙂 and symbols ± ∞ are dropped", "emoji and symbols are dropped"),
    # longer texts
    ("Before installing anything new, run apt update. It downloads the package lists from every source configured on the system, so apt learns which versions are available.",
     "Run `apt update`. It downloads the package lists from every configured source, so apt knows which versions are available."),
    ("Package sources are listed in /etc/apt/sources.list and in files under /etc/apt/sources.list.d/.",
     "From /etc/apt/sources.list and the files in /etc/apt/sources.list.d/. Newer systems use deb822-style files there whose names end in .sources."),
]

# The paper's examples (Porter 1980), NLTK's extensions, and edge cases.
STEM_WORDS = """
caresses ponies ties caress cats feed agreed plastered bled motoring sing
conflated troubled sized hopping tanned falling hissing fizzed failing filing
happy sky relational conditional rational valenci hesitanci digitizer
conformabli radicalli differentli vileli analogousli vietnamization
predication operator feudalism decisiveness hopefulness callousness formaliti
sensitiviti sensibiliti triplicate formative formalize electriciti electrical
hopeful goodness revival allowance inference airliner gyroscopic adjustable
defensible irritant replacement adjustment dependent adoption homologou
communism activate angulariti homologous effective bowdlerize probate rate
cease controll roll
dies lies pies died tied lied cried spied dried skies dying lying tying news
innings inning outings outing cannings canning howe proceed exceed succeed
proceeded exceeding succeeds enjoy enjoyment cry fly spy try by toy toys
owed owing awed ski skis
generously generally generalli generalization general generate generation
hopefully beautifully fulli carefully analogi analogies analogy apology
apologies archaeology biology logically eulogy trilogy ology
running runs ran runner run connection connected connecting connections
connective connect happiness happily happier happiest
syzygy yyyy yyyyy yoyo mayday sayyid yes yell yelled youth style styled
yttrium ytterbium yclept ylang yggdrasil ypsilanti ythmic yfled ything ysses
ytional yment yness
played playing player players daily dayly
abbey abbess abbot agreement agreements bowling bowls
a is as us be ys ed ing eed ies sses ss
1990s 2nd 3rd 4th 100 a1b2 x86 b52s
generous generosity
oed seed speed bleed deed indeed succeeded
hoping hoped hopes hope filing filed files fil
misspell misspelling spelling spelled spell fell falling fall
hiss hissed buzz buzzed fizz fizzes
controlling controlled control rolling rolled
electricity electric electrician
sensitivity sensitive sensibility sensible
adoptive adopt adopted operational operate operating operative
rationalization rationalize rationally rationale
triplicated triplicates triplicating
formality formal formally formalism
vietnamese vietnam
conformable conformably conformability
radical radically radicalism differential difference different differently
vile vilely analogous analogously
decisive decisively decisiveness callous callously
relativity relative relatively relate related relating relation relations
condition conditioned conditioning conditionally
""".split()


def sample_words():
    """Every distinct word of data/sample_raft.jsonl, lower-cased."""
    words = []
    with open("data/sample_raft.jsonl", encoding="utf-8") as f:
        for line in f:
            sample = json.loads(line)
            texts = [sample["question"], sample["answer"], *sample["documents"]]
            for text in texts:
                words += re.findall(r"[a-z0-9]+", text.lower())
    return words


def score_triplets(scores):
    return {kind: [s.precision, s.recall, s.fmeasure] for kind, s in scores.items()}


def main():
    kinds = ["rouge1", "rouge2", "rougeL"]
    scorers = {"plain": rouge_scorer.RougeScorer(kinds, use_stemmer=False),
               "stemmed": rouge_scorer.RougeScorer(kinds, use_stemmer=True)}
    pairs = []
    for candidate, reference in PAIRS:
        entry = {"candidate": candidate, "reference": reference, "tokens": {}, "scores": {}}
        for name, scorer in scorers.items():
            tokenize = scorer._tokenizer.tokenize
            entry["tokens"][name] = {"candidate": tokenize(candidate), "reference": tokenize(reference)}
            entry["scores"][name] = score_triplets(scorer.score(reference, candidate))
        pairs.append(entry)

    stemmer = porter.PorterStemmer()
    assert stemmer.mode == porter.PorterStemmer.NLTK_EXTENSIONS
    long_words = ["y" * 40, "y" * 41, "ab" * 30 + "ational"]   # long runs of y must stay fast
    words = list(dict.fromkeys(STEM_WORDS + long_words + sample_words()))
    stems = [[w, stemmer.stem(w)] for w in words]

    fixture = {
        "rouge_score_version": version("rouge-score"),
        "nltk_version": nltk.__version__,
        "pairs": pairs,
        "stems": stems,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(pairs)} pairs, {len(stems)} stems "
          f"(rouge-score {fixture['rouge_score_version']}, nltk {nltk.__version__})")


if __name__ == "__main__":
    main()
