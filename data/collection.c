// data/collection.c: reading a document collection and its question/answer
// pairs (see collection.h), counting and naming every line it skips.
#include "data/collection.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void collection_free(Collection *c) {
    for (int i = 0; i < c->n_documents; i++) {
        free(c->documents[i].id);
        free(c->documents[i].text);
    }
    for (int i = 0; i < c->n_pairs; i++) {
        free(c->pairs[i].question);
        free(c->pairs[i].answer);
    }
    free(c->documents);
    free(c->pairs);
    string_map_free(&c->ids);
    memset(c, 0, sizeof *c);
}

static int is_blank(const char *text) { return text[strspn(text, " \t\r\n")] == '\0'; }

// Makes room for one more item in a growing array.
static int reserve_one(void **items, int *capacity, int count, size_t item_size) {
    if (count < *capacity) return 0;
    int bigger_capacity = *capacity ? *capacity * 2 : 64;
    void *bigger = realloc(*items, item_size * (size_t)bigger_capacity);
    if (!bigger) return -1;
    *items = bigger;
    *capacity = bigger_capacity;
    return 0;
}

static int out_of_memory(const char *where) {
    fprintf(stderr, "%s: out of memory\n", where);
    return -1;
}

// "title\ntext", or text when there is no title; malloc'd.
static char *document_text(const char *title, const char *text) {
    if (!title || is_blank(title)) return strdup(text);
    size_t size = strlen(title) + 1 + strlen(text) + 1;
    char *joined = (char *)malloc(size);
    if (joined) snprintf(joined, size, "%s\n%s", title, text);
    return joined;
}

int collection_add_document(Collection *c, Report *r, const char *where, const char *id, const char *title,
                            const char *text) {
    if (is_blank(id)) return report_drop(r, DROP_MISSING, where, "\"id\" is empty");
    if (is_blank(text)) return report_drop(r, DROP_MISSING, where, "\"text\" is empty");
    if (string_map_get(&c->ids, id, strlen(id)) >= 0) {
        char reason[256];
        snprintf(reason, sizeof reason, "document id \"%.200s\" is used twice", id);
        return report_drop(r, DROP_SCHEMA, where, reason);
    }
    if (reserve_one((void **)&c->documents, &c->documents_capacity, c->n_documents, sizeof(Document)) != 0)
        return out_of_memory(where);
    Document *d = &c->documents[c->n_documents];
    d->id = strdup(id);
    d->text = document_text(title, text);
    if (!d->id || !d->text || string_map_put(&c->ids, id, strlen(id), c->n_documents) < 0) {
        free(d->id);
        free(d->text);
        return out_of_memory(where);
    }
    c->n_documents++;
    r->documents++;
    return 0;
}

int collection_add_pair(Collection *c, Report *r, const char *where, const char *question, const char *answer,
                        const char *document_id) {
    if (is_blank(question)) return report_drop(r, DROP_MISSING, where, "\"question\" is empty");
    if (is_blank(answer)) return report_drop(r, DROP_MISSING, where, "\"answer\" is empty");
    int document = string_map_get(&c->ids, document_id, strlen(document_id));
    if (document < 0) {
        char reason[256];
        snprintf(reason, sizeof reason, "\"doc\" is \"%.200s\", which no document has as its id", document_id);
        return report_drop(r, DROP_UNKNOWN_DOCUMENT, where, reason);
    }
    int duplicate = report_is_duplicate(r, question, answer);
    if (duplicate < 0) return out_of_memory(where);
    if (duplicate) return report_drop(r, DROP_DUPLICATE, where, "the same question and answer as an earlier one");
    if (reserve_one((void **)&c->pairs, &c->pairs_capacity, c->n_pairs, sizeof(QAPair)) != 0)
        return out_of_memory(where);
    QAPair *p = &c->pairs[c->n_pairs];
    p->question = strdup(question);
    p->answer = strdup(answer);
    p->document = document;
    if (!p->question || !p->answer) {
        free(p->question);
        free(p->answer);
        return out_of_memory(where);
    }
    c->n_pairs++;
    r->questions++;
    return 0;
}

// One line of DOCS.jsonl: checks the types, then adds it.
static int read_document_line(void *context, Report *r, const JsonValue *line, const char *where) {
    Collection *c = (Collection *)context;
    char reason[512];
    DropReason why;
    if (line->type != JSON_OBJECT)
        return report_drop(r, DROP_SCHEMA, where, "expected a JSON object with \"id\" and \"text\"");
    const JsonValue *title = json_get(line, "title");
    if (check_text(json_get(line, "id"), "\"id\"", &why, reason, sizeof reason) != 0 ||
        check_text(json_get(line, "text"), "\"text\"", &why, reason, sizeof reason) != 0)
        return report_drop(r, why, where, reason);
    // the title is optional: absent, null or empty means none
    if (title && title->type != JSON_NULL &&
        check_text(title, "\"title\"", &why, reason, sizeof reason) != 0 && why == DROP_SCHEMA)
        return report_drop(r, why, where, reason);
    const char *title_text = title && title->type == JSON_STRING ? title->string : NULL;
    return collection_add_document(c, r, where, json_get(line, "id")->string, title_text,
                                   json_get(line, "text")->string);
}

// One line of QA.jsonl: checks the types, then adds it.
static int read_pair_line(void *context, Report *r, const JsonValue *line, const char *where) {
    Collection *c = (Collection *)context;
    char reason[512];
    DropReason why;
    if (line->type != JSON_OBJECT)
        return report_drop(r, DROP_SCHEMA, where, "expected a JSON object with \"question\", \"answer\" and \"doc\"");
    if (check_text(json_get(line, "question"), "\"question\"", &why, reason, sizeof reason) != 0 ||
        check_text(json_get(line, "answer"), "\"answer\"", &why, reason, sizeof reason) != 0 ||
        check_text(json_get(line, "doc"), "\"doc\" (the id of the source document)", &why, reason, sizeof reason) != 0)
        return report_drop(r, why, where, reason);
    return collection_add_pair(c, r, where, json_get(line, "question")->string, json_get(line, "answer")->string,
                               json_get(line, "doc")->string);
}

int collection_read(Collection *c, Report *r, const char *docs_path, const char *qa_path, char *err, size_t err_size) {
    if (read_jsonl_checked(docs_path, r, read_document_line, c, err, err_size) != 0) return -1;
    if (c->n_documents == 0) {
        snprintf(err, err_size, "%s: no usable documents", docs_path);
        return -1;
    }
    return read_jsonl_checked(qa_path, r, read_pair_line, c, err, err_size);
}
