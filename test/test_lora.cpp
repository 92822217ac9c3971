// LoRA pieces: initialisation as peft does it, target parsing, dropout masks,
// and the adapter exported in peft's layout (names, shapes, config).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "formats/json.h"
#include "lora.h"
#include "formats/safetensors.h"
#include "test_util.h"

// A tiny shape: width 100, q 40 (4 heads of 10), k and v 20, hidden 30, 2 layers.
static Config tiny_config() {
    Config c = {};
    c.dim = 100;
    c.hidden_dim = 30;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 10;
    return c;
}

TEST_CASE("lora: init is kaiming-uniform A, zero B, scaling alpha / r") {
    Config c = tiny_config();
    int enabled[N_LINEARS] = {0};
    enabled[LINEAR_UP] = 1;   // in 100, out 30
    LoraSet set;
    REQUIRE(lora_set_init(&set, &c, enabled, 8, 16.0f, 0, 0.0f, 42, 0) == 0);
    const LoraAdapter &a = set.adapters[LINEAR_UP];
    REQUIRE(a.in_dim == 100);
    REQUIRE(a.out_dim == 30);
    CHECK(a.scaling == 2.0f);
    float bound = 1.0f / std::sqrt(100.0f), largest = 0;
    double mean = 0;
    for (int i = 0; i < 8 * 100; i++) {
        CHECK(std::fabs(a.A[i]) <= bound);
        largest = std::fmax(largest, std::fabs(a.A[i]));
        mean += a.A[i];
    }
    CHECK(largest > 0.9f * bound);            // spread over the whole range
    CHECK(std::fabs(mean / 800) < 0.01);
    for (int i = 0; i < 30 * 8; i++) CHECK(a.B[i] == 0.0f);
    lora_set_free(&set);
    REQUIRE(lora_set_init(&set, &c, enabled, 16, 16.0f, 1, 0.0f, 42, 0) == 0);
    CHECK(set.adapters[LINEAR_UP].scaling == 4.0f);   // rsLoRA: alpha / sqrt(r)
    CHECK(lora_scale(16.0f, 16, 1) == 4.0f);
    CHECK(lora_scale(16.0f, 8, 0) == 2.0f);
    lora_set_free(&set);
}

TEST_CASE("lora: the set's state is one flat layout: per layer and input group, its A's end to end, then its B's") {
    Config c = tiny_config();
    int enabled[N_LINEARS] = {0};
    enabled[LINEAR_Q] = enabled[LINEAR_V] = enabled[LINEAR_UP] = enabled[LINEAR_DOWN] = 1;
    const int rank = 2;
    LoraSet set;
    REQUIRE(lora_set_init(&set, &c, enabled, rank, 4.0f, 0, 0.0f, 3, 0) == 0);
    // written out by hand: each layer holds A_q A_v B_q B_v (q|k|v without k), A_up B_up, A_down B_down
    const int order[][2] = {{LINEAR_Q, 0}, {LINEAR_V, 0}, {LINEAR_Q, 1}, {LINEAR_V, 1},
                            {LINEAR_UP, 0}, {LINEAR_UP, 1}, {LINEAR_DOWN, 0}, {LINEAR_DOWN, 1}};
    size_t offset = 0, layer1_v_B = 0;
    for (int l = 0; l < c.n_layers; l++) {
        for (int t = 0; t < N_LINEARS; t++) {
            const LoraAdapter &a = set.adapters[l * N_LINEARS + t];
            if (!enabled[t]) CHECK((!a.A && !a.B && !a.dA && !a.dB));
        }
        for (const auto &tensor : order) {
            const LoraAdapter &a = set.adapters[l * N_LINEARS + tensor[0]];
            int is_B = tensor[1];
            INFO("layer " << l << " target " << LINEAR_NAMES[tensor[0]] << (is_B ? " B" : " A"));
            CHECK((is_B ? a.B : a.A) == set.params + offset);
            CHECK((is_B ? a.dB : a.dA) == set.grads + offset);
            if (l == 1 && tensor[0] == LINEAR_V && is_B) layer1_v_B = offset;
            offset += (size_t)rank * (is_B ? a.out_dim : a.in_dim);
        }
    }
    CHECK(offset == set.n_params);
    CHECK(lora_set_num_params(&set) == 2 * rank * (100 + 40 + 100 + 20 + 100 + 30 + 30 + 100));

    // zeroing the gradients clears the whole flat array
    for (size_t i = 0; i < set.n_params; i++) set.grads[i] = 1.0f;
    lora_set_zero_grads(&set);
    for (size_t i = 0; i < set.n_params; i++) REQUIRE(set.grads[i] == 0.0f);

    // a NaN anywhere in an array of this layout is named by its tensor
    std::vector<float> flat(set.n_params, 0.5f);
    char name[64];
    CHECK(lora_set_find_non_finite(&set, flat.data(), name, sizeof name) == 0);
    CHECK(std::string(name) == "none");
    flat[layer1_v_B + 7] = NAN;
    CHECK(lora_set_find_non_finite(&set, flat.data(), name, sizeof name) == 1);
    CHECK(std::string(name) == "layer 1 v lora_B");
    flat[0] = INFINITY;
    CHECK(lora_set_find_non_finite(&set, flat.data(), name, sizeof name) == 1);
    CHECK(std::string(name) == "layer 0 q lora_A");
    lora_set_free(&set);
}

TEST_CASE("lora: dropout masks are seeded, scaled and near the asked rate") {
    std::vector<float> m1(10000), m2(10000);
    lora_dropout_mask(m1.data(), m1.size(), 0.25f, 9);
    lora_dropout_mask(m2.data(), m2.size(), 0.25f, 9);
    CHECK(m1 == m2);
    int dropped = 0;
    for (float k : m1) {
        CHECK((k == 0.0f || k == doctest::Approx(1.0f / 0.75f)));
        dropped += k == 0.0f;
    }
    CHECK(dropped > 2300);
    CHECK(dropped < 2700);
}

TEST_CASE("lora: dropout masks are independent across elements and related seeds") {
    // lora_dropout_seed derives the seeds of a step's adapters as seed ^ k
    // GAMMA (the splitmix64 increment): such masks, and neighbouring elements
    // of one mask, must agree only by chance (half the time at p = 0.5; the
    // standard deviation of the fraction over 10000 elements is 0.005).
    size_t count = 10000;
    std::vector<float> a(count), b(count);
    // layer 0, its first two input groups (q|k|v and o)
    lora_dropout_mask(a.data(), count, 0.5f, lora_dropout_seed(7, 0, LINEAR_Q));
    lora_dropout_mask(b.data(), count, 0.5f, lora_dropout_seed(7, 0, LINEAR_O));
    int same_as_next = 0, same_as_other_seed = 0, same_as_other_shifted = 0;
    for (size_t i = 0; i + 1 < count; i++) {
        same_as_next += a[i] == a[i + 1];
        same_as_other_seed += a[i] == b[i];
        same_as_other_shifted += a[i + 1] == b[i];
    }
    CHECK(std::abs(same_as_next - 5000) < 250);
    CHECK(std::abs(same_as_other_seed - 5000) < 250);
    CHECK(std::abs(same_as_other_shifted - 5000) < 250);
}

TEST_CASE("lora: the linears that read one input share its dropout mask; other inputs and layers do not") {
    // the input groups written out by hand: q, k, v | o | gate, up | down
    const int group_of[N_LINEARS] = {0, 0, 0, 1, 2, 2, 3};
    for (int t = 0; t < N_LINEARS; t++) CHECK(linear_group_of(t) == group_of[t]);
    int all[N_LINEARS] = {1, 1, 1, 1, 1, 1, 1}, q_and_v[N_LINEARS] = {1, 0, 1, 0, 0, 0, 0};
    int targets[LINEAR_GROUP_MAX];
    REQUIRE(lora_group_targets(all, LINEAR_GROUP_QKV, targets) == 3);
    CHECK((targets[0] == LINEAR_Q && targets[1] == LINEAR_K && targets[2] == LINEAR_V));
    REQUIRE(lora_group_targets(all, LINEAR_GROUP_GATE_UP, targets) == 2);
    CHECK((targets[0] == LINEAR_GATE && targets[1] == LINEAR_UP));
    REQUIRE(lora_group_targets(q_and_v, LINEAR_GROUP_QKV, targets) == 2);
    CHECK((targets[0] == LINEAR_Q && targets[1] == LINEAR_V));
    CHECK(lora_group_targets(q_and_v, LINEAR_GROUP_GATE_UP, targets) == 0);
    for (int layer = 0; layer < 3; layer++)
        for (int t = 0; t < N_LINEARS; t++)
            for (int u = 0; u < N_LINEARS; u++) {
                INFO("layer " << layer << ", " << LINEAR_NAMES[t] << " and " << LINEAR_NAMES[u]);
                bool same_input = group_of[t] == group_of[u];
                CHECK((lora_dropout_seed(5, layer, t) == lora_dropout_seed(5, layer, u)) == same_input);
                CHECK(lora_dropout_seed(5, layer, t) != lora_dropout_seed(5, layer + 1, u));
            }
}

TEST_CASE("lora: targets parse by name and refuse unknown ones") {
    int enabled[N_LINEARS];
    char err[256];
    REQUIRE(lora_parse_targets("q,v,down", enabled, err, sizeof err) == 0);
    CHECK(enabled[LINEAR_Q] == 1);
    CHECK(enabled[LINEAR_K] == 0);
    CHECK(enabled[LINEAR_V] == 1);
    CHECK(enabled[LINEAR_DOWN] == 1);
    CHECK(lora_parse_targets("q,mlp", enabled, err, sizeof err) == -1);
    CHECK(std::string(err).find("'mlp'") != std::string::npos);
}

TEST_CASE("lora: the exported adapter has peft's names, shapes and config") {
    const Model &m = default_model();
    int enabled[N_LINEARS];
    char err[512];
    REQUIRE(lora_parse_targets("q,k,v,o,gate,up,down", enabled, err, sizeof err) == 0);
    LoraSet set;
    REQUIRE(lora_set_init(&set, &m.config, enabled, 16, 32.0f, 0, 0.05f, 1, 0) == 0);
    CHECK(lora_set_num_params(&set) == 4884480);   // 30 layers x 16 x (576+576 + 576+192 + 576+192 + 576+576 + 2 x (576+1536) + 1536+576)
    char dir[] = "/tmp/qlora_adapter_XXXXXX";
    REQUIRE(mkdtemp(dir));
    LoraBase base = {1, 0, 0x0123456789abcdefULL};
    REQUIRE_MESSAGE(lora_set_save_peft(&set, &m.config, dir, "HuggingFaceTB/SmolLM2-135M-Instruct", &base, err, sizeof err) == 0, err);
    SafetensorsFile f;
    std::string weights = std::string(dir) + "/adapter_model.safetensors";
    REQUIRE_MESSAGE(safetensors_open(&f, weights.c_str(), err, sizeof err) == 0, err);
    CHECK(f.tensors.count == 30 * 7 * 2);
    const TensorInfo *a = tensor_find(&f.tensors, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    REQUIRE(a);
    CHECK(a->shape[0] == 16);
    CHECK(a->shape[1] == 576);
    const TensorInfo *b = tensor_find(&f.tensors, "base_model.model.model.layers.29.mlp.down_proj.lora_B.weight");
    REQUIRE(b);
    CHECK(b->shape[0] == 576);
    CHECK(b->shape[1] == 16);
    CHECK(((const float *)a->data)[5] == set.adapters[0].A[5]);
    safetensors_close(&f);
    size_t len;
    std::string config_path = std::string(dir) + "/adapter_config.json";
    char *text = read_file(config_path.c_str(), &len, err, sizeof err);
    REQUIRE(text);
    JsonValue *config = json_parse(text, len, err, sizeof err);
    REQUIRE_MESSAGE(config, err);
    CHECK(std::string(json_get_string(config, "peft_type", "")) == "LORA");
    CHECK(json_get_number(config, "r", 0) == 16);
    CHECK(json_get_number(config, "lora_alpha", 0) == 32);
    CHECK(json_get(config, "target_modules")->count == 7);
    CHECK(std::string(json_get(config, "target_modules")->items[4].string) == "gate_proj");
    // the base it trained on, under our own key
    const JsonValue *record = json_get(config, LORA_BASE_KEY);
    REQUIRE(record);
    CHECK(std::string(json_get_string(record, "quant", "")) == "nf4");
    CHECK(json_get(record, "double_quant")->type == JSON_BOOL);
    CHECK(json_get(record, "double_quant")->boolean == 0);
    CHECK(std::string(json_get_string(record, "model_weights_hash", "")) == "0123456789abcdef");
    json_free(config);
    free(text);
    lora_set_free(&set);
    REQUIRE(system((std::string("rm -rf ") + dir).c_str()) == 0);
}
