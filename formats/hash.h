// formats/hash.h: FNV-1a (64-bit), the one hash of the project: checksums
// (checkpoints, token files), identities (tokenizer, run, data files) and the
// hash maps' buckets.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// The value to start from.
#define FNV1A_OFFSET_BASIS 14695981039346656037ULL

// h, hashed on over n bytes: h = (h xor byte) * 1099511628211 for every byte.
uint64_t fnv1a(uint64_t h, const void *bytes, size_t n);

#ifdef __cplusplus
}
#endif
