// data/raft_build.c: building RAFT samples (oracle + shuffled distractors,
// some without the oracle) and splitting by question (see raft_build.h).
#include "data/raft_build.h"
#include "ops/random.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char RAFT_NO_ORACLE_ANSWER_EN[] = "The documents do not contain the answer to this question.";
const char RAFT_NO_ORACLE_ANSWER_KO[] = "주어진 문서에는 이 질문에 대한 답이 없습니다.";

// A whole number in [0, n).
static int random_below(uint64_t *state, int n) { return (int)(splitmix64_next(state) % (uint64_t)n); }

// Fisher-Yates: every order equally likely.
static void shuffle(int *items, int n, uint64_t *state) {
    for (int i = n - 1; i > 0; i--) {
        int j = random_below(state, i + 1);
        int tmp = items[i];
        items[i] = items[j];
        items[j] = tmp;
    }
}

int text_has_hangul(const char *text) {
    const unsigned char *p = (const unsigned char *)text;
    for (; *p; p++) {
        // a three-byte UTF-8 sequence 1110xxxx 10yyyyyy 10zzzzzz encodes xxxx yyyyyy zzzzzz
        if ((p[0] & 0xF0) != 0xE0 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) continue;
        unsigned cp = ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
        if ((cp >= 0xAC00 && cp <= 0xD7A3) || (cp >= 0x1100 && cp <= 0x11FF) || (cp >= 0x3130 && cp <= 0x318F))
            return 1;
    }
    return 0;
}

// Draws k different documents other than `oracle` into picked (k <= n_documents - 1).
static void draw_distractors(int n_documents, int oracle, int k, int *picked, uint64_t *state) {
    for (int i = 0; i < k; i++) {
        int candidate, taken;
        do {
            candidate = random_below(state, n_documents);
            taken = candidate == oracle;
            for (int j = 0; j < i && !taken; j++) taken = picked[j] == candidate;
        } while (taken);
        picked[i] = candidate;
    }
}

// One sample: the documents listed in slots (document indices), the oracle
// at slot oracle_slot (-1: none), and the answer.
static int make_sample(const Collection *c, const QAPair *pair, const int *slots, int n_slots, int oracle_slot,
                       const char *answer, RaftData *out) {
    RaftSample s;
    memset(&s, 0, sizeof s);
    s.question = strdup(pair->question);
    s.answer = strdup(answer);
    s.documents = (char **)calloc((size_t)(n_slots > 0 ? n_slots : 1), sizeof(char *));
    s.oracle = oracle_slot;
    int failed = !s.question || !s.answer || !s.documents;
    for (int i = 0; i < n_slots && !failed; i++) {
        s.documents[i] = strdup(c->documents[slots[i]].text);
        failed = !s.documents[i];
        s.n_documents++;
    }
    if (!failed) failed = raft_append(out, &s) != 0;
    raft_sample_free(&s);
    return failed ? -1 : 0;
}

int raft_build(const Collection *c, const RaftBuildOptions *o, RaftData *out) {
    uint64_t state = o->seed;
    int k = o->distractors < c->n_documents - 1 ? o->distractors : c->n_documents - 1;
    if (k < 0) k = 0;
    // which questions go without the oracle: the first round(P * n) of a shuffled order
    int n = c->n_pairs;
    int *order = (int *)malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    unsigned char *without_oracle = (unsigned char *)calloc((size_t)(n > 0 ? n : 1), 1);
    int *slots = (int *)calloc((size_t)(k + 1), sizeof(int));
    int status = order && without_oracle && slots ? 0 : -1;
    if (status == 0) {
        for (int i = 0; i < n; i++) order[i] = i;
        shuffle(order, n, &state);
        int n_without = (int)floor(o->no_oracle * n + 0.5);
        // a sample without the oracle needs at least one other document to show
        if (k == 0) n_without = 0;
        for (int i = 0; i < n_without; i++) without_oracle[order[i]] = 1;
    }
    for (int i = 0; i < n && status == 0; i++) {
        const QAPair *pair = &c->pairs[i];
        // distractors come out of draw_distractors in a random order already
        draw_distractors(c->n_documents, pair->document, k, slots, &state);
        if (without_oracle[i]) {
            const char *answer = text_has_hangul(pair->question) ? o->no_oracle_answer_ko : o->no_oracle_answer;
            status = make_sample(c, pair, slots, k, -1, answer, out);
        } else {
            // the oracle joins the distractors, then swaps places with a uniformly random slot
            int oracle_slot = random_below(&state, k + 1);
            slots[k] = slots[oracle_slot];   // the distractor there moves to the end (none when oracle_slot is k)
            slots[oracle_slot] = pair->document;
            status = make_sample(c, pair, slots, k + 1, oracle_slot, pair->answer, out);
        }
    }
    free(order);
    free(without_oracle);
    free(slots);
    return status;
}

// ---- the split ----------------------------------------------------------------

typedef struct {
    const char *question;
    int sample;
} QuestionRef;

static int compare_questions(const void *a, const void *b) {
    const QuestionRef *x = (const QuestionRef *)a, *y = (const QuestionRef *)b;
    int order = strcmp(x->question, y->question);
    return order ? order : (x->sample > y->sample) - (x->sample < y->sample);
}

// How many of n_groups questions are held out: round(val_frac * n_groups),
// raised to min_questions when val_frac > 0 and min_questions is at most a
// quarter of the questions, and always leaving one for training.
static int held_out_count(int n_groups, double val_frac, int min_questions) {
    int held_out = (int)floor(val_frac * n_groups + 0.5);
    if (val_frac > 0 && held_out < min_questions && 4 * (long)min_questions <= n_groups) held_out = min_questions;
    return held_out > n_groups - 1 ? n_groups - 1 : held_out;
}

int raft_split(const RaftData *data, double val_frac, int min_questions, uint64_t seed, unsigned char *is_val) {
    int n = data->count;
    memset(is_val, 0, (size_t)n);
    if (n == 0) return 0;
    // group the samples by question: sorted by text, each run of equal questions is one group
    QuestionRef *refs = (QuestionRef *)malloc(sizeof(QuestionRef) * (size_t)n);
    int *group_of = (int *)malloc(sizeof(int) * (size_t)n);
    int *groups = (int *)malloc(sizeof(int) * (size_t)n);
    if (!refs || !group_of || !groups) { free(refs); free(group_of); free(groups); return -1; }
    for (int i = 0; i < n; i++) refs[i] = (QuestionRef){data->samples[i].question, i};
    qsort(refs, (size_t)n, sizeof(QuestionRef), compare_questions);
    int n_groups = 0;
    for (int i = 0; i < n; i++) {
        if (i == 0 || strcmp(refs[i].question, refs[i - 1].question) != 0) n_groups++;
        group_of[refs[i].sample] = n_groups - 1;
    }
    // hold out the first held_out_count groups of a seeded shuffle
    for (int g = 0; g < n_groups; g++) groups[g] = g;
    uint64_t state = seed ^ 0x5B117ULL;
    shuffle(groups, n_groups, &state);
    int held_out = held_out_count(n_groups, val_frac, min_questions);
    unsigned char *group_is_val = (unsigned char *)calloc((size_t)n_groups, 1);
    if (!group_is_val) { free(refs); free(group_of); free(groups); return -1; }
    for (int g = 0; g < held_out; g++) group_is_val[groups[g]] = 1;
    for (int i = 0; i < n; i++) is_val[i] = group_is_val[group_of[i]];
    free(refs);
    free(group_of);
    free(groups);
    free(group_is_val);
    return held_out;
}
