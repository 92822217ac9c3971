// data/faq.c: the Debian FAQ's HTML turned into documents and questions (see
// faq.h), with a small HTML-to-text converter that knows the few things
// DocBook's output needs: block tags, list items, <pre>, entities.
#include "data/faq.h"
#include "data/raft_build.h"

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- HTML to text -----------------------------------------------------------

// What must come before the next character written: nothing, a space, a line
// break, or a line break and a list bullet (each includes the ones before it).
enum { BREAK_NONE, BREAK_SPACE, BREAK_LINE, BREAK_BULLET };

typedef struct {
    char *text;
    size_t len, capacity;
    int pending;      // BREAK_*
    int in_pre;       // inside <pre>: whitespace kept as it is
    int failed;       // out of memory
} TextOut;

static void put_byte(TextOut *out, char c) {
    if (out->len + 2 > out->capacity) {
        size_t bigger_capacity = out->capacity ? out->capacity * 2 : 256;
        char *bigger = (char *)realloc(out->text, bigger_capacity);
        if (!bigger) { out->failed = 1; return; }
        out->text = bigger;
        out->capacity = bigger_capacity;
    }
    out->text[out->len++] = c;
}

static void trim_trailing_spaces(TextOut *out) {
    while (out->len > 0 && out->text[out->len - 1] == ' ') out->len--;
}

// Writes c after whatever break is pending (none at the very start).
static void put_char(TextOut *out, char c) {
    if (out->len > 0 && out->pending >= BREAK_LINE) {
        trim_trailing_spaces(out);
        if (out->text[out->len - 1] != '\n') put_byte(out, '\n');
    } else if (out->len > 0 && out->pending == BREAK_SPACE) {
        char last = out->text[out->len - 1];
        if (last != ' ' && last != '\n') put_byte(out, ' ');
    }
    if (out->pending == BREAK_BULLET) {
        put_byte(out, '-');
        put_byte(out, ' ');
    }
    out->pending = BREAK_NONE;
    put_byte(out, c);
}

static void want_break(TextOut *out, int kind) {
    if (kind > out->pending) out->pending = kind;
}

static void put_utf8(TextOut *out, unsigned cp) {
    if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;   // not a character
    if (cp < 0x80) { put_char(out, (char)cp); return; }
    if (cp < 0x800) {
        put_char(out, (char)(0xC0 | (cp >> 6)));
    } else if (cp < 0x10000) {
        put_char(out, (char)(0xE0 | (cp >> 12)));
        put_char(out, (char)(0x80 | ((cp >> 6) & 0x3F)));
    } else {
        put_char(out, (char)(0xF0 | (cp >> 18)));
        put_char(out, (char)(0x80 | ((cp >> 12) & 0x3F)));
        put_char(out, (char)(0x80 | ((cp >> 6) & 0x3F)));
    }
    put_char(out, (char)(0x80 | (cp & 0x3F)));
}

// Decodes the entity at html[i] ('&'); returns the bytes it used (writes '&'
// alone when it is not an entity we know).
static size_t put_entity(TextOut *out, const char *html, size_t i, size_t len) {
    static const struct { const char *name; unsigned cp; } NAMED[] = {
        {"lt", '<'}, {"gt", '>'}, {"amp", '&'}, {"quot", '"'}, {"apos", '\''}, {"nbsp", ' '},
    };
    size_t end = i + 1;
    while (end < len && end - i < 12 && html[end] != ';') end++;
    if (end >= len || html[end] != ';') { put_char(out, '&'); return 1; }
    const char *name = html + i + 1;
    size_t name_len = end - i - 1;
    if (name_len >= 2 && name[0] == '#') {
        int hex = name[1] == 'x' || name[1] == 'X';
        unsigned cp = (unsigned)strtoul(name + 1 + hex, NULL, hex ? 16 : 10);
        put_utf8(out, cp);
        return end - i + 1;
    }
    for (size_t k = 0; k < sizeof NAMED / sizeof NAMED[0]; k++)
        if (strlen(NAMED[k].name) == name_len && strncmp(name, NAMED[k].name, name_len) == 0) {
            if (NAMED[k].cp == ' ') want_break(out, BREAK_SPACE);
            else put_char(out, (char)NAMED[k].cp);
            return end - i + 1;
        }
    put_char(out, '&');
    return 1;
}

static int tag_is(const char *name, size_t name_len, const char *tag) {
    return strlen(tag) == name_len && strncmp(name, tag, name_len) == 0;
}

// What a tag does to the text: block tags break the line, <li> starts a
// bullet, table cells are spaced, <pre> keeps whitespace.
static void apply_tag(TextOut *out, const char *name, size_t name_len, int closing) {
    static const char *const BLOCKS[] = {"p", "div", "br", "dt", "dd", "tr", "table", "ul", "ol", "dl",
                                         "h1", "h2", "h3", "h4", "h5", "h6", "hr", "blockquote"};
    if (tag_is(name, name_len, "pre")) {
        out->in_pre = !closing;
        want_break(out, BREAK_LINE);
        return;
    }
    if (tag_is(name, name_len, "li") && !closing) { want_break(out, BREAK_BULLET); return; }
    if (tag_is(name, name_len, "td") || tag_is(name, name_len, "th")) { want_break(out, BREAK_SPACE); return; }
    for (size_t k = 0; k < sizeof BLOCKS / sizeof BLOCKS[0]; k++)
        if (tag_is(name, name_len, BLOCKS[k])) { want_break(out, BREAK_LINE); return; }
}

// Handles the tag or comment at html[i] ('<'); returns the bytes it used.
static size_t put_tag(TextOut *out, const char *html, size_t i, size_t len) {
    if (len - i >= 4 && strncmp(html + i, "<!--", 4) == 0) {
        const char *end = strstr(html + i, "-->");
        return end && (size_t)(end - html) < len ? (size_t)(end - html) + 3 - i : len - i;
    }
    size_t end = i + 1;
    while (end < len && html[end] != '>') end++;
    int closing = i + 1 < len && html[i + 1] == '/';
    size_t name_start = i + 1 + closing, name_end = name_start;
    while (name_end < end && ((html[name_end] >= 'a' && html[name_end] <= 'z') ||
                              (html[name_end] >= '0' && html[name_end] <= '9')))
        name_end++;
    apply_tag(out, html + name_start, name_end - name_start, closing);
    return end < len ? end - i + 1 : len - i;
}

char *html_to_text(const char *html, size_t len) {
    TextOut out;
    memset(&out, 0, sizeof out);
    size_t i = 0;
    while (i < len) {
        char c = html[i];
        if (c == '<') i += put_tag(&out, html, i, len);
        else if (c == '&') i += put_entity(&out, html, i, len);
        else if (out.in_pre) {
            // inside <pre> a line end is written as it is, not collapsed
            if (c == '\n') { trim_trailing_spaces(&out); put_byte(&out, '\n'); }
            else put_char(&out, c);
            i++;
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            want_break(&out, BREAK_SPACE);
            i++;
        } else if (i + 1 < len && (unsigned char)c == 0xC2 && (unsigned char)html[i + 1] == 0xA0) {
            want_break(&out, BREAK_SPACE);   // U+00A0, the no-break space, as a plain space
            i += 2;
        } else {
            put_char(&out, c);
            i++;
        }
    }
    while (out.len > 0 && (out.text[out.len - 1] == ' ' || out.text[out.len - 1] == '\n')) out.len--;
    put_byte(&out, '\0');
    if (out.failed) { free(out.text); return NULL; }
    return out.text;
}

// ---- answers ----------------------------------------------------------------------

// Tokens in the first len bytes of text.
static int count_tokens(const Tokenizer *t, const char *text, size_t len) {
    int *ids;
    int n = tokenizer_encode(t, text, len, 0, &ids);
    free(ids);
    return n;
}

static int ends_sentence(const char *text, size_t i) {
    char before = text[i - 1], here = text[i];
    return here == '\0' || here == '\n' ||
           ((before == '.' || before == '?' || before == '!') && here == ' ');
}

// The longest cut that fits when the first sentence does not: binary search
// over byte lengths (token counts grow with the length), then back to a space.
static size_t cut_inside_sentence(const char *text, size_t sentence_end, const Tokenizer *t, int max_tokens) {
    size_t low = 0, high = sentence_end;   // count(low) fits, count(high) does not
    while (high - low > 1) {
        size_t middle = low + (high - low) / 2;
        if (count_tokens(t, text, middle) <= max_tokens) low = middle;
        else high = middle;
    }
    // back up to the first byte of a UTF-8 character (continuation bytes are 10xxxxxx)
    while (low > 0 && ((unsigned char)text[low] & 0xC0) == 0x80) low--;
    size_t space = low;
    while (space > low / 2 && text[space] != ' ') space--;
    return text[space] == ' ' ? space : low;
}

char *faq_answer(const char *text, const Tokenizer *t, int max_tokens) {
    size_t len = strlen(text), cut = 0;
    for (size_t i = 1; i <= len; i++) {
        if (!ends_sentence(text, i)) continue;
        if (count_tokens(t, text, i) > max_tokens) {
            if (cut == 0) cut = cut_inside_sentence(text, i, t, max_tokens);
            break;
        }
        cut = i;
    }
    while (cut > 0 && (text[cut - 1] == ' ' || text[cut - 1] == '\n')) cut--;
    char *answer = (char *)malloc(cut + 1);
    if (!answer) return NULL;
    memcpy(answer, text, cut);
    answer[cut] = '\0';
    return answer;
}

// ---- sections -----------------------------------------------------------------------

// The next section heading at or after from: "<h2 class=\"title\"" (or h3, h4); NULL when none.
static const char *find_heading(const char *from) {
    for (const char *p = strstr(from, "<h"); p; p = strstr(p + 2, "<h"))
        if (p[2] >= '2' && p[2] <= '4' && strncmp(p + 3, " class=\"title\"", 14) == 0) return p;
    return NULL;
}

// Where the section text that starts at from ends: the next heading, or the
// chapter's footnotes or navigation footer.
static const char *section_end(const char *from) {
    const char *end = find_heading(from);
    const char *stops[2] = {strstr(from, "<div class=\"footnotes\""), strstr(from, "<div class=\"navfooter\"")};
    for (int i = 0; i < 2; i++)
        if (stops[i] && (!end || stops[i] < end)) end = stops[i];
    return end ? end : from + strlen(from);
}

// "7.3. Why are Debian package file names so long?" -> number "7.3" and the
// rest. Returns 0 when the heading starts with a section number.
static int split_number(const char *heading, char *number, size_t number_size, const char **rest) {
    size_t n = strspn(heading, "0123456789.");
    if (n < 2 || heading[n] != ' ' || n >= number_size) return -1;
    memcpy(number, heading, n);
    number[n - (heading[n - 1] == '.')] = '\0';
    *rest = heading + n + 1;
    return 0;
}

// The question for a heading: itself when it asks one, else a question about it; malloc'd.
static char *question_for(const char *heading) {
    size_t len = strlen(heading);
    if (strchr(heading, '?')) return strdup(heading);
    const char *format = text_has_hangul(heading) ? "데비안 FAQ는 \"%s\"에 대해 무엇이라고 하나요?"
                                                  : "What does the Debian FAQ say about \"%s\"?";
    size_t size = strlen(format) + len + 1;
    char *question = (char *)malloc(size);
    if (question) snprintf(question, size, format, heading);
    return question;
}

// Adds one section (heading text and body HTML) as a document and a question.
static int add_section(Collection *c, Report *r, const char *path, const char *lang, const char *heading,
                       const char *body_html, size_t body_len, const Tokenizer *t, int answer_tokens) {
    char number[64], where[4200], id[128];
    const char *title;
    if (split_number(heading, number, sizeof number, &title) != 0) return 0;   // not a numbered section
    snprintf(where, sizeof where, "%s: section %s", path, number);
    snprintf(id, sizeof id, "%s:%s", lang, number);
    char *body = html_to_text(body_html, body_len);
    char *question = question_for(title);
    char *answer = body ? faq_answer(body, t, answer_tokens) : NULL;
    int status;
    if (!body || !question || !answer) {
        fprintf(stderr, "%s: out of memory\n", where);
        status = -1;
    } else if (body[0] == '\0') {
        status = report_drop(r, DROP_MISSING, where, "the section has no text of its own (only subsections)");
    } else {
        status = collection_add_document(c, r, where, id, title, body);
        if (status == 0 && string_map_get(&c->ids, id, strlen(id)) >= 0)
            status = collection_add_pair(c, r, where, question, answer, id);
    }
    free(body);
    free(question);
    free(answer);
    return status;
}

// Adds every numbered section of one HTML file. Returns the number of sections, or -1.
static int read_html_file(Collection *c, Report *r, const char *path, const char *lang, const Tokenizer *t,
                          int answer_tokens, char *err, size_t err_size) {
    size_t len;
    char *html = read_file(path, &len, err, err_size);
    if (!html) return -1;
    int sections = 0, status = 0;
    for (const char *h = find_heading(html); h && status == 0; h = find_heading(h + 1)) {
        const char *heading_start = strchr(h, '>');
        char closing[6] = {'<', '/', 'h', h[2], '>', '\0'};
        const char *heading_end = heading_start ? strstr(heading_start, closing) : NULL;
        if (!heading_end) break;
        char *heading = html_to_text(heading_start + 1, (size_t)(heading_end - heading_start - 1));
        const char *body = heading_end + 5;
        if (!heading) { snprintf(err, err_size, "%s: out of memory", path); status = -1; break; }
        r->lines++;
        status = add_section(c, r, path, lang, heading, body, (size_t)(section_end(body) - body), t, answer_tokens);
        if (status != 0) snprintf(err, err_size, "%s: stopped at the first bad section (--strict)", path);
        sections++;
        free(heading);
    }
    free(html);
    return status == 0 ? sections : -1;
}

int faq_read(Collection *c, Report *r, const char *dir, const char *lang, const Tokenizer *t, int answer_tokens,
             char *err, size_t err_size) {
    char folder[4096], pattern[4200];
    snprintf(folder, sizeof folder, "%s/%s%s", dir, FAQ_HTML_DIR, strcmp(lang, "ko") == 0 ? "/ko" : "");
    snprintf(pattern, sizeof pattern, "%s/*.%s.html", folder, lang);
    glob_t files;   // glob sorts the names
    if (glob(pattern, 0, NULL, &files) != 0) {
        snprintf(err, err_size, "%s: no *.%s.html files: the Debian FAQ is not there (run make, or dev/fetch/fetch_faq.sh, "
                 "to fetch it)", folder, lang);
        return -1;
    }
    int sections = 0, status = 0;
    for (size_t i = 0; i < files.gl_pathc && status == 0; i++) {
        const char *name = strrchr(files.gl_pathv[i], '/') + 1;
        if (strncmp(name, "index.", 6) == 0) continue;   // the table of contents
        int added = read_html_file(c, r, files.gl_pathv[i], lang, t, answer_tokens, err, err_size);
        if (added < 0) status = -1;
        else sections += added;
    }
    globfree(&files);
    if (status == 0 && sections == 0) {
        snprintf(err, err_size, "%s: no numbered sections in its *.%s.html files", folder, lang);
        status = -1;
    }
    return status;
}
