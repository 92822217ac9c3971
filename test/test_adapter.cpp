// test_adapter.cpp: merging a peft LoRA adapter into a model, W' = W + s B A:
// every element of a tiny in-memory model (both naming schemes, rsLoRA, F16
// and BF16 tensors), a few elements of the default model, and the refusals
// (each -1 with a message naming the file and the tensor, the model untouched).
#include <doctest/doctest.h>

#include "infer/adapter.h"
#include "formats/float16.h"
#include "lora.h"
#include "formats/safetensors.h"
#include "test_util.h"

#include <algorithm>
#include <cmath>
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
        char name[] = "/tmp/qlora_adapter_XXXXXX";
        REQUIRE(mkdtemp(name) != nullptr);
        path = name;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
    std::string file(const char *name) const { return path + "/" + name; }
};

// A two-layer model with small, distinct widths and only the seven adaptable
// matrices of each layer, filled with smooth non-zero values.
struct TinyModel {
    Model model = {};
    std::vector<LayerWeights> layers;
    std::vector<float> storage;

    explicit TinyModel(Arch arch) {
        Config &c = model.config;
        c.arch = arch;
        c.dim = 8;
        c.hidden_dim = 12;
        c.n_layers = 2;
        c.n_heads = 2;
        c.n_kv_heads = 1;
        c.head_dim = 5;
        int q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
        size_t sizes[N_LINEARS] = {(size_t)q_dim * c.dim,    (size_t)kv_dim * c.dim,       (size_t)kv_dim * c.dim,
                                   (size_t)c.dim * q_dim,    (size_t)c.hidden_dim * c.dim, (size_t)c.hidden_dim * c.dim,
                                   (size_t)c.dim * c.hidden_dim};
        size_t per_layer = 0;
        for (size_t s : sizes) per_layer += s;
        storage.resize(per_layer * c.n_layers);
        for (size_t i = 0; i < storage.size(); i++) storage[i] = std::sin(0.37f * (float)i);
        layers.resize(c.n_layers);
        float *next = storage.data();
        for (LayerWeights &w : layers) {
            float **matrices[N_LINEARS] = {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down};
            for (int t = 0; t < N_LINEARS; t++) {
                *matrices[t] = next;
                next += sizes[t];
            }
        }
        model.layers = layers.data();
        model.storage = storage.data();
        model.storage_floats = storage.size();
    }
    TinyModel(const TinyModel &) = delete;
};

float *weight_of(const Model &m, int layer, int target) {
    const LayerWeights &w = m.layers[layer];
    float *matrices[N_LINEARS] = {w.wq, w.wk, w.wv, w.wo, w.w_gate, w.w_up, w.w_down};
    return matrices[target];
}

// An adapter on every target of every layer, with B set to small distinct
// values (a fresh one is all zero and would merge to no change).
void make_adapter(LoraSet *set, const Config &c, int rank, float alpha, int rslora) {
    int enabled[N_LINEARS] = {1, 1, 1, 1, 1, 1, 1};
    REQUIRE(lora_set_init(set, &c, enabled, rank, alpha, rslora, 0.0f, 7, 0) == 0);
    for (int i = 0; i < c.n_layers * N_LINEARS; i++) {
        LoraAdapter *a = &set->adapters[i];
        for (int j = 0; j < a->out_dim * rank; j++) a->B[j] = 0.05f * std::cos(0.71f * (float)(j + 13 * i));
    }
}

// W_before[o, i] + s sum_k B[o, k] A[k, i], in double.
double merged_value(const float *before, const LoraAdapter *a, float scaling, int o, int i) {
    double sum = 0;
    for (int k = 0; k < a->rank; k++) sum += (double)a->B[o * a->rank + k] * a->A[k * a->in_dim + i];
    return before[(size_t)o * a->in_dim + i] + scaling * sum;
}

// One tensor of a hand-made adapter file; values are converted to dtype
// (zeros when empty).
struct FakeTensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<float> values;
};

void write_text(const std::string &path, const std::string &text) {
    FILE *f = std::fopen(path.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fputs(text.c_str(), f);
    std::fclose(f);
}

void write_tensors(const std::string &path, const std::vector<FakeTensor> &fakes) {
    std::vector<std::vector<unsigned char>> bytes(fakes.size());
    std::vector<TensorInfo> infos(fakes.size());
    for (size_t n = 0; n < fakes.size(); n++) {
        const FakeTensor &fake = fakes[n];
        int64_t count = 1;
        for (int64_t d : fake.shape) count *= d;
        std::vector<float> values = fake.values.empty() ? std::vector<float>((size_t)count, 0.0f) : fake.values;
        REQUIRE((int64_t)values.size() == count);
        bytes[n].resize(dtype_nbytes(fake.dtype, count));
        for (int64_t i = 0; i < count; i++) {
            unsigned char *at = bytes[n].data() + i * (fake.dtype == DT_F32 || fake.dtype == DT_I32 ? 4 : 2);
            if (fake.dtype == DT_F32) std::memcpy(at, &values[i], 4);
            if (fake.dtype == DT_I32) { int32_t v = (int32_t)values[i]; std::memcpy(at, &v, 4); }
            if (fake.dtype == DT_F16) { uint16_t h = f32_to_f16(values[i]); std::memcpy(at, &h, 2); }
            if (fake.dtype == DT_BF16) { uint16_t h = f32_to_bf16(values[i]); std::memcpy(at, &h, 2); }
        }
        infos[n].name = const_cast<char *>(fake.name.c_str());
        infos[n].dtype = fake.dtype;
        infos[n].ndim = (int)fake.shape.size();
        for (size_t d = 0; d < fake.shape.size(); d++) infos[n].shape[d] = fake.shape[d];
        infos[n].data = bytes[n].data();
        infos[n].nbytes = bytes[n].size();
    }
    char err[512];
    REQUIRE_MESSAGE(safetensors_write(path.c_str(), infos.data(), (int)infos.size(), err, sizeof err) == 0, err);
}

// The record of an adapter trained on the NF4 base with double quant (the hash is not checked here).
const LoraBase TRAINED_ON_NF4 = {1, 1, 0};

// A rank-2 config with alpha 4 (s = 2) whose module selection is `selection`
// (JSON members, peft's names).
std::string rank_2_config(const std::string &selection) {
    return "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"use_rslora\": false, \"use_dora\": false, "
           "\"rank_pattern\": {}, \"alpha_pattern\": {}, " + selection + "}";
}

// Layer 0's q_proj only (the good pair below).
// (bias "none" and a null modules_to_save, as peft writes them, are plain LoRA.)
const std::string Q_0_CONFIG =
    rank_2_config(R"("target_modules": ["model.layers.0.self_attn.q_proj"], "bias": "none", "modules_to_save": null)");
// Layer 0's q, k and up: the good pair, and the modules the bad tensors below claim.
const std::string LAYER_0_CONFIG =
    rank_2_config(R"("target_modules": ["q_proj", "k_proj", "up_proj"], "layers_to_transform": [0])");

const std::string LAYER_0 = "base_model.model.model.layers.0.";

// A valid q_proj pair of layer 0 for the tiny model (r = 2, in 8, out 10).
std::vector<FakeTensor> good_pair() {
    return {{LAYER_0 + "self_attn.q_proj.lora_A.weight", DT_F32, {2, 8}, {}},
            {LAYER_0 + "self_attn.q_proj.lora_B.weight", DT_F32, {10, 2}, std::vector<float>(20, 0.5f)}};
}

// Merges dir into a fresh tiny model, which must fail and stay untouched;
// returns the message.
std::string merge_error(const TempDir &dir) {
    TinyModel tiny(ARCH_LLAMA);
    std::vector<float> before = tiny.storage;
    char err[1024] = "";
    CHECK(adapter_merge_peft(&tiny.model, dir.path.c_str(), nullptr, err, sizeof err) == -1);
    CHECK(tiny.storage == before);
    return err;
}

// The message for an adapter of the good pair plus one more tensor.
std::string error_with_tensor(const FakeTensor &extra) {
    TempDir dir;
    write_text(dir.file("adapter_config.json"), LAYER_0_CONFIG);
    std::vector<FakeTensor> tensors = good_pair();
    tensors.push_back(extra);
    write_tensors(dir.file("adapter_model.safetensors"), tensors);
    std::string err = merge_error(dir);
    std::string prefix = dir.file("adapter_model.safetensors") + ": tensor '" + extra.name + "'";
    CHECK_MESSAGE(err.rfind(prefix, 0) == 0, err);
    return err;
}

bool contains(const std::string &text, const std::string &part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("adapter: a saved adapter merges as W + s B A (every element, both namings, rsLoRA)") {
    for (Arch arch : {ARCH_LLAMA, ARCH_EXAONE}) {
        for (int rslora = 0; rslora <= 1; rslora++) {
            CAPTURE(arch);
            CAPTURE(rslora);
            TinyModel tiny(arch);
            std::vector<float> before = tiny.storage;
            LoraSet set;
            make_adapter(&set, tiny.model.config, 4, 6.0f, rslora);
            TempDir dir;
            char err[1024];
            REQUIRE_MESSAGE(lora_set_save_peft(&set, &tiny.model.config, dir.path.c_str(), "tiny", &TRAINED_ON_NF4, err, sizeof err) == 0,
                            err);
            AdapterInfo info;
            REQUIRE_MESSAGE(adapter_merge_peft(&tiny.model, dir.path.c_str(), &info, err, sizeof err) == 0, err);
            float scaling = rslora ? 3.0f : 1.5f;   // 6 / sqrt(4), 6 / 4
            CHECK(info.n_merged == 2 * N_LINEARS);
            CHECK(info.rank == 4);
            CHECK(info.scaling == scaling);
            for (int l = 0; l < 2; l++) {
                for (int t = 0; t < N_LINEARS; t++) {
                    const LoraAdapter *a = &set.adapters[l * N_LINEARS + t];
                    const float *W = weight_of(tiny.model, l, t);
                    const float *W_before = before.data() + (W - tiny.storage.data());
                    for (int o = 0; o < a->out_dim; o++)
                        for (int i = 0; i < a->in_dim; i++)
                            CHECK(W[o * a->in_dim + i] == doctest::Approx(merged_value(W_before, a, scaling, o, i)));
                }
            }
            CHECK(tiny.storage != before);
            lora_set_free(&set);
        }
    }
}

TEST_CASE("adapter: adapter_config.json holds any --model path (quotes, backslashes, control characters, UTF-8)") {
    TinyModel tiny(ARCH_LLAMA);
    LoraSet set;
    make_adapter(&set, tiny.model.config, 4, 6.0f, 0);
    const char *base_model = "C:\\models\\\"quoted\" \\ end\\\ttab\nnewline\x01 모델 é.gguf";
    TempDir dir;
    char err[1024];
    int saved = lora_set_save_peft(&set, &tiny.model.config, dir.path.c_str(), base_model, &TRAINED_ON_NF4, err, sizeof err);
    lora_set_free(&set);
    REQUIRE_MESSAGE(saved == 0, err);
    JsonValue *config = json_parse_file(dir.file("adapter_config.json").c_str(), err, sizeof err);
    REQUIRE_MESSAGE(config, err);
    CHECK(std::string(json_get_string(config, "base_model_name_or_path", "")) == base_model);
    CHECK(json_get_number(config, "r", 0) == 4);
    json_free(config);
    AdapterInfo info;
    CHECK_MESSAGE(adapter_merge_peft(&tiny.model, dir.path.c_str(), &info, err, sizeof err) == 0, err);
}

TEST_CASE("adapter: F16 and BF16 tensors are converted; other modules stay as they were") {
    TempDir dir;
    write_text(dir.file("adapter_config.json"), rank_2_config(R"("target_modules": ".*\\.1\\.self_attn\\.v_proj")"));
    // v_proj of layer 1: A [2, 8] in F16, B [5, 2] in BF16; all values exact in both
    std::vector<float> A(16), B(10);
    for (int i = 0; i < 16; i++) A[i] = 0.125f * (float)(i - 8);
    for (int i = 0; i < 10; i++) B[i] = 0.25f * (float)(i - 5);
    write_tensors(dir.file("adapter_model.safetensors"),
                  {{"base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight", DT_F16, {2, 8}, A},
                   {"base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight", DT_BF16, {5, 2}, B}});
    TinyModel tiny(ARCH_LLAMA);
    std::vector<float> before = tiny.storage;
    AdapterInfo info;
    char err[1024];
    REQUIRE_MESSAGE(adapter_merge_peft(&tiny.model, dir.path.c_str(), &info, err, sizeof err) == 0, err);
    CHECK(info.n_merged == 1);
    CHECK(info.scaling == 2.0f);
    const float *W = weight_of(tiny.model, 1, LINEAR_V);
    size_t begin = (size_t)(W - tiny.storage.data()), end = begin + 5 * 8;
    for (size_t j = 0; j < tiny.storage.size(); j++) {
        if (j >= begin && j < end) {
            int o = (int)(j - begin) / 8, i = (int)(j - begin) % 8;
            // W[o, i] + 2 (B[o, 0] A[0, i] + B[o, 1] A[1, i])
            double expected = before[j] + 2.0 * (B[o * 2] * A[i] + B[o * 2 + 1] * A[8 + i]);
            CHECK(tiny.storage[j] == doctest::Approx(expected));
        } else {
            CHECK(tiny.storage[j] == before[j]);
        }
    }
}

TEST_CASE("adapter: merging into the default model") {
    const Model &base = default_model();
    Model model;
    char err[1024];
    REQUIRE_MESSAGE(model_load(&model, DEFAULT_MODEL, err, sizeof err) == 0, err);
    LoraSet set;
    make_adapter(&set, model.config, 8, 16.0f, 0);
    TempDir dir;
    REQUIRE_MESSAGE(lora_set_save_peft(&set, &model.config, dir.path.c_str(), "SmolLM2", &TRAINED_ON_NF4, err, sizeof err) == 0, err);
    AdapterInfo info;
    REQUIRE_MESSAGE(adapter_merge_peft(&model, dir.path.c_str(), &info, err, sizeof err) == 0, err);
    CHECK(info.n_merged == 30 * N_LINEARS);
    CHECK(info.rank == 8);
    CHECK(info.scaling == 2.0f);
    for (int l : {0, 17, 29}) {
        for (int t = 0; t < N_LINEARS; t++) {
            const LoraAdapter *a = &set.adapters[l * N_LINEARS + t];
            const float *W = weight_of(model, l, t), *W_before = weight_of(base, l, t);
            int corners[3][2] = {{0, 0}, {a->out_dim - 1, a->in_dim - 1}, {a->out_dim / 3, a->in_dim / 2}};
            for (auto &at : corners)
                CHECK(W[(size_t)at[0] * a->in_dim + at[1]] ==
                      doctest::Approx(merged_value(W_before, a, 2.0f, at[0], at[1])));
        }
    }
    CHECK(std::memcmp(model.embed, base.embed, sizeof(float) * base.config.vocab_size * base.config.dim) == 0);
    lora_set_free(&set);
    model_free(&model);
}

TEST_CASE("adapter: a bad adapter_config.json is refused by name") {
    TempDir dir;
    std::string config_path = dir.file("adapter_config.json");
    CHECK(contains(merge_error(dir), config_path + ": cannot open"));

    write_text(config_path, "{\"peft_type\": \"PREFIX_TUNING\", \"r\": 2, \"lora_alpha\": 4}");
    CHECK(contains(merge_error(dir), config_path + ": peft_type is 'PREFIX_TUNING', expected 'LORA'"));
    write_text(config_path, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"fan_in_fan_out\": true}");
    CHECK(contains(merge_error(dir), config_path + ": 'fan_in_fan_out' is set: [in, out] (Conv1D) weights"));
    write_text(config_path, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"rank_pattern\": {\"q_proj\": 4}}");
    CHECK(contains(merge_error(dir), "rank_pattern"));
    write_text(config_path, "{\"peft_type\": \"LORA\", \"r\": 0, \"lora_alpha\": 4}");
    CHECK(contains(merge_error(dir), config_path + ": 'r' must be a positive integer"));
    write_text(config_path, "{\"peft_type\": \"LORA\", \"r\": 2}");
    CHECK(contains(merge_error(dir), config_path + ": 'lora_alpha' must be a positive number"));
    write_text(config_path, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 1e39}");
    CHECK(contains(merge_error(dir), config_path + ": 'lora_alpha' must be a positive number that fits a float"));
    write_text(config_path, "{\"peft_type\": \"LORA\",");
    CHECK(contains(merge_error(dir), config_path + ": line 1"));
    // peft reads 1 or "yes" as true (Python's truthiness): neither is silently read as false
    write_text(config_path, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"use_rslora\": 1}");
    CHECK(contains(merge_error(dir), config_path + ": 'use_rslora' must be true or false"));
    write_text(config_path, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"use_dora\": \"yes\"}");
    CHECK(contains(merge_error(dir), config_path + ": 'use_dora' must be true or false"));

    write_text(config_path, Q_0_CONFIG);
    CHECK(contains(merge_error(dir), dir.file("adapter_model.safetensors") + ": no such file (an adapter directory "
                                     "holds adapter_config.json and adapter_model.safetensors)"));
}

TEST_CASE("adapter: bad tensors are refused naming the file and the tensor") {
    std::string err = error_with_tensor({LAYER_0 + "self_attn.k_proj.lora_A.weight", DT_F32, {2, 9}, {}});
    CHECK_MESSAGE(contains(err, "shape [2, 9], expected [2, 8]"), err);
    err = error_with_tensor({LAYER_0 + "self_attn.k_proj.lora_B.weight", DT_F32, {5, 4}, {}});
    CHECK_MESSAGE(contains(err, "shape [5, 4], expected [5, 2]"), err);
    err = error_with_tensor({LAYER_0 + "self_attn.k_proj.lora_A.weight", DT_F32, {16}, {}});
    CHECK_MESSAGE(contains(err, "shape [16], expected [2, 8]"), err);
    err = error_with_tensor({"base_model.model.model.layers.2.self_attn.k_proj.lora_A.weight", DT_F32, {2, 8}, {}});
    CHECK_MESSAGE(contains(err, "layer 2 is out of range (the model has 2 layers)"), err);
    err = error_with_tensor({"base_model.model.model.layers.99999999999999999999.mlp.up_proj.lora_A.weight", DT_F32,
                             {2, 8}, {}});
    CHECK_MESSAGE(contains(err, "layer 99999999999999999999 is out of range"), err);
    err = error_with_tensor({LAYER_0 + "self_attn.qkv_proj.lora_A.weight", DT_F32, {2, 8}, {}});
    CHECK_MESSAGE(contains(err, "unknown module 'self_attn.qkv_proj'"), err);
    err = error_with_tensor({LAYER_0 + "mlp.up_proj.lora_A.weight", DT_I32, {2, 8}, {}});
    CHECK_MESSAGE(contains(err, "dtype I32, expected F32, F16 or BF16"), err);
    err = error_with_tensor({"model.layers.0.mlp.up_proj.lora_A.weight", DT_F32, {2, 8}, {}});
    CHECK_MESSAGE(contains(err, "peft's layout"), err);
    err = error_with_tensor({"base_model.model.transformer.h.0.mlp.c_fc_0.lora_A.weight", DT_F32, {2, 8}, {}});
    CHECK_MESSAGE(contains(err, "not a LoRA weight of a"), err);
    err = error_with_tensor({LAYER_0 + "mlp.up_proj.lora_embedding_A", DT_F32, {2, 8}, {}});
    CHECK_MESSAGE(contains(err, "peft's layout"), err);
    // A without its B: the message names the A tensor
    err = error_with_tensor({LAYER_0 + "mlp.up_proj.lora_A.weight", DT_F32, {2, 8}, {}});
    CHECK_MESSAGE(contains(err, "has no matching lora_B"), err);
}

TEST_CASE("adapter: a NaN or Inf weight (a flipped byte) is refused before anything is merged") {
    for (float bad : {NAN, INFINITY}) {
        TempDir dir;
        write_text(dir.file("adapter_config.json"), Q_0_CONFIG);
        std::vector<FakeTensor> tensors = good_pair();
        tensors[1].values[3] = bad;
        write_tensors(dir.file("adapter_model.safetensors"), tensors);
        std::string err = merge_error(dir);
        CHECK_MESSAGE(contains(err, "tensor '" + tensors[1].name + "' holds NaN or Inf values"), err);
    }
}

TEST_CASE("adapter: a file without LoRA weights is refused") {
    TempDir dir;
    write_text(dir.file("adapter_config.json"), Q_0_CONFIG);
    write_tensors(dir.file("adapter_model.safetensors"), {});
    CHECK(contains(merge_error(dir), "holds no LoRA weights"));
}

namespace {

// (layer, target) of a module.
typedef std::vector<std::pair<int, int>> Modules;

// Every (layer, target) of the tiny model's two layers whose target is in targets.
Modules every_layer(std::initializer_list<int> targets) {
    Modules modules;
    for (int l = 0; l < 2; l++)
        for (int t : targets) modules.push_back({l, t});
    return modules;
}

// A rank-2 pair (A zero, B 0.5) for each of modules, in peft's names for c.
std::vector<FakeTensor> pairs_for(const Config &c, const Modules &modules) {
    std::vector<FakeTensor> tensors;
    for (auto [layer, target] : modules) {
        int in_dim, out_dim;
        linear_dims(&c, target, &in_dim, &out_dim);
        std::string module = peft_layers_path(&c) + std::to_string(layer) + "." + peft_module_path(&c, target);
        tensors.push_back({module + ".lora_A.weight", DT_F32, {2, in_dim}, {}});
        tensors.push_back({module + ".lora_B.weight", DT_F32, {out_dim, 2}, std::vector<float>(out_dim * 2, 0.5f)});
    }
    return tensors;
}

// Merges an adapter of selection (config members) holding a pair for each of
// modules into a fresh tiny model: 0 and n_merged in merged, or -1 and the message in err.
int merge_modules(Arch arch, const std::string &selection, const Modules &modules, int *merged, std::string *err) {
    TinyModel tiny(arch);
    TempDir dir;
    write_text(dir.file("adapter_config.json"), rank_2_config(selection));
    write_tensors(dir.file("adapter_model.safetensors"), pairs_for(tiny.model.config, modules));
    AdapterInfo info = {};
    char message[1024] = "";
    int status = adapter_merge_peft(&tiny.model, dir.path.c_str(), &info, message, sizeof message);
    *merged = info.n_merged;
    *err = message;
    return status;
}

}  // namespace

// A file holding exactly the modules a config selects merges; so each case
// below pins the selection: a tensor outside it is refused and a selected
// module without tensors is refused, so a merge proves the selected set equal
// to `selects`. The expected sets follow check_target_module_exists in
// peft/tuners/tuners_utils.py (peft 0.21).
TEST_CASE("adapter: target_modules, exclude_modules and layers_to_transform select modules as peft does") {
    const int Q = LINEAR_Q, K = LINEAR_K, V = LINEAR_V, O = LINEAR_O, GATE = LINEAR_GATE, UP = LINEAR_UP,
              DOWN = LINEAR_DOWN;
    struct Case {
        Arch arch;
        const char *selection;
        Modules selects;
    } cases[] = {
        // a list: the name itself, or a name it ends with after a "."
        {ARCH_LLAMA, R"("target_modules": ["q_proj", "v_proj"])", every_layer({Q, V})},
        {ARCH_LLAMA, R"("target_modules": ["self_attn.o_proj", "model.layers.1.mlp.down_proj"])",
         {{0, O}, {1, O}, {1, DOWN}}},
        // "all-linear", any case: every Linear but the LM head
        {ARCH_LLAMA, R"("target_modules": "All-Linear")", every_layer({Q, K, V, O, GATE, UP, DOWN})},
        // a string is a regex that must match the whole name
        {ARCH_LLAMA, R"("target_modules": ".*\\.0\\.mlp\\..*")", {{0, GATE}, {0, UP}, {0, DOWN}}},
        {ARCH_LLAMA, R"("target_modules": "model\\.layers\\.\\d+\\.self_attn\\.(k|v)_proj")", every_layer({K, V})},
        // exclude_modules: a list or a regex, never adapted
        {ARCH_LLAMA, R"("target_modules": "all-linear", "exclude_modules": ["down_proj", "self_attn.q_proj"])",
         every_layer({K, V, O, GATE, UP})},
        {ARCH_LLAMA, R"("target_modules": ["up_proj"], "exclude_modules": "model\\.layers\\.1\\..*")", {{0, UP}}},
        // layers_to_transform: an index or a list, read after layers_pattern (or the first name)
        {ARCH_LLAMA, R"("target_modules": ["q_proj", "k_proj"], "layers_to_transform": 1)", {{1, Q}, {1, K}}},
        {ARCH_LLAMA, R"("target_modules": ["up_proj"], "layers_to_transform": [0, 1], "layers_pattern": "layers")",
         every_layer({UP})},
        {ARCH_LLAMA, R"("target_modules": ["up_proj"], "layers_to_transform": [], "layers_pattern": [])",
         every_layer({UP})},
        {ARCH_EXAONE, R"("target_modules": ["c_fc_0", "out_proj"], "layers_to_transform": [1], "layers_pattern": ["h"])",
         {{1, GATE}, {1, O}}},
    };
    for (const Case &k : cases) {
        CAPTURE(k.selection);
        int merged;
        std::string err;
        CHECK_MESSAGE(merge_modules(k.arch, k.selection, k.selects, &merged, &err) == 0, err);
        CHECK(merged == (int)k.selects.size());
        // one module more than the selection: refused by name
        for (int extra = 0; extra < 2 * N_LINEARS; extra++) {
            std::pair<int, int> module = {extra / N_LINEARS, extra % N_LINEARS};
            if (std::find(k.selects.begin(), k.selects.end(), module) != k.selects.end()) continue;
            Modules more = k.selects;
            more.push_back(module);
            CHECK(merge_modules(k.arch, k.selection, more, &merged, &err) == -1);
            CHECK_MESSAGE(contains(err, "is not one that"), err);
            break;
        }
    }
}

TEST_CASE("adapter: a selection that names no module of the model is refused") {
    for (const char *selection : {
             R"("target_modules": "q_proj")",   // a string must match the whole name
             R"("target_modules": ["proj"])",   // a name matches after a "." only
             R"("target_modules": ["q_proj"], "layers_to_transform": [0], "layers_pattern": "h")",
             R"("target_modules": ["q_proj"], "layers_to_transform": 7)",
             R"("target_modules": "all-linear", "exclude_modules": ".*")",
         }) {
        CAPTURE(selection);
        int merged;
        std::string err;
        CHECK(merge_modules(ARCH_LLAMA, selection, every_layer({LINEAR_Q}), &merged, &err) == -1);
        CHECK_MESSAGE(contains(err, "selects no linear layer of this llama model"), err);
    }
}

TEST_CASE("adapter: a tensor of a module the config does not select is refused, naming both files") {
    TempDir dir;
    std::string config_path = dir.file("adapter_config.json");
    write_text(config_path, rank_2_config(R"("target_modules": ["q_proj"])"));
    TinyModel tiny(ARCH_LLAMA);
    write_tensors(dir.file("adapter_model.safetensors"),
                  pairs_for(tiny.model.config, {{0, LINEAR_Q}, {1, LINEAR_Q}, {1, LINEAR_K}}));
    std::string err = merge_error(dir);
    CHECK_MESSAGE(contains(err, dir.file("adapter_model.safetensors") +
                                    ": tensor 'base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight': module "
                                    "'model.layers.1.self_attn.k_proj' is not one that " + config_path + " selects"),
                  err);
}

TEST_CASE("adapter: a module the config selects but the file lacks is named") {
    TempDir dir;
    std::string config_path = dir.file("adapter_config.json");
    write_text(config_path, rank_2_config(R"("target_modules": ["q_proj", "v_proj"])"));
    TinyModel tiny(ARCH_LLAMA);
    write_tensors(dir.file("adapter_model.safetensors"), pairs_for(tiny.model.config, {{0, LINEAR_Q}, {0, LINEAR_V},
                                                                                     {1, LINEAR_Q}}));
    std::string err = merge_error(dir);
    CHECK_MESSAGE(contains(err, dir.file("adapter_model.safetensors") + ": no lora_A / lora_B for module "
                                "'model.layers.1.self_attn.v_proj' (layer 1), which " + config_path +
                                " selects (1 such modules missing in all)"),
                  err);
}

TEST_CASE("adapter: lora_alpha <= 0 and options we do not implement are refused by name") {
    TempDir dir;
    std::string config_path = dir.file("adapter_config.json");
    const char *const Q = R"("target_modules": ["q_proj"])";
    struct Case {
        std::string config, message;
    } cases[] = {
        {R"({"peft_type": "LORA", "r": 2, "lora_alpha": 0, "target_modules": ["q_proj"]})",
         "'lora_alpha' must be a positive number"},
        {R"({"peft_type": "LORA", "r": 2, "lora_alpha": -16, "target_modules": ["q_proj"]})",
         "'lora_alpha' must be a positive number"},
        {R"({"peft_type": "LORA", "r": -2, "lora_alpha": 16, "target_modules": ["q_proj"]})",
         "'r' must be a positive integer"},
        {rank_2_config(std::string(Q) + R"(, "modules_to_save": ["lm_head"])"), "'modules_to_save' is set"},
        {rank_2_config(std::string(Q) + R"(, "lora_bias": true)"), "'lora_bias' is set"},
        {rank_2_config(std::string(Q) + R"(, "layer_replication": [[0, 2]])"), "'layer_replication' is set"},
        {rank_2_config(std::string(Q) + R"(, "fan_in_fan_out": true)"), "'fan_in_fan_out' is set"},
        {rank_2_config(std::string(Q) + R"(, "bias": "all")"), "'bias' is 'all'"},
        {rank_2_config(std::string(Q) + R"(, "init_lora_weights": "pissa_niter_4")"),
         "'init_lora_weights' is 'pissa_niter_4'"},
        {rank_2_config(R"("target_modules": null)"), "'target_modules' is missing"},
        {rank_2_config(R"("target_modules": 3)"), "'target_modules' must be a string (a regex) or a list"},
        {rank_2_config(R"("target_modules": ["q_proj", 1])"), "'target_modules' must be a string (a regex) or a list"},
        {rank_2_config(R"("target_modules": "(?P<q>q)_proj")"), "'target_modules' holds '(?P<q>q)_proj', not a regular"},
        {rank_2_config(R"("target_modules": ["q_proj"], "exclude_modules": "[")"), "'exclude_modules' holds '['"},
        {rank_2_config(R"("target_modules": "all-linear", "layers_to_transform": [0])"),
         "'layers_to_transform' and 'layers_pattern' need a list 'target_modules'"},
        {rank_2_config(std::string(Q) + R"(, "layers_pattern": "layers")"),
         "'layers_pattern' is set without 'layers_to_transform'"},
        {rank_2_config(std::string(Q) + R"(, "layers_to_transform": [0, 1.5])"),
         "'layers_to_transform' must be a layer index or a list of them"},
        {rank_2_config(std::string(Q) + R"(, "layers_to_transform": "0")"),
         "'layers_to_transform' must be a layer index or a list of them"},
    };
    for (const Case &k : cases) {
        CAPTURE(k.config);
        write_text(config_path, k.config);
        std::string err = merge_error(dir);
        CHECK_MESSAGE(contains(err, config_path + ": " + k.message), err);
    }
}

namespace {

// adapter_choose_base on dir for the tiny model, from `choice`; fills warning.
int choose(const TempDir &dir, const Model &m, AdapterBaseChoice *choice, std::string *warning) {
    char text[2048], err[1024] = "";
    int status = adapter_choose_base(dir.path.c_str(), &m, choice, text, sizeof text, err, sizeof err);
    *warning = status < 0 ? err : text;
    return status;
}

}  // namespace

TEST_CASE("adapter: the recorded base is used by default; a different --quant or model is warned about, naming both") {
    TinyModel tiny(ARCH_LLAMA);
    LoraSet set;
    make_adapter(&set, tiny.model.config, 2, 4.0f, 0);
    TempDir dir;
    char err[1024];
    LoraBase trained_on = {0, 0, model_weights_hash(&tiny.model)};   // --quant none
    REQUIRE_MESSAGE(lora_set_save_peft(&set, &tiny.model.config, dir.path.c_str(), "tiny.gguf", &trained_on, err,
                                       sizeof err) == 0, err);
    lora_set_free(&set);
    std::string warning, config_path = dir.file("adapter_config.json");

    // nothing given: the record's base, silently
    AdapterBaseChoice choice = {1, 1, 0, 0};
    CHECK(choose(dir, tiny.model, &choice, &warning) == 1);
    CHECK(choice.quant_nf4 == 0);
    CHECK(warning == "");
    // --quant nf4 given: kept, and a warning naming both bases
    choice = {1, 1, 1, 0};
    CHECK(choose(dir, tiny.model, &choice, &warning) == 1);
    CHECK(choice.quant_nf4 == 1);
    CHECK(warning == config_path + " records that the adapter was trained on the base of --quant none, but it is "
                                   "merged onto --quant nf4 --double-quant 1: not the model that was trained");
    // with --quant none, --double-quant does not change the base
    choice = {0, 1, 1, 1};
    CHECK(choose(dir, tiny.model, &choice, &warning) == 1);
    CHECK(warning == "");

    // trained on nf4 with double quant 0: --double-quant 1 differs, the rest is taken from the record
    trained_on = {1, 0, model_weights_hash(&tiny.model)};
    make_adapter(&set, tiny.model.config, 2, 4.0f, 0);
    REQUIRE(lora_set_save_peft(&set, &tiny.model.config, dir.path.c_str(), "tiny.gguf", &trained_on, err, sizeof err) == 0);
    lora_set_free(&set);
    choice = {0, 1, 0, 1};
    CHECK(choose(dir, tiny.model, &choice, &warning) == 1);
    CHECK(choice.quant_nf4 == 1);
    CHECK(choice.double_quant == 1);
    CHECK(contains(warning, "trained on the base of --quant nf4 --double-quant 0, but it is merged onto --quant nf4 "
                            "--double-quant 1"));

    // another model: both hashes named
    uint64_t trained_hash = model_weights_hash(&tiny.model);
    tiny.storage[5] += 1.0f;
    char hashes[2][17];
    snprintf(hashes[0], sizeof hashes[0], "%016llx", (unsigned long long)trained_hash);
    snprintf(hashes[1], sizeof hashes[1], "%016llx", (unsigned long long)model_weights_hash(&tiny.model));
    choice = {1, 1, 0, 0};
    CHECK(choose(dir, tiny.model, &choice, &warning) == 1);
    CHECK(warning == config_path + " records the base model's weights hash " + hashes[0] + " (tiny.gguf), but the "
                                   "model's weights hash to " + hashes[1] + ": the adapter was trained on another model");
}

TEST_CASE("adapter: without a record (peft's adapters) the base stays the caller's; a malformed record is refused") {
    TinyModel tiny(ARCH_LLAMA);
    TempDir dir;
    std::string config_path = dir.file("adapter_config.json"), warning;
    write_text(config_path, Q_0_CONFIG);
    AdapterBaseChoice choice = {1, 0, 0, 0};
    CHECK(choose(dir, tiny.model, &choice, &warning) == 0);
    CHECK(choice.quant_nf4 == 1);
    CHECK(choice.double_quant == 0);
    CHECK(warning == "");
    for (const char *record : {R"("qlora_c_base": {"quant": "nf8", "double_quant": true, "model_weights_hash": "0123456789abcdef"})",
                               R"("qlora_c_base": {"quant": "nf4", "double_quant": 1, "model_weights_hash": "0123456789abcdef"})",
                               R"("qlora_c_base": {"quant": "nf4", "double_quant": true, "model_weights_hash": "0123456789abcdeg"})",
                               R"("qlora_c_base": {"quant": "nf4", "double_quant": true, "model_weights_hash": "123"})",
                               R"("qlora_c_base": "nf4")"}) {
        CAPTURE(record);
        write_text(config_path, rank_2_config(std::string(R"("target_modules": ["q_proj"], )") + record));
        CHECK(choose(dir, tiny.model, &choice, &warning) == -1);
        CHECK_MESSAGE(contains(warning, config_path + ": 'qlora_c_base' must be {\"quant\""), warning);
    }
}

TEST_CASE("adapter: --init-adapter reads the adapter's options and copies its A and B exactly; partial ones refused") {
    for (Arch arch : {ARCH_LLAMA, ARCH_EXAONE}) {
        CAPTURE(arch);
        TinyModel tiny(arch);
        const Config &c = tiny.model.config;
        LoraSet saved;
        int some[N_LINEARS] = {1, 0, 1, 0, 0, 0, 1};   // q, v, down
        REQUIRE(lora_set_init(&saved, &c, some, 3, 5.0f, 1, 0.0f, 11, 0) == 0);
        for (size_t i = 0; i < saved.n_params; i++) saved.params[i] = 0.01f * std::sin(1.3f * (float)i);
        TempDir dir;
        char err[1024];
        REQUIRE_MESSAGE(lora_set_save_peft(&saved, &c, dir.path.c_str(), "tiny", &TRAINED_ON_NF4, err, sizeof err) == 0,
                        err);
        AdapterConfig ac;
        int enabled[N_LINEARS];
        REQUIRE_MESSAGE(adapter_training_options(dir.path.c_str(), &c, &ac, enabled, err, sizeof err) == 0, err);
        CHECK(ac.rank == 3);
        CHECK(ac.alpha == 5.0f);
        CHECK(ac.rslora == 1);
        for (int t = 0; t < N_LINEARS; t++) CHECK(enabled[t] == some[t]);
        // a fresh set of the same shape (other random A, B = 0) gets the saved values bit for bit
        LoraSet fresh;
        REQUIRE(lora_set_init(&fresh, &c, enabled, ac.rank, ac.alpha, ac.rslora, 0.0f, 99, 0) == 0);
        REQUIRE(fresh.n_params == saved.n_params);
        REQUIRE_MESSAGE(adapter_load_into_set(dir.path.c_str(), &tiny.model, &fresh, err, sizeof err) == 0, err);
        CHECK(std::memcmp(fresh.params, saved.params, sizeof(float) * saved.n_params) == 0);
        // another rank is refused, the set untouched
        LoraSet other;
        REQUIRE(lora_set_init(&other, &c, enabled, 2, 5.0f, 1, 0.0f, 99, 0) == 0);
        std::vector<float> before(other.params, other.params + other.n_params);
        CHECK(adapter_load_into_set(dir.path.c_str(), &tiny.model, &other, err, sizeof err) != 0);
        CHECK(std::string(err).find("rank, targets or DoRA setting differ") != std::string::npos);
        CHECK(std::vector<float>(other.params, other.params + other.n_params) == before);
        lora_set_free(&other);
        lora_set_free(&fresh);
        lora_set_free(&saved);
    }
    // an adapter on some layers only (peft's layers_to_transform): ./train adapts a projection in every layer or none
    TinyModel tiny(ARCH_LLAMA);
    TempDir dir;
    write_text(dir.file("adapter_config.json"), LAYER_0_CONFIG);
    AdapterConfig ac;
    int enabled[N_LINEARS];
    char err[1024];
    CHECK(adapter_training_options(dir.path.c_str(), &tiny.model.config, &ac, enabled, err, sizeof err) != 0);
    CHECK_MESSAGE(std::string(err).find("adapts self_attn.q_proj in 1 of the 2 layers (not in layer 1)") !=
                      std::string::npos, err);
}
