// data/raft_build.h: RAFT sample construction from a document collection, and
// the train/validation split.
//
// For each question: its oracle document plus K distractors drawn from the
// other documents, in shuffled order so the oracle's position tells nothing.
// A share P of the questions (exactly round(P * questions), chosen at random)
// gets K distractors only and a fixed answer saying the documents do not hold
// it, in Korean when the question is written in Hangul. Everything is drawn
// from one seeded generator (splitmix64, ops/random.h), so the same seed
// gives the same samples.
#pragma once
#include <stdint.h>
#include "data/collection.h"
#include "data/raft.h"

#ifdef __cplusplus
extern "C" {
#endif

extern const char RAFT_NO_ORACLE_ANSWER_EN[];
extern const char RAFT_NO_ORACLE_ANSWER_KO[];

typedef struct {
    int distractors;                  // K
    double no_oracle;                 // P, in [0, 1]
    uint64_t seed;
    const char *no_oracle_answer;     // for questions without Hangul
    const char *no_oracle_answer_ko;  // for questions with Hangul
} RaftBuildOptions;

// Appends one sample per question of c to out, in the order of the
// questions. A collection with fewer than K + 1 documents gives fewer
// distractors (and no sample without the oracle when it has a single
// document). Returns -1 when memory runs out.
int raft_build(const Collection *c, const RaftBuildOptions *o, RaftData *out);

// 1 when text holds a Hangul letter (syllables U+AC00-U+D7A3 or jamo).
int text_has_hangul(const char *text);

// Splits samples into train and validation by question: all samples of one
// question (exact text) go to the same side, so no held-out question is
// trained on. round(val_frac * questions) questions, chosen with the seed,
// are held out, or min_questions when that is more and val_frac > 0, as long
// as min_questions is at most a quarter of the questions (a small data set
// is not mostly held out); at least one question stays in train. is_val[i]
// gets 1 for the held-out samples. Returns the number of held-out questions,
// or -1 when memory runs out.
int raft_split(const RaftData *data, double val_frac, int min_questions, uint64_t seed, unsigned char *is_val);

#ifdef __cplusplus
}
#endif
