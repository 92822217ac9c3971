// eval/wordpiece.h: BERT's tokenizer (uncased), as the sentence encoder of
// eval/embed.h uses it: the same ids as Hugging Face's BertTokenizerFast
// (tokenizers' BertNormalizer + BertPreTokenizer + WordPiece + the
// "[CLS] text [SEP]" template) for uncased vocabularies.
//
// Unlike the byte-level BPE of tokenizer.h, WordPiece cannot spell every
// string: a word it cannot build from its pieces becomes [UNK].
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct WordPiece WordPiece;   // defined in eval/wordpiece.c

// Reads a vocab.txt (one token per line, the id is the line number, counting
// from 0). It must hold [UNK], [CLS] and [SEP]. Returns NULL with
// "PATH: line L: what is wrong" (or "PATH: what is wrong") in err on error.
WordPiece *wordpiece_load(const char *vocab_path, char *err, size_t err_size);
void wordpiece_free(WordPiece *t);

int wordpiece_vocab_size(const WordPiece *t);
// The vocabulary string of an id ("##ing" for a word continuation), or NULL.
const char *wordpiece_token(const WordPiece *t, int id);

// Encodes len bytes of UTF-8 text into *ids (malloc'd, caller frees):
// [CLS], the word pieces, [SEP]. When there are more than max_tokens - 2
// pieces, the rest are dropped (as sentence-transformers truncates to
// max_seq_length). Returns the count, or -1 when max_tokens < 2 or memory runs
// out. Invalid UTF-8 bytes are dropped (HF reads them as U+FFFD, which its
// normalizer removes). The special tokens [CLS], [SEP], [PAD], [MASK] and
// [UNK] written in the text, exactly so, become their ids, as in HF.
int wordpiece_encode(const WordPiece *t, const char *text, size_t len, int max_tokens, int **ids);

#ifdef __cplusplus
}
#endif
