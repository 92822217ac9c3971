// test/fuzz/fuzz_gguf.c: a GGUF file (formats/gguf.c: header, typed metadata,
// tensor infos), then what the loaders take from it: the tokenizer
// (tokenizer_from_gguf, used to encode a short text) and the model
// (model_load: the config from the metadata, every weight converted to fp32).
#include "fuzz_input.h"
#include "formats/gguf.h"
#include "model.h"
#include "tokenizer.h"

#include <stdlib.h>

static const char SAMPLE_TEXT[] = "<|im_start|>user\nHello, world! 123<|im_end|>";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_input_path(data, size);
    char err[512];
    GGUFFile f;
    if (gguf_open(&f, path, err, sizeof err) != 0) return 0;
    Tokenizer *t = tokenizer_from_gguf(&f, err, sizeof err);
    if (t) {
        int *ids = NULL;
        tokenizer_encode(t, SAMPLE_TEXT, sizeof SAMPLE_TEXT - 1, 1, &ids);
        free(ids);
        tokenizer_free(t);
    }
    gguf_close(&f);
    Model m;
    if (model_load(&m, path, err, sizeof err) == 0) model_free(&m);
    return 0;
}
