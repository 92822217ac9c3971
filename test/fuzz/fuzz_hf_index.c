// test/fuzz/fuzz_hf_index.c: the model.safetensors.index.json of a sharded
// Hugging Face checkpoint (formats/hf_checkpoint.c: its weight_map, shard
// names, which tensor lies in which shard). The model directory is made
// once, with two small shards, shard_a.safetensors ("a", "b") and
// shard_b.safetensors ("c"); each input becomes its index.
#include "formats/hf_checkpoint.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char model_dir[] = "/tmp/qlora_fuzz_hf_XXXXXX";
static char index_path[sizeof model_dir + 64];

static void fail(const char *what) {
    fprintf(stderr, "fuzz_hf_index: %s\n", what);
    exit(2);
}

static void write_shard(const char *name, const TensorInfo *tensors, int n) {
    char path[sizeof model_dir + 64], err[512];
    snprintf(path, sizeof path, "%s/%s", model_dir, name);
    if (safetensors_write(path, tensors, n, err, sizeof err) != 0) fail(err);
}

static void remove_model_dir(void) {
    const char *names[] = {"shard_a.safetensors", "shard_b.safetensors", "model.safetensors.index.json"};
    char path[sizeof model_dir + 64];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", model_dir, names[i]);
        unlink(path);
    }
    rmdir(model_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    if (!mkdtemp(model_dir)) fail("cannot make the model directory");
    atexit(remove_model_dir);
    static const float values[6] = {1, 2, 3, 4, 5, 6};
    TensorInfo shard_a[2] = {{(char *)"a", DT_F32, 2, {2, 2, 0, 0}, values, 16},
                             {(char *)"b", DT_F32, 1, {2, 0, 0, 0}, values + 4, 8}};
    TensorInfo shard_b[1] = {{(char *)"c", DT_F32, 1, {3, 0, 0, 0}, values, 12}};
    write_shard("shard_a.safetensors", shard_a, 2);
    write_shard("shard_b.safetensors", shard_b, 1);
    snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", model_dir);
    return 0;
}

// The index is written plainly, not through formats/atomic_file.h: a scratch
// input rewritten thousands of times a second, where an fsync each time would
// be most of the fuzzer's time.
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FILE *index = fopen(index_path, "wb");
    if (!index || fwrite(data, 1, size, index) != size || fclose(index) != 0) fail("cannot write the index");
    char err[512];
    HFCheckpoint ck;
    if (hf_open(&ck, model_dir, err, sizeof err) == 0) hf_close(&ck);
    return 0;
}
