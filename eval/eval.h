// eval/eval.h: scoring a model's answers to validation samples, shared by
// ./evaluate and ./train --eval-answers. A sample is a rendered chat (token
// ids with answer-only targets, as ./prepare writes them or raft_encode
// makes them); its prompt is everything before the answer, its reference
// the answer's text. Each answer is generated greedily on the CPU and scored:
//   abstained   it says the documents do not hold the answer (eval/abstain.h)
//   ROUGE       1, 2 and L F1 against the reference (eval/rouge.h): rouge-score's
//               tokenizer for English, per character for Korean
//   cosine      of the answer's and the reference's all-MiniLM-L6-v2 embeddings
//               (eval/embed.h); English only, as MiniLM is (NaN for Korean)
//   grounded    the answer's ROUGE-L precision against its oracle document is
//               higher than against every distractor: it draws on the right
//               document. Precision is LCS / answer tokens, how much of the
//               answer, in order, a document accounts for; a longer document
//               can account for more, but ./prepare's --max-seq fitting cuts a
//               sample's documents to the same byte budget.
//   loss        the reference's answer-token cross-entropy (teacher forcing)
// A sample is Korean when its question holds Hangul (as ./prepare picks the
// Korean no-oracle answer), else English; it is a no-oracle sample when none
// of its documents holds the answer. (./train --eval-answers fills in only
// the tokens: its samples count as having the oracle, documents unknown.)
#pragma once
#include "eval/bootstrap.h"
#include "eval/embed.h"
#include "infer/forward.h"
#include "model.h"
#include "eval/rouge.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int *ids, *targets;   // the whole rendered sample and its shifted answer-only targets
    int n_tokens;
    int n_prompt;         // ids[0..n_prompt) is everything up to the answer
    char *reference;      // the reference answer's text
    char *question;       // the question's text, from the prompt (NULL when it has no "Question: ")
    int korean;           // the question (or, without one, the reference) holds Hangul
    int oracle;           // the document holding the answer, -1 when none does
    char **documents;     // [n_documents] as the prompt shows them; NULL when not known
    int n_documents;
} EvalSample;

// Splits a rendered sample (ids, targets, n_tokens filled in): sets n_prompt,
// the reference text, the question and the language. -1 when nothing is
// labelled. The oracle and the documents are the loader's to fill in.
int eval_split_sample(const Tokenizer *tok, EvalSample *s);
// Up to limit samples with an answer from a ./prepare .bin or a RAFT JSONL
// file, with their oracle and documents. NULL, with err naming the file and
// what is wrong, when it cannot be read or holds no such sample.
EvalSample *eval_load_samples(const char *path, const Tokenizer *tok, int limit, int *count, char *err,
                              size_t err_size);
void eval_free_samples(EvalSample *samples, int count);

typedef struct {
    char *answer;
    double loss_sum;   // summed answer-token loss of the reference
    int n_counted;
    RougeScores rouge;
    float similarity;  // NaN for a Korean sample
    int abstained;
    int grounded;      // 1 or 0; -1 for a no-oracle sample or unknown documents
    double oracle_overlap, distractor_overlap;   // ROUGE-L precision against the oracle, the best distractor (NaN: no such)
    int non_finite;    // the model's output was NaN/Inf (weights that are not finite): no answer, no scores
} EvalOutcome;

// 1 when a forward pass's logits ([vocab]) and hidden-state norms ([n_layers + 1],
// as forward_cpu fills them) are usable: finite, and the final-normed output not
// zero (weights far too large overflow the hidden state, and RMSNorm then gives
// zeros: all-equal logits that look finite).
int eval_output_usable(const float *logits, const float *norms, const Config *c);

// Loss of the reference, then the greedy answer (at most max_new tokens) and
// its scores; abstention_texts (n_texts) are passed on to eval_abstains.
EvalOutcome eval_sample(const Model *m, InferState *state, const Embedder *embedder, const EvalSample *s,
                        int max_new, const char *const *abstention_texts, int n_texts);
// eval_sample over every sample, printing "name: i/count answered" as it goes.
// The abstention texts are the references of the no-oracle samples.
EvalOutcome *eval_run_model(const Model *m, const Embedder *embedder, const EvalSample *samples, int count,
                            int max_new, const char *name);
void eval_free_outcomes(EvalOutcome *outcomes, int count);

// The metrics of one model over all samples (./train --eval-answers).
typedef struct {
    MeanStd rouge_f1[ROUGE_KINDS];
    MeanStd similarity;        // over the samples that have one (English)
    double loss, perplexity;   // mean answer-token loss over all answer tokens, and exp of it
} EvalSummary;
EvalSummary eval_summarize(const EvalOutcome *outcomes, int count);

// ---- ./evaluate's summary: each metric over the samples it applies to, per
// language, with bootstrap intervals (eval/bootstrap.h) ----

typedef enum {
    EVAL_ROUGE1, EVAL_ROUGE2, EVAL_ROUGEL,   // F1, samples with the oracle
    EVAL_COSINE,                             // samples with the oracle, English
    EVAL_GROUNDED,                           // share grounded, samples with the oracle and known documents
    EVAL_FALSE_ABSTENTION,                   // share abstained, samples with the oracle
    EVAL_ABSTENTION,                         // share abstained, samples without the oracle
    EVAL_LOSS,                               // answer loss pooled over answer tokens, all samples
    EVAL_METRICS
} EvalMetric;

typedef enum { EVAL_ALL, EVAL_ENGLISH, EVAL_KOREAN, EVAL_SUBSETS } EvalSubset;

typedef struct {
    const char *name;         // "ROUGE-1 F1"
    const char *key;          // "rouge1_f1", for JSON
    const char *population;   // "with the oracle"
} EvalMetricInfo;
extern const EvalMetricInfo EVAL_METRIC_INFO[EVAL_METRICS];
extern const char *const EVAL_SUBSET_NAMES[EVAL_SUBSETS];   // "all", "English", "Korean"

typedef struct {
    int n;               // samples the metric applies to
    Interval arm[2];     // base, fine-tuned (NaN when there is no fine-tuned arm)
    Interval change;     // fine-tuned minus base, paired
} EvalCell;

typedef struct {
    EvalCell cell[EVAL_METRICS][EVAL_SUBSETS];
    int resamples;
    uint64_t seed;
} EvalComparison;

// Every metric on every subset, for base and (when not NULL) tuned.
EvalComparison eval_compare(const EvalSample *samples, const EvalOutcome *base, const EvalOutcome *tuned,
                            int count, int resamples, uint64_t seed);

#ifdef __cplusplus
}
#endif
