// test/fuzz/fuzz_tokfile.c: a token file (data/tokfile.c: the header, every
// sample's ids, targets, oracle and document lengths). The input's checksum
// field is set to the checksum of its samples before reading, so that the
// fuzzer gets past it to the fields it guards (a wrong checksum is refused
// before anything else: test/test_prepare.cpp tests that).
#include "fuzz_input.h"
#include "data/tokfile.h"
#include "formats/hash.h"

#include <stdlib.h>
#include <string.h>

// Where the header keeps the checksum of the bytes after it (data/tokfile.h).
#define CHECKSUM_AT 56

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *bytes = (uint8_t *)malloc(size ? size : 1);
    if (!bytes) return 0;
    memcpy(bytes, data, size);
    if (size >= TOKFILE_HEADER_BYTES) {
        uint64_t checksum = fnv1a(FNV1A_OFFSET_BASIS, bytes + TOKFILE_HEADER_BYTES, size - TOKFILE_HEADER_BYTES);
        memcpy(bytes + CHECKSUM_AT, &checksum, sizeof checksum);
    }
    const char *path = fuzz_input_path(bytes, size);
    free(bytes);
    char err[512];
    TokFile f;
    if (tokfile_read(&f, path, NULL, err, sizeof err) == 0) tokfile_free(&f);
    return 0;
}
