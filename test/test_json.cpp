// Tests for formats/json.c: values, escapes, errors with line/column, and a mutation
// fuzz that must never crash (ASan/UBSan watch it).
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <string>

#include "formats/json.h"

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
