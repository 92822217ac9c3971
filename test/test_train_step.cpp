// The whole adapted model's backward (trainer/train_step.cpp) on a tiny random model:
// every LoRA gradient against central finite differences of the loss in
// double precision (relative error < 1e-5), with dropout, GQA, q/k/v biases
// and two sequences, also with per-token loss weights (--prompt-loss-weight);
// recompute giving bitwise the same gradients; and samples packed in one
// sequence (--pack) giving the unpacked batch's loss and gradients.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "trainer/train_step.h"

template <typename Real>
struct TinyModel {
    Config c = {};
    std::vector<Real> embed, final_norm, lm_head;
    std::vector<std::vector<Real>> blocks;   // per layer: the 12 tensors of BlockWeights in order
    std::vector<std::vector<Real>> lora;     // per (layer, target): A, B, dA, dB stored as 4 vectors
    std::vector<AdapterParams<Real>> adapters;
    WeightSource<Real> source;

    static void load(void *context, int layer, BlockWeights<Real> *w) {
        TinyModel *m = (TinyModel *)context;
        const std::vector<Real> *t = &m->blocks[(size_t)layer * 12];
        *w = {t[0].data(), t[1].data(), t[2].data(), t[3].data(), t[4].data(), t[5].data(), t[6].data(),
              t[7].data(), t[8].data(), t[9].data(), t[10].data(), t[11].data()};
    }

    explicit TinyModel(int rank, unsigned seed) {
        c.arch = ARCH_QWEN2;
        c.dim = 16; c.hidden_dim = 24; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2; c.head_dim = 4;
        c.vocab_size = 11; c.max_seq_len = 64; c.norm_eps = 1e-5f; c.rope_theta = 10000.0f; c.attention_bias = 1;
        std::mt19937 rng(seed);
        std::normal_distribution<double> normal(0.0, 0.5);
        auto random = [&](size_t n, double mean) {
            std::vector<Real> v(n);
            for (Real &x : v) x = (Real)(mean + normal(rng));
            return v;
        };
        int q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
        embed = random((size_t)c.vocab_size * c.dim, 0);
        final_norm = random(c.dim, 1);
        lm_head = random((size_t)c.vocab_size * c.dim, 0);
        for (int l = 0; l < c.n_layers; l++) {
            size_t sizes[12] = {(size_t)c.dim, (size_t)q * c.dim, (size_t)kv * c.dim, (size_t)kv * c.dim, (size_t)q,
                                (size_t)kv, (size_t)kv, (size_t)c.dim * q, (size_t)c.dim,
                                (size_t)c.hidden_dim * c.dim, (size_t)c.hidden_dim * c.dim,
                                (size_t)c.dim * c.hidden_dim};
            for (int i = 0; i < 12; i++) blocks.push_back(random(sizes[i], (i == 0 || i == 8) ? 1 : 0));
        }
        int in_dims[N_LINEARS] = {c.dim, c.dim, c.dim, q, c.dim, c.dim, c.hidden_dim};
        int out_dims[N_LINEARS] = {q, kv, kv, c.dim, c.hidden_dim, c.hidden_dim, c.dim};
        for (int l = 0; l < c.n_layers; l++) {
            for (int t = 0; t < N_LINEARS; t++) {
                lora.push_back(random((size_t)rank * in_dims[t], 0));
                lora.push_back(random((size_t)out_dims[t] * rank, 0));   // B random so dA is not 0
                lora.push_back(std::vector<Real>((size_t)rank * in_dims[t], 0));
                lora.push_back(std::vector<Real>((size_t)out_dims[t] * rank, 0));
            }
        }
        for (size_t i = 0; i < lora.size(); i += 4)
            adapters.push_back({lora[i].data(), lora[i + 1].data(), lora[i + 2].data(), lora[i + 3].data(), nullptr, nullptr});
        source = {this, load, embed.data(), final_norm.data(), lm_head.data()};
    }
};

static const int TOKENS[10] = {1, 4, 7, 2, 9, 3, 3, 10, 0, 5};
static const int TARGETS[10] = {4, IGNORE_TARGET, 2, 9, IGNORE_TARGET, IGNORE_TARGET, 10, 0, 5, IGNORE_TARGET};

// Every LoRA gradient m holds (from one train_step_cpu with grad_scale 1) against
// central finite differences of loss_cpu on the same batch.
static void check_gradients_by_finite_differences(TinyModel<double> &m, const StepOptions *opt, const Batch *batch) {
    int check_count = 0;
    auto loss = [&] {
        int n;
        return loss_cpu(&m.c, &m.source, m.adapters.data(), opt, batch, &n);
    };
    const double h = 1e-5;
    for (size_t i = 0; i < m.lora.size(); i += 4) {
        for (int which = 0; which < 2; which++) {   // A, then B
            std::vector<double> &param = m.lora[i + which];
            const std::vector<double> &grad = m.lora[i + 2 + which];
            double worst = 0, largest = 1e-30;
            for (size_t j = 0; j < param.size(); j++) {
                double saved = param[j];
                param[j] = saved + h;
                double plus = loss();
                param[j] = saved - h;
                double minus = loss();
                param[j] = saved;
                double numeric = (plus - minus) / (2 * h);
                worst = std::fmax(worst, std::fabs(numeric - grad[j]));
                largest = std::fmax(largest, std::fabs(numeric));
            }
            CHECK_MESSAGE(worst / largest < 1e-5, "adapter ", i / 4, which ? " B" : " A");
            CHECK(largest > 1e-6);   // the gradient is not trivially zero
            check_count++;
        }
    }
    CHECK(check_count == 2 * 7 * 2);
}

TEST_CASE("train step: every LoRA gradient equals finite differences (double)") {
    const int rank = 2;
    TinyModel<double> m(rank, 11);
    StepOptions opt = {rank, 2.0f, 0.25f, 99, 0};
    Batch batch = {TOKENS, TARGETS, 2, 5, NULL, NULL};
    int counted = 0, n = 0;
    double loss_sum = train_step_cpu(&m.c, &m.source, m.adapters.data(), &opt, &batch, 1.0, &counted);
    CHECK(counted == 6);
    CHECK(loss_cpu(&m.c, &m.source, m.adapters.data(), &opt, &batch, &n) == doctest::Approx(loss_sum).epsilon(1e-12));
    check_gradients_by_finite_differences(m, &opt, &batch);
}

// --prompt-loss-weight: every token has a target, the answer's weigh 1 and the
// others w. The loss is the weighted sum of each target's own loss (each from
// a batch where it alone counts), and the gradients are its derivatives.
TEST_CASE("train step: weighted token losses (prompt-loss weight): the weighted sum and its gradients (double)") {
    const int rank = 2;
    TinyModel<double> m(rank, 13);
    StepOptions opt = {rank, 2.0f, 0.25f, 41, 0};
    static const int all_targets[10] = {4, 7, 2, 9, IGNORE_TARGET, 3, 10, 0, 5, IGNORE_TARGET};
    static const float weights[10] = {1.0f, 0.3f, 1.0f, 0.3f, 0.0f, 0.3f, 1.0f, 1.0f, 1.0f, 0.0f};
    Batch batch = {TOKENS, all_targets, 2, 5, weights, NULL};
    int counted = 0;
    double loss_sum = train_step_cpu(&m.c, &m.source, m.adapters.data(), &opt, &batch, 1.0, &counted);
    CHECK(counted == 8);
    double want = 0.0;
    for (int t = 0; t < 10; t++) {
        if (all_targets[t] == IGNORE_TARGET) continue;
        int alone[10], n;
        for (int i = 0; i < 10; i++) alone[i] = i == t ? all_targets[i] : IGNORE_TARGET;
        Batch one = {TOKENS, alone, 2, 5, NULL, NULL};
        want += weights[t] * loss_cpu(&m.c, &m.source, m.adapters.data(), &opt, &one, &n);
    }
    CHECK(loss_sum == doctest::Approx(want).epsilon(1e-12));
    check_gradients_by_finite_differences(m, &opt, &batch);
}

// --pack: samples of 3, 5 and 2 tokens in one sequence of 10 (positions restarting
// per sample) against the same samples as three sequences padded to 5. Without
// dropout (its masks follow the layout), loss and gradients agree to rounding.
TEST_CASE("train step: packed samples give the unpacked batch's loss and gradients (double)") {
    const int rank = 2;
    TinyModel<double> packed(rank, 17), unpacked(rank, 17);
    StepOptions opt = {rank, 2.0f, 0.0f, 5, 0};
    static const int tokens[10] = {1, 4, 7, 2, 9, 3, 3, 10, 0, 5};
    static const int targets[10] = {4, 7, IGNORE_TARGET, 9, 3, IGNORE_TARGET, 10, IGNORE_TARGET, 5, IGNORE_TARGET};
    static const int positions[10] = {0, 1, 2, 0, 1, 2, 3, 4, 0, 1};
    // the same samples as rows of 5: padding repeats the last token and is never learned
    static const int row_tokens[15] = {1, 4, 7, 7, 7, 2, 9, 3, 3, 10, 0, 5, 5, 5, 5};
    static const int row_targets[15] = {4, 7, IGNORE_TARGET, IGNORE_TARGET, IGNORE_TARGET,
                                        9, 3, IGNORE_TARGET, 10, IGNORE_TARGET,
                                        5, IGNORE_TARGET, IGNORE_TARGET, IGNORE_TARGET, IGNORE_TARGET};
    Batch one_sequence = {tokens, targets, 1, 10, NULL, positions};
    Batch three_rows = {row_tokens, row_targets, 3, 5, NULL, NULL};
    int n_packed, n_unpacked;
    double scale = 1.0 / 6;
    double loss_packed =
        train_step_cpu(&packed.c, &packed.source, packed.adapters.data(), &opt, &one_sequence, scale, &n_packed);
    double loss_unpacked =
        train_step_cpu(&unpacked.c, &unpacked.source, unpacked.adapters.data(), &opt, &three_rows, scale, &n_unpacked);
    CHECK(n_packed == 6);
    CHECK(n_unpacked == 6);
    CHECK(loss_packed == doctest::Approx(loss_unpacked).epsilon(1e-12));
    double largest = 0.0;
    for (size_t i = 0; i < packed.lora.size(); i++)
        for (size_t j = 0; j < packed.lora[i].size(); j++) {
            CHECK(packed.lora[i][j] == doctest::Approx(unpacked.lora[i][j]).epsilon(1e-10));
            largest = std::fmax(largest, std::fabs(packed.lora[i][j]));
        }
    CHECK(largest > 0.0);
    // without positions the samples would see each other: a different loss
    Batch no_mask = {tokens, targets, 1, 10, NULL, NULL};
    int n;
    CHECK(std::fabs(loss_cpu(&packed.c, &packed.source, packed.adapters.data(), &opt, &no_mask, &n) - loss_packed) >
          1e-6);
}

TEST_CASE("train step: recompute gives bitwise the same loss and gradients (float)") {
    const int rank = 4;
    TinyModel<float> kept(rank, 5), recomputed(rank, 5);
    StepOptions opt = {rank, 2.0f, 0.1f, 7, 0};
    Batch batch = {TOKENS, TARGETS, 2, 5, NULL, NULL};
    int counted;
    double loss_kept = train_step_cpu(&kept.c, &kept.source, kept.adapters.data(), &opt, &batch, 1.0 / 6, &counted);
    opt.recompute = 1;
    double loss_recomputed =
        train_step_cpu(&recomputed.c, &recomputed.source, recomputed.adapters.data(), &opt, &batch, 1.0 / 6, &counted);
    CHECK(loss_kept == loss_recomputed);
    for (size_t i = 0; i < kept.lora.size(); i++) CHECK(kept.lora[i] == recomputed.lora[i]);
}

TEST_CASE("train step: uneven micro-batches accumulate to the one big batch's gradient") {
    const int rank = 2;
    TinyModel<double> split(rank, 21), whole(rank, 21);
    StepOptions opt = {rank, 2.0f, 0.0f, 3, 0};
    // sequence 0 has 1 answer target, sequence 1 has 5: per-micro-batch means would weight them wrongly
    static const int targets[10] = {4, IGNORE_TARGET, IGNORE_TARGET, IGNORE_TARGET, IGNORE_TARGET, 3, 1, 10, 0, 5};
    Batch first = {TOKENS, targets, 1, 5, NULL, NULL}, second = {TOKENS + 5, targets + 5, 1, 5, NULL, NULL};
    Batch both = {TOKENS, targets, 2, 5, NULL, NULL};
    int n_first, n_second, n_both;
    train_step_cpu(&split.c, &split.source, split.adapters.data(), &opt, &first, 1.0 / 6, &n_first);
    train_step_cpu(&split.c, &split.source, split.adapters.data(), &opt, &second, 1.0 / 6, &n_second);
    train_step_cpu(&whole.c, &whole.source, whole.adapters.data(), &opt, &both, 1.0 / 6, &n_both);
    CHECK(n_first == 1);
    CHECK(n_second == 5);
    CHECK(n_both == 6);
    for (size_t i = 0; i < split.lora.size(); i++)
        for (size_t j = 0; j < split.lora[i].size(); j++)
            CHECK(split.lora[i][j] == doctest::Approx(whole.lora[i][j]).epsilon(1e-12));
}
