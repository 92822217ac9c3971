// test/fuzz/fuzz_samples.c: the JSONL sample readers on one file: RAFT samples
// read strictly (raft_read_jsonl, as ./train and ./evaluate do) and leniently
// (raft_read_checked, as ./prepare does: drops counted, duplicates found,
// data/checks.c), and the file as both halves of a document collection
// (collection_read: DOCS.jsonl and QA.jsonl, data/collection.c).
#include "fuzz_input.h"
#include "data/collection.h"
#include "data/raft.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_input_path(data, size);
    char err[512];
    RaftData strict;
    memset(&strict, 0, sizeof strict);
    if (raft_read_jsonl(&strict, path, err, sizeof err) == 0) raft_free(&strict);

    RaftData lenient;
    memset(&lenient, 0, sizeof lenient);
    Report report;
    memset(&report, 0, sizeof report);
    raft_read_checked(&lenient, &report, path, err, sizeof err);
    raft_free(&lenient);
    report_free(&report);

    Collection collection;
    memset(&collection, 0, sizeof collection);
    memset(&report, 0, sizeof report);
    collection_read(&collection, &report, path, path, err, sizeof err);
    collection_free(&collection);
    report_free(&report);
    return 0;
}
