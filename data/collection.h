// data/collection.h: the second input form of ./prepare, a document
// collection plus question/answer pairs that point at their source document:
//   DOCS.jsonl  {"id": str, "text": str, "title": str (optional)}
//   QA.jsonl    {"question": str, "answer": str, "doc": id}
// Read leniently: each bad line is reported (file:line and why) through the
// Report, counted and skipped; with --strict the first one stops the reading.
#pragma once
#include "data/checks.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char *id;
    char *text;          // as the model sees it: "title\ntext" when there is a title
} Document;

typedef struct {
    char *question;
    char *answer;
    int document;        // index into the collection's documents
} QAPair;

typedef struct {
    Document *documents;
    int n_documents, documents_capacity;
    QAPair *pairs;
    int n_pairs, pairs_capacity;
    StringMap ids;       // document id -> index
} Collection;

void collection_free(Collection *c);

// Adds a document. Returns DROP_* reason codes through report: an empty id or
// text is a missing value, a repeated id a schema error (where names the
// input). Returns 0 (added or dropped), -1 when the caller must stop (strict
// mode, or out of memory with the message in report's stderr).
int collection_add_document(Collection *c, Report *r, const char *where, const char *id, const char *title,
                            const char *text);

// Adds a pair pointing at document_id: an empty question or answer is a
// missing value, an id not in the collection an unknown document, a question
// and answer seen before (anywhere in this run) a duplicate. Returns as
// collection_add_document.
int collection_add_pair(Collection *c, Report *r, const char *where, const char *question, const char *answer,
                        const char *document_id);

// Reads DOCS.jsonl, then QA.jsonl, into c. Returns -1 with "PATH: why" in err
// when a file cannot be read or is empty, or when --strict stops at a bad line.
int collection_read(Collection *c, Report *r, const char *docs_path, const char *qa_path, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
