// chat_template.h: the chat template families we render (ChatML, Llama-3,
// Llama-3.1, EXAONE 3), recognised from the model's Jinja template string
// (tokenizer_config.json's chat_template, GGUF's tokenizer.chat_template).
// We do not run Jinja: each family is described by its strings, and a
// conversation rendered from them equals, character for character, what
// transformers' apply_chat_template renders from the family's real template
// (test/fixtures/chat_templates/, dev/fixtures/make_chat_template_fixtures.py).
// A message is rendered as
//   header_start + role + header_end + content + footer
// (user_footer for the user's messages), the conversation as
//   [bos_token] [default system message] messages [header of "assistant"].
// The answer of an assistant message is its content and the end-of-turn
// token that closes it (footer starts with end_of_turn).
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *role;
    const char *content;
} ChatMessage;

typedef struct {
    const char *name;             // what --template takes: "chatml", "llama3", "llama3.1", "exaone"
    const char *marker;           // a template holding this string ...
    const char *also;             // ... and this one (NULL: no second marker) ...
    const char *never[2];         // ... and neither of these (other families that share the marker; NULL: none)
    int bos;                      // 1: the conversation starts with the tokenizer's bos_token
    const char *header_start, *header_end;
    const char *footer;           // after the content of system and assistant messages
    const char *user_footer;      // after the content of user messages
    const char *end_of_turn;      // the token that closes a turn: the generation stop
    int trim;                     // 1: contents are stripped of leading and trailing whitespace (Jinja's trim)
    const char *system_preamble;  // before the content of a first system message ("" none)
    const char *system_literal;   // where a template writes its default system message: this, then
                                  // the message up to end_of_turn (NULL: the family's own, below)
    const char *default_system;   // the default system message without a template saying one (NULL: none)
    const char *jinja;            // a template rendering what we render ({#SYSTEM#}: the default system turn)
} ChatFamily;

// The family named name, or NULL.
const ChatFamily *chat_family_named(const char *name);
// The family a Jinja template belongs to, or NULL when it matches none.
const ChatFamily *chat_family_recognise(const char *jinja);
// "chatml, llama3, llama3.1, exaone": the names --template takes.
const char *chat_family_names(void);

// The default system message a template of family f writes when the
// conversation opens without one: the text after f->system_literal (and
// "\n", written as such or as the escape \n) up to f->end_of_turn, when it is
// a plain string literal. Malloc'd, or NULL when the template has none (or
// out of memory: *failed is then set).
char *chat_default_system(const ChatFamily *f, const char *jinja, int *failed);

// The Jinja template that renders what chat_render renders with this default
// system message (NULL: none). Malloc'd; NULL when out of memory.
char *chat_family_jinja(const ChatFamily *f, const char *default_system);

// A rendered conversation: the text and where each answer lies in it.
typedef struct {
    char *text;
    size_t len;
    size_t *answer_start, *answer_end;   // [n_answers] byte ranges of text
    int n_answers;
} ChatText;

// Renders messages with family f. bos_text: the tokenizer's bos_token (used
// when f->bos; NULL when it has none); default_system: the message a
// conversation that does not open with a system message gets (NULL: none).
// 0, or -1 when out of memory.
int chat_render(const ChatFamily *f, const char *bos_text, const char *default_system, const ChatMessage *messages,
                int n_messages, int add_generation_prompt, ChatText *out);
void chat_text_free(ChatText *c);

#ifdef __cplusplus
}
#endif
