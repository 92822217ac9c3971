// dump_logits.c: our side of dev/crosscheck/check_merged.py. Loads a model (GGUF file or
// HF directory), encodes a prompt with its tokenizer (special tokens written
// in the text are matched), runs the CPU forward and writes the token ids and
// the last position's logits to a safetensors file:
//   build/dump_logits MODEL OUT.safetensors "prompt text" [ADAPTER_DIR]
//   OUT: "tokens" int32 [n], "last_logits" float32 [vocab]
// With ADAPTER_DIR, the peft adapter (LoRA or DoRA) is merged into the weights
// as loaded first (adapter_merge_peft; dev/fixtures/make_peft_dora_fixture.py).
#include "infer/adapter.h"
#include "infer/forward.h"
#include "model.h"
#include "formats/safetensors.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s MODEL OUT.safetensors \"prompt text\" [ADAPTER_DIR]\n", argv[0]);
        return 2;
    }
    char err[1024];
    Model m;
    if (model_load(&m, argv[1], err, sizeof err) != 0) { fprintf(stderr, "dump_logits: %s\n", err); return 1; }
    if (argc == 5 && adapter_merge_peft(&m, argv[4], NULL, err, sizeof err) != 0) {
        fprintf(stderr, "dump_logits: %s\n", err);
        return 1;
    }
    int *ids = NULL;
    int n = tokenizer_encode(m.tokenizer, argv[3], strlen(argv[3]), 1, &ids);
    if (n < 1) { fprintf(stderr, "dump_logits: the prompt encodes to no tokens\n"); return 1; }
    InferState state;
    if (infer_state_init(&state, &m.config, n, n) != 0) { fprintf(stderr, "dump_logits: out of memory\n"); return 1; }
    const float *logits = forward_cpu(&m, &state, ids, n, 0, 0, NULL);
    TensorInfo tensors[2] = {
        {(char *)"tokens", DT_I32, 1, {n}, ids, sizeof(int) * (size_t)n},
        {(char *)"last_logits", DT_F32, 1, {m.config.vocab_size}, logits, sizeof(float) * (size_t)m.config.vocab_size},
    };
    int status = safetensors_write(argv[2], tensors, 2, err, sizeof err);
    if (status != 0) fprintf(stderr, "dump_logits: %s\n", err);
    else printf("dump_logits: %d tokens, logits of the last one written to %s\n", n, argv[2]);
    infer_state_free(&state);
    free(ids);
    model_free(&m);
    return status != 0;
}
