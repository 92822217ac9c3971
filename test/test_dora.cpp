// DoRA (dora.h) on the CPU, in double precision:
//   - one adapted layer's gradients (m, A, B, x) against central finite
//     differences, with and without dropout, with a bias. Finite differences
//     see the norm ||W + s B A|| move with A and B; peft's gradient (ours)
//     treats it as a constant, so the test adds the norm's own part, written
//     here from the chain rule, and checks that this part is not negligible
//     (a gradient through the norm would fail);
//   - without dropout the layer equals the merged weight W' = g (W + s B A);
//     with B = 0 and m = ||W|| it equals the base layer;
//   - the whole tiny model's DoRA gradients (train_step_cpu) likewise, with
//     dropout, GQA, biases, two sequences; recompute bitwise the same;
//   - --plan's arithmetic counts what DoRA adds.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "dora.h"
#include "lora.h"
#include "ops/layers.h"
#include "trainer/memory_plan.h"
#include "trainer/train_step.h"

namespace {

std::vector<double> random_doubles(size_t n, std::mt19937 &rng, double mean, double spread) {
    std::normal_distribution<double> normal(mean, spread);
    std::vector<double> v(n);
    for (double &x : v) x = normal(rng);
    return v;
}

// ||W + s B A|| per row, written out here (the test's own reference).
std::vector<double> row_norms(const std::vector<double> &W, const std::vector<double> &A, const std::vector<double> &B,
                              double s, int out_dim, int in_dim, int rank, std::vector<double> *V) {
    std::vector<double> norm(out_dim);
    V->assign((size_t)out_dim * in_dim, 0.0);
    for (int j = 0; j < out_dim; j++) {
        double sum = 0;
        for (int i = 0; i < in_dim; i++) {
            double v = W[(size_t)j * in_dim + i];
            for (int k = 0; k < rank; k++) v += s * B[(size_t)j * rank + k] * A[(size_t)k * in_dim + i];
            (*V)[(size_t)j * in_dim + i] = v;
            sum += v * v;
        }
        norm[j] = std::sqrt(sum);
    }
    return norm;
}

// The part of the full derivative that flows through the norm, which peft
// detaches: with S_j = d loss / d g_j = norm_j dm_j and g = m / norm,
// d loss / d norm_j = -m_j dm_j / norm_j, and d norm_j / d V_j = V_j / norm_j, V = W + s B A:
//   dB_jk += (d loss / d norm_j) s (V_j . A_k) / norm_j
//   dA_ki += sum_j (d loss / d norm_j) s B_jk V_ji / norm_j
void add_norm_path(std::vector<double> &dA, std::vector<double> &dB, const std::vector<double> &dm,
                   const std::vector<double> &m, const std::vector<double> &A, const std::vector<double> &B,
                   const std::vector<double> &W, double s, int out_dim, int in_dim, int rank) {
    std::vector<double> V;
    std::vector<double> norm = row_norms(W, A, B, s, out_dim, in_dim, rank, &V);
    for (int j = 0; j < out_dim; j++) {
        double d_norm = -m[j] * dm[j] / norm[j];
        for (int k = 0; k < rank; k++) {
            double dot = 0;
            for (int i = 0; i < in_dim; i++) dot += V[(size_t)j * in_dim + i] * A[(size_t)k * in_dim + i];
            dB[(size_t)j * rank + k] += d_norm * s * dot / norm[j];
            for (int i = 0; i < in_dim; i++)
                dA[(size_t)k * in_dim + i] += d_norm * s * B[(size_t)j * rank + k] * V[(size_t)j * in_dim + i] / norm[j];
        }
    }
}

// Largest |numeric - analytic| over the largest |numeric|.
double relative_error(const std::vector<double> &numeric, const std::vector<double> &analytic) {
    double worst = 0, largest = 1e-300;
    for (size_t i = 0; i < numeric.size(); i++) {
        worst = std::fmax(worst, std::fabs(numeric[i] - analytic[i]));
        largest = std::fmax(largest, std::fabs(numeric[i]));
    }
    return worst / largest;
}

double largest_abs(const std::vector<double> &v) {
    double largest = 0;
    for (double x : v) largest = std::fmax(largest, std::fabs(x));
    return largest;
}

// One adapted layer: inputs, and the loss sum(y * R) whose dy is R.
struct LayerCase {
    LoraShape s;
    std::vector<double> x, W, bias, A, B, m, R;
    std::vector<float> keep;   // empty: no dropout

    LayerCase(int n, int in_dim, int out_dim, int rank, float dropout, unsigned seed) {
        s = {n, in_dim, out_dim, rank, 1.5f};
        std::mt19937 rng(seed);
        x = random_doubles((size_t)n * in_dim, rng, 0, 1);
        W = random_doubles((size_t)out_dim * in_dim, rng, 0, 0.5);
        bias = random_doubles(out_dim, rng, 0, 0.5);
        A = random_doubles((size_t)rank * in_dim, rng, 0, 0.5);
        B = random_doubles((size_t)out_dim * rank, rng, 0, 0.5);
        m = random_doubles(out_dim, rng, 2, 0.5);
        R = random_doubles((size_t)n * out_dim, rng, 0, 1);
        if (dropout > 0) {
            keep.resize((size_t)n * in_dim);
            lora_dropout_mask(keep.data(), keep.size(), dropout, seed);
        }
    }
    const float *mask() const { return keep.empty() ? NULL : keep.data(); }

    std::vector<double> forward(std::vector<double> *w, std::vector<double> *xa, std::vector<double> *norm) const {
        std::vector<double> y((size_t)s.n * s.out_dim), scratch(dora_scratch_count(s));
        w->resize((size_t)s.n * s.out_dim);
        xa->resize((size_t)s.n * s.rank);
        norm->resize(s.out_dim);
        dora_forward_cpu<double>(y.data(), w->data(), xa->data(), norm->data(), x.data(), mask(), W.data(),
                                 bias.data(), A.data(), B.data(), m.data(), s, scratch.data());
        return y;
    }
    double loss() const {
        std::vector<double> w, xa, norm;
        std::vector<double> y = forward(&w, &xa, &norm);
        double sum = 0;
        for (size_t i = 0; i < y.size(); i++) sum += y[i] * R[i];
        return sum;
    }
};

// d loss / d p[i] by central differences, every element of p.
template <typename Loss>
std::vector<double> numeric_gradient(std::vector<double> &p, Loss loss) {
    const double h = 1e-5;
    std::vector<double> grad(p.size());
    for (size_t i = 0; i < p.size(); i++) {
        double saved = p[i];
        p[i] = saved + h;
        double plus = loss();
        p[i] = saved - h;
        double minus = loss();
        p[i] = saved;
        grad[i] = (plus - minus) / (2 * h);
    }
    return grad;
}

}  // namespace

TEST_CASE("dora: one layer's gradients (m, A, B, x) equal finite differences with the norm's part added (double)") {
    const float dropouts[] = {0.0f, 0.3f};
    for (float dropout : dropouts) {
        INFO("dropout " << dropout);
        LayerCase c(5, 7, 6, 3, dropout, 17);
        std::vector<double> w, xa, norm;
        c.forward(&w, &xa, &norm);
        std::vector<double> dx(c.x.size(), 0), dA(c.A.size(), 0), dB(c.B.size(), 0), dm(c.m.size(), 0);
        std::vector<double> scratch(dora_scratch_count(c.s));
        dora_backward_cpu<double>(dx.data(), dA.data(), dB.data(), dm.data(), c.R.data(), c.x.data(), c.mask(),
                                  c.W.data(), c.A.data(), c.B.data(), c.m.data(), norm.data(), xa.data(), w.data(),
                                  c.s, scratch.data());
        auto loss = [&] { return c.loss(); };
        CHECK(relative_error(numeric_gradient(c.m, loss), dm) < 1e-7);
        CHECK(relative_error(numeric_gradient(c.x, loss), dx) < 1e-7);
        std::vector<double> full_dA = dA, full_dB = dB;
        add_norm_path(full_dA, full_dB, dm, c.m, c.A, c.B, c.W, c.s.scaling, c.s.out_dim, c.s.in_dim, c.s.rank);
        std::vector<double> numeric_dA = numeric_gradient(c.A, loss), numeric_dB = numeric_gradient(c.B, loss);
        CHECK(relative_error(numeric_dA, full_dA) < 1e-7);
        CHECK(relative_error(numeric_dB, full_dB) < 1e-7);
        // the detached gradient is not the full one: a gradient through the norm would fail above
        CHECK(relative_error(numeric_dA, dA) > 1e-2);
        CHECK(relative_error(numeric_dB, dB) > 1e-2);
        // dx alone: backward without dx gives the same dA, dB, dm
        std::vector<double> dA2(c.A.size(), 0), dB2(c.B.size(), 0), dm2(c.m.size(), 0);
        dora_backward_cpu<double>(NULL, dA2.data(), dB2.data(), dm2.data(), c.R.data(), c.x.data(), c.mask(),
                                  c.W.data(), c.A.data(), c.B.data(), c.m.data(), norm.data(), xa.data(), w.data(),
                                  c.s, scratch.data());
        CHECK(dA2 == dA);
        CHECK(dB2 == dB);
        CHECK(dm2 == dm);
    }
}

TEST_CASE("dora: without dropout the layer is the merged weight g (W + s B A); with B = 0 and m = ||W|| the base") {
    LayerCase c(4, 9, 5, 2, 0.0f, 23);
    std::vector<double> w, xa, norm;
    std::vector<double> y = c.forward(&w, &xa, &norm);
    std::vector<double> V;
    std::vector<double> want_norm = row_norms(c.W, c.A, c.B, c.s.scaling, c.s.out_dim, c.s.in_dim, c.s.rank, &V);
    for (int j = 0; j < c.s.out_dim; j++) CHECK(norm[j] == doctest::Approx(want_norm[j]).epsilon(1e-14));
    // merged: W' = (m / norm) V, in float through dora_merge_weight
    std::vector<float> merged(c.W.begin(), c.W.end()), A(c.A.begin(), c.A.end()), B(c.B.begin(), c.B.end()),
        m(c.m.begin(), c.m.end());
    dora_merge_weight(merged.data(), A.data(), B.data(), m.data(), c.s.scaling, c.s.out_dim, c.s.in_dim, c.s.rank);
    for (int j = 0; j < c.s.out_dim; j++)
        for (int i = 0; i < c.s.in_dim; i++)
            CHECK(merged[(size_t)j * c.s.in_dim + i] ==
                  doctest::Approx(c.m[j] / want_norm[j] * V[(size_t)j * c.s.in_dim + i]).epsilon(1e-5));
    std::vector<double> merged_double(merged.begin(), merged.end()), want((size_t)c.s.n * c.s.out_dim);
    matmul_naive_cpu<double>(want.data(), c.x.data(), merged_double.data(), c.bias.data(), c.s.n, c.s.in_dim,
                             c.s.out_dim);
    for (size_t i = 0; i < y.size(); i++) CHECK(y[i] == doctest::Approx(want[i]).epsilon(1e-5));
    // B = 0, m = ||W||: g = 1, the base layer x W^T + b
    std::fill(c.B.begin(), c.B.end(), 0.0);
    c.m = row_norms(c.W, c.A, c.B, c.s.scaling, c.s.out_dim, c.s.in_dim, c.s.rank, &V);
    y = c.forward(&w, &xa, &norm);
    matmul_naive_cpu<double>(want.data(), c.x.data(), c.W.data(), c.bias.data(), c.s.n, c.s.in_dim, c.s.out_dim);
    for (size_t i = 0; i < y.size(); i++) CHECK(y[i] == doctest::Approx(want[i]).epsilon(1e-12));
}

TEST_CASE("dora: the adapter set keeps m after A and B in the flat state, and the saved adapter is peft's layout") {
    Config c = {};
    c.dim = 12; c.hidden_dim = 20; c.n_layers = 2; c.n_heads = 3; c.n_kv_heads = 1; c.head_dim = 4;
    int enabled[N_LINEARS] = {0};
    enabled[LINEAR_Q] = enabled[LINEAR_DOWN] = 1;
    LoraSet set;
    REQUIRE(lora_set_init(&set, &c, enabled, 2, 4.0f, 0, 0.0f, 3, 1) == 0);
    // per layer: q (A 2x12, B 12x2, m 12), down (A 2x20, B 12x2, m 12)
    CHECK(set.n_params == 2 * ((2 * 12 + 12 * 2 + 12) + (2 * 20 + 12 * 2 + 12)));
    const LoraAdapter &q1 = set.adapters[1 * N_LINEARS + LINEAR_Q];
    CHECK(q1.m == q1.B + 12 * 2);
    CHECK(q1.dm - set.grads == q1.m - set.params);
    CHECK(set.adapters[LINEAR_K].m == NULL);
    q1.m[5] = NAN;
    char name[64];
    CHECK(lora_set_find_non_finite(&set, set.params, name, sizeof name) == 1);
    CHECK(std::string(name) == "layer 1 q lora_magnitude_vector");
    lora_set_free(&set);
}

// ---- the whole tiny model ----------------------------------------------------

namespace {

// trainer/train_step.h's BlockWeights of a random tiny Qwen2-like model (biases, GQA), and DoRA adapters.
struct TinyDoraModel {
    Config c = {};
    std::vector<double> embed, final_norm, lm_head;
    std::vector<std::vector<double>> blocks;   // per layer: the 12 tensors of BlockWeights in order
    std::vector<std::vector<double>> params;   // per (layer, target): A, B, m, dA, dB, dm
    std::vector<AdapterParams<double>> adapters;
    WeightSource<double> source;
    int rank;
    double scaling;

    static void load(void *context, int layer, BlockWeights<double> *w) {
        TinyDoraModel *m = (TinyDoraModel *)context;
        const std::vector<double> *t = &m->blocks[(size_t)layer * 12];
        *w = {t[0].data(), t[1].data(), t[2].data(), t[3].data(), t[4].data(), t[5].data(), t[6].data(),
              t[7].data(), t[8].data(), t[9].data(), t[10].data(), t[11].data()};
    }

    // The base weight of (layer, target) as BlockWeights orders it.
    const std::vector<double> &weight(int layer, int target) const {
        static const int INDEX[N_LINEARS] = {1, 2, 3, 7, 9, 10, 11};
        return blocks[(size_t)layer * 12 + INDEX[target]];
    }

    TinyDoraModel(int rank_, double scaling_, unsigned seed) : rank(rank_), scaling(scaling_) {
        c.arch = ARCH_QWEN2;
        c.dim = 8; c.hidden_dim = 12; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2; c.head_dim = 2;
        c.vocab_size = 11; c.max_seq_len = 64; c.norm_eps = 1e-5f; c.rope_theta = 10000.0f; c.attention_bias = 1;
        std::mt19937 rng(seed);
        int q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
        embed = random_doubles((size_t)c.vocab_size * c.dim, rng, 0, 0.5);
        final_norm = random_doubles(c.dim, rng, 1, 0.5);
        lm_head = random_doubles((size_t)c.vocab_size * c.dim, rng, 0, 0.5);
        for (int l = 0; l < c.n_layers; l++) {
            size_t sizes[12] = {(size_t)c.dim, (size_t)q * c.dim, (size_t)kv * c.dim, (size_t)kv * c.dim, (size_t)q,
                                (size_t)kv, (size_t)kv, (size_t)c.dim * q, (size_t)c.dim,
                                (size_t)c.hidden_dim * c.dim, (size_t)c.hidden_dim * c.dim,
                                (size_t)c.dim * c.hidden_dim};
            for (int i = 0; i < 12; i++) blocks.push_back(random_doubles(sizes[i], rng, (i == 0 || i == 8) ? 1 : 0, 0.5));
        }
        for (int l = 0; l < c.n_layers; l++) {
            for (int t = 0; t < N_LINEARS; t++) {
                int in_dim, out_dim;
                linear_dims(&c, t, &in_dim, &out_dim);
                params.push_back(random_doubles((size_t)rank * in_dim, rng, 0, 0.5));
                params.push_back(random_doubles((size_t)out_dim * rank, rng, 0, 0.5));
                params.push_back(random_doubles(out_dim, rng, 2, 0.5));   // m away from ||W + s B A||: g != 1
                params.push_back(std::vector<double>((size_t)rank * in_dim, 0));
                params.push_back(std::vector<double>((size_t)out_dim * rank, 0));
                params.push_back(std::vector<double>(out_dim, 0));
            }
        }
        for (size_t i = 0; i < params.size(); i += 6)
            adapters.push_back({params[i].data(), params[i + 1].data(), params[i + 3].data(), params[i + 4].data(),
                                params[i + 2].data(), params[i + 5].data()});
        source = {this, load, embed.data(), final_norm.data(), lm_head.data()};
    }
};

const int TOKENS[10] = {1, 4, 7, 2, 9, 3, 3, 10, 0, 5};
const int TARGETS[10] = {4, IGNORE_TARGET, 2, 9, IGNORE_TARGET, IGNORE_TARGET, 10, 0, 5, IGNORE_TARGET};

}  // namespace

TEST_CASE("dora: every gradient of a whole tiny model equals finite differences with the norms' parts added (double)") {
    TinyDoraModel model(2, 1.5, 29);
    StepOptions opt = {2, 1.5f, 0.25f, 99, 0};
    Batch batch = {TOKENS, TARGETS, 2, 5, NULL, NULL};
    int counted = 0, n = 0;
    double loss_sum = train_step_cpu(&model.c, &model.source, model.adapters.data(), &opt, &batch, 1.0, &counted);
    CHECK(counted == 6);
    CHECK(loss_cpu(&model.c, &model.source, model.adapters.data(), &opt, &batch, &n) ==
          doctest::Approx(loss_sum).epsilon(1e-12));
    // finite differences of the same loss (loss_cpu draws the same dropout masks)
    auto loss = [&] {
        int count;
        return loss_cpu(&model.c, &model.source, model.adapters.data(), &opt, &batch, &count);
    };
    for (size_t i = 0; i < model.params.size(); i += 6) {
        int layer = (int)(i / 6) / N_LINEARS, target = (int)(i / 6) % N_LINEARS;
        INFO("layer " << layer << " " << LINEAR_NAMES[target]);
        int in_dim, out_dim;
        linear_dims(&model.c, target, &in_dim, &out_dim);
        std::vector<double> dA = model.params[i + 3], dB = model.params[i + 4];
        const std::vector<double> &dm = model.params[i + 5];
        add_norm_path(dA, dB, dm, model.params[i + 2], model.params[i], model.params[i + 1], model.weight(layer, target),
                      model.scaling, out_dim, in_dim, model.rank);
        std::vector<double> numeric_m = numeric_gradient(model.params[i + 2], loss);
        CHECK(relative_error(numeric_m, dm) < 1e-5);
        CHECK(largest_abs(numeric_m) > 1e-6);
        CHECK(relative_error(numeric_gradient(model.params[i], loss), dA) < 1e-5);
        CHECK(relative_error(numeric_gradient(model.params[i + 1], loss), dB) < 1e-5);
    }
}

TEST_CASE("dora: recompute gives bitwise the same loss and gradients (float)") {
    TinyDoraModel kept_d(4, 2.0, 5), recomputed_d(4, 2.0, 5);
    // the same model in float
    auto to_float = [](const TinyDoraModel &d, std::vector<std::vector<float>> *blocks,
                       std::vector<std::vector<float>> *params, std::vector<AdapterParams<float>> *adapters) {
        for (const auto &b : d.blocks) blocks->emplace_back(b.begin(), b.end());
        for (const auto &p : d.params) params->emplace_back(p.begin(), p.end());
        for (size_t i = 0; i < params->size(); i += 6)
            adapters->push_back({(*params)[i].data(), (*params)[i + 1].data(), (*params)[i + 3].data(),
                                 (*params)[i + 4].data(), (*params)[i + 2].data(), (*params)[i + 5].data()});
    };
    struct FloatModel {
        std::vector<std::vector<float>> blocks, params;
        std::vector<AdapterParams<float>> adapters;
        std::vector<float> embed, final_norm, lm_head;
        static void load(void *context, int layer, BlockWeights<float> *w) {
            FloatModel *m = (FloatModel *)context;
            const std::vector<float> *t = &m->blocks[(size_t)layer * 12];
            *w = {t[0].data(), t[1].data(), t[2].data(), t[3].data(), t[4].data(), t[5].data(), t[6].data(),
                  t[7].data(), t[8].data(), t[9].data(), t[10].data(), t[11].data()};
        }
    } kept, recomputed;
    for (FloatModel *f : {&kept, &recomputed}) {
        to_float(kept_d, &f->blocks, &f->params, &f->adapters);
        f->embed.assign(kept_d.embed.begin(), kept_d.embed.end());
        f->final_norm.assign(kept_d.final_norm.begin(), kept_d.final_norm.end());
        f->lm_head.assign(kept_d.lm_head.begin(), kept_d.lm_head.end());
    }
    WeightSource<float> kept_source = {&kept, FloatModel::load, kept.embed.data(), kept.final_norm.data(),
                                       kept.lm_head.data()};
    WeightSource<float> recomputed_source = {&recomputed, FloatModel::load, recomputed.embed.data(),
                                             recomputed.final_norm.data(), recomputed.lm_head.data()};
    StepOptions opt = {4, 2.0f, 0.1f, 7, 0};
    Batch batch = {TOKENS, TARGETS, 2, 5, NULL, NULL};
    int counted;
    double loss_kept = train_step_cpu(&kept_d.c, &kept_source, kept.adapters.data(), &opt, &batch, 1.0 / 6, &counted);
    opt.recompute = 1;
    double loss_recomputed =
        train_step_cpu(&recomputed_d.c, &recomputed_source, recomputed.adapters.data(), &opt, &batch, 1.0 / 6, &counted);
    CHECK(loss_kept == loss_recomputed);
    for (size_t i = 0; i < kept.params.size(); i++) CHECK(kept.params[i] == recomputed.params[i]);
}

TEST_CASE("dora: --plan counts the magnitude vectors, the w each adapted layer keeps, and DoRA's scratch") {
    Config c = {};
    c.dim = 64; c.hidden_dim = 160; c.n_layers = 3; c.n_heads = 4; c.n_kv_heads = 2; c.head_dim = 16;
    c.vocab_size = 100; c.tied_embeddings = 1;
    PlanInputs in = {};
    in.batch = 2; in.seq_len = 32; in.rank = 4;
    in.enabled[LINEAR_Q] = in.enabled[LINEAR_DOWN] = 1;   // out 64 and 64
    in.quant_nf4 = 1; in.double_quant = 1; in.weight_bytes = 2; in.activation_bytes = 2;
    MemoryPlan lora, dora;
    memory_plan_compute(&c, &in, &lora);
    in.dora = 1;
    memory_plan_compute(&c, &in, &dora);
    double magnitudes = 3.0 * (64 + 64);   // a magnitude per output row of q and down, 3 layers
    CHECK(dora.dora_magnitudes == 4 * magnitudes);
    CHECK(dora.lora_params - lora.lora_params == 4 * magnitudes);
    CHECK(dora.lora_grads - lora.lora_grads == 4 * magnitudes);
    CHECK(dora.adam_moments - lora.adam_moments == 8 * magnitudes);
    // per layer: w [tokens, out] in 16-bit for each adapter, and its fp32 row norms
    double tokens = 64;
    CHECK(dora.activations_no_recompute - lora.activations_no_recompute == 3 * (tokens * 128 * 2 + 4 * 128));
    // scratch: the widest adapter's 2 x [tokens, out] 16-bit + [tokens, in] fp32 (down: in 160)
    CHECK(dora.adapter_scratch - lora.adapter_scratch == tokens * (2.0 * 2 * 64 + 4.0 * 160));
}
