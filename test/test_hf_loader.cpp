// test_hf_loader.cpp: HF checkpoint directories written by the test (a tiny
// random-weight model in Llama, Qwen2 and EXAONE naming, F32 and BF16, tied
// and untied, single-file and sharded) must load through model_read_hf_config
// + hf_open + model_from_tensors with every weight equal to what was written; broken
// configs and checkpoints (tensors the model does not use, NaN weights, shards
// the index does not match) must be refused with a message naming the culprit.
#include <doctest/doctest.h>

#include "formats/hf_checkpoint.h"
#include "formats/float16.h"
#include "model.h"
#include "formats/safetensors.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace {

const int DIM = 64, LAYERS = 2, HEADS = 4, KV_HEADS = 2, HEAD_DIM = 16, HIDDEN = 96, VOCAB = 128;

struct TempDir {
    std::string path;
    TempDir() {
        char name[] = "/tmp/qlora_hf_XXXXXX";
        REQUIRE(mkdtemp(name) != nullptr);
        path = name;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
    std::string file(const std::string &name) const { return path + "/" + name; }
};

void write_text(const std::string &path, const std::string &text) {
    FILE *f = std::fopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    REQUIRE(std::fwrite(text.data(), 1, text.size(), f) == text.size());
    std::fclose(f);
}

enum Role { EMBED, FINAL_NORM, LM_HEAD, ATTN_NORM, WQ, WK, WV, BQ, BK, BV, WO, MLP_NORM, GATE, UP, DOWN };

struct RoleSpec {
    Role role;
    const char *llama_name;    // also Qwen2's
    const char *exaone_name;
    int64_t rows, cols;        // cols 0: a vector
};

const RoleSpec ROLES[] = {
    {EMBED, "model.embed_tokens.weight", "transformer.wte.weight", VOCAB, DIM},
    {FINAL_NORM, "model.norm.weight", "transformer.ln_f.weight", DIM, 0},
    {LM_HEAD, "lm_head.weight", "lm_head.weight", VOCAB, DIM},
    {ATTN_NORM, "model.layers.%d.input_layernorm.weight", "transformer.h.%d.ln_1.weight", DIM, 0},
    {WQ, "model.layers.%d.self_attn.q_proj.weight", "transformer.h.%d.attn.attention.q_proj.weight",
     HEADS * HEAD_DIM, DIM},
    {WK, "model.layers.%d.self_attn.k_proj.weight", "transformer.h.%d.attn.attention.k_proj.weight",
     KV_HEADS * HEAD_DIM, DIM},
    {WV, "model.layers.%d.self_attn.v_proj.weight", "transformer.h.%d.attn.attention.v_proj.weight",
     KV_HEADS * HEAD_DIM, DIM},
    {BQ, "model.layers.%d.self_attn.q_proj.bias", nullptr, HEADS * HEAD_DIM, 0},
    {BK, "model.layers.%d.self_attn.k_proj.bias", nullptr, KV_HEADS * HEAD_DIM, 0},
    {BV, "model.layers.%d.self_attn.v_proj.bias", nullptr, KV_HEADS * HEAD_DIM, 0},
    {WO, "model.layers.%d.self_attn.o_proj.weight", "transformer.h.%d.attn.attention.out_proj.weight", DIM,
     HEADS * HEAD_DIM},
    {MLP_NORM, "model.layers.%d.post_attention_layernorm.weight", "transformer.h.%d.ln_2.weight", DIM, 0},
    {GATE, "model.layers.%d.mlp.gate_proj.weight", "transformer.h.%d.mlp.c_fc_0.weight", HIDDEN, DIM},
    {UP, "model.layers.%d.mlp.up_proj.weight", "transformer.h.%d.mlp.c_fc_1.weight", HIDDEN, DIM},
    {DOWN, "model.layers.%d.mlp.down_proj.weight", "transformer.h.%d.mlp.c_proj.weight", DIM, HIDDEN},
};

bool is_per_layer(Role role) { return role >= ATTN_NORM; }
bool is_bias(Role role) { return role == BQ || role == BK || role == BV; }

struct Variant {
    Arch arch;
    DType dtype;   // DT_F32 or DT_BF16
    bool tied;
    int shards;    // 1: model.safetensors; 2: index + two shards
};

// One tensor as written: its bytes on disk and the fp32 values a loader must produce.
struct Weight {
    std::string name;
    Role role;
    int layer;
    std::vector<int64_t> shape;
    std::vector<float> expected;
    std::vector<uint16_t> bf16;
};

std::vector<Weight> make_weights(const Variant &v) {
    std::vector<Weight> weights;
    uint32_t state = 12345;
    for (const RoleSpec &spec : ROLES) {
        if (spec.role == LM_HEAD && v.tied) continue;
        if (is_bias(spec.role) && v.arch != ARCH_QWEN2) continue;
        for (int layer = 0; layer < (is_per_layer(spec.role) ? LAYERS : 1); layer++) {
            Weight w;
            char name[128];
            std::snprintf(name, sizeof name, v.arch == ARCH_EXAONE ? spec.exaone_name : spec.llama_name, layer);
            w.name = name;
            w.role = spec.role;
            w.layer = layer;
            w.shape = spec.cols ? std::vector<int64_t>{spec.rows, spec.cols} : std::vector<int64_t>{spec.rows};
            for (int64_t i = 0; i < spec.rows * (spec.cols ? spec.cols : 1); i++) {
                state = state * 1664525u + 1013904223u;
                float value = (float)(state >> 8) / (float)(1 << 24) * 2.0f - 1.0f;
                if (v.dtype == DT_BF16) {
                    w.bf16.push_back(f32_to_bf16(value));
                    value = bf16_to_f32(w.bf16.back());
                }
                w.expected.push_back(value);
            }
            weights.push_back(w);
        }
    }
    return weights;
}

TensorInfo tensor_of(const Weight &w, DType dtype) {
    TensorInfo t = {};
    t.name = (char *)w.name.c_str();
    t.dtype = dtype;
    t.ndim = (int)w.shape.size();
    for (int i = 0; i < t.ndim; i++) t.shape[i] = w.shape[i];
    t.data = dtype == DT_BF16 ? (const void *)w.bf16.data() : (const void *)w.expected.data();
    t.nbytes = dtype_nbytes(dtype, tensor_numel(&t));
    return t;
}

// config.json as key -> raw JSON value, so tests can drop or change keys.
typedef std::map<std::string, std::string> ConfigKeys;

ConfigKeys config_keys(const Variant &v) {
    ConfigKeys keys = {
        {"hidden_size", "64"}, {"intermediate_size", "96"}, {"num_attention_heads", "4"},
        {"num_key_value_heads", "2"}, {"vocab_size", "128"}, {"max_position_embeddings", "256"},
        {"rope_theta", "10000.0"}, {"tie_word_embeddings", v.tied ? "true" : "false"}, {"rope_scaling", "null"},
        {"torch_dtype", v.dtype == DT_BF16 ? "\"bfloat16\"" : "\"float32\""},
    };
    if (v.arch == ARCH_EXAONE) {
        keys["architectures"] = "[\"ExaoneForCausalLM\"]";
        keys["model_type"] = "\"exaone\"";
        keys["num_layers"] = "2";
        keys["layer_norm_epsilon"] = "1e-05";
        keys["activation_function"] = "\"silu\"";
    } else {
        keys["architectures"] = v.arch == ARCH_QWEN2 ? "[\"Qwen2ForCausalLM\"]" : "[\"LlamaForCausalLM\"]";
        keys["model_type"] = v.arch == ARCH_QWEN2 ? "\"qwen2\"" : "\"llama\"";
        keys["num_hidden_layers"] = "2";
        keys["rms_norm_eps"] = "1e-05";
        keys["hidden_act"] = "\"silu\"";
    }
    return keys;
}

std::string config_text(const ConfigKeys &keys) {
    std::string text = "{\n";
    for (const auto &kv : keys) text += (text.size() > 2 ? ",\n  \"" : "  \"") + kv.first + "\": " + kv.second;
    return text + "\n}\n";
}

std::string shard_name(int shard, int shards) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", shard + 1, shards);
    return name;
}

// Writes the weights: model.safetensors, or round-robin shards plus the index.
void write_weights(const TempDir &dir, const Variant &v, const std::vector<Weight> &weights) {
    char err[512] = "";
    if (v.shards == 1) {
        std::vector<TensorInfo> tensors;
        for (const Weight &w : weights) tensors.push_back(tensor_of(w, v.dtype));
        std::string path = dir.file("model.safetensors");
        REQUIRE_MESSAGE(safetensors_write(path.c_str(), tensors.data(), (int)tensors.size(), err, sizeof err) == 0,
                        err);
        return;
    }
    std::string index = "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {";
    for (int s = 0; s < v.shards; s++) {
        std::vector<TensorInfo> tensors;
        for (size_t i = s; i < weights.size(); i += v.shards) {
            tensors.push_back(tensor_of(weights[i], v.dtype));
            index += (index.back() == '{' ? "\"" : ", \"") + weights[i].name + "\": \"" + shard_name(s, v.shards) + "\"";
        }
        std::string path = dir.file(shard_name(s, v.shards));
        REQUIRE_MESSAGE(safetensors_write(path.c_str(), tensors.data(), (int)tensors.size(), err, sizeof err) == 0,
                        err);
    }
    write_text(dir.file("model.safetensors.index.json"), index + "}}\n");
}

void write_checkpoint(const TempDir &dir, const Variant &v, const std::vector<Weight> &weights,
                      const ConfigKeys &keys) {
    write_text(dir.file("config.json"), config_text(keys));
    write_weights(dir, v, weights);
}

const float *model_weight(const Model &m, Role role, int layer) {
    const LayerWeights &l = m.layers[layer];
    switch (role) {
    case EMBED: return m.embed;
    case FINAL_NORM: return m.final_norm;
    case LM_HEAD: return m.lm_head;
    case ATTN_NORM: return l.attn_norm;
    case WQ: return l.wq;
    case WK: return l.wk;
    case WV: return l.wv;
    case BQ: return l.bq;
    case BK: return l.bk;
    case BV: return l.bv;
    case WO: return l.wo;
    case MLP_NORM: return l.mlp_norm;
    case GATE: return l.w_gate;
    case UP: return l.w_up;
    case DOWN: return l.w_down;
    }
    return nullptr;
}

void check_config(const Config &c, const Variant &v) {
    CHECK(c.arch == v.arch);
    CHECK(c.dim == DIM);
    CHECK(c.hidden_dim == HIDDEN);
    CHECK(c.n_layers == LAYERS);
    CHECK(c.n_heads == HEADS);
    CHECK(c.n_kv_heads == KV_HEADS);
    CHECK(c.head_dim == HEAD_DIM);
    CHECK(c.vocab_size == VOCAB);
    CHECK(c.max_seq_len == 256);
    CHECK(c.norm_eps == doctest::Approx(1e-5));
    CHECK(c.rope_theta == 10000.0f);
    CHECK(c.rope_factor == 0.0f);
    CHECK(c.attention_bias == (v.arch == ARCH_QWEN2));
    CHECK(c.tied_embeddings == v.tied);
}

// Opens dir and builds the model; every weight must equal what was written.
void check_loads(const TempDir &dir, const Variant &v, const std::vector<Weight> &weights) {
    Config config;
    char err[512] = "";
    REQUIRE_MESSAGE(model_read_hf_config(dir.file("config.json").c_str(), &config, err, sizeof err) == 0, err);
    HFCheckpoint ck;
    REQUIRE_MESSAGE(hf_open(&ck, dir.path.c_str(), err, sizeof err) == 0, err);
    CHECK(ck.n_shards == v.shards);
    CHECK(ck.tensors.count == (int)weights.size());
    check_config(config, v);
    Model m;
    int status = model_from_tensors(&m, &config, &ck.tensors, 0, dir.path.c_str(), err, sizeof err);
    hf_close(&ck);
    REQUIRE_MESSAGE(status == 0, err);
    for (const Weight &w : weights) {
        CAPTURE(w.name);
        const float *got = model_weight(m, w.role, w.layer);
        REQUIRE(got != nullptr);
        CHECK(std::memcmp(got, w.expected.data(), w.expected.size() * sizeof(float)) == 0);
    }
    if (v.tied) CHECK(m.lm_head == m.embed);
    else CHECK(m.lm_head != m.embed);
    if (v.arch != ARCH_QWEN2) CHECK(m.layers[0].bq == nullptr);
    model_free(&m);
}

// Reading dir's config.json, and so loading dir, must fail with a message
// containing every one of the given parts.
void expect_config_fails(const TempDir &dir, std::vector<std::string> parts) {
    Config config;
    char err[512] = "";
    CHECK(model_read_hf_config(dir.file("config.json").c_str(), &config, err, sizeof err) == -1);
    for (const std::string &part : parts) CHECK_MESSAGE(std::strstr(err, part.c_str()) != nullptr, err);
    CHECK(config.dim == 0);
    Model m;
    CHECK(model_load(&m, dir.path.c_str(), err, sizeof err) == -1);
    for (const std::string &part : parts) CHECK_MESSAGE(std::strstr(err, part.c_str()) != nullptr, err);
}

// hf_open must fail with a message containing every one of the given parts.
void expect_open_fails(const TempDir &dir, std::vector<std::string> parts) {
    HFCheckpoint ck;
    char err[512] = "";
    CHECK(hf_open(&ck, dir.path.c_str(), err, sizeof err) == -1);
    for (const std::string &part : parts) CHECK_MESSAGE(std::strstr(err, part.c_str()) != nullptr, err);
    CHECK(ck.n_shards == 0);
    CHECK(ck.tensors.tensors == nullptr);
    CHECK(ck.dir == nullptr);
}

// Building dir's model must fail with a message containing every one of the given parts.
void expect_model_fails(const TempDir &dir, std::vector<std::string> parts) {
    Config config;
    char err[512] = "";
    REQUIRE_MESSAGE(model_read_hf_config(dir.file("config.json").c_str(), &config, err, sizeof err) == 0, err);
    HFCheckpoint ck;
    REQUIRE_MESSAGE(hf_open(&ck, dir.path.c_str(), err, sizeof err) == 0, err);
    Model m;
    CHECK(model_from_tensors(&m, &config, &ck.tensors, 0, dir.path.c_str(), err, sizeof err) == -1);
    hf_close(&ck);
    for (const std::string &part : parts) CHECK_MESSAGE(std::strstr(err, part.c_str()) != nullptr, err);
}

// A copy of weights[like] under another name.
Weight renamed(const std::vector<Weight> &weights, size_t like, const std::string &name) {
    Weight w = weights[like];
    w.name = name;
    return w;
}

}  // namespace

TEST_CASE("hf: tiny checkpoints load with every weight intact") {
    const Variant variants[] = {
        {ARCH_LLAMA, DT_F32, false, 1},  {ARCH_LLAMA, DT_BF16, true, 1},   {ARCH_LLAMA, DT_BF16, false, 1},
        {ARCH_QWEN2, DT_BF16, false, 1}, {ARCH_QWEN2, DT_F32, true, 1},    {ARCH_EXAONE, DT_F32, false, 1},
        {ARCH_EXAONE, DT_BF16, true, 1}, {ARCH_LLAMA, DT_F32, false, 2},   {ARCH_QWEN2, DT_BF16, true, 2},
    };
    for (const Variant &v : variants) {
        CAPTURE(arch_name(v.arch));
        CAPTURE(dtype_name(v.dtype));
        CAPTURE(v.tied);
        CAPTURE(v.shards);
        TempDir dir;
        std::vector<Weight> weights = make_weights(v);
        write_checkpoint(dir, v, weights, config_keys(v));
        check_loads(dir, v, weights);
    }
}

TEST_CASE("hf: config defaults and RoPE settings") {
    const Variant v = {ARCH_LLAMA, DT_F32, false, 1};
    TempDir dir;
    write_checkpoint(dir, v, make_weights(v), config_keys(v));
    std::string path = dir.file("config.json");
    Config c;
    char err[512] = "";

    ConfigKeys keys = config_keys(v);
    for (const char *key : {"num_key_value_heads", "rope_theta", "tie_word_embeddings", "max_position_embeddings",
                            "rope_scaling", "rms_norm_eps"})
        keys.erase(key);
    keys["head_dim"] = "null";
    write_text(path, config_text(keys));
    REQUIRE_MESSAGE(model_read_hf_config(path.c_str(), &c, err, sizeof err) == 0, err);
    CHECK(c.n_kv_heads == HEADS);
    CHECK(c.head_dim == DIM / HEADS);
    CHECK(c.rope_theta == 10000.0f);
    CHECK(c.tied_embeddings == 0);
    CHECK(c.max_seq_len == 2048);
    CHECK(c.norm_eps == doctest::Approx(1e-6));

    keys = config_keys(v);
    keys["rope_theta"] = "500000.0";
    keys["rope_scaling"] = "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
                           "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}";
    write_text(path, config_text(keys));
    REQUIRE_MESSAGE(model_read_hf_config(path.c_str(), &c, err, sizeof err) == 0, err);
    CHECK(c.rope_theta == 500000.0f);
    CHECK(c.rope_factor == 8.0f);
    CHECK(c.rope_low_freq_factor == 1.0f);
    CHECK(c.rope_high_freq_factor == 4.0f);
    CHECK(c.rope_original_max_pos == 8192);

    // transformers 5 writes theta and scaling together as rope_parameters.
    keys = config_keys(v);
    keys.erase("rope_theta");
    keys.erase("rope_scaling");
    keys["rope_parameters"] = "{\"rope_type\": \"default\", \"rope_theta\": 100000.0}";
    keys["head_dim"] = "32";
    write_text(path, config_text(keys));
    REQUIRE_MESSAGE(model_read_hf_config(path.c_str(), &c, err, sizeof err) == 0, err);
    CHECK(c.rope_theta == 100000.0f);
    CHECK(c.rope_factor == 0.0f);
    CHECK(c.head_dim == 32);

    // EXAONE's defaults differ (transformers' ExaoneConfig).
    const Variant exaone = {ARCH_EXAONE, DT_F32, false, 1};
    keys = config_keys(exaone);
    keys.erase("rope_theta");
    keys.erase("layer_norm_epsilon");
    keys.erase("max_position_embeddings");
    write_text(path, config_text(keys));
    REQUIRE_MESSAGE(model_read_hf_config(path.c_str(), &c, err, sizeof err) == 0, err);
    CHECK(c.arch == ARCH_EXAONE);
    CHECK(c.n_layers == LAYERS);
    CHECK(c.rope_theta == 500000.0f);
    CHECK(c.norm_eps == doctest::Approx(1e-5));
    CHECK(c.max_seq_len == 4096);

    // Qwen2's sliding window (from layer max_window_layers on): the context is cut to it, where it is full attention
    const Variant qwen = {ARCH_QWEN2, DT_F32, false, 1};
    struct Window {
        const char *use, *window, *first_layer;   // nullptr: the key left out
        int context;
    };
    const Window windows[] = {{"true", "100", "1", 100},      {"true", "100", "0", 100},
                              {"true", "100", "2", 256},      {"true", "100", nullptr, 256},   // default 28 >= 2 layers
                              {"false", "100", "0", 256},     {"true", "null", "0", 256},
                              {"true", "1000", "0", 256},     {nullptr, "100", "0", 256}};
    for (const Window &w : windows) {
        CAPTURE(w.use);
        CAPTURE(w.window);
        CAPTURE(w.first_layer);
        keys = config_keys(qwen);
        if (w.use) keys["use_sliding_window"] = w.use;
        keys["sliding_window"] = w.window;
        if (w.first_layer) keys["max_window_layers"] = w.first_layer;
        write_text(path, config_text(keys));
        REQUIRE_MESSAGE(model_read_hf_config(path.c_str(), &c, err, sizeof err) == 0, err);
        CHECK(c.max_seq_len == w.context);
    }
    keys = config_keys(qwen);
    keys["use_sliding_window"] = "true";
    keys["sliding_window"] = "100";
    keys["max_window_layers"] = "-1";
    write_text(path, config_text(keys));
    CHECK(model_read_hf_config(path.c_str(), &c, err, sizeof err) == -1);
    CHECK(std::string(err).find("'max_window_layers' must be a whole number") != std::string::npos);
}

TEST_CASE("hf: bad config.json is refused naming the file and the key") {
    const Variant v = {ARCH_LLAMA, DT_F32, false, 1};
    struct Case {
        const char *key;
        const char *value;   // nullptr: remove the key
        const char *reason;
    };
    const Case cases[] = {
        {"hidden_size", nullptr, "'hidden_size' is missing"},
        {"num_hidden_layers", nullptr, "'num_hidden_layers' (or 'num_layers') is missing"},
        {"vocab_size", "0", "'vocab_size' must be a positive integer"},
        {"hidden_size", "64.5", "'hidden_size' must be a positive integer"},
        {"intermediate_size", "\"96\"", "'intermediate_size' must be a positive integer"},
        {"architectures", "[\"MistralForCausalLM\"]", "architectures 'MistralForCausalLM' is not supported"},
        {"num_key_value_heads", "3", "num_attention_heads 4 is not a multiple of num_key_value_heads 3"},
        {"num_attention_heads", "5", "hidden_size 64 is not a multiple of num_attention_heads 5"},
        {"head_dim", "15", "head_dim 15 is odd"},
        {"rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}", "rope_scaling type 'linear' is not supported"},
        {"rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8.0}", "'low_freq_factor' is missing"},
        {"rope_scaling", "\"yes\"", "'rope_scaling' must be an object or null"},
        {"rms_norm_eps", "-1", "'rms_norm_eps' must be a positive number"},
        {"tie_word_embeddings", "1", "'tie_word_embeddings' must be true or false"},
        {"attention_bias", "true", "attention_bias is true"},
        {"hidden_act", "\"gelu\"", "activation 'gelu' is not supported"},
        {"quantization_config", "{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true}",
         "'quantization_config' says the weights are stored quantized (quant_method 'bitsandbytes')"},
    };
    for (const Case &c : cases) {
        CAPTURE(c.key);
        CAPTURE(c.reason);
        TempDir dir;
        ConfigKeys keys = config_keys(v);
        if (c.value) keys[c.key] = c.value;
        else keys.erase(c.key);
        write_checkpoint(dir, v, make_weights(v), keys);
        expect_config_fails(dir, {dir.file("config.json"), c.reason});
    }

    TempDir dir;
    ConfigKeys keys = config_keys(v);
    keys.erase("architectures");
    keys["model_type"] = "\"gpt2\"";
    write_checkpoint(dir, v, make_weights(v), keys);
    expect_config_fails(dir, {"config.json", "model_type 'gpt2' is not supported"});

    write_text(dir.file("config.json"), "{\"hidden_size\": 64,");
    expect_config_fails(dir, {"config.json", "not valid JSON"});

    std::filesystem::remove(dir.file("config.json"));
    expect_config_fails(dir, {dir.file("config.json"), "cannot open"});
}

TEST_CASE("hf: missing or misshapen tensors are refused by name") {
    const Variant v = {ARCH_LLAMA, DT_BF16, false, 1};
    char err[512] = "";
    {
        TempDir dir;
        std::vector<Weight> weights = make_weights(v);
        for (size_t i = 0; i < weights.size(); i++)
            if (weights[i].name == "model.layers.1.mlp.up_proj.weight") weights.erase(weights.begin() + (long)i);
        write_checkpoint(dir, v, weights, config_keys(v));
        Config config;
        REQUIRE_MESSAGE(model_read_hf_config(dir.file("config.json").c_str(), &config, err, sizeof err) == 0, err);
        HFCheckpoint ck;
        REQUIRE_MESSAGE(hf_open(&ck, dir.path.c_str(), err, sizeof err) == 0, err);
        Model m;
        CHECK(model_from_tensors(&m, &config, &ck.tensors, 0, dir.path.c_str(), err, sizeof err) == -1);
        CHECK_MESSAGE(std::strstr(err, "'model.layers.1.mlp.up_proj.weight' is missing") != nullptr, err);
        CHECK_MESSAGE(std::strstr(err, dir.path.c_str()) != nullptr, err);
        hf_close(&ck);
    }
    {
        TempDir dir;
        std::vector<Weight> weights = make_weights(v);
        for (Weight &w : weights)
            if (w.name == "model.layers.0.self_attn.k_proj.weight") w.shape = {DIM, KV_HEADS * HEAD_DIM};
        write_checkpoint(dir, v, weights, config_keys(v));
        Config config;
        REQUIRE_MESSAGE(model_read_hf_config(dir.file("config.json").c_str(), &config, err, sizeof err) == 0, err);
        HFCheckpoint ck;
        REQUIRE_MESSAGE(hf_open(&ck, dir.path.c_str(), err, sizeof err) == 0, err);
        Model m;
        CHECK(model_from_tensors(&m, &config, &ck.tensors, 0, dir.path.c_str(), err, sizeof err) == -1);
        CHECK_MESSAGE(std::strstr(err, "'model.layers.0.self_attn.k_proj.weight' has shape [64, 32]") != nullptr,
                      err);
        hf_close(&ck);
    }
}

TEST_CASE("hf: broken weight files and shard indexes are refused") {
    const Variant sharded = {ARCH_LLAMA, DT_F32, false, 2};
    std::vector<Weight> weights = make_weights(sharded);
    {
        TempDir dir;
        write_text(dir.file("config.json"), config_text(config_keys(sharded)));
        expect_open_fails(dir, {dir.path, "neither model.safetensors nor model.safetensors.index.json"});
        // older checkpoints' PyTorch pickles are named, with how to convert them
        write_text(dir.file("pytorch_model.bin"), "PK");
        expect_open_fails(dir, {dir.path, "only pytorch_model.bin: PyTorch's pickle format", "save_pretrained(OUT)"});
    }
    {
        TempDir dir;
        write_checkpoint(dir, sharded, weights, config_keys(sharded));
        std::filesystem::remove(dir.file(shard_name(1, 2)));
        expect_open_fails(dir, {dir.file(shard_name(1, 2)), "cannot open"});
    }
    {
        TempDir dir;   // a tensor listed in the wrong shard
        write_checkpoint(dir, sharded, weights, config_keys(sharded));
        write_text(dir.file("model.safetensors.index.json"),
                   "{\"weight_map\": {\"model.embed_tokens.weight\": \"" + shard_name(1, 2) + "\"}}");
        expect_open_fails(dir, {"model.safetensors.index.json", "tensor 'model.embed_tokens.weight'",
                                "does not hold it"});
    }
    {
        TempDir dir;   // the same tensor in both shards
        write_checkpoint(dir, sharded, weights, config_keys(sharded));
        std::vector<Weight> extra = {weights[1]};   // weights[1] (and [3]) live in shard 2
        const Variant single = {ARCH_LLAMA, DT_F32, false, 1};
        write_weights(dir, single, extra);
        std::filesystem::rename(dir.file("model.safetensors"), dir.file("extra.safetensors"));
        std::string index = "{\"weight_map\": {";   // every tensor, weights[1] in extra.safetensors
        for (size_t i = 0; i < weights.size(); i++)
            index += (i ? ", \"" : "\"") + weights[i].name + "\": \"" +
                     (i == 1 ? std::string("extra.safetensors") : shard_name((int)i % 2, 2)) + "\"";
        write_text(dir.file("model.safetensors.index.json"), index + "}}");
        expect_open_fails(dir, {"tensor '" + weights[1].name + "': found in both"});
    }
    {
        TempDir dir;   // shard names may not leave the directory
        write_checkpoint(dir, sharded, weights, config_keys(sharded));
        write_text(dir.file("model.safetensors.index.json"), "{\"weight_map\": {\"w\": \"../model.safetensors\"}}");
        expect_open_fails(dir, {"tensor 'w': shard must be a file name"});
        write_text(dir.file("model.safetensors.index.json"), "{\"metadata\": {}}");
        expect_open_fails(dir, {"'weight_map' is missing"});
    }
    {
        TempDir dir;   // a corrupt model.safetensors
        const Variant single = {ARCH_LLAMA, DT_F32, false, 1};
        write_checkpoint(dir, single, make_weights(single), config_keys(single));
        write_text(dir.file("model.safetensors"), std::string("\x02\0\0\0\0\0\0\0{x", 10));
        expect_open_fails(dir, {dir.file("model.safetensors"), "header is not valid JSON"});
    }
}

TEST_CASE("hf: a directory without tokenizer.json says so, and names a SentencePiece tokenizer.model") {
    const Variant v = {ARCH_LLAMA, DT_F32, false, 1};
    TempDir dir;
    write_checkpoint(dir, v, make_weights(v), config_keys(v));
    Model m;
    char err[1024] = "";
    CHECK(model_load(&m, dir.path.c_str(), err, sizeof err) == -1);
    CHECK_MESSAGE(std::string(err) == dir.file("tokenizer.json") + ": no such file (a model directory holds "
                  "config.json, its weights and tokenizer.json)", err);
    write_text(dir.file("tokenizer.model"), "sentencepiece");
    CHECK(model_load(&m, dir.path.c_str(), err, sizeof err) == -1);
    CHECK_MESSAGE(std::string(err).find(dir.file("tokenizer.model") + " is there instead, a SentencePiece tokenizer") !=
                  std::string::npos, err);
}

TEST_CASE("hf: a trailing slash on the directory is harmless") {
    const Variant v = {ARCH_QWEN2, DT_BF16, true, 1};
    TempDir dir;
    write_checkpoint(dir, v, make_weights(v), config_keys(v));
    HFCheckpoint ck;
    char err[512] = "";
    std::string with_slash = dir.path + "//";
    REQUIRE_MESSAGE(hf_open(&ck, with_slash.c_str(), err, sizeof err) == 0, err);
    CHECK(std::string(ck.dir) == dir.path);
    CHECK(ck.shards[0].path == dir.file("model.safetensors"));
    hf_close(&ck);
}

TEST_CASE("hf: every tensor of the checkpoint is used or named in an error") {
    const Variant variants[] = {{ARCH_LLAMA, DT_F32, false, 1}, {ARCH_EXAONE, DT_BF16, true, 2}};
    for (const Variant &v : variants) {
        CAPTURE(arch_name(v.arch));
        const char *layer1 = v.arch == ARCH_EXAONE ? "tensor 'transformer.h.1." : "tensor 'model.layers.1.";
        {
            TempDir dir;   // two layers' weights, a config that says one
            ConfigKeys keys = config_keys(v);
            keys[v.arch == ARCH_EXAONE ? "num_layers" : "num_hidden_layers"] = "1";
            write_checkpoint(dir, v, make_weights(v), keys);
            expect_model_fails(dir, {dir.path, layer1, "is in the file but not used: config.json says 1 layer"});
        }
        {
            TempDir dir;   // a name no weight has
            std::vector<Weight> weights = make_weights(v);
            weights.push_back(renamed(weights, 1, "model.layers.0.mlp.extra_proj.weight"));
            write_checkpoint(dir, v, weights, config_keys(v));
            expect_model_fails(dir, {"tensor 'model.layers.0.mlp.extra_proj.weight' is in the file but not used: "
                                     "no " + std::string(arch_name(v.arch)) + " weight has this name"});
        }
    }
    {
        TempDir dir;   // a q bias in a Llama checkpoint (attention_bias is false)
        const Variant v = {ARCH_LLAMA, DT_BF16, false, 1};
        std::vector<Weight> weights = make_weights(v);
        weights.push_back(renamed(weights, 1, "model.layers.1.self_attn.q_proj.bias"));
        write_checkpoint(dir, v, weights, config_keys(v));
        expect_model_fails(dir, {"tensor 'model.layers.1.self_attn.q_proj.bias' is in the file but not used: llama "
                                 "models have no q/k/v biases"});
    }
    {
        TempDir dir;   // what transformers ignores loads: RoPE's inv_freq buffers, a tied model's lm_head
        const Variant v = {ARCH_LLAMA, DT_F32, true, 1};
        std::vector<Weight> weights = make_weights(v);
        weights.push_back(renamed(weights, 1, "model.layers.0.self_attn.rotary_emb.inv_freq"));
        weights.push_back(renamed(weights, 0, "lm_head.weight"));
        write_checkpoint(dir, v, weights, config_keys(v));
        check_loads(dir, v, weights);
    }
}

TEST_CASE("hf: weights that decode to NaN or Inf are refused by name") {
    for (DType dtype : {DT_F32, DT_BF16}) {
        CAPTURE(dtype_name(dtype));
        const Variant v = {ARCH_QWEN2, dtype, false, 1};
        TempDir dir;
        std::vector<Weight> weights = make_weights(v);
        for (Weight &w : weights) {
            if (w.name != "model.layers.1.mlp.up_proj.weight") continue;
            if (dtype == DT_BF16) w.bf16[17] = 0x7FC0;   // NaN
            else w.expected[17] = INFINITY;
        }
        write_checkpoint(dir, v, weights, config_keys(v));
        expect_model_fails(dir, {dir.path, "tensor 'model.layers.1.mlp.up_proj.weight' (" +
                                               std::string(dtype_name(dtype)) + ") decodes to NaN or Inf"});
    }
}

TEST_CASE("hf: a shard tensor missing from the index is refused") {
    const Variant v = {ARCH_LLAMA, DT_F32, false, 2};
    std::vector<Weight> weights = make_weights(v);
    TempDir dir;
    write_checkpoint(dir, v, weights, config_keys(v));
    std::string index = "{\"weight_map\": {";
    for (size_t i = 0; i < weights.size(); i++) {
        if (i == 3) continue;   // weights[3] stays in shard 2, unlisted
        index += (index.back() == '{' ? "\"" : ", \"") + weights[i].name + "\": \"" + shard_name((int)i % 2, 2) + "\"";
    }
    write_text(dir.file("model.safetensors.index.json"), index + "}}\n");
    expect_open_fails(dir, {dir.file("model.safetensors.index.json"), "tensor '" + weights[3].name + "': in " +
                                dir.file(shard_name(1, 2)) + " but not in the index's weight_map"});
}
