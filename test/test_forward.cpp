// The CPU forward pass on the default model against transformers' fp32
// forward of the same GGUF (test/fixtures/smollm2_reference.safetensors,
// written by dev/fixtures/make_reference.py): last-position logits, per-layer hidden
// state norms, greedy tokens through the KV cache, and the answer-only loss.
//
// Tolerance: both sides are fp32 with different summation orders; over 30
// layers the residual stream reaches norms ~100, so rounding of ~1e-7
// relative per operation grows to ~1e-4 absolute on logits of size ~20.
// We allow 2e-3 absolute on logits (and 1e-4 relative on norms and loss):
// a wrong permutation, RoPE pairing, or norm is off by whole units.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "infer/forward.h"
#include "ops/layers.h"
#include "ops/cross_entropy.h"
#include "model.h"
#include "formats/safetensors.h"
#include "test_util.h"

static const float LOGIT_TOLERANCE = 2e-3f;

struct Reference {
    SafetensorsFile file;
    Reference() {
        char err[512];
        REQUIRE_MESSAGE(safetensors_open(&file, "test/fixtures/smollm2_reference.safetensors", err, sizeof err) == 0,
                        err);
    }
    ~Reference() { safetensors_close(&file); }
    const TensorInfo *get(const std::string &name) {
        const TensorInfo *t = tensor_find(&file.tensors, name.c_str());
        REQUIRE_MESSAGE(t, "fixture tensor missing: ", name);
        return t;
    }
    std::vector<int> ints(const std::string &name) {
        const TensorInfo *t = get(name);
        const int32_t *p = (const int32_t *)t->data;
        return std::vector<int>(p, p + tensor_numel(t));
    }
    std::vector<float> floats(const std::string &name) {
        const TensorInfo *t = get(name);
        const float *p = (const float *)t->data;
        return std::vector<float>(p, p + tensor_numel(t));
    }
};

static float max_abs_diff(const float *a, const float *b, size_t n) {
    float worst = 0.0f;
    for (size_t i = 0; i < n; i++) worst = std::fmax(worst, std::fabs(a[i] - b[i]));
    return worst;
}

TEST_CASE("forward: last-position logits and hidden norms equal transformers'") {
    const Model &m = default_model();
    Reference ref;
    for (int k = 0; k < 4; k++) {
        std::string p = "prompt" + std::to_string(k);
        std::vector<int> tokens = ref.ints(p + ".tokens");
        InferState s;
        REQUIRE(infer_state_init(&s, &m.config, (int)tokens.size(), (int)tokens.size()) == 0);
        std::vector<float> norms(m.config.n_layers + 1);
        const float *logits = forward_cpu(&m, &s, tokens.data(), (int)tokens.size(), 0, 0, norms.data());
        int vocab = m.config.vocab_size;
        if (k == 0 || k == 3) {
            std::vector<float> want = ref.floats(p + ".last_logits");
            REQUIRE(want.size() == (size_t)vocab);
            float diff = max_abs_diff(logits, want.data(), vocab);
            MESSAGE(p, ": max |logit - reference| = ", diff);
            CHECK(diff < LOGIT_TOLERANCE);
        } else {
            std::vector<int> top_ids = ref.ints(p + ".top_ids");
            std::vector<float> top_logits = ref.floats(p + ".top_logits");
            for (size_t i = 0; i < top_ids.size(); i++)
                CHECK(std::fabs(logits[top_ids[i]] - top_logits[i]) < LOGIT_TOLERANCE);
            double max_logit = logits[0], sum = 0.0;
            for (int v = 1; v < vocab; v++) max_logit = std::fmax(max_logit, logits[v]);
            for (int v = 0; v < vocab; v++) sum += std::exp(logits[v] - max_logit);
            CHECK(std::fabs(std::log(sum) + max_logit - ref.floats(p + ".logsumexp")[0]) < LOGIT_TOLERANCE);
        }
        std::vector<float> want_norms = ref.floats(p + ".hidden_norms");
        REQUIRE(want_norms.size() == norms.size());
        for (size_t l = 0; l < norms.size(); l++)
            CHECK_MESSAGE(std::fabs(norms[l] - want_norms[l]) <= 1e-4f * want_norms[l], p, " layer ", l);
        infer_state_free(&s);
    }
}

TEST_CASE("forward: greedy tokens through the KV cache equal transformers'") {
    const Model &m = default_model();
    Reference ref;
    for (int k = 0; k < 4; k++) {
        std::string p = "prompt" + std::to_string(k);
        std::vector<int> tokens = ref.ints(p + ".tokens");
        std::vector<int> want = ref.ints(p + ".greedy");
        InferState s;
        int max_seq = (int)(tokens.size() + want.size());
        REQUIRE(infer_state_init(&s, &m.config, max_seq, (int)tokens.size()) == 0);
        const float *logits = forward_cpu(&m, &s, tokens.data(), (int)tokens.size(), 0, 0, nullptr);
        std::vector<int> got;
        for (size_t i = 0; i < want.size(); i++) {
            int next = 0;
            for (int v = 1; v < m.config.vocab_size; v++) if (logits[v] > logits[next]) next = v;
            got.push_back(next);
            logits = forward_cpu(&m, &s, &next, 1, (int)(tokens.size() + i), 0, nullptr);
        }
        CHECK_MESSAGE(got == want, p);
        infer_state_free(&s);
    }
}

TEST_CASE("forward: all-position logits give transformers' answer-only loss") {
    const Model &m = default_model();
    Reference ref;
    std::vector<int> tokens = ref.ints("loss.tokens");
    std::vector<int> labels = ref.ints("loss.labels");
    int n = (int)tokens.size();
    InferState s;
    REQUIRE(infer_state_init(&s, &m.config, n, n) == 0);
    const float *logits = forward_cpu(&m, &s, tokens.data(), n, 0, 1, nullptr);
    // HF labels are unshifted: position t predicts labels[t + 1]
    std::vector<int> targets(n, IGNORE_TARGET);
    for (int t = 0; t + 1 < n; t++) targets[t] = labels[t + 1];
    int counted = 0;
    float loss = cross_entropy_cpu(logits, targets.data(), n, m.config.vocab_size, &counted);
    float want = ref.floats("loss.value")[0];
    MESSAGE("loss ", loss, " reference ", want, " over ", counted, " answer tokens");
    CHECK(counted > 0);
    CHECK(std::fabs(loss - want) < 1e-4f * std::fabs(want) + 1e-5f);
    infer_state_free(&s);
}
