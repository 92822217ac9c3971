// eval/eval.h: scoring a model's answers to validation samples, shared by
// ./evaluate and ./train --eval-answers. A sample is a rendered chat (token
// ids with answer-only targets, as ./prepare writes them or raft_encode
// makes them); its prompt is everything before the answer, its reference
// the answer's text. Each answer is generated greedily on the CPU and scored
// with ROUGE (eval/rouge.h) and embedding cosine (eval/embed.h); the reference's
// answer-token loss is measured too.
#pragma once
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
} EvalSample;

// Splits a rendered sample (ids, targets, n_tokens filled in): sets n_prompt
// and the reference text. -1 when nothing is labelled.
int eval_split_sample(const Tokenizer *tok, EvalSample *s);
// Up to limit samples with an answer from a ./prepare .bin or a RAFT JSONL
// file. NULL, with err naming the file and what is wrong, when it cannot be
// read or holds no such sample.
EvalSample *eval_load_samples(const char *path, const Tokenizer *tok, int limit, int *count, char *err,
                              size_t err_size);
void eval_free_samples(EvalSample *samples, int count);

typedef struct {
    char *answer;
    double loss_sum;   // summed answer-token loss of the reference
    int n_counted;
    RougeScores rouge;
    float similarity;
    int non_finite;    // the model's output was NaN/Inf (weights that are not finite): no answer, no scores
} EvalOutcome;

// 1 when a forward pass's logits ([vocab]) and hidden-state norms ([n_layers + 1],
// as forward_cpu fills them) are usable: finite, and the final-normed output not
// zero (weights far too large overflow the hidden state, and RMSNorm then gives
// zeros: all-equal logits that look finite).
int eval_output_usable(const float *logits, const float *norms, const Config *c);

// Loss of the reference, then the greedy answer (at most max_new tokens) and its scores.
EvalOutcome eval_sample(const Model *m, InferState *state, const Embedder *embedder, const EvalSample *s,
                        int max_new);
// eval_sample over every sample, printing "name: i/count answered" as it goes.
EvalOutcome *eval_run_model(const Model *m, const Embedder *embedder, const EvalSample *samples, int count,
                            int max_new, const char *name);
void eval_free_outcomes(EvalOutcome *outcomes, int count);

// The metrics of one model over all samples.
typedef struct {
    MeanStd rouge_f1[ROUGE_KINDS];
    MeanStd similarity;
    double loss, perplexity;   // mean answer-token loss over all answer tokens, and exp of it
} EvalSummary;
EvalSummary eval_summarize(const EvalOutcome *outcomes, int count);

#ifdef __cplusplus
}
#endif
