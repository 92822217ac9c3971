// test_peft_adapter.cpp: the adapter ./train writes, as Hugging Face peft
// reads it. test/fixtures/peft_adapter/ is a real ./train output (rank 2,
// alpha 32, q and v of all 30 blocks, two steps at lr 1e-2 so B is far from
// 0); dev/fixtures/make_peft_adapter_fixture.py loaded it with
// PeftModel.from_pretrained onto transformers' fp32 SmolLM2 (the same GGUF,
// dequantized) and stored the last-position logits of a ChatML prompt in
// test/fixtures/peft_adapter_reference.safetensors. Here infer/adapter.cpp merges
// the same files into our fp32 model and forward_cpu must give those logits.
//
// Tolerance: 2e-3 absolute, as test/test_forward.cpp (fp32 on both sides,
// different summation orders; peft adds s B (A x) beside W x where we merge
// W + s B A first, a difference of fp32 rounding only). The adapter moves
// these logits by up to 2.57 (the script prints it), so a missed or
// misplaced module, a wrong scaling or a transposed matrix fails.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "infer/adapter.h"
#include "infer/forward.h"
#include "formats/safetensors.h"
#include "test_util.h"

static const char *ADAPTER_DIR = "test/fixtures/peft_adapter";
static const char *REFERENCE = "test/fixtures/peft_adapter_reference.safetensors";
static const float LOGIT_TOLERANCE = 2e-3f;

static std::vector<float> last_logits(const Model &m, const std::vector<int> &tokens) {
    InferState s;
    REQUIRE(infer_state_init(&s, &m.config, (int)tokens.size(), (int)tokens.size()) == 0);
    const float *logits = forward_cpu(&m, &s, tokens.data(), (int)tokens.size(), 0, 0, nullptr);
    std::vector<float> out(logits, logits + m.config.vocab_size);
    infer_state_free(&s);
    return out;
}

static float max_abs_diff(const std::vector<float> &a, const float *b) {
    float worst = 0.0f;
    for (size_t i = 0; i < a.size(); i++) worst = std::fmax(worst, std::fabs(a[i] - b[i]));
    return worst;
}

TEST_CASE("peft adapter: our adapter merged by infer/adapter.cpp gives peft's logits") {
    char err[1024];
    SafetensorsFile ref;
    REQUIRE_MESSAGE(safetensors_open(&ref, REFERENCE, err, sizeof err) == 0, err);
    const TensorInfo *tokens_info = tensor_find(&ref.tensors, "tokens");
    const TensorInfo *logits_info = tensor_find(&ref.tensors, "last_logits");
    REQUIRE(tokens_info);
    REQUIRE(logits_info);
    REQUIRE(tokens_info->dtype == DT_I32);
    REQUIRE(logits_info->dtype == DT_F32);
    const int32_t *token_data = (const int32_t *)tokens_info->data;
    std::vector<int> tokens(token_data, token_data + tensor_numel(tokens_info));
    const float *expected = (const float *)logits_info->data;

    const Model &base = default_model();
    REQUIRE(tensor_numel(logits_info) == base.config.vocab_size);
    float without_adapter = max_abs_diff(last_logits(base, tokens), expected);

    Model m;
    REQUIRE_MESSAGE(model_load(&m, DEFAULT_MODEL, err, sizeof err) == 0, err);
    AdapterInfo info;
    REQUIRE_MESSAGE(adapter_merge_peft(&m, ADAPTER_DIR, &info, err, sizeof err) == 0, err);
    CHECK(info.n_merged == 60);
    CHECK(info.rank == 2);
    CHECK(info.scaling == 16.0f);
    float with_adapter = max_abs_diff(last_logits(m, tokens), expected);
    MESSAGE("max |logit difference| to peft: ", with_adapter, " (base model without the adapter: ", without_adapter,
            ")");
    CHECK(with_adapter <= LOGIT_TOLERANCE);
    CHECK(without_adapter > 100 * LOGIT_TOLERANCE);
    model_free(&m);
    safetensors_close(&ref);
}
