// data/raft.c: reading RAFT samples from JSONL (strictly, naming the file and
// line of any problem) and rendering them into chat tokens with answer-only
// targets for the loss.
#include "raft.h"
#include "../json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char RAFT_SYSTEM_PROMPT[] =
    "Answer the question using only the numbered documents. "
    "If the documents do not contain the answer, say so.";

static void free_sample(RaftSample *s) {
    free(s->question);
    free(s->answer);
    for (int i = 0; i < s->n_documents; i++) free(s->documents[i]);
    free(s->documents);
    memset(s, 0, sizeof *s);
}

void raft_free(RaftData *data) {
    for (int i = 0; i < data->count; i++) free_sample(&data->samples[i]);
    free(data->samples);
    memset(data, 0, sizeof *data);
}

static int is_blank(const char *text, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (text[i] != ' ' && text[i] != '\t' && text[i] != '\r') return 0;
    return 1;
}

// Checks that value (called what in messages) is a string with visible text
// and no NUL byte. Returns 0, or -1 with the reason written.
static int check_text(const JsonValue *value, const char *what, char *reason, size_t reason_size) {
    if (!value) { snprintf(reason, reason_size, "missing %s", what); return -1; }
    if (value->type != JSON_STRING) { snprintf(reason, reason_size, "%s must be a string", what); return -1; }
    if (strlen(value->string) != value->string_len) {
        snprintf(reason, reason_size, "%s contains a NUL character (\\u0000)", what);
        return -1;
    }
    if (strspn(value->string, " \t\r\n") == value->string_len) {
        snprintf(reason, reason_size, "%s is empty", what);
        return -1;
    }
    return 0;
}

static int check_documents(const JsonValue *documents, char *reason, size_t reason_size) {
    if (!documents) { snprintf(reason, reason_size, "missing \"documents\""); return -1; }
    if (documents->type != JSON_ARRAY) {
        snprintf(reason, reason_size, "\"documents\" must be an array of strings");
        return -1;
    }
    if (documents->count == 0) { snprintf(reason, reason_size, "\"documents\" is empty"); return -1; }
    for (size_t i = 0; i < documents->count; i++) {
        char what[64];
        snprintf(what, sizeof what, "\"documents\"[%zu]", i);
        if (check_text(&documents->items[i], what, reason, reason_size) != 0) return -1;
    }
    return 0;
}

// oracle: null, or a whole number in [0, n_documents). Writes -1 for null.
static int check_oracle(const JsonValue *oracle, size_t n_documents, int *index, char *reason,
                        size_t reason_size) {
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

// Validates one parsed line. Returns 0, or -1 with the reason written.
static int check_sample(const JsonValue *line, int *oracle, char *reason, size_t reason_size) {
    if (line->type != JSON_OBJECT) {
        snprintf(reason, reason_size, "expected a JSON object with question, answer, documents and oracle");
        return -1;
    }
    const JsonValue *documents = json_get(line, "documents");
    if (check_text(json_get(line, "question"), "\"question\"", reason, reason_size) != 0 ||
        check_text(json_get(line, "answer"), "\"answer\"", reason, reason_size) != 0 ||
        check_documents(documents, reason, reason_size) != 0 ||
        check_oracle(json_get(line, "oracle"), documents->count, oracle, reason, reason_size) != 0)
        return -1;
    return 0;
}

// Copies a checked line into s. Returns -1 when memory runs out.
static int copy_sample(RaftSample *s, const JsonValue *line, int oracle) {
    const JsonValue *documents = json_get(line, "documents");
    memset(s, 0, sizeof *s);
    s->oracle = oracle;
    s->question = strdup(json_get_string(line, "question", ""));
    s->answer = strdup(json_get_string(line, "answer", ""));
    s->documents = (char **)calloc(documents->count, sizeof(char *));
    if (!s->question || !s->answer || !s->documents) { free_sample(s); return -1; }
    for (size_t i = 0; i < documents->count; i++) {
        s->documents[i] = strdup(documents->items[i].string);
        if (!s->documents[i]) { free_sample(s); return -1; }
        s->n_documents++;
    }
    return 0;
}

static int append_sample(RaftData *data, int *capacity, const JsonValue *line, int oracle) {
    if (data->count == *capacity) {
        int bigger_capacity = *capacity ? *capacity * 2 : 64;
        RaftSample *bigger = (RaftSample *)realloc(data->samples, sizeof(RaftSample) * bigger_capacity);
        if (!bigger) return -1;
        data->samples = bigger;
        *capacity = bigger_capacity;
    }
    if (copy_sample(&data->samples[data->count], line, oracle) != 0) return -1;
    data->count++;
    return 0;
}

// Parses, checks and appends one line. On failure writes "PATH:LINE: reason".
static int read_line(RaftData *data, int *capacity, const char *text, size_t len, const char *path,
                     int line_number, char *err, size_t err_size) {
    char reason[512];
    JsonValue *line = json_parse(text, len, reason, sizeof reason);
    if (!line) {
        // The text is one line, so json_parse's "line 1, " position prefix says nothing.
        const char *where = strncmp(reason, "line 1, ", 8) == 0 ? reason + 8 : reason;
        snprintf(err, err_size, "%s:%d: invalid JSON: %s", path, line_number, where);
        return -1;
    }
    int oracle = -1;
    int status = check_sample(line, &oracle, reason, sizeof reason);
    if (status == 0 && append_sample(data, capacity, line, oracle) != 0) {
        snprintf(reason, sizeof reason, "out of memory");
        status = -1;
    }
    if (status != 0) snprintf(err, err_size, "%s:%d: %s", path, line_number, reason);
    json_free(line);
    return status;
}

int raft_read_jsonl(RaftData *data, const char *path, char *err, size_t err_size) {
    memset(data, 0, sizeof *data);
    size_t len;
    char *text = read_file(path, &len, err, err_size);
    if (!text) return -1;
    int capacity = 0, line_number = 0, status = 0;
    size_t start = 0;
    while (start < len && status == 0) {
        size_t end = start;
        while (end < len && text[end] != '\n') end++;
        line_number++;
        if (!is_blank(text + start, end - start))
            status = read_line(data, &capacity, text + start, end - start, path, line_number, err, err_size);
        start = end + 1;
    }
    free(text);
    if (status == 0 && data->count == 0) {
        snprintf(err, err_size, "%s: no samples", path);
        status = -1;
    }
    if (status != 0) raft_free(data);
    return status;
}

// "[1] first document\n[2] second document\n...\n\nQuestion: the question", malloc'd.
static char *user_message(const RaftSample *s) {
    const char *question_label = "\nQuestion: ";
    size_t size = strlen(question_label) + strlen(s->question) + 1;
    for (int i = 0; i < s->n_documents; i++) size += strlen(s->documents[i]) + 16;   // "[N] " and "\n"
    char *text = (char *)malloc(size);
    if (!text) return NULL;
    size_t used = 0;
    for (int i = 0; i < s->n_documents; i++)
        used += (size_t)snprintf(text + used, size - used, "[%d] %s\n", i + 1, s->documents[i]);
    snprintf(text + used, size - used, "%s%s", question_label, s->question);
    return text;
}

int raft_encode(const Tokenizer *t, const RaftSample *sample, int **ids, int **targets) {
    *ids = NULL;
    *targets = NULL;
    char *user = user_message(sample);
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
        (*targets)[i] = i + 1 < n && is_answer[i + 1] ? (*ids)[i + 1] : RAFT_IGNORE;
    free(is_answer);
    return n;
}
