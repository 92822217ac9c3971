// eval/embed.h: sentence embeddings with all-MiniLM-L6-v2 (sentence-transformers),
// the meaning metric of ./evaluate: text -> WordPiece ids -> a 6-layer BERT
// encoder -> the mean of its output vectors over the tokens -> scaled to
// length 1. The cosine of two such vectors (their dot product) is high when
// the texts mean the same thing, even in other words.
//
// The network, for ids t_0 .. t_{n-1} ([CLS] ... [SEP]):
//   x_i = LayerNorm(word[t_i] + position[i] + token_type[0])
//   per layer:  x = LayerNorm(x + Attention(x))      (bidirectional, all heads)
//               x = LayerNorm(x + W2 gelu(W1 x + b1) + b2)
//   embedding = normalize(mean_i x_i)
//
// The model is English-centred: its 30522-piece vocabulary holds almost no
// Korean. Korean syllables are decomposed (NFD) into their jamo, one piece
// each, so a Korean sentence becomes a long run of single letters whose
// embedding says little about its meaning. Measured on the fixture of
// dev/fixtures/make_embed_fixtures.py: a Korean paraphrase pair scores 0.79 and
// unrelated Korean pairs 0.80 and 0.62; a Korean sentence and its English
// translation 0.35, against 0.25 for an unrelated one (English: paraphrases
// 0.61 to 0.97, unrelated pairs -0.02 to 0.08). Use it on English text; read
// Korean scores as noise.
#pragma once
#include <stddef.h>
#include "eval/wordpiece.h"

#ifdef __cplusplus
extern "C" {
#endif

// Where `make fetch` puts the model (dev/fetch/fetch_embedder.sh).
#define EMBED_DEFAULT_MODEL_DIR "models/all-MiniLM-L6-v2"

// The sizes, from the model directory's config.json (and max_tokens from
// sentence_bert_config.json's max_seq_length).
typedef struct {
    int vocab_size;      // 30522
    int dim;             // 384, hidden_size
    int n_layers;        // 6
    int n_heads;         // 12
    int head_dim;        // 32 = dim / n_heads
    int hidden_dim;      // 1536, intermediate_size of the feed-forward block
    int max_positions;   // 512, rows of the position table
    int n_token_types;   // 2
    float norm_eps;      // 1e-12, LayerNorm's epsilon
    int max_tokens;      // 256: longer texts are cut (sentence-transformers' max_seq_length)
} BertConfig;

// One encoder layer. Every linear map is y = x W^T + b with W [out, in].
typedef struct {
    const float *query_w, *query_b;         // [dim, dim], [dim]
    const float *key_w, *key_b;
    const float *value_w, *value_b;
    const float *attn_out_w, *attn_out_b;   // the attention's output projection
    const float *attn_norm_w, *attn_norm_b; // LayerNorm after the attention residual
    const float *ffn_in_w, *ffn_in_b;       // [hidden_dim, dim], [hidden_dim]
    const float *ffn_out_w, *ffn_out_b;     // [dim, hidden_dim], [dim]
    const float *ffn_norm_w, *ffn_norm_b;   // LayerNorm after the feed-forward residual
} BertLayer;

typedef struct {
    BertConfig config;
    float *weights;                          // every tensor below, in fp32, in one block
    const float *word_embeddings;            // [vocab_size, dim]
    const float *position_embeddings;        // [max_positions, dim]
    const float *token_type_embeddings;      // [n_token_types, dim]
    const float *embed_norm_w, *embed_norm_b;
    BertLayer *layers;                       // [n_layers]
    WordPiece *tokenizer;
} Embedder;

// Loads a sentence-transformers model directory: config.json,
// model.safetensors (F32, F16 or BF16), vocab.txt, and when present
// sentence_bert_config.json, tokenizer_config.json (must be uncased) and
// 1_Pooling/config.json (must be mean pooling). On error returns -1 with
// "PATH: what is wrong" in err, and nothing stays allocated.
int embedder_load(Embedder *e, const char *dir, char *err, size_t err_size);
void embedder_free(Embedder *e);
int embedder_dim(const Embedder *e);

// The embedding (embedder_dim floats, length 1) of n token ids, [CLS] ...
// [SEP] as wordpiece_encode gives them. Returns 0, or -1 when n is not in
// 1..max_tokens, an id is out of range, or memory runs out.
int embed_tokens(const Embedder *e, const int *ids, int n, float *out);
// The embedding of a NUL-terminated UTF-8 text (cut to max_tokens tokens).
// Returns 0, or -1 when memory runs out.
int embed_text(const Embedder *e, const char *text, float *out);
// The embeddings of n_texts texts, out [n_texts, dim], the texts shared
// among OpenMP threads (each text runs on one thread). Returns 0, or -1 when
// any failed (out of memory).
int embed_texts(const Embedder *e, const char *const *texts, int n_texts, float *out);

// cos(a, b) = a.b / (|a| |b|); 0 when either is all zeros.
float embed_cosine(const float *a, const float *b, int dim);

#ifdef __cplusplus
}
#endif
