// test_unmerged_adapter.cpp: an adapter kept apart from the base, as ./serve
// runs it (infer/adapter.cpp's adapter_load_peft, infer/forward.cpp's
// forward_cpu_adapter: y = x W^T + s (x A^T) B^T at every adapted linear).
// References: peft's logits with the same adapters applied unmerged
// (test/fixtures/serve/reference.safetensors, dev/fixtures/make_serve_fixtures.py;
// test/fixtures/peft_adapter_reference.safetensors on the default model), and
// our merged path (adapter_merge_peft, then forward_cpu), which must agree to
// float rounding at every position, through the KV cache one token at a time too.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "formats/safetensors.h"
#include "infer/adapter.h"
#include "infer/forward.h"
#include "test_util.h"

static const char *SERVE_FIXTURES = "test/fixtures/serve";
// fp32 on both sides, different summation orders; the fixture's logits reach ~60
static const float PEFT_TOLERANCE = 2e-3f;
// merged W + s B A against W and s (x A^T) B^T apart: fp32 rounding only
static const float MERGED_TOLERANCE = 1e-3f;

// Logits at every position of tokens, run in chunks of `chunk` through the cache.
static std::vector<float> all_logits(const Model &m, const AdapterWeights *adapter, const std::vector<int> &tokens,
                                     int chunk) {
    InferState s;
    int n = (int)tokens.size(), vocab = m.config.vocab_size;
    REQUIRE(infer_state_init(&s, &m.config, n, chunk) == 0);
    std::vector<float> out;
    for (int pos = 0; pos < n; pos += chunk) {
        int count = n - pos < chunk ? n - pos : chunk;
        const float *logits = forward_cpu_adapter(&m, adapter, &s, tokens.data() + pos, count, pos, 1, nullptr);
        REQUIRE(logits != nullptr);
        out.insert(out.end(), logits, logits + (size_t)count * vocab);
    }
    infer_state_free(&s);
    return out;
}

static float max_abs_diff(const std::vector<float> &a, const float *b, size_t n) {
    REQUIRE(a.size() == n);
    float worst = 0.0f;
    for (size_t i = 0; i < n; i++) worst = std::fmax(worst, std::fabs(a[i] - b[i]));
    return worst;
}

static std::string fixture(const char *name) { return std::string(SERVE_FIXTURES) + "/" + name; }

TEST_CASE("unmerged adapter: logits equal peft's and the merged model's, at every position") {
    char err[1024];
    SafetensorsFile ref;
    REQUIRE_MESSAGE(safetensors_open(&ref, fixture("reference.safetensors").c_str(), err, sizeof err) == 0, err);
    const TensorInfo *tokens_info = tensor_find(&ref.tensors, "tokens");
    REQUIRE(tokens_info);
    const int32_t *token_data = (const int32_t *)tokens_info->data;
    std::vector<int> tokens(token_data, token_data + tensor_numel(tokens_info));
    Model base;
    REQUIRE_MESSAGE(model_load(&base, fixture("model").c_str(), err, sizeof err) == 0, err);
    size_t n_logits = tokens.size() * base.config.vocab_size;
    const TensorInfo *base_ref = tensor_find(&ref.tensors, "base.logits");
    REQUIRE(base_ref);
    CHECK(max_abs_diff(all_logits(base, nullptr, tokens, 4), (const float *)base_ref->data, n_logits) <= PEFT_TOLERANCE);

    struct { const char *name; int modules, rank; float scaling; } cases[] = {
        {"faq", 4, 4, 2.0f}, {"all", 14, 2, 4.0f / std::sqrt(2.0f)}};
    for (const auto &k : cases) {
        std::string name = k.name;
        CAPTURE(name);
        AdapterWeights aw;
        REQUIRE_MESSAGE(adapter_load_peft(&base, fixture(k.name).c_str(), &aw, err, sizeof err) == 0, err);
        CHECK(aw.n_modules == k.modules);
        CHECK(aw.rank == k.rank);
        CHECK(aw.scaling == doctest::Approx(k.scaling));
        CHECK(aw.bytes > 0);
        const TensorInfo *expected = tensor_find(&ref.tensors, (std::string(k.name) + ".logits").c_str());
        REQUIRE(expected);
        std::vector<float> unmerged = all_logits(base, &aw, tokens, (int)tokens.size());
        float to_peft = max_abs_diff(unmerged, (const float *)expected->data, n_logits);
        float adapter_moves = max_abs_diff(unmerged, (const float *)base_ref->data, n_logits);
        MESSAGE(name, ": max |logit difference| to peft ", to_peft, "; the adapter moves them by ", adapter_moves);
        CHECK(to_peft <= PEFT_TOLERANCE);
        CHECK(adapter_moves > 100 * PEFT_TOLERANCE);

        Model merged;
        REQUIRE(model_load(&merged, fixture("model").c_str(), err, sizeof err) == 0);
        REQUIRE_MESSAGE(adapter_merge_peft(&merged, fixture(k.name).c_str(), nullptr, err, sizeof err) == 0, err);
        std::vector<float> from_merged = all_logits(merged, nullptr, tokens, 1);
        CHECK(max_abs_diff(all_logits(base, &aw, tokens, 1), from_merged.data(), n_logits) <= MERGED_TOLERANCE);
        CHECK(max_abs_diff(unmerged, from_merged.data(), n_logits) <= MERGED_TOLERANCE);
        model_free(&merged);
        adapter_weights_free(&aw);
        CHECK(aw.A == nullptr);
    }
    model_free(&base);
    safetensors_close(&ref);
}

TEST_CASE("unmerged adapter: the trained adapter on the default model gives peft's logits") {
    char err[1024];
    SafetensorsFile ref;
    REQUIRE_MESSAGE(safetensors_open(&ref, "test/fixtures/peft_adapter_reference.safetensors", err, sizeof err) == 0,
                    err);
    const TensorInfo *tokens_info = tensor_find(&ref.tensors, "tokens"), *logits_info = tensor_find(&ref.tensors, "last_logits");
    REQUIRE(tokens_info);
    REQUIRE(logits_info);
    const int32_t *token_data = (const int32_t *)tokens_info->data;
    std::vector<int> tokens(token_data, token_data + tensor_numel(tokens_info));
    const Model &base = default_model();
    AdapterWeights aw;
    REQUIRE_MESSAGE(adapter_load_peft(&base, "test/fixtures/peft_adapter", &aw, err, sizeof err) == 0, err);
    CHECK(aw.n_modules == 60);
    InferState s;
    REQUIRE(infer_state_init(&s, &base.config, (int)tokens.size(), (int)tokens.size()) == 0);
    const float *logits = forward_cpu_adapter(&base, &aw, &s, tokens.data(), (int)tokens.size(), 0, 0, nullptr);
    std::vector<float> last(logits, logits + base.config.vocab_size);
    CHECK(max_abs_diff(last, (const float *)logits_info->data, last.size()) <= PEFT_TOLERANCE);
    infer_state_free(&s);
    adapter_weights_free(&aw);
    safetensors_close(&ref);
}

TEST_CASE("unmerged adapter: a bad adapter is refused with the merge's message, nothing kept") {
    char err[1024];
    Model base;
    REQUIRE(model_load(&base, fixture("model").c_str(), err, sizeof err) == 0);
    AdapterWeights aw;
    CHECK(adapter_load_peft(&base, "test/fixtures/no_such_adapter", &aw, err, sizeof err) == -1);
    CHECK(std::string(err).find("no_such_adapter/adapter_config.json") != std::string::npos);
    CHECK(aw.A == nullptr);
    // an adapter of another model: its shapes do not fit
    CHECK(adapter_load_peft(&base, "test/fixtures/merge/a0", &aw, err, sizeof err) == -1);
    CHECK(std::string(err).find("adapter_model.safetensors: tensor") != std::string::npos);
    CHECK(aw.A == nullptr);
    model_free(&base);
}
