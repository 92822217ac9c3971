// data/raft.h: RAFT training samples (retrieval-augmented fine-tuning). A
// sample is a question, a few short documents, the answer, and which document
// holds the answer (or none). Samples are read from JSONL, one object a line,
// and rendered into ChatML tokens whose targets are the answer's tokens only.
#pragma once
#include <stddef.h>
#include "formats/json.h"
#include "tokenizer.h"
#include "data/checks.h"
#include "ops/cross_entropy.h"

#ifdef __cplusplus
extern "C" {
#endif

// The system message of every rendered sample.
extern const char RAFT_SYSTEM_PROMPT[];
// What comes between the documents and the question in the user message.
#define RAFT_QUESTION_LABEL "\nQuestion: "

typedef struct {
    char *question;
    char *answer;
    char **documents;     // [n_documents]
    int n_documents;
    int oracle;           // index of the document holding the answer; -1 when none does
} RaftSample;

typedef struct {
    RaftSample *samples;  // [count]
    int count;
    int capacity;
} RaftData;

// Checks one parsed line and, when it is good, fills *sample (malloc'd
// copies; free with raft_sample_free). Two forms are accepted:
//   {"question": str, "answer": str, "documents": [str, ...], "oracle": index or null}
//   {"question": str, "answer": str, "context": str}   (one document, the oracle)
// Other members are ignored. Returns 0, or -1 with *why DROP_SCHEMA (a member
// missing or of the wrong JSON type, a bad index) or DROP_MISSING (null, an
// empty string, an empty list) and the reason written.
int raft_sample_from_json(const JsonValue *line, RaftSample *sample, DropReason *why, char *reason,
                          size_t reason_size);
void raft_sample_free(RaftSample *sample);

// Appends *sample to data, taking over its memory (sample is zeroed).
// Returns -1 when memory runs out (sample is then left as it was).
int raft_append(RaftData *data, RaftSample *sample);

// Reads a JSONL file of samples (the forms above; blank lines skipped).
// Strict: the first bad line makes it return -1 with "PATH:LINE: what is
// wrong" in err; a file without samples gives "PATH: no samples". On failure
// data is left empty. (./prepare reads leniently, skipping and counting.)
int raft_read_jsonl(RaftData *data, const char *path, char *err, size_t err_size);
void raft_free(RaftData *data);

// The lenient reader of ./prepare: each bad line is counted and named
// (file:line and why) through r, exact duplicates (same question and answer
// as a sample seen before in this run) are dropped and counted, the good
// samples are appended to data. Returns -1 with "PATH: why" in err when the
// file cannot be read or is empty, or when r->strict stops at a bad line.
int raft_read_checked(RaftData *data, Report *r, const char *path, char *err, size_t err_size);

// Renders a sample as a chat and encodes it with chat_encode:
//   system:    RAFT_SYSTEM_PROMPT
//   user:      "[1] first document\n[2] second document\n...\n\nQuestion: the question"
//   assistant: the answer
// *ids gets the tokens and *targets the label of each position, shifted so
// that position t is scored on the token after it:
//   targets[t] = ids[t + 1] when token t + 1 belongs to the answer (its text
//   or the end-of-turn token closing it), else IGNORE_TARGET; targets[n - 1] = IGNORE_TARGET.
// Both are malloc'd; the caller frees them. Returns the token count n, however
// long: the caller decides what to do with a sample longer than its context.
// Returns -1 (and NULLs) when the tokenizer has no chat template family (tokenizer_use_chat_template)
// or memory runs out.
int raft_encode(const Tokenizer *t, const RaftSample *sample, int **ids, int **targets);

// raft_encode, made to fit in max_tokens by cutting the documents, never the
// system message, the question or the answer: every document keeps at most
// the same number of bytes from its beginning (cut at a character boundary),
// the largest such budget that fits. *full_tokens gets the length before
// cutting, *cut whether anything was cut and *doc_bytes the budget (the
// longest document's length when nothing was cut). Returns the token count,
// 0 when even empty documents do not fit (nothing allocated), -1 as raft_encode.
int raft_encode_fit(const Tokenizer *t, const RaftSample *sample, int max_tokens, int **ids, int **targets,
                    int *full_tokens, int *cut, size_t *doc_bytes);

// How much of document a rendering with the budget doc_bytes shows: all of
// it when it fits, else its longest beginning of at most doc_bytes bytes that
// ends at a character boundary.
size_t raft_kept_bytes(const char *document, size_t doc_bytes);

// The reverse of the user message's layout: text (len bytes) starts where
// the user message does, "[1] DOC\n[2] DOC\n...\n\nQuestion: ...", and
// document i is document_bytes[i] bytes long. Fills documents[0..n) with
// malloc'd copies and returns 0, or -1 (all NULL) when text is not laid out so.
int raft_parse_documents(const char *text, size_t len, const int *document_bytes, int n, char **documents);

#ifdef __cplusplus
}
#endif
