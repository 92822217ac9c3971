// test/fuzz/fuzz_checkpoint.cpp: a training checkpoint (trainer/checkpoint.cpp:
// magic and version, header, run identity, data order, the three flat
// arrays), loaded into the adapters of a tiny model (2 layers, q and down,
// rank 2) with 3 samples, as test/test_resume.cpp makes them. The input is
// the file without its checksum: the harness appends the FNV-1a of the
// input, so that the fuzzer gets past the checksum to the fields it guards.
#include "fuzz_input.h"
#include "formats/hash.h"
#include "trainer/checkpoint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char IDENTITY[] = "--lr 0.0005\n--seed 1234\n";
enum { N_SAMPLES = 3 };

static LoraSet set;
static AdamWState adam;

extern "C" int LLVMFuzzerInitialize(int *argc, char ***argv) {
    Config c = {};
    c.dim = 8;
    c.hidden_dim = 12;
    c.n_layers = 2;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.head_dim = 4;
    int enabled[N_LINEARS] = {0};
    enabled[LINEAR_Q] = enabled[LINEAR_DOWN] = 1;
    if (lora_set_init(&set, &c, enabled, 2, 4.0f, 0, 0.0f, 1, 0) != 0 || adamw_init(&adam, set.n_params) != 0) {
        fprintf(stderr, "fuzz_checkpoint: out of memory\n");
        exit(2);
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint64_t checksum = fnv1a(FNV1A_OFFSET_BASIS, data, size);
    uint8_t *bytes = (uint8_t *)malloc(size + sizeof checksum);
    if (!bytes) return 0;
    memcpy(bytes, data, size);
    memcpy(bytes + size, &checksum, sizeof checksum);
    const char *path = fuzz_input_path(bytes, size + sizeof checksum);
    free(bytes);
    int order[N_SAMPLES];
    TrainProgress progress = {0, 0, 0, 0, N_SAMPLES, order, 0.0, 0, grad_scaler_default(0)};
    char err[2048];
    checkpoint_load(path, IDENTITY, &set, &adam, &progress, err, sizeof err);
    return 0;
}
