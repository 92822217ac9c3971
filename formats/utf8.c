// formats/utf8.c: see formats/utf8.h.
#include "formats/utf8.h"

#include <stdlib.h>
#include <string.h>

size_t utf8_sequence(const unsigned char *s, size_t n, int *valid) {
    unsigned char b = s[0], lo = 0x80, hi = 0xBF;
    size_t need;
    *valid = b < 0x80;
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) need = 1;
    else if (b >= 0xE0 && b <= 0xEF) need = 2;
    else if (b >= 0xF0 && b <= 0xF4) need = 3;
    else return 1;   // a continuation byte, C0, C1 or F5..FF
    if (b == 0xE0) lo = 0xA0;   // no overlong forms
    if (b == 0xED) hi = 0x9F;   // no surrogates
    if (b == 0xF0) lo = 0x90;   // no overlong forms
    if (b == 0xF4) hi = 0x8F;   // nothing above U+10FFFF
    size_t i = 1;
    for (; i <= need && i < n; i++) {
        unsigned char low = i == 1 ? lo : 0x80, high = i == 1 ? hi : 0xBF;
        if (s[i] < low || s[i] > high) break;
    }
    *valid = i > need;
    return i;
}

size_t utf8_incomplete_tail(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    // a lead byte is at most 3 bytes from the end; only it can start the tail
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        if ((u[n - back] & 0xC0) == 0x80) continue;   // a continuation byte
        int valid;
        size_t len = utf8_sequence(u + n - back, back, &valid);
        // cut by the end, not ill-formed: the bytes fit so far and the end stopped them
        return !valid && len == back && u[n - back] >= 0xC2 && u[n - back] <= 0xF4 ? back : 0;
    }
    return 0;
}

char *utf8_clean(const char *text, size_t len, size_t *out_len) {
    char *out = (char *)malloc(3 * len + 1);
    if (!out) return NULL;
    const unsigned char *s = (const unsigned char *)text;
    size_t pos = 0;
    for (size_t i = 0; i < len;) {
        int valid;
        size_t n = utf8_sequence(s + i, len - i, &valid);
        if (valid) memcpy(out + pos, s + i, n), pos += n;
        else memcpy(out + pos, UTF8_REPLACEMENT, 3), pos += 3;
        i += n;
    }
    out[pos] = '\0';
    *out_len = pos;
    return out;
}

size_t utf8_bom_length(const char *s, size_t n) { return n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0; }
