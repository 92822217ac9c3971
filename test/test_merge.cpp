// test_merge.cpp: ./train --merge (infer/merge.h) on the default model with a small
// random adapter (rank 2, alpha 4, on q, v and down of all 30 blocks, B
// non-zero), written to a directory and loaded back with model_load:
//   - the merge itself: sampled matrices equal dequant(NF4(W)) + s B A with
//     the product computed here in double (max |diff| <= 1e-6; fp32 rounding
//     of values ~0.1 is ~1e-8), and the untouched k projection equals
//     dequant(NF4(W));
//   - the file: every weight we load back from model.safetensors is the
//     merged fp32 weight rounded to bf16, bit for bit (names, shapes, the
//     Q/K row order and the tied embedding all checked by that);
//   - the model: logits of a short prompt through forward_cpu on the bf16
//     file against the fp32 merged model (the NF4-dequantized base with the
//     adapter merged by infer/adapter.cpp): rounding all 135M weights to bf16
//     (relative error up to 2^-8) moves logits of size ~20 by up to 0.118
//     (measured); tolerance 0.3. For scale: the NF4 base and the adapter
//     together move them by up to 13 from the original model's;
//   - the tokenizer: the written tokenizer.json and tokenizer_config.json
//     reload to the same bos/eos and the same ids (English, Korean, code,
//     special tokens matched or not, a ChatML chat with its answer flags);
//   - tokenizer_save_hf on the tiny GPT-2 / SmolLM / Llama-3 / Qwen2
//     fixture tokenizers: read back, they still give HF tokenizers' ids;
//   - a missing adapter is refused with a message naming the file.
// Inference on the base ./train trains on (nf4_round_trip_model, used by
// --merge, ./generate --adapter and ./evaluate --adapter), on a small random
// Qwen2-shaped model:
//   - with and without double quant, every weight equals trainer/base_weights.cpp's
//     (the training step's) view bit for bit: dequant(NF4(W)) for the seven
//     linear matrices of each block, the original for the embedding, norms,
//     biases and LM head;
//   - the inference forward (infer/forward.h) with the adapter merged into the
//     round-tripped base gives the training path's per-position losses
//     (trainer/train_step.h: NF4 base, adapters beside it) to 1.6e-7 relative
//     (measured; tolerance 1e-5); merged into the weights as loaded they
//     differ by 0.1 (checked > 1e-3, so the test can fail);
//   - ./generate and ./evaluate refuse a bad --quant / --double-quant (exit 2);
//     they refuse an adapter with lora_alpha <= 0, naming its config; they
//     merge onto the base an adapter records (./train's adapters) unless told
//     otherwise, and warn, naming both, when --quant or the model differs.
// dev/crosscheck/check_merged.py checks the same directory against transformers and
// HF tokenizers (dev/README.md).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "trainer/base_weights.h"
#include "formats/float16.h"
#include "infer/forward.h"
#include "formats/json.h"
#include "lora.h"
#include "infer/merge.h"
#include "nf4.h"
#include "test_util.h"
#include "tokenizer.h"

namespace {

// A fresh directory under /tmp, removed with everything in it at scope exit.
struct ScratchDir {
    std::string path;
    ScratchDir() {
        char name[] = "/tmp/qlora_merge_XXXXXX";
        REQUIRE(mkdtemp(name) != nullptr);
        path = name;
    }
    ~ScratchDir() { std::filesystem::remove_all(path); }
};

const int RANK = 2;
const float ALPHA = 4.0f;   // s = alpha / r = 2
const float LOGIT_TOLERANCE = 0.3f;   // 0.118 measured
// The record of an adapter trained on the NF4 base with double quant (the hash is not checked here).
const LoraBase TRAINED_ON_NF4 = {1, 1, 0};

float *linear_weight(const Model &m, int layer, int target) {
    const LayerWeights *l = &m.layers[layer];
    float *weights[N_LINEARS] = {l->wq, l->wk, l->wv, l->wo, l->w_gate, l->w_up, l->w_down};
    return weights[target];
}

// dequant(NF4(W)) with double quant, as training sees the base.
std::vector<float> nf4_round_trip(const float *w, size_t n) {
    NF4Tensor q;
    REQUIRE(nf4_quantize(&q, w, (int64_t)n, 1) == 0);
    std::vector<float> out(n);
    nf4_dequantize(&q, out.data());
    nf4_free(&q);
    return out;
}

// max over elements of |merged - (base + s B A)| for W [out_dim, in_dim], the
// product in double; a == NULL: no adapter, merged should be the base.
double merge_error(const float *merged, const std::vector<float> &base, const LoraAdapter *a, int in_dim,
                   int out_dim, float scaling) {
    double worst = 0.0;
    for (int o = 0; o < out_dim; o++)
        for (int i = 0; i < in_dim; i++) {
            double product = 0.0;
            for (int k = 0; a && k < a->rank; k++) product += (double)a->B[o * a->rank + k] * a->A[(size_t)k * in_dim + i];
            double expected = base[(size_t)o * in_dim + i] + scaling * product;
            worst = std::fmax(worst, std::fabs(merged[(size_t)o * in_dim + i] - expected));
        }
    return worst;
}

std::vector<float> last_logits(const Model &m, const std::vector<int> &tokens) {
    InferState s;
    REQUIRE(infer_state_init(&s, &m.config, (int)tokens.size(), (int)tokens.size()) == 0);
    const float *logits = forward_cpu(&m, &s, tokens.data(), (int)tokens.size(), 0, 0, nullptr);
    std::vector<float> out(logits, logits + m.config.vocab_size);
    infer_state_free(&s);
    return out;
}

std::vector<int> encode(const Tokenizer *t, const std::string &text, int allow_special) {
    int *ids = nullptr;
    int n = tokenizer_encode(t, text.data(), text.size(), allow_special, &ids);
    REQUIRE(n >= 0);
    std::vector<int> out(ids, ids + n);
    free(ids);
    return out;
}

void check_same_tokenizer(const Tokenizer *original, const Tokenizer *reloaded) {
    CHECK(tokenizer_vocab_size(reloaded) == tokenizer_vocab_size(original));
    CHECK(tokenizer_pretokenizer(reloaded) == tokenizer_pretokenizer(original));
    CHECK(tokenizer_bos_id(reloaded) == tokenizer_bos_id(original));
    CHECK(tokenizer_eos_id(reloaded) == tokenizer_eos_id(original));
    const char *texts[] = {
        "The quick brown fox jumps over the lazy dog. It's 2026-11-26, 3.14159!",
        "안녕하세요, 세계! 한국어 토크나이저 테스트입니다. ㅋㅋㅋ",
        "def f(x):\n    return x * 12345  # tab\there\n\n",
        "<|im_start|>user\nHi<|im_end|>\n<|endoftext|><file_sep>x<|im_start",
    };
    for (const char *text : texts)
        for (int allow_special = 0; allow_special < 2; allow_special++) {
            CAPTURE(text);
            CAPTURE(allow_special);
            CHECK(encode(reloaded, text, allow_special) == encode(original, text, allow_special));
        }
    ChatMessage chat[2] = {{"user", "What is the capital of 대한민국?"}, {"assistant", "Seoul.\n"}};
    int *ids[2];
    unsigned char *flags[2];
    int n0 = chat_encode(original, chat, 2, 0, &ids[0], &flags[0]);
    int n1 = chat_encode(reloaded, chat, 2, 0, &ids[1], &flags[1]);
    REQUIRE(n0 > 0);
    REQUIRE(n1 == n0);
    CHECK(std::memcmp(ids[0], ids[1], sizeof(int) * n0) == 0);
    CHECK(std::memcmp(flags[0], flags[1], (size_t)n0) == 0);
    for (int i = 0; i < 2; i++) { free(ids[i]); free(flags[i]); }
}

}  // namespace

TEST_CASE("merge: --merge writes dequant(NF4(W)) + s B A in bf16, loadable by model_load, same tokenizer") {
    const Model &original = default_model();
    const Config &c = original.config;
    ScratchDir dir;
    std::string adapter_dir = dir.path + "/adapter", merged_dir = dir.path + "/merged";
    std::filesystem::create_directory(adapter_dir);
    char err[1024];

    // a rank-2 adapter on q, v and down: A from lora_init_weights, B set non-zero
    int enabled[N_LINEARS] = {0};
    enabled[LINEAR_Q] = enabled[LINEAR_V] = enabled[LINEAR_DOWN] = 1;
    LoraSet set;
    REQUIRE(lora_set_init(&set, &c, enabled, RANK, ALPHA, 0, 0.0f, 42, 0) == 0);
    for (int i = 0; i < c.n_layers * N_LINEARS; i++) {
        LoraAdapter &a = set.adapters[i];
        for (int k = 0; a.B && k < a.out_dim * a.rank; k++) a.B[k] = 0.05f * std::sin(0.37f * k + 0.9f * i);
    }
    REQUIRE_MESSAGE(lora_set_save_peft(&set, &c, adapter_dir.c_str(), "test", &TRAINED_ON_NF4, err, sizeof err) == 0, err);

    Model merged;   // becomes the fp32 merged model
    REQUIRE_MESSAGE(model_load(&merged, DEFAULT_MODEL, err, sizeof err) == 0, err);
    AdapterInfo info;
    REQUIRE_MESSAGE(merge_export(&merged, adapter_dir.c_str(), 1, 1, merged_dir.c_str(), &info, err, sizeof err) == 0,
                    err);
    CHECK(info.n_merged == 3 * c.n_layers);
    CHECK(info.rank == RANK);
    CHECK(info.scaling == ALPHA / RANK);

    // the merge: dequant(NF4(W)) + s B A
    {
        for (int layer : {0, 29})
            for (int t : {LINEAR_Q, LINEAR_K, LINEAR_V, LINEAR_DOWN}) {
                CAPTURE(layer);
                CAPTURE(LINEAR_NAMES[t]);
                int in_dim, out_dim;
                linear_dims(&c, t, &in_dim, &out_dim);
                std::vector<float> base = nf4_round_trip(linear_weight(original, layer, t), (size_t)in_dim * out_dim);
                const LoraAdapter *a = &set.adapters[layer * N_LINEARS + t];
                CHECK(merge_error(linear_weight(merged, layer, t), base, a->A ? a : nullptr, in_dim, out_dim,
                                  ALPHA / RANK) <= 1e-6);
            }
    }

    Model loaded;
    REQUIRE_MESSAGE(model_load(&loaded, merged_dir.c_str(), err, sizeof err) == 0, err);

    // the file: every weight is the merged one rounded to bf16
    {
        CHECK(std::memcmp(&loaded.config, &merged.config, sizeof(Config)) == 0);
        REQUIRE(loaded.storage_floats == merged.storage_floats);
        size_t differ = 0;
        for (size_t i = 0; i < merged.storage_floats; i++)
            differ += loaded.storage[i] != bf16_to_f32(f32_to_bf16(merged.storage[i]));
        CHECK(differ == 0);
        CHECK(loaded.lm_head == loaded.embed);
    }

    // the model: logits within bf16 rounding of the fp32 merged model
    {
        std::vector<int> prompt = encode(original.tokenizer, "The capital of France is", 0);
        std::vector<float> fp32 = last_logits(merged, prompt), bf16 = last_logits(loaded, prompt);
        float worst = 0.0f;
        for (size_t i = 0; i < fp32.size(); i++) worst = std::fmax(worst, std::fabs(fp32[i] - bf16[i]));
        MESSAGE("max |logit difference|, bf16 file vs fp32 merged model: ", worst);
        CHECK(worst <= LOGIT_TOLERANCE);
    }

    check_same_tokenizer(original.tokenizer, loaded.tokenizer);

    model_free(&loaded);
    model_free(&merged);
    lora_set_free(&set);
}

// The tiny trained tokenizers of test/test_tokenizer.cpp cover the other
// pre-tokenizers (GPT-2, Llama-3's Split regex with ignore_merges, Qwen2's
// with NFC): written with tokenizer_save_hf and read back, each must still
// give HF tokenizers' ids on the fixture's cases (dev/fixtures/make_tokenizer_fixtures.py).
TEST_CASE("merge: tokenizer_save_hf round-trips the GPT-2, SmolLM, Llama-3 and Qwen2 variants") {
    char err[1024] = "";
    JsonValue *cases = json_parse_file("test/fixtures/tokenizer_tiny_cases.json", err, sizeof err);
    REQUIRE_MESSAGE(cases, err);
    for (const char *variant : {"gpt2", "smollm", "llama3", "qwen2"}) {
        CAPTURE(variant);
        std::string path = std::string("test/fixtures/tokenizer_tiny_") + variant + ".json";
        Tokenizer *original = tokenizer_from_json(path.c_str(), err, sizeof err);
        REQUIRE_MESSAGE(original, err);
        ScratchDir dir;
        REQUIRE_MESSAGE(tokenizer_save_hf(original, dir.path.c_str(), err, sizeof err) == 0, err);
        Tokenizer *reloaded = tokenizer_from_json((dir.path + "/tokenizer.json").c_str(), err, sizeof err);
        REQUIRE_MESSAGE(reloaded, err);
        CHECK(tokenizer_pretokenizer(reloaded) == tokenizer_pretokenizer(original));
        CHECK(tokenizer_bos_id(reloaded) == tokenizer_bos_id(original));
        CHECK(tokenizer_eos_id(reloaded) == tokenizer_eos_id(original));
        const JsonValue *list = json_get(cases, variant);
        REQUIRE(list);
        int differ = 0;
        for (size_t i = 0; i < list->count; i++) {
            const JsonValue *item = &list->items[i], *ids = json_get(item, "ids");
            std::string hex = json_get_string(item, "hex", ""), text;
            for (size_t k = 0; k + 1 < hex.size(); k += 2) text += (char)std::stoi(hex.substr(k, 2), nullptr, 16);
            std::vector<int> expected;
            for (size_t k = 0; k < ids->count; k++) expected.push_back((int)ids->items[k].number);
            differ += encode(reloaded, text, json_get(item, "allow_special")->boolean) != expected;
        }
        CHECK(differ == 0);
        tokenizer_free(reloaded);
        tokenizer_free(original);
    }
    json_free(cases);
}

// A one-layer Llama of a few numbers, for what needs a model but not its values.
static const Config TINY_LLAMA = [] {
    Config c = {};
    c.arch = ARCH_LLAMA;
    c.dim = 8;
    c.hidden_dim = 16;
    c.n_layers = 1;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.head_dim = 4;
    c.vocab_size = 10;
    c.max_seq_len = 16;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    return c;
}();

TEST_CASE("merge: a missing adapter is refused with the file named") {
    Model m;
    char err[1024] = "";
    REQUIRE(model_init_random(&m, &TINY_LLAMA, 1, err, sizeof err) == 0);
    ScratchDir dir;
    std::string missing = dir.path + "/no_adapter";
    CHECK(merge_export(&m, missing.c_str(), 1, 1, (dir.path + "/merged").c_str(), nullptr, err, sizeof err) != 0);
    CHECK(std::string(err).find(missing + "/adapter_config.json") != std::string::npos);
    model_free(&m);
}

TEST_CASE("merge: an output directory holding another model's files is refused before anything is written") {
    Model m;
    char err[1024] = "";
    REQUIRE(model_init_random(&m, &TINY_LLAMA, 1, err, sizeof err) == 0);
    ScratchDir dir;
    for (const char *stale : {"chat_template.jinja", "model.safetensors.index.json", "generation_config.json"}) {
        CAPTURE(stale);
        std::string path = dir.path + "/" + stale;
        std::ofstream(path) << "{}";
        CHECK(model_save_hf(&m, dir.path.c_str(), err, sizeof err) != 0);
        CHECK(std::string(err).find(path + ": another model's file") == 0);
        CHECK(access((dir.path + "/model.safetensors").c_str(), F_OK) != 0);
        std::remove(path.c_str());
    }
    REQUIRE_MESSAGE(model_save_hf(&m, dir.path.c_str(), err, sizeof err) == 0, err);
    REQUIRE_MESSAGE(model_save_hf(&m, dir.path.c_str(), err, sizeof err) == 0, err);   // its own files again
    model_free(&m);
}

// ---- inference on the base ./train trains on (nf4_round_trip_model) -----------

namespace {

// A small random Qwen2-shaped model: q/k/v biases, an untied LM head, and
// matrices of many NF4 blocks (gate: 256 x 128 = 512 blocks of 64, two
// double-quant blocks of 256).
Model small_random_model() {
    Config c = {};
    c.arch = ARCH_QWEN2;
    c.dim = 128;
    c.hidden_dim = 256;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 32;
    c.vocab_size = 96;
    c.max_seq_len = 32;
    c.norm_eps = 1e-6f;
    c.rope_theta = 10000.0f;
    c.attention_bias = 1;
    Model m;
    char err[1024] = "";
    REQUIRE_MESSAGE(model_init_random(&m, &c, 2026, err, sizeof err) == 0, err);
    return m;
}

// The base as ./train's step reads it (trainer/base_weights.cpp) written over a copy of
// the model's weights: what nf4_round_trip_model must produce.
std::vector<float> training_base(const Model &m, int double_quant) {
    const Config &c = m.config;
    std::vector<float> expected(m.storage, m.storage + m.storage_floats);
    BaseWeights base;
    REQUIRE(base_weights_init(&base, &m, QUANT_NF4, double_quant) == 0);
    for (int l = 0; l < c.n_layers; l++) {
        BlockWeights<float> w;
        base.source.load_block(base.source.context, l, &w);
        const float *loaded[N_LINEARS] = {w.wq, w.wk, w.wv, w.wo, w.w_gate, w.w_up, w.w_down};
        for (int t = 0; t < N_LINEARS; t++) {
            int in_dim, out_dim;
            linear_dims(&c, t, &in_dim, &out_dim);
            size_t offset = (size_t)(linear_weight(&m.layers[l], t) - m.storage);
            std::memcpy(&expected[offset], loaded[t], sizeof(float) * in_dim * out_dim);
        }
    }
    base_weights_free(&base);
    return expected;
}

// -log softmax(logits[p])[next token] for every position but the last, through
// the inference forward (infer/forward.h) on a model with the adapter merged in.
std::vector<double> inference_losses(const Model &m, const std::vector<int> &tokens) {
    int n = (int)tokens.size(), vocab = m.config.vocab_size;
    InferState s;
    REQUIRE(infer_state_init(&s, &m.config, n, n) == 0);
    const float *logits = forward_cpu(&m, &s, tokens.data(), n, 0, 1, nullptr);
    std::vector<double> losses;
    for (int p = 0; p + 1 < n; p++) {
        const float *row = logits + (size_t)p * vocab;
        double largest = row[0], sum = 0.0;
        for (int v = 1; v < vocab; v++) largest = std::fmax(largest, (double)row[v]);
        for (int v = 0; v < vocab; v++) sum += std::exp(row[v] - largest);
        losses.push_back(largest + std::log(sum) - row[tokens[p + 1]]);
    }
    infer_state_free(&s);
    return losses;
}

// The same losses through the training path (trainer/train_step.h): the NF4 base of
// trainer/base_weights.cpp and the adapters beside it, one target position at a time.
std::vector<double> training_losses(const Model &m, const LoraSet &set, const std::vector<int> &tokens) {
    const Config &c = m.config;
    int n = (int)tokens.size();
    BaseWeights base;
    REQUIRE(base_weights_init(&base, &m, QUANT_NF4, 1) == 0);
    std::vector<AdapterParams<float>> params;
    for (int i = 0; i < c.n_layers * N_LINEARS; i++) {
        LoraAdapter &a = set.adapters[i];
        params.push_back({a.A, a.B, a.dA, a.dB, nullptr, nullptr});
    }
    StepOptions opt = {set.rank, set.adapters[0].scaling, 0.0f, 0, 0};
    std::vector<double> losses;
    for (int p = 0; p + 1 < n; p++) {
        std::vector<int> targets(n, IGNORE_TARGET);
        targets[p] = tokens[p + 1];
        Batch batch = {tokens.data(), targets.data(), 1, n, NULL, NULL};
        int counted = 0;
        losses.push_back(loss_cpu(&c, &base.source, params.data(), &opt, &batch, &counted));
        CHECK(counted == 1);
    }
    base_weights_free(&base);
    return losses;
}

double max_relative_difference(const std::vector<double> &a, const std::vector<double> &b) {
    double worst = 0.0;
    for (size_t i = 0; i < a.size(); i++) worst = std::fmax(worst, std::fabs(a[i] - b[i]) / std::fabs(b[i]));
    return worst;
}

}  // namespace

TEST_CASE("merge: nf4_round_trip_model writes the base ./train trains on and leaves the rest alone") {
    for (int double_quant = 0; double_quant < 2; double_quant++) {
        CAPTURE(double_quant);
        Model original = small_random_model(), tripped = small_random_model();
        char err[1024] = "";
        REQUIRE_MESSAGE(nf4_round_trip_model(&tripped, double_quant, err, sizeof err) == 0, err);
        // every weight: the training base for the 7 linear matrices of each
        // block, bit for bit the original for embeddings, norms, biases, LM head
        std::vector<float> expected = training_base(original, double_quant);
        REQUIRE(tripped.storage_floats == expected.size());
        CHECK(std::memcmp(tripped.storage, expected.data(), sizeof(float) * expected.size()) == 0);
        // and the round trip did change the linear weights
        size_t changed = 0;
        for (size_t i = 0; i < expected.size(); i++) changed += tripped.storage[i] != original.storage[i];
        size_t linear = 0;
        for (int t = 0; t < N_LINEARS; t++) {
            int in_dim, out_dim;
            linear_dims(&original.config, t, &in_dim, &out_dim);
            linear += (size_t)in_dim * out_dim * original.config.n_layers;
        }
        CHECK(changed > linear / 2);
        model_free(&tripped);
        model_free(&original);
    }
}

TEST_CASE("merge: inference on the NF4 round trip + merged adapter gives the training path's losses") {
    Model original = small_random_model(), tripped = small_random_model(), as_loaded = small_random_model();
    const Config &c = original.config;
    char err[1024] = "";
    // a rank-4 adapter on all seven targets, B non-zero, saved as ./train saves it
    int enabled[N_LINEARS] = {1, 1, 1, 1, 1, 1, 1};
    LoraSet set;
    REQUIRE(lora_set_init(&set, &c, enabled, 4, 8.0f, 0, 0.0f, 5, 0) == 0);
    for (int i = 0; i < c.n_layers * N_LINEARS; i++) {
        LoraAdapter &a = set.adapters[i];
        for (int k = 0; k < a.out_dim * a.rank; k++) a.B[k] = 0.1f * std::sin(0.61f * k + 1.3f * i);
    }
    ScratchDir dir;
    REQUIRE_MESSAGE(lora_set_save_peft(&set, &c, dir.path.c_str(), "test", &TRAINED_ON_NF4, err, sizeof err) == 0, err);
    REQUIRE_MESSAGE(nf4_round_trip_model(&tripped, 1, err, sizeof err) == 0, err);
    REQUIRE_MESSAGE(adapter_merge_peft(&tripped, dir.path.c_str(), nullptr, err, sizeof err) == 0, err);
    REQUIRE_MESSAGE(adapter_merge_peft(&as_loaded, dir.path.c_str(), nullptr, err, sizeof err) == 0, err);

    std::vector<int> tokens = {3, 17, 90, 44, 44, 8, 61, 0, 29, 75, 12, 53, 95, 6, 38, 21};
    std::vector<double> trained = training_losses(original, set, tokens);
    double fixed = max_relative_difference(inference_losses(tripped, tokens), trained);
    double before = max_relative_difference(inference_losses(as_loaded, tokens), trained);
    MESSAGE("max relative loss difference to the training path: NF4 round trip ", fixed, ", weights as loaded ",
            before);
    CHECK(fixed <= 1e-5);
    CHECK(before > 1e-3);   // the check can fail: without the round trip the base differs

    lora_set_free(&set);
    model_free(&as_loaded);
    model_free(&tripped);
    model_free(&original);
}

TEST_CASE("merge: ./generate and ./evaluate refuse a bad --quant or --double-quant") {
    ScratchDir dir;
    std::string log = dir.path + "/log.txt";
    struct Case {
        const char *command, *message;
    } cases[] = {
        {"./generate --prompt x --adapter none --quant bogus", "generate: --quant expects nf4 or none, got 'bogus'"},
        {"./generate --prompt x --double-quant 2", "generate: --double-quant expects 0 or 1, got '2'"},
        {"./evaluate --quant NF4", "evaluate: --quant expects nf4 or none, got 'NF4'"},
        {"./evaluate --double-quant yes", "evaluate: --double-quant expects 0 or 1, got 'yes'"},
    };
    for (const Case &k : cases) {
        CAPTURE(k.command);
        int status = system((std::string(k.command) + " > " + log + " 2>&1").c_str());
        CHECK(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 2);
        std::ifstream in(log);
        std::string output((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        CHECK_MESSAGE(output.find(k.message) != std::string::npos, output);
    }
}

namespace {

// Runs command; its exit status, and stdout and stderr together in output.
int run_program(const std::string &command, std::string &output) {
    ScratchDir dir;
    std::string log = dir.path + "/log.txt";
    int status = system((command + " > " + log + " 2>&1").c_str());
    std::ifstream in(log);
    output.assign((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// test/fixtures/peft_adapter (./train's: rank 2, alpha 32, q and v of
// SmolLM2, written before adapters recorded their base) copied to dir, its
// config's "lora_alpha": 32 replaced by alpha and `record` (JSON members,
// or "") added. Returns dir.
std::string fixture_adapter(const ScratchDir &dir, const std::string &alpha, const std::string &record) {
    std::filesystem::copy_file("test/fixtures/peft_adapter/adapter_model.safetensors",
                               dir.path + "/adapter_model.safetensors");
    std::ifstream in("test/fixtures/peft_adapter/adapter_config.json");
    std::string config((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t at = config.find("\"lora_alpha\": 32");
    REQUIRE(at != std::string::npos);
    config.replace(at, strlen("\"lora_alpha\": 32"), "\"lora_alpha\": " + alpha);
    if (!record.empty()) config.insert(config.rfind('}'), ", " + record);
    std::ofstream(dir.path + "/adapter_config.json") << config;
    return dir.path;
}

// The record of a base, as ./train writes it.
std::string base_record(const char *quant, bool double_quant, uint64_t model_hash) {
    char text[256];
    snprintf(text, sizeof text, "\"%s\": {\"quant\": \"%s\", \"double_quant\": %s, \"model_weights_hash\": \"%016llx\"}",
             LORA_BASE_KEY, quant, double_quant ? "true" : "false", (unsigned long long)model_hash);
    return text;
}

bool has(const std::string &output, const std::string &part) { return output.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("merge: ./generate and ./evaluate refuse an adapter with lora_alpha <= 0, naming its config") {
    for (const char *alpha : {"0", "-32"}) {
        ScratchDir dir;
        std::string adapter = fixture_adapter(dir, alpha, ""), output;
        std::string message = adapter + "/adapter_config.json: 'lora_alpha' must be a positive number";
        CHECK(run_program("./generate --prompt hi --max-new 1 --adapter " + adapter, output) == 1);
        CHECK_MESSAGE(has(output, "generate: " + message), output);
        // refused before the model loads: a model that is not there is never reached
        CHECK(run_program("./generate --model /nonexistent --prompt hi --adapter " + adapter, output) == 1);
        CHECK_MESSAGE(has(output, "generate: " + message), output);
        CHECK(run_program("./evaluate --model /nonexistent --data data/sample_raft.jsonl --adapter " + adapter, output) == 1);
        CHECK_MESSAGE(has(output, "evaluate: " + message), output);
        CHECK(run_program("./evaluate --data data/sample_raft.jsonl --limit 1 --max-new 1 --adapter " + adapter +
                              " --out " + adapter + "/eval.json",
                          output) == 1);
        CHECK_MESSAGE(has(output, "evaluate: " + message), output);
    }
}

TEST_CASE("merge: ./generate and ./evaluate use the base the adapter records; a different one is warned about") {
    uint64_t model_hash = model_weights_hash(&default_model());
    std::string output;
    {
        // recorded: --quant none on this model; nothing given: that base, no warning
        ScratchDir dir;
        std::string adapter = fixture_adapter(dir, "32", base_record("none", false, model_hash));
        CHECK(run_program("./generate --prompt hi --max-new 1 --adapter " + adapter, output) == 0);
        CHECK_MESSAGE(has(output, "base: weights as loaded (as ./train --quant none; from the adapter's record)"), output);
        CHECK_MESSAGE(!has(output, "warning"), output);
        // --quant nf4 given: used, with a warning naming both
        CHECK(run_program("./generate --quant nf4 --prompt hi --max-new 1 --adapter " + adapter, output) == 0);
        CHECK_MESSAGE(has(output, "base: linear weights round-tripped through NF4 with double quant (as ./train "
                                  "--quant nf4 --double-quant 1; from --quant)"), output);
        CHECK_MESSAGE(has(output, "generate: warning: " + adapter + "/adapter_config.json records that the adapter was "
                                  "trained on the base of --quant none, but it is merged onto --quant nf4 "
                                  "--double-quant 1"), output);
    }
    {
        // recorded: nf4 without double quant, on another model
        ScratchDir dir;
        std::string adapter = fixture_adapter(dir, "32", base_record("nf4", false, 0x0123456789abcdefULL));
        char hash[17];
        snprintf(hash, sizeof hash, "%016llx", (unsigned long long)model_hash);
        std::string warning = adapter + "/adapter_config.json records the base model's weights hash 0123456789abcdef "
                              "(models/SmolLM2-135M-Instruct.Q4_1.gguf), but " DEFAULT_MODEL "'s weights hash to " +
                              hash + ": the adapter was trained on another model";
        CHECK(run_program("./generate --prompt hi --max-new 1 --adapter " + adapter, output) == 0);
        CHECK_MESSAGE(has(output, "base: linear weights round-tripped through NF4 (as ./train --quant nf4 "
                                  "--double-quant 0; from the adapter's record)"), output);
        CHECK_MESSAGE(has(output, "generate: warning: " + warning), output);
        CHECK(run_program("./evaluate --data data/sample_raft.jsonl --limit 1 --max-new 1 --examples 0 --adapter " +
                              adapter + " --out " + adapter + "/eval.json",
                          output) == 0);
        CHECK_MESSAGE(has(output, "base (both arms): linear weights round-tripped through NF4 (as ./train --quant nf4 "
                                  "--double-quant 0; from the adapter's record)"), output);
        CHECK_MESSAGE(has(output, "evaluate: warning: " + warning), output);
    }
    {
        // no record (peft's adapters): as before, --quant nf4 --double-quant 1 by default
        ScratchDir dir;
        std::string adapter = fixture_adapter(dir, "32", "");
        CHECK(run_program("./generate --prompt hi --max-new 1 --adapter " + adapter, output) == 0);
        CHECK_MESSAGE(has(output, "base: linear weights round-tripped through NF4 with double quant (as ./train "
                                  "--quant nf4 --double-quant 1; from the default)"), output);
        CHECK_MESSAGE(!has(output, "warning"), output);
    }
}
