// data/string_map.h: a map from byte strings to ints (open addressing,
// FNV-1a hashes), for finding documents by id and duplicates by text.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char **keys;          // [capacity]: copies of the keys; NULL marks an empty slot
    size_t *key_lens;     // [capacity]
    int *values;          // [capacity]
    size_t capacity;      // a power of two
    size_t count;
} StringMap;

// An empty map is all zeros: StringMap map = {0}.
void string_map_free(StringMap *map);

// The value stored for the key (len bytes, may hold NUL bytes), or -1.
int string_map_get(const StringMap *map, const char *key, size_t len);

// Stores key -> value unless the key is there already. Returns 0 when added,
// 1 when the key was present (its value unchanged), -1 when memory runs out.
int string_map_put(StringMap *map, const char *key, size_t len, int value);

#ifdef __cplusplus
}
#endif
