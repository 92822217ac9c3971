// tokenizer.h: byte-level BPE (GPT-2 / SmolLM2 / Llama-3 / Qwen2 style),
// loaded from GGUF metadata or a Hugging Face tokenizer.json, plus chats
// rendered with the model's chat template (chat_template.h) and encoded with
// a per-token "this is the assistant's answer" flag.
#pragma once
#include <stddef.h>
#include "formats/gguf.h"
#include "chat_template.h"

#ifdef __cplusplus
extern "C" {
#endif

// How text is split into words before BPE (the pre-tokenizer regex).
typedef enum {
    PRETOK_GPT2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    PRETOK_SMOLLM,  // every digit on its own, then the GPT-2 regex (SmolLM/StarCoder)
    PRETOK_LLAMA3,  // Llama-3 regex: numbers in runs of up to 3 digits
    PRETOK_QWEN2    // Llama-3 regex with single digits (and NFC normalisation)
} PreTokenizer;

typedef struct Tokenizer Tokenizer;   // defined in tokenizer.c

// What a vocabulary entry is; the values are llama.cpp's (GGUF's tokenizer.ggml.token_type).
typedef enum {
    TOKEN_NORMAL = 1,        // a BPE token
    TOKEN_CONTROL = 3,       // a special added token (<|im_start|>): matched only with allow_special
    TOKEN_USER_DEFINED = 4,  // an added token that is not special: matched in any text
    TOKEN_UNUSED = 5         // an id without a string (a vocabulary padded to the embedding's size)
} TokenType;

// Both loaders return NULL and write "path: what is wrong" into err on failure.
Tokenizer *tokenizer_from_gguf(const GGUFFile *f, char *err, size_t err_size);
// path: a tokenizer.json file. bos/eos come from the tokenizer_config.json
// next to it when there is one (bos_token / eos_token); without an eos there,
// eos is <|im_end|> when the vocabulary has it (ChatML models), else -1.
Tokenizer *tokenizer_from_json(const char *path, char *err, size_t err_size);
void tokenizer_free(Tokenizer *t);
// Writes dir/tokenizer.json (vocabulary, merges in rank order, added tokens,
// normalizer and pre-tokenizer, in the format HF `tokenizers` reads) and
// dir/tokenizer_config.json (bos/eos and tokenizer_chat_template's
// template). tokenizer_from_json reads
// them back to a tokenizer giving the same ids. The post-processor adds no
// BOS, as tokenizer_encode adds none. -1 with "PATH: what is wrong" in err.
int tokenizer_save_hf(const Tokenizer *t, const char *dir, char *err, size_t err_size);

int tokenizer_vocab_size(const Tokenizer *t);
PreTokenizer tokenizer_pretokenizer(const Tokenizer *t);
int tokenizer_bos_id(const Tokenizer *t);   // -1 when none
int tokenizer_eos_id(const Tokenizer *t);   // -1 when none
// The unknown and padding tokens the source names (GGUF's unknown_token_id and
// padding_token_id; tokenizer_config.json's unk_token and pad_token, else
// tokenizer.json's model.unk_token), kept for exports; -1 when none. Encoding
// uses only tokenizer.json's unk (GGUF files name one their BPE does not use).
int tokenizer_unk_id(const Tokenizer *t);
int tokenizer_pad_id(const Tokenizer *t);
// The vocabulary string of a token (byte-level mapped, as the files hold it);
// NULL for an unused or bad id.
const char *tokenizer_token_text(const Tokenizer *t, int id, size_t *len);
TokenType tokenizer_token_type(const Tokenizer *t, int id);
// The merges in rank order, as pairs of token ids: merge k joins
// (*pairs)[2k] and (*pairs)[2k + 1] (malloc'd, caller frees). Returns the
// count, or -1 when out of memory.
int tokenizer_merges(const Tokenizer *t, int **pairs);
// The pre-tokenizer's name in llama.cpp (tokenizer.ggml.pre): "gpt-2",
// "smollm", "llama-bpe", "qwen2".
const char *pretokenizer_gguf_name(PreTokenizer pre);
// The Jinja chat template: the source's (GGUF tokenizer.chat_template, or
// chat_template.jinja else tokenizer_config.json's chat_template string) when it had one and
// chat_encode renders its family (or it matches none), else the family's
// (chat_template.h) with the default system message, else NULL.
// Malloc'd (caller frees); NULL too when out of memory.
char *tokenizer_chat_template(const Tokenizer *t);

// The chat template family chat_encode renders (chat_template.h): at load, the
// one the source's template matches; without a template, ChatML for a
// vocabulary with <|im_start|> and <|im_end|> (SmolLM2's default system
// message for SmolLM tokenizers). NULL when there is none.
const ChatFamily *tokenizer_chat_family(const Tokenizer *t);
// How the family was chosen, for the programs to print ("the model's chat
// template", "--template", ...); NULL when there is none.
const char *tokenizer_chat_origin(const Tokenizer *t);
// The family's end-of-turn token (the generation stop), or -1.
int tokenizer_end_of_turn_id(const Tokenizer *t);
// What every program that renders chats calls once: name (--template NAME;
// NULL: the model's) chooses the family; -1 with err saying what is wrong
// (an unknown name, listing the names; a template matching no family; no
// template and no ChatML vocabulary; a vocabulary without the family's
// end-of-turn token), else 0.
int tokenizer_use_chat_template(Tokenizer *t, const char *name, char *err, size_t err_size);
// Id of a token given its vocabulary string (e.g. "<|im_end|>"), or -1.
int tokenizer_find(const Tokenizer *t, const char *token);

// Encodes len bytes of text into *ids (malloc'd, caller frees); returns the
// count, or -1 on allocation failure. Special/added tokens written in the
// text are matched first when allow_special is set. Invalid UTF-8 is replaced
// by U+FFFD per maximal ill-formed subpart (as Python's errors="replace").
// As in HF tokenizers and llama.cpp, added tokens that are not special (HF
// "special": false, GGUF token_type 4 user-defined) are matched even without
// allow_special, and a byte whose token the vocabulary lacks is dropped.
int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int allow_special, int **ids);

// The bytes a token stands for (byte-level mapping undone); NULL for a bad id.
const char *tokenizer_token_bytes(const Tokenizer *t, int id, size_t *len);
// Decodes ids to a malloc'd NUL-terminated UTF-8 string (length in *len), as
// HF's decode: bad ids are skipped, and bytes that do not make characters (an
// answer cut mid-character) become U+FFFD per maximal ill-formed subpart.
char *tokenizer_decode(const Tokenizer *t, const int *ids, int n, size_t *len);

// Decoding one token at a time (streamed output): each piece is valid UTF-8,
// the bytes of a character a later token may complete are held back. Start
// with TokenStream s = {0}.
typedef struct {
    char held[3];
    size_t n_held;
} TokenStream;
// The text token id completes (malloc'd, NUL-terminated, maybe ""; its length
// in *len), or NULL when memory runs out.
char *tokenizer_stream_next(const Tokenizer *t, TokenStream *stream, int id, size_t *len);
// The end of the stream: the bytes still held, a character cut short, as
// U+FFFD (or ""). Malloc'd; NULL when memory runs out.
char *tokenizer_stream_end(TokenStream *stream, size_t *len);

// The conversation rendered with the tokenizer's chat family
// (chat_template.h: its default system message first when the first message
// is not "system", add_generation_prompt appends the assistant's header) and
// encoded as HF encodes the rendered string (special tokens in contents
// included). is_answer[i] is 1 for the tokens of assistant contents and the
// end-of-turn token that closes them, 0 otherwise; a token that spans the
// header's end and the start of an answer counts as answer. Returns the
// count, or -1 when the tokenizer has no chat family or its vocabulary no
// end-of-turn token (or memory runs out).
int chat_encode(const Tokenizer *t, const ChatMessage *messages, int n_messages,
                int add_generation_prompt, int **ids, unsigned char **is_answer);

#ifdef __cplusplus
}
#endif
