// formats/tensor_layout.c: checks that tensors tile a file's data section (see formats/tensor_layout.h).
#include "formats/tensor_layout.h"

#include <stdio.h>
#include <stdlib.h>

static int compare_places(const void *a, const void *b) {
    const TensorPlace *x = (const TensorPlace *)a, *y = (const TensorPlace *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

// x rounded up to a multiple of alignment.
static uint64_t align_up(uint64_t x, uint64_t alignment) { return (x + alignment - 1) / alignment * alignment; }

static unsigned long long end_of(const TensorPlace *p) { return (unsigned long long)(p->begin + p->nbytes); }

// p starts at p->begin where the tiling needs `expected`; previous is the tensor before (NULL: none).
static void report_misplaced(const TensorPlace *p, const TensorPlace *previous, uint64_t expected, const char *path,
                             char *err, size_t err_size) {
    if (previous && p->begin < expected) {
        snprintf(err, err_size, "%s: tensor '%s': data bytes [%llu, %llu) overlap tensor '%s' [%llu, %llu)", path,
                 p->name, (unsigned long long)p->begin, end_of(p), previous->name,
                 (unsigned long long)previous->begin, end_of(previous));
    } else if (previous) {
        snprintf(err, err_size, "%s: data bytes [%llu, %llu) between tensor '%s' and tensor '%s' belong to no "
                 "tensor: the type or shape of '%s' is wrong, or an offset lies", path, end_of(previous),
                 (unsigned long long)p->begin, previous->name, p->name, previous->name);
    } else {
        snprintf(err, err_size, "%s: data bytes [0, %llu) belong to no tensor: the first, '%s', starts at %llu", path,
                 (unsigned long long)p->begin, p->name, (unsigned long long)p->begin);
    }
}

// The data section runs `extra` bytes past the end of its last tensor (NULL: it has none).
static void report_trailing(const TensorPlace *last, uint64_t extra, const char *path, char *err, size_t err_size) {
    if (!last) {
        snprintf(err, err_size, "%s: the file has %llu bytes of data but no tensor", path, (unsigned long long)extra);
        return;
    }
    snprintf(err, err_size, "%s: the last %llu bytes of the file belong to no tensor: the last tensor, '%s', ends at "
             "data byte %llu (its type or shape is wrong, or the file has trailing bytes)", path,
             (unsigned long long)extra, last->name, end_of(last));
}

int tensor_places_check(TensorPlace *places, int n, uint64_t alignment, uint64_t data_size, const char *path,
                        char *err, size_t err_size) {
    qsort(places, (size_t)n, sizeof *places, compare_places);
    uint64_t expected = 0;   // where the next tensor must start
    const TensorPlace *previous = NULL;
    for (int i = 0; i < n; i++) {
        const TensorPlace *p = &places[i];
        if (p->begin > data_size || p->nbytes > data_size - p->begin) {
            snprintf(err, err_size, "%s: tensor '%s': data bytes [%llu, %llu) lie outside the file (%llu data bytes)",
                     path, p->name, (unsigned long long)p->begin, end_of(p), (unsigned long long)data_size);
            return -1;
        }
        if (p->begin != expected) {
            report_misplaced(p, previous, expected, path, err, err_size);
            return -1;
        }
        expected = align_up(p->begin + p->nbytes, alignment);
        previous = p;
    }
    uint64_t data_end = previous ? previous->begin + previous->nbytes : 0;
    if (data_size > align_up(data_end, alignment)) {
        report_trailing(previous, data_size - data_end, path, err, err_size);
        return -1;
    }
    return 0;
}
