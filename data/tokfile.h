// data/tokfile.h: the tokenized training file that ./prepare writes and
// ./train reads (train.bin, val.bin): samples already rendered through the
// chat template, as token ids with their answer-only targets.
//
// Layout, every number little-endian:
//   offset  size  field
//   0       8     magic "QLORATOK"
//   8       4     u32 version (3)
//   12      4     u32 vocabulary size of the tokenizer that made the file
//   16      8     u64 tokenizer id (tokenizer_id below)
//   24      8     u64 number of samples
//   32      8     u64 number of tokens, all samples together
//   40      8     u64 number of labelled positions (targets that are not -100)
//   48      8     u64 set id: the same in the train.bin and val.bin (and
//                     report.json) of one ./prepare run (tokfile_set_id)
//   56      8     u64 checksum: FNV-1a (64-bit) of every byte after the header
//   64            the samples, one after another, each:
//                   u32  n             tokens in the sample (at least 1)
//                   i32  ids[n]        token ids, each in [0, vocabulary size)
//                   i32  targets[n]    targets[t] = ids[t + 1] when token t + 1 is
//                                      part of the answer, else -100 (IGNORE_TARGET);
//                                      targets[n - 1] = -100
//                   i32  oracle        which document holds the answer (0-based),
//                                      -1 when none does (a no-oracle sample)
//                   u32  d             documents in the prompt
//                   u32  doc_bytes[d]  each document's length in bytes as rendered
//                                      (after any cut to fit --max-seq)
// Nothing follows the last sample. A file made with one tokenizer is refused
// when read for another: token ids only mean something with their vocabulary.
// The documents and the oracle (version 2) let ./evaluate tell no-oracle
// samples and check an answer against its documents: the prompt's text is
// "[1] DOC\n[2] DOC\n...\n\nQuestion: ..." (raft_encode), and doc_bytes says
// where each document ends. The set id (version 3) lets ./train refuse a
// train.bin beside a val.bin of another run of ./prepare; the checksum, a
// file whose samples changed after it was written (a flipped bit in a token id
// would otherwise be trained on). Files of older versions are refused, with a
// message to run ./prepare again.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "formats/atomic_file.h"
#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TOKFILE_MAGIC "QLORATOK"
#define TOKFILE_VERSION 3
#define TOKFILE_HEADER_BYTES 64

typedef struct {
    int *ids;              // [n_tokens]
    int *targets;          // [n_tokens]
    int n_tokens;
    int oracle;            // the document holding the answer, -1 when none
    int n_documents;
    int *document_bytes;   // [n_documents]: each document's rendered length in bytes
} TokSample;

typedef struct {
    TokSample *samples;   // [count]; each sample's arrays are malloc'd
    long count;
    uint32_t vocab_size;
    uint64_t tokenizer_id;
    uint64_t set_id;      // the ./prepare run that wrote it (tokfile_set_id)
    long n_tokens, n_labelled;
} TokFile;

// FNV-1a 64 over the vocabulary: for every id in order, its byte length
// (u32, little-endian) then its bytes (tokenizer_token_bytes). Two tokenizers
// with the same id for every token string get the same id.
uint64_t tokenizer_id(const Tokenizer *t);

// The id of a set of files that belong together: FNV-1a 64 over the training
// samples' bytes, then the validation samples' (each list after its count).
uint64_t tokfile_set_id(const TokSample *train, long n_train, const TokSample *val, long n_val);

// Writes n samples to path, stamped with t's vocabulary size and id and with
// set_id, through formats/atomic_file.h. Returns -1 with "PATH: why" in err
// when it cannot be written or a sample's oracle is not -1 or one of its documents.
int tokfile_write(const char *path, const Tokenizer *t, const TokSample *samples, long n, uint64_t set_id, char *err,
                  size_t err_size);
// The same, to file's temp, closed but not yet renamed (atomic_file_rename
// finishes it): ./prepare renames train.bin, val.bin and report.json together.
int tokfile_write_temp(AtomicFile *file, const char *path, const Tokenizer *t, const TokSample *samples, long n,
                       uint64_t set_id, char *err, size_t err_size);

// ./prepare renames train.bin first, then val.bin and report.json: once
// train.bin is renamed, the set is the new one. A kill before the last rename
// leaves the others in their temps (NAME.tmp.PID, each complete: every temp is
// closed and fsynced before the first rename). This finishes such a set: each val.bin or report.json temp carrying train.bin's set id is renamed
// over its file, so that readers see the old set or the new one, never a mix.
// path: the train.bin or val.bin about to be read (another name: nothing to
// do). Returns how many it renamed, or -1 with the message in err.
int tokfile_finish_set(const char *path, char *err, size_t err_size);

// Reads and checks path (every field, every id and target, every oracle
// index). When t is not
// NULL, a file made with another tokenizer is refused. Returns -1 with
// "PATH: what is wrong" in err; f is then empty.
int tokfile_read(TokFile *f, const char *path, const Tokenizer *t, char *err, size_t err_size);
void tokfile_free(TokFile *f);

#ifdef __cplusplus
}
#endif
