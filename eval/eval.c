// eval/eval.c: see eval/eval.h.
#include "eval/eval.h"
#include "data/raft.h"
#include "data/tokfile.h"
#include "infer/sampler.h"
#include "formats/tensor.h"
#include "tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- the samples: prompt tokens and the reference answer ---------------------

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
    int im_end = tokenizer_find(tok, "<|im_end|>");
    if (end > s->n_prompt && s->ids[end - 1] == im_end) end--;
    size_t len;
    s->reference = tokenizer_decode(tok, s->ids + s->n_prompt, end - s->n_prompt, &len);
    return s->reference ? 0 : -1;
}

// Room for the first limit of available samples: a huge limit asks for no more than there are.
static EvalSample *alloc_samples(long available, int limit) {
    size_t n = (size_t)(available < limit ? available : limit);
    return (EvalSample *)cpu_calloc(n, sizeof(EvalSample), "the evaluation samples");
}

// Reads up to limit samples from a ./prepare .bin or a RAFT JSONL file.
EvalSample *eval_load_samples(const char *path, const Tokenizer *tok, int limit, int *count, char *err,
                              size_t err_size) {
    EvalSample *samples;
    *count = 0;
    size_t len = strlen(path);
    if (len > 4 && strcmp(path + len - 4, ".bin") == 0) {
        TokFile f;
        if (tokfile_read(&f, path, tok, err, err_size) != 0) return NULL;
        samples = alloc_samples(f.count, limit);
        for (long i = 0; i < f.count && *count < limit; i++) {
            EvalSample *s = &samples[*count];
            s->ids = f.samples[i].ids;
            s->targets = f.samples[i].targets;
            s->n_tokens = f.samples[i].n_tokens;
            f.samples[i].ids = f.samples[i].targets = NULL;
            if (eval_split_sample(tok, s) == 0) (*count)++;
        }
        tokfile_free(&f);
    } else {
        RaftData data;
        if (raft_read_jsonl(&data, path, err, err_size) != 0) return NULL;
        samples = alloc_samples(data.count, limit);
        int unrendered = 0;
        for (int i = 0; i < data.count && *count < limit && !unrendered; i++) {
            EvalSample *s = &samples[*count];
            s->n_tokens = raft_encode(tok, &data.samples[i], &s->ids, &s->targets);
            unrendered = s->n_tokens < 0;
            if (!unrendered && eval_split_sample(tok, s) == 0) (*count)++;
        }
        raft_free(&data);
        if (unrendered) {
            snprintf(err, err_size, "cannot render %s: the model's tokenizer has no chat template tokens", path);
            eval_free_samples(samples, *count);
            return NULL;
        }
    }
    if (*count == 0) {
        snprintf(err, err_size, "%s: no sample with an answer to evaluate", path);
        eval_free_samples(samples, 0);
        return NULL;
    }
    return samples;
}

void eval_free_samples(EvalSample *samples, int count) {
    for (int i = 0; i < count; i++) { free(samples[i].ids); free(samples[i].targets); free(samples[i].reference); }
    free(samples);
}

// ---- one model on one sample -----------------------------------------------------


int eval_output_usable(const float *logits, const float *norms, const Config *c) {
    return floats_all_finite(logits, (size_t)c->vocab_size) && floats_all_finite(norms, (size_t)c->n_layers + 1) &&
           norms[c->n_layers] > 0.0f;
}

// The greedy answer to the prompt, stopping at <|im_end|> / eos or max_new tokens,
// or early with *non_finite set when the output is not usable (eval_output_usable).
static char *generate_answer(const Model *m, InferState *state, const EvalSample *s, int max_new, int *non_finite) {
    const Tokenizer *tok = m->tokenizer;
    int im_end = tokenizer_find(tok, "<|im_end|>"), eos = tokenizer_eos_id(tok);
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
        if (token == im_end || token == eos) break;
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

// Korean (or any non-ASCII) references are scored per character: rouge-score's
// tokenizer would throw their letters away (see eval/rouge.h).
static RougeTokenizer rouge_tokenizer_for(const char *reference) {
    for (const unsigned char *p = (const unsigned char *)reference; *p; p++)
        if (*p >= 0x80) return ROUGE_TOKENIZE_CHARS;
    return ROUGE_TOKENIZE_DEFAULT;
}

EvalOutcome eval_sample(const Model *m, InferState *state, const Embedder *embedder, const EvalSample *s,
                               int max_new) {
    EvalOutcome o;
    memset(&o, 0, sizeof o);
    o.loss_sum = answer_loss(m, state, s, &o.n_counted);
    o.answer = generate_answer(m, state, s, max_new, &o.non_finite);
    // NaN/Inf logits: the answer and its scores would mean nothing
    if (o.non_finite || isnan(o.loss_sum)) {
        o.non_finite = 1;
        return o;
    }
    o.rouge = rouge_score(o.answer, s->reference, rouge_tokenizer_for(s->reference), 0);
    int dim = embedder_dim(embedder);
    float *a = (float *)malloc(sizeof(float) * dim), *b = (float *)malloc(sizeof(float) * dim);
    if (embed_text(embedder, o.answer, a) == 0 && embed_text(embedder, s->reference, b) == 0)
        o.similarity = embed_cosine(a, b, dim);
    free(a);
    free(b);
    return o;
}

// ---- summaries ---------------------------------------------------------------------


EvalSummary eval_summarize(const EvalOutcome *outcomes, int count) {
    EvalSummary s;
    double *values = (double *)malloc(sizeof(double) * count);
    for (int k = 0; k < ROUGE_KINDS; k++) {
        for (int i = 0; i < count; i++) values[i] = outcomes[i].rouge.kind[k].f1;
        s.rouge_f1[k] = rouge_mean_std(values, count);
    }
    for (int i = 0; i < count; i++) values[i] = outcomes[i].similarity;
    s.similarity = rouge_mean_std(values, count);
    free(values);
    double loss = 0.0;
    long counted = 0;
    for (int i = 0; i < count; i++) { loss += outcomes[i].loss_sum; counted += outcomes[i].n_counted; }
    s.loss = counted ? loss / counted : 0.0;
    s.perplexity = exp(s.loss);
    return s;
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
    EvalOutcome *outcomes = (EvalOutcome *)calloc((size_t)(count > 0 ? count : 1), sizeof(EvalOutcome));
    for (int i = 0; i < count; i++) {
        outcomes[i] = eval_sample(m, &state, embedder, &samples[i], max_new);
        printf("\r%s: %d/%d answered", name, i + 1, count);
        fflush(stdout);
    }
    printf("\n");
    infer_state_free(&state);
    return outcomes;
}

void eval_free_outcomes(EvalOutcome *outcomes, int count) {
    if (!outcomes) return;
    for (int i = 0; i < count; i++) free(outcomes[i].answer);
    free(outcomes);
}
