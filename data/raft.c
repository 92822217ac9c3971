// data/raft.c: checking RAFT samples read from JSONL (naming the file and
// line of any problem) and rendering them into chat tokens with answer-only
// targets for the loss, cutting the documents when a sample must fit a length.
#include "data/raft.h"
#include "data/jsonl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char RAFT_SYSTEM_PROMPT[] =
    "Answer the question using only the numbered documents. "
    "If the documents do not contain the answer, say so.";

void raft_sample_free(RaftSample *s) {
    free(s->question);
    free(s->answer);
    for (int i = 0; i < s->n_documents; i++) free(s->documents[i]);
    free(s->documents);
    memset(s, 0, sizeof *s);
}

void raft_free(RaftData *data) {
    for (int i = 0; i < data->count; i++) raft_sample_free(&data->samples[i]);
    free(data->samples);
    memset(data, 0, sizeof *data);
}

int raft_append(RaftData *data, RaftSample *sample) {
    if (data->count == data->capacity) {
        int bigger_capacity = data->capacity ? data->capacity * 2 : 64;
        RaftSample *bigger = (RaftSample *)realloc(data->samples, sizeof(RaftSample) * bigger_capacity);
        if (!bigger) return -1;
        data->samples = bigger;
        data->capacity = bigger_capacity;
    }
    data->samples[data->count++] = *sample;
    memset(sample, 0, sizeof *sample);
    return 0;
}

// ---- checking one line -------------------------------------------------------

static int check_documents(const JsonValue *documents, DropReason *why, char *reason, size_t reason_size) {
    *why = DROP_SCHEMA;
    if (documents->type != JSON_ARRAY) {
        snprintf(reason, reason_size, "\"documents\" must be an array of strings");
        return -1;
    }
    if (documents->count == 0) {
        *why = DROP_MISSING;
        snprintf(reason, reason_size, "\"documents\" is empty");
        return -1;
    }
    for (size_t i = 0; i < documents->count; i++) {
        char what[64];
        snprintf(what, sizeof what, "\"documents\"[%zu]", i);
        if (check_text(&documents->items[i], what, why, reason, reason_size) != 0) return -1;
    }
    return 0;
}

// oracle: null, or a whole number in [0, n_documents). Writes -1 for null.
static int check_oracle(const JsonValue *oracle, size_t n_documents, int *index, char *reason, size_t reason_size) {
    if (!oracle) {
        snprintf(reason, reason_size, "missing \"oracle\" (the index of the document holding the answer, or null)");
        return -1;
    }
    if (oracle->type == JSON_NULL) { *index = -1; return 0; }
    if (oracle->type != JSON_NUMBER || oracle->number != floor(oracle->number)) {
        snprintf(reason, reason_size, "\"oracle\" must be a document index (a whole number) or null");
        return -1;
    }
    if (oracle->number < 0 || oracle->number >= (double)n_documents) {
        snprintf(reason, reason_size, "\"oracle\" is %.0f but the documents are numbered 0 to %zu", oracle->number,
                 n_documents - 1);
        return -1;
    }
    *index = (int)oracle->number;
    return 0;
}

// Validates a line; *oracle gets the oracle index (0 for the "context" form).
static int check_sample(const JsonValue *line, int *oracle, DropReason *why, char *reason, size_t reason_size) {
    *why = DROP_SCHEMA;
    if (line->type != JSON_OBJECT) {
        snprintf(reason, reason_size, "expected a JSON object with question, answer, documents and oracle");
        return -1;
    }
    if (check_text(json_get(line, "question"), "\"question\"", why, reason, reason_size) != 0 ||
        check_text(json_get(line, "answer"), "\"answer\"", why, reason, reason_size) != 0)
        return -1;
    const JsonValue *documents = json_get(line, "documents");
    const JsonValue *context = json_get(line, "context");
    if (documents && context) {
        snprintf(reason, reason_size, "both \"context\" and \"documents\": give one (\"context\" is one document, "
                                      "\"documents\" a list with an \"oracle\")");
        return -1;
    }
    if (context) {
        *oracle = 0;
        return check_text(context, "\"context\"", why, reason, reason_size);
    }
    *why = DROP_SCHEMA;
    if (!documents) {
        snprintf(reason, reason_size, "missing \"documents\" (or \"context\")");
        return -1;
    }
    if (check_documents(documents, why, reason, reason_size) != 0) return -1;
    *why = DROP_SCHEMA;
    return check_oracle(json_get(line, "oracle"), documents->count, oracle, reason, reason_size);
}

// Copies a checked line into s. Returns -1 when memory runs out.
static int copy_sample(RaftSample *s, const JsonValue *line, int oracle) {
    const JsonValue *documents = json_get(line, "documents");
    const JsonValue *context = json_get(line, "context");
    size_t n_documents = documents ? documents->count : 1;
    memset(s, 0, sizeof *s);
    s->oracle = oracle;
    s->question = strdup(json_get(line, "question")->string);
    s->answer = strdup(json_get(line, "answer")->string);
    s->documents = (char **)calloc(n_documents, sizeof(char *));
    if (!s->question || !s->answer || !s->documents) { raft_sample_free(s); return -1; }
    for (size_t i = 0; i < n_documents; i++) {
        s->documents[i] = strdup(documents ? documents->items[i].string : context->string);
        if (!s->documents[i]) { raft_sample_free(s); return -1; }
        s->n_documents++;
    }
    return 0;
}

int raft_sample_from_json(const JsonValue *line, RaftSample *sample, DropReason *why, char *reason,
                          size_t reason_size) {
    memset(sample, 0, sizeof *sample);
    int oracle = -1;
    if (check_sample(line, &oracle, why, reason, reason_size) != 0) return -1;
    if (copy_sample(sample, line, oracle) != 0) {
        *why = DROP_SCHEMA;
        snprintf(reason, reason_size, "out of memory");
        return -1;
    }
    return 0;
}

// ---- the strict reader ----------------------------------------------------------

// Parses, checks and appends one line. On failure writes "PATH:LINE: reason".
static int read_line(RaftData *data, const char *text, size_t len, const char *path, int line_number, char *err,
                     size_t err_size) {
    char reason[512];
    JsonValue *line = jsonl_parse_line(text, len, reason, sizeof reason);
    int status = -1;
    if (line) {
        RaftSample sample;
        DropReason why;
        if (raft_sample_from_json(line, &sample, &why, reason, sizeof reason) == 0) {
            status = raft_append(data, &sample);
            if (status != 0) snprintf(reason, sizeof reason, "out of memory");
            raft_sample_free(&sample);
        }
        json_free(line);
    }
    if (status != 0) snprintf(err, err_size, "%s:%d: %s", path, line_number, reason);
    return status;
}

int raft_read_jsonl(RaftData *data, const char *path, char *err, size_t err_size) {
    memset(data, 0, sizeof *data);
    JsonlFile file;
    if (jsonl_open(&file, path, err, err_size) != 0) return -1;
    int status = 0;
    size_t len;
    const char *line;
    while (status == 0 && (line = jsonl_next(&file, &len)) != NULL)
        status = read_line(data, line, len, path, file.line_number, err, err_size);
    jsonl_close(&file);
    if (status == 0 && data->count == 0) {
        snprintf(err, err_size, "%s: no samples", path);
        status = -1;
    }
    if (status != 0) raft_free(data);
    return status;
}

// ---- the lenient reader ----------------------------------------------------------

// Checks one parsed line and appends it unless it is bad or a duplicate.
// Returns 0, or -1 when the caller must stop (strict mode, out of memory).
static int add_checked_line(void *context, Report *r, const JsonValue *line, const char *where) {
    RaftData *data = (RaftData *)context;
    char reason[512];
    DropReason why;
    RaftSample sample;
    if (raft_sample_from_json(line, &sample, &why, reason, sizeof reason) != 0)
        return report_drop(r, why, where, reason);
    int duplicate = report_is_duplicate(r, sample.question, sample.answer);
    int status = -1;   // out of memory, unless one of these holds
    if (duplicate == 1) status = report_drop(r, DROP_DUPLICATE, where, "the same question and answer as an earlier one");
    if (duplicate == 0 && raft_append(data, &sample) == 0) {
        r->questions++;
        status = 0;
    }
    raft_sample_free(&sample);
    return status;
}

int raft_read_checked(RaftData *data, Report *r, const char *path, char *err, size_t err_size) {
    return read_jsonl_checked(path, r, add_checked_line, data, err, err_size);
}

// ---- rendering ----------------------------------------------------------------

size_t raft_kept_bytes(const char *document, size_t doc_bytes) {
    size_t kept = strlen(document);
    if (kept <= doc_bytes) return kept;
    kept = doc_bytes;
    // back up to the first byte of a UTF-8 character (continuation bytes are 10xxxxxx)
    while (kept > 0 && ((unsigned char)document[kept] & 0xC0) == 0x80) kept--;
    return kept;
}

// "[1] first document\n[2] second document\n...\n\nQuestion: the question",
// each document cut to at most doc_bytes bytes, malloc'd.
static char *user_message(const RaftSample *s, size_t doc_bytes) {
    size_t size = strlen(RAFT_QUESTION_LABEL) + strlen(s->question) + 1;
    for (int i = 0; i < s->n_documents; i++) size += strlen(s->documents[i]) + 16;   // "[N] " and "\n"
    char *text = (char *)malloc(size);
    if (!text) return NULL;
    size_t used = 0;
    for (int i = 0; i < s->n_documents; i++) {
        int kept = (int)raft_kept_bytes(s->documents[i], doc_bytes);
        used += (size_t)snprintf(text + used, size - used, "[%d] %.*s\n", i + 1, kept, s->documents[i]);
    }
    snprintf(text + used, size - used, "%s%s", RAFT_QUESTION_LABEL, s->question);
    return text;
}

int raft_parse_documents(const char *text, size_t len, const int *document_bytes, int n, char **documents) {
    size_t at = 0;
    int status = 0;
    for (int i = 0; i < n; i++) documents[i] = NULL;
    for (int i = 0; i < n && status == 0; i++) {
        char label[32];
        size_t label_len = (size_t)snprintf(label, sizeof label, "[%d] ", i + 1);
        size_t doc_len = (size_t)document_bytes[i];
        // "[i] " DOCUMENT "\n"
        if (len - at < label_len + doc_len + 1 || memcmp(text + at, label, label_len) != 0 ||
            text[at + label_len + doc_len] != '\n') {
            status = -1;
            continue;
        }
        documents[i] = strndup(text + at + label_len, doc_len);
        if (!documents[i]) status = -1;
        at += label_len + doc_len + 1;
    }
    size_t label_len = strlen(RAFT_QUESTION_LABEL);
    if (status == 0 && (len - at < label_len || memcmp(text + at, RAFT_QUESTION_LABEL, label_len) != 0)) status = -1;
    if (status == 0) return 0;
    for (int i = 0; i < n; i++) { free(documents[i]); documents[i] = NULL; }
    return -1;
}

// raft_encode with every document cut to at most doc_bytes bytes.
static int encode_cut(const Tokenizer *t, const RaftSample *sample, size_t doc_bytes, int **ids, int **targets) {
    *ids = NULL;
    *targets = NULL;
    char *user = user_message(sample, doc_bytes);
    if (!user) return -1;
    ChatMessage chat[3] = {{"system", RAFT_SYSTEM_PROMPT}, {"user", user}, {"assistant", sample->answer}};
    unsigned char *is_answer = NULL;
    int n = chat_encode(t, chat, 3, 0, ids, &is_answer);
    free(user);
    if (n < 0) return -1;
    *targets = (int *)malloc(sizeof(int) * (n > 0 ? n : 1));
    if (!*targets) {
        free(*ids);
        free(is_answer);
        *ids = NULL;
        return -1;
    }
    // targets[t] = ids[t + 1] where that token is part of the answer
    for (int i = 0; i < n; i++)
        (*targets)[i] = i + 1 < n && is_answer[i + 1] ? (*ids)[i + 1] : IGNORE_TARGET;
    free(is_answer);
    return n;
}

static size_t longest_document(const RaftSample *s) {
    size_t longest = 0;
    for (int i = 0; i < s->n_documents; i++)
        if (strlen(s->documents[i]) > longest) longest = strlen(s->documents[i]);
    return longest;
}

int raft_encode(const Tokenizer *t, const RaftSample *sample, int **ids, int **targets) {
    return encode_cut(t, sample, longest_document(sample), ids, targets);
}

// Token count with every document cut to doc_bytes; -1 on failure.
static int length_with_cut(const Tokenizer *t, const RaftSample *sample, size_t doc_bytes) {
    int *ids, *targets;
    int n = encode_cut(t, sample, doc_bytes, &ids, &targets);
    free(ids);
    free(targets);
    return n;
}

int raft_encode_fit(const Tokenizer *t, const RaftSample *sample, int max_tokens, int **ids, int **targets,
                    int *full_tokens, int *cut, size_t *doc_bytes) {
    size_t longest = longest_document(sample);
    int n = encode_cut(t, sample, longest, ids, targets);
    *full_tokens = n;
    *cut = 0;
    *doc_bytes = longest;
    if (n <= max_tokens) return n;
    free(*ids);
    free(*targets);
    *ids = *targets = NULL;
    int shortest = length_with_cut(t, sample, 0);
    if (shortest < 0) return -1;
    if (shortest > max_tokens) return 0;
    // Binary search for the largest byte budget that fits: fits(low) holds, fits(high) does not.
    size_t low = 0, high = longest;
    while (high - low > 1) {
        size_t middle = low + (high - low) / 2;
        int length = length_with_cut(t, sample, middle);
        if (length < 0) return -1;
        if (length <= max_tokens) low = middle;
        else high = middle;
    }
    *cut = 1;
    *doc_bytes = low;
    return encode_cut(t, sample, low, ids, targets);
}
