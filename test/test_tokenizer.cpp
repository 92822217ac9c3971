// Tests for tokenizer.c: exact ids against Hugging Face `tokenizers` (the
// fixtures of dev/fixtures/make_tokenizer_fixtures.py) for SmolLM2 loaded from its
// GGUF and for tiny trained GPT-2 / SmolLM / Llama-3 / Qwen2 tokenizer.json
// files, round trips, the ChatML template with its answer flags, invalid
// UTF-8, and malformed files (NULL and a message naming the file).
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <unistd.h>

#include "formats/gguf.h"
#include "formats/json.h"
#include "test_util.h"
#include "tokenizer.h"

namespace {

const char *const FIXTURES = "test/fixtures/";

std::vector<int> encode(const Tokenizer *t, const std::string &text, bool allow_special) {
    int *ids = nullptr;
    int n = tokenizer_encode(t, text.data(), text.size(), allow_special ? 1 : 0, &ids);
    REQUIRE(n >= 0);
    std::vector<int> out(ids, ids + n);
    free(ids);
    return out;
}

std::string decode(const Tokenizer *t, const std::vector<int> &ids) {
    size_t len = 0;
    char *text = tokenizer_decode(t, ids.data(), (int)ids.size(), &len);
    REQUIRE(text);
    std::string out(text, len);
    free(text);
    return out;
}

// Parses a fixture; fails the test when it is missing or broken.
JsonValue *load_fixture(const std::string &name) {
    std::string path = FIXTURES + name;
    char err[512] = "";
    size_t len = 0;
    char *text = read_file(path.c_str(), &len, err, sizeof err);
    REQUIRE_MESSAGE(text, err, " (regenerate with python3 dev/fixtures/make_tokenizer_fixtures.py)");
    JsonValue *root = json_parse(text, len, err, sizeof err);
    free(text);
    REQUIRE_MESSAGE(root, path, ": ", err);
    return root;
}

// Holds the SmolLM2 GGUF open with its tokenizer.
struct SmolLM2 {
    GGUFFile file;
    Tokenizer *tok = nullptr;
    SmolLM2() {
        char err[512] = "";
        REQUIRE_MESSAGE(access(DEFAULT_MODEL, F_OK) == 0, DEFAULT_MODEL, " is missing: run `make fetch`");
        REQUIRE_MESSAGE(gguf_open(&file, DEFAULT_MODEL, err, sizeof err) == 0, err);
        tok = tokenizer_from_gguf(&file, err, sizeof err);
        if (!tok) gguf_close(&file);
        REQUIRE_MESSAGE(tok, err);
    }
    ~SmolLM2() {
        tokenizer_free(tok);
        gguf_close(&file);
    }
};

// Checks every text case: exact ids, and the round trip where it holds.
void check_text_cases(const Tokenizer *t, const JsonValue *cases) {
    REQUIRE(cases);
    REQUIRE(cases->count > 0);
    for (size_t i = 0; i < cases->count; i++) {
        const JsonValue *c = &cases->items[i];
        std::string name = json_get_string(c, "name", "?");
        std::string text = from_hex(json_get_string(c, "hex", ""));
        bool allow_special = json_get(c, "allow_special")->boolean;
        std::vector<int> ids = encode(t, text, allow_special);
        CHECK_MESSAGE(ids == json_ints(json_get(c, "ids")), "case ", name);
        if (json_get(c, "roundtrip")->boolean) CHECK_MESSAGE(decode(t, ids) == text, "round trip of ", name);
    }
}

void check_chat_cases(const Tokenizer *t, const JsonValue *cases) {
    REQUIRE(cases);
    for (size_t i = 0; i < cases->count; i++) {
        const JsonValue *c = &cases->items[i], *messages = json_get(c, "messages");
        std::vector<ChatMessage> chat;
        for (size_t m = 0; m < messages->count; m++)
            chat.push_back({json_get_string(&messages->items[m], "role", ""),
                            json_get_string(&messages->items[m], "content", "")});
        int *ids = nullptr;
        unsigned char *is_answer = nullptr;
        int n = chat_encode(t, chat.data(), (int)chat.size(), json_get(c, "add_generation_prompt")->boolean,
                            &ids, &is_answer);
        REQUIRE(n >= 0);
        std::vector<int> got_ids(ids, ids + n), got_answer(is_answer, is_answer + n);
        std::string name = json_get_string(c, "name", "?");
        CHECK_MESSAGE(got_ids == json_ints(json_get(c, "ids")), "chat case ", name);
        CHECK_MESSAGE(got_answer == json_ints(json_get(c, "is_answer")), "chat flags ", name);
        free(ids);
        free(is_answer);
    }
}

std::string temp_dir() {
    char path[] = "/tmp/qlora_tok_XXXXXX";
    REQUIRE(mkdtemp(path));
    return path;
}

void write_text(const std::string &path, const std::string &text) {
    FILE *f = fopen(path.c_str(), "wb");
    REQUIRE(f);
    fwrite(text.data(), 1, text.size(), f);
    fclose(f);
}

std::string read_text(const std::string &path) {
    char err[512];
    size_t len = 0;
    char *text = read_file(path.c_str(), &len, err, sizeof err);
    REQUIRE_MESSAGE(text, err);
    std::string out(text, len);
    free(text);
    return out;
}

// Loading must fail with a message that names the file.
void check_json_refused(const std::string &dir, const std::string &json, const char *what) {
    std::string path = dir + "/tokenizer.json";
    write_text(path, json);
    char err[512] = "";
    Tokenizer *t = tokenizer_from_json(path.c_str(), err, sizeof err);
    CHECK_MESSAGE(t == nullptr, what);
    CHECK_MESSAGE(std::string(err).find(path) != std::string::npos, what, ": ", err);
    tokenizer_free(t);
    remove(path.c_str());
}

// A GGUF file with tokenizer metadata only, built byte by byte.
struct TokenizerGGUF {
    std::vector<unsigned char> bytes;
    int n_kv = 0;
    void raw(const void *p, size_t n) {
        const unsigned char *c = (const unsigned char *)p;
        bytes.insert(bytes.end(), c, c + n);
    }
    void u32(uint32_t v) { raw(&v, 4); }
    void u64(uint64_t v) { raw(&v, 8); }
    void str(const std::string &s) { u64(s.size()); raw(s.data(), s.size()); }
    void key(const std::string &k, GGUFType type) { str(k); u32(type); n_kv++; }
    void string_kv(const std::string &k, const std::string &v) { key(k, GGUF_STRING); str(v); }
    void u32_kv(const std::string &k, uint32_t v) { key(k, GGUF_UINT32); u32(v); }
    void strings_kv(const std::string &k, const std::vector<std::string> &v) {
        key(k, GGUF_ARRAY);
        u32(GGUF_STRING);
        u64(v.size());
        for (const std::string &s : v) str(s);
    }
    void int32s_kv(const std::string &k, const std::vector<int32_t> &v) {
        key(k, GGUF_ARRAY);
        u32(GGUF_INT32);
        u64(v.size());
        raw(v.data(), 4 * v.size());
    }
    std::vector<unsigned char> file() const {
        TokenizerGGUF header;
        header.raw("GGUF", 4);
        header.u32(3);
        header.u64(0);      // tensors
        header.u64((uint64_t)n_kv);
        header.raw(bytes.data(), bytes.size());
        while (header.bytes.size() % 32) header.bytes.push_back(0);   // the (empty) data section is aligned
        return header.bytes;
    }
};

// The 256 byte characters of GPT-2's bytes_to_unicode, in byte order.
std::vector<std::string> byte_tokens() {
    std::vector<std::string> out;
    int next = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        int c = printable ? b : next++;
        std::string s;
        if (c < 0x80) s += (char)c;
        else s += (char)(0xC0 | (c >> 6)), s += (char)(0x80 | (c & 0x3F));
        out.push_back(s);
    }
    return out;
}

struct TinyGGUF {
    std::string model = "gpt2", pre = "default";
    std::vector<std::string> merges = {"h e", "t he", "Ġ the"};
    std::vector<std::string> extra = {"he", "the", "Ġthe", "<|im_start|>", "<|im_end|>", "<tool>"};
    std::vector<int32_t> extra_types = {1, 1, 1, 3, 3, 4};
    bool with_types = true, with_merges = true;
    uint32_t bos = 256 + 3, eos = 256 + 4;

    std::vector<unsigned char> build() const {
        TokenizerGGUF g;
        std::vector<std::string> tokens = byte_tokens();
        tokens.insert(tokens.end(), extra.begin(), extra.end());
        std::vector<int32_t> types(256, 6);
        types.insert(types.end(), extra_types.begin(), extra_types.end());
        g.string_kv("tokenizer.ggml.model", model);
        if (!pre.empty()) g.string_kv("tokenizer.ggml.pre", pre);
        g.strings_kv("tokenizer.ggml.tokens", tokens);
        if (with_types) g.int32s_kv("tokenizer.ggml.token_type", types);
        if (with_merges) g.strings_kv("tokenizer.ggml.merges", merges);
        g.u32_kv("tokenizer.ggml.bos_token_id", bos);
        g.u32_kv("tokenizer.ggml.eos_token_id", eos);
        return g.file();
    }
};

// Opens a GGUF built in memory and loads its tokenizer; NULL + err on failure.
Tokenizer *tokenizer_from_bytes(const std::vector<unsigned char> &bytes, std::string *err_out,
                                std::string *path_out) {
    std::string dir = temp_dir(), path = dir + "/tok.gguf";
    write_text(path, std::string(bytes.begin(), bytes.end()));
    GGUFFile f;
    char err[512] = "";
    REQUIRE_MESSAGE(gguf_open(&f, path.c_str(), err, sizeof err) == 0, err);
    Tokenizer *t = tokenizer_from_gguf(&f, err, sizeof err);
    gguf_close(&f);
    remove(path.c_str());
    rmdir(dir.c_str());
    *err_out = err;
    *path_out = path;
    return t;
}

}  // namespace

// ---------------------------------------------------------------- SmolLM2

TEST_CASE("tokenizer: SmolLM2 from its GGUF") {
    SmolLM2 s;
    const Tokenizer *t = s.tok;
    CHECK(tokenizer_vocab_size(t) == 49152);
    CHECK(tokenizer_pretokenizer(t) == PRETOK_SMOLLM);
    CHECK(tokenizer_bos_id(t) == 1);
    CHECK(tokenizer_eos_id(t) == 2);
    CHECK(tokenizer_find(t, "<|im_start|>") == 1);
    CHECK(tokenizer_find(t, "<|im_end|>") == 2);
    CHECK(tokenizer_find(t, "no such token here") == -1);
    int the = tokenizer_find(t, "\xC4\xA0the");   // "Ġthe"
    REQUIRE(the >= 0);
    size_t len = 0;
    const char *bytes = tokenizer_token_bytes(t, the, &len);
    REQUIRE(bytes);
    CHECK(std::string(bytes, len) == " the");
    bytes = tokenizer_token_bytes(t, 2, &len);
    CHECK(std::string(bytes, len) == "<|im_end|>");
    CHECK(tokenizer_token_bytes(t, -1, &len) == nullptr);
    CHECK(tokenizer_token_bytes(t, 49152, &len) == nullptr);
    CHECK(decode(t, {-5, the, 1 << 30}) == " the");   // bad ids are skipped
    CHECK(encode(t, "", true).empty());
}

TEST_CASE("tokenizer: SmolLM2 matches Hugging Face on the text fixtures") {
    SmolLM2 s;
    JsonValue *root = load_fixture("tokenizer_smollm2.json");
    check_text_cases(s.tok, json_get(root, "text"));
    json_free(root);
}

TEST_CASE("tokenizer: SmolLM2 chat template ids and answer flags") {
    SmolLM2 s;
    JsonValue *root = load_fixture("tokenizer_smollm2.json");
    check_chat_cases(s.tok, json_get(root, "chat"));
    json_free(root);
}

TEST_CASE("tokenizer: special tokens only with allow_special") {
    SmolLM2 s;
    std::vector<int> with = encode(s.tok, "<|im_end|>", true), without = encode(s.tok, "<|im_end|>", false);
    CHECK(with == std::vector<int>{2});
    CHECK(without.size() > 1);
    CHECK(decode(s.tok, without) == "<|im_end|>");
}

TEST_CASE("tokenizer: SmolLM2 encodes a megabyte quickly, round trip intact") {
    SmolLM2 s;
    JsonValue *root = load_fixture("tokenizer_smollm2.json");
    const JsonValue *cases = json_get(root, "text");
    std::string text;
    while (text.size() < (1 << 20))
        for (size_t i = 0; i < cases->count; i++)
            if (json_get(&cases->items[i], "roundtrip")->boolean)
                text += from_hex(json_get_string(&cases->items[i], "hex", ""));
    json_free(root);
    auto start = std::chrono::steady_clock::now();
    std::vector<int> ids = encode(s.tok, text, true);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    MESSAGE("encoded ", text.size(), " bytes into ", ids.size(), " tokens in ", seconds, " s (sanitizer build)");
    CHECK(seconds < 20.0);   // about 0.2 s in an optimised build
    CHECK(decode(s.tok, ids) == text);
    // One long word and one long whitespace run must not be quadratic either.
    std::string word(200000, 'a'), spaces(200000, ' ');
    start = std::chrono::steady_clock::now();
    CHECK(decode(s.tok, encode(s.tok, word, true)) == word);
    CHECK(decode(s.tok, encode(s.tok, spaces + "x", true)) == spaces + "x");
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    CHECK(seconds < 20.0);
}

// ---------------------------------------------------------------- tiny tokenizer.json files

TEST_CASE("tokenizer: tiny tokenizer.json variants match Hugging Face") {
    const char *variants[] = {"gpt2", "smollm", "llama3", "qwen2"};
    const PreTokenizer expected[] = {PRETOK_GPT2, PRETOK_SMOLLM, PRETOK_LLAMA3, PRETOK_QWEN2};
    JsonValue *root = load_fixture("tokenizer_tiny_cases.json");
    for (int v = 0; v < 4; v++) {
        CAPTURE(variants[v]);
        std::string path = std::string(FIXTURES) + "tokenizer_tiny_" + variants[v] + ".json";
        char err[512] = "";
        Tokenizer *t = tokenizer_from_json(path.c_str(), err, sizeof err);
        REQUIRE_MESSAGE(t, err);
        CHECK(tokenizer_pretokenizer(t) == expected[v]);
        CHECK(tokenizer_vocab_size(t) == 1001);
        CHECK(tokenizer_bos_id(t) == tokenizer_find(t, "<|endoftext|>"));   // from tokenizer_config.json
        CHECK(tokenizer_eos_id(t) == tokenizer_find(t, "<|im_end|>"));
        check_text_cases(t, json_get(root, variants[v]));
        tokenizer_free(t);
    }
    json_free(root);
}

TEST_CASE("tokenizer: long runs stay linear in every variant") {
    const char *variants[] = {"gpt2", "smollm", "llama3", "qwen2"};
    std::string digits(300000, '7'), newlines(100000, ' ');
    for (size_t i = 0; i < newlines.size(); i += 2) newlines[i] = '\n';
    std::string symbols(300000, '+'), text = digits + " " + newlines + "x" + symbols;
    for (const char *variant : variants) {
        CAPTURE(variant);
        std::string path = std::string(FIXTURES) + "tokenizer_tiny_" + variant + ".json";
        char err[512] = "";
        Tokenizer *t = tokenizer_from_json(path.c_str(), err, sizeof err);
        REQUIRE_MESSAGE(t, err);
        auto start = std::chrono::steady_clock::now();
        CHECK(decode(t, encode(t, text, true)) == text);
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        CHECK(seconds < 20.0);   // well under a second in an optimised build
        tokenizer_free(t);
    }
}

TEST_CASE("tokenizer: randomly damaged tokenizer.json loads or is refused, never crashes") {
    std::string good = read_text(std::string(FIXTURES) + "tokenizer_tiny_llama3.json");
    std::string dir = temp_dir(), path = dir + "/tokenizer.json";
    uint32_t seed = 12345;
    auto next = [&]() { return seed = seed * 1664525u + 1013904223u; };
    for (int round = 0; round < 200; round++) {
        std::string bad = good;
        int edits = 1 + (int)(next() % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = next() % bad.size();
            const char pool[] = "{}[]\",:0123456789-.eE aZ\\\x00";
            switch (next() % 3) {
            case 0: bad[at] = pool[next() % (sizeof pool - 1)]; break;
            case 1: bad.erase(at, 1 + next() % 16); break;
            default: bad.insert(at, 1, pool[next() % (sizeof pool - 1)]); break;
            }
        }
        write_text(path, bad);
        char err[512] = "";
        Tokenizer *t = tokenizer_from_json(path.c_str(), err, sizeof err);
        if (t) {
            std::vector<int> ids = encode(t, "Hello, world! 123 <|im_end|>", true);
            CHECK(!ids.empty());
        } else {
            CHECK_MESSAGE(std::string(err).find(path) != std::string::npos, err);
        }
        tokenizer_free(t);
    }
    remove(path.c_str());
    rmdir(dir.c_str());
}

TEST_CASE("tokenizer: without tokenizer_config.json, no bos and eos is <|im_end|>") {
    std::string dir = temp_dir(), path = dir + "/tokenizer.json";
    write_text(path, read_text(std::string(FIXTURES) + "tokenizer_tiny_qwen2.json"));
    char err[512] = "";
    Tokenizer *t = tokenizer_from_json(path.c_str(), err, sizeof err);
    REQUIRE_MESSAGE(t, err);
    CHECK(tokenizer_bos_id(t) == -1);
    CHECK(tokenizer_eos_id(t) == 2);
    tokenizer_free(t);

    std::string config = dir + "/tokenizer_config.json";
    write_text(config, "{\"bos_token\": null, \"eos_token\": \"<|endoftext|>\"}");
    t = tokenizer_from_json(path.c_str(), err, sizeof err);
    REQUIRE_MESSAGE(t, err);
    CHECK(tokenizer_bos_id(t) == -1);
    CHECK(tokenizer_eos_id(t) == 0);
    tokenizer_free(t);

    const char *bad_configs[] = {"{\"eos_token\": \"<|nope|>\"}", "{\"bos_token\": 7}", "[1]", "{\"eos_token\": "};
    for (const char *bad : bad_configs) {
        write_text(config, bad);
        t = tokenizer_from_json(path.c_str(), err, sizeof err);
        CHECK_MESSAGE(t == nullptr, bad);
        CHECK_MESSAGE(std::string(err).find(config) != std::string::npos, err);
        tokenizer_free(t);
    }
    remove(config.c_str());
    remove(path.c_str());
    rmdir(dir.c_str());
}

TEST_CASE("tokenizer: invalid UTF-8 becomes U+FFFD per maximal ill-formed subpart") {
    char err[512] = "";
    std::string path = std::string(FIXTURES) + "tokenizer_tiny_gpt2.json";
    Tokenizer *t = tokenizer_from_json(path.c_str(), err, sizeof err);
    REQUIRE_MESSAGE(t, err);
    const std::string R = "\xEF\xBF\xBD";
    struct { const char *bad; std::string replaced; } cases[] = {
        {"\x80", R},                          // lone continuation byte
        {"a\xE2\x82", "a" + R},               // truncated 3-byte sequence: one
        {"\xE2\x82" "b", R + "b"},
        {"\xC0\x80", R + R},                  // overlong: C0 is never valid
        {"\xE0\x80\x80", R + R + R},          // E0 needs A0..BF
        {"\xED\xA0\x80", R + R + R},          // surrogate: ED needs 80..9F
        {"\xF0\x9F\x98", R},                  // truncated 4-byte sequence: one
        {"\xF4\x90\x80\x80", R + R + R + R},  // above U+10FFFF
        {"\xF5\xFF", R + R},
        {"ok\xC3", "ok" + R},
    };
    for (const auto &c : cases) {
        CAPTURE(c.replaced);
        CHECK(encode(t, c.bad, true) == encode(t, c.replaced, true));
        CHECK(decode(t, encode(t, c.bad, true)) == c.replaced);
    }
    tokenizer_free(t);
}

TEST_CASE("tokenizer: malformed tokenizer.json is refused with the path") {
    std::string dir = temp_dir();
    std::string good = read_text(std::string(FIXTURES) + "tokenizer_tiny_gpt2.json");
    auto replaced = [&](const std::string &from, const std::string &to) {
        size_t at = good.find(from);
        REQUIRE_MESSAGE(at != std::string::npos, from);
        return good.substr(0, at) + to + good.substr(at + from.size());
    };
    check_json_refused(dir, "", "empty file");
    check_json_refused(dir, "{\"model\": ", "truncated JSON");
    check_json_refused(dir, "[1, 2]", "not an object");
    check_json_refused(dir, "{}", "no model");
    check_json_refused(dir, good.substr(0, good.size() / 2), "cut in half");
    check_json_refused(dir, replaced("\"type\":\"BPE\"", "\"type\":\"WordPiece\""), "model type");
    check_json_refused(dir, replaced("\"vocab\":{", "\"vocab\":[],\"x\":{"), "vocab not an object");
    check_json_refused(dir, replaced("\"vocab\":{", "\"vocabulary\":{"), "vocab missing");
    check_json_refused(dir, replaced("\"merges\":[", "\"merges\":7,\"x\":["), "merges not an array");
    check_json_refused(dir, replaced("\"merges\":[", "\"merges\":[[\"zzz\",\"q\"],"), "merge of unknown strings");
    check_json_refused(dir, replaced("\"merges\":[", "\"merges\":[\"nospace\","), "merge without a space");
    check_json_refused(dir, replaced("\"merges\":[", "\"merges\":[[1,2],"), "merge of numbers");
    check_json_refused(dir, replaced("\"vocab\":{", "\"vocab\":{\"dup\":3,"), "id used twice");
    check_json_refused(dir, replaced("\"vocab\":{", "\"vocab\":{\"neg\":-1,"), "negative id");
    check_json_refused(dir, replaced("\"vocab\":{", "\"vocab\":{\"big\":99999999,"), "huge id");
    check_json_refused(dir, replaced("\"vocab\":{", "\"vocab\":{\"half\":1000.5,"), "fractional id");
    check_json_refused(dir, replaced("\"vocab\":{", "\"vocab\":{\"str\":\"1\","), "string id");
    check_json_refused(dir, replaced("\"added_tokens\":[", "\"added_tokens\":{},\"x\":["), "added_tokens type");
    check_json_refused(dir, replaced("\"content\":\"<|im_end|>\"", "\"content\":\"other\""), "added token id clash");
    check_json_refused(dir, replaced("\"content\":\"<|im_end|>\"", "\"content\":5"), "added token content");
    check_json_refused(dir, replaced("\"id\":2,", "\"id\":\"2\","), "added token id type");
    check_json_refused(dir, replaced("\"use_regex\":true", "\"use_regex\":false"), "ByteLevel without regex");
    check_json_refused(dir, replaced("\"add_prefix_space\":false", "\"add_prefix_space\":true"), "prefix space");
    check_json_refused(dir, replaced("\"type\":\"ByteLevel\"", "\"type\":\"Whitespace\""), "pre_tokenizer type");
    check_json_refused(dir, replaced("\"normalizer\":null", "\"normalizer\":{\"type\":\"NFKC\"}"), "normalizer");
    check_json_refused(dir, replaced("\"byte_fallback\":false", "\"byte_fallback\":true"), "byte_fallback");
    check_json_refused(dir, replaced("\"unk_token\":null", "\"unk_token\":\"<nope>\""), "unk_token");
    std::string llama3 = read_text(std::string(FIXTURES) + "tokenizer_tiny_llama3.json");
    size_t at = llama3.find("\\\\p{N}{1,3}");
    REQUIRE(at != std::string::npos);
    check_json_refused(dir, llama3.substr(0, at) + "\\\\p{N}{1,4}" + llama3.substr(at + 11), "unknown Split regex");

    char err[512] = "";
    std::string missing = dir + "/missing.json";
    CHECK(tokenizer_from_json(missing.c_str(), err, sizeof err) == nullptr);
    CHECK(std::string(err).find(missing) != std::string::npos);
    rmdir(dir.c_str());
}

// ---------------------------------------------------------------- GGUF metadata

TEST_CASE("tokenizer: a hand-built GGUF vocabulary") {
    std::string err, path;
    Tokenizer *t = tokenizer_from_bytes(TinyGGUF().build(), &err, &path);
    REQUIRE_MESSAGE(t, err);
    CHECK(tokenizer_pretokenizer(t) == PRETOK_GPT2);
    CHECK(tokenizer_vocab_size(t) == 256 + 6);
    CHECK(tokenizer_bos_id(t) == 256 + 3);
    CHECK(tokenizer_eos_id(t) == 256 + 4);
    // "the the": ["the", "Ġthe"]; control tokens only with allow_special,
    // user-defined ones (type 4) always.
    CHECK(encode(t, "the the", false) == std::vector<int>{257, 258});
    CHECK(encode(t, "<|im_end|><tool>", true) == std::vector<int>{260, 261});
    std::vector<int> plain = encode(t, "<|im_end|><tool>", false);
    CHECK(plain.size() == 11);
    CHECK(plain.back() == 261);
    CHECK(decode(t, plain) == "<|im_end|><tool>");
    // No default system message outside SmolLM; the answer is flagged.
    ChatMessage chat[] = {{"user", "the"}, {"assistant", "the"}};
    int *ids = nullptr;
    unsigned char *answer = nullptr;
    int n = chat_encode(t, chat, 2, 0, &ids, &answer);
    std::vector<int> expected_ids = {259, 'u', 's', 'e', 'r', '\n', 257, 260, '\n',
                                     259, 'a', 's', 's', 'i', 's', 't', 'a', 'n', 't', '\n', 257, 260, '\n'};
    std::vector<int> expected_answer(expected_ids.size(), 0);
    expected_answer[20] = expected_answer[21] = 1;
    REQUIRE(n >= 0);
    CHECK(std::vector<int>(ids, ids + n) == expected_ids);
    CHECK(std::vector<int>(answer, answer + n) == expected_answer);
    free(ids);
    free(answer);
    tokenizer_free(t);

    TinyGGUF no_chatml;
    no_chatml.extra = {"he", "the", "Ġthe", "<s>", "</s>", "<tool>"};
    t = tokenizer_from_bytes(no_chatml.build(), &err, &path);
    REQUIRE_MESSAGE(t, err);
    CHECK(chat_encode(t, chat, 2, 1, &ids, &answer) == -1);   // no <|im_start|>
    tokenizer_free(t);
}

TEST_CASE("tokenizer: pre names of GGUF files") {
    const char *names[] = {"smollm", "gpt2", "default", "llama-bpe", "llama3", "qwen2", "exaone"};
    const PreTokenizer expected[] = {PRETOK_SMOLLM, PRETOK_GPT2, PRETOK_GPT2, PRETOK_LLAMA3,
                                     PRETOK_LLAMA3, PRETOK_QWEN2, PRETOK_SMOLLM};
    for (int i = 0; i < 7; i++) {
        TinyGGUF g;
        g.pre = names[i];
        std::string err, path;
        Tokenizer *t = tokenizer_from_bytes(g.build(), &err, &path);
        REQUIRE_MESSAGE(t, err);
        CHECK_MESSAGE(tokenizer_pretokenizer(t) == expected[i], names[i]);
        tokenizer_free(t);
    }
}

TEST_CASE("tokenizer: bad GGUF tokenizer metadata is refused with the path") {
    auto refused = [](const TinyGGUF &g, const char *what, const char *needle) {
        std::string err, path;
        Tokenizer *t = tokenizer_from_bytes(g.build(), &err, &path);
    CHECK_MESSAGE(t == nullptr, what);
        CHECK_MESSAGE(err.find(path) != std::string::npos, what, ": ", err);
        CHECK_MESSAGE(err.find(needle) != std::string::npos, what, ": ", err);
        tokenizer_free(t);
    };
    TinyGGUF g;
    g.model = "llama";
    refused(g, "SentencePiece model", "llama");
    g = TinyGGUF();
    g.pre = "tekken";
    refused(g, "unknown pre", "tekken");
    g = TinyGGUF();
    g.with_merges = false;
    refused(g, "no merges", "merges");
    g = TinyGGUF();
    g.merges.push_back("x zz");
    refused(g, "merge of an unknown string", "zz");
    g = TinyGGUF();
    g.merges.push_back("nospace");
    refused(g, "merge without a space", "nospace");
    g = TinyGGUF();
    g.extra_types.pop_back();
    refused(g, "token_type of the wrong length", "token_type");
    g = TinyGGUF();
    g.eos = 100000;
    refused(g, "eos out of range", "eos_token_id");
}
