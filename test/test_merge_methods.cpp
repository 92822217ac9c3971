// ./merge's methods against their references (test/fixtures/merge/, written by
// dev/fixtures/make_merge_fixtures.py): every adapter method against peft's
// add_weighted_adapter on the same adapters (the dare methods with the masks
// torch drew), model linear / slerp / passthrough against mergekit, the
// truncated SVD on its own, and ./merge's command line and bad-input errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <sys/wait.h>

#include "formats/json.h"
#include "formats/safetensors.h"
#include "infer/merge.h"
#include "merging/adapter_merge.h"
#include "merging/model_merge.h"
#include "merging/svd.h"
#include "ops/random.h"
#include "test/test_util.h"

static const std::string FIXTURES = "test/fixtures/merge/";

// A tensor of an open fixture as fp32 (fails the test when missing).
static std::vector<float> fixture_tensor(const SafetensorsFile &f, const std::string &name) {
    const TensorInfo *t = tensor_find(&f.tensors, name.c_str());
    INFO("tensor " << name);
    REQUIRE(t);
    std::vector<float> values((size_t)tensor_numel(t));
    tensor_to_f32(t->dtype, t->data, values.data(), (int64_t)values.size());
    return values;
}

static float max_abs_difference(const float *x, const float *y, size_t n) {
    float worst = 0.0f;
    for (size_t i = 0; i < n; i++) worst = std::fmax(worst, std::fabs(x[i] - y[i]));
    return worst;
}

// B A ([out, in]) of B [out, r] and A [r, in].
static std::vector<float> product(const float *B, const float *A, int out, int rank, int in) {
    std::vector<float> result((size_t)out * in, 0.0f);
    for (int o = 0; o < out; o++)
        for (int k = 0; k < rank; k++)
            for (int c = 0; c < in; c++) result[(size_t)o * in + c] += B[(size_t)o * rank + k] * A[(size_t)k * in + c];
    return result;
}

// ---- the SVD on its own -------------------------------------------------------------

TEST_CASE("svd: symmetric_eigen finds the eigenvalues of a known matrix, largest first") {
    double A[9] = {2, 1, 0, 1, 2, 0, 0, 0, 5}, lambda[3], W[9];
    REQUIRE(symmetric_eigen(A, 3, lambda, W) == 0);
    CHECK(lambda[0] == doctest::Approx(5).epsilon(1e-12));
    CHECK(lambda[1] == doctest::Approx(3).epsilon(1e-12));
    CHECK(lambda[2] == doctest::Approx(1).epsilon(1e-12));
    // the eigenvector of 3 is (1, 1, 0) / sqrt(2), up to sign
    CHECK(std::fabs(W[0 * 3 + 1]) == doctest::Approx(std::sqrt(0.5)).epsilon(1e-12));
    CHECK(std::fabs(W[2 * 3 + 1]) < 1e-12);
}

TEST_CASE("svd: svd_truncated gives orthogonal factors, the best low-rank approximation and the energy kept") {
    // M = U0 diag(4, 2, 1, 0.5) V0^T with random orthonormal U0 [7, 4], V0 [5, 4] (Gram-Schmidt)
    const int m = 7, n = 5, k = 4;
    const double sigma[k] = {4, 2, 1, 0.5};
    uint64_t state = 42;
    auto orthonormal = [&](int rows) {
        std::vector<double> Q((size_t)rows * k);
        for (double &x : Q) x = random_uniform(splitmix64_next(&state)) - 0.5;
        for (int j = 0; j < k; j++) {
            for (int i = 0; i < j; i++) {
                double d = 0;
                for (int r = 0; r < rows; r++) d += Q[(size_t)r * k + i] * Q[(size_t)r * k + j];
                for (int r = 0; r < rows; r++) Q[(size_t)r * k + j] -= d * Q[(size_t)r * k + i];
            }
            double norm = 0;
            for (int r = 0; r < rows; r++) norm += Q[(size_t)r * k + j] * Q[(size_t)r * k + j];
            for (int r = 0; r < rows; r++) Q[(size_t)r * k + j] /= std::sqrt(norm);
        }
        return Q;
    };
    std::vector<double> U0 = orthonormal(m), V0 = orthonormal(n), M((size_t)m * n, 0.0), identity((size_t)n * n, 0.0);
    for (int a = 0; a < m; a++)
        for (int c = 0; c < n; c++)
            for (int j = 0; j < k; j++) M[(size_t)a * n + c] += U0[(size_t)a * k + j] * sigma[j] * V0[(size_t)c * k + j];
    for (int c = 0; c < n; c++) identity[(size_t)c * n + c] = 1.0;
    for (int rank = 1; rank <= 4; rank++) {
        std::vector<double> US((size_t)m * rank), Vt((size_t)rank * n);
        double energy;
        REQUIRE(svd_truncated(M.data(), identity.data(), m, n, n, rank, US.data(), Vt.data(), &energy) == 0);
        // the singular values are the norms of U S's columns; V's rows are orthonormal
        for (int r = 0; r < rank; r++) {
            double norm = 0;
            for (int a = 0; a < m; a++) norm += US[(size_t)a * rank + r] * US[(size_t)a * rank + r];
            CHECK(std::sqrt(norm) == doctest::Approx(sigma[r]).epsilon(1e-10));
            for (int q = 0; q < rank; q++) {
                double d = 0;
                for (int c = 0; c < n; c++) d += Vt[(size_t)r * n + c] * Vt[(size_t)q * n + c];
                CHECK(d == doctest::Approx(r == q ? 1.0 : 0.0).epsilon(1e-10));
            }
        }
        // Eckart-Young: ||M - U S V^T||_F^2 = the squared singular values left out
        double left_out = 0, total = 0, error = 0;
        for (int j = 0; j < k; j++) (j < rank ? total : left_out) += sigma[j] * sigma[j];
        total += left_out;
        for (int a = 0; a < m; a++)
            for (int c = 0; c < n; c++) {
                double approx = 0;
                for (int r = 0; r < rank; r++) approx += US[(size_t)a * rank + r] * Vt[(size_t)r * n + c];
                error += (M[(size_t)a * n + c] - approx) * (M[(size_t)a * n + c] - approx);
            }
        CHECK(error == doctest::Approx(left_out).epsilon(1e-9));
        CHECK(energy == doctest::Approx(1.0 - left_out / total).epsilon(1e-12));
    }
}

// ---- adapters against peft ------------------------------------------------------------

// Feeds the masks torch drew (adapters_expected.safetensors: mask.CASE.INPUT.NAME).
struct FixtureMasks {
    const SafetensorsFile *file;
    std::string test_case;
    int served;
};

static void fixture_keep_mask(void *context, int input, const char *tensor, float *keep, int64_t n) {
    FixtureMasks *masks = (FixtureMasks *)context;
    std::vector<float> mask =
        fixture_tensor(*masks->file, "mask." + masks->test_case + "." + std::to_string(input) + "." + tensor);
    REQUIRE((int64_t)mask.size() == n);
    memcpy(keep, mask.data(), sizeof(float) * (size_t)n);
    masks->served++;
}

static PeftAdapter read_fixture_adapter(const std::string &name) {
    PeftAdapter a;
    char err[1024];
    INFO(err);
    REQUIRE(peft_adapter_read(&a, (FIXTURES + name).c_str(), err, sizeof err) == 0);
    return a;
}

TEST_CASE("merging: every adapter method gives peft's add_weighted_adapter result") {
    char err[1024];
    JsonValue *cases = json_parse_file((FIXTURES + "cases.json").c_str(), err, sizeof err);
    REQUIRE(cases);
    SafetensorsFile expected;
    REQUIRE(safetensors_open(&expected, (FIXTURES + "adapters_expected.safetensors").c_str(), err, sizeof err) == 0);
    int methods_seen[N_ADAPTER_METHODS] = {0};
    for (size_t c = 0; c < cases->count; c++) {
        const JsonValue *spec = &cases->items[c];
        std::string name = cases->keys[c];
        INFO("case " << name);
        int method = adapter_method_from_name(json_get_string(spec, "method", ""));
        REQUIRE(method >= 0);
        methods_seen[method] = 1;
        const JsonValue *input_names = json_get(spec, "inputs"), *weight_list = json_get(spec, "weights");
        std::vector<PeftAdapter> inputs;
        std::vector<double> weights;
        for (size_t i = 0; i < input_names->count; i++) {
            inputs.push_back(read_fixture_adapter(input_names->items[i].string));
            weights.push_back(weight_list->items[i].number);
        }
        FixtureMasks masks = {&expected, name, 0};
        AdapterMergeOptions options = {(AdapterMethod)method, weights.data(), json_get_number(spec, "density", 1),
                                       (int)json_get_number(spec, "rank", 0), fixture_keep_mask, &masks};
        PeftAdapter merged;
        AdapterMergeReport report;
        REQUIRE(adapters_merge(inputs.data(), (int)inputs.size(), &options, &merged, &report, err, sizeof err) == 0);
        CHECK((masks.served > 0) == (combine_is_random(adapter_method_combine((AdapterMethod)method)) != 0));
        CHECK(merged.alpha == (float)merged.rank);
        int peft_tensors = 0;
        for (int t = 0; t < expected.tensors.count; t++)
            peft_tensors += strncmp(expected.tensors.tensors[t].name, (name + ".").c_str(), name.size() + 1) == 0;
        CHECK(peft_tensors == 2 * merged.n_modules);
        for (int j = 0; j < merged.n_modules; j++) {
            const LoraModule *m = &merged.modules[j];
            INFO("module " << m->name);
            std::vector<float> A = fixture_tensor(expected, name + "." + m->name + ".lora_A.weight");
            std::vector<float> B = fixture_tensor(expected, name + "." + m->name + ".lora_B.weight");
            REQUIRE(A.size() == (size_t)merged.rank * m->in_dim);
            REQUIRE(B.size() == (size_t)m->out_dim * merged.rank);
            if (adapter_method_is_svd((AdapterMethod)method)) {
                // singular vectors are unique up to sign: compare the products B A
                std::vector<float> ours = product(m->B, m->A, m->out_dim, merged.rank, m->in_dim);
                std::vector<float> theirs = product(B.data(), A.data(), m->out_dim, merged.rank, m->in_dim);
                CHECK(max_abs_difference(ours.data(), theirs.data(), ours.size()) < 2e-5f);
            } else {
                CHECK(max_abs_difference(m->A, A.data(), A.size()) < 1e-5f);
                CHECK(max_abs_difference(m->B, B.data(), B.size()) < 1e-5f);
            }
        }
        if (adapter_method_is_svd((AdapterMethod)method)) {
            CHECK(report.energy_kept_min > 0.0);
            CHECK(report.energy_kept_mean <= 1.0 + 1e-12);
        }
        peft_adapter_free(&merged);
        for (PeftAdapter &a : inputs) peft_adapter_free(&a);
    }
    for (int m = 0; m < N_ADAPTER_METHODS; m++) {
        INFO("method " << ADAPTER_METHOD_NAMES[m]);
        CHECK(methods_seen[m]);
    }
    safetensors_close(&expected);
    json_free(cases);
}

TEST_CASE("merging: cat's B A is exactly the weighted sum of the deltas, linear's is not") {
    PeftAdapter inputs[2] = {read_fixture_adapter("a0"), read_fixture_adapter("a1")};
    const double weights[2] = {0.7, -0.4};
    char err[1024];
    for (AdapterMethod method : {ADAPTER_CAT, ADAPTER_LINEAR}) {
        AdapterMergeOptions options = {method, weights, 1.0, 0, NULL, NULL};
        PeftAdapter merged;
        REQUIRE(adapters_merge(inputs, 2, &options, &merged, NULL, err, sizeof err) == 0);
        const LoraModule *m0 = &inputs[0].modules[0], *m = NULL, *m1 = NULL;
        for (int j = 0; j < merged.n_modules; j++)
            if (strcmp(merged.modules[j].name, m0->name) == 0) m = &merged.modules[j];
        for (int j = 0; j < inputs[1].n_modules; j++)
            if (strcmp(inputs[1].modules[j].name, m0->name) == 0) m1 = &inputs[1].modules[j];
        REQUIRE((m && m1));
        std::vector<float> got = product(m->B, m->A, m->out_dim, merged.rank, m->in_dim);
        std::vector<float> d0 = product(m0->B, m0->A, m0->out_dim, inputs[0].rank, m0->in_dim);
        std::vector<float> d1 = product(m1->B, m1->A, m1->out_dim, inputs[1].rank, m1->in_dim);
        std::vector<float> sum(got.size());
        for (size_t i = 0; i < sum.size(); i++)
            sum[i] = (float)(weights[0] * inputs[0].scaling * d0[i] + weights[1] * inputs[1].scaling * d1[i]);
        float difference = max_abs_difference(got.data(), sum.data(), sum.size());
        if (method == ADAPTER_CAT) CHECK(difference < 1e-5f);
        else CHECK(difference > 0.1f);
        peft_adapter_free(&merged);
    }
    for (PeftAdapter &a : inputs) peft_adapter_free(&a);
}

TEST_CASE("merging: dare's seeded mask keeps about density of the entries, the same for the same seed") {
    std::vector<float> keep(20000), again(20000);
    dare_keep_mask(keep.data(), (int64_t)keep.size(), 0.3, 7);
    dare_keep_mask(again.data(), (int64_t)again.size(), 0.3, 7);
    double kept = 0;
    for (float k : keep) kept += k;
    CHECK(kept / keep.size() == doctest::Approx(0.3).epsilon(0.05));
    CHECK(keep == again);
    CHECK(dare_mask_seed(7, 0, "x.lora_A.weight") != dare_mask_seed(7, 1, "x.lora_A.weight"));
    CHECK(dare_mask_seed(7, 0, "x.lora_A.weight") != dare_mask_seed(7, 0, "x.lora_B.weight"));
}

// ---- models against mergekit ------------------------------------------------------------

static void load_fixture_model(Model *m, const char *name) {
    char err[1024];
    INFO(err);
    REQUIRE(model_load(m, (FIXTURES + name).c_str(), err, sizeof err) == 0);
}

// Every weight of m against "PREFIX.NAME" of models_expected.safetensors.
static void check_against(const Model *m, const SafetensorsFile &expected, const std::string &prefix, float tolerance) {
    std::vector<NamedWeight> weights(MODEL_MAX_WEIGHTS(m->config.n_layers));
    int n = model_list_weights(m, weights.data());
    for (int j = 0; j < n; j++) {
        INFO(prefix << "." << weights[j].name);
        std::vector<float> theirs = fixture_tensor(expected, prefix + "." + weights[j].name);
        size_t count = (size_t)(weights[j].cols ? weights[j].rows * weights[j].cols : weights[j].rows);
        REQUIRE(theirs.size() == count);
        float scale = 0;
        for (float x : theirs) scale = std::fmax(scale, std::fabs(x));
        CHECK(max_abs_difference(weights[j].values, theirs.data(), count) <= tolerance * std::fmax(scale, 1e-3f));
    }
}

TEST_CASE("merging: model linear, slerp and passthrough give mergekit's tensors") {
    char err[1024];
    SafetensorsFile expected;
    REQUIRE(safetensors_open(&expected, (FIXTURES + "models_expected.safetensors").c_str(), err, sizeof err) == 0);
    Model models[2];
    load_fixture_model(&models[0], "model_a");
    load_fixture_model(&models[1], "model_b");
    LayerRange ranges[4];
    REQUIRE(parse_layer_ranges("0:0-1,1:1-1", ranges, 4, err, sizeof err) == 2);
    Model stacked;
    REQUIRE(models_merge_passthrough(models, 2, ranges, 2, &stacked, err, sizeof err) == 0);
    CHECK(stacked.config.n_layers == 3);
    check_against(&stacked, expected, "passthrough", 0.0f);
    stacked.tokenizer = NULL;
    model_free(&stacked);

    const double weights[2] = {0.3, 0.7};
    models_merge_linear(models, 2, weights);
    check_against(&models[0], expected, "linear", 1e-6f);
    model_free(&models[0]);
    load_fixture_model(&models[0], "model_a");
    // the 5 RMSNorm weights are all ones in both (random init): parallel, so interpolated linearly
    CHECK(models_merge_slerp(models, 0.3) == 5);
    check_against(&models[0], expected, "slerp", 1e-5f);
    model_free(&models[0]);
    model_free(&models[1]);
    safetensors_close(&expected);
}

TEST_CASE("merging: slerp_tensor gives mergekit's slerp, with its linear fallback for nearly parallel tensors") {
    char err[1024];
    SafetensorsFile expected;
    REQUIRE(safetensors_open(&expected, (FIXTURES + "models_expected.safetensors").c_str(), err, sizeof err) == 0);
    for (int k = 0; k < 5; k++) {
        INFO("pair " << k);
        std::string p = "pairs." + std::to_string(k) + ".";
        std::vector<float> v0 = fixture_tensor(expected, p + "v0"), v1 = fixture_tensor(expected, p + "v1");
        std::vector<float> want = fixture_tensor(expected, p + "out"), got(v0.size());
        double t = fixture_tensor(expected, p + "t")[0];
        int linear = slerp_tensor(got.data(), v0.data(), v1.data(), (int64_t)v0.size(), t);
        CHECK(linear == (k == 1));
        CHECK(max_abs_difference(got.data(), want.data(), got.size()) < 1e-5f);
    }
    safetensors_close(&expected);
}

TEST_CASE("merging: --layers parsing refuses what is not INPUT:FIRST-LAST") {
    LayerRange ranges[4];
    char err[256];
    CHECK(parse_layer_ranges("0:0-15,1:8-29", ranges, 4, err, sizeof err) == 2);
    CHECK((ranges[1].input == 1 && ranges[1].first == 8 && ranges[1].last == 29));
    for (const char *bad : {"", "0:0-", "0-3", "0:3-1", "0:0-1,", "a:0-1", "0:0-1;1:0-1"}) {
        INFO(bad);
        CHECK(parse_layer_ranges(bad, ranges, 4, err, sizeof err) == -1);
    }
}

// ---- the program ------------------------------------------------------------------

// Runs command; its exit status, and stdout and stderr together in output.
static int run(const std::string &command, std::string &output) {
    std::string log = "/tmp/qlora_merge_test.log";
    int status = system((command + " > " + log + " 2>&1").c_str());
    std::ifstream in(log);
    std::stringstream text;
    text << in.rdbuf();
    output = text.str();
    std::remove(log.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static std::string temp_dir() {
    char dir[] = "/tmp/qlora_merge_XXXXXX";
    REQUIRE(mkdtemp(dir));
    return dir;
}

static bool has(const std::string &output, const std::string &text) {
    INFO(output);
    return output.find(text) != std::string::npos;
}

TEST_CASE("merging: ./merge --help lists every method") {
    std::string output;
    CHECK(run("./merge --help", output) == 0);
    // each name alone, not inside another ("dare_ties" in "dare_ties_svd")
    auto listed = [&](const std::string &method) {
        return has(output, " " + method + " ") || has(output, " " + method + ",") || has(output, " " + method + "\n");
    };
    for (const char *method : ADAPTER_METHOD_NAMES) CHECK(listed(method));
    for (const char *method : {"slerp", "passthrough"}) CHECK(listed(method));
}

TEST_CASE("merging: ./merge writes adapters and models that load back to the references") {
    std::string dir = temp_dir(), output;
    char err[1024];
    CHECK(run("./merge --method cat --weights 0.7,-0.4 --out " + dir + "/cat " + FIXTURES + "a0 " + FIXTURES + "a1",
              output) == 0);
    PeftAdapter merged;
    REQUIRE(peft_adapter_read(&merged, (dir + "/cat").c_str(), err, sizeof err) == 0);
    CHECK(merged.rank == 8);
    CHECK(merged.scaling == 1.0f);
    CHECK(merged.n_modules == 6);
    peft_adapter_free(&merged);
    CHECK(run("./merge --method svd --rank 2 --weights 1,1 --out " + dir + "/svd " + FIXTURES + "a0 " + FIXTURES +
                  "a1", output) == 0);
    CHECK(has(output, "of the merged deltas' energy"));

    SafetensorsFile expected;
    REQUIRE(safetensors_open(&expected, (FIXTURES + "models_expected.safetensors").c_str(), err, sizeof err) == 0);
    CHECK(run("./merge --method slerp --t 0.3 --out " + dir + "/slerp " + FIXTURES + "model_a " + FIXTURES + "model_b",
              output) == 0);
    Model m;
    REQUIRE(model_load(&m, (dir + "/slerp").c_str(), err, sizeof err) == 0);
    check_against(&m, expected, "slerp", 1.0f / 128);   // written in bf16
    model_free(&m);
    CHECK(run("./merge --method passthrough --layers 0:0-1,1:1-1 --out " + dir + "/deep " + FIXTURES + "model_a " +
                  FIXTURES + "model_b", output) == 0);
    REQUIRE(model_load(&m, (dir + "/deep").c_str(), err, sizeof err) == 0);
    CHECK(m.config.n_layers == 3);
    check_against(&m, expected, "passthrough", 1.0f / 128);
    model_free(&m);
    // the same merge as one GGUF file: it loads back with every token's row
    CHECK_MESSAGE(run("./merge --method linear --out " + dir + "/x.gguf " + FIXTURES + "model_a " + FIXTURES +
                          "model_b", output) == 0, output);
    REQUIRE_MESSAGE(model_load(&m, (dir + "/x.gguf").c_str(), err, sizeof err) == 0, err);
    CHECK(m.config.vocab_size == 1001);
    model_free(&m);
    safetensors_close(&expected);
    REQUIRE(system(("rm -rf " + dir).c_str()) == 0);
}

// A copy of fixture adapter `name` in dir/copy with `from` replaced by `to` in its config.
static std::string edited_adapter(const std::string &dir, const std::string &name, const std::string &from,
                                  const std::string &to) {
    std::string copy = dir + "/" + name + "_edited";
    REQUIRE(system(("cp -r " + FIXTURES + name + " " + copy).c_str()) == 0);
    std::ifstream in(copy + "/adapter_config.json");
    std::stringstream text;
    text << in.rdbuf();
    std::string config = text.str();
    size_t at = config.find(from);
    REQUIRE(at != std::string::npos);
    config.replace(at, from.size(), to);
    std::ofstream(copy + "/adapter_config.json") << config;
    return copy;
}

// An adapter like a0 whose q_proj A is [4, 8]: another shape for the same module.
static std::string misshapen_adapter(const std::string &dir) {
    std::string copy = dir + "/misshapen";
    REQUIRE(system(("mkdir -p " + copy + " && cp " + FIXTURES + "a0/adapter_config.json " + copy).c_str()) == 0);
    std::vector<float> A(4 * 8, 0.1f), B(16 * 4, 0.1f);
    std::string a_name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    std::string b_name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    TensorInfo tensors[2] = {};
    tensors[0] = {(char *)a_name.c_str(), DT_F32, 2, {4, 8}, A.data(), A.size() * sizeof(float)};
    tensors[1] = {(char *)b_name.c_str(), DT_F32, 2, {16, 4}, B.data(), B.size() * sizeof(float)};
    char err[1024];
    REQUIRE(safetensors_write((copy + "/adapter_model.safetensors").c_str(), tensors, 2, err, sizeof err) == 0);
    return copy;
}

TEST_CASE("merging: bad input gets a clear error naming what is wrong") {
    std::string dir = temp_dir(), output;
    std::string a0 = FIXTURES + "a0", a1 = FIXTURES + "a1", a2 = FIXTURES + "a2";
    std::string out = " --out " + dir + "/out ";
    // adapters of different bases
    std::string other = edited_adapter(dir, "a0", "\"tiny-llama\"", "\"other-model\"");
    CHECK(run("./merge --method cat --weights 1,1" + out + a1 + " " + other, output) == 1);
    CHECK(has(output, other + ": adapter of another base: base_model_name_or_path 'other-model'"));
    // ranks that linear cannot combine (4 and 2); cat can
    CHECK(run("./merge --method linear --weights 1,1" + out + a0 + " " + a2, output) == 1);
    CHECK(has(output, "needs equal ranks (as peft)"));
    CHECK(run("./merge --method cat --weights 1,1" + out + a0 + " " + a2, output) == 0);
    // shapes that differ
    CHECK(run("./merge --method cat --weights 1,1" + out + a0 + " " + misshapen_adapter(dir), output) == 1);
    CHECK(has(output, "is [out 16, in 8], but in " + a0 + " it is [out 16, in 16]"));
    // a missing or negative weight
    CHECK(run("./merge --method cat" + out + a0 + " " + a1, output) == 2);
    CHECK(has(output, "--method cat needs --weights, one per input"));
    CHECK(run("./merge --method cat --weights 1" + out + a0 + " " + a1, output) == 2);
    CHECK(has(output, "--weights gives 1 weight for 2 inputs"));
    CHECK(run("./merge --method linear --weights 1,-1" + out + FIXTURES + "model_a " + FIXTURES + "model_b",
              output) == 2);
    CHECK(has(output, "weight -1 of input 1"));
    CHECK(has(output, "is negative"));
    // the options a method needs or does not take
    CHECK(run("./merge --method ties --weights 1,1" + out + a0 + " " + a1, output) == 2);
    CHECK(has(output, "--method ties needs --density D with 0 < D <= 1"));
    CHECK(run("./merge --method svd --rank 9 --weights 1,1" + out + a0 + " " + a1, output) == 1);
    CHECK(has(output, "--rank 9 exceeds module"));
    CHECK(run("./merge --method slerp --t 0.5" + out + a0 + " " + a1, output) == 2);
    CHECK(has(output, "slerp merges whole models"));
    CHECK(run("./merge --method slerp" + out + FIXTURES + "model_a " + FIXTURES + "model_b", output) == 2);
    CHECK(has(output, "--method slerp needs two models and --t T"));
    CHECK(run("./merge --method passthrough --layers 0:0-5" + out + FIXTURES + "model_a", output) == 1);
    CHECK(has(output, "has layers 0 to 1"));
    CHECK(run("./merge --method cat --weights 1,1" + out + a0 + " " + FIXTURES + "model_a", output) == 2);
    CHECK(has(output, "a mix of adapters and models"));
    // --out that is an input or the base (also written another way) is refused before anything is read
    std::string copy = dir + "/a0_copy";
    REQUIRE(system(("cp -r " + a0 + " " + copy).c_str()) == 0);
    CHECK(run("./merge --method cat --weights 1,1 --out " + copy + "/ " + copy + " " + a1, output) == 2);
    CHECK_MESSAGE(has(output, "merge: --out is an INPUT (it would be written over): " + copy + "/"), output);
    REQUIRE(system(("cp -r " + FIXTURES + "model_a " + dir + "/model").c_str()) == 0);
    CHECK(run("./merge --method linear --base " + dir + "/model --out " + dir + "/a0_copy/../model " + a0 + " " + a1,
              output) == 2);
    CHECK_MESSAGE(has(output, "merge: --out is the --base model (it would be written over)"), output);
    REQUIRE(system(("rm -rf " + dir).c_str()) == 0);
}

TEST_CASE("merging: --base merges each adapter into the base first, then the model method") {
    std::string dir = temp_dir(), output;
    char err[1024];
    CHECK(run("./merge --method linear --base " + FIXTURES + "model_a --quant none --weights 1,1 --out " + dir +
                  "/based " + FIXTURES + "a0 " + FIXTURES + "a1", output) == 0);
    Model merged, base;
    REQUIRE(model_load(&merged, (dir + "/based").c_str(), err, sizeof err) == 0);
    load_fixture_model(&base, "model_a");
    PeftAdapter adapters[2] = {read_fixture_adapter("a0"), read_fixture_adapter("a1")};
    // layer 0's q_proj: W + (s_0 B_0 A_0 + s_1 B_1 A_1) / 2
    std::vector<float> want(base.layers[0].wq, base.layers[0].wq + 16 * 16);
    for (PeftAdapter &a : adapters) {
        for (int j = 0; j < a.n_modules; j++) {
            const LoraModule *m = &a.modules[j];
            if (strcmp(m->name, "base_model.model.model.layers.0.self_attn.q_proj") != 0) continue;
            std::vector<float> delta = product(m->B, m->A, m->out_dim, a.rank, m->in_dim);
            for (size_t i = 0; i < want.size(); i++) want[i] += 0.5f * a.scaling * delta[i];
        }
        peft_adapter_free(&a);
    }
    float scale = 0;
    for (float x : want) scale = std::fmax(scale, std::fabs(x));
    CHECK(max_abs_difference(merged.layers[0].wq, want.data(), want.size()) <= scale / 128);   // bf16
    CHECK(max_abs_difference(merged.layers[0].wk, base.layers[0].wk, 8 * 16) <= scale / 128);  // not adapted
    model_free(&merged);
    model_free(&base);
    REQUIRE(system(("rm -rf " + dir).c_str()) == 0);
}

// A copy of fixture adapter `name` in dir/copy_name whose config records the base
// it was trained on (lora.h's LORA_BASE_KEY), as ./train writes it.
static std::string adapter_recording(const std::string &dir, const std::string &name, const std::string &copy_name,
                                     const char *quant, uint64_t model_hash) {
    std::string copy = dir + "/" + copy_name;
    REQUIRE(system(("cp -r " + FIXTURES + name + " " + copy).c_str()) == 0);
    std::ifstream in(copy + "/adapter_config.json");
    std::stringstream text;
    text << in.rdbuf();
    std::string config = text.str();
    size_t at = config.find("\"r\": ");
    REQUIRE(at != std::string::npos);
    char record[256];
    snprintf(record, sizeof record, "\"qlora_c_base\": {\"quant\": \"%s\", \"double_quant\": true, "
             "\"model_weights_hash\": \"%016llx\"},\n  ", quant, (unsigned long long)model_hash);
    config.insert(at, record);
    std::ofstream(copy + "/adapter_config.json") << config;
    return copy;
}

// Whether two model directories hold the same weights, bit for bit.
static bool same_weights(const std::string &a, const std::string &b) {
    Model ma, mb;
    char err[1024];
    INFO(err);
    REQUIRE(model_load(&ma, a.c_str(), err, sizeof err) == 0);
    REQUIRE(model_load(&mb, b.c_str(), err, sizeof err) == 0);
    bool same = ma.storage_floats == mb.storage_floats &&
                memcmp(ma.storage, mb.storage, sizeof(float) * ma.storage_floats) == 0;
    model_free(&ma);
    model_free(&mb);
    return same;
}

TEST_CASE("merging: --base merges each adapter onto the base it records, as ./generate does") {
    std::string dir = temp_dir(), output;
    Model base;
    load_fixture_model(&base, "model_a");
    uint64_t hash = model_weights_hash(&base);
    model_free(&base);
    std::string base_option = " --base " + FIXTURES + "model_a --out " + dir;
    // trained on --quant none: merged onto the weights as loaded, as --quant none does (it was NF4's round trip)
    std::string none = adapter_recording(dir, "a0", "none", "none", hash);
    CHECK(run("./merge --method linear" + base_option + "/recorded " + none, output) == 0);
    CHECK(has(output, "weights as loaded (as ./train --quant none; from the adapter's record)"));
    CHECK_FALSE(has(output, "warning"));
    CHECK(run("./merge --method linear --quant none" + base_option + "/given " + FIXTURES + "a0", output) == 0);
    CHECK(run("./merge --method linear" + base_option + "/default " + FIXTURES + "a0", output) == 0);
    CHECK(same_weights(dir + "/recorded", dir + "/given"));
    CHECK_FALSE(same_weights(dir + "/recorded", dir + "/default"));
    // a --quant unlike the record, and a record of another model's weights, are warned about
    CHECK(run("./merge --method linear --quant nf4" + base_option + "/nf4 " + none, output) == 0);
    CHECK(has(output, "merge: warning: " + none + "/adapter_config.json records that the adapter was trained on the "
                      "base of --quant none, but it is merged onto --quant nf4 --double-quant 1"));
    std::string other = adapter_recording(dir, "a0", "other", "none", hash ^ 1);
    CHECK(run("./merge --method linear" + base_option + "/other_merged " + other, output) == 0);
    CHECK(has(output, "the adapter was trained on another model"));
    REQUIRE(system(("rm -rf " + dir).c_str()) == 0);
}

TEST_CASE("merging: an adapter merge keeps the base its inputs record, and refuses inputs of different bases") {
    std::string dir = temp_dir(), output;
    char err[1024];
    std::string none = adapter_recording(dir, "a0", "none", "none", 0x1234);
    std::string out = " --method cat --weights 1,1 --out " + dir + "/out ";
    // with an input that records none (peft's own), the record is kept
    CHECK(run("./merge" + out + none + " " + FIXTURES + "a1", output) == 0);
    PeftAdapter merged;
    REQUIRE(peft_adapter_read(&merged, (dir + "/out").c_str(), err, sizeof err) == 0);
    CHECK(merged.base_recorded == 1);
    CHECK(merged.base.quant_nf4 == 0);
    CHECK(merged.base.model_hash == 0x1234);
    peft_adapter_free(&merged);
    // another model's weights, or another quantization of the same
    std::string other = adapter_recording(dir, "a1", "other", "none", 0x1235);
    CHECK(run("./merge" + out + none + " " + other, output) == 1);
    CHECK(has(output, other + ": adapter of another base: it records the base model's weights hash 0000000000001235, " +
                      none + " records 0000000000001234"));
    std::string nf4 = adapter_recording(dir, "a1", "nf4", "nf4", 0x1234);
    CHECK(run("./merge" + out + none + " " + nf4, output) == 1);
    CHECK(has(output, nf4 + ": trained on the base of ./train --quant nf4 --double-quant 1, " + none +
                      " on that of --quant none"));
    REQUIRE(system(("rm -rf " + dir).c_str()) == 0);
}

// An adapter like a0 on layer 0 only (layers_to_transform [0]), as peft writes one.
static std::string layer_0_adapter(const std::string &dir) {
    std::string copy = edited_adapter(dir, "a0", "\"layers_to_transform\": null", "\"layers_to_transform\": [0]");
    SafetensorsFile f;
    char err[1024];
    REQUIRE(safetensors_open(&f, (FIXTURES + "a0/adapter_model.safetensors").c_str(), err, sizeof err) == 0);
    std::vector<TensorInfo> kept;
    for (int i = 0; i < f.tensors.count; i++)
        if (strstr(f.tensors.tensors[i].name, ".layers.0.")) kept.push_back(f.tensors.tensors[i]);
    REQUIRE(kept.size() == 4);
    REQUIRE(safetensors_write((copy + "/adapter_model.safetensors").c_str(), kept.data(), (int)kept.size(), err,
                              sizeof err) == 0);
    safetensors_close(&f);
    return copy;
}

TEST_CASE("merging: an adapter merge's config selects exactly the modules it holds, so it loads as its inputs do") {
    std::string dir = temp_dir(), output;
    std::string layer_0 = layer_0_adapter(dir);
    // (its target_modules were the leaf names, selecting layer 1 too: "no lora_A / lora_B for module ... layer 1")
    CHECK(run("./merge --method linear --weights 1 --out " + dir + "/merged " + layer_0, output) == 0);
    std::string base = " --method linear --base " + FIXTURES + "model_a --quant none --out " + dir;
    CHECK_MESSAGE(run("./merge" + base + "/from_merged " + dir + "/merged", output) == 0, output);
    CHECK(run("./merge" + base + "/from_input " + layer_0, output) == 0);
    CHECK(same_weights(dir + "/from_merged", dir + "/from_input"));
    REQUIRE(system(("rm -rf " + dir).c_str()) == 0);
}

TEST_CASE("merging: ./merge --out X.gguf writes the merged model as GGUF, which loads back to its weights") {
    std::string dir = temp_dir(), output;
    char err[1024];
    // the default model with itself, weights 3 and 1: the average is the model again
    const std::string model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    CHECK(run("./merge --method linear --weights 3,1 --gguf-type bf16 --out " + dir + "/merged.gguf " + model + " " +
                  model, output) == 0);
    Model merged;
    REQUIRE_MESSAGE(model_load(&merged, (dir + "/merged.gguf").c_str(), err, sizeof err) == 0, err);
    const Model &source = default_model();
    const Config &c = source.config;
    CHECK(merged.config.n_layers == c.n_layers);
    // every weight is the source's rounded to bf16: within 2^-8 of its size
    for (int layer : {0, c.n_layers - 1}) {
        size_t n = (size_t)c.n_heads * c.head_dim * c.dim;
        float scale = 0;
        for (size_t i = 0; i < n; i++) scale = std::fmax(scale, std::fabs(source.layers[layer].wq[i]));
        CHECK(max_abs_difference(merged.layers[layer].wq, source.layers[layer].wq, n) <= scale / 256);
    }
    // --gguf-type without a .gguf, and a type GGUF export does not write, are refused
    CHECK(run("./merge --method linear --gguf-type q8_0 --out " + dir + "/hf " + model + " " + model, output) == 2);
    CHECK(has(output, "--gguf-type goes with an --out ending in .gguf"));
    CHECK(run("./merge --method linear --gguf-type q4_0 --out " + dir + "/x.gguf " + model + " " + model, output) == 2);
    CHECK(has(output, "--gguf-type expects f16, bf16 or q8_0, got q4_0"));
    model_free(&merged);
    REQUIRE(system(("rm -rf " + dir).c_str()) == 0);
}
