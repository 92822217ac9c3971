// data/packing.h: first-fit packing of samples into sequences of at most
// max_seq tokens: ./train --pack builds its sequences with it, and ./prepare
// reports how full they would be.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

// Puts sample i (lengths[i] tokens, each at most max_seq) into the first
// sequence that still has room for it, taking the samples in the order given;
// row_of[i] gets its sequence's index. Returns the number of sequences, or -1
// when a sample is longer than max_seq.
int pack_first_fit(const int *lengths, int n, int max_seq, int *row_of);

#ifdef __cplusplus
}
#endif
