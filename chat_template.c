// chat_template.c: see chat_template.h.
#include "chat_template.h"

#include <stdlib.h>
#include <string.h>

// Where a family's Jinja template takes its default system turn.
static const char SYSTEM_PLACEHOLDER[] = "{#SYSTEM#}";

// The families. The strings are those of the real templates
// (test/fixtures/chat_templates/ holds them, with their sources).
static const ChatFamily FAMILIES[] = {
    {
        // SmolLM2, Qwen2/2.5 and the other ChatML models
        .name = "chatml", .marker = "<|im_start|>", .also = NULL, .never = {"<|im_sep|>", "<think>"}, .bos = 0,
        .header_start = "<|im_start|>", .header_end = "\n", .footer = "<|im_end|>\n", .user_footer = "<|im_end|>\n",
        .end_of_turn = "<|im_end|>", .trim = 0, .system_preamble = "", .system_literal = "<|im_start|>system",
        .default_system = NULL,
        .jinja = "{% for message in messages %}{#SYSTEM#}{{ '<|im_start|>' + message['role'] + '\n' + "
                 "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
                 "{{ '<|im_start|>assistant\n' }}{% endif %}",
    },
    {
        // Llama-3.1, 3.2 and 3.3: a system turn always, opening with the knowledge and
        // today's date (the templates' own date when the caller gives none)
        .name = "llama3.1", .marker = "<|start_header_id|>", .also = "Cutting Knowledge Date", .never = {NULL, NULL},
        .bos = 1, .header_start = "<|start_header_id|>", .header_end = "<|end_header_id|>\n\n",
        .footer = "<|eot_id|>", .user_footer = "<|eot_id|>", .end_of_turn = "<|eot_id|>", .trim = 1,
        .system_preamble = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
        .system_literal = NULL, .default_system = "",
        .jinja = "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = "
                 "messages[0]['content']|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set "
                 "system_message = \"\" %}{%- endif %}{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}"
                 "{{- 'Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n' }}{{- system_message }}"
                 "{{- '<|eot_id|>' }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
                 "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if "
                 "add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}",
    },
    {
        // Llama-3 (Meta-Llama-3-8B-Instruct): no system turn of its own
        .name = "llama3", .marker = "<|start_header_id|>", .also = NULL, .never = {NULL, NULL}, .bos = 1,
        .header_start = "<|start_header_id|>", .header_end = "<|end_header_id|>\n\n", .footer = "<|eot_id|>",
        .user_footer = "<|eot_id|>", .end_of_turn = "<|eot_id|>", .trim = 1, .system_preamble = "",
        .system_literal = NULL, .default_system = NULL,
        .jinja = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                 "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
                 "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                 "{{ content }}{% endfor %}{% if add_generation_prompt %}"
                 "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    },
    {
        // EXAONE 3.0 and 3.5: an empty system turn when the conversation has none;
        // the user's turns end with a newline only
        .name = "exaone", .marker = "[|endofturn|]", .also = NULL, .never = {"<thought>", NULL}, .bos = 0,
        .header_start = "[|", .header_end = "|]", .footer = "[|endofturn|]\n", .user_footer = "\n",
        .end_of_turn = "[|endofturn|]", .trim = 0, .system_preamble = "", .system_literal = "[|system|]",
        .default_system = "",
        .jinja = "{% for message in messages %}{#SYSTEM#}{{ '[|' + message['role'] + '|]' + message['content'] }}"
                 "{% if message['role'] == 'user' %}{{ '\n' }}{% else %}{{ '[|endofturn|]\n' }}{% endif %}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}",
    },
};
static const int N_FAMILIES = (int)(sizeof FAMILIES / sizeof FAMILIES[0]);

const ChatFamily *chat_family_named(const char *name) {
    for (int i = 0; i < N_FAMILIES; i++)
        if (strcmp(FAMILIES[i].name, name) == 0) return &FAMILIES[i];
    return NULL;
}

const char *chat_family_names(void) { return "chatml, llama3, llama3.1, exaone"; }

static int matches(const ChatFamily *f, const char *jinja) {
    if (!strstr(jinja, f->marker) || (f->also && !strstr(jinja, f->also))) return 0;
    for (int i = 0; i < 2; i++)
        if (f->never[i] && strstr(jinja, f->never[i])) return 0;
    return 1;
}

// The first family that matches: llama3.1 is tried before llama3, whose marker it shares.
const ChatFamily *chat_family_recognise(const char *jinja) {
    for (int i = 0; i < N_FAMILIES; i++)
        if (matches(&FAMILIES[i], jinja)) return &FAMILIES[i];
    return NULL;
}

// The default message at `at` (just after the system literal): "\n" or the
// escape \n for ChatML's header, then plain text up to end_of_turn. NULL when
// it is not a plain literal (an expression, quotes, escapes).
static char *literal_message(const ChatFamily *f, const char *at, int *failed) {
    const char *newline_end = f->header_end;   // ChatML: the header's "\n"; EXAONE: "|]" is part of the literal
    if (strcmp(newline_end, "\n") == 0) {
        if (*at == '\n') at++;
        else if (at[0] == '\\' && at[1] == 'n') at += 2;
        else return NULL;
    }
    const char *end = strstr(at, f->end_of_turn);
    if (!end) return NULL;
    for (const char *c = at; c < end; c++)
        if (*c == '\'' || *c == '"' || *c == '\\' || *c == '{' || *c == '}') return NULL;
    char *message = strndup(at, (size_t)(end - at));
    if (!message) *failed = 1;
    return message;
}

char *chat_default_system(const ChatFamily *f, const char *jinja, int *failed) {
    *failed = 0;
    if (!f->system_literal) {
        char *message = f->default_system ? strdup(f->default_system) : NULL;
        *failed = f->default_system && !message;
        return message;
    }
    size_t literal_len = strlen(f->system_literal);
    for (const char *at = strstr(jinja, f->system_literal); at; at = strstr(at + 1, f->system_literal)) {
        char *message = literal_message(f, at + literal_len, failed);
        if (message || *failed) return message;
    }
    return NULL;
}

// ---- the Jinja template of a family ------------------------------------------

typedef struct {
    char *text;
    size_t len, cap;
    int failed;
} Buffer;

static void append(Buffer *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap) cap *= 2;
        char *bigger = (char *)realloc(b->text, cap);
        if (!bigger) {
            b->failed = 1;
            return;
        }
        b->text = bigger;
        b->cap = cap;
    }
    memcpy(b->text + b->len, s, n);
    b->len += n;
    b->text[b->len] = '\0';
}

static void append_string(Buffer *b, const char *s) { append(b, s, strlen(s)); }

// s inside a single-quoted Jinja string: quotes and backslashes escaped.
static void append_quoted(Buffer *b, const char *s) {
    for (; *s; s++) {
        if (*s == '\'' || *s == '\\') append(b, "\\", 1);
        append(b, s, 1);
    }
}

// The default system turn, as the family's Jinja template writes it.
static void append_system_turn(Buffer *b, const ChatFamily *f, const char *default_system) {
    if (!default_system) return;
    append_string(b, "{% if loop.first and messages[0]['role'] != 'system' %}{{ '");
    append_quoted(b, f->header_start);
    append_string(b, "system");
    append_quoted(b, f->header_end);
    append_quoted(b, default_system);
    append_quoted(b, f->footer);
    append_string(b, "' }}{% endif %}");
}

char *chat_family_jinja(const ChatFamily *f, const char *default_system) {
    Buffer b = {0};
    const char *placeholder = strstr(f->jinja, SYSTEM_PLACEHOLDER);
    if (!placeholder) {
        append_string(&b, f->jinja);
    } else {
        append(&b, f->jinja, (size_t)(placeholder - f->jinja));
        append_system_turn(&b, f, default_system);
        append_string(&b, placeholder + strlen(SYSTEM_PLACEHOLDER));
    }
    if (!b.failed) return b.text;
    free(b.text);
    return NULL;
}

// ---- rendering ----------------------------------------------------------------

typedef struct {
    Buffer text;
    size_t *starts, *ends;
    int n_answers, cap_answers;
} Rendering;

// Jinja's trim (Python's str.strip): the ASCII whitespace at both ends.
static const char *trimmed(const char *s, size_t *len) {
    static const char WHITESPACE[] = " \t\n\r\v\f\x1c\x1d\x1e\x1f";
    size_t n = strlen(s);
    while (n > 0 && strchr(WHITESPACE, s[n - 1])) n--;
    while (n > 0 && strchr(WHITESPACE, *s)) { s++; n--; }
    *len = n;
    return s;
}

static void add_answer(Rendering *r, size_t start, size_t end) {
    if (r->n_answers == r->cap_answers) {
        int cap = r->cap_answers ? 2 * r->cap_answers : 4;
        size_t *starts = (size_t *)realloc(r->starts, sizeof(size_t) * (size_t)cap);
        if (starts) r->starts = starts;
        size_t *ends = (size_t *)realloc(r->ends, sizeof(size_t) * (size_t)cap);
        if (ends) r->ends = ends;
        if (!starts || !ends) {
            r->text.failed = 1;
            return;
        }
        r->cap_answers = cap;
    }
    r->starts[r->n_answers] = start;
    r->ends[r->n_answers++] = end;
}

static void render_header(Rendering *r, const ChatFamily *f, const char *role) {
    append_string(&r->text, f->header_start);
    append_string(&r->text, role);
    append_string(&r->text, f->header_end);
}

// One message; first_system: the conversation's opening system message (it gets the preamble).
static void render_message(Rendering *r, const ChatFamily *f, const char *role, const char *content, int first_system) {
    render_header(r, f, role);
    if (first_system) append_string(&r->text, f->system_preamble);
    size_t len = strlen(content);
    if (f->trim) content = trimmed(content, &len);
    size_t start = r->text.len;
    append(&r->text, content, len);
    int is_user = strcmp(role, "user") == 0;
    if (strcmp(role, "assistant") == 0) add_answer(r, start, r->text.len + strlen(f->end_of_turn));
    append_string(&r->text, is_user ? f->user_footer : f->footer);
}

int chat_render(const ChatFamily *f, const char *bos_text, const char *default_system, const ChatMessage *messages,
                int n_messages, int add_generation_prompt, ChatText *out) {
    Rendering r = {0};
    append(&r.text, "", 0);   // an empty conversation is still a string
    if (f->bos && bos_text) append_string(&r.text, bos_text);
    int opens_with_system = n_messages > 0 && strcmp(messages[0].role, "system") == 0;
    if (!opens_with_system && default_system && (n_messages > 0 || f->system_preamble[0]))
        render_message(&r, f, "system", default_system, 1);
    for (int i = 0; i < n_messages; i++)
        render_message(&r, f, messages[i].role, messages[i].content, i == 0 && opens_with_system);
    if (add_generation_prompt) render_header(&r, f, "assistant");
    memset(out, 0, sizeof *out);
    if (r.text.failed) {
        free(r.text.text);
        free(r.starts);
        free(r.ends);
        return -1;
    }
    *out = (ChatText){r.text.text, r.text.len, r.starts, r.ends, r.n_answers};
    return 0;
}

void chat_text_free(ChatText *c) {
    free(c->text);
    free(c->answer_start);
    free(c->answer_end);
    memset(c, 0, sizeof *c);
}
