// Tests for eval/wordpiece.c and eval/embed.c against test/fixtures/embed_reference.json
// (dev/fixtures/make_embed_fixtures.py: Hugging Face's fast BERT tokenizer and
// sentence-transformers' all-MiniLM-L6-v2 on the same model files): exact
// token ids, embeddings within 1e-4, paraphrases above unrelated pairs, the
// Korean limitation measured, and malformed vocabularies and model files.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>
#include <unistd.h>

#include "eval/embed.h"
#include "formats/json.h"
#include "test_util.h"
#include "eval/wordpiece.h"

namespace {

const char *const MODEL_DIR = EMBED_DEFAULT_MODEL_DIR;
const char *const FIXTURE = "test/fixtures/embed_reference.json";

struct TempDir {
    std::string path;
    TempDir() {
        char name[] = "/tmp/qlora_embed_XXXXXX";
        REQUIRE(mkdtemp(name) != nullptr);
        path = name;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
    std::string file(const std::string &name) const { return path + "/" + name; }
};

void write_bytes(const std::string &path, const std::string &bytes) {
    FILE *f = std::fopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    REQUIRE(std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size());
    std::fclose(f);
}

std::string read_bytes(const std::string &path) {
    char err[512] = "";
    size_t len = 0;
    char *text = read_file(path.c_str(), &len, err, sizeof err);
    REQUIRE_MESSAGE(text, err);
    std::string out(text, len);
    free(text);
    return out;
}

std::vector<float> json_floats(const JsonValue *array) {
    std::vector<float> out;
    for (size_t i = 0; array && i < array->count; i++) out.push_back((float)array->items[i].number);
    return out;
}

// The fixture, parsed once.
const JsonValue &fixture() {
    static JsonValue *json = nullptr;
    if (!json) {
        char err[512] = "";
        json = json_parse_file(FIXTURE, err, sizeof err);
        REQUIRE_MESSAGE(json, err);
        atexit([] { json_free(json); });
    }
    return *json;
}

// The model, loaded once (run `make fetch` first).
const Embedder &embedder() {
    static Embedder model;
    static bool loaded = false;
    if (!loaded) {
        char err[1024] = "";
        REQUIRE_MESSAGE(embedder_load(&model, MODEL_DIR, err, sizeof err) == 0, err,
                        " (run `make fetch` to download the embedding model)");
        loaded = true;
        atexit([] { embedder_free(&model); });
    }
    return model;
}

std::vector<int> encode(const WordPiece *t, const std::string &text, int max_tokens) {
    int *ids = nullptr;
    int n = wordpiece_encode(t, text.data(), text.size(), max_tokens, &ids);
    REQUIRE(n >= 0);
    std::vector<int> out(ids, ids + n);
    free(ids);
    return out;
}

// Our embeddings of the fixture's sentences, [n_sentences][dim], computed once
// (with embed_texts, in parallel).
const std::vector<std::vector<float>> &sentence_embeddings() {
    static std::vector<std::vector<float>> vectors;
    if (vectors.empty()) {
        const JsonValue *sentences = json_get(&fixture(), "sentences");
        REQUIRE(sentences);
        std::vector<const char *> texts;
        for (size_t i = 0; i < sentences->count; i++) texts.push_back(json_get_string(&sentences->items[i], "text", ""));
        int dim = embedder_dim(&embedder());
        std::vector<float> out(texts.size() * dim);
        REQUIRE(embed_texts(&embedder(), texts.data(), (int)texts.size(), out.data()) == 0);
        for (size_t i = 0; i < texts.size(); i++) vectors.emplace_back(out.begin() + i * dim, out.begin() + (i + 1) * dim);
    }
    return vectors;
}

// The error wordpiece_load gives for a vocab.txt holding text ("" when it loads).
std::string vocab_error(const std::string &text) {
    TempDir dir;
    write_bytes(dir.file("vocab.txt"), text);
    char err[512] = "";
    WordPiece *t = wordpiece_load(dir.file("vocab.txt").c_str(), err, sizeof err);
    wordpiece_free(t);
    if (t) return "";
    CHECK_MESSAGE(std::string(err).find(dir.file("vocab.txt")) != std::string::npos, err);
    return err;
}

// A model directory holding config (config.json), the real vocab.txt, the
// given model.safetensors bytes (a link to the real file when weights is
// empty) and extra files; returns embedder_load's error ("" when it loads).
using Files = std::vector<std::pair<std::string, std::string>>;
std::string load_error(const std::string &config, const std::string &weights = "", const Files &extra = {}) {
    TempDir dir;
    std::string model = std::filesystem::absolute(MODEL_DIR).string();
    write_bytes(dir.file("config.json"), config);
    std::filesystem::create_symlink(model + "/vocab.txt", dir.file("vocab.txt"));
    if (weights.empty()) std::filesystem::create_symlink(model + "/model.safetensors", dir.file("model.safetensors"));
    else write_bytes(dir.file("model.safetensors"), weights);
    for (const auto &[name, text] : extra) {
        std::filesystem::create_directories(std::filesystem::path(dir.file(name)).parent_path());
        write_bytes(dir.file(name), text);
    }
    Embedder e;
    char err[1024] = "";
    int rc = embedder_load(&e, dir.path.c_str(), err, sizeof err);
    if (rc == 0) {
        embedder_free(&e);
        return "";
    }
    CHECK_MESSAGE(std::string(err).find(dir.path) != std::string::npos, err);
    return err;
}

// The first n bytes of a file.
std::string head_bytes(const std::string &path, size_t n) {
    std::string out(n, '\0');
    FILE *f = std::fopen(path.c_str(), "rb");
    REQUIRE(f != nullptr);
    out.resize(std::fread(&out[0], 1, n, f));
    std::fclose(f);
    return out;
}

std::string replace(std::string s, const std::string &from, const std::string &to) {
    size_t at = s.find(from);
    REQUIRE(at != std::string::npos);
    return s.replace(at, from.size(), to);
}

}  // namespace

TEST_CASE("embed: WordPiece ids equal the HF tokenizer's") {
    const Embedder &e = embedder();
    int max_tokens = (int)json_get_number(&fixture(), "max_seq_length", 0);
    CHECK(e.config.max_tokens == max_tokens);
    const JsonValue *cases = json_get(&fixture(), "tokenizer_cases");
    REQUIRE(cases);
    REQUIRE(cases->count > 20);
    for (size_t i = 0; i < cases->count; i++) {
        const JsonValue *c = &cases->items[i];
        std::string name = json_get_string(c, "name", "?");
        std::vector<int> got = encode(e.tokenizer, from_hex(json_get_string(c, "hex", "")), max_tokens);
        CHECK_MESSAGE(got == json_ints(json_get(c, "ids")), name);
    }
    const JsonValue *sentences = json_get(&fixture(), "sentences");
    REQUIRE(sentences);
    for (size_t i = 0; i < sentences->count; i++) {
        const JsonValue *s = &sentences->items[i];
        std::vector<int> got = encode(e.tokenizer, json_get_string(s, "text", ""), max_tokens);
        CHECK_MESSAGE(got == json_ints(json_get(s, "ids")), "sentence ", i);
    }
}

TEST_CASE("embed: WordPiece truncation, pieces and invalid UTF-8") {
    const WordPiece *t = embedder().tokenizer;
    CHECK(std::string(wordpiece_token(t, encode(t, "unaffable", 8)[2])) == "##ffa");
    CHECK(wordpiece_token(t, -1) == nullptr);
    CHECK(wordpiece_token(t, wordpiece_vocab_size(t)) == nullptr);
    // [CLS] one two [SEP] when cut to 4 tokens; at least [CLS] [SEP] must fit
    std::vector<int> cut = encode(t, "one two three four", 4);
    std::vector<int> full = encode(t, "one two three four", 256);
    REQUIRE(full.size() == 6);
    CHECK(cut == std::vector<int>{full[0], full[1], full[2], full[5]});
    CHECK(encode(t, "one two", 2) == std::vector<int>{full[0], full[5]});
    int *ids = nullptr;
    CHECK(wordpiece_encode(t, "x", 1, 1, &ids) == -1);
    CHECK(ids == nullptr);
    // invalid bytes are dropped, wherever they are
    CHECK(encode(t, "caf\xc3\xa9\xff \x80tea\xe2\x82", 16) == encode(t, "cafe tea", 16));
}

TEST_CASE("embed: malformed vocab.txt files give clear errors") {
    CHECK(vocab_error("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n##lo\n") == "");
    CHECK(vocab_error("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello") == "");   // no '\n' at the end
    CHECK(vocab_error("").find("empty") != std::string::npos);
    CHECK(vocab_error("[UNK]\n[CLS]\nhello\n").find("lacks [SEP]") != std::string::npos);
    CHECK(vocab_error("[UNK]\n[CLS]\n[SEP]\nhello\n[CLS]\n").find("line 5: token '[CLS]' repeats line 2") !=
          std::string::npos);
    CHECK(vocab_error("[UNK]\n\n[CLS]\n[SEP]\n").find("line 2: empty token") != std::string::npos);
    CHECK(vocab_error("[UNK]\n[CLS]\n[SEP]\n\xff\xfe\n").find("line 4: token is not valid UTF-8") !=
          std::string::npos);
    CHECK(vocab_error(std::string("[UNK]\n[CLS]\0\n[SEP]\n", 18)).find("NUL byte") != std::string::npos);
    char err[512] = "";
    CHECK(wordpiece_load("/nonexistent/vocab.txt", err, sizeof err) == nullptr);
    CHECK(std::string(err).find("/nonexistent/vocab.txt") != std::string::npos);
}

TEST_CASE("embed: embeddings equal sentence-transformers' within 1e-4") {
    const Embedder &e = embedder();
    const JsonValue *sentences = json_get(&fixture(), "sentences");
    REQUIRE(sentences);
    REQUIRE(sentences->count >= 15);
    int dim = embedder_dim(&e);
    CHECK(dim == 384);
    const std::vector<std::vector<float>> &ours = sentence_embeddings();
    float worst_diff = 0, worst_cosine = 1;
    for (size_t i = 0; i < sentences->count; i++) {
        std::vector<float> want = json_floats(json_get(&sentences->items[i], "embedding"));
        REQUIRE(want.size() == (size_t)dim);
        const std::vector<float> &got = ours[i];
        float diff = 0, length_squared = 0;
        for (int d = 0; d < dim; d++) {
            diff = std::max(diff, std::fabs(got[d] - want[d]));
            length_squared += got[d] * got[d];
        }
        float cosine = embed_cosine(got.data(), want.data(), dim);
        CHECK_MESSAGE(diff < 1e-4f, "sentence ", i, ": max |ours - sentence-transformers| = ", diff);
        CHECK_MESSAGE(cosine > 0.9999f, "sentence ", i);
        CHECK(std::fabs(length_squared - 1) < 1e-5f);
        worst_diff = std::max(worst_diff, diff);
        worst_cosine = std::min(worst_cosine, cosine);
    }
    MESSAGE(sentences->count, " sentences: max |diff| ", worst_diff, ", min cosine ", worst_cosine);

    // embed_tokens on the fixture's ids (independent of our tokenizer) and
    // embed_text on one text give the same vector
    const JsonValue *first = &sentences->items[0];
    std::vector<int> ids = json_ints(json_get(first, "ids"));
    std::vector<float> from_ids(dim), from_text(dim);
    REQUIRE(embed_tokens(&e, ids.data(), (int)ids.size(), from_ids.data()) == 0);
    REQUIRE(embed_text(&e, json_get_string(first, "text", ""), from_text.data()) == 0);
    CHECK(from_ids == ours[0]);
    CHECK(from_text == ours[0]);
}

TEST_CASE("embed: paraphrases score above unrelated pairs (English); Korean measured") {
    const JsonValue *sentences = json_get(&fixture(), "sentences");
    const JsonValue *pairs = json_get(&fixture(), "pairs");
    REQUIRE(sentences);
    REQUIRE(pairs);
    const std::vector<std::vector<float>> &vectors = sentence_embeddings();
    float min_paraphrase = 1, max_unrelated = -1;
    int n_paraphrase = 0, n_unrelated = 0;
    for (size_t i = 0; i < pairs->count; i++) {
        const JsonValue *p = &pairs->items[i];
        size_t a = (size_t)json_get_number(p, "a", 0), b = (size_t)json_get_number(p, "b", 0);
        REQUIRE(a < vectors.size());
        REQUIRE(b < vectors.size());
        std::string kind = json_get_string(p, "kind", ""), lang = json_get_string(p, "lang", "");
        float cosine = embed_cosine(vectors[a].data(), vectors[b].data(), (int)vectors[a].size());
        CHECK_MESSAGE(std::fabs(cosine - (float)json_get_number(p, "cosine", 9)) < 1e-4f, "pair ", i);
        if (lang == "en" && kind == "paraphrase") min_paraphrase = std::min(min_paraphrase, cosine), n_paraphrase++;
        if (lang == "en" && kind == "unrelated") max_unrelated = std::max(max_unrelated, cosine), n_unrelated++;
        if (lang != "en") MESSAGE(lang, " ", kind, ": cosine ", cosine);
    }
    CHECK(n_paraphrase >= 6);
    CHECK(n_unrelated >= 6);
    CHECK(min_paraphrase > max_unrelated);
    MESSAGE("English: lowest paraphrase ", min_paraphrase, ", highest unrelated ", max_unrelated);
}

TEST_CASE("embed: embed_tokens and embed_cosine check their input") {
    const Embedder &e = embedder();
    std::vector<float> out(embedder_dim(&e));
    int ok[] = {101, 7592, 102};
    int bad_id[] = {101, e.config.vocab_size, 102};
    int negative[] = {101, -1, 102};
    CHECK(embed_tokens(&e, ok, 3, out.data()) == 0);
    CHECK(embed_tokens(&e, bad_id, 3, out.data()) == -1);
    CHECK(embed_tokens(&e, negative, 3, out.data()) == -1);
    CHECK(embed_tokens(&e, ok, 0, out.data()) == -1);
    std::vector<int> too_many(e.config.max_tokens + 1, 101);
    CHECK(embed_tokens(&e, too_many.data(), (int)too_many.size(), out.data()) == -1);
    float a[] = {1, 0, 0}, b[] = {0, 2, 0}, c[] = {3, 0, 0}, zero[] = {0, 0, 0};
    CHECK(embed_cosine(a, b, 3) == 0);
    CHECK(embed_cosine(a, c, 3) == doctest::Approx(1));
    CHECK(embed_cosine(a, zero, 3) == 0);
}

TEST_CASE("embed: corrupt or mismatched model files give clear errors") {
    std::string model = MODEL_DIR;
    std::string config = read_bytes(model + "/config.json");
    CHECK(load_error(config) == "");

    // model.safetensors: cut short (the tensors' data runs past the end), a
    // header length of 2^63, empty
    std::string truncated = load_error(config, head_bytes(model + "/model.safetensors", 1 << 20));
    CHECK_MESSAGE(truncated.find("model.safetensors") != std::string::npos, truncated);
    std::string garbage = load_error(config, std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "junk");
    CHECK_MESSAGE(garbage.find("model.safetensors") != std::string::npos, garbage);
    std::string empty = load_error(config, std::string(4, '\0'));
    CHECK_MESSAGE(empty.find("model.safetensors") != std::string::npos, empty);

    // config.json that does not match the weights, or a model we do not implement
    std::string wider = load_error(replace(config, "\"intermediate_size\": 1536", "\"intermediate_size\": 1024"));
    CHECK_MESSAGE(wider.find("'encoder.layer.0.intermediate.dense.weight' has the wrong shape; [1024, 384]") !=
                      std::string::npos, wider);
    std::string relu = load_error(replace(config, "\"hidden_act\": \"gelu\"", "\"hidden_act\": \"relu\""));
    CHECK_MESSAGE(relu.find("'hidden_act' is \"relu\"") != std::string::npos, relu);
    std::string vocab = load_error(replace(config, "\"vocab_size\": 30522", "\"vocab_size\": 30000"));
    CHECK_MESSAGE(vocab.find("30522 tokens, but config.json says vocab_size 30000") != std::string::npos, vocab);
    std::string no_heads = load_error(replace(config, "\"num_attention_heads\": 12,", ""));
    CHECK_MESSAGE(no_heads.find("'num_attention_heads' is missing") != std::string::npos, no_heads);
    std::string odd_heads = load_error(replace(config, "\"num_attention_heads\": 12", "\"num_attention_heads\": 7"));
    CHECK_MESSAGE(odd_heads.find("not a multiple of num_attention_heads 7") != std::string::npos, odd_heads);
    // a config that counts fewer layers than the file holds: the sixth is named, not silently dropped
    std::string fewer = load_error(replace(config, "\"num_hidden_layers\": 6", "\"num_hidden_layers\": 5"));
    CHECK_MESSAGE(fewer.find("tensor 'encoder.layer.5.") != std::string::npos, fewer);
    CHECK_MESSAGE(fewer.find("is in the file but not used: config.json says 5 layers") != std::string::npos, fewer);
    std::string not_json = load_error("{\"model_type\": \"bert\",");
    CHECK_MESSAGE(not_json.find("config.json") != std::string::npos, not_json);

    // the sentence-transformers and tokenizer files
    std::string cased = load_error(config, "", {{"tokenizer_config.json", "{\"do_lower_case\": false}"}});
    CHECK_MESSAGE(cased.find("only uncased") != std::string::npos, cased);
    std::string cls = load_error(config, "", {{"1_Pooling/config.json", "{\"pooling_mode_cls_token\": true}"}});
    CHECK_MESSAGE(cls.find("only mean pooling") != std::string::npos, cls);
    std::string seq = load_error(config, "", {{"sentence_bert_config.json", "{\"max_seq_length\": -3}"}});
    CHECK_MESSAGE(seq.find("'max_seq_length' is not a positive integer") != std::string::npos, seq);

    Embedder e;
    char err[1024] = "";
    CHECK(embedder_load(&e, "/nonexistent-model-dir", err, sizeof err) == -1);
    CHECK(std::string(err).find("/nonexistent-model-dir/config.json") != std::string::npos);
}
