// eval/eval.c: see eval/eval.h.
#include "eval/eval.h"
#include "data/raft.h"
#include "data/raft_build.h"
#include "data/tokfile.h"
#include "eval/abstain.h"
#include "infer/sampler.h"
#include "formats/tensor.h"
#include "tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- the samples: prompt tokens and the reference answer ---------------------

// The prompt's text, special tokens included; malloc'd.
static char *decode_prompt(const Tokenizer *tok, const EvalSample *s, size_t *len) {
    return tokenizer_decode(tok, s->ids, s->n_prompt, len);
}

// The question: what follows the last "\nQuestion: " up to the end of the
// user's turn (user_footer: the chat family's); NULL when the prompt has none.
static char *question_of(const char *prompt, const char *user_footer) {
    const char *start = NULL;
    for (const char *at = strstr(prompt, RAFT_QUESTION_LABEL); at; at = strstr(at + 1, RAFT_QUESTION_LABEL)) start = at;
    if (!start) return NULL;
    start += strlen(RAFT_QUESTION_LABEL);
    const char *end = strstr(start, user_footer);
    return strndup(start, end ? (size_t)(end - start) : strlen(start));
}

// Splits a rendered sample: the prompt ends where the first answer token
// begins (targets[t] labels token t + 1); the reference is the answer tokens
// without the closing end-of-turn token. -1 when nothing is labelled.
int eval_split_sample(const Tokenizer *tok, EvalSample *s) {
    int first = -1, last = -1;
    for (int t = 0; t < s->n_tokens; t++) {
        if (s->targets[t] == IGNORE_TARGET) continue;
        if (first < 0) first = t;
        last = t;
    }
    if (first < 0) return -1;
    s->n_prompt = first + 1;
    int end = last + 2;   // one past the last answer token
    if (end > s->n_prompt && s->ids[end - 1] == tokenizer_end_of_turn_id(tok)) end--;
    size_t len;
    s->reference = tokenizer_decode(tok, s->ids + s->n_prompt, end - s->n_prompt, &len);
    if (!s->reference) return -1;
    char *prompt = decode_prompt(tok, s, &len);
    const ChatFamily *chat = tokenizer_chat_family(tok);
    if (prompt && chat) s->question = question_of(prompt, chat->user_footer);
    free(prompt);
    s->korean = text_has_hangul(s->question ? s->question : s->reference);
    return 0;
}

// The documents of a ./prepare sample, cut out of its prompt's user turn by
// their recorded lengths. -1 when they are not where the lengths say.
static int documents_from_prompt(const Tokenizer *tok, EvalSample *s, const TokSample *t) {
    const ChatFamily *chat = tokenizer_chat_family(tok);
    char user_turn[64] = "";   // the header of the user's turn
    if (chat) snprintf(user_turn, sizeof user_turn, "%suser%s", chat->header_start, chat->header_end);
    size_t len;
    char *prompt = decode_prompt(tok, s, &len);
    char *user = prompt && chat ? strstr(prompt, user_turn) : NULL;
    s->documents = (char **)calloc((size_t)(t->n_documents > 0 ? t->n_documents : 1), sizeof(char *));
    int status = -1;
    if (user && s->documents) {
        user += strlen(user_turn);
        status = raft_parse_documents(user, len - (size_t)(user - prompt), t->document_bytes, t->n_documents,
                                      s->documents);
    }
    if (status == 0) s->n_documents = t->n_documents;
    free(prompt);
    return status;
}

// A RAFT sample's documents, copied.
static int copy_documents(const RaftSample *r, EvalSample *s) {
    s->documents = (char **)calloc((size_t)(r->n_documents > 0 ? r->n_documents : 1), sizeof(char *));
    if (!s->documents) return -1;
    for (int d = 0; d < r->n_documents; d++) {
        s->documents[d] = strdup(r->documents[d]);
        if (!s->documents[d]) return -1;
        s->n_documents = d + 1;
    }
    return 0;
}

// Frees what a sample holds and zeroes it.
static void free_sample(EvalSample *s) {
    free(s->ids);
    free(s->targets);
    free(s->reference);
    free(s->question);
    for (int d = 0; d < s->n_documents; d++) free(s->documents[d]);
    free(s->documents);
    memset(s, 0, sizeof *s);
}

// Room for the first limit of available samples: a huge limit asks for no more than there are.
static EvalSample *alloc_samples(long available, int limit) {
    size_t n = (size_t)(available < limit ? available : limit);
    return (EvalSample *)cpu_calloc(n, sizeof(EvalSample), "the evaluation samples");
}

// Up to limit samples of a ./prepare .bin file, with their oracle and documents.
static EvalSample *load_tokfile(const char *path, const Tokenizer *tok, int limit, int *count, char *err,
                                size_t err_size) {
    TokFile f;
    int finished = tokfile_finish_set(path, err, err_size);
    if (finished < 0) return NULL;
    if (finished > 0) printf("data: %s: renamed %d file(s) a killed ./prepare left in their temps\n", path, finished);
    if (tokfile_read(&f, path, tok, err, err_size) != 0) return NULL;
    EvalSample *samples = alloc_samples(f.count, limit);
    int broken = 0;
    for (long i = 0; i < f.count && *count < limit && !broken; i++) {
        EvalSample *s = &samples[*count];
        s->ids = f.samples[i].ids;
        s->targets = f.samples[i].targets;
        s->n_tokens = f.samples[i].n_tokens;
        s->oracle = f.samples[i].oracle;
        f.samples[i].ids = f.samples[i].targets = NULL;
        if (eval_split_sample(tok, s) != 0) { free_sample(s); continue; }
        (*count)++;
        broken = documents_from_prompt(tok, s, &f.samples[i]) != 0;
        if (broken)
            snprintf(err, err_size, "%s: sample %ld: its documents are not where the file's lengths put them in its "
                     "prompt; run ./prepare again", path, i + 1);
    }
    tokfile_free(&f);
    if (broken) { eval_free_samples(samples, *count); return NULL; }
    return samples;
}

// Up to limit samples of a RAFT JSONL file, rendered whole.
static EvalSample *load_jsonl(const char *path, const Tokenizer *tok, int limit, int *count, char *err,
                              size_t err_size) {
    RaftData data;
    if (raft_read_jsonl(&data, path, err, err_size) != 0) return NULL;
    EvalSample *samples = alloc_samples(data.count, limit);
    int failed = 0;
    for (int i = 0; i < data.count && *count < limit && !failed; i++) {
        EvalSample *s = &samples[*count];
        s->n_tokens = raft_encode(tok, &data.samples[i], &s->ids, &s->targets);
        failed = s->n_tokens < 0;
        if (failed) snprintf(err, err_size, "cannot render %s: the model's tokenizer has no chat template tokens", path);
        if (failed || eval_split_sample(tok, s) != 0) { free_sample(s); continue; }
        s->oracle = data.samples[i].oracle;
        (*count)++;
        failed = copy_documents(&data.samples[i], s) != 0;
        if (failed) snprintf(err, err_size, "%s: out of memory", path);
    }
    raft_free(&data);
    if (failed) { eval_free_samples(samples, *count); return NULL; }
    return samples;
}

EvalSample *eval_load_samples(const char *path, const Tokenizer *tok, int limit, int *count, char *err,
                              size_t err_size) {
    *count = 0;
    size_t len = strlen(path);
    int is_bin = len > 4 && strcmp(path + len - 4, ".bin") == 0;
    EvalSample *samples = is_bin ? load_tokfile(path, tok, limit, count, err, err_size)
                                 : load_jsonl(path, tok, limit, count, err, err_size);
    if (samples && *count == 0) {
        snprintf(err, err_size, "%s: no sample with an answer to evaluate", path);
        eval_free_samples(samples, 0);
        return NULL;
    }
    return samples;
}

void eval_free_samples(EvalSample *samples, int count) {
    for (int i = 0; i < count; i++) free_sample(&samples[i]);
    free(samples);
}

// ---- one model on one sample -----------------------------------------------------


int eval_output_usable(const float *logits, const float *norms, const Config *c) {
    return floats_all_finite(logits, (size_t)c->vocab_size) && floats_all_finite(norms, (size_t)c->n_layers + 1) &&
           norms[c->n_layers] > 0.0f;
}

// The greedy answer to the prompt, stopping at the end of the turn / eos or max_new tokens,
// or early with *non_finite set when the output is not usable (eval_output_usable).
static char *generate_answer(const Model *m, InferState *state, const EvalSample *s, int max_new, int *non_finite) {
    const Tokenizer *tok = m->tokenizer;
    int end_of_turn = tokenizer_end_of_turn_id(tok), eos = tokenizer_eos_id(tok);
    int *answer = (int *)malloc(sizeof(int) * (size_t)max_new);
    const float *logits = NULL;
    float *norms = (float *)cpu_malloc(sizeof(float) * ((size_t)m->config.n_layers + 1), "the hidden-state norms");
    for (int pos = 0; pos < s->n_prompt; pos += state->max_chunk) {
        int n = s->n_prompt - pos < state->max_chunk ? s->n_prompt - pos : state->max_chunk;
        logits = forward_cpu(m, state, s->ids + pos, n, pos, 0, norms);
    }
    int n_answer = 0;
    *non_finite = 0;
    for (int pos = s->n_prompt; n_answer < max_new && pos < state->max_seq; pos++) {
        *non_finite = !eval_output_usable(logits, norms, &m->config);
        if (*non_finite) break;
        int token = sample_argmax(logits, m->config.vocab_size);
        if (token == end_of_turn || token == eos) break;
        answer[n_answer++] = token;
        if (pos + 1 >= state->max_seq) break;
        logits = forward_cpu(m, state, &token, 1, pos, 0, norms);
    }
    size_t len;
    char *text = tokenizer_decode(tok, answer, n_answer, &len);
    free(answer);
    free(norms);
    return text;
}

// Summed cross-entropy of the reference answer tokens (teacher forcing); NaN
// when the logits of one hold NaN or Inf.
static double answer_loss(const Model *m, InferState *state, const EvalSample *s, int *n_counted) {
    int vocab = m->config.vocab_size;
    double total = 0.0;
    *n_counted = 0;
    for (int pos = 0; pos < s->n_tokens; pos += state->max_chunk) {
        int n = s->n_tokens - pos < state->max_chunk ? s->n_tokens - pos : state->max_chunk;
        const float *logits = forward_cpu(m, state, s->ids + pos, n, pos, 1, NULL);
        for (int t = 0; t < n; t++) {
            int target = s->targets[pos + t];
            if (target == IGNORE_TARGET) continue;
            const float *row = logits + (size_t)t * vocab;
            if (!floats_all_finite(row, (size_t)vocab)) return NAN;
            // -log softmax(row)[target] = log sum exp(row - max) + max - row[target]
            float max = row[0];
            for (int v = 1; v < vocab; v++) max = row[v] > max ? row[v] : max;
            double sum = 0.0;
            for (int v = 0; v < vocab; v++) sum += exp((double)row[v] - max);
            total += log(sum) + max - row[target];
            (*n_counted)++;
        }
    }
    return total;
}

// Korean is scored per character: rouge-score's tokenizer would throw its
// letters away, and words carry particles (see eval/rouge.h).
static RougeTokenizer rouge_tokenizer_for(const EvalSample *s) {
    return s->korean ? ROUGE_TOKENIZE_CHARS : ROUGE_TOKENIZE_DEFAULT;
}

// Cosine of the answer's and the reference's embeddings; NaN for Korean, which MiniLM does not know.
static float answer_similarity(const Embedder *embedder, const EvalSample *s, const char *answer) {
    if (s->korean) return NAN;
    int dim = embedder_dim(embedder);
    float *a = (float *)malloc(sizeof(float) * dim), *b = (float *)malloc(sizeof(float) * dim);
    float similarity = 0.0f;
    if (a && b && embed_text(embedder, answer, a) == 0 && embed_text(embedder, s->reference, b) == 0)
        similarity = embed_cosine(a, b, dim);
    free(a);
    free(b);
    return similarity;
}

// Groundedness: the answer's ROUGE-L precision (LCS / answer tokens) against
// the oracle document, and the highest against a distractor (0 when there is
// none); grounded when the first is higher. -1 when unknown.
static void score_grounding(const EvalSample *s, EvalOutcome *o) {
    o->grounded = -1;
    o->oracle_overlap = o->distractor_overlap = NAN;
    if (!s->documents || s->oracle < 0 || s->oracle >= s->n_documents) return;
    o->distractor_overlap = 0.0;
    for (int d = 0; d < s->n_documents; d++) {
        double precision = rouge_score(o->answer, s->documents[d], rouge_tokenizer_for(s), 0).kind[ROUGE_L].precision;
        if (d == s->oracle) o->oracle_overlap = precision;
        else if (precision > o->distractor_overlap) o->distractor_overlap = precision;
    }
    o->grounded = o->oracle_overlap > o->distractor_overlap;
}

EvalOutcome eval_sample(const Model *m, InferState *state, const Embedder *embedder, const EvalSample *s,
                        int max_new, const char *const *abstention_texts, int n_texts) {
    EvalOutcome o;
    memset(&o, 0, sizeof o);
    o.loss_sum = answer_loss(m, state, s, &o.n_counted);
    o.answer = generate_answer(m, state, s, max_new, &o.non_finite);
    // NaN/Inf logits: the answer and its scores would mean nothing
    if (o.non_finite || isnan(o.loss_sum)) {
        o.non_finite = 1;
        return o;
    }
    o.abstained = eval_abstains(o.answer, abstention_texts, n_texts);
    o.rouge = rouge_score(o.answer, s->reference, rouge_tokenizer_for(s), 0);
    o.similarity = answer_similarity(embedder, s, o.answer);
    score_grounding(s, &o);
    return o;
}

// ---- summaries ---------------------------------------------------------------------

EvalSummary eval_summarize(const EvalOutcome *outcomes, int count) {
    EvalSummary s;
    double *values = (double *)malloc(sizeof(double) * (count > 0 ? count : 1));
    for (int k = 0; k < ROUGE_KINDS; k++) {
        for (int i = 0; i < count; i++) values[i] = outcomes[i].rouge.kind[k].f1;
        s.rouge_f1[k] = rouge_mean_std(values, count);
    }
    int n_similar = 0;
    for (int i = 0; i < count; i++)
        if (!isnan(outcomes[i].similarity)) values[n_similar++] = outcomes[i].similarity;
    s.similarity = rouge_mean_std(values, n_similar);
    free(values);
    double loss = 0.0;
    long counted = 0;
    for (int i = 0; i < count; i++) { loss += outcomes[i].loss_sum; counted += outcomes[i].n_counted; }
    s.loss = counted ? loss / counted : 0.0;
    s.perplexity = exp(s.loss);
    return s;
}

const EvalMetricInfo EVAL_METRIC_INFO[EVAL_METRICS] = {
    {"ROUGE-1 F1", "rouge1_f1", "with the oracle"},
    {"ROUGE-2 F1", "rouge2_f1", "with the oracle"},
    {"ROUGE-L F1", "rougeL_f1", "with the oracle"},
    {"embedding cosine", "embedding_cosine", "with the oracle, English"},
    {"grounded", "grounded", "with the oracle"},
    {"false abstention", "false_abstention", "with the oracle"},
    {"abstention", "abstention", "without the oracle"},
    {"answer loss", "answer_loss", "all"},
};
const char *const EVAL_SUBSET_NAMES[EVAL_SUBSETS] = {"all", "English", "Korean"};

// 1 when metric applies to sample s (with its subset: all, or its language).
static int metric_applies(EvalMetric metric, EvalSubset subset, const EvalSample *s) {
    if ((subset == EVAL_ENGLISH && s->korean) || (subset == EVAL_KOREAN && !s->korean)) return 0;
    int has_oracle = s->oracle >= 0;
    switch (metric) {
    case EVAL_COSINE: return has_oracle && !s->korean;
    case EVAL_GROUNDED: return has_oracle && s->documents && s->oracle < s->n_documents;
    case EVAL_ABSTENTION: return !has_oracle;
    case EVAL_LOSS: return 1;
    default: return has_oracle;   // ROUGE, false abstention
    }
}

// The sample's value as a ratio's numerator and denominator (den 1 but for the loss: its token count).
static void metric_value(EvalMetric metric, const EvalOutcome *o, double *num, double *den) {
    *den = 1.0;
    switch (metric) {
    case EVAL_ROUGE1: *num = o->rouge.kind[ROUGE_1].f1; break;
    case EVAL_ROUGE2: *num = o->rouge.kind[ROUGE_2].f1; break;
    case EVAL_ROUGEL: *num = o->rouge.kind[ROUGE_L].f1; break;
    case EVAL_COSINE: *num = o->similarity; break;
    case EVAL_GROUNDED: *num = o->grounded; break;
    case EVAL_LOSS: *num = o->loss_sum; *den = o->n_counted; break;
    default: *num = o->abstained; break;   // abstention, false abstention
    }
}

// One metric on one subset: the samples it applies to, each arm's interval and the paired change.
static EvalCell compare_cell(EvalMetric metric, EvalSubset subset, const EvalSample *samples,
                             const EvalOutcome *const arms[2], int count, int resamples, uint64_t seed) {
    EvalCell cell = {0, {{NAN, NAN, NAN}, {NAN, NAN, NAN}}, {NAN, NAN, NAN}};
    size_t size = sizeof(double) * (size_t)(count > 0 ? count : 1);
    double *num[2] = {(double *)malloc(size), (double *)malloc(size)};
    double *den[2] = {(double *)malloc(size), (double *)malloc(size)};
    for (int i = 0; i < count && num[0] && num[1] && den[0] && den[1]; i++) {
        if (!metric_applies(metric, subset, &samples[i])) continue;
        for (int a = 0; a < 2; a++)
            if (arms[a]) metric_value(metric, &arms[a][i], &num[a][cell.n], &den[a][cell.n]);
        cell.n++;
    }
    RatioItems items[2] = {{num[0], den[0]}, {num[1], den[1]}};
    for (int a = 0; a < 2 && cell.n > 0; a++)
        if (arms[a]) cell.arm[a] = bootstrap_ratio(items[a], cell.n, resamples, seed);
    if (arms[1] && cell.n > 0) cell.change = bootstrap_change(items[0], items[1], cell.n, resamples, seed);
    for (int a = 0; a < 2; a++) { free(num[a]); free(den[a]); }
    return cell;
}

EvalComparison eval_compare(const EvalSample *samples, const EvalOutcome *base, const EvalOutcome *tuned,
                            int count, int resamples, uint64_t seed) {
    EvalComparison c;
    const EvalOutcome *const arms[2] = {base, tuned};
    for (int m = 0; m < EVAL_METRICS; m++)
        for (int g = 0; g < EVAL_SUBSETS; g++)
            c.cell[m][g] = compare_cell((EvalMetric)m, (EvalSubset)g, samples, arms, count, resamples, seed);
    c.resamples = resamples;
    c.seed = seed;
    return c;
}

// The references of the no-oracle samples: the data's own abstention texts (pointers into samples).
static const char **abstention_texts(const EvalSample *samples, int count, int *n) {
    const char **texts = (const char **)malloc(sizeof(char *) * (size_t)(count > 0 ? count : 1));
    *n = 0;
    for (int i = 0; i < count && texts; i++)
        if (samples[i].oracle < 0) texts[(*n)++] = samples[i].reference;
    return texts;
}

// Runs one model over every sample (the state is sized for the longest).
EvalOutcome *eval_run_model(const Model *m, const Embedder *embedder, const EvalSample *samples, int count,
                            int max_new, const char *name) {
    int longest = 0;
    for (int i = 0; i < count; i++) if (samples[i].n_tokens > longest) longest = samples[i].n_tokens;
    InferState state;
    if (infer_state_init(&state, &m->config, longest + max_new + 1, 256) != 0) {
        fprintf(stderr, "eval: out of memory for the inference state\n");
        exit(1);
    }
    int n_texts;
    const char **texts = abstention_texts(samples, count, &n_texts);
    EvalOutcome *outcomes = (EvalOutcome *)calloc((size_t)(count > 0 ? count : 1), sizeof(EvalOutcome));
    for (int i = 0; i < count; i++) {
        outcomes[i] = eval_sample(m, &state, embedder, &samples[i], max_new, texts, n_texts);
        printf("\r%s: %d/%d answered", name, i + 1, count);
        fflush(stdout);
    }
    printf("\n");
    free(texts);
    infer_state_free(&state);
    return outcomes;
}

void eval_free_outcomes(EvalOutcome *outcomes, int count) {
    if (!outcomes) return;
    for (int i = 0; i < count; i++) free(outcomes[i].answer);
    free(outcomes);
}
