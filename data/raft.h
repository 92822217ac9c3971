// data/raft.h: RAFT training samples (retrieval-augmented fine-tuning). A
// sample is a question, a few short documents, the answer, and which document
// holds the answer (or none). Samples are read from JSONL, one object a line,
// and rendered into ChatML tokens whose targets are the answer's tokens only.
#pragma once
#include <stddef.h>
#include "../tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

// Target of a position that is not trained on (PyTorch's ignore_index).
#define RAFT_IGNORE -100

// The system message of every rendered sample.
extern const char RAFT_SYSTEM_PROMPT[];

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
} RaftData;

// Reads a JSONL file of samples: each line an object with "question" and
// "answer" (non-empty strings), "documents" (a non-empty array of non-empty
// strings) and "oracle" (an index into documents, or null when no document
// holds the answer). Other members are ignored; blank lines are skipped.
// Strict: the first bad line makes it return -1 with "PATH:LINE: what is
// wrong" in err; a file without samples gives "PATH: no samples". On failure
// data is left empty.
int raft_read_jsonl(RaftData *data, const char *path, char *err, size_t err_size);
void raft_free(RaftData *data);

// Renders a sample as a chat and encodes it with chat_encode:
//   system:    RAFT_SYSTEM_PROMPT
//   user:      "[1] first document\n[2] second document\n...\n\nQuestion: the question"
//   assistant: the answer
// *ids gets the tokens and *targets the label of each position, shifted so
// that position t is scored on the token after it:
//   targets[t] = ids[t + 1] when token t + 1 belongs to the answer (its text
//   or the <|im_end|> closing it), else RAFT_IGNORE; targets[n - 1] = RAFT_IGNORE.
// Both are malloc'd; the caller frees them. Returns the token count n, however
// long: the caller decides what to do with a sample longer than its context.
// Returns -1 (and NULLs) when the tokenizer has no ChatML tokens or memory runs out.
int raft_encode(const Tokenizer *t, const RaftSample *sample, int **ids, int **targets);

#ifdef __cplusplus
}
#endif
