// test_gpu_placement.cu: where the GPU trainer keeps its state changes no bit of
// the result. --paged-optim (AdamW's m and v in managed memory, prefetched for
// each update), --offload (recompute's block inputs in pinned host memory,
// copied out and back on a second stream, trainer/offload.h) and both, against
// neither: a few optimizer steps of a small random model (two micro-batches a
// step, dropout, clipping, a validation loss each step) give the same losses,
// gradient norms, parameters and moments, bit for bit; and a trainer of each
// placement that takes over from a downloaded state (a resume) goes on with the
// same step. A step allocates no device memory under any placement (every buffer
// and workspace is sized at creation). And ./train --plan's arithmetic
// (trainer/memory_plan.h) counts the activations, paged and offloaded bytes the
// trainer allocates, and in all what it holds, to a few hundred bytes. On the CPU
// emulation (dev/cuda_on_cpu) the copy stream runs its copies as late as the
// events allow, so a missing wait shows here (dev/cuda_on_cpu/mutate.sh removes
// each one).
#include <doctest/doctest.h>
#include <math.h>
#include <string.h>
#include <string>
#include <vector>

#include "adamw.h"
#include "gpu_test_util.h"
#include "lora.h"
#include "model.h"
#include "ops/cross_entropy.h"
#include "trainer/grad_scaler.h"
#include "trainer/memory_plan.h"
#include "trainer/train_gpu.h"

// Odd and more than three layers: the two offload slots are each reused, and the
// last block's input (which never leaves the GPU) sits in slot 0.
static Config placement_config(void) {
    Config c;
    memset(&c, 0, sizeof c);
    c.arch = ARCH_LLAMA;
    c.dim = 64; c.hidden_dim = 160; c.n_layers = 5; c.n_heads = 4; c.n_kv_heads = 2; c.head_dim = 16;
    c.vocab_size = 211; c.max_seq_len = 128; c.norm_eps = 1e-5f; c.rope_theta = 10000.0f; c.tied_embeddings = 1;
    return c;
}

static const int N_SEQS = 2, SEQ_LEN = 24, MICRO_BATCHES = 2, STEPS = 3;

// Random tokens; targets the next token with every third masked (answer-only data).
struct TokenBatch {
    std::vector<int> tokens, targets;
    Batch batch() const { return {tokens.data(), targets.data(), N_SEQS, SEQ_LEN, NULL, NULL}; }
};

static TokenBatch random_tokens(int vocab, uint64_t seed) {
    TokenBatch b;
    std::vector<float> r = random_vector((size_t)N_SEQS * SEQ_LEN, seed, 1.0f);
    for (size_t i = 0; i < r.size(); i++) b.tokens.push_back((int)((r[i] + 1.0f) * 0.5f * (vocab - 1)));
    for (size_t i = 0; i < r.size(); i++) {
        int t = (int)(i % SEQ_LEN);
        b.targets.push_back(t + 1 < SEQ_LEN && t % 3 != 0 ? b.tokens[i + 1] : IGNORE_TARGET);
    }
    return b;
}

// What one optimizer step measured.
struct StepRecord {
    double train_loss, grad_norm, val_loss;
};

// One step as ./train takes it: MICRO_BATCHES micro-batches (each its own
// dropout seed), the loss scaled in fp16, the norm, clipping to 1, AdamW; then
// the validation loss.
static StepRecord train_step(GpuTrainer *g, const std::vector<TokenBatch> &data, int step) {
    double loss_scale = gpu_act16() == ACT16_FP16 ? GRAD_SCALER_INIT_SCALE : 1.0;
    StepRecord r = {0, 0, 0};
    int counted = 0;
    gpu_zero_grads(g);
    for (int m = 0; m < MICRO_BATCHES; m++) {
        Batch b = data[(size_t)step * MICRO_BATCHES + m].batch();
        int n = 0;
        r.train_loss += gpu_train_micro_batch(g, &b, 1000 + 17 * step + m, loss_scale / 100.0, &n);
        counted += n;
    }
    gpu_scale_grads(g, (float)(1.0 / loss_scale));
    r.grad_norm = gpu_grad_norm(g);
    gpu_scale_grads(g, clip_scale(r.grad_norm, 1.0f));
    AdamWConfig config = adamw_default_config();
    config.weight_decay = 0.01f;
    gpu_adamw_step(g, &config, 3e-3f);
    Batch val = data.back().batch();
    int val_counted = 0;
    r.val_loss = gpu_loss(g, &val, &val_counted);
    r.train_loss /= counted;
    return r;
}

// A run of one placement: its steps, its final state, and the step a fresh
// trainer of the same placement takes from that state (uploaded, as a resume does).
struct PlacementRun {
    std::vector<StepRecord> steps;
    StepRecord resumed;
    std::vector<float> params, m, v;
    GpuMemoryUse memory;
};

static PlacementRun run_placement(const Model &model, const LoraSet &initial, const std::vector<TokenBatch> &data,
                                  GpuPlacement placement) {
    StepOptions opt = {8, 2.0f, 0.1f, 0, 1};
    LoraSet lora;
    int enabled[N_LINEARS] = {1, 1, 1, 1, 1, 1, 1};
    REQUIRE(lora_set_init(&lora, &model.config, enabled, 8, 16.0f, 0, 0.1f, 1, 0) == 0);
    memcpy(lora.params, initial.params, sizeof(float) * lora.n_params);
    PlacementRun run;
    GpuTrainer g;
    gpu_trainer_init(&g, &model, QUANT_NF4, 1, &lora, &opt, N_SEQS, SEQ_LEN, &placement);
    run.memory = g.memory;
    for (int step = 0; step < STEPS; step++) run.steps.push_back(train_step(&g, data, step));
    AdamWState adam;
    REQUIRE(adamw_init(&adam, lora.n_params) == 0);
    gpu_download_lora(&g, &lora, &adam);
    run.params.assign(lora.params, lora.params + lora.n_params);
    run.m.assign(adam.m, adam.m + adam.n);
    run.v.assign(adam.v, adam.v + adam.n);
    gpu_trainer_free(&g);
    // the resume: a new trainer, the state uploaded, one more step
    GpuTrainer resumed;
    gpu_trainer_init(&resumed, &model, QUANT_NF4, 1, &lora, &opt, N_SEQS, SEQ_LEN, &placement);
    gpu_upload_lora(&resumed, &lora, &adam);
    run.resumed = train_step(&resumed, data, STEPS);
    gpu_trainer_free(&resumed);
    adamw_free(&adam);
    lora_set_free(&lora);
    return run;
}

static void check_same_bits(const PlacementRun &got, const PlacementRun &want) {
    for (int step = 0; step < STEPS; step++) {
        INFO("step " << step + 1);
        CHECK(got.steps[step].train_loss == want.steps[step].train_loss);
        CHECK(got.steps[step].grad_norm == want.steps[step].grad_norm);
        CHECK(got.steps[step].val_loss == want.steps[step].val_loss);
    }
    CHECK(memcmp(got.params.data(), want.params.data(), sizeof(float) * want.params.size()) == 0);
    CHECK(memcmp(got.m.data(), want.m.data(), sizeof(float) * want.m.size()) == 0);
    CHECK(memcmp(got.v.data(), want.v.data(), sizeof(float) * want.v.size()) == 0);
    INFO("the resumed step");
    CHECK(got.resumed.train_loss == want.resumed.train_loss);
    CHECK(got.resumed.grad_norm == want.resumed.grad_norm);
    CHECK(got.resumed.val_loss == want.resumed.val_loss);
}

TEST_CASE("gpu placement: --paged-optim, --offload and both give the same steps bit for bit") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    Config c = placement_config();
    char err[256];
    Model model;
    REQUIRE(model_init_random(&model, &c, seed, err, sizeof err) == 0);
    // adapters with B random (B = 0 would make the first step's dA zero)
    LoraSet initial;
    int enabled[N_LINEARS] = {1, 1, 1, 1, 1, 1, 1};
    REQUIRE(lora_set_init(&initial, &c, enabled, 8, 16.0f, 0, 0.1f, seed, 0) == 0);
    std::vector<float> b = random_vector(initial.n_params, seed + 1, 0.05f);
    for (int i = 0; i < c.n_layers * N_LINEARS; i++) {
        LoraAdapter *a = &initial.adapters[i];
        memcpy(a->B, b.data(), sizeof(float) * a->out_dim * a->rank);
    }
    // the steps' micro-batches, then one more step's, then the validation batch
    std::vector<TokenBatch> data;
    for (int i = 0; i < (STEPS + 1) * MICRO_BATCHES + 1; i++)
        data.push_back(random_tokens(c.vocab_size, seed + 10 + i));

    PlacementRun neither = run_placement(model, initial, data, {0, 0});
    PlacementRun paged = run_placement(model, initial, data, {1, 0});
    PlacementRun offloaded = run_placement(model, initial, data, {0, 1});
    PlacementRun both = run_placement(model, initial, data, {1, 1});
    // finite values that training moved, so that equal bits say something
    CHECK(std::isfinite(neither.resumed.grad_norm));
    CHECK(neither.params[0] != initial.params[0]);
    {
        INFO("paged");
        check_same_bits(paged, neither);
    }
    {
        INFO("offloaded");
        check_same_bits(offloaded, neither);
    }
    {
        INFO("both");
        check_same_bits(both, neither);
    }

    // where the memory went: m and v paged, the stream down to 3 rows with the rest on the host
    size_t state = sizeof(float) * initial.n_params, row = sizeof(float) * N_SEQS * SEQ_LEN * c.dim;
    CHECK(paged.memory.paged == 2 * state);
    CHECK(neither.memory.lora_and_adam - paged.memory.lora_and_adam == 2 * state);
    CHECK(offloaded.memory.offloaded == (size_t)(c.n_layers - 1) * row);
    CHECK(neither.memory.activations - offloaded.memory.activations == (size_t)(c.n_layers + 1 - 3) * row);
    CHECK(both.memory.paged == paged.memory.paged);
    CHECK(both.memory.offloaded == offloaded.memory.offloaded);
    MESSAGE("placement: " << STEPS << " steps + a resumed one, losses " << neither.steps[0].train_loss << " -> "
                          << neither.resumed.train_loss << ", identical with paged AdamW ("
                          << paged.memory.paged / 1024 << " KiB managed) and offload ("
                          << offloaded.memory.offloaded / 1024 << " KiB on the host)");
    lora_set_free(&initial);
    model_free(&model);
}

// No device allocation inside a step: gpu_malloc_count() stays where trainer
// creation left it through a whole optimizer step (micro-batches, gradient norm,
// clipping, AdamW, the validation loss) and a micro-batch with loss weights and
// packed samples (the loss's optional buffers), with and without recompute, with
// paged AdamW and offload, and with DoRA. Every buffer and workspace is sized at creation.
TEST_CASE("gpu placement: a training step allocates no device memory (every placement, LoRA and DoRA)") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    Config c = placement_config();
    char err[256];
    Model model;
    REQUIRE(model_init_random(&model, &c, seed, err, sizeof err) == 0);
    std::vector<TokenBatch> data;
    for (int i = 0; i < MICRO_BATCHES + 1; i++) data.push_back(random_tokens(c.vocab_size, seed + 10 + i));
    // two samples of half a sequence each, every counted target weighing 0.5
    TokenBatch packed = random_tokens(c.vocab_size, seed + 99);
    std::vector<int> positions;
    std::vector<float> weights(packed.tokens.size(), 0.5f);
    for (size_t i = 0; i < packed.tokens.size(); i++) positions.push_back((int)(i % SEQ_LEN) % (SEQ_LEN / 2));
    Batch packed_batch = packed.batch();
    packed_batch.weights = weights.data();
    packed_batch.positions = positions.data();
    int enabled[N_LINEARS] = {1, 1, 1, 1, 1, 1, 1};
    // {dora, recompute, paged AdamW, offload}
    const int runs[4][4] = {{0, 0, 0, 0}, {0, 1, 0, 0}, {0, 1, 1, 1}, {1, 0, 0, 0}};
    for (const int *run : runs) {
        int dora = run[0], recompute = run[1];
        GpuPlacement placement = {run[2], run[3]};
        INFO("dora " << dora << ", recompute " << recompute << ", paged and offload " << placement.offload);
        LoraSet lora;
        REQUIRE(lora_set_init(&lora, &c, enabled, 8, 16.0f, 0, 0.1f, seed, dora) == 0);
        StepOptions opt = {8, 2.0f, 0.1f, 0, recompute};
        GpuTrainer g;
        gpu_trainer_init(&g, &model, QUANT_NF4, 1, &lora, &opt, N_SEQS, SEQ_LEN, &placement);
        size_t mallocs = gpu_malloc_count(), in_use = gpu_bytes_in_use();
        train_step(&g, data, 0);
        // the device's own count after a first step (on a GPU it includes what cuBLAS
        // allocates for itself on first use): no later step moves it either
        size_t device_free = 0, device_total = 0;
        CUDA_CHECK(cudaMemGetInfo(&device_free, &device_total));
        int counted = 0;
        gpu_zero_grads(&g);
        gpu_train_micro_batch(&g, &packed_batch, 7, 1.0, &counted);
        gpu_grad_norm(&g);
        gpu_loss(&g, &packed_batch, &counted);
        CHECK(gpu_malloc_count() == mallocs);
        CHECK(gpu_bytes_in_use() == in_use);
        size_t device_free_after = 0;
        CUDA_CHECK(cudaMemGetInfo(&device_free_after, &device_total));
        CHECK(device_free_after == device_free);
        gpu_trainer_free(&g);
        lora_set_free(&lora);
    }
    model_free(&model);
}

// --plan's activations (the fp32 residual stream and x_mid included), paged and
// offloaded bytes against what the trainer allocated for adapters on `enabled`,
// for each placement; and its total against every byte the trainer holds on the
// device after creation and after a step (the same, as a step allocates
// nothing), within the few bytes the plan leaves out (trainer/memory_plan.h),
// with LoRA and with DoRA.
static void check_plan_counts_allocations(const Model &model, const int enabled[N_LINEARS]) {
    const Config &c = model.config;
    std::vector<TokenBatch> data;
    for (int i = 0; i < MICRO_BATCHES + 1; i++) data.push_back(random_tokens(c.vocab_size, 20 + i));
    const GpuPlacement placements[6] = {{0, 0}, {0, 0}, {1, 0}, {0, 1}, {1, 1}, {0, 0}};
    for (int i = 0; i < 6; i++) {
        int recompute = i > 0, dora = i == 5;
        GpuPlacement placement = placements[i];
        INFO("recompute " << recompute << ", paged " << placement.paged_optim << ", offload " << placement.offload
                          << ", dora " << dora);
        LoraSet lora;
        REQUIRE(lora_set_init(&lora, &c, enabled, 8, 16.0f, 0, 0.0f, 7, dora) == 0);
        StepOptions opt = {8, 2.0f, 0.0f, 0, recompute};
        GpuTrainer g;
        size_t before = gpu_bytes_in_use();
        gpu_trainer_init(&g, &model, QUANT_NF4, 1, &lora, &opt, N_SEQS, SEQ_LEN, &placement);
        size_t created = gpu_bytes_in_use() - before;
        PlanInputs in;
        memset(&in, 0, sizeof in);
        in.batch = N_SEQS;
        in.seq_len = SEQ_LEN;
        in.rank = 8;
        for (int t = 0; t < N_LINEARS; t++) in.enabled[t] = enabled[t];
        in.quant_nf4 = 1;
        in.double_quant = 1;
        in.recompute = recompute;
        in.offload = placement.offload;
        in.paged_optim = placement.paged_optim;
        in.weight_bytes = 2;
        in.activation_bytes = 2;
        in.loss_chunk = lm_head_chunk_tokens_gpu(c.vocab_size);
        in.dora = dora;
        MemoryPlan plan;
        memory_plan_compute(&c, &in, &plan);
        CHECK(plan.activations == (double)g.memory.activations);
        CHECK(plan.offloaded == (double)g.memory.offloaded);
        CHECK(plan.paged == (double)g.memory.paged);
        CHECK(plan.adam_moments == 2.0 * sizeof(float) * lora.n_params);
        CHECK(plan.workspaces == (double)g.memory.workspace);
        // the rest: RoPE's frequencies, the double-quant offsets (on the host), the
        // simple attention's pointer arrays; under 1 KiB here
        double gap = plan.total - (double)created;
        INFO("plan " << (long long)plan.total << " bytes, trainer " << created << " bytes");
        CHECK(fabs(gap) < 1024);
        train_step(&g, data, 0);
        CHECK(gpu_bytes_in_use() - before == created);
        gpu_trainer_free(&g);
        lora_set_free(&lora);
    }
}

// Every target adapted, and two subsets: q, v, down (the q|k|v group's xa holds
// two adapters' columns, gate|up has none), and q, k, v (no adapter reads the
// widest input, so the adapter scratch is the q|k|v group's, not down's).
TEST_CASE("gpu placement: --plan counts the bytes the trainer allocates: activations, paged, offloaded, in all") {
    Config c = placement_config();
    char err[256];
    Model model;
    REQUIRE(model_init_random(&model, &c, 7, err, sizeof err) == 0);
    const int all[N_LINEARS] = {1, 1, 1, 1, 1, 1, 1}, q_v_down[N_LINEARS] = {1, 0, 1, 0, 0, 0, 1},
              q_k_v[N_LINEARS] = {1, 1, 1, 0, 0, 0, 0};
    for (const int *enabled : {all, q_v_down, q_k_v}) {
        INFO("targets " << std::string(enabled == all ? "all seven" : enabled == q_v_down ? "q, v, down" : "q, k, v"));
        check_plan_counts_allocations(model, enabled);
    }
    model_free(&model);
}
