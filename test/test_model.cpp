// Tests for model.c on the real default model file: its config, and copies
// of it that are truncated, bit-flipped, or lie about a tensor's offset,
// shape or type, count fewer layers than they hold, or hold NaN/Inf weights;
// its tensors with a disallowed type or an unused one added. Each must give a
// clear error naming the file (and tensor), never a crash; and an HF
// directory with a tokenizer.json loads end to end.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include "infer/forward.h"
#include "model.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "test_util.h"

TEST_CASE("model: the default model's config") {
    const Model &m = default_model();
    const Config &c = m.config;
    CHECK(c.arch == ARCH_LLAMA);
    CHECK(c.dim == 576);
    CHECK(c.hidden_dim == 1536);
    CHECK(c.n_layers == 30);
    CHECK(c.n_heads == 9);
    CHECK(c.n_kv_heads == 3);
    CHECK(c.head_dim == 64);
    CHECK(c.vocab_size == 49152);
    CHECK(c.rope_theta == 100000.0f);
    CHECK(c.tied_embeddings == 1);
    CHECK(m.lm_head == m.embed);
    CHECK(model_num_params(&c) == 134515008);
}

static std::vector<char> read_all(const char *path) {
    FILE *f = fopen(path, "rb");
    REQUIRE(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    std::vector<char> bytes((size_t)size);
    REQUIRE(fread(bytes.data(), 1, bytes.size(), f) == bytes.size());
    fclose(f);
    return bytes;
}

static std::string write_temp(const char *data, size_t n) {
    char path[] = "/tmp/qlora_model_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, data, n) == (ssize_t)n);
    close(fd);
    return path;
}

static std::string load_error(const std::string &path) {
    Model m;
    char err[1024] = "";
    int status = model_load(&m, path.c_str(), err, sizeof err);
    if (status == 0) {
        model_free(&m);
        return "";
    }
    return err;
}

// Byte position of the tensor-info field after name: 0 = ndim, 4 = first dim,
// and for a 1-d tensor 12 = type, 16 = offset.
static size_t tensor_info_position(const std::vector<char> &bytes, const std::string &name) {
    std::string needle = std::string(1, (char)name.size()) + std::string(7, '\0') + name;
    for (size_t i = 0; i + needle.size() < bytes.size(); i++)
        if (memcmp(&bytes[i], needle.data(), needle.size()) == 0) return i + needle.size();
    FAIL("tensor info not found: ", name);
    return 0;
}

TEST_CASE("model: truncated copies of the default model are refused") {
    std::vector<char> bytes = read_all(DEFAULT_MODEL);
    for (size_t len : {(size_t)0, (size_t)3, (size_t)100, (size_t)1000000, bytes.size() / 2, bytes.size() - 1}) {
        std::string path = write_temp(bytes.data(), len);
        std::string err = load_error(path);
        CHECK_MESSAGE(err.find(path) != std::string::npos, "length ", len, ": ", err);
        remove(path.c_str());
    }
}

// A config (GGUF metadata or config.json) is a claim of the weights' sizes:
// the tensors must be there, in those shapes, before memory is taken for
// them. Here the claim is 200 TB and the file holds no tensor.
TEST_CASE("model: a config claiming more weights than the file holds is refused before allocating") {
    Config c = {};
    c.arch = ARCH_LLAMA;
    c.dim = 65536;
    c.hidden_dim = 262144;
    c.n_layers = 1024;
    c.n_heads = c.n_kv_heads = 512;
    c.head_dim = 128;
    c.vocab_size = 1 << 22;
    TensorList none = {nullptr, 0};
    Model m;
    char err[512] = "";
    CHECK(model_from_tensors(&m, &c, &none, 1, "huge.gguf", err, sizeof err) == -1);
    CHECK_MESSAGE(std::string(err).find("huge.gguf: tensor 'token_embd.weight' is missing") != std::string::npos, err);
}

TEST_CASE("model: lying tensor infos are refused by tensor name") {
    std::vector<char> bytes = read_all(DEFAULT_MODEL);
    size_t info = tensor_info_position(bytes, "output_norm.weight");
    SUBCASE("offset past the end") {
        uint64_t lie = (uint64_t)1 << 40;
        memcpy(&bytes[info + 16], &lie, 8);
        std::string path = write_temp(bytes.data(), bytes.size());
        std::string err = load_error(path);
        CHECK(err.find("'output_norm.weight'") != std::string::npos);
        CHECK(err.find("outside the file") != std::string::npos);
        remove(path.c_str());
    }
    SUBCASE("wrong shape") {
        uint64_t lie = 575;
        memcpy(&bytes[info + 4], &lie, 8);
        std::string path = write_temp(bytes.data(), bytes.size());
        std::string err = load_error(path);
        CHECK(err.find("'output_norm.weight' has shape [575], expected [576]") != std::string::npos);
        remove(path.c_str());
    }
    SUBCASE("unsupported type") {
        uint32_t q6_k = 14;
        memcpy(&bytes[info + 12], &q6_k, 4);
        std::string path = write_temp(bytes.data(), bytes.size());
        std::string err = load_error(path);
        CHECK(err.find("'output_norm.weight' has GGUF type 14 (Q6_K), which this reader does not support (it reads "
                       "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0") != std::string::npos);
        remove(path.c_str());
        uint32_t unused = 4;   // a number ggml no longer uses: no name
        memcpy(&bytes[info + 12], &unused, 4);
        path = write_temp(bytes.data(), bytes.size());
        CHECK(load_error(path).find("'output_norm.weight' has GGUF type 4, which") != std::string::npos);
        remove(path.c_str());
    }
    SUBCASE("missing tensor (renamed)") {
        bytes[info - 1] = 'X';   // output_norm.weighX
        std::string path = write_temp(bytes.data(), bytes.size());
        std::string err = load_error(path);
        CHECK(err.find("tensor 'output_norm.weight' is missing") != std::string::npos);
        remove(path.c_str());
    }
}

// Byte position of the value of a u32 metadata entry (after its key and type).
static size_t metadata_u32_position(const std::vector<char> &bytes, const std::string &key) {
    size_t at = tensor_info_position(bytes, key);   // keys are stored as tensor names are
    uint32_t type;
    memcpy(&type, &bytes[at], 4);
    REQUIRE(type == GGUF_UINT32);
    return at + 4;
}

// Byte position of a tensor's data in the default model.
static size_t data_position(const char *tensor) {
    GGUFFile f;
    char err[512] = "";
    REQUIRE_MESSAGE(gguf_open(&f, DEFAULT_MODEL, err, sizeof err) == 0, err);
    const TensorInfo *t = tensor_find(&f.tensors, tensor);
    REQUIRE(t);
    size_t at = (size_t)((const char *)t->data - (const char *)f.file.data);
    gguf_close(&f);
    return at;
}

// The error loading a copy of the default model with bytes changed.
static std::string error_of_copy(const std::vector<char> &bytes, std::string &path) {
    path = write_temp(bytes.data(), bytes.size());
    std::string err = load_error(path);
    remove(path.c_str());
    return err;
}

TEST_CASE("model: a GGUF holding more layers than its block_count is refused, naming the first unused tensor") {
    std::vector<char> bytes = read_all(DEFAULT_MODEL);
    uint32_t fewer = 29;
    memcpy(&bytes[metadata_u32_position(bytes, "llama.block_count")], &fewer, 4);
    std::string path, err = error_of_copy(bytes, path);
    CHECK_MESSAGE(err.find(path + ": tensor 'blk.29.") != std::string::npos, err);
    CHECK_MESSAGE(err.find("is in the file but not used: the metadata's llama.block_count says 29 layers") !=
                      std::string::npos, err);
}

TEST_CASE("model: a tensor relabelled to another type is refused at load, by name") {
    struct Case {
        const char *tensor;
        size_t type_field;   // after the name: ndim (4) and the dims (8 each)
        DType type;
        const char *reason;
    };
    const Case cases[] = {
        {"blk.0.attn_q.weight", 20, DT_Q4_0,
         "between tensor 'blk.0.attn_q.weight' and tensor 'blk.0.attn_v.weight' belong to no tensor"},
        {"blk.0.attn_q.weight", 20, DT_Q5_1, "overlap tensor 'blk.0.attn_q.weight'"},
        {"token_embd.weight", 20, DT_Q4_1, "between tensor 'token_embd.weight' and tensor 'blk.0.attn_norm.weight'"},
        {"blk.0.ffn_norm.weight", 12, DT_F16, "between tensor 'blk.0.ffn_norm.weight' and tensor 'blk.0.attn_k.weight'"},
        {"output_norm.weight", 12, DT_Q8_0, "'output_norm.weight'"},
    };
    for (const Case &c : cases) {
        CAPTURE(c.tensor);
        CAPTURE(dtype_name(c.type));
        std::vector<char> bytes = read_all(DEFAULT_MODEL);
        uint32_t type = (uint32_t)c.type;
        memcpy(&bytes[tensor_info_position(bytes, c.tensor) + c.type_field], &type, 4);
        std::string path, err = error_of_copy(bytes, path);
        CHECK_MESSAGE(err.find(path) != std::string::npos, err);
        CHECK_MESSAGE(err.find(c.reason) != std::string::npos, err);
    }
}

TEST_CASE("model: weights that decode to NaN or Inf are refused at load, by name") {
    std::vector<char> bytes = read_all(DEFAULT_MODEL);
    SUBCASE("a Q4_1 block whose scale is Inf") {
        uint16_t inf = 0x7C00;
        memcpy(&bytes[data_position("blk.5.ffn_up.weight") + 20 * 7], &inf, 2);   // block 7's d
        std::string path, err = error_of_copy(bytes, path);
        CHECK_MESSAGE(err.find(path + ": tensor 'blk.5.ffn_up.weight' (Q4_1) decodes to NaN or Inf") !=
                          std::string::npos, err);
    }
    SUBCASE("an F32 NaN in a norm") {
        float nan = NAN;
        memcpy(&bytes[data_position("blk.3.attn_norm.weight") + 4 * 9], &nan, 4);
        std::string path, err = error_of_copy(bytes, path);
        CHECK_MESSAGE(err.find("tensor 'blk.3.attn_norm.weight' (F32) decodes to NaN or Inf") != std::string::npos,
                      err);
    }
}

// model_from_tensors on the default model's tensors with one changed or one added.
TEST_CASE("model: a type the format does not allow for a tensor, or a tensor the model does not use, is refused") {
    GGUFFile f;
    char err[512] = "";
    REQUIRE_MESSAGE(gguf_open(&f, DEFAULT_MODEL, err, sizeof err) == 0, err);
    std::vector<TensorInfo> tensors(f.tensors.tensors, f.tensors.tensors + f.tensors.count);
    auto find = [&](const char *name) -> TensorInfo & {
        for (TensorInfo &t : tensors)
            if (std::string(t.name) == name) return t;
        FAIL("no tensor ", name);
        return tensors[0];
    };
    std::string reason;
    SUBCASE("a block-typed norm") {
        TensorInfo &norm = find("output_norm.weight");
        norm.dtype = DT_Q8_0;
        norm.nbytes = dtype_nbytes(DT_Q8_0, 576);
        reason = "tensor 'output_norm.weight' has type Q8_0, expected F32, F16 or BF16";
    }
    SUBCASE("an integer matrix") {
        find("blk.2.attn_k.weight").dtype = DT_I32;
        reason = "tensor 'blk.2.attn_k.weight' has type I32, expected F32, F16, BF16 or a GGML block type";
    }
    TensorInfo extra = find("blk.0.attn_norm.weight");
    SUBCASE("a tensor of no known name") {
        extra.name = (char *)"blk.0.attn_rot_embd";
        tensors.push_back(extra);
        reason = "tensor 'blk.0.attn_rot_embd' is in the file but not used: no llama weight has this name";
    }
    SUBCASE("a bias llama models do not have") {
        extra.name = (char *)"blk.3.attn_q.bias";
        tensors.push_back(extra);
        reason = "tensor 'blk.3.attn_q.bias' is in the file but not used: llama models have no q/k/v biases";
    }
    TensorList list = {tensors.data(), (int)tensors.size()};
    Model m;
    CHECK(model_from_tensors(&m, &default_model().config, &list, 1, DEFAULT_MODEL, err, sizeof err) == -1);
    CHECK_MESSAGE(std::string(err).find(reason) != std::string::npos, err, " (expected '", reason, "')");
    CHECK(m.storage == nullptr);
    gguf_close(&f);
}

TEST_CASE("model: random byte flips in the header never crash the loader") {
    std::vector<char> bytes = read_all(DEFAULT_MODEL);
    std::string path = write_temp(bytes.data(), bytes.size());
    int fd = open(path.c_str(), O_WRONLY);
    REQUIRE(fd >= 0);
    std::mt19937 rng(7);
    size_t header = tensor_info_position(bytes, "output_norm.weight");   // metadata + most tensor infos
    int refused = 0;
    for (int trial = 0; trial < 40; trial++) {
        size_t at = rng() % header;
        char flipped = (char)(bytes[at] ^ (1 << (rng() % 8)));
        REQUIRE(pwrite(fd, &flipped, 1, (off_t)at) == 1);
        std::string err = load_error(path);
        if (!err.empty()) {
            refused++;
            CHECK(err.find(path) != std::string::npos);
        }
        REQUIRE(pwrite(fd, &bytes[at], 1, (off_t)at) == 1);
    }
    MESSAGE(refused, " of 40 flips refused, the rest loaded");
    close(fd);
    remove(path.c_str());
}

TEST_CASE("model: a missing path and an HF directory without weights") {
    CHECK(load_error("/nonexistent/model.gguf").find("no such file") != std::string::npos);
    char dir[] = "/tmp/qlora_hf_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string err = load_error(dir);
    CHECK(err.find("config.json") != std::string::npos);
    rmdir(dir);
}

// A tiny random Llama saved as an HF directory, with the tiny SmolLM-style
// tokenizer.json fixture: model_load reads config, weights and tokenizer.
TEST_CASE("model: an HF directory loads end to end and runs") {
    char dir[] = "/tmp/qlora_hf_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir;
    const int dim = 32, hidden = 48, layers = 2, heads = 4, kv_heads = 2, head_dim = 8, vocab = 1001;
    FILE *f = fopen((d + "/config.json").c_str(), "w");
    fprintf(f, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": %d, \"intermediate_size\": %d, "
               "\"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
               "\"vocab_size\": %d, \"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": true}",
            dim, hidden, layers, heads, kv_heads, vocab);
    fclose(f);
    std::vector<TensorInfo> tensors;
    std::vector<std::vector<float>> storage;
    std::vector<std::string> names;
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 0.1f);
    auto add = [&](const std::string &name, int64_t rows, int64_t cols) {
        names.push_back(name);
        storage.emplace_back((size_t)(rows * (cols ? cols : 1)));
        for (float &x : storage.back()) x = cols ? normal(rng) : 1.0f;
    };
    add("model.embed_tokens.weight", vocab, dim);
    add("model.norm.weight", dim, 0);
    for (int l = 0; l < layers; l++) {
        std::string p = "model.layers." + std::to_string(l) + ".";
        add(p + "input_layernorm.weight", dim, 0);
        add(p + "post_attention_layernorm.weight", dim, 0);
        add(p + "self_attn.q_proj.weight", heads * head_dim, dim);
        add(p + "self_attn.k_proj.weight", kv_heads * head_dim, dim);
        add(p + "self_attn.v_proj.weight", kv_heads * head_dim, dim);
        add(p + "self_attn.o_proj.weight", dim, heads * head_dim);
        add(p + "mlp.gate_proj.weight", hidden, dim);
        add(p + "mlp.up_proj.weight", hidden, dim);
        add(p + "mlp.down_proj.weight", dim, hidden);
    }
    for (size_t i = 0; i < names.size(); i++) {
        TensorInfo t = {};
        t.name = (char *)names[i].c_str();
        t.dtype = DT_F32;
        size_t n = storage[i].size();
        bool vector = names[i].find("norm") != std::string::npos;
        t.ndim = vector ? 1 : 2;
        t.shape[0] = vector ? (int64_t)n : 0;
        tensors.push_back(t);
    }
    // fill the matrix shapes: rows = numel / cols
    auto set_shape = [&](size_t i, int64_t rows, int64_t cols) { tensors[i].shape[0] = rows; tensors[i].shape[1] = cols; };
    set_shape(0, vocab, dim);
    for (int l = 0; l < layers; l++) {
        size_t base = 2 + (size_t)l * 9;
        set_shape(base + 2, heads * head_dim, dim);
        set_shape(base + 3, kv_heads * head_dim, dim);
        set_shape(base + 4, kv_heads * head_dim, dim);
        set_shape(base + 5, dim, heads * head_dim);
        set_shape(base + 6, hidden, dim);
        set_shape(base + 7, hidden, dim);
        set_shape(base + 8, dim, hidden);
    }
    for (size_t i = 0; i < tensors.size(); i++) {
        tensors[i].data = storage[i].data();
        tensors[i].nbytes = storage[i].size() * sizeof(float);
    }
    char err[1024] = "";
    REQUIRE_MESSAGE(safetensors_write((d + "/model.safetensors").c_str(), tensors.data(), (int)tensors.size(), err,
                                      sizeof err) == 0, err);

    CHECK(load_error(d).find("tokenizer.json") != std::string::npos);   // no tokenizer yet: named in the error

    std::string copy = "cp test/fixtures/tokenizer_tiny_smollm.json " + d + "/tokenizer.json";
    REQUIRE(system(copy.c_str()) == 0);
    Model m;
    REQUIRE_MESSAGE(model_load(&m, d.c_str(), err, sizeof err) == 0, err);
    CHECK(m.config.vocab_size == vocab);
    CHECK(m.lm_head == m.embed);
    CHECK(m.layers[1].w_down[5] == storage[2 + 9 + 8][5]);
    int *ids = nullptr;
    int n = tokenizer_encode(m.tokenizer, "hello world", 11, 1, &ids);
    REQUIRE(n > 0);
    InferState s;
    REQUIRE(infer_state_init(&s, &m.config, n, n) == 0);
    const float *logits = forward_cpu(&m, &s, ids, n, 0, 0, nullptr);
    for (int v = 0; v < vocab; v++) REQUIRE(std::isfinite(logits[v]));
    infer_state_free(&s);
    free(ids);
    model_free(&m);

    // an embedding with fewer rows than the tokenizer has tokens is refused
    // (the last token's id would read past it), naming both counts
    f = fopen((d + "/config.json").c_str(), "w");
    fprintf(f, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": %d, \"intermediate_size\": %d, "
               "\"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
               "\"vocab_size\": %d, \"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": true}",
            dim, hidden, layers, heads, kv_heads, vocab - 1);
    fclose(f);
    tensors[0].shape[0] = vocab - 1;
    tensors[0].nbytes = (size_t)(vocab - 1) * dim * sizeof(float);
    REQUIRE_MESSAGE(safetensors_write((d + "/model.safetensors").c_str(), tensors.data(), (int)tensors.size(), err,
                                      sizeof err) == 0, err);
    std::string short_embedding = load_error(d);
    CHECK_MESSAGE(short_embedding.find("the tokenizer has 1001 tokens but the embedding only 1000 rows") !=
                      std::string::npos, short_embedding);
    CHECK(short_embedding.find(d) != std::string::npos);

    // a head_dim past MAX_HEAD_DIM (RoPE's tables) is refused, not loaded
    f = fopen((d + "/config.json").c_str(), "w");
    fprintf(f, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": %d, \"intermediate_size\": %d, "
               "\"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
               "\"head_dim\": 2048, \"vocab_size\": %d, \"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": true}",
            dim, hidden, layers, heads, kv_heads, vocab);
    fclose(f);
    CHECK(load_error(d).find("config sizes are implausibly large") != std::string::npos);
    REQUIRE(system(("rm -rf " + d).c_str()) == 0);
}
