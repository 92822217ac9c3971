// Tests for formats/gguf.c, ggml_blocks.c, float16.c and tensor.c: the block dequantizers on hand-built blocks
// with known values, a small GGUF file written here, and corrupt files
// (truncated at every length, every header bit flipped, lying offsets,
// tensors that overlap or leave bytes to none, relabelled types, rows of
// partial blocks, names given twice).
#include <doctest/doctest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "formats/ggml_blocks.h"
#include "formats/float16.h"
#include "formats/tensor.h"
#include "model.h"

static void put_f16(unsigned char *p, float x) {
    uint16_t h = f32_to_f16(x);
    memcpy(p, &h, 2);
}

TEST_CASE("f16 and bf16 conversions") {
    CHECK(f16_to_f32(0x3C00) == 1.0f);
    CHECK(f16_to_f32(0xC000) == -2.0f);
    CHECK(f16_to_f32(0x0001) == 5.960464477539063e-08f);   // smallest subnormal
    CHECK(f16_to_f32(0x7BFF) == 65504.0f);
    CHECK(f32_to_f16(1.0f) == 0x3C00);
    CHECK(f32_to_f16(65504.0f) == 0x7BFF);
    CHECK(f32_to_f16(1e6f) == 0x7C00);
    CHECK(f32_to_f16(1.0f + 1.0f / 2048) == 0x3C00);        // tie rounds to even
    CHECK(f32_to_f16(1.0f + 3.0f / 2048) == 0x3C02);
    for (uint32_t h = 0; h < 0x7C00; h++) CHECK_EQ(f32_to_f16(f16_to_f32((uint16_t)h)), h);
    CHECK(bf16_to_f32(0x3F80) == 1.0f);
    CHECK(f32_to_bf16(1.0f) == 0x3F80);
    CHECK(f32_to_bf16(1.00390625f) == 0x3F80);              // 1 + 2^-8: tie to even
    CHECK(f32_to_bf16(1.01171875f) == 0x3F82);              // 1 + 3*2^-8: tie to even (up)
}

TEST_CASE("Q4_0 block: value = d * (nibble - 8), low nibbles first") {
    unsigned char block[18] = {0};
    put_f16(block, 0.5f);
    block[2 + 0] = 0xF1;   // value 0: low nibble 1 -> -3.5; value 16: high nibble 15 -> 3.5
    block[2 + 5] = 0x08;   // value 5: 8 -> 0; value 21: 0 -> -4
    float out[32];
    dequantize_q4_0(block, out, 32);
    CHECK(out[0] == -3.5f);
    CHECK(out[16] == 3.5f);
    CHECK(out[5] == 0.0f);
    CHECK(out[21] == -4.0f);
    CHECK(out[1] == -4.0f);
}

TEST_CASE("Q4_1 block: value = d * nibble + m") {
    unsigned char block[20] = {0};
    put_f16(block, 0.25f);
    put_f16(block + 2, -1.0f);
    block[4 + 0] = 0x3A;   // value 0: 10 -> 1.5; value 16: 3 -> -0.25
    block[4 + 15] = 0xF0;  // value 15: 0 -> -1; value 31: 15 -> 2.75
    float out[32];
    dequantize_q4_1(block, out, 32);
    CHECK(out[0] == 1.5f);
    CHECK(out[16] == -0.25f);
    CHECK(out[15] == -1.0f);
    CHECK(out[31] == 2.75f);
}

TEST_CASE("Q5_0 and Q5_1 blocks: the fifth bit comes from qh") {
    unsigned char b0[22] = {0};
    put_f16(b0, 1.0f);
    uint32_t qh = (1u << 0) | (1u << 17);   // fifth bit of value 0 and of value 17
    memcpy(b0 + 2, &qh, 4);
    b0[6 + 0] = 0x02;   // value 0: 2 | 16 = 18 -> 2; value 16: 0 -> -16
    b0[6 + 1] = 0x70;   // value 1: 0 -> -16; value 17: 7 | 16 = 23 -> 7
    float out[32];
    dequantize_q5_0(b0, out, 32);
    CHECK(out[0] == 2.0f);
    CHECK(out[16] == -16.0f);
    CHECK(out[1] == -16.0f);
    CHECK(out[17] == 7.0f);

    unsigned char b1[24] = {0};
    put_f16(b1, 0.5f);
    put_f16(b1 + 2, 10.0f);
    memcpy(b1 + 4, &qh, 4);
    b1[8 + 0] = 0x02;   // value 0: 18 -> 19; value 16: 0 -> 10
    b1[8 + 1] = 0x70;   // value 17: 23 -> 21.5
    dequantize_q5_1(b1, out, 32);
    CHECK(out[0] == 19.0f);
    CHECK(out[16] == 10.0f);
    CHECK(out[17] == 21.5f);
}

TEST_CASE("Q8_0 block: value = d * int8") {
    unsigned char block[34] = {0};
    put_f16(block, 0.125f);
    block[2 + 0] = 0x7F;          // 127
    block[2 + 31] = 0x80;         // -128
    block[2 + 7] = (unsigned char)-3;
    float out[64];
    dequantize_q8_0(block, out, 32);
    CHECK(out[0] == 15.875f);
    CHECK(out[31] == -16.0f);
    CHECK(out[7] == -0.375f);
    CHECK(out[1] == 0.0f);
}

// ---- a small GGUF file built byte by byte ------------------------------------

struct GGUFBuilder {
    std::vector<unsigned char> bytes;
    void raw(const void *p, size_t n) {
        const unsigned char *c = (const unsigned char *)p;
        bytes.insert(bytes.end(), c, c + n);
    }
    void u32(uint32_t v) { raw(&v, 4); }
    void u64(uint64_t v) { raw(&v, 8); }
    void str(const std::string &s) { u64(s.size()); raw(s.data(), s.size()); }
};

struct SmallFile {
    std::vector<unsigned char> bytes;
    size_t offset_field_of_second_tensor;
};

// Two tensors: "a" F32 [2, 3] (dims innermost first: 3, 2), "b" Q8_0 [32].
static SmallFile build_small_gguf() {
    GGUFBuilder b;
    b.raw("GGUF", 4);
    b.u32(3);
    b.u64(2);   // tensors
    b.u64(4);   // metadata
    b.str("general.architecture"); b.u32(GGUF_STRING); b.str("llama");
    b.str("llama.block_count"); b.u32(GGUF_UINT32); b.u32(7);
    b.str("llama.rope.freq_base"); b.u32(GGUF_FLOAT32); float theta = 500000.0f; b.raw(&theta, 4);
    b.str("tokenizer.ggml.tokens"); b.u32(GGUF_ARRAY); b.u32(GGUF_STRING); b.u64(2); b.str("hi"); b.str("there");
    b.str("a"); b.u32(2); b.u64(3); b.u64(2); b.u32(DT_F32); b.u64(0);
    b.str("b"); b.u32(1); b.u64(32); b.u32(DT_Q8_0);
    SmallFile f;
    f.offset_field_of_second_tensor = b.bytes.size();
    b.u64(32);
    while (b.bytes.size() % 32) b.bytes.push_back(0);
    float a[6] = {1, 2, 3, 4, 5, 6};
    b.raw(a, sizeof a);
    while (b.bytes.size() % 32) b.bytes.push_back(0);
    unsigned char q8[34] = {0};
    put_f16(q8, 2.0f);
    q8[2] = 3;
    b.raw(q8, sizeof q8);
    f.bytes = b.bytes;
    return f;
}

static std::string write_temp(const std::vector<unsigned char> &bytes) {
    char path[] = "/tmp/qlora_test_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    FILE *f = fdopen(fd, "wb");
    if (!bytes.empty()) fwrite(bytes.data(), 1, bytes.size(), f);
    fclose(f);
    return path;
}

TEST_CASE("gguf: a hand-built file reads back") {
    SmallFile small = build_small_gguf();
    std::string path = write_temp(small.bytes);
    GGUFFile f;
    char err[512];
    REQUIRE_MESSAGE(gguf_open(&f, path.c_str(), err, sizeof err) == 0, err);
    char *arch = gguf_get_string(&f, "general.architecture");
    CHECK(std::string(arch) == "llama");
    free(arch);
    CHECK(gguf_get_int(&f, "llama.block_count", 0) == 7);
    CHECK(gguf_get_float(&f, "llama.rope.freq_base", 0) == 500000.0);
    const GGUFKeyValue *tokens = gguf_find(&f, "tokenizer.ggml.tokens");
    REQUIRE(tokens);
    CHECK(tokens->array_count == 2);
    CHECK(std::string(tokens->array_strings[1].ptr, tokens->array_strings[1].len) == "there");
    REQUIRE(f.tensors.count == 2);
    const TensorInfo *a = tensor_find(&f.tensors, "a");
    REQUIRE(a);
    CHECK(a->ndim == 2);
    CHECK(a->shape[0] == 2);   // outermost first
    CHECK(a->shape[1] == 3);
    CHECK(((const float *)a->data)[5] == 6.0f);
    const TensorInfo *b = tensor_find(&f.tensors, "b");
    float values[32];
    tensor_to_f32(b->dtype, b->data, values, 32);
    CHECK(values[0] == 6.0f);
    gguf_close(&f);
    remove(path.c_str());
}

TEST_CASE("gguf: truncated at every length gives an error, never a crash") {
    SmallFile small = build_small_gguf();
    for (size_t len = 0; len < small.bytes.size(); len++) {
        std::vector<unsigned char> cut(small.bytes.begin(), small.bytes.begin() + len);
        std::string path = write_temp(cut);
        GGUFFile f;
        char err[512] = "";
        CHECK_MESSAGE(gguf_open(&f, path.c_str(), err, sizeof err) == -1, "length ", len);
        CHECK(std::string(err).find(path) != std::string::npos);
        remove(path.c_str());
    }
}

TEST_CASE("gguf: a lying tensor offset is refused by name") {
    SmallFile small = build_small_gguf();
    uint64_t lie = 1 << 20;
    memcpy(&small.bytes[small.offset_field_of_second_tensor], &lie, 8);
    std::string path = write_temp(small.bytes);
    GGUFFile f;
    char err[512] = "";
    CHECK(gguf_open(&f, path.c_str(), err, sizeof err) == -1);
    CHECK(std::string(err).find("tensor 'b'") != std::string::npos);
    CHECK(std::string(err).find("outside the file") != std::string::npos);
    remove(path.c_str());
}

TEST_CASE("gguf: every flipped header bit is either read or refused cleanly") {
    SmallFile small = build_small_gguf();
    size_t header = small.offset_field_of_second_tensor + 8;
    int refused = 0;
    for (size_t byte = 0; byte < header; byte++) {
        for (int bit = 0; bit < 8; bit++) {
            std::vector<unsigned char> flipped = small.bytes;
            flipped[byte] ^= (unsigned char)(1 << bit);
            std::string path = write_temp(flipped);
            GGUFFile f;
            char err[512] = "";
            if (gguf_open(&f, path.c_str(), err, sizeof err) == 0) gguf_close(&f);
            else refused++;
            remove(path.c_str());
        }
    }
    CHECK(refused > 0);
}

// Counts and sizes in the header are claims: they are checked against the
// file before anything is allocated or computed from them (both found while
// writing fuzz_gguf, whose corpus keeps the inputs: a 1000000-entry table
// allocated for a 24-byte file, and INT_MIN / -1 computing the head size).
TEST_CASE("gguf: a header counting more entries than the file can hold is refused before allocating") {
    GGUFBuilder b;
    b.raw("GGUF", 4);
    b.u32(3);
    b.u64(1000000);   // tensors
    b.u64(0);         // metadata
    std::string path = write_temp(b.bytes);
    GGUFFile f;
    char err[512] = "";
    CHECK(gguf_open(&f, path.c_str(), err, sizeof err) == -1);
    CHECK_MESSAGE(std::string(err).find("1000000 tensors") != std::string::npos, err);
    remove(path.c_str());

    b.bytes.resize(8);
    b.u64(0);
    b.u64(1000000);
    path = write_temp(b.bytes);
    CHECK(gguf_open(&f, path.c_str(), err, sizeof err) == -1);
    CHECK_MESSAGE(std::string(err).find("1000000 metadata entries") != std::string::npos, err);
    remove(path.c_str());
}

TEST_CASE("gguf: model sizes outside an int are refused, never computed with") {
    GGUFBuilder b;
    b.raw("GGUF", 4);
    b.u32(3);
    b.u64(0);   // tensors
    b.u64(3);   // metadata
    b.str("general.architecture"); b.u32(GGUF_STRING); b.str("llama");
    b.str("llama.embedding_length"); b.u32(GGUF_INT64); b.u64((uint64_t)INT64_C(-2147483648));
    b.str("llama.attention.head_count"); b.u32(GGUF_UINT32); b.u32(0xFFFFFFFFu);
    while (b.bytes.size() % 32) b.bytes.push_back(0);   // the (empty) data section starts aligned
    std::string path = write_temp(b.bytes);
    Model m;
    char err[512] = "";
    CHECK(model_load(&m, path.c_str(), err, sizeof err) == -1);
    CHECK_MESSAGE(std::string(err).find("'llama.embedding_length' is -2147483648, not a size") != std::string::npos, err);
    remove(path.c_str());
}

TEST_CASE("gguf: not a GGUF file, wrong version, missing file") {
    GGUFFile f;
    char err[512] = "";
    std::string text = write_temp(std::vector<unsigned char>{'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd', '!',
                                                            '!', '!', '!', '!', '!', '!', '!', '!', '!', '!', '!', '!'});
    CHECK(gguf_open(&f, text.c_str(), err, sizeof err) == -1);
    CHECK(std::string(err).find("bad magic") != std::string::npos);
    remove(text.c_str());

    SmallFile small = build_small_gguf();
    small.bytes[4] = 2;
    std::string v2 = write_temp(small.bytes);
    CHECK(gguf_open(&f, v2.c_str(), err, sizeof err) == -1);
    CHECK(std::string(err).find("version") != std::string::npos);
    remove(v2.c_str());

    CHECK(gguf_open(&f, "/nonexistent/model.gguf", err, sizeof err) == -1);
    CHECK(std::string(err).find("/nonexistent/model.gguf") != std::string::npos);
}

// ---- the file checked against itself ------------------------------------------

// One tensor of a built file: dims innermost first, as GGUF lists them.
struct TensorSpec {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    size_t nbytes;   // the data written for it (zeros)
};

// A GGUF with one u32 metadata entry per key (value 1) and the tensors laid
// out as llama.cpp writes them, each padded to 32 bytes; offsets overrides
// the offsets written (empty: the right ones).
static std::vector<unsigned char> build_gguf(const std::vector<std::string> &keys,
                                             const std::vector<TensorSpec> &tensors,
                                             std::vector<uint64_t> offsets = {}) {
    GGUFBuilder b;
    b.raw("GGUF", 4);
    b.u32(3);
    b.u64(tensors.size());
    b.u64(keys.size());
    for (const std::string &key : keys) { b.str(key); b.u32(GGUF_UINT32); b.u32(1); }
    uint64_t next = 0;
    for (size_t i = 0; i < tensors.size(); i++) {
        const TensorSpec &t = tensors[i];
        b.str(t.name);
        b.u32((uint32_t)t.dims.size());
        for (uint64_t d : t.dims) b.u64(d);
        b.u32(t.type);
        b.u64(i < offsets.size() ? offsets[i] : next);
        next += (t.nbytes + 31) / 32 * 32;
    }
    for (const TensorSpec &t : tensors) {
        while (b.bytes.size() % 32) b.bytes.push_back(0);
        b.bytes.resize(b.bytes.size() + t.nbytes, 0);
    }
    return b.bytes;
}

// gguf_open on bytes must fail with a message holding the path and every part.
static void expect_gguf_refused(const std::vector<unsigned char> &bytes, std::vector<std::string> parts) {
    std::string path = write_temp(bytes);
    GGUFFile f;
    char err[512] = "";
    CHECK(gguf_open(&f, path.c_str(), err, sizeof err) == -1);
    CHECK_MESSAGE(std::string(err).find(path) != std::string::npos, err);
    for (const std::string &part : parts) CHECK_MESSAGE(std::string(err).find(part) != std::string::npos, err);
    remove(path.c_str());
}

static void expect_gguf_opens(const std::vector<unsigned char> &bytes) {
    std::string path = write_temp(bytes);
    GGUFFile f;
    char err[512] = "";
    CHECK_MESSAGE(gguf_open(&f, path.c_str(), err, sizeof err) == 0, err);
    if (f.path) gguf_close(&f);
    remove(path.c_str());
}

TEST_CASE("gguf: tensors must fill the data section exactly (llama.cpp's layout)") {
    // "a" F16 [2, 64] (256 bytes), "b" Q8_0 [64] (68 bytes) at 256
    const std::vector<TensorSpec> tensors = {{"a", {64, 2}, DT_F16, 256}, {"b", {64}, DT_Q8_0, 68}};
    std::vector<unsigned char> good = build_gguf({}, tensors);
    expect_gguf_opens(good);
    std::vector<unsigned char> padded = good;   // the last tensor's padding is optional
    padded.resize(padded.size() + 28, 0);
    expect_gguf_opens(padded);

    SUBCASE("overlap") {
        expect_gguf_refused(build_gguf({}, tensors, {0, 224}),
                            {"tensor 'b': data bytes [224, 292) overlap tensor 'a' [0, 256)"});
    }
    SUBCASE("gap") {
        std::vector<unsigned char> gap = build_gguf({}, tensors, {0, 288});
        gap.resize(gap.size() + 32, 0);
        expect_gguf_refused(gap, {"data bytes [256, 288) between tensor 'a' and tensor 'b' belong to no tensor"});
    }
    SUBCASE("bytes before the first tensor") {
        std::vector<unsigned char> late = build_gguf({}, tensors, {32, 288});
        late.resize(late.size() + 32, 0);
        expect_gguf_refused(late, {"data bytes [0, 32) belong to no tensor: the first, 'a', starts at 32"});
    }
    SUBCASE("trailing bytes") {
        padded.resize(padded.size() + 1, 0);
        expect_gguf_refused(padded, {"the last 29 bytes of the file belong to no tensor: the last tensor, 'b'"});
    }
    // the same bytes with one tensor's type changed: the size its type implies is not the room it has
    SUBCASE("a type relabelled to a larger one overlaps the next tensor") {
        // "a" Q8_0 [2, 64] (136 bytes, padded to 160), "b" F32 [64] (256 bytes) at 160
        std::vector<TensorSpec> relabelled = {{"a", {64, 2}, DT_Q8_0, 136}, {"b", {64}, DT_F32, 256}};
        expect_gguf_opens(build_gguf({}, relabelled));
        relabelled[0].type = DT_F16;   // 256 bytes
        expect_gguf_refused(build_gguf({}, relabelled), {"tensor 'b': data bytes [160, 416) overlap tensor 'a' [0, 256)"});
    }
    SUBCASE("a type relabelled to a smaller one leaves bytes to no tensor") {
        std::vector<TensorSpec> relabelled = tensors;
        relabelled[0].type = DT_Q8_0;   // 136 bytes
        expect_gguf_refused(build_gguf({}, relabelled), {"data bytes [136, 256) between tensor 'a' and tensor 'b'",
                                                         "the type or shape of 'a' is wrong"});
        relabelled = tensors;
        relabelled[1].type = DT_Q4_0;   // the last tensor: 36 bytes
        expect_gguf_refused(build_gguf({}, relabelled),
                            {"the last 32 bytes of the file belong to no tensor: the last tensor, 'b'"});
    }
}

TEST_CASE("gguf: block rows, duplicate names and keys are refused") {
    // Q8_0 [2, 48]: 96 values, three whole blocks, but a row of 48 is not whole blocks
    expect_gguf_refused(build_gguf({}, {{"w", {48, 2}, DT_Q8_0, 102}}),
                        {"tensor 'w' has rows of 48 values, not a whole number of Q8_0 blocks (32 values)"});
    expect_gguf_opens(build_gguf({}, {{"w", {64, 2}, DT_Q8_0, 136}}));
    expect_gguf_refused(build_gguf({}, {{"w", {32}, DT_F32, 128}, {"w", {32}, DT_F32, 128}}),
                        {"tensor 'w' is listed twice"});
    expect_gguf_refused(build_gguf({"llama.block_count", "general.alignment", "llama.block_count"}, {}),
                        {"metadata key 'llama.block_count' is given twice"});
}
