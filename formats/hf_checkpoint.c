// formats/hf_checkpoint.c: opens the weights of a Hugging Face model directory:
// maps model.safetensors or the shards named by model.safetensors.index.json
// and lists all their tensors together.
#include "formats/hf_checkpoint.h"
#include "formats/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// dir + "/" + name, malloc'd.
static char *join_path(const char *dir, const char *name) {
    size_t size = strlen(dir) + strlen(name) + 2;
    char *path = (char *)malloc(size);
    if (path) snprintf(path, size, "%s/%s", dir, name);
    return path;
}

static int is_regular_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

// Opens DIR/name as the next shard.
static int open_shard(HFCheckpoint *ck, const char *name, char *err, size_t err_size) {
    char *path = join_path(ck->dir, name);
    if (!path) { snprintf(err, err_size, "%s: out of memory", ck->dir); return -1; }
    int status = safetensors_open(&ck->shards[ck->n_shards], path, err, err_size);
    if (status == 0) ck->n_shards++;
    free(path);
    return status;
}

// Shard names from the index must be plain file names inside the directory.
static int is_plain_file_name(const char *name) {
    return name[0] != '\0' && strchr(name, '/') == NULL && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static int find_shard_name(const char *const *names, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0) return i;
    return -1;
}

// Every tensor of every shard must be in the index's weight_map: the index
// and its shards describe one checkpoint, and a tensor only one of them
// knows means one of them lies.
static int check_all_listed(const HFCheckpoint *ck, const JsonValue *weight_map, const char *index_path, char *err,
                            size_t err_size) {
    for (int s = 0; s < ck->n_shards; s++) {
        const TensorList *list = &ck->shards[s].tensors;
        for (int i = 0; i < list->count; i++) {
            if (json_get(weight_map, list->tensors[i].name)) continue;
            snprintf(err, err_size, "%s: tensor '%s': in %s but not in the index's weight_map", index_path,
                     list->tensors[i].name, ck->shards[s].path);
            return -1;
        }
    }
    return 0;
}

// Opens every distinct shard of the index's weight_map once, then checks
// that each listed tensor is in the shard the index names, and each shard's
// tensors are listed.
static int open_indexed_shards(HFCheckpoint *ck, const JsonValue *weight_map, const char *index_path, char *err,
                               size_t err_size) {
    size_t n = weight_map->count;
    const char **names = (const char **)malloc((n ? n : 1) * sizeof *names);
    int *shard_of = (int *)malloc((n ? n : 1) * sizeof *shard_of);
    ck->shards = (SafetensorsFile *)calloc(n ? n : 1, sizeof(SafetensorsFile));
    int status = names && shard_of && ck->shards ? 0 : -1;
    if (status != 0) snprintf(err, err_size, "%s: out of memory", index_path);
    int n_names = 0;
    for (size_t i = 0; i < n && status == 0; i++) {
        const JsonValue *file = &weight_map->items[i];
        if (file->type != JSON_STRING || !is_plain_file_name(file->string)) {
            snprintf(err, err_size, "%s: tensor '%s': shard must be a file name in the model directory",
                     index_path, weight_map->keys[i]);
            status = -1;
            break;
        }
        shard_of[i] = find_shard_name(names, n_names, file->string);
        if (shard_of[i] < 0) {
            names[n_names] = file->string;
            shard_of[i] = n_names++;
            status = open_shard(ck, file->string, err, err_size);
        }
    }
    for (size_t i = 0; i < n && status == 0; i++) {
        if (!tensor_find(&ck->shards[shard_of[i]].tensors, weight_map->keys[i])) {
            snprintf(err, err_size, "%s: tensor '%s': listed in shard '%s', which does not hold it", index_path,
                     weight_map->keys[i], names[shard_of[i]]);
            status = -1;
        }
    }
    free(names);
    free(shard_of);
    if (status == 0) status = check_all_listed(ck, weight_map, index_path, err, err_size);
    return status;
}

static int open_sharded(HFCheckpoint *ck, const char *index_path, char *err, size_t err_size) {
    JsonValue *index = json_parse_file(index_path, err, err_size);
    if (!index) return -1;
    const JsonValue *weight_map = json_get(index, "weight_map");
    int status;
    if (!weight_map || weight_map->type != JSON_OBJECT || weight_map->count == 0) {
        snprintf(err, err_size, "%s: 'weight_map' is missing, empty or not an object", index_path);
        status = -1;
    } else {
        status = open_indexed_shards(ck, weight_map, index_path, err, err_size);
    }
    json_free(index);
    return status;
}

static int compare_tensor_names(const void *a, const void *b) {
    return strcmp(((const TensorInfo *)a)->name, ((const TensorInfo *)b)->name);
}

// Reports a tensor name held by two shards.
static void report_duplicate(const HFCheckpoint *ck, const char *name, char *err, size_t err_size) {
    const char *first = NULL, *second = NULL;
    for (int s = 0; s < ck->n_shards && !second; s++) {
        if (!tensor_find(&ck->shards[s].tensors, name)) continue;
        if (first) second = ck->shards[s].path;
        else first = ck->shards[s].path;
    }
    snprintf(err, err_size, "%s: tensor '%s': found in both %s and %s", ck->dir, name, first, second);
}

// Lists every shard's tensors in ck->tensors; a name in two shards is an error.
static int merge_tensors(HFCheckpoint *ck, char *err, size_t err_size) {
    int total = 0;
    for (int s = 0; s < ck->n_shards; s++) total += ck->shards[s].tensors.count;
    ck->tensors.tensors = (TensorInfo *)malloc((size_t)(total ? total : 1) * sizeof(TensorInfo));
    TensorInfo *sorted = (TensorInfo *)malloc((size_t)(total ? total : 1) * sizeof(TensorInfo));
    if (!ck->tensors.tensors || !sorted) {
        free(sorted);
        snprintf(err, err_size, "%s: out of memory", ck->dir);
        return -1;
    }
    for (int s = 0; s < ck->n_shards; s++) {
        const TensorList *list = &ck->shards[s].tensors;
        memcpy(ck->tensors.tensors + ck->tensors.count, list->tensors, (size_t)list->count * sizeof(TensorInfo));
        ck->tensors.count += list->count;
    }
    memcpy(sorted, ck->tensors.tensors, (size_t)total * sizeof(TensorInfo));
    qsort(sorted, (size_t)total, sizeof(TensorInfo), compare_tensor_names);
    int status = 0;
    for (int i = 1; i < total && status == 0; i++) {
        if (strcmp(sorted[i - 1].name, sorted[i].name) == 0) {
            report_duplicate(ck, sorted[i].name, err, err_size);
            status = -1;
        }
    }
    free(sorted);
    return status;
}

// PyTorch's pickle files, which older checkpoints hold instead of safetensors.
static const char *const PICKLE_WEIGHTS[] = {"pytorch_model.bin", "pytorch_model.bin.index.json"};

// Why dir has no weights this program reads: none at all, or only PyTorch's
// pickles (named, with how to convert them).
static void report_missing_weights(const char *dir, char *err, size_t err_size) {
    for (size_t i = 0; i < sizeof PICKLE_WEIGHTS / sizeof PICKLE_WEIGHTS[0]; i++) {
        char *pickle = join_path(dir, PICKLE_WEIGHTS[i]);
        int found = pickle && is_regular_file(pickle);
        free(pickle);
        if (!found) continue;
        snprintf(err, err_size, "%s: has neither model.safetensors nor model.safetensors.index.json, only %s: "
                 "PyTorch's pickle format, which this program does not read; convert it with transformers: "
                 "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT) (safetensors by default)", dir,
                 PICKLE_WEIGHTS[i]);
        return;
    }
    snprintf(err, err_size, "%s: has neither model.safetensors nor model.safetensors.index.json", dir);
}

static int open_weights(HFCheckpoint *ck, char *err, size_t err_size) {
    char *single = join_path(ck->dir, "model.safetensors");
    char *index = join_path(ck->dir, "model.safetensors.index.json");
    int status = -1;
    if (!single || !index) {
        snprintf(err, err_size, "%s: out of memory", ck->dir);
    } else if (is_regular_file(single)) {
        ck->shards = (SafetensorsFile *)calloc(1, sizeof(SafetensorsFile));
        if (ck->shards) status = open_shard(ck, "model.safetensors", err, err_size);
        else snprintf(err, err_size, "%s: out of memory", ck->dir);
    } else if (is_regular_file(index)) {
        status = open_sharded(ck, index, err, err_size);
    } else {
        report_missing_weights(ck->dir, err, err_size);
    }
    free(single);
    free(index);
    if (status == 0) status = merge_tensors(ck, err, err_size);
    return status;
}

int hf_open(HFCheckpoint *ck, const char *dir, char *err, size_t err_size) {
    memset(ck, 0, sizeof *ck);
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;   // "dir/" names files as "dir/x", not "dir//x"
    ck->dir = strndup(dir, len);
    int status = -1;
    if (!ck->dir) snprintf(err, err_size, "%s: out of memory", dir);
    else status = open_weights(ck, err, err_size);
    if (status != 0) hf_close(ck);
    return status;
}

void hf_close(HFCheckpoint *ck) {
    for (int s = 0; s < ck->n_shards; s++) safetensors_close(&ck->shards[s]);
    free(ck->shards);
    free(ck->tensors.tensors);
    free(ck->dir);
    memset(ck, 0, sizeof *ck);
}
