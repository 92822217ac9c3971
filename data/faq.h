// data/faq.h: the Debian FAQ (Debian packages debian-faq and debian-faq-ko,
// fetched by dev/fetch/fetch_faq.sh) as a document collection for RAFT. Every
// numbered section of the HTML (the <h2>, <h3> and <h4> headings) is a
// document; its heading is the question and its text the source of the
// answer, which is the section's beginning, trimmed to a sensible length in
// tokens (Korean costs SmolLM2's tokenizer about 2 tokens a character,
// English about 1 token in 4 characters, so a length in bytes would not do).
#pragma once
#include <stddef.h>
#include "tokenizer.h"
#include "data/collection.h"

#ifdef __cplusplus
extern "C" {
#endif

// Where dpkg-deb -x puts the HTML, under the unpacking folder.
#define FAQ_HTML_DIR "usr/share/doc/debian/FAQ"

// Adds the sections of one language to c: lang "en" reads FAQ_HTML_DIR/*.en.html,
// "ko" FAQ_HTML_DIR/ko/*.ko.html (the table of contents, index.*.html, is
// skipped), files in name order. Per section: the document id "LANG:NUMBER"
// (e.g. "en:7.3"), title the heading without its number, text the section's
// own text (up to its first subsection); the question is the heading (one
// that is not a question, like "Authors", is asked as "What does the Debian
// FAQ say about \"Authors\"?", in Korean for a Korean heading); the answer
// is faq_answer(text, t, answer_tokens). A section without text of its own
// is counted as a missing value. Returns -1 with "PATH: why" in err when the
// folder or its files cannot be read or hold no section.
int faq_read(Collection *c, Report *r, const char *dir, const char *lang, const Tokenizer *t, int answer_tokens,
             char *err, size_t err_size);

// The text of an HTML fragment, malloc'd: tags removed, entities (&lt; &#8220;
// ...) decoded, whitespace collapsed except inside <pre>, one line per
// paragraph or block, list items starting with "- ".
char *html_to_text(const char *html, size_t len);

// The longest beginning of text that ends a sentence (before ". ", "? ",
// "! ", a line end, or the end of the text) and encodes to at most max_tokens
// tokens; when even the first sentence is longer, the longest beginning that
// fits, cut after a word (or a whole character). malloc'd.
char *faq_answer(const char *text, const Tokenizer *t, int max_tokens);

#ifdef __cplusplus
}
#endif
