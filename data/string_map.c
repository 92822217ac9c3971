// data/string_map.c: string -> int map with linear probing (see string_map.h).
#include "data/string_map.h"
#include "formats/hash.h"

#include <stdlib.h>
#include <string.h>

static uint64_t hash_bytes(const char *s, size_t len) { return fnv1a(FNV1A_OFFSET_BASIS, s, len); }

void string_map_free(StringMap *map) {
    for (size_t i = 0; i < map->capacity; i++) free(map->keys[i]);
    free(map->keys);
    free(map->key_lens);
    free(map->values);
    memset(map, 0, sizeof *map);
}

// The slot holding key, or the empty slot where it would go.
static size_t find_slot(const StringMap *map, const char *key, size_t len) {
    size_t mask = map->capacity - 1;
    size_t slot = (size_t)hash_bytes(key, len) & mask;
    while (map->keys[slot] && !(map->key_lens[slot] == len && memcmp(map->keys[slot], key, len) == 0))
        slot = (slot + 1) & mask;
    return slot;
}

int string_map_get(const StringMap *map, const char *key, size_t len) {
    if (map->capacity == 0) return -1;
    size_t slot = find_slot(map, key, len);
    return map->keys[slot] ? map->values[slot] : -1;
}

// Doubles the table (or makes the first one) and re-inserts every key.
static int grow(StringMap *map) {
    StringMap bigger = {0};
    bigger.capacity = map->capacity ? map->capacity * 2 : 64;
    bigger.keys = (char **)calloc(bigger.capacity, sizeof(char *));
    bigger.key_lens = (size_t *)calloc(bigger.capacity, sizeof(size_t));
    bigger.values = (int *)calloc(bigger.capacity, sizeof(int));
    if (!bigger.keys || !bigger.key_lens || !bigger.values) { string_map_free(&bigger); return -1; }
    for (size_t i = 0; i < map->capacity; i++) {
        if (!map->keys[i]) continue;
        size_t slot = find_slot(&bigger, map->keys[i], map->key_lens[i]);
        bigger.keys[slot] = map->keys[i];
        bigger.key_lens[slot] = map->key_lens[i];
        bigger.values[slot] = map->values[i];
        bigger.count++;
        map->keys[i] = NULL;   // moved
    }
    string_map_free(map);
    *map = bigger;
    return 0;
}

int string_map_put(StringMap *map, const char *key, size_t len, int value) {
    // keep the table at most half full, so probes stay short
    if (2 * (map->count + 1) > map->capacity && grow(map) != 0) return -1;
    size_t slot = find_slot(map, key, len);
    if (map->keys[slot]) return 1;
    char *copy = (char *)malloc(len + 1);
    if (!copy) return -1;
    memcpy(copy, key, len);
    copy[len] = '\0';
    map->keys[slot] = copy;
    map->key_lens[slot] = len;
    map->values[slot] = value;
    map->count++;
    return 0;
}
