// Every backward function in ops/layers.cu against central finite differences,
// all in double precision. For an operation y = f(x) we take a fixed random
// projection L = sum_k w_k y_k, get dL/dx from the backward function (fed
// d_out = w), and compare it with (L(x + h e_i) - L(x - h e_i)) / 2h for every
// input element i. With h = 1e-5 the truncation error is ~h^2 and rounding
// ~1e-16/h, so the relative error max|num - analytic| / max|num| must be
// below 1e-5 (a wrong term gives errors of order 1).
#include <doctest/doctest.h>

#include <omp.h>
#include <string.h>

#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "formats/json.h"
#include "ops/layers.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"

using Vec = std::vector<double>;

static Vec random_vec(size_t n, std::mt19937 &rng, double scale = 1.0) {
    std::normal_distribution<double> normal(0.0, scale);
    Vec v(n);
    for (double &x : v) x = normal(rng);
    return v;
}

// Random values rounded to Real (the tests draw in double).
template <typename Real>
static std::vector<Real> random_reals(size_t count, std::mt19937 &rng) {
    Vec v = random_vec(count, rng);
    return std::vector<Real>(v.begin(), v.end());
}

static double dot(const Vec &a, const Vec &b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}

// Relative error of analytic against central differences of loss() in x.
static double gradient_error(const std::function<double()> &loss, Vec &x, const Vec &analytic) {
    const double h = 1e-5;
    double worst_diff = 0, largest = 1e-30;
    for (size_t i = 0; i < x.size(); i++) {
        double saved = x[i];
        x[i] = saved + h;
        double plus = loss();
        x[i] = saved - h;
        double minus = loss();
        x[i] = saved;
        double numeric = (plus - minus) / (2 * h);
        worst_diff = std::fmax(worst_diff, std::fabs(numeric - analytic[i]));
        largest = std::fmax(largest, std::fabs(numeric));
    }
    return worst_diff / largest;
}

static const double MAX_RELATIVE_ERROR = 1e-5;

TEST_CASE("layers backward: matmul input and weight gradients") {
    std::mt19937 rng(1);
    const int n = 3, in_dim = 5, out_dim = 4;
    Vec x = random_vec(n * in_dim, rng), w = random_vec(out_dim * in_dim, rng), b = random_vec(out_dim, rng);
    Vec proj = random_vec(n * out_dim, rng), y(n * out_dim);
    auto loss = [&] {
        matmul_cpu(y.data(), x.data(), w.data(), b.data(), n, in_dim, out_dim);
        return dot(proj, y);
    };
    Vec dx(x.size(), 0.0), dw(w.size(), 0.0);
    matmul_backward_input_cpu(dx.data(), proj.data(), w.data(), n, in_dim, out_dim);
    matmul_backward_weight_cpu(dw.data(), proj.data(), x.data(), n, in_dim, out_dim);
    CHECK(gradient_error(loss, x, dx) < MAX_RELATIVE_ERROR);
    CHECK(gradient_error(loss, w, dw) < MAX_RELATIVE_ERROR);
}

// The blocked forward matmul against matmul_naive_cpu, the definition, on
// random shapes (from a seeded generator, so that a failure reproduces) and on
// awkward fixed ones: one token, one output row, sizes that no block size
// divides, more tokens than a tile. Both sum in Real, in different orders, so
// each result may be off by the rounding of the in_dim + 1 terms, at most
// (in_dim + 1) eps sum |term| for each (Higham's bound, to first order): the
// bar is twice that. A term missing or counted twice is ~1/in_dim of the sum.
template <typename Real>
static void check_matmul_against_naive(std::mt19937 &rng, int n, int in_dim, int out_dim) {
    CAPTURE(n);
    CAPTURE(in_dim);
    CAPTURE(out_dim);
    std::vector<Real> x = random_reals<Real>((size_t)n * in_dim, rng);
    std::vector<Real> w = random_reals<Real>((size_t)out_dim * in_dim, rng), b = random_reals<Real>(out_dim, rng);
    const double eps = std::numeric_limits<Real>::epsilon() / 2;   // unit roundoff
    for (bool with_bias : {false, true}) {
        const Real *bias = with_bias ? b.data() : nullptr;
        std::vector<Real> blocked((size_t)n * out_dim), naive((size_t)n * out_dim);
        matmul_cpu(blocked.data(), x.data(), w.data(), bias, n, in_dim, out_dim);
        matmul_naive_cpu(naive.data(), x.data(), w.data(), bias, n, in_dim, out_dim);
        int bad = 0;
        for (int t = 0; t < n; t++)
            for (int o = 0; o < out_dim; o++) {
                // magnitude = |b[o]| + sum_i |in[t][i] W[o][i]|
                double magnitude = with_bias ? std::fabs((double)b[o]) : 0;
                for (int i = 0; i < in_dim; i++)
                    magnitude += std::fabs((double)x[(size_t)t * in_dim + i] * w[(size_t)o * in_dim + i]);
                double diff = std::fabs((double)blocked[(size_t)t * out_dim + o] - naive[(size_t)t * out_dim + o]);
                bad += diff > 2 * (in_dim + 1) * eps * magnitude;
            }
        CHECK(bad == 0);
    }
}

TEST_CASE("layers: the blocked matmul equals matmul_naive_cpu on random and awkward shapes, float and double") {
    std::mt19937 rng(11);
    const int awkward[][3] = {{1, 1, 1}, {1, 5, 1}, {3, 64, 7}, {17, 67, 130}, {1, 67, 130}, {5, 31, 49},
                              {65, 33, 47}, {70, 67, 300}, {4, 8, 3}, {129, 257, 97}};
    for (const auto &shape : awkward) {
        check_matmul_against_naive<double>(rng, shape[0], shape[1], shape[2]);
        check_matmul_against_naive<float>(rng, shape[0], shape[1], shape[2]);
    }
    std::uniform_int_distribution<int> tokens(1, 150), width(1, 600), rows(1, 400);
    for (int k = 0; k < 20; k++) {
        int n = tokens(rng), in_dim = width(rng), out_dim = rows(rng);
        check_matmul_against_naive<double>(rng, n, in_dim, out_dim);
        check_matmul_against_naive<float>(rng, n, in_dim, out_dim);
    }
}

// The blocked backward matmuls against plain loops, at sizes that leave partial
// blocks and tiles everywhere (one token, one output row, sizes that no block
// size divides, more tokens than a tile, more depth than a depth step); they
// must ADD to what is there. An error is measured against sum |term|: a term
// missing or counted twice is ~1/length.
template <typename Real>
static void check_backward_matmuls_against_loops(double tolerance) {
    std::mt19937 rng(7);
    const int sizes[][3] = {{1, 5, 1}, {3, 64, 7}, {17, 67, 130}, {1, 67, 130}, {17, 5, 7}, {70, 67, 300}};
    for (const auto &size : sizes) {
        const int n = size[0], in_dim = size[1], out_dim = size[2];
        CAPTURE(n);
        CAPTURE(in_dim);
        CAPTURE(out_dim);
        std::vector<Real> x = random_reals<Real>(n * in_dim, rng), w = random_reals<Real>(out_dim * in_dim, rng);
        std::vector<Real> dy = random_reals<Real>(n * out_dim, rng);
        std::vector<Real> dx = random_reals<Real>(n * in_dim, rng), dw = random_reals<Real>(out_dim * in_dim, rng);
        const std::vector<Real> dx_before = dx, dw_before = dw;
        auto check = [&](Real got, double want, double magnitude) {
            CHECK(std::fabs(got - want) <= tolerance * magnitude);
        };
        matmul_backward_input_cpu(dx.data(), dy.data(), w.data(), n, in_dim, out_dim);
        for (int t = 0; t < n; t++)
            for (int i = 0; i < in_dim; i++) {
                double want = dx_before[t * in_dim + i], magnitude = std::fabs(want);
                for (int o = 0; o < out_dim; o++) {
                    double term = (double)dy[t * out_dim + o] * w[o * in_dim + i];
                    want += term, magnitude += std::fabs(term);
                }
                check(dx[t * in_dim + i], want, magnitude);
            }
        matmul_backward_weight_cpu(dw.data(), dy.data(), x.data(), n, in_dim, out_dim);
        for (int o = 0; o < out_dim; o++)
            for (int i = 0; i < in_dim; i++) {
                double want = dw_before[o * in_dim + i], magnitude = std::fabs(want);
                for (int t = 0; t < n; t++) {
                    double term = (double)dy[t * out_dim + o] * x[t * in_dim + i];
                    want += term, magnitude += std::fabs(term);
                }
                check(dw[o * in_dim + i], want, magnitude);
            }
    }
}

TEST_CASE("layers: the blocked backward matmuls equal plain loops at odd sizes, float and double") {
    check_backward_matmuls_against_loops<double>(1e-13);
    check_backward_matmuls_against_loops<float>(1e-5);
}

// Runs compute on 1 thread and on 2; every output must have the same bits.
static void check_same_bits_on_1_and_2_threads(const std::function<std::vector<std::vector<float>>()> &compute) {
    int threads_before = omp_get_max_threads();
    omp_set_num_threads(1);
    std::vector<std::vector<float>> one = compute();
    omp_set_num_threads(2);
    std::vector<std::vector<float>> two = compute();
    omp_set_num_threads(threads_before);
    for (size_t k = 0; k < one.size(); k++)
        CHECK(memcmp(one[k].data(), two[k].data(), one[k].size() * sizeof(float)) == 0);
}

// The same bits whatever the number of threads: no sum is split between them.
TEST_CASE("layers: the matmuls give the same bits on 1 or 2 threads") {
    std::mt19937 rng(8);
    const int n = 70, in_dim = 67, out_dim = 300;
    std::vector<float> x = random_reals<float>(n * in_dim, rng), w = random_reals<float>(out_dim * in_dim, rng);
    std::vector<float> b = random_reals<float>(out_dim, rng), dy = random_reals<float>(n * out_dim, rng);
    check_same_bits_on_1_and_2_threads([&] {
        std::vector<float> y(n * out_dim), dx(n * in_dim, 0.0f), dw(out_dim * in_dim, 0.0f);
        matmul_cpu(y.data(), x.data(), w.data(), b.data(), n, in_dim, out_dim);
        matmul_backward_input_cpu(dx.data(), dy.data(), w.data(), n, in_dim, out_dim);
        matmul_backward_weight_cpu(dw.data(), dy.data(), x.data(), n, in_dim, out_dim);
        return std::vector<std::vector<float>>{y, dx, dw};
    });
}

// The attention backward adds up every gradient element in one thread, in a
// fixed order (threads take whole kv heads): the same bits on 1 or 2 threads.
TEST_CASE("layers: the attention backward gives the same bits on 1 or 2 threads") {
    std::mt19937 rng(9);
    const int n = 40, heads = 6, kv_heads = 2, head_dim = 8, q_dim = heads * head_dim, kv_dim = kv_heads * head_dim;
    std::vector<float> q = random_reals<float>(n * q_dim, rng), k = random_reals<float>(n * kv_dim, rng);
    std::vector<float> v = random_reals<float>(n * kv_dim, rng), dy = random_reals<float>(n * q_dim, rng);
    check_same_bits_on_1_and_2_threads([&] {
        std::vector<float> dq(n * q_dim, 0.0f), dk(n * kv_dim, 0.0f), dv(n * kv_dim, 0.0f);
        attention_backward_cpu(dq.data(), dk.data(), dv.data(), dy.data(), q.data(), k.data(), v.data(), n, heads,
                               kv_heads, head_dim, (const int *)NULL);
        return std::vector<std::vector<float>>{dq, dk, dv};
    });
}

TEST_CASE("layers backward: RMSNorm") {
    std::mt19937 rng(2);
    const int n = 3, dim = 8;
    Vec x = random_vec(n * dim, rng), weight = random_vec(dim, rng), proj = random_vec(n * dim, rng), y(n * dim);
    auto loss = [&] {
        rmsnorm_cpu(y.data(), x.data(), weight.data(), n, dim, 1e-5f);
        return dot(proj, y);
    };
    Vec dx(x.size(), 0.0);
    rmsnorm_backward_cpu(dx.data(), proj.data(), x.data(), weight.data(), n, dim, 1e-5f);
    CHECK(gradient_error(loss, x, dx) < MAX_RELATIVE_ERROR);
}

TEST_CASE("layers backward: RoPE") {
    std::mt19937 rng(3);
    const int n = 3, heads = 2, head_dim = 8;
    Config c = {};
    c.head_dim = head_dim;
    c.rope_theta = 10000.0f;
    float inv_freq[head_dim / 2];
    rope_inv_freq(&c, inv_freq);
    int positions[n] = {0, 5, 17};
    Vec x = random_vec(n * heads * head_dim, rng), proj = random_vec(x.size(), rng);
    auto loss = [&] {
        Vec y = x;
        rope_cpu(y.data(), positions, inv_freq, n, heads, head_dim);
        return dot(proj, y);
    };
    Vec dx = proj;
    rope_backward_cpu(dx.data(), positions, inv_freq, n, heads, head_dim);
    CHECK(gradient_error(loss, x, dx) < MAX_RELATIVE_ERROR);
}

TEST_CASE("layers backward: causal grouped-query attention") {
    std::mt19937 rng(4);
    const int n = 5, heads = 4, kv_heads = 2, head_dim = 4;
    const int q_dim = heads * head_dim, kv_dim = kv_heads * head_dim;
    Vec q = random_vec(n * q_dim, rng), k = random_vec(n * kv_dim, rng), v = random_vec(n * kv_dim, rng);
    Vec proj = random_vec(n * q_dim, rng), out(n * q_dim);
    auto loss = [&] {
        attention_cpu(out.data(), q.data(), k.data(), v.data(), n, 0, heads, kv_heads, head_dim, (const int *)NULL);
        return dot(proj, out);
    };
    Vec dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
    attention_backward_cpu(dq.data(), dk.data(), dv.data(), proj.data(), q.data(), k.data(), v.data(), n, heads,
                           kv_heads, head_dim, (const int *)NULL);
    CHECK(gradient_error(loss, q, dq) < MAX_RELATIVE_ERROR);
    CHECK(gradient_error(loss, k, dk) < MAX_RELATIVE_ERROR);
    CHECK(gradient_error(loss, v, dv) < MAX_RELATIVE_ERROR);
}

TEST_CASE("layers: attention over a cache equals attention over the whole sequence") {
    std::mt19937 rng(5);
    const int n = 6, heads = 4, kv_heads = 2, head_dim = 4, q_dim = heads * head_dim, kv_dim = kv_heads * head_dim;
    Vec q = random_vec(n * q_dim, rng), k = random_vec(n * kv_dim, rng), v = random_vec(n * kv_dim, rng);
    Vec whole(n * q_dim), last(q_dim);
    attention_cpu(whole.data(), q.data(), k.data(), v.data(), n, 0, heads, kv_heads, head_dim, (const int *)NULL);
    attention_cpu(last.data(), q.data() + (n - 1) * q_dim, k.data(), v.data(), 1, n - 1, heads, kv_heads, head_dim,
                  (const int *)NULL);
    for (int i = 0; i < q_dim; i++) CHECK(last[i] == doctest::Approx(whole[(n - 1) * q_dim + i]).epsilon(1e-12));
}

// Three samples of 3, 1 and 4 tokens packed in one sequence: each sample's
// attention output (forward) and gradients equal those of the sample alone.
TEST_CASE("layers: attention over packed samples equals each sample alone, forward and backward") {
    std::mt19937 rng(6);
    const int n = 8, heads = 4, kv_heads = 2, head_dim = 4, q_dim = heads * head_dim, kv_dim = kv_heads * head_dim;
    const int starts[4] = {0, 3, 4, 8};
    const int positions[n] = {0, 1, 2, 0, 0, 1, 2, 3};
    Vec q = random_vec(n * q_dim, rng), k = random_vec(n * kv_dim, rng), v = random_vec(n * kv_dim, rng);
    Vec dy = random_vec(n * q_dim, rng);
    Vec packed(n * q_dim), dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
    attention_cpu(packed.data(), q.data(), k.data(), v.data(), n, 0, heads, kv_heads, head_dim, positions);
    attention_backward_cpu(dq.data(), dk.data(), dv.data(), dy.data(), q.data(), k.data(), v.data(), n, heads,
                           kv_heads, head_dim, positions);
    for (int sample = 0; sample < 3; sample++) {
        int first = starts[sample], len = starts[sample + 1] - first;
        Vec alone(len * q_dim), aq(len * q_dim, 0.0), ak(len * kv_dim, 0.0), av(len * kv_dim, 0.0);
        const double *sq = q.data() + first * q_dim, *sk = k.data() + first * kv_dim, *sv = v.data() + first * kv_dim;
        attention_cpu(alone.data(), sq, sk, sv, len, 0, heads, kv_heads, head_dim, (const int *)NULL);
        attention_backward_cpu(aq.data(), ak.data(), av.data(), dy.data() + first * q_dim, sq, sk, sv, len, heads,
                               kv_heads, head_dim, (const int *)NULL);
        for (int i = 0; i < len * q_dim; i++) {
            CHECK(packed[first * q_dim + i] == doctest::Approx(alone[i]).epsilon(1e-12));
            CHECK(dq[first * q_dim + i] == doctest::Approx(aq[i]).epsilon(1e-12));
        }
        for (int i = 0; i < len * kv_dim; i++) {
            CHECK(dk[first * kv_dim + i] == doctest::Approx(ak[i]).epsilon(1e-12));
            CHECK(dv[first * kv_dim + i] == doctest::Approx(av[i]).epsilon(1e-12));
        }
    }
    // and not the plain causal result: the mask matters on these inputs
    Vec causal(n * q_dim);
    attention_cpu(causal.data(), q.data(), k.data(), v.data(), n, 0, heads, kv_heads, head_dim, (const int *)NULL);
    CHECK(std::fabs(causal[(n - 1) * q_dim] - packed[(n - 1) * q_dim]) > 1e-6);
}

TEST_CASE("layers backward: weighted cross-entropy") {
    std::mt19937 rng(7);
    const int n = 4, vocab = 6;
    Vec logits = random_vec(n * vocab, rng);
    const int targets[n] = {2, IGNORE_TARGET, 5, 0};
    const float weights[n] = {1.0f, 0.7f, 0.25f, 0.0f};
    int counted = 0;
    auto loss = [&] { return cross_entropy_sum_cpu(logits.data(), targets, weights, n, vocab, &counted); };
    Vec d_logits(logits.size(), 0.0);
    cross_entropy_backward_cpu(d_logits.data(), logits.data(), targets, weights, n, vocab, 1.0);
    CHECK(gradient_error(loss, logits, d_logits) < MAX_RELATIVE_ERROR);
    // the weighted sum, from the unweighted loss of each row alone
    double want = 0.0;
    for (int t = 0; t < n; t++) {
        if (targets[t] == IGNORE_TARGET) continue;
        int one = 0;
        want += weights[t] * cross_entropy_sum_cpu(logits.data() + t * vocab, targets + t, (const float *)NULL, 1,
                                                   vocab, &one);
    }
    CHECK(loss() == doctest::Approx(want).epsilon(1e-12));
    CHECK(counted == 3);   // a weight of 0 still counts the target (the normaliser is the caller's)
}

TEST_CASE("layers backward: SwiGLU") {
    std::mt19937 rng(6);
    const size_t n = 20;
    Vec gate = random_vec(n, rng, 2.0), up = random_vec(n, rng), proj = random_vec(n, rng), y(n);
    auto loss = [&] {
        swiglu_cpu(y.data(), gate.data(), up.data(), n);
        return dot(proj, y);
    };
    Vec d_gate(n, 0.0), d_up(n, 0.0);
    swiglu_backward_cpu(d_gate.data(), d_up.data(), proj.data(), gate.data(), up.data(), n);
    CHECK(gradient_error(loss, gate, d_gate) < MAX_RELATIVE_ERROR);
    CHECK(gradient_error(loss, up, d_up) < MAX_RELATIVE_ERROR);
}

TEST_CASE("layers backward: cross-entropy with ignored targets") {
    std::mt19937 rng(7);
    const int n = 4, vocab = 7;
    Vec logits = random_vec(n * vocab, rng, 3.0);
    int targets[n] = {3, IGNORE_TARGET, 0, 6};
    auto loss = [&] {
        int counted;
        return cross_entropy_sum_cpu(logits.data(), targets, (const float *)NULL, n, vocab, &counted);
    };
    Vec d_logits(logits.size(), 0.0);
    cross_entropy_backward_cpu(d_logits.data(), logits.data(), targets, (const float *)NULL, n, vocab, 1.0);
    CHECK(gradient_error(loss, logits, d_logits) < MAX_RELATIVE_ERROR);
    for (int v = 0; v < vocab; v++) CHECK(d_logits[1 * vocab + v] == 0.0);   // the ignored row
    int counted;
    cross_entropy_sum_cpu(logits.data(), targets, (const float *)NULL, n, vocab, &counted);
    CHECK(counted == 3);
}

TEST_CASE("layers: RoPE frequencies equal transformers', plain and with Llama-3 scaling") {
    char err[256];
    JsonValue *root = json_parse_file("test/fixtures/rope_inv_freq.json", err, sizeof err);
    REQUIRE_MESSAGE(root, err);
    const JsonValue *cases = json_get(root, "cases");
    REQUIRE(cases);
    REQUIRE(cases->count == 3);
    for (size_t k = 0; k < cases->count; k++) {
        const JsonValue *item = &cases->items[k];
        Config c = {};
        c.rope_theta = (float)json_get_number(item, "theta", 0);
        c.head_dim = (int)json_get_number(item, "head_dim", 0);
        const JsonValue *scaling = json_get(item, "rope_scaling");
        if (scaling && scaling->type == JSON_OBJECT) {
            c.rope_factor = (float)json_get_number(scaling, "factor", 0);
            c.rope_low_freq_factor = (float)json_get_number(scaling, "low_freq_factor", 0);
            c.rope_high_freq_factor = (float)json_get_number(scaling, "high_freq_factor", 0);
            c.rope_original_max_pos = (int)json_get_number(scaling, "original_max_position_embeddings", 0);
        }
        const JsonValue *want = json_get(item, "inv_freq");
        REQUIRE(want->count == (size_t)c.head_dim / 2);
        std::vector<float> got(c.head_dim / 2);
        rope_inv_freq(&c, got.data());
        for (size_t i = 0; i < want->count; i++)
            CHECK_MESSAGE(got[i] == doctest::Approx(want->items[i].number).epsilon(1e-6),
                          json_get_string(item, "name", ""), " i=", i);
    }
    json_free(root);
}
