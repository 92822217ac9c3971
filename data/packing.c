// data/packing.c: first-fit packing (see data/packing.h).
#include "data/packing.h"

#include <stdlib.h>

int pack_first_fit(const int *lengths, int n, int max_seq, int *row_of) {
    int *used = (int *)malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));   // tokens in each sequence so far
    if (!used) return -1;
    int rows = 0;
    for (int i = 0; i < n; i++) {
        if (lengths[i] > max_seq) { rows = -1; break; }
        int r = 0;
        while (r < rows && used[r] + lengths[i] > max_seq) r++;
        if (r == rows) used[rows++] = 0;
        used[r] += lengths[i];
        row_of[i] = r;
    }
    free(used);
    return rows;
}
