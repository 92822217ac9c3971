// test/fuzz/fuzz_tokenizer.c: the tokenizer's encode (tokenizer.c: special
// tokens, UTF-8 cleaning, NFC, the four pre-tokenizers, BPE merges) on any
// bytes, with the real vocabularies of the committed tiny tokenizers
// (test/fixtures/tokenizer_tiny_*.json, one per pre-tokenizer), then decode
// and streamed decode. The first byte picks the tokenizer and allow_special;
// the rest is the text. Checks: every id is in the vocabulary, and the
// tokenizers without a normalizer give back valid UTF-8 text exactly (their
// byte-level vocabularies hold every byte).
#include "tokenizer.h"
#include "formats/utf8.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const VARIANTS[] = {"gpt2", "smollm", "llama3", "qwen2"};
enum { N_VARIANTS = 4 };
static Tokenizer *tokenizers[N_VARIANTS];

// The fixtures, relative to the repo root (where `make fuzz` runs the targets).
#define FIXTURES "test/fixtures/"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    for (int v = 0; v < N_VARIANTS; v++) {
        char path[128], err[512];
        snprintf(path, sizeof path, FIXTURES "tokenizer_tiny_%s.json", VARIANTS[v]);
        tokenizers[v] = tokenizer_from_json(path, err, sizeof err);
        if (!tokenizers[v]) {
            fprintf(stderr, "fuzz_tokenizer: %s (run from the repo root)\n", err);
            exit(2);
        }
    }
    return 0;
}

static int is_valid_utf8(const unsigned char *text, size_t len) {
    for (size_t i = 0; i < len;) {
        int valid;
        i += utf8_sequence(text + i, len - i, &valid);
        if (!valid) return 0;
    }
    return 1;
}

// The streamed decode of ids, piece by piece, must equal the whole decode.
static void check_stream(const Tokenizer *t, const int *ids, int n, const char *decoded, size_t decoded_len) {
    TokenStream stream = {0};
    size_t at = 0, len;
    for (int i = 0; i <= n; i++) {
        char *piece = i < n ? tokenizer_stream_next(t, &stream, ids[i], &len) : tokenizer_stream_end(&stream, &len);
        if (!piece) abort();
        if (at + len > decoded_len || memcmp(decoded + at, piece, len) != 0) abort();
        at += len;
        free(piece);
    }
    if (at != decoded_len) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    int variant = data[0] % N_VARIANTS, allow_special = (data[0] / N_VARIANTS) & 1;
    const Tokenizer *t = tokenizers[variant];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    int *ids = NULL;
    int n = tokenizer_encode(t, text, len, allow_special, &ids);
    if (n < 0) abort();
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= tokenizer_vocab_size(t)) abort();
    size_t decoded_len;
    char *decoded = tokenizer_decode(t, ids, n, &decoded_len);
    if (!decoded) abort();
    int exact = strcmp(VARIANTS[variant], "qwen2") != 0 && is_valid_utf8((const unsigned char *)text, len);
    if (exact && (decoded_len != len || memcmp(decoded, text, len) != 0)) abort();
    check_stream(t, ids, n, decoded, decoded_len);
    free(decoded);
    free(ids);
    return 0;
}
