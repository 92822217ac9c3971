// formats/hash.c: FNV-1a (see formats/hash.h).
#include "formats/hash.h"

uint64_t fnv1a(uint64_t h, const void *bytes, size_t n) {
    const unsigned char *p = (const unsigned char *)bytes;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}
