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
    REQUIRE(lora_set_init(set, &c, enabled, rank, alpha, rslora, 0.0f, 7) == 0);
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

const char *const RANK_2_CONFIG =
    "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"use_rslora\": false, \"use_dora\": false, "
    "\"rank_pattern\": {}, \"alpha_pattern\": {}, \"target_modules\": [\"q_proj\", \"v_proj\"]}";

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
    write_text(dir.file("adapter_config.json"), RANK_2_CONFIG);
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
            REQUIRE_MESSAGE(lora_set_save_peft(&set, &tiny.model.config, dir.path.c_str(), "tiny", err, sizeof err) == 0,
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
    int saved = lora_set_save_peft(&set, &tiny.model.config, dir.path.c_str(), base_model, err, sizeof err);
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
    write_text(dir.file("adapter_config.json"), RANK_2_CONFIG);
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
    REQUIRE_MESSAGE(lora_set_save_peft(&set, &model.config, dir.path.c_str(), "SmolLM2", err, sizeof err) == 0, err);
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
    write_text(config_path, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"use_dora\": true}");
    CHECK(contains(merge_error(dir), config_path + ": use_dora is true"));
    write_text(config_path, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"rank_pattern\": {\"q_proj\": 4}}");
    CHECK(contains(merge_error(dir), "rank_pattern"));
    write_text(config_path, "{\"peft_type\": \"LORA\", \"r\": 0, \"lora_alpha\": 4}");
    CHECK(contains(merge_error(dir), config_path + ": 'r' must be a positive integer"));
    write_text(config_path, "{\"peft_type\": \"LORA\", \"r\": 2}");
    CHECK(contains(merge_error(dir), config_path + ": 'lora_alpha' must be a number"));
    write_text(config_path, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 1e39}");
    CHECK(contains(merge_error(dir), config_path + ": 'lora_alpha' must be a number that fits a float"));
    write_text(config_path, "{\"peft_type\": \"LORA\",");
    CHECK(contains(merge_error(dir), config_path + ": line 1"));

    write_text(config_path, RANK_2_CONFIG);
    CHECK(contains(merge_error(dir), dir.file("adapter_model.safetensors") + ": cannot open"));
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
        write_text(dir.file("adapter_config.json"), RANK_2_CONFIG);
        std::vector<FakeTensor> tensors = good_pair();
        tensors[1].values[3] = bad;
        write_tensors(dir.file("adapter_model.safetensors"), tensors);
        std::string err = merge_error(dir);
        CHECK_MESSAGE(contains(err, "tensor '" + tensors[1].name + "' holds NaN or Inf values"), err);
    }
}

TEST_CASE("adapter: a file without LoRA weights is refused") {
    TempDir dir;
    write_text(dir.file("adapter_config.json"), RANK_2_CONFIG);
    write_tensors(dir.file("adapter_model.safetensors"), {});
    CHECK(contains(merge_error(dir), "holds no LoRA weights"));
}
