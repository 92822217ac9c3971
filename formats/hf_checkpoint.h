// formats/hf_checkpoint.h: the weights of a Hugging Face model directory:
// model.safetensors (or every shard listed in model.safetensors.index.json)
// gathered into one list of named tensors.
#pragma once
#include <stddef.h>
#include "formats/safetensors.h"
#include "formats/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char *dir;
    SafetensorsFile *shards;   // one per distinct file (a single one when unsharded)
    int n_shards;
    // Every tensor of every shard. The entries are copies whose name and data
    // point into the shards: valid until hf_close.
    TensorList tensors;
} HFCheckpoint;

// Opens the weights of DIR. The index and its shards must agree (each listed
// tensor in the shard named, each shard tensor listed, none in two shards).
// On any problem returns -1 with a message naming the file (and the tensor)
// and what is wrong; nothing stays allocated.
// config.json and tokenizer.json are not read here (model.c reads them).
int hf_open(HFCheckpoint *ck, const char *dir, char *err, size_t err_size);
void hf_close(HFCheckpoint *ck);

#ifdef __cplusplus
}
#endif
