// test/fuzz/fuzz_hf_config.c: a Hugging Face config.json (model.c's
// model_read_hf_config: architecture, sizes, RoPE and its scaling, the
// options we refuse).
#include "fuzz_input.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_input_path(data, size);
    char err[512];
    Config config;
    model_read_hf_config(path, &config, err, sizeof err);
    return 0;
}
