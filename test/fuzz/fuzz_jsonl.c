// test/fuzz/fuzz_jsonl.c: a JSON Lines file (data/jsonl.c: byte-order mark,
// UTF-16 and CR-only detection, line splitting, each line parsed).
#include "fuzz_input.h"
#include "data/jsonl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_input_path(data, size);
    char err[512];
    JsonlFile f;
    if (jsonl_open(&f, path, err, sizeof err) != 0) return 0;
    size_t len;
    for (const char *line; (line = jsonl_next(&f, &len)) != NULL;) {
        JsonValue *value = jsonl_parse_line(line, len, err, sizeof err);
        if (value) json_free(value);
    }
    jsonl_close(&f);
    return 0;
}
