// formats/utf8.h: UTF-8 as Unicode's "best practice" reads it (Python's
// errors="replace", Rust's from_utf8_lossy, so HF's decode): each maximal
// ill-formed subpart is one U+FFFD. The JSON reader and writer and the
// tokenizer's encode and decode all go through it.
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// U+FFFD REPLACEMENT CHARACTER in UTF-8.
#define UTF8_REPLACEMENT "\xEF\xBF\xBD"

// Length of the UTF-8 sequence at s (n > 0 bytes available) when *valid, else
// of its maximal ill-formed subpart (a lead byte and the continuation bytes
// that fit it, or one byte that cannot start a character).
size_t utf8_sequence(const unsigned char *s, size_t n, int *valid);

// Bytes at the end of s that start a character and could still complete it
// with more bytes (a token stream cut mid-character): hold them back. 0..3.
size_t utf8_incomplete_tail(const char *s, size_t n);

// 3 when s (n bytes) starts with a UTF-8 byte-order mark (EF BB BF, as some
// editors write), else 0: the bytes to skip, the mark being no part of the text.
size_t utf8_bom_length(const char *s, size_t n);

// A malloc'd NUL-terminated copy of len bytes of text with each maximal
// ill-formed subpart replaced by U+FFFD; its length in *out_len. NULL when
// memory runs out.
char *utf8_clean(const char *text, size_t len, size_t *out_len);

#ifdef __cplusplus
}
#endif
