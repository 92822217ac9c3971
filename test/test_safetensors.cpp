// test_safetensors.cpp: the safetensors reader and writer: a round trip of
// every dtype, hand-built broken files (each must give -1 and a message with
// the path and the reason; overlaps, gaps and trailing bytes refused as the
// reference implementation refuses them), and every single-bit flip of a header.
#include <doctest/doctest.h>

#include "formats/safetensors.h"
#include "formats/float16.h"
#include "formats/tensor.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace {

// A fresh directory under /tmp, removed with everything in it at scope exit.
struct TempDir {
    std::string path;
    TempDir() {
        char name[] = "/tmp/qlora_st_XXXXXX";
        REQUIRE(mkdtemp(name) != nullptr);
        path = name;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
    std::string file(const char *name) const { return path + "/" + name; }
};

// Replaces path with a new file (removing first: on ext4, truncating a file
// and rewriting it forces a slow flush, and the bit-flip test does it often).
void write_bytes(const std::string &path, const std::string &bytes) {
    std::remove(path.c_str());
    FILE *f = std::fopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    REQUIRE(std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size());
    std::fclose(f);
}

std::string read_bytes(const std::string &path) {
    FILE *f = std::fopen(path.c_str(), "rb");
    REQUIRE(f != nullptr);
    std::string bytes;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.append(buf, n);
    std::fclose(f);
    return bytes;
}

// A safetensors file: 8-byte little-endian length, header, data.
std::string make_file(const std::string &header, const std::string &data, uint64_t header_len) {
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; i++) bytes[i] = (char)(header_len >> (8 * i));
    return bytes + header + data;
}

std::string make_file(const std::string &header, const std::string &data) {
    return make_file(header, data, header.size());
}

TensorInfo make_tensor(const char *name, DType dtype, std::vector<int64_t> shape, const void *data) {
    TensorInfo t = {};
    t.name = (char *)name;
    t.dtype = dtype;
    t.ndim = (int)shape.size();
    for (int i = 0; i < t.ndim; i++) t.shape[i] = shape[i];
    t.data = data;
    t.nbytes = dtype_nbytes(dtype, tensor_numel(&t));
    return t;
}

// Opens a file that must be refused: -1, a message naming the path and
// containing reason, and an empty SafetensorsFile.
void expect_refused(const std::string &path, const char *reason) {
    SafetensorsFile f;
    char err[512] = "";
    CHECK(safetensors_open(&f, path.c_str(), err, sizeof err) == -1);
    CHECK_MESSAGE(std::strstr(err, path.c_str()) != nullptr, err);
    CHECK_MESSAGE(std::strstr(err, reason) != nullptr, err, " (expected '", reason, "')");
    CHECK(f.tensors.count == 0);
    CHECK(f.tensors.tensors == nullptr);
    CHECK(f.file.data == nullptr);
}

// Every tensor of an opened file lies inside its mapping.
bool tensors_inside_mapping(const SafetensorsFile &f) {
    const char *begin = (const char *)f.file.data, *end = begin + f.file.size;
    for (int i = 0; i < f.tensors.count; i++) {
        const TensorInfo &t = f.tensors.tensors[i];
        const char *data = (const char *)t.data;
        if (data < begin || data > end || t.nbytes > (size_t)(end - data)) return false;
    }
    return true;
}

}  // namespace

TEST_CASE("safetensors: write then read every dtype") {
    TempDir dir;
    std::vector<float> f32 = {1.5f, -2.25f, 3.0e-5f, 1e20f, 0.0f, -0.0f};
    std::vector<uint16_t> f16 = {f32_to_f16(1.0f), f32_to_f16(-0.5f), f32_to_f16(65504.0f), 0x7C00, 1};
    std::vector<uint16_t> bf16 = {f32_to_bf16(3.14159f), f32_to_bf16(-1e-30f), f32_to_bf16(7.0f)};
    std::vector<int32_t> i32 = {0, -1, 2147483647, -2147483647 - 1};
    std::vector<int64_t> i64 = {INT64_MIN, -1, 0, INT64_MAX};
    float scalar = 42.0f;
    std::vector<TensorInfo> tensors = {
        make_tensor("odd.bf16", DT_BF16, {3}, bf16.data()),   // odd byte count first, to test alignment
        make_tensor("model.layers.0.weight", DT_F32, {2, 3}, f32.data()),
        make_tensor("half", DT_F16, {5, 1}, f16.data()),
        make_tensor("four.dims", DT_I32, {1, 2, 1, 2}, i32.data()),
        make_tensor("longs", DT_I64, {4}, i64.data()),
        make_tensor("scalar", DT_F32, {}, &scalar),
        make_tensor("empty", DT_F32, {0, 7}, nullptr),
        make_tensor("quote\" back\\slash\nnewline \xed\x95\x9c", DT_BF16, {1, 1}, bf16.data()),
    };
    std::string path = dir.file("all.safetensors");
    char err[512] = "";
    REQUIRE_MESSAGE(safetensors_write(path.c_str(), tensors.data(), (int)tensors.size(), err, sizeof err) == 0, err);
    CHECK_FALSE(std::filesystem::exists(path + ".tmp"));

    SafetensorsFile f;
    REQUIRE_MESSAGE(safetensors_open(&f, path.c_str(), err, sizeof err) == 0, err);
    CHECK(f.tensors.count == (int)tensors.size());
    for (const TensorInfo &want : tensors) {
        const TensorInfo *got = tensor_find(&f.tensors, want.name);
        REQUIRE_MESSAGE(got != nullptr, want.name);
        CHECK(got->dtype == want.dtype);
        CHECK(got->ndim == want.ndim);
        for (int d = 0; d < want.ndim; d++) CHECK(got->shape[d] == want.shape[d]);
        CHECK(got->nbytes == want.nbytes);
        if (want.nbytes) CHECK(std::memcmp(got->data, want.data, want.nbytes) == 0);
        CHECK((uintptr_t)got->data % dtype_block_bytes(want.dtype) == 0);
    }
    const unsigned char *base = (const unsigned char *)f.file.data;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = header_len << 8 | base[i];
    CHECK(header_len % 8 == 0);
    CHECK(std::string((const char *)base + 8, 40).find("\"__metadata__\":{\"format\":\"pt\"}") != std::string::npos);
    safetensors_close(&f);
    CHECK(f.tensors.count == 0);

    // Writing again replaces the file whole.
    REQUIRE(safetensors_write(path.c_str(), tensors.data(), 1, err, sizeof err) == 0);
    REQUIRE(safetensors_open(&f, path.c_str(), err, sizeof err) == 0);
    CHECK(f.tensors.count == 1);
    safetensors_close(&f);
}

TEST_CASE("safetensors: a failed write leaves the existing file alone") {
    TempDir dir;
    std::string path = dir.file("keep.safetensors");
    float values[4] = {1, 2, 3, 4};
    TensorInfo good = make_tensor("w", DT_F32, {4}, values);
    char err[512] = "";
    REQUIRE(safetensors_write(path.c_str(), &good, 1, err, sizeof err) == 0);
    std::string before = read_bytes(path);

    TensorInfo bad_dtype = make_tensor("q", DT_Q4_0, {32}, values);
    bad_dtype.nbytes = 18;
    CHECK(safetensors_write(path.c_str(), &bad_dtype, 1, err, sizeof err) == -1);
    CHECK(std::strstr(err, "Q4_0") != nullptr);

    TensorInfo bad_size = good;
    bad_size.nbytes = 12;
    CHECK(safetensors_write(path.c_str(), &bad_size, 1, err, sizeof err) == -1);
    CHECK(std::strstr(err, "'w'") != nullptr);

    TensorInfo twice[2] = {good, good};
    CHECK(safetensors_write(path.c_str(), twice, 2, err, sizeof err) == -1);
    CHECK(std::strstr(err, "twice") != nullptr);

    TensorInfo reserved = make_tensor("__metadata__", DT_F32, {4}, values);
    CHECK(safetensors_write(path.c_str(), &reserved, 1, err, sizeof err) == -1);

    CHECK(read_bytes(path) == before);
    CHECK_FALSE(std::filesystem::exists(path + ".tmp"));

    std::string nowhere = dir.file("no/such/dir.safetensors");
    CHECK(safetensors_write(nowhere.c_str(), &good, 1, err, sizeof err) == -1);
    CHECK(std::strstr(err, "cannot create") != nullptr);
}

TEST_CASE("safetensors: metadata is skipped, zero tensors are fine") {
    TempDir dir;
    std::string path = dir.file("meta.safetensors");
    write_bytes(path, make_file("{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
                                "\"data_offsets\":[0,4]}}  ",
                                std::string(4, '\0')));
    SafetensorsFile f;
    char err[512] = "";
    REQUIRE_MESSAGE(safetensors_open(&f, path.c_str(), err, sizeof err) == 0, err);
    CHECK(f.tensors.count == 1);
    CHECK(std::string(f.tensors.tensors[0].name) == "a");
    safetensors_close(&f);

    write_bytes(path, make_file("{}", ""));
    REQUIRE_MESSAGE(safetensors_open(&f, path.c_str(), err, sizeof err) == 0, err);
    CHECK(f.tensors.count == 0);
    safetensors_close(&f);
}

// The format lets a tensor start at any byte (data points into the mapping):
// reading one at an odd address must give its values (found by fuzz_safetensors,
// where UBSan refused the 2-byte loads of tensor_to_f32).
TEST_CASE("safetensors: tensors at odd addresses are read correctly") {
    TempDir dir;
    std::string path = dir.file("odd.safetensors");
    // a header of odd length, so that the data (and every tensor, each at an even offset in it) starts at an
    // odd address: the file is mapped page-aligned and the data starts 8 + header bytes in
    std::string header = "{\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                         "\"b\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[4,6]},"
                         "\"i\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[6,10]},"
                         "\"l\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[10,18]}}";
    header.append(1 - header.size() % 2, ' ');
    // fp16 1.0 and -2.0; bf16 3.0; int32 -5; int64 7 (little-endian)
    const std::string data("\x00\x3c" "\x00\xc0" "\x40\x40" "\xfb\xff\xff\xff" "\x07\0\0\0\0\0\0\0", 18);
    write_bytes(path, make_file(header, data));
    SafetensorsFile f;
    char err[512] = "";
    REQUIRE_MESSAGE(safetensors_open(&f, path.c_str(), err, sizeof err) == 0, err);
    const char *names[4] = {"h", "b", "i", "l"};
    const std::vector<std::vector<float>> want = {{1.0f, -2.0f}, {3.0f}, {-5.0f}, {7.0f}};
    for (int k = 0; k < 4; k++) {
        CAPTURE(names[k]);
        const TensorInfo *t = tensor_find(&f.tensors, names[k]);
        REQUIRE(t != nullptr);
        CHECK((uintptr_t)t->data % 2 == 1);
        std::vector<float> got(want[k].size());
        tensor_to_f32(t->dtype, t->data, got.data(), (int64_t)got.size());
        CHECK(got == want[k]);
    }
    safetensors_close(&f);
}

TEST_CASE("safetensors: broken files are refused with the path and the reason") {
    TempDir dir;
    std::string path = dir.file("bad.safetensors");
    const std::string data16(16, '\1');
    struct Case {
        const char *what;
        std::string bytes;
        const char *reason;
    };
    std::vector<Case> cases = {
        {"shorter than the length field", std::string("\x10\0\0\0\0", 5), "truncated"},
        {"header length past the end", make_file("{}", "", 1000), "runs past the end"},
        {"header length over the cap", make_file("{}", "", 1ull << 40), "limit"},
        {"bad JSON", make_file("{\"w\": {\"dtype\": ", data16), "not valid JSON"},
        {"header not an object", make_file("[1, 2]", data16), "not a JSON object"},
        {"unknown dtype", make_file("{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[16],\"data_offsets\":[0,16]}}", data16),
         "tensor 'w': dtype 'F8_E4M3' is not supported"},
        {"offsets outside the file",
         make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[100],\"data_offsets\":[0,400]}}", data16),
         "tensor 'w': data_offsets [0, 400) lie outside the file"},
        {"size mismatch", make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", data16),
         "tensor 'w': data_offsets cover 16 bytes but its F32 shape needs 12"},
        {"overlap",
         make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                   data16),
         "tensor 'b': data bytes [4, 12) overlap tensor 'a' [0, 8)"},
        // as the reference implementation, the tensors must fill the data exactly
        {"gap between tensors",
         make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                   data16),
         "data bytes [4, 8) between tensor 'a' and tensor 'b' belong to no tensor"},
        {"bytes before the first tensor",
         make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[4,16]}}", data16),
         "data bytes [0, 4) belong to no tensor: the first, 'w', starts at 4"},
        {"bytes after the last tensor",
         make_file("{\"w\":{\"dtype\":\"BF16\",\"shape\":[6],\"data_offsets\":[0,12]}}", data16),
         "the last 4 bytes of the file belong to no tensor: the last tensor, 'w', ends at data byte 12"},
        {"data but no tensor", make_file("{}", data16), "the file has 16 bytes of data but no tensor"},
        {"duplicate name",
         make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                   data16),
         "duplicate key \"a\""},   // the JSON parser refuses a key given twice
        {"five dims", make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,4],\"data_offsets\":[0,16]}}", data16),
         "tensor 'w': \"shape\" must be an array of at most 4"},
        {"negative size", make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}", data16),
         "tensor 'w': shape[0] is not a non-negative integer"},
        {"fractional offset", make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0.5,16]}}", data16),
         "tensor 'w': \"data_offsets\" must be"},
        {"offsets reversed", make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", data16),
         "tensor 'w': \"data_offsets\" must be"},
        {"no data_offsets", make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[4]}}", data16),
         "tensor 'w': \"data_offsets\" must be"},
        {"no dtype", make_file("{\"w\":{\"shape\":[4],\"data_offsets\":[0,16]}}", data16),
         "tensor 'w': \"dtype\" is missing"},
        {"entry not an object", make_file("{\"w\":7}", data16), "tensor 'w': header entry is not an object"},
        {"shape overflows",
         make_file("{\"w\":{\"dtype\":\"I64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,16]}}", data16),
         "tensor 'w': shape is too large"},
    };
    for (const Case &c : cases) {
        CAPTURE(c.what);
        write_bytes(path, c.bytes);
        expect_refused(path, c.reason);
    }
    write_bytes(path, "");
    expect_refused(path, "empty");
    expect_refused(dir.file("missing.safetensors"), "cannot open");
}

TEST_CASE("safetensors: every bit flip and truncation of a file is refused or stays in bounds") {
    TempDir dir;
    float a[3] = {1, 2, 3};
    uint16_t b[5] = {1, 2, 3, 4, 5};
    TensorInfo tensors[2] = {make_tensor("a", DT_F32, {3}, a), make_tensor("bb", DT_BF16, {5, 1}, b)};
    std::string good_path = dir.file("good.safetensors"), path = dir.file("flipped.safetensors");
    char err[512] = "";
    REQUIRE(safetensors_write(good_path.c_str(), tensors, 2, err, sizeof err) == 0);
    const std::string good = read_bytes(good_path);
    uint64_t header_end = 8;
    for (int i = 7; i >= 0; i--) header_end += (uint64_t)(unsigned char)good[i] << (8 * i);
    REQUIRE(header_end < good.size());

    int refused = 0, accepted = 0;
    for (size_t byte = 0; byte < header_end; byte++) {
        for (int bit = 0; bit < 8; bit++) {
            std::string bytes = good;
            bytes[byte] = (char)(bytes[byte] ^ (1 << bit));
            write_bytes(path, bytes);
            SafetensorsFile f;
            if (safetensors_open(&f, path.c_str(), err, sizeof err) == 0) {
                accepted++;
                CHECK(tensors_inside_mapping(f));
                safetensors_close(&f);
            } else {
                refused++;
                CHECK(std::strstr(err, path.c_str()) != nullptr);
                CHECK(f.file.data == nullptr);
            }
        }
    }
    CHECK(refused > 0);
    MESSAGE(refused << " flips refused, " << accepted << " accepted (e.g. a changed name or padding)");

    for (size_t len = 0; len < good.size(); len++) {
        write_bytes(path, good.substr(0, len));
        SafetensorsFile f;
        CHECK(safetensors_open(&f, path.c_str(), err, sizeof err) == -1);
        CHECK(std::strstr(err, path.c_str()) != nullptr);
    }
}
