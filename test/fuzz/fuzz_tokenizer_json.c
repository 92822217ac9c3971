// test/fuzz/fuzz_tokenizer_json.c: a Hugging Face tokenizer.json
// (tokenizer.c's tokenizer_from_json: the BPE model, vocabulary, merges,
// added tokens, normalizer and pre-tokenizer), then a short chat encoded
// with what was loaded.
#include "fuzz_input.h"
#include "tokenizer.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_input_path(data, size);
    char err[512];
    Tokenizer *t = tokenizer_from_json(path, err, sizeof err);
    if (!t) return 0;
    ChatMessage chat[2] = {{"user", "Hello, world! 123 héllo"}, {"assistant", "Hi <|im_end|> there."}};
    int *ids = NULL;
    unsigned char *is_answer = NULL;
    chat_encode(t, chat, 2, 0, &ids, &is_answer);
    free(ids);
    free(is_answer);
    tokenizer_free(t);
    return 0;
}
