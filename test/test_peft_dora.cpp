// DoRA against peft (fixtures from dev/fixtures/make_peft_dora_fixture.py:
// a tiny random Qwen2 with q/k/v biases and a peft DoRA adapter on all seven
// projections, every magnitude off ||W0||):
//   - merged (adapter_merge_peft, what ./generate, ./evaluate and --merge do):
//     peft's logits at every position, to 1e-4;
//   - unmerged, as training computes it (adapter_load_into_set into a DoRA
//     LoraSet, loss_cpu): peft's loss, to 1e-5 relative;
//   - the adapter ./train writes with --dora has peft's names and config;
//   - bad DoRA adapters, ./serve's unmerged loader and ./merge refused with a message.
#include <doctest/doctest.h>

#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "dora.h"
#include "formats/json.h"
#include "formats/safetensors.h"
#include "infer/adapter.h"
#include "infer/forward.h"
#include "lora.h"
#include "merging/adapter_merge.h"
#include "model.h"
#include "trainer/base_weights.h"
#include "trainer/train_step.h"

namespace {

const char *const MODEL_DIR = "test/fixtures/peft_dora/model";
const char *const ADAPTER_DIR = "test/fixtures/peft_dora/adapter";
const char *const REFERENCE = "test/fixtures/peft_dora/reference.safetensors";

struct Reference {
    std::vector<int> tokens;
    std::vector<float> logits, base_logits;   // [n, vocab]
    float loss = 0;
};

Reference read_reference() {
    char err[512];
    SafetensorsFile f;
    REQUIRE_MESSAGE(safetensors_open(&f, REFERENCE, err, sizeof err) == 0, err);
    Reference r;
    for (int i = 0; i < f.tensors.count; i++) {
        const TensorInfo *t = &f.tensors.tensors[i];
        std::string name = t->name;
        if (name == "tokens") r.tokens.assign((const int *)t->data, (const int *)t->data + t->shape[0]);
        if (name == "logits") r.logits.assign((const float *)t->data, (const float *)t->data + t->nbytes / 4);
        if (name == "base_logits") r.base_logits.assign((const float *)t->data, (const float *)t->data + t->nbytes / 4);
        if (name == "loss") r.loss = *(const float *)t->data;
    }
    safetensors_close(&f);
    REQUIRE(r.tokens.size() == 12);
    return r;
}

// A fresh directory under /tmp, removed with everything in it at scope exit.
struct TempDir {
    std::string path;
    TempDir() {
        char name[] = "/tmp/qlora_dora_XXXXXX";
        REQUIRE(mkdtemp(name) != nullptr);
        path = name;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

// A copy of the fixture adapter in dir with its config edited by edit (text replace) and
// the safetensors rewritten without the tensors whose name contains drop (when not empty).
void copy_adapter(const std::string &dir, const std::string &from, const std::string &to, const std::string &drop) {
    std::ifstream in(std::string(ADAPTER_DIR) + "/adapter_config.json");
    std::string config((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!from.empty()) config.replace(config.find(from), from.size(), to);
    std::ofstream(dir + "/adapter_config.json") << config;
    char err[512];
    SafetensorsFile f;
    REQUIRE(safetensors_open(&f, (std::string(ADAPTER_DIR) + "/adapter_model.safetensors").c_str(), err, sizeof err) == 0);
    std::vector<TensorInfo> kept;
    for (int i = 0; i < f.tensors.count; i++)
        if (drop.empty() || std::string(f.tensors.tensors[i].name).find(drop) == std::string::npos)
            kept.push_back(f.tensors.tensors[i]);
    REQUIRE(safetensors_write((dir + "/adapter_model.safetensors").c_str(), kept.data(), (int)kept.size(), err,
                              sizeof err) == 0);
    safetensors_close(&f);
}

}  // namespace

TEST_CASE("peft dora: the merged adapter gives peft's logits at every position") {
    Reference ref = read_reference();
    char err[1024];
    Model m;
    REQUIRE_MESSAGE(model_load(&m, MODEL_DIR, err, sizeof err) == 0, err);
    int n = (int)ref.tokens.size(), vocab = m.config.vocab_size;
    REQUIRE(ref.logits.size() == (size_t)n * vocab);
    InferState state;
    REQUIRE(infer_state_init(&state, &m.config, n, n) == 0);
    // the base alone is far from peft's adapted logits, near its own
    const float *base = forward_cpu(&m, &state, ref.tokens.data(), n, 0, 1, NULL);
    double base_error = 0, base_change = 0;
    for (size_t i = 0; i < ref.logits.size(); i++) {
        base_error = std::fmax(base_error, std::fabs(base[i] - ref.base_logits[i]));
        base_change = std::fmax(base_change, std::fabs(base[i] - ref.logits[i]));
    }
    CHECK(base_error < 1e-4);
    CHECK(base_change > 0.5);
    AdapterInfo info;
    REQUIRE_MESSAGE(adapter_merge_peft(&m, ADAPTER_DIR, &info, err, sizeof err) == 0, err);
    CHECK(info.n_merged == 14);
    const float *logits = forward_cpu(&m, &state, ref.tokens.data(), n, 0, 1, NULL);
    double worst = 0;
    for (size_t i = 0; i < ref.logits.size(); i++) worst = std::fmax(worst, std::fabs(logits[i] - ref.logits[i]));
    MESSAGE("merged DoRA adapter: max |logit - peft's| = " << worst << " (the adapter moves them by " << base_change
                                                           << ")");
    CHECK(worst < 1e-4);
    infer_state_free(&state);
    model_free(&m);
}

TEST_CASE("peft dora: the training path (magnitudes in the LoraSet, unmerged) gives peft's loss") {
    Reference ref = read_reference();
    char err[1024];
    Model m;
    REQUIRE_MESSAGE(model_load(&m, MODEL_DIR, err, sizeof err) == 0, err);
    const Config *c = &m.config;
    AdapterConfig ac;
    int enabled[N_LINEARS];
    REQUIRE_MESSAGE(adapter_training_options(ADAPTER_DIR, c, &ac, enabled, err, sizeof err) == 0, err);
    CHECK(ac.dora == 1);
    LoraSet set;
    REQUIRE(lora_set_init(&set, c, enabled, ac.rank, ac.alpha, ac.rslora, 0.0f, 1, ac.dora) == 0);
    REQUIRE(dora_init_magnitudes(&set, &m, 0, 0) == 0);
    REQUIRE_MESSAGE(adapter_load_into_set(ADAPTER_DIR, &m, &set, err, sizeof err) == 0, err);
    BaseWeights base;
    REQUIRE(base_weights_init(&base, &m, QUANT_NONE, 0) == 0);
    std::vector<AdapterParams<float>> views;
    for (int i = 0; i < c->n_layers * N_LINEARS; i++) {
        LoraAdapter *a = &set.adapters[i];
        views.push_back({a->A, a->B, a->dA, a->dB, a->m, a->dm});
    }
    int n = (int)ref.tokens.size();
    std::vector<int> targets(n);
    for (int t = 0; t < n; t++) targets[t] = t + 1 < n ? ref.tokens[t + 1] : IGNORE_TARGET;
    Batch batch = {ref.tokens.data(), targets.data(), 1, n, NULL, NULL};
    StepOptions opt = {ac.rank, lora_scale(ac.alpha, ac.rank, ac.rslora), 0.0f, 0, 0};
    int counted = 0;
    double loss = loss_cpu(c, &base.source, views.data(), &opt, &batch, &counted) / counted;
    CHECK(counted == n - 1);
    MESSAGE("DoRA training forward: loss " << loss << ", peft's " << ref.loss);
    CHECK(loss == doctest::Approx(ref.loss).epsilon(1e-5));
    // the magnitudes matter: with m at its initial ||W + s B A|| (g = 1) the loss is another
    REQUIRE(dora_init_magnitudes(&set, &m, 0, 0) == 0);
    double plain = loss_cpu(c, &base.source, views.data(), &opt, &batch, &counted) / counted;
    CHECK(std::fabs(plain - ref.loss) > 1e-2);
    base_weights_free(&base);
    lora_set_free(&set);
    model_free(&m);
}

TEST_CASE("peft dora: our saved DoRA adapter has peft's tensor names, shapes and use_dora") {
    char err[1024];
    Model m;
    REQUIRE_MESSAGE(model_load(&m, MODEL_DIR, err, sizeof err) == 0, err);
    const Config *c = &m.config;
    int enabled[N_LINEARS] = {1, 1, 1, 1, 1, 1, 1};
    LoraSet set;
    REQUIRE(lora_set_init(&set, c, enabled, 4, 8.0f, 0, 0.0f, 3, 1) == 0);
    REQUIRE(dora_init_magnitudes(&set, &m, 0, 0) == 0);
    REQUIRE_MESSAGE(adapter_load_into_set(ADAPTER_DIR, &m, &set, err, sizeof err) == 0, err);
    TempDir dir;
    LoraBase base = {0, 0, model_weights_hash(&m)};
    REQUIRE_MESSAGE(lora_set_save_peft(&set, c, dir.path.c_str(), MODEL_DIR, &base, err, sizeof err) == 0, err);
    SafetensorsFile ours, theirs;
    REQUIRE(safetensors_open(&ours, (dir.path + "/adapter_model.safetensors").c_str(), err, sizeof err) == 0);
    REQUIRE(safetensors_open(&theirs, (std::string(ADAPTER_DIR) + "/adapter_model.safetensors").c_str(), err,
                             sizeof err) == 0);
    REQUIRE(ours.tensors.count == theirs.tensors.count);
    for (int i = 0; i < theirs.tensors.count; i++) {
        const TensorInfo *want = &theirs.tensors.tensors[i];
        const TensorInfo *got = NULL;
        for (int k = 0; k < ours.tensors.count; k++)
            if (std::string(ours.tensors.tensors[k].name) == want->name) got = &ours.tensors.tensors[k];
        REQUIRE_MESSAGE(got != NULL, want->name);
        CHECK(got->ndim == want->ndim);
        CHECK(got->shape[0] == want->shape[0]);
        CHECK(std::memcmp(got->data, want->data, want->nbytes) == 0);   // both F32: the values round-trip
    }
    safetensors_close(&ours);
    safetensors_close(&theirs);
    JsonValue *config = json_parse_file((dir.path + "/adapter_config.json").c_str(), err, sizeof err);
    REQUIRE(config != NULL);
    const JsonValue *use_dora = json_get(config, "use_dora");
    REQUIRE(use_dora != NULL);
    CHECK(use_dora->type == JSON_BOOL);
    CHECK(use_dora->boolean);
    json_free(config);
    // and it merges back to the fixture's logits
    Model merged;
    REQUIRE(model_load(&merged, MODEL_DIR, err, sizeof err) == 0);
    REQUIRE_MESSAGE(adapter_merge_peft(&merged, dir.path.c_str(), NULL, err, sizeof err) == 0, err);
    Reference ref = read_reference();
    InferState state;
    REQUIRE(infer_state_init(&state, c, 12, 12) == 0);
    const float *logits = forward_cpu(&merged, &state, ref.tokens.data(), 12, 0, 1, NULL);
    for (size_t i = 0; i < ref.logits.size(); i++) CHECK(std::fabs(logits[i] - ref.logits[i]) < 1e-4);
    infer_state_free(&state);
    model_free(&merged);
    lora_set_free(&set);
    model_free(&m);
}

TEST_CASE("peft dora: bad DoRA adapters, the unmerged loader (./serve) and ./merge are refused with a message") {
    char err[1024];
    Model m;
    REQUIRE_MESSAGE(model_load(&m, MODEL_DIR, err, sizeof err) == 0, err);
    AdapterInfo info;
    {   // use_dora without magnitude vectors
        TempDir dir;
        copy_adapter(dir.path, "", "", "lora_magnitude_vector");
        CHECK(adapter_merge_peft(&m, dir.path.c_str(), &info, err, sizeof err) == -1);
        CHECK(std::string(err).find("has no lora_magnitude_vector") != std::string::npos);
        CHECK(std::string(err).find("use_dora") != std::string::npos);
    }
    {   // magnitude vectors without use_dora
        TempDir dir;
        copy_adapter(dir.path, "\"use_dora\": true", "\"use_dora\": false", "");
        CHECK(adapter_merge_peft(&m, dir.path.c_str(), &info, err, sizeof err) == -1);
        CHECK(std::string(err).find("does not set use_dora") != std::string::npos);
        CHECK(std::string(err).find("lora_magnitude_vector") != std::string::npos);
    }
    {   // ./serve keeps adapters apart: DoRA's are refused, naming the config
        AdapterWeights aw;
        CHECK(adapter_load_peft(&m, ADAPTER_DIR, &aw, err, sizeof err) == -1);
        CHECK(std::string(err).find("use_dora") != std::string::npos);
        CHECK(std::string(err).find("adapter_config.json") != std::string::npos);
    }
    {   // ./merge combines plain LoRA adapters only
        PeftAdapter a;
        CHECK(peft_adapter_read(&a, ADAPTER_DIR, err, sizeof err) == -1);
        CHECK(std::string(err).find("use_dora") != std::string::npos);
    }
    {   // --init-adapter of a DoRA adapter into a LoRA set: refused, set untouched
        int enabled[N_LINEARS] = {1, 1, 1, 1, 1, 1, 1};
        LoraSet set;
        REQUIRE(lora_set_init(&set, &m.config, enabled, 4, 8.0f, 0, 0.0f, 3, 0) == 0);
        std::vector<float> before(set.params, set.params + set.n_params);
        CHECK(adapter_load_into_set(ADAPTER_DIR, &m, &set, err, sizeof err) == -1);
        CHECK(std::string(err).find("DoRA") != std::string::npos);
        CHECK(std::vector<float>(set.params, set.params + set.n_params) == before);
        lora_set_free(&set);
    }
    model_free(&m);
}
