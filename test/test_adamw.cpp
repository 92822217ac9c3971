// Tests for adamw.cu: AdamW against torch.optim.AdamW (the fixture of
// dev/fixtures/make_adamw_fixtures.py) and against two steps worked out by hand; the
// learning-rate schedule at its boundaries and against transformers; --warmup
// parsing; the global gradient norm and clipping against
// torch.nn.utils.clip_grad_norm_; and gradient-accumulation normalisation.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "adamw.h"
#include "formats/json.h"

namespace {

const char *const FIXTURE = "test/fixtures/adamw_reference.json";

// The parsed fixture, loaded once; fails the test when missing or broken.
const JsonValue *fixture() {
    static JsonValue *root = nullptr;
    if (root) return root;
    char err[512] = "";
    size_t len = 0;
    char *text = read_file(FIXTURE, &len, err, sizeof err);
    REQUIRE_MESSAGE(text, err, " (regenerate with python3 dev/fixtures/make_adamw_fixtures.py)");
    root = json_parse(text, len, err, sizeof err);
    free(text);
    REQUIRE_MESSAGE(root, FIXTURE, ": ", err);
    return root;
}

// Array member `key` of object (required).
const JsonValue *array(const JsonValue *object, const char *key) {
    const JsonValue *a = json_get(object, key);
    REQUIRE_MESSAGE((a && a->type == JSON_ARRAY), "fixture lacks array ", key);
    return a;
}

std::vector<float> floats(const JsonValue *a) {
    std::vector<float> out;
    for (size_t i = 0; i < a->count; i++) out.push_back((float)a->items[i].number);
    return out;
}

float number(const JsonValue *object, const char *key) {
    const JsonValue *x = json_get(object, key);
    REQUIRE_MESSAGE((x && x->type == JSON_NUMBER), "fixture lacks number ", key);
    return (float)x->number;
}

// |got - want| <= rel * max(|got|, |want|)
bool rel_close(double got, double want, double rel) {
    return std::fabs(got - want) <= rel * std::fmax(std::fabs(got), std::fabs(want));
}

void check_all_close(const float *got, const std::vector<float> &want, double rel, const std::string &what) {
    for (size_t i = 0; i < want.size(); i++) {
        INFO(what, " [", i, "]: got ", got[i], " want ", want[i]);
        CHECK(rel_close(got[i], want[i], rel));
    }
}

}  // namespace

// ---- AdamW -------------------------------------------------------------------

TEST_CASE("adamw: defaults are torch.optim.AdamW's with weight_decay 0") {
    AdamWConfig c = adamw_default_config();
    CHECK(c.lr == 1e-3f);
    CHECK(c.beta1 == 0.9f);
    CHECK(c.beta2 == 0.999f);
    CHECK(c.eps == 1e-8f);
    CHECK(c.weight_decay == 0.0f);
}

TEST_CASE("adamw: two steps worked out by hand") {
    // betas 0.5 and 0.75 are exact in float, so every number below is exact
    // decimal arithmetic (0.9f and 0.999f are not: see the torch test).
    AdamWConfig c = adamw_default_config();
    c.beta1 = 0.5f;
    c.beta2 = 0.75f;
    c.eps = 1e-8f;
    c.weight_decay = 0.1f;
    const float lr = 0.1f;
    float params[2] = {1.0f, 2.0f};
    AdamWState s;
    REQUIRE(adamw_init(&s, 2) == 0);

    // Step 1, g = (0.5, 0):
    //   p0: decay 1 * (1 - 0.1 * 0.1) = 0.99
    //       m = 0.5 * 0.5 = 0.25, v = 0.25 * 0.5^2 = 0.0625
    //       m_hat = 0.25 / (1 - 0.5) = 0.5, v_hat = 0.0625 / (1 - 0.75) = 0.25
    //       p = 0.99 - 0.1 * 0.5 / (sqrt(0.25) + 1e-8) = 0.99 - 0.099999998 = 0.890000002
    //   p1: decay only (m = v = 0): 2 * 0.99 = 1.98
    float grads1[2] = {0.5f, 0.0f};
    adamw_step_cpu(params, grads1, &s, &c, lr);
    CHECK(s.step == 1);
    CHECK(s.m[0] == 0.25f);
    CHECK(s.v[0] == 0.0625f);
    CHECK(rel_close(params[0], 0.890000002, 1e-6));
    CHECK(rel_close(params[1], 1.98, 1e-6));
    CHECK(s.m[1] == 0.0f);
    CHECK(s.v[1] == 0.0f);

    // Step 2, g = (-0.5, 0):
    //   p0: decay 0.890000002 * 0.99 = 0.88110000198
    //       m = 0.5 * 0.25 + 0.5 * -0.5 = -0.125
    //       v = 0.75 * 0.0625 + 0.25 * 0.25 = 0.109375
    //       m_hat = -0.125 / (1 - 0.25) = -0.16666667
    //       v_hat = 0.109375 / (1 - 0.5625) = 0.25, sqrt = 0.5
    //       p = 0.88110000198 - 0.1 * -0.16666667 / 0.50000001 = 0.88110000198 + 0.03333333267
    //         = 0.91443333465
    //   p1: 1.98 * 0.99 = 1.9602
    float grads2[2] = {-0.5f, 0.0f};
    adamw_step_cpu(params, grads2, &s, &c, lr);
    CHECK(s.step == 2);
    CHECK(s.m[0] == -0.125f);
    CHECK(s.v[0] == 0.109375f);
    CHECK(rel_close(params[0], 0.91443333465, 1e-6));
    CHECK(rel_close(params[1], 1.9602, 1e-6));
    adamw_free(&s);
}

TEST_CASE("adamw: five steps equal torch.optim.AdamW") {
    const JsonValue *cases = array(fixture(), "adamw");
    REQUIRE(cases->count >= 3);
    for (size_t k = 0; k < cases->count; k++) {
        const JsonValue *tc = &cases->items[k];
        std::string name = json_get_string(tc, "name", "?");
        AdamWConfig c = adamw_default_config();
        c.beta1 = number(tc, "beta1");
        c.beta2 = number(tc, "beta2");
        c.eps = number(tc, "eps");
        c.weight_decay = number(tc, "weight_decay");
        std::vector<float> lrs = floats(array(tc, "lr"));
        std::vector<float> params = floats(array(tc, "params0"));
        const JsonValue *grads = array(tc, "grads");
        const JsonValue *after = array(tc, "params");
        REQUIRE(grads->count == lrs.size());
        REQUIRE(after->count == lrs.size());

        AdamWState s;
        REQUIRE(adamw_init(&s, params.size()) == 0);
        for (size_t step = 0; step < lrs.size(); step++) {
            std::vector<float> g = floats(&grads->items[step]);
            REQUIRE(g.size() == params.size());
            adamw_step_cpu(params.data(), g.data(), &s, &c, lrs[step]);
            check_all_close(params.data(), floats(&after->items[step]), 1e-6,
                            name + " params after step " + std::to_string(step + 1));
        }
        CHECK(s.step == (int64_t)lrs.size());
        check_all_close(s.m, floats(array(tc, "exp_avg")), 1e-6, name + " exp_avg");
        check_all_close(s.v, floats(array(tc, "exp_avg_sq")), 1e-6, name + " exp_avg_sq");
        adamw_free(&s);
    }
}

// ---- learning-rate schedule ------------------------------------------------

TEST_CASE("schedule: boundaries, W = 10, T = 110, floor 10%") {
    LRSchedule s = {1e-3f, 0.1f, 10, 110};
    // warmup: lr = 1e-3 (step + 1) / 10
    CHECK(rel_close(lr_at_step(&s, 0), 1e-4, 1e-6));
    CHECK(rel_close(lr_at_step(&s, 4), 5e-4, 1e-6));
    CHECK(rel_close(lr_at_step(&s, 9), 1e-3, 1e-6));
    // first decay step: p = 1/100, lr = 1e-4 + 0.5 (1 + cos(pi/100)) 9e-4 = 9.997779522e-4
    CHECK(rel_close(lr_at_step(&s, 10), 9.997779522e-4, 1e-6));
    // middle: step 59 has p = 50/100, lr = 1e-4 + 0.5 * 9e-4 = 5.5e-4
    CHECK(rel_close(lr_at_step(&s, 59), 5.5e-4, 1e-6));
    // last step: p = 1, lr = the floor 1e-4; it stays there after the run
    CHECK(rel_close(lr_at_step(&s, 109), 1e-4, 1e-6));
    CHECK(rel_close(lr_at_step(&s, 500), 1e-4, 1e-6));
    // decreasing over the decay
    for (int64_t step = 10; step < 110; step++) CHECK(lr_at_step(&s, step) < lr_at_step(&s, step - 1));
}

TEST_CASE("schedule: no warmup, and a run shorter than its warmup") {
    LRSchedule no_warmup = {1e-3f, 0.0f, 0, 4};
    // p = (step + 1) / 4: cos(pi/4), cos(pi/2), cos(3pi/4), cos(pi)
    CHECK(rel_close(lr_at_step(&no_warmup, 0), 0.5e-3 * (1.0 + std::cos(M_PI / 4)), 1e-6));
    CHECK(rel_close(lr_at_step(&no_warmup, 1), 0.5e-3, 1e-6));
    CHECK(lr_at_step(&no_warmup, 3) == 0.0f);

    LRSchedule all_warmup = {1e-3f, 0.1f, 5, 3};
    CHECK(rel_close(lr_at_step(&all_warmup, 0), 2e-4, 1e-6));
    CHECK(rel_close(lr_at_step(&all_warmup, 2), 6e-4, 1e-6));
}

TEST_CASE("schedule: equals transformers' cosine_warmup_with_min_lr at every step") {
    const JsonValue *cases = array(fixture(), "schedule");
    REQUIRE(cases->count >= 3);
    for (size_t k = 0; k < cases->count; k++) {
        const JsonValue *tc = &cases->items[k];
        LRSchedule s = {number(tc, "max_lr"), number(tc, "min_lr_frac"),
                        (int64_t)json_get_number(tc, "warmup_steps", -1),
                        (int64_t)json_get_number(tc, "total_steps", -1)};
        const JsonValue *want = array(tc, "lr");
        const JsonValue *hf_cosine = array(tc, "lr_cosine_with_min_lr");
        REQUIRE((int64_t)want->count == s.total_steps);
        REQUIRE((int64_t)hf_cosine->count == s.total_steps + 1);
        for (int64_t step = 0; step < s.total_steps; step++) {
            float lr = lr_at_step(&s, step);
            INFO("case ", k, " step ", step, ": got ", lr);
            CHECK(rel_close(lr, want->items[step].number, 1e-6));
            // HF's plain cosine_with_min_lr is the same schedule one step later
            CHECK(rel_close(lr, hf_cosine->items[step + 1].number, 1e-6));
        }
    }
}

TEST_CASE("schedule: --warmup as a fraction or a step count") {
    CHECK(warmup_steps_from(0.1, 1000) == 100);
    CHECK(warmup_steps_from(0.1, 95) == 10);   // ceil(9.5)
    CHECK(warmup_steps_from(0.0, 1000) == 0);
    CHECK(warmup_steps_from(1.0, 1000) == 1);  // >= 1 is a count
    CHECK(warmup_steps_from(20, 1000) == 20);
    CHECK(warmup_steps_from(2.5, 1000) == 2);
    CHECK(warmup_steps_from(-0.1, 1000) == -1);
    CHECK(warmup_steps_from(NAN, 1000) == -1);

    const JsonValue *cases = array(fixture(), "warmup");
    for (size_t k = 0; k < cases->count; k++) {
        const JsonValue *tc = &cases->items[k];
        double warmup = json_get_number(tc, "warmup", -1);
        int64_t total = (int64_t)json_get_number(tc, "total_steps", -1);
        INFO("warmup ", warmup, " of ", total, " steps");
        CHECK(warmup_steps_from(warmup, total) == (int64_t)json_get_number(tc, "steps", -2));
    }
}

// ---- gradient clipping -----------------------------------------------------

TEST_CASE("clip: norm and scale by hand") {
    std::vector<float> grads = {3.0f, 0.0f, 4.0f};
    double norm = global_grad_norm(grads.data(), grads.size());
    CHECK(norm == 5.0);
    // 1 / (5 + 1e-6)
    float scale = clip_scale(norm, 1.0f);
    CHECK(rel_close(scale, 1.0 / (5.0 + 1e-6), 1e-7));
    scale_grads_cpu(grads.data(), grads.size(), scale);
    CHECK(rel_close(grads[0], 0.6, 1e-6));
    CHECK(grads[1] == 0.0f);
    CHECK(rel_close(grads[2], 0.8, 1e-6));

    CHECK(clip_scale(0.5, 1.0f) == 1.0f);           // below the limit: unchanged
    CHECK(clip_scale(0.0, 1.0f) == 1.0f);           // zero gradient
    CHECK(clip_scale(100.0, 0.0f) == 1.0f);         // max_norm 0: clipping off
    CHECK(clip_scale(INFINITY, 1.0f) == 0.0f);      // as torch: the caller must skip the step
    CHECK(std::isnan(clip_scale(NAN, 1.0f)));
    CHECK(global_grad_norm(nullptr, 0) == 0.0);
}

TEST_CASE("clip: equals torch.nn.utils.clip_grad_norm_") {
    const JsonValue *cases = array(fixture(), "clip");
    REQUIRE(cases->count >= 3);
    for (size_t k = 0; k < cases->count; k++) {
        const JsonValue *tc = &cases->items[k];
        const JsonValue *grads_json = array(tc, "grads");
        const JsonValue *clipped = array(tc, "clipped");
        // every tensor's gradients end to end, as the trainer's flat layout holds them
        std::vector<float> flat;
        std::vector<size_t> starts;
        for (size_t t = 0; t < grads_json->count; t++) {
            std::vector<float> g = floats(&grads_json->items[t]);
            starts.push_back(flat.size());
            flat.insert(flat.end(), g.begin(), g.end());
        }

        double norm = global_grad_norm(flat.data(), flat.size());
        INFO("case ", k, ": norm ", norm);
        CHECK(rel_close(norm, json_get_number(tc, "total_norm", -1), 1e-6));
        scale_grads_cpu(flat.data(), flat.size(), clip_scale(norm, number(tc, "max_norm")));
        for (size_t t = 0; t < grads_json->count; t++)
            check_all_close(flat.data() + starts[t], floats(&clipped->items[t]), 1e-6,
                            "case " + std::to_string(k) + " tensor " + std::to_string(t));
    }
}

// ---- gradient accumulation ---------------------------------------------------

TEST_CASE("accumulation: uneven micro-batches equal one big batch") {
    // A one-weight model: token i has loss 0.5 (w x_i - y_i)^2, gradient (w x_i - y_i) x_i.
    const float w = 0.7f;
    std::vector<float> x, y;
    for (int i = 0; i < 13; i++) {
        x.push_back(0.1f * (float)(i + 1));
        y.push_back((i % 2 ? 1.0f : -1.0f) * (float)i);
    }
    // micro-batch 0 holds tokens 0..2 (3 answer tokens), micro-batch 1 tokens 3..12 (10)
    const int first[2] = {0, 3}, count[2] = {3, 10};
    double loss_sums[2] = {0, 0}, grad_sums[2] = {0, 0};
    int64_t tokens[2];
    double big_loss = 0, big_grad = 0;
    for (int b = 0; b < 2; b++) {
        tokens[b] = count[b];
        for (int i = first[b]; i < first[b] + count[b]; i++) {
            double error = (double)w * x[i] - y[i];
            loss_sums[b] += 0.5 * error * error;
            grad_sums[b] += error * x[i];
        }
        big_loss += loss_sums[b];
        big_grad += grad_sums[b];
    }
    // one batch of all 13 tokens: mean loss and mean gradient
    big_loss /= 13.0;
    big_grad /= 13.0;

    StepLoss step = step_loss_from_micro_batches(loss_sums, tokens, 2);
    CHECK(step.answer_tokens == 13);
    CHECK(rel_close(step.loss, big_loss, 1e-12));
    CHECK(rel_close(step.grad_scale, 1.0 / 13.0, 1e-7));
    CHECK(rel_close((grad_sums[0] + grad_sums[1]) * step.grad_scale, big_grad, 1e-6));

    // The mean of the per-micro-batch means is a different (wrong) number.
    double mean_of_means = 0.5 * (loss_sums[0] / 3.0 + loss_sums[1] / 10.0);
    CHECK(std::fabs(mean_of_means - big_loss) > 0.1 * big_loss);

    // No answer tokens at all: loss 0 and no update.
    const double zero_sums[2] = {0, 0};
    const int64_t zero_tokens[2] = {0, 0};
    StepLoss empty = step_loss_from_micro_batches(zero_sums, zero_tokens, 2);
    CHECK(empty.answer_tokens == 0);
    CHECK(empty.loss == 0.0);
    CHECK(empty.grad_scale == 0.0f);
}
