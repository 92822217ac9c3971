// Tests for formats/json.c: values, escapes, errors with line/column, and a mutation
// fuzz that must never crash (ASan/UBSan watch it).
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "formats/json.h"
#include "formats/utf8.h"

static JsonValue *parse(const std::string &text, std::string *error = nullptr) {
    char err[256] = "";
    JsonValue *v = json_parse(text.data(), text.size(), err, sizeof err);
    if (error) *error = err;
    return v;
}

TEST_CASE("json: values of every type") {
    JsonValue *v = parse(R"({"a": 1.5e2, "b": [true, false, null], "c": "x\ty", "d": {}, "e": -0.25})");
    REQUIRE(v);
    CHECK(v->type == JSON_OBJECT);
    CHECK(json_get_number(v, "a", 0) == 150.0);
    const JsonValue *b = json_get(v, "b");
    REQUIRE(b);
    CHECK(b->type == JSON_ARRAY);
    CHECK(b->count == 3);
    CHECK(b->items[0].boolean == 1);
    CHECK(b->items[2].type == JSON_NULL);
    CHECK(std::string(json_get_string(v, "c", "")) == "x\ty");
    CHECK(json_get(v, "d")->count == 0);
    CHECK(json_get_number(v, "e", 0) == -0.25);
    CHECK(json_get(v, "missing") == nullptr);
    json_free(v);
}

TEST_CASE("json: unicode escapes and raw UTF-8") {
    JsonValue *v = parse(R"(["\u00e9", "\ud83d\ude00", "한국어", "a\u0000b"])");
    REQUIRE(v);
    CHECK(std::string(v->items[0].string) == "\xc3\xa9");
    CHECK(std::string(v->items[1].string) == "\xf0\x9f\x98\x80");
    CHECK(std::string(v->items[2].string) == "한국어");
    CHECK(v->items[3].string_len == 3);
    json_free(v);
}

// What json_write_string_len writes for text.
static std::string written(const std::string &text) {
    char *data = nullptr;
    size_t len = 0;
    FILE *f = open_memstream(&data, &len);
    REQUIRE(f);
    json_write_string_len(f, text.data(), text.size());
    REQUIRE(fclose(f) == 0);
    std::string out(data, len);
    free(data);
    return out;
}

TEST_CASE("json: written strings read back as they were (quotes, backslashes, every control character, UTF-8)") {
    std::string all_controls;
    for (int c = 0; c < 0x20; c++) all_controls += (char)c;   // NUL included
    const std::string texts[] = {
        "", "plain", "say \"hi\"", "C:\\models\\x.gguf", "\\\"", "\"\\\"\\", "a\nb\tc\rd\be\ff",
        all_controls, "\x7f (DEL is allowed as it is)", "한국어 é 😀 \u4e2d", "/slashes/ stay", "ends with \\",
    };
    for (const std::string &text : texts) {
        std::string json = written(text);
        CAPTURE(json);
        // one JSON string on one line: no raw control character survives
        for (char c : json) CHECK((unsigned char)c >= 0x20);
        JsonValue *v = parse(json);
        REQUIRE(v);
        CHECK(v->type == JSON_STRING);
        CHECK(std::string(v->string, v->string_len) == text);
        json_free(v);
    }
    // the escapes RFC 8259 gives short forms keep them; the rest are \u00XX
    CHECK(written("\"\\\b\f\n\r\t") == R"("\"\\\b\f\n\r\t")");
    CHECK(written(std::string("\x01\x1f\0", 3)) == R"("\u0001\u001f\u0000")");
    CHECK(written("é😀") == "\"é😀\"");   // UTF-8 as it is
}

TEST_CASE("json: written bytes that are not UTF-8 become U+FFFD per maximal ill-formed subpart, so the file stays valid JSON") {
    // a lone continuation byte, a character cut short (at the end and before
    // ASCII), an overlong '/', a surrogate, and 0xff: one U+FFFD for each
    // maximal ill-formed subpart, as HF's decode (Python's errors="replace")
    const std::string bad[] = {"a\x80" "b", "cut \xed\x95", "\xe4\xb8x", "\xc0\xaf", "\xed\xa0\x80", "\xff"};
    const std::string want_json[] = {R"("a\ufffdb")", R"("cut \ufffd")", R"("\ufffdx")",
                                     R"("\ufffd\ufffd")", R"("\ufffd\ufffd\ufffd")", R"("\ufffd")"};
    for (int i = 0; i < 6; i++) {
        std::string json = written(bad[i]);
        CHECK(json == want_json[i]);
        // the strict reader takes it back (it refuses any byte that is not UTF-8)
        JsonValue *v = parse(json);
        REQUIRE(v);
        size_t want_len;
        char *want = utf8_clean(bad[i].data(), bad[i].size(), &want_len);
        CHECK(std::string(v->string, v->string_len) == std::string(want, want_len));
        free(want);
        json_free(v);
    }
}

TEST_CASE("json: json_write_string writes up to the NUL") {
    char *data = nullptr;
    size_t len = 0;
    FILE *f = open_memstream(&data, &len);
    REQUIRE(f);
    json_write_string(f, "a\"b");
    REQUIRE(fclose(f) == 0);
    CHECK(std::string(data, len) == R"("a\"b")");
    free(data);
}

TEST_CASE("json: malformed input gives an error with a position") {
    const char *bad[] = {
        "",  "{",  "[1,]", "{\"a\" 1}", "{\"a\":}", "\"abc", "tru", "01", "1.", "1e", "-",
        "[1 2]", "{\"a\":1,}", "\"\\x\"", "\"\\ud800\"", "\"\\udc00\"", "\"a\nb\"", "[1] 2", "nul",
        "\"\xff\"", "\"\xc0\x80\"", "\"\xed\xa0\x80\"",
    };
    for (const char *text : bad) {
        std::string error;
        JsonValue *v = parse(text, &error);
        CHECK_MESSAGE(v == nullptr, "accepted: ", text);
        CHECK_MESSAGE(error.find("line 1, column") != std::string::npos, "error was: ", error);
        json_free(v);
    }
    std::string error;
    CHECK(parse("{\n  \"a\": [1,\n  2,,]\n}", &error) == nullptr);
    CHECK(error.find("line 3") != std::string::npos);
}

TEST_CASE("json: deep nesting is refused, not a stack overflow") {
    std::string deep(100000, '[');
    std::string error;
    CHECK(parse(deep, &error) == nullptr);
    CHECK(error.find("too deep") != std::string::npos);
}

TEST_CASE("json: random mutations never crash") {
    const std::string seed_doc =
        R"({"question": "Wie geht's?", "documents": ["a", "b\n", "\u00e9"], "oracle": 1, "x": [1.5, -2e3, null, true]})";
    std::mt19937 rng(1234);
    int accepted = 0;
    for (int trial = 0; trial < 20000; trial++) {
        std::string doc = seed_doc;
        int edits = 1 + (int)(rng() % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = rng() % doc.size();
            switch (rng() % 3) {
            case 0: doc[at] = (char)(rng() % 256); break;
            case 1: doc.erase(at, 1 + rng() % 3); break;
            default: doc.insert(at, 1, "{}[]\",:\\u0"[rng() % 11]); break;
            }
            if (doc.empty()) doc = "x";
        }
        JsonValue *v = parse(doc);
        accepted += v != nullptr;
        json_free(v);
    }
    CHECK(accepted < 20000);
}
