// test_gpu_train.cu: the whole GPU training step (trainer/train_gpu.cu) against the
// CPU path (train_step_cpu) on the same NF4 base, adapters and batch: the
// loss within 1e-2 relative, each LoRA gradient tensor's cosine similarity
// with the CPU one, and the cosine of all of them laid end to end; then 20
// AdamW steps on both follow the same loss curve.
//
// The cosine bars are bf16 against fp32, measured on an H100 (2026-11-26,
// every run that day, dev/RESULTS.md) and set at about twice the largest
// 1 - cosine seen:
//   small random models (2 layers)          tensor > 0.999, all > 0.9998
//     measured: worst tensor >= 0.99975, all >= 0.99993 (76 runs)
//   SmolLM2-135M shape, random weights      tensor > 0.997, all > 0.9998
//     measured: worst tensor >= 0.99822 (70 runs), all >= 0.99992 (38)
//   the default model, answer-only text     tensor > 0.95,  all > 0.996
//     measured (34 runs): worst tensor 0.9749-0.9974, all 0.99821-0.99932,
//     loss within 0.6%
// On the default model that is below the 0.999 per tensor the GPU issue asked
// for, and so is PyTorch's own bf16: dev/crosscheck/bf16_gradient_agreement.py measures
// autocast bf16 against fp32 on the same model and batch at worst tensor
// 0.9932, all 0.99897 (bf16 base: 0.9908, 0.99813), and the worst tensor
// moves by 0.003-0.005 with the LoRA values. The worst tensors are early
// layers' q/k/v in both, where the backward pass has gone through the
// bf16 GEMMs of the layers above. A real bug (a wrong head, a lost term, a
// wrong mask) gives cosines far below these bars.
#include <doctest/doctest.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <string>
#include <vector>

#include "adamw.h"
#include "dora.h"
#include "trainer/base_weights.h"
#include "gpu_test_util.h"
#include "lora.h"
#include "model.h"
#include "tokenizer.h"
#include "trainer/grad_scaler.h"
#include "trainer/train_gpu.h"
#include "trainer/train_step.h"

// The loss scale a training step runs with, as ./train's: GradScaler's initial
// scale in fp16 (QLORA_GPU_PRECISION=fp16; without it small gradients
// underflow fp16), 1 in bf16. unscale_grads divides it out again, as ./train
// does before clipping.
static double step_loss_scale(void) { return gpu_act16() == ACT16_FP16 ? GRAD_SCALER_INIT_SCALE : 1.0; }
static void unscale_grads(GpuTrainer *g) { gpu_scale_grads(g, (float)(1.0 / step_loss_scale())); }

static Config small_config(int attention_bias) {
    Config c;
    memset(&c, 0, sizeof c);
    c.arch = attention_bias ? ARCH_QWEN2 : ARCH_LLAMA;
    c.dim = 128; c.hidden_dim = 352; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2; c.head_dim = 32;
    c.vocab_size = 503; c.max_seq_len = 256; c.norm_eps = 1e-5f; c.rope_theta = 10000.0f;
    c.attention_bias = attention_bias; c.tied_embeddings = 1;
    return c;
}

// small_config with head_dim 64, the tensor-core flash kind's (2 query heads on 1 kv head).
static Config small_head64_config(void) {
    Config c = small_config(0);
    c.n_heads = 2; c.n_kv_heads = 1; c.head_dim = 64;
    return c;
}

static Config smollm2_135m_config(void) {
    Config c;
    memset(&c, 0, sizeof c);
    c.arch = ARCH_LLAMA;
    c.dim = 576; c.hidden_dim = 1536; c.n_layers = 30; c.n_heads = 9; c.n_kv_heads = 3; c.head_dim = 64;
    c.vocab_size = 49152; c.max_seq_len = 8192; c.norm_eps = 1e-5f; c.rope_theta = 100000.0f; c.tied_embeddings = 1;
    return c;
}

// Random tokens, and targets = the next token with every third one (and the
// last of each sequence) masked out, as answer-only data would be.
static void random_batch(std::vector<int> &tokens, std::vector<int> &targets, int n_seqs, int seq_len, int vocab,
                         uint64_t seed) {
    std::vector<float> r = random_vector((size_t)n_seqs * seq_len, seed, 1.0f);
    tokens.resize(r.size());
    targets.resize(r.size());
    for (size_t i = 0; i < r.size(); i++) tokens[i] = (int)((r[i] + 1.0f) * 0.5f * (vocab - 1));
    for (int s = 0; s < n_seqs; s++)
        for (int t = 0; t < seq_len; t++) {
            size_t i = (size_t)s * seq_len + t;
            targets[i] = (t + 1 < seq_len && t % 3 != 0) ? tokens[i + 1] : IGNORE_TARGET;
        }
}

// B random (peft starts it at 0, which would make every dA zero).
static void randomize_B(LoraSet *set, uint64_t seed) {
    for (int i = 0; i < set->n_layers * N_LINEARS; i++) {
        LoraAdapter *a = &set->adapters[i];
        if (!a->A) continue;
        std::vector<float> b = random_vector((size_t)a->out_dim * a->rank, seed + i, 0.05f);
        memcpy(a->B, b.data(), sizeof(float) * b.size());
    }
}

static std::vector<AdapterParams<float>> adapter_views(LoraSet *set) {
    std::vector<AdapterParams<float>> views;
    for (int i = 0; i < set->n_layers * N_LINEARS; i++) {
        LoraAdapter *a = &set->adapters[i];
        views.push_back({a->A, a->B, a->dA, a->dB, a->m, a->dm});
    }
    return views;
}

// Running sums for the cosine of all gradient tensors laid end to end.
struct TotalCosine {
    double dot = 0, got_sq = 0, want_sq = 0;
    void add(const float *got, const float *want, size_t n) {
        for (size_t i = 0; i < n; i++) {
            dot += (double)got[i] * want[i];
            got_sq += (double)got[i] * got[i];
            want_sq += (double)want[i] * want[i];
        }
    }
    // cos = <got, want> / (|got| |want|)
    double value() const { return dot / sqrt(got_sq * want_sq); }
};

// The base's precision and the adapted projections: NF4 + double quant on all
// seven, plain LoRA, unless a test says otherwise.
struct BaseAndTargets {
    QuantMode quant = QUANT_NF4;
    int double_quant = 1;
    int enabled[N_LINEARS] = {1, 1, 1, 1, 1, 1, 1};
    int dora = 0;
};

// DoRA's m from the base (with B already random), then moved off it by up to
// 20% per row, so that g = m / ||W + s B A|| is not 1.
static void init_random_magnitudes(LoraSet *set, const Model &model, const BaseAndTargets &variant, uint64_t seed) {
    REQUIRE(dora_init_magnitudes(set, &model, variant.quant == QUANT_NF4, variant.double_quant) == 0);
    for (int i = 0; i < set->n_layers * N_LINEARS; i++) {
        LoraAdapter *a = &set->adapters[i];
        if (!a->m) continue;
        std::vector<float> r = random_vector((size_t)a->out_dim, seed + 7 * i, 0.2f);
        for (int j = 0; j < a->out_dim; j++) a->m[j] *= 1.0f + r[j];
    }
}

// One micro-batch of model on both paths; checks the loss, every gradient
// tensor's cosine (> min_cosine) and that of all of them together (> min_total).
static void compare_step(Model &model, const Batch &batch, float dropout, int recompute, AttentionKernel attention,
                         double min_cosine, double min_total, uint64_t seed,
                         const BaseAndTargets &variant = BaseAndTargets()) {
    const Config &c = model.config;
    std::string kind = attention_kind_name(attention);
    INFO("seed " << seed << ", dropout " << dropout << ", recompute " << recompute << ", dora " << variant.dora
                  << ", bias " << c.attention_bias
                  << ", attention " << kind << ", quant " << std::string(variant.quant == QUANT_NF4 ? "nf4" : "none")
                  << ", double quant " << variant.double_quant);
    LoraSet cpu_lora, gpu_lora;
    REQUIRE(lora_set_init(&cpu_lora, &c, variant.enabled, 8, 16.0f, 0, dropout, seed, variant.dora) == 0);
    REQUIRE(lora_set_init(&gpu_lora, &c, variant.enabled, 8, 16.0f, 0, dropout, seed, variant.dora) == 0);
    randomize_B(&cpu_lora, seed);
    randomize_B(&gpu_lora, seed);
    if (variant.dora) {
        init_random_magnitudes(&cpu_lora, model, variant, seed);
        init_random_magnitudes(&gpu_lora, model, variant, seed);
    }
    StepOptions opt = {8, 2.0f, dropout, seed * 31 + 7, recompute};
    int n_seqs = batch.n_seqs, seq_len = batch.seq_len;

    BaseWeights base;
    REQUIRE(base_weights_init(&base, &model, variant.quant, variant.double_quant) == 0);
    std::vector<AdapterParams<float>> views = adapter_views(&cpu_lora);
    int cpu_counted = 0, gpu_counted = 0;
    double grad_scale = 0.01;
    double cpu_loss = train_step_cpu(&c, &base.source, views.data(), &opt, &batch, grad_scale, &cpu_counted);

    GpuTrainer g;
    gpu_trainer_init(&g, &model, variant.quant, variant.double_quant, &gpu_lora, &opt, n_seqs, seq_len);
    gpu_trainer_set_attention(&g, attention);
    gpu_zero_grads(&g);
    double gpu_loss_sum =
        gpu_train_micro_batch(&g, &batch, opt.dropout_seed, grad_scale * step_loss_scale(), &gpu_counted);
    unscale_grads(&g);
    gpu_download_lora(&g, &gpu_lora, NULL);
    gpu_trainer_free(&g);

    CHECK(gpu_counted == cpu_counted);
    // bf16 activations: the summed loss within 1e-2 relative
    CHECK(fabs(gpu_loss_sum - cpu_loss) <= 1e-2 * fabs(cpu_loss));
    double worst = 1.0;
    int under_0999 = 0, n_tensors = 0;
    TotalCosine total;
    for (int i = 0; i < c.n_layers * N_LINEARS; i++) {
        LoraAdapter *ca = &cpu_lora.adapters[i], *ga = &gpu_lora.adapters[i];
        if (!ca->A) continue;   // a target without an adapter
        n_tensors += 2;
        size_t na = (size_t)ca->rank * ca->in_dim, nb = (size_t)ca->out_dim * ca->rank;
        double cos_a = cosine_similarity(ga->dA, ca->dA, na);
        double cos_b = cosine_similarity(ga->dB, ca->dB, nb);
        total.add(ga->dA, ca->dA, na);
        total.add(ga->dB, ca->dB, nb);
        under_0999 += (cos_a <= 0.999) + (cos_b <= 0.999);
        double cos_m = 1.0;
        if (ca->m) {
            n_tensors++;
            cos_m = cosine_similarity(ga->dm, ca->dm, (size_t)ca->out_dim);
            total.add(ga->dm, ca->dm, (size_t)ca->out_dim);
            under_0999 += cos_m <= 0.999;
        }
        std::string target = LINEAR_NAMES[i % N_LINEARS];
        INFO("layer " << i / N_LINEARS << " " << target << ": cos dA " << cos_a << ", cos dB " << cos_b << ", cos dm "
                      << cos_m);
        CHECK(cos_a > min_cosine);
        CHECK(cos_b > min_cosine);
        CHECK(cos_m > min_cosine);
        worst = fmin(worst, fmin(cos_m, fmin(cos_a, cos_b)));
    }
    CHECK(total.value() > min_total);
    MESSAGE(kind << " attention: loss cpu " << cpu_loss << " gpu " << gpu_loss_sum << ", worst gradient cosine "
                 << worst << ", all together " << total.value() << ", " << under_0999 << " of " << n_tensors
                 << " tensors at or under 0.999");
    base_weights_free(&base);
    lora_set_free(&cpu_lora);
    lora_set_free(&gpu_lora);
}

// A random model of shape c on a random batch of n_seqs x seq_len tokens.
static void compare_random_step(const Config &c, int n_seqs, int seq_len, float dropout, int recompute,
                                AttentionKernel attention, double min_cosine, double min_total, uint64_t seed,
                                const BaseAndTargets &variant = BaseAndTargets()) {
    char err[256];
    Model model;
    REQUIRE(model_init_random(&model, &c, seed, err, sizeof err) == 0);
    std::vector<int> tokens, targets;
    random_batch(tokens, targets, n_seqs, seq_len, c.vocab_size, seed);
    Batch batch = {tokens.data(), targets.data(), n_seqs, seq_len, NULL, NULL};
    compare_step(model, batch, dropout, recompute, attention, min_cosine, min_total, seed, variant);
    model_free(&model);
}

// Appends text's tokens to seq; their targets (the next token) count only
// when answer is set, as in answer-only RAFT data.
static void append_text(const Tokenizer *tok, const char *text, int answer, std::vector<int> &seq,
                        std::vector<int> &counted) {
    int *ids = NULL;
    int n = tokenizer_encode(tok, text, strlen(text), 0, &ids);
    REQUIRE(n > 0);
    for (int i = 0; i < n; i++) {
        seq.push_back(ids[i]);
        counted.push_back(answer);
    }
    free(ids);
}

// Two question + document + answer samples, padded to one length; targets
// are the next token on the answer's positions and IGNORE_TARGET elsewhere.
static void answer_only_batch(const Tokenizer *tok, std::vector<int> &tokens, std::vector<int> &targets,
                              int *seq_len) {
    const char *samples[2][2] = {
        {"Document: The Debian package manager dpkg installs .deb files; apt fetches them and their "
         "dependencies from the archive.\nQuestion: Which tool downloads the dependencies of a package?\nAnswer:",
         " apt downloads a package and its dependencies from the Debian archive, and dpkg installs them."},
        {"Document: Debian releases are named after characters from the Toy Story films; the unstable "
         "distribution is always called sid.\nQuestion: What is the unstable distribution called?\nAnswer:",
         " It is always called sid, after the boy next door in Toy Story."}};
    std::vector<int> seqs[2], counted[2];
    for (int s = 0; s < 2; s++) {
        append_text(tok, samples[s][0], 0, seqs[s], counted[s]);
        append_text(tok, samples[s][1], 1, seqs[s], counted[s]);
    }
    *seq_len = (int)std::max(seqs[0].size(), seqs[1].size());
    int pad = tokenizer_eos_id(tok) >= 0 ? tokenizer_eos_id(tok) : 0;
    for (int s = 0; s < 2; s++)
        for (int t = 0; t < *seq_len; t++) {
            int has_next = t + 1 < (int)seqs[s].size();
            tokens.push_back(t < (int)seqs[s].size() ? seqs[s][t] : pad);
            targets.push_back(has_next && counted[s][t + 1] ? seqs[s][t + 1] : IGNORE_TARGET);
        }
}

// `make test` fetches the default model; `make test-gpu` does not need it, and
// counts this test as skipped without it.
static bool default_model_missing(void) {
    FILE *f = fopen(DEFAULT_MODEL, "rb");
    if (!f) return true;
    fclose(f);
    return false;
}

TEST_CASE("gpu train step: the default model on an answer-only batch of text equals the CPU path" *
          doctest::skip(default_model_missing())) {
    char err[512];
    Model model;
    REQUIRE_MESSAGE(model_load(&model, DEFAULT_MODEL, err, sizeof err) == 0, err);
    std::vector<int> tokens, targets;
    int seq_len = 0;
    answer_only_batch(model.tokenizer, tokens, targets, &seq_len);
    Batch batch = {tokens.data(), targets.data(), 2, seq_len, NULL, NULL};
    uint64_t seed = fresh_seed();
    compare_step(model, batch, 0.05f, 1, ATTENTION_FLASH, 0.95, 0.996, seed);
    compare_step(model, batch, 0.05f, 1, ATTENTION_SIMPLE, 0.95, 0.996, seed);
    model_free(&model);
}

TEST_CASE("gpu train step: loss and LoRA gradients equal the CPU path (small model, NF4 + DQ)") {
    uint64_t seed = fresh_seed();
    compare_random_step(small_config(0), 2, 33, 0.0f, 0, ATTENTION_SIMPLE, 0.999, 0.9998, seed);
    compare_random_step(small_config(0), 2, 33, 0.1f, 0, ATTENTION_FLASH, 0.999, 0.9998, seed + 1);
    compare_random_step(small_config(0), 3, 20, 0.1f, 1, ATTENTION_SIMPLE, 0.999, 0.9998, seed + 2);
    compare_random_step(small_config(1), 2, 33, 0.0f, 1, ATTENTION_FLASH, 0.999, 0.9998, seed + 3);
}

// DoRA (dora.h): the same step with magnitude vectors, m off the norms so that
// g != 1; dm's cosine is held to the same bars as dA's and dB's.
TEST_CASE("gpu train step: DoRA's loss and gradients (dA, dB, dm) equal the CPU path (small model)") {
    uint64_t seed = fresh_seed();
    BaseAndTargets dora, dora_bf16_q_v;
    dora.dora = dora_bf16_q_v.dora = 1;
    dora_bf16_q_v.quant = QUANT_NONE;
    for (int t = 0; t < N_LINEARS; t++) dora_bf16_q_v.enabled[t] = t == LINEAR_Q || t == LINEAR_V;
    compare_random_step(small_config(0), 2, 33, 0.0f, 0, ATTENTION_SIMPLE, 0.999, 0.9998, seed, dora);
    compare_random_step(small_config(1), 2, 33, 0.1f, 1, ATTENTION_FLASH, 0.999, 0.9998, seed + 1, dora);
    compare_random_step(small_config(0), 3, 20, 0.1f, 0, ATTENTION_SIMPLE, 0.999, 0.9998, seed + 2, dora_bf16_q_v);
}

TEST_CASE("gpu train step: a bf16 base, NF4 without double quant, and only q and v adapted (small model)") {
    uint64_t seed = fresh_seed();
    BaseAndTargets bf16_base, nf4_plain, q_and_v;
    bf16_base.quant = QUANT_NONE;
    nf4_plain.double_quant = 0;
    for (int t = 0; t < N_LINEARS; t++) q_and_v.enabled[t] = t == LINEAR_Q || t == LINEAR_V;
    compare_random_step(small_config(0), 2, 33, 0.0f, 0, ATTENTION_SIMPLE, 0.999, 0.9998, seed, bf16_base);
    compare_random_step(small_config(0), 2, 33, 0.1f, 1, ATTENTION_FLASH, 0.999, 0.9998, seed + 1, nf4_plain);
    compare_random_step(small_config(1), 2, 33, 0.1f, 0, ATTENTION_SIMPLE, 0.999, 0.9998, seed + 2, q_and_v);
}

// Samples of random lengths packed into n_seqs rows of seq_len (positions
// restart per sample); every token but a sample's last has its next token as
// target, weighted 1 (every third: "answer") or prompt_weight.
struct PackedBatch {
    std::vector<int> tokens, targets, positions;
    std::vector<float> weights;
};

static PackedBatch random_packed_batch(int n_seqs, int seq_len, int vocab, float prompt_weight, uint64_t seed) {
    PackedBatch p;
    random_batch(p.tokens, p.targets, n_seqs, seq_len, vocab, seed);
    p.positions.resize(p.tokens.size());
    p.weights.resize(p.tokens.size());
    std::vector<float> r = random_vector(p.tokens.size(), seed + 1, 1.0f);
    for (int s = 0; s < n_seqs; s++) {
        int position = 0;
        for (int t = 0; t < seq_len; t++) {
            size_t i = (size_t)s * seq_len + t;
            // a new sample starts here about one time in eight, and always at the row's start
            if (t == 0 || r[i] > 0.75f) position = 0;
            p.positions[i] = position++;
        }
        for (int t = 0; t < seq_len; t++) {
            size_t i = (size_t)s * seq_len + t;
            bool last = t + 1 == seq_len || p.positions[i + 1] == 0;
            p.targets[i] = last ? IGNORE_TARGET : p.tokens[i + 1];
            p.weights[i] = last ? 0.0f : t % 3 == 2 ? 1.0f : prompt_weight;
        }
    }
    return p;
}

TEST_CASE("gpu train step: packed samples with prompt-loss weights equal the CPU path (small model)") {
    uint64_t seed = fresh_seed();
    char err[256];
    Model model;
    Config c = small_config(0);
    REQUIRE(model_init_random(&model, &c, seed, err, sizeof err) == 0);
    PackedBatch packed = random_packed_batch(2, 70, c.vocab_size, 0.3f, seed);
    Batch batch = {packed.tokens.data(), packed.targets.data(), 2, 70, packed.weights.data(),
                   packed.positions.data()};
    compare_step(model, batch, 0.0f, 0, ATTENTION_SIMPLE, 0.999, 0.9998, seed);
    compare_step(model, batch, 0.1f, 1, ATTENTION_FLASH, 0.999, 0.9998, seed + 1);
    model_free(&model);
}

// The trainer's default kind on sm_80 and newer (mma.sync m16n8k16 with 16-bit inputs).
TEST_CASE("gpu train step: with flash attention on tensor cores equals the CPU path (small model, head_dim 64)") {
    if (gpu_compute_capability() < 80) {
        MESSAGE("skipped: mma.sync m16n8k16 with 16-bit inputs needs sm_80 or newer");
        return;
    }
    uint64_t seed = fresh_seed();
    compare_random_step(small_head64_config(), 2, 70, 0.1f, 1, ATTENTION_FLASH_TC, 0.999, 0.9998, seed);
    char err[256];
    Model model;
    Config c = small_head64_config();
    REQUIRE(model_init_random(&model, &c, seed + 1, err, sizeof err) == 0);
    PackedBatch packed = random_packed_batch(2, 70, c.vocab_size, 0.3f, seed + 1);
    Batch batch = {packed.tokens.data(), packed.targets.data(), 2, 70, packed.weights.data(),
                   packed.positions.data()};
    compare_step(model, batch, 0.0f, 0, ATTENTION_FLASH_TC, 0.999, 0.9998, seed + 1);
    model_free(&model);
}

// The GPU's loss and gradients of one micro-batch (no dropout), from fresh adapters of seed.
static double gpu_step(Model &model, const Batch &batch, uint64_t seed, LoraSet *lora, int max_seqs, int max_len) {
    const Config &c = model.config;
    int enabled[N_LINEARS] = {1, 1, 1, 1, 1, 1, 1};
    REQUIRE(lora_set_init(lora, &c, enabled, 8, 16.0f, 0, 0.0f, seed, 0) == 0);
    randomize_B(lora, seed);
    StepOptions opt = {8, 2.0f, 0.0f, 1, 0};
    GpuTrainer g;
    gpu_trainer_init(&g, &model, QUANT_NF4, 1, lora, &opt, max_seqs, max_len);
    gpu_zero_grads(&g);
    int counted = 0;
    double loss = gpu_train_micro_batch(&g, &batch, 1, 0.05 * step_loss_scale(), &counted);
    unscale_grads(&g);
    gpu_download_lora(&g, lora, NULL);
    gpu_trainer_free(&g);
    return loss;
}

// --pack on the GPU: three samples in one row against the same samples as three
// padded rows, both on the GPU; bf16 GEMMs of other shapes sum in another order,
// so the bars are the GPU-vs-CPU ones.
TEST_CASE("gpu train step: packed samples give the unpacked batch's loss and gradients") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    char err[256];
    Model model;
    Config c = small_config(0);
    REQUIRE(model_init_random(&model, &c, seed, err, sizeof err) == 0);
    const int lengths[3] = {23, 40, 17}, longest = 40, total = 80;
    std::vector<int> tokens, targets;
    random_batch(tokens, targets, 1, total, c.vocab_size, seed);
    std::vector<int> positions(total), row_tokens(3 * longest), row_targets(3 * longest, IGNORE_TARGET);
    for (int sample = 0, start = 0; sample < 3; start += lengths[sample], sample++) {
        targets[start + lengths[sample] - 1] = IGNORE_TARGET;   // a sample's last token learns nothing
        for (int t = 0; t < longest; t++) {
            int from = start + (t < lengths[sample] ? t : lengths[sample] - 1);
            row_tokens[sample * longest + t] = tokens[from];
            if (t < lengths[sample]) {
                positions[start + t] = t;
                row_targets[sample * longest + t] = targets[start + t];
            }
        }
    }
    Batch one_row = {tokens.data(), targets.data(), 1, total, NULL, positions.data()};
    Batch three_rows = {row_tokens.data(), row_targets.data(), 3, longest, NULL, NULL};
    LoraSet packed, unpacked;
    double loss_packed = gpu_step(model, one_row, seed, &packed, 3, total);
    double loss_unpacked = gpu_step(model, three_rows, seed, &unpacked, 3, total);
    CHECK(fabs(loss_packed - loss_unpacked) <= 1e-2 * fabs(loss_unpacked));
    TotalCosine all;
    double worst = 1.0;
    for (int i = 0; i < c.n_layers * N_LINEARS; i++) {
        LoraAdapter *p = &packed.adapters[i], *u = &unpacked.adapters[i];
        size_t na = (size_t)p->rank * p->in_dim, nb = (size_t)p->out_dim * p->rank;
        worst = fmin(worst, fmin(cosine_similarity(p->dA, u->dA, na), cosine_similarity(p->dB, u->dB, nb)));
        all.add(p->dA, u->dA, na);
        all.add(p->dB, u->dB, nb);
    }
    CHECK(worst > 0.999);
    CHECK(all.value() > 0.9998);
    MESSAGE("packed vs unpacked on the GPU: loss " << loss_packed << " vs " << loss_unpacked << ", worst cosine "
                                                   << worst << ", all " << all.value());
    lora_set_free(&packed);
    lora_set_free(&unpacked);
    model_free(&model);
}

// What ./train calls besides the micro-batch: the validation loss, the global
// gradient norm, the clipping scale, and the upload of a resumed checkpoint.
TEST_CASE("gpu trainer: validation loss, gradient norm and scaling, and the resume upload equal the host's") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    Config c = small_config(0);
    char err[256];
    Model model;
    REQUIRE(model_init_random(&model, &c, seed, err, sizeof err) == 0);
    int enabled[N_LINEARS] = {1, 1, 1, 1, 1, 1, 1};
    LoraSet lora;
    REQUIRE(lora_set_init(&lora, &c, enabled, 8, 16.0f, 0, 0.0f, seed, 0) == 0);
    randomize_B(&lora, seed);
    std::vector<int> tokens, targets;
    random_batch(tokens, targets, 2, 33, c.vocab_size, seed);
    Batch batch = {tokens.data(), targets.data(), 2, 33, NULL, NULL};
    StepOptions opt = {8, 2.0f, 0.0f, 0, 0};
    BaseWeights base;
    REQUIRE(base_weights_init(&base, &model, QUANT_NF4, 1) == 0);
    std::vector<AdapterParams<float>> views = adapter_views(&lora);
    int cpu_counted = 0, val_counted = 0, train_counted = 0;
    double cpu_loss = loss_cpu(&c, &base.source, views.data(), &opt, &batch, &cpu_counted);

    GpuTrainer g;
    gpu_trainer_init(&g, &model, QUANT_NF4, 1, &lora, &opt, 2, 33);
    // the validation loss: the CPU's within bf16's 1e-2, and the training step's (the same forward)
    double val_loss = gpu_loss(&g, &batch, &val_counted);
    CHECK(val_counted == cpu_counted);
    CHECK(fabs(val_loss - cpu_loss) <= 1e-2 * fabs(cpu_loss));
    gpu_zero_grads(&g);
    double train_loss = gpu_train_micro_batch(&g, &batch, 0, 1.0, &train_counted);
    CHECK(train_counted == val_counted);
    CHECK(fabs(train_loss - val_loss) <= 1e-4 * fabs(val_loss));

    // the global gradient norm of the gradients as downloaded (both sum in double)
    gpu_download_lora(&g, &lora, NULL);
    double norm = global_grad_norm(lora.grads, lora.n_params);
    CHECK(norm > 0.0);
    CHECK(fabs(gpu_grad_norm(&g) - norm) <= 1e-12 * norm);
    // clipping's scale: g = g * s in fp32 on both, so bit for bit
    scale_grads_cpu(lora.grads, lora.n_params, 0.37f);
    gpu_scale_grads(&g, 0.37f);
    LoraSet scaled;
    REQUIRE(lora_set_init(&scaled, &c, enabled, 8, 16.0f, 0, 0.0f, seed, 0) == 0);
    gpu_download_lora(&g, &scaled, NULL);
    CHECK(memcmp(scaled.grads, lora.grads, sizeof(float) * lora.n_params) == 0);

    // a resumed checkpoint: parameters, moments and step go up and come back bit for bit
    AdamWState adam, adam_back;
    REQUIRE(adamw_init(&adam, lora.n_params) == 0);
    REQUIRE(adamw_init(&adam_back, lora.n_params) == 0);
    std::vector<float> p = random_vector(lora.n_params, seed + 100, 0.1f);
    std::vector<float> m = random_vector(lora.n_params, seed + 102, 0.01f);
    std::vector<float> v = random_vector(lora.n_params, seed + 104, 0.01f);
    for (size_t j = 0; j < lora.n_params; j++) {
        lora.params[j] = p[j];
        adam.m[j] = m[j];
        adam.v[j] = v[j] * v[j];
    }
    adam.step = 7;
    gpu_upload_lora(&g, &lora, &adam);
    // the next step uses the uploaded values (the bf16 copy is refreshed): the CPU's gradient norm
    lora_set_zero_grads(&lora);
    train_step_cpu(&c, &base.source, views.data(), &opt, &batch, 1.0, &cpu_counted);
    double resumed_norm = global_grad_norm(lora.grads, lora.n_params);
    gpu_zero_grads(&g);
    gpu_train_micro_batch(&g, &batch, 0, 1.0, &train_counted);
    CHECK(fabs(gpu_grad_norm(&g) - resumed_norm) <= 1e-2 * resumed_norm);
    gpu_download_lora(&g, &scaled, &adam_back);
    CHECK(memcmp(scaled.params, lora.params, sizeof(float) * lora.n_params) == 0);
    CHECK(adam_back.step == 7);
    CHECK(memcmp(adam_back.m, adam.m, sizeof(float) * adam.n) == 0);
    CHECK(memcmp(adam_back.v, adam.v, sizeof(float) * adam.n) == 0);
    gpu_trainer_free(&g);
    adamw_free(&adam);
    adamw_free(&adam_back);
    base_weights_free(&base);
    lora_set_free(&lora);
    lora_set_free(&scaled);
    model_free(&model);
}

TEST_CASE("gpu train step: SmolLM2-135M shape with random weights equals the CPU path") {
    uint64_t seed = fresh_seed();
    compare_random_step(smollm2_135m_config(), 2, 64, 0.05f, 1, ATTENTION_FLASH, 0.997, 0.9998, seed);
    compare_random_step(smollm2_135m_config(), 2, 64, 0.05f, 1, ATTENTION_SIMPLE, 0.997, 0.9998, seed);
}

TEST_CASE("gpu training: 20 AdamW steps follow the CPU loss curve") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    Config c = small_config(0);
    char err[256];
    Model model;
    REQUIRE(model_init_random(&model, &c, seed, err, sizeof err) == 0);
    int enabled[N_LINEARS] = {1, 1, 1, 1, 1, 1, 1};
    LoraSet cpu_lora, gpu_lora;
    REQUIRE(lora_set_init(&cpu_lora, &c, enabled, 8, 16.0f, 0, 0.0f, seed, 0) == 0);
    REQUIRE(lora_set_init(&gpu_lora, &c, enabled, 8, 16.0f, 0, 0.0f, seed, 0) == 0);
    std::vector<int> tokens, targets;
    random_batch(tokens, targets, 2, 40, c.vocab_size, seed);
    Batch batch = {tokens.data(), targets.data(), 2, 40, NULL, NULL};
    StepOptions opt = {8, 2.0f, 0.0f, 0, 1};
    BaseWeights base;
    REQUIRE(base_weights_init(&base, &model, QUANT_NF4, 1) == 0);
    std::vector<AdapterParams<float>> views = adapter_views(&cpu_lora);
    AdamWState adam;
    REQUIRE(adamw_init(&adam, cpu_lora.n_params) == 0);
    AdamWConfig config = adamw_default_config();
    config.weight_decay = 0.01f;
    float lr = 3e-3f;
    GpuTrainer g;
    gpu_trainer_init(&g, &model, QUANT_NF4, 1, &gpu_lora, &opt, 2, 40);
    double first_cpu = 0, last_cpu = 0, worst = 0;
    for (int step = 0; step < 20; step++) {
        int counted = 0;
        lora_set_zero_grads(&cpu_lora);
        double cpu_loss = train_step_cpu(&c, &base.source, views.data(), &opt, &batch, 1.0, &counted);
        double scale = 1.0 / counted;
        cpu_loss *= scale;
        scale_grads_cpu(cpu_lora.grads, cpu_lora.n_params, (float)scale);
        adamw_step_cpu(cpu_lora.params, cpu_lora.grads, &adam, &config, lr);
        gpu_zero_grads(&g);
        double gpu_loss_value = gpu_train_micro_batch(&g, &batch, 0, scale * step_loss_scale(), &counted) * scale;
        unscale_grads(&g);
        gpu_adamw_step(&g, &config, lr);
        double rel = fabs(gpu_loss_value - cpu_loss) / fabs(cpu_loss);
        worst = fmax(worst, rel);
        INFO("step " << step + 1 << ": cpu " << cpu_loss << " gpu " << gpu_loss_value);
        // bf16 differences compound over the steps: the worst gap measured on an
        // H100 (2026-11-26, 19 runs) was 0.25%; the bar is 4x that
        CHECK(rel < 1e-2);
        if (step == 0) first_cpu = cpu_loss;
        last_cpu = cpu_loss;
    }
    MESSAGE("20 steps: cpu loss " << first_cpu << " -> " << last_cpu << ", worst relative gap " << worst);
    CHECK(last_cpu < first_cpu);   // the run actually trains
    gpu_trainer_free(&g);
    adamw_free(&adam);
    base_weights_free(&base);
    lora_set_free(&cpu_lora);
    lora_set_free(&gpu_lora);
    model_free(&model);
}
