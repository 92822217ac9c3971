// data/prepare.c: ./prepare, the RAFT data builder. Reads samples (ready
// ones, or a document collection with questions, or the Debian FAQ), checks
// them, builds the RAFT samples, renders them through the model's chat
// template with answer-only targets, and writes OUT/train.bin, OUT/val.bin
// (data/tokfile.h) and OUT/report.json, printing the report.
//   ./prepare --debian-faq data/faq/debian-faq --out data/faq --max-seq 512
//   ./prepare --docs docs.jsonl --qa qa.jsonl --out out/my-data
//   ./prepare --input samples.jsonl --out out/my-data
#include "formats/cli.h"
#include "data/collection.h"
#include "data/faq.h"
#include "data/packing.h"
#include "data/raft.h"
#include "data/raft_build.h"
#include "data/tokfile.h"
#include "formats/gguf.h"
#include "model.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    const char *input, *docs, *qa, *faq_dir, *faq_lang, *out_dir, *model_path, *overlong;
    const char *template_name;   // --template: the chat template family (NULL: the model's)
    const char *no_oracle_answer, *no_oracle_answer_ko;
    int distractors, max_seq, seed, strict, faq_answer_tokens, val_min;
    double no_oracle, val_frac;
} Options;

static const Options DEFAULTS = {
    NULL, NULL, NULL, NULL, "both", "out/data", DEFAULT_MODEL, "truncate", NULL,
    RAFT_NO_ORACLE_ANSWER_EN, RAFT_NO_ORACLE_ANSWER_KO,
    3, 2048, 1234, 0, 48, 30,
    0.2, 0.1,
};

static void usage(FILE *out) {
    const Options *d = &DEFAULTS;
    fprintf(out,
            "usage: ./prepare SOURCE... [options]\n"
            "Builds RAFT training data: checks the input, renders each sample through the model's chat template\n"
            "(labels on the answer only) and writes OUT/train.bin, OUT/val.bin and OUT/report.json.\n"
            "Sources (any of them, together):\n"
            "  --input PATH             ready samples, JSONL: {\"question\", \"answer\", \"documents\": [...], \"oracle\": i or null}\n"
            "                           or {\"question\", \"answer\", \"context\"}\n"
            "  --docs PATH --qa PATH    documents {\"id\", \"text\", \"title\" (optional)} and questions\n"
            "                           {\"question\", \"answer\", \"doc\": id}, JSONL; RAFT samples are built from them\n"
            "  --debian-faq DIR         the Debian FAQ unpacked into DIR (dev/fetch/fetch_faq.sh), English and Korean\n"
            "  --faq-lang L             which of the FAQ to read: en, ko or both (default %s); the sections the\n"
            "                           Korean FAQ leaves untranslated are English and come with ko\n"
            "Options:\n"
            "  --out DIR                where the files go (default %s)\n"
            "  --model PATH             the model whose tokenizer renders the samples (default %s)\n"
            "  --template NAME          render with this chat template instead of the model's: chatml, llama3,\n"
            "                           llama3.1 or exaone (default: the one the model's matches)\n"
            "  --distractors K          distractor documents per sample (default %d; not with --input)\n"
            "  --no-oracle P            share of samples with distractors only (default %g; not with --input)\n"
            "  --no-oracle-answer TEXT  their answer (default \"%s\")\n"
            "  --no-oracle-answer-ko T  their answer when the question is Korean (default \"%s\")\n"
            "  --max-seq N              tokens per sample at most (default %d)\n"
            "  --overlong MODE          truncate: cut the documents (never the answer) to fit; drop: skip (default %s)\n"
            "  --val-frac F             share of the questions held out for validation (default %g); a question's\n"
            "                           samples all go to one side, so no held-out question is trained on\n"
            "  --val-min N              hold out at least N questions when that is at most a quarter of them\n"
            "                           (default %d; with --val-frac 0 none are)\n"
            "  --seed S                 seed for distractors, order and split (default %d)\n"
            "  --strict                 stop at the first bad line instead of skipping and counting it\n"
            "  --faq-answer-tokens N    FAQ answers: the section's first sentences, at most N tokens (default %d)\n"
            "  -h, --help               this help\n",
            d->faq_lang, d->out_dir, d->model_path, d->distractors, d->no_oracle, d->no_oracle_answer, d->no_oracle_answer_ko,
            d->max_seq, d->overlong, d->val_frac, d->val_min, d->seed, d->faq_answer_tokens);
}

static void bad_usage(const char *message, const char *detail) {
    fprintf(stderr, "prepare: %s%s\n", message, detail);
    usage(stderr);
    exit(2);
}

// The options that take a value (to tell an unknown option from a missing value).
static const char *const VALUE_OPTIONS[] = {
    "--input", "--docs", "--qa", "--debian-faq", "--faq-lang", "--out", "--model", "--overlong", "--no-oracle-answer",
    "--no-oracle-answer-ko", "--distractors", "--max-seq", "--seed", "--faq-answer-tokens", "--no-oracle",
    "--val-frac", "--val-min", "--template", NULL};

static Options parse_args(int argc, char **argv) {
    Options o = DEFAULTS;
    const char *building = NULL;   // an option given that builds samples from documents (--distractors, --no-oracle)
    char err[256];
    if (cli_check_options(argc, argv, VALUE_OPTIONS, NULL, NULL, err, sizeof err) != 0) bad_usage(err, "");
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) { usage(stdout); exit(0); }
        if (strcmp(f, "--strict") == 0) { o.strict = 1; continue; }
        if (strncmp(f, "--", 2) != 0) bad_usage("unexpected argument ", f);
        const char *v = cli_option_value(argc, argv, &i, VALUE_OPTIONS, err, sizeof err);
        if (!v) bad_usage(err, "");
        v = cli_text("prepare", f, v);
        if (strcmp(f, "--input") == 0) o.input = v;
        else if (strcmp(f, "--docs") == 0) o.docs = v;
        else if (strcmp(f, "--qa") == 0) o.qa = v;
        else if (strcmp(f, "--debian-faq") == 0) o.faq_dir = v;
        else if (strcmp(f, "--faq-lang") == 0) o.faq_lang = v;
        else if (strcmp(f, "--out") == 0) o.out_dir = v;
        else if (strcmp(f, "--model") == 0) o.model_path = v;
        else if (strcmp(f, "--template") == 0) o.template_name = v;
        else if (strcmp(f, "--overlong") == 0) o.overlong = v;
        else if (strcmp(f, "--no-oracle-answer") == 0) o.no_oracle_answer = v;
        else if (strcmp(f, "--no-oracle-answer-ko") == 0) o.no_oracle_answer_ko = v;
        else if (strcmp(f, "--distractors") == 0) { o.distractors = cli_int("prepare", f, v); building = f; }
        else if (strcmp(f, "--max-seq") == 0) o.max_seq = cli_int("prepare", f, v);
        else if (strcmp(f, "--seed") == 0) o.seed = cli_int("prepare", f, v);
        else if (strcmp(f, "--faq-answer-tokens") == 0) o.faq_answer_tokens = cli_int("prepare", f, v);
        else if (strcmp(f, "--no-oracle") == 0) { o.no_oracle = cli_number("prepare", f, v); building = f; }
        else if (strcmp(f, "--val-frac") == 0) o.val_frac = cli_number("prepare", f, v);
        else if (strcmp(f, "--val-min") == 0) o.val_min = cli_int("prepare", f, v);
        else bad_usage("unknown option ", f);
    }
    if (!o.input && !o.docs && !o.qa && !o.faq_dir) bad_usage("give a source: --input, --docs with --qa, or --debian-faq", "");
    if (!o.docs != !o.qa) bad_usage("--docs and --qa go together", "");
    if (o.input && building)
        bad_usage("--input's samples are used as they are (their documents, oracle and answer); it takes no ", building);
    if (o.distractors < 0) bad_usage("--distractors must be at least 0", "");
    if (o.max_seq < 16) bad_usage("--max-seq must be at least 16", "");
    if (o.faq_answer_tokens < 16) bad_usage("--faq-answer-tokens must be at least 16", "");
    if (o.no_oracle < 0 || o.no_oracle > 1) bad_usage("--no-oracle must be in [0, 1]", "");
    if (o.val_frac < 0 || o.val_frac >= 1) bad_usage("--val-frac must be in [0, 1)", "");
    if (o.val_min < 0) bad_usage("--val-min must be at least 0", "");
    if (strcmp(o.faq_lang, "en") != 0 && strcmp(o.faq_lang, "ko") != 0 && strcmp(o.faq_lang, "both") != 0)
        bad_usage("--faq-lang expects en, ko or both, got ", o.faq_lang);
    if (strcmp(o.faq_lang, "both") != 0 && !o.faq_dir) bad_usage("--faq-lang goes with --debian-faq", "");
    if (strcmp(o.overlong, "truncate") != 0 && strcmp(o.overlong, "drop") != 0)
        bad_usage("--overlong expects truncate or drop, got ", o.overlong);
    return o;
}

// The tokenizer of a GGUF file or an HF model directory (its tokenizer.json).
static Tokenizer *load_tokenizer(const char *path, char *err, size_t err_size) {
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, err_size, "%s: no such file or directory (a .gguf file or an HF model directory)", path);
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) {
        char json_path[4200];
        snprintf(json_path, sizeof json_path, "%s/tokenizer.json", path);
        return tokenizer_from_json(json_path, err, err_size);
    }
    GGUFFile f;
    if (gguf_open(&f, path, err, err_size) != 0) return NULL;
    Tokenizer *t = tokenizer_from_gguf(&f, err, err_size);
    gguf_close(&f);
    return t;
}

// ---- reading the sources --------------------------------------------------------

static int build_from(const Collection *c, const Options *o, RaftData *samples) {
    RaftBuildOptions build = {o->distractors, o->no_oracle, (uint64_t)o->seed, o->no_oracle_answer,
                              o->no_oracle_answer_ko};
    if (o->distractors > c->n_documents - 1)
        printf("note: --distractors %d, but a sample can have only the %d other documents of its collection\n",
               o->distractors, c->n_documents - 1);
    // raft_build: a sample without its oracle shows the distractors alone, so none without any
    if (o->no_oracle > 0 && (o->distractors == 0 || c->n_documents < 2))
        printf("note: --no-oracle %g, but with no distractor (%s) a sample without its oracle would show no document: "
               "every sample keeps its oracle\n", o->no_oracle,
               o->distractors == 0 ? "--distractors 0" : "a collection of one document");
    if (raft_build(c, &build, samples) != 0) {
        fprintf(stderr, "prepare: out of memory building samples\n");
        return -1;
    }
    return 0;
}

// Reads every source into samples. Returns -1 (message printed) on a fatal problem.
static int read_sources(const Options *o, const Tokenizer *t, Report *r, RaftData *samples) {
    char err[8192];
    if (o->input && raft_read_checked(samples, r, o->input, err, sizeof err) != 0) {
        fprintf(stderr, "prepare: %s\n", err);
        return -1;
    }
    if (o->docs) {
        Collection c = {0};
        int status = collection_read(&c, r, o->docs, o->qa, err, sizeof err);
        if (status != 0) fprintf(stderr, "prepare: %s\n", err);
        else status = build_from(&c, o, samples);
        collection_free(&c);
        if (status != 0) return -1;
    }
    // the FAQ in each language is its own collection: distractors come from the same language
    const char *languages[2] = {"en", "ko"};
    for (int i = 0; i < 2 && o->faq_dir; i++) {
        if (strcmp(o->faq_lang, "both") != 0 && strcmp(o->faq_lang, languages[i]) != 0) continue;
        Collection c = {0};
        int status = faq_read(&c, r, o->faq_dir, languages[i], t, o->faq_answer_tokens, err, sizeof err);
        if (status != 0) fprintf(stderr, "prepare: %s\n", err);
        else status = build_from(&c, o, samples);
        collection_free(&c);
        if (status != 0) return -1;
    }
    return 0;
}

// ---- rendering, splitting, writing ----------------------------------------------

typedef struct {
    TokSample *samples;
    long count;
} TokSet;

static int add_to_set(TokSet *set, const TokSample *s) {
    TokSample *bigger = (TokSample *)realloc(set->samples, sizeof(TokSample) * (size_t)(set->count + 1));
    if (!bigger) return -1;
    set->samples = bigger;
    set->samples[set->count++] = *s;
    return 0;
}

static void free_set(TokSet *set) {
    for (long i = 0; i < set->count; i++) {
        free(set->samples[i].ids);
        free(set->samples[i].targets);
        free(set->samples[i].document_bytes);
    }
    free(set->samples);
}

static long count_labelled(const TokSample *s) {
    long n = 0;
    for (int t = 0; t < s->n_tokens; t++) n += s->targets[t] != IGNORE_TARGET;
    return n;
}

// The number of tokens text encodes to; -1 when memory runs out.
static int count_tokens(const Tokenizer *t, const char *text) {
    int *ids = NULL;
    int n = tokenizer_encode(t, text, strlen(text), 0, &ids);
    free(ids);
    return n;
}

// The sample's documents as rendered with the byte budget doc_bytes (for ./evaluate). -1: out of memory.
static int record_documents(const RaftSample *sample, size_t doc_bytes, TokSample *s) {
    s->n_documents = sample->n_documents;
    s->document_bytes = (int *)malloc(sizeof(int) * (size_t)(sample->n_documents > 0 ? sample->n_documents : 1));
    if (!s->document_bytes) return -1;
    for (int d = 0; d < sample->n_documents; d++)
        s->document_bytes[d] = (int)raft_kept_bytes(sample->documents[d], doc_bytes);
    return 0;
}

// The validation set's make-up, for the report: Korean (Hangul in the question, as raft_build decides), no oracle.
static void count_val_sample(const RaftSample *sample, Report *r) {
    r->val_korean += text_has_hangul(sample->question);
    r->val_no_oracle += sample->oracle < 0;
}

// Renders every sample (fitting or dropping the long ones), sorts them into
// train and val, and fills the report's counts and length statistics.
static int render_samples(const Options *o, const Tokenizer *t, const RaftData *samples, const unsigned char *is_val,
                          Report *r, TokSet *train, TokSet *val) {
    int *rendered = (int *)malloc(sizeof(int) * (size_t)(samples->count + 1));
    int *written = (int *)malloc(sizeof(int) * (size_t)(samples->count + 1));
    if (!rendered || !written) { free(rendered); free(written); return -1; }
    int truncate = strcmp(o->overlong, "truncate") == 0;
    int status = 0;
    for (int i = 0; i < samples->count && status == 0; i++) {
        const RaftSample *sample = &samples->samples[i];
        TokSample s = {NULL, NULL, 0, sample->oracle, 0, NULL};
        char where[128];
        snprintf(where, sizeof where, "sample %d (question \"%.60s\")", i + 1, sample->question);
        int answer_tokens = count_tokens(t, sample->answer);
        if (answer_tokens < 0) { status = -1; break; }
        if (answer_tokens == 0) {
            report_drop(r, DROP_NO_ANSWER_TOKENS, where, "the answer encodes to no tokens (characters the "
                                                         "vocabulary lacks): nothing to learn");
            continue;
        }
        int full = 0, cut = 0;
        size_t doc_bytes = 0;
        s.n_tokens = raft_encode_fit(t, sample, truncate ? o->max_seq : INT_MAX, &s.ids, &s.targets, &full, &cut,
                                     &doc_bytes);
        if (s.n_tokens < 0) { fprintf(stderr, "prepare: out of memory rendering a sample\n"); status = -1; break; }
        rendered[r->rendered.count++] = full;
        if (s.n_tokens == 0 || s.n_tokens > o->max_seq) {
            char reason[128];
            snprintf(reason, sizeof reason, "%d tokens, over --max-seq %d%s", full, o->max_seq,
                     truncate ? " even with empty documents" : "");
            report_drop(r, DROP_TOO_LONG, where, reason);
            free(s.ids);
            free(s.targets);
            continue;
        }
        if (record_documents(sample, doc_bytes, &s) != 0) { free(s.ids); free(s.targets); status = -1; break; }
        written[r->written.count++] = s.n_tokens;
        r->samples++;
        r->truncated += cut;
        r->no_oracle += sample->oracle < 0;
        if (is_val[i]) {
            count_val_sample(sample, r);
        } else {
            r->train_tokens += s.n_tokens;
            r->train_answer_tokens += count_labelled(&s);
        }
        status = add_to_set(is_val[i] ? val : train, &s);
        if (status != 0) { free(s.ids); free(s.targets); free(s.document_bytes); }
    }
    length_stats_compute(rendered, r->rendered.count, o->max_seq, &r->rendered);
    length_stats_compute(written, r->written.count, o->max_seq, &r->written);
    histogram_compute(rendered, r->rendered.count, &r->histogram);
    r->train_samples = train->count;
    r->val_samples = val->count;
    free(rendered);
    free(written);
    return status;
}

// The sequences of --max-seq tokens the training samples fill when packed
// first fit in their order (./train --pack packs them in a shuffled order: about as full).
static int count_packed(const TokSet *train, int max_seq, Report *r) {
    int n = (int)train->count;
    int *lengths = (int *)malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    int *row_of = (int *)malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    int rows = -1;
    if (lengths && row_of) {
        for (int i = 0; i < n; i++) lengths[i] = train->samples[i].n_tokens;
        rows = pack_first_fit(lengths, n, max_seq, row_of);
    }
    free(lengths);
    free(row_of);
    r->train_packed = rows;
    if (rows < 0) fprintf(stderr, "prepare: out of memory while counting packed sequences\n");
    return rows < 0 ? -1 : 0;
}

// Questions (distinct texts) among the samples on one side of the split.
static long count_questions(const RaftData *samples, const unsigned char *is_val, int side) {
    StringMap seen = {0};
    for (int i = 0; i < samples->count; i++)
        if (is_val[i] == side) string_map_put(&seen, samples->samples[i].question, strlen(samples->samples[i].question), 0);
    long count = (long)seen.count;
    string_map_free(&seen);
    return count;
}

static int write_outputs(const Options *o, const Tokenizer *t, const TokSet *train, const TokSet *val, Report *r) {
    char path[4200], err[8192];
    if (cli_make_dirs(o->out_dir, err, sizeof err) != 0) { fprintf(stderr, "prepare: %s\n", err); return -1; }
    // the three files are a set: every temp written first, then every one renamed, train.bin
    // first; each carries the set id: a kill between the renames leaves temps that readers
    // finish renaming (tokfile_finish_set), and a mix that is left anyway is refused by ./train
    r->set_id = tokfile_set_id(train->samples, train->count, val->samples, val->count);
    AtomicFile files[3];
    int written = 0, status = 0;
    snprintf(path, sizeof path, "%s/train.bin", o->out_dir);
    if (tokfile_write_temp(&files[0], path, t, train->samples, train->count, r->set_id, err, sizeof err) == 0) {
        written++;
        snprintf(path, sizeof path, "%s/val.bin", o->out_dir);
        if (tokfile_write_temp(&files[1], path, t, val->samples, val->count, r->set_id, err, sizeof err) == 0) {
            written++;
            snprintf(path, sizeof path, "%s/report.json", o->out_dir);
            if (report_write_json_temp(&files[2], r, path, err, sizeof err) == 0) written++;
        }
    }
    if (written < 3) status = -1;
    for (int i = 0; i < written; i++) {
        if (status != 0) atomic_file_abort(&files[i]);
        else if (atomic_file_rename(&files[i], err, sizeof err) != 0) status = -1;
    }
    if (status != 0) fprintf(stderr, "prepare: %s\n", err);
    return status;
}

int main(int argc, char **argv) {
    Options o = parse_args(argc, argv);
    char err[8192];
    Tokenizer *t = load_tokenizer(o.model_path, err, sizeof err);
    if (!t) { fprintf(stderr, "prepare: %s\n", err); return 1; }
    if (tokenizer_use_chat_template(t, o.template_name, err, sizeof err) != 0) {
        fprintf(stderr, "prepare: %s: %s\n", o.model_path, err);
        tokenizer_free(t);
        return 1;
    }
    printf("prepare: rendering with the tokenizer of %s (vocabulary %d, id %016llx), chat template %s (%s)\n",
           o.model_path, tokenizer_vocab_size(t), (unsigned long long)tokenizer_id(t),
           tokenizer_chat_family(t)->name, tokenizer_chat_origin(t));
    Report r;
    memset(&r, 0, sizeof r);
    r.strict = o.strict;
    r.max_seq = o.max_seq;
    r.distractors = o.distractors;
    r.seed = o.seed;
    r.no_oracle_share = o.no_oracle;
    r.val_frac = o.val_frac;
    r.val_min = o.val_min;
    RaftData samples = {0};
    int status = read_sources(&o, t, &r, &samples);
    if (status == 0 && samples.count == 0) {
        fprintf(stderr, "prepare: no samples left after the checks (%ld dropped)\n", report_total_dropped(&r));
        status = -1;
    }
    unsigned char *is_val = (unsigned char *)calloc((size_t)samples.count + 1, 1);
    TokSet train = {NULL, 0}, val = {NULL, 0};
    if (status == 0 && raft_split(&samples, o.val_frac, o.val_min, (uint64_t)o.seed, is_val) < 0) status = -1;
    if (status == 0) status = render_samples(&o, t, &samples, is_val, &r, &train, &val);
    if (status == 0 && train.count == 0) {
        fprintf(stderr, "prepare: no training sample fits in --max-seq %d\n", o.max_seq);
        status = -1;
    }
    if (status == 0) {
        r.train_questions = count_questions(&samples, is_val, 0);
        r.val_questions = count_questions(&samples, is_val, 1);
        status = count_packed(&train, o.max_seq, &r);
    }
    if (status == 0) {
        report_print(&r, stdout);
        status = write_outputs(&o, t, &train, &val, &r);
    }
    if (status == 0)
        printf("wrote %s/train.bin (%ld samples), %s/val.bin (%ld samples), %s/report.json\n", o.out_dir, train.count,
               o.out_dir, val.count, o.out_dir);
    free_set(&train);
    free_set(&val);
    free(is_val);
    raft_free(&samples);
    report_free(&r);
    tokenizer_free(t);
    return status == 0 ? 0 : 1;
}
