// test_gpu_cross_entropy.cu: the cross-entropy kernel and the fused LM head +
// loss against the CPU references (cross_entropy_sum_cpu, cross_entropy_backward_cpu,
// matmul_cpu, matmul_backward_input_cpu).
#include <doctest/doctest.h>
#include <math.h>
#include "ops/cross_entropy.h"
#include "gpu_test_util.h"
#include "ops/layers.h"

// Targets uniform in [0, vocab), every third token (1, 4, 7, ...) not counted
// (IGNORE_TARGET); token 0 aims at the last vocabulary entry and token 2 at the first.
static std::vector<int> random_targets(int n, int vocab, uint64_t seed) {
    std::vector<float> u = random_vector(n, seed, 1.0f);
    std::vector<int> targets(n);
    for (int t = 0; t < n; t++) {
        // v = floor((u + 1) / 2 * vocab), u in [-1, 1)
        int v = (int)((u[t] + 1.0f) * 0.5f * (float)vocab);
        targets[t] = v < 0 ? 0 : v >= vocab ? vocab - 1 : v;
        if (t % 3 == 1) targets[t] = IGNORE_TARGET;
    }
    targets[0] = vocab - 1;
    if (n > 2) targets[2] = 0;
    return targets;
}

static int *upload_ints(const std::vector<int> &x, const char *what) {
    int *d = (int *)gpu_malloc(sizeof(int) * x.size(), what);
    gpu_upload(d, x.data(), sizeof(int) * x.size());
    return d;
}

// Loss weights (--prompt-loss-weight): empty (every counted row weighs 1), or
// in [0, 1] per row, with 0 and 1 among them.
static std::vector<float> random_weights(bool weighted, int n, uint64_t seed) {
    if (!weighted) return std::vector<float>();
    std::vector<float> w = random_vector(n, seed, 0.5f);
    for (float &x : w) x += 0.5f;
    w[0] = 1.0f;
    if (n > 3) w[3] = 0.0f;
    return w;
}

static const float *weights_or_null(const std::vector<float> &w) { return w.empty() ? NULL : w.data(); }

static float *upload_weights(const std::vector<float> &w) { return w.empty() ? NULL : upload_floats(w, "weights"); }

// Tolerance 1e-5 (fp32 paths): the kernel's expf is within 2 ulp and its fp32
// sums of <= 49152 terms (~100 per thread, then a 9-level tree) are within
// ~1e-6 relative, so each loss (~10 here) is off by ~1e-6 absolute and each
// softmax entry by ~1e-6 of itself; 1e-5 leaves a tenfold margin.
static const double FP32_TOLERANCE = 1e-5;

// Per-row losses against the CPU (0 exactly on uncounted rows) and their sum.
static void check_losses(const std::vector<float> &got, const std::vector<float> &want, const std::vector<int> &targets,
                         double want_sum) {
    int n = (int)got.size();
    CHECK(max_relative_error(got.data(), want.data(), n) <= FP32_TOLERANCE);
    double got_sum = 0.0;
    int nonzero_uncounted = 0;
    for (int t = 0; t < n; t++) {
        got_sum += got[t];
        if (targets[t] == IGNORE_TARGET) nonzero_uncounted += got[t] != 0.0f;
    }
    CHECK(nonzero_uncounted == 0);
    CHECK(fabs(got_sum - want_sum) <= FP32_TOLERANCE * fabs(want_sum));
}

// d_logits against the CPU, and exactly 0 on uncounted rows.
static void check_gradient(const std::vector<float> &got, const std::vector<float> &want,
                           const std::vector<int> &targets, int vocab) {
    CHECK(max_relative_error(got.data(), want.data(), got.size()) <= FP32_TOLERANCE);
    size_t nonzero_uncounted = 0;
    for (size_t t = 0; t < targets.size(); t++)
        if (targets[t] == IGNORE_TARGET)
            for (int v = 0; v < vocab; v++) nonzero_uncounted += got[t * vocab + v] != 0.0f;
    CHECK(nonzero_uncounted == 0);
}

static void check_cross_entropy(int n, int vocab, bool weighted) {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed << ", n " << n << ", vocab " << vocab << (weighted ? ", weighted" : ""));
    size_t size = (size_t)n * vocab;
    std::vector<float> logits = random_vector(size, seed, 5.0f);
    std::vector<int> targets = random_targets(n, vocab, seed + 1);
    std::vector<float> weights = random_weights(weighted, n, seed + 2);
    const float *w = weights_or_null(weights);
    const float scale = 0.25f;

    std::vector<float> want_losses(n);
    for (int t = 0; t < n; t++) {
        int counted_here;
        want_losses[t] = (float)cross_entropy_sum_cpu<float>(&logits[(size_t)t * vocab], &targets[t], w ? w + t : NULL,
                                                             1, vocab, &counted_here);
    }
    int want_count;
    double want_sum = cross_entropy_sum_cpu<float>(logits.data(), targets.data(), w, n, vocab, &want_count);
    REQUIRE(want_count > 0);
    REQUIRE(want_count < n);
    std::vector<float> want_gradient(size, 0.0f);
    cross_entropy_backward_cpu<float>(want_gradient.data(), logits.data(), targets.data(), w, n, vocab, scale);

    float *d_logits_in = upload_floats(logits, "logits");
    int *d_targets = upload_ints(targets, "targets");
    float *d_weights = upload_weights(weights);
    float *d_losses = (float *)gpu_malloc(sizeof(float) * n, "losses");
    float *d_gradient = (float *)gpu_malloc(sizeof(float) * size, "d_logits");

    // the losses alone
    gpu_poison(d_losses, sizeof(float) * n);
    cross_entropy_gpu(d_losses, NULL, d_logits_in, d_targets, d_weights, n, vocab, scale);
    check_losses(download_floats(d_losses, n), want_losses, targets, want_sum);

    // the losses and the gradient
    gpu_poison(d_losses, sizeof(float) * n);
    gpu_poison(d_gradient, sizeof(float) * size);
    cross_entropy_gpu(d_losses, d_gradient, d_logits_in, d_targets, d_weights, n, vocab, scale);
    check_losses(download_floats(d_losses, n), want_losses, targets, want_sum);
    check_gradient(download_floats(d_gradient, size), want_gradient, targets, vocab);

    // in place: the gradient written over the logits
    gpu_poison(d_losses, sizeof(float) * n);
    cross_entropy_gpu(d_losses, d_logits_in, d_logits_in, d_targets, d_weights, n, vocab, scale);
    check_losses(download_floats(d_losses, n), want_losses, targets, want_sum);
    check_gradient(download_floats(d_logits_in, size), want_gradient, targets, vocab);

    gpu_free(d_logits_in);
    gpu_free(d_targets);
    gpu_free(d_weights);
    gpu_free(d_losses);
    gpu_free(d_gradient);
}

// gather_rows_gpu (bf16, exact) and scatter_add_rows_gpu (fp32: one add per
// element, exact) against the CPU references, on rows in a scrambled order.
static void check_rows(int n, int n_rows, int dim) {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed << ", n " << n << ", rows " << n_rows << ", dim " << dim);
    std::vector<float> x = random_vector((size_t)n * dim, seed, 1.0f);
    round_to_act16(x);
    std::vector<float> d_rows = random_vector((size_t)n_rows * dim, seed + 1, 1.0f);
    std::vector<float> d_x = random_vector((size_t)n * dim, seed + 2, 1.0f);
    // distinct rows: every (n_rows, n) pair below has gcd(7, n) = 1, so r -> 7 r + 3 mod n is one to one
    std::vector<int> rows(n_rows);
    for (int r = 0; r < n_rows; r++) rows[r] = (7 * r + 3) % n;

    std::vector<float> want_gathered((size_t)n_rows * dim), want_d_x = d_x;
    gather_rows_cpu(want_gathered.data(), x.data(), rows.data(), n_rows, dim);
    scatter_add_rows_cpu(want_d_x.data(), d_rows.data(), rows.data(), n_rows, dim);

    act16 *d_xin = upload_act16(x, "x");
    int *d_row_ids = upload_ints(rows, "rows");
    act16 *d_gathered = (act16 *)gpu_malloc(sizeof(act16) * n_rows * dim, "gathered");
    gpu_poison(d_gathered, sizeof(act16) * n_rows * dim);
    gather_rows_gpu(d_gathered, d_xin, d_row_ids, n_rows, dim);
    float *d_d_rows = upload_floats(d_rows, "d rows");
    float *d_d_x = upload_floats(d_x, "d_x");
    scatter_add_rows_gpu(d_d_x, d_d_rows, d_row_ids, n_rows, dim);
    CHECK(max_relative_error(download_act16(d_gathered, (size_t)n_rows * dim).data(), want_gathered.data(),
                             want_gathered.size()) == 0.0);
    CHECK(max_relative_error(download_floats(d_d_x, (size_t)n * dim).data(), want_d_x.data(), want_d_x.size()) ==
          0.0);
    gpu_free(d_xin);
    gpu_free(d_row_ids);
    gpu_free(d_gathered);
    gpu_free(d_d_rows);
    gpu_free(d_d_x);
}

TEST_CASE("gpu: gather_rows_gpu and scatter_add_rows_gpu equal the CPU's exactly") {
    check_rows(9, 4, 64);
    check_rows(130, 55, 576);   // dim * rows not a multiple of the 256 threads
    check_rows(1, 1, 3);
}

TEST_CASE("gpu: cross_entropy_gpu matches cross_entropy_sum_cpu and cross_entropy_backward_cpu") {
    for (bool weighted : {false, true}) {
        check_cross_entropy(3, 100, weighted);   // vocab under the 512 threads of a row's block: most threads idle
        check_cross_entropy(4, 513, weighted);   // one over: a second pass for one thread
        check_cross_entropy(5, 1000, weighted);
        check_cross_entropy(33, 49152, weighted);
    }
}

// The fused LM head + loss against matmul_cpu, the CPU loss and gradient, and
// matmul_backward_input_cpu on the same bf16-rounded x and W. Targets of
// tokens [uncounted_first, uncounted_last) are all IGNORE_TARGET (a prompt); only the
// counted rows go through the LM head, chunk_tokens at a time.
static void check_lm_head(int n, int dim, int vocab, int chunk_tokens, int uncounted_first, int uncounted_last,
                          bool weighted = false) {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed << ", n " << n << ", dim " << dim << ", vocab " << vocab << ", chunk " << chunk_tokens
                 << (weighted ? ", weighted" : ""));
    // W entries of scale 3/sqrt(dim) give logits of standard deviation ~1
    float weight_scale = 3.0f / sqrtf((float)dim);
    std::vector<float> x = random_vector((size_t)n * dim, seed, 1.0f);
    std::vector<float> weight = random_vector((size_t)vocab * dim, seed + 1, weight_scale);
    round_to_act16(x);
    round_to_act16(weight);
    std::vector<int> targets = random_targets(n, vocab, seed + 2);
    for (int t = uncounted_first; t < uncounted_last; t++) targets[t] = IGNORE_TARGET;
    std::vector<float> d_x_before = random_vector((size_t)n * dim, seed + 3, 0.5f * weight_scale);
    std::vector<float> weights = random_weights(weighted, n, seed + 4);
    const float *w = weights_or_null(weights);
    const double grad_scale = 0.5;

    std::vector<float> logits((size_t)n * vocab);
    matmul_cpu<float>(logits.data(), x.data(), weight.data(), NULL, n, dim, vocab);
    int want_count;
    double want_loss = cross_entropy_sum_cpu<float>(logits.data(), targets.data(), w, n, vocab, &want_count);
    std::vector<float> d_logits((size_t)n * vocab, 0.0f);
    cross_entropy_backward_cpu<float>(d_logits.data(), logits.data(), targets.data(), w, n, vocab, grad_scale);
    std::vector<float> want_d_x = d_x_before;
    matmul_backward_input_cpu<float>(want_d_x.data(), d_logits.data(), weight.data(), n, dim, vocab);

    act16 *d_xin = upload_act16(x, "x");
    act16 *d_weight = upload_act16(weight, "lm_head");
    int *d_targets = upload_ints(targets, "targets");
    float *d_d_x = upload_floats(d_x_before, "d_x");
    float *d_weights = upload_weights(weights);
    lm_head_set_chunk_tokens_gpu(chunk_tokens);
    // the workspace for every token counted (more than these targets need), NaN-filled
    size_t workspace_bytes = lm_head_cross_entropy_workspace_bytes(n, dim, vocab, lm_head_chunk_tokens_gpu(vocab));
    void *workspace = gpu_malloc(workspace_bytes, "LM head + loss workspace");
    gpu_poison(workspace, workspace_bytes);
    size_t mallocs = gpu_malloc_count();
    int count = -1;
    double loss = lm_head_cross_entropy_gpu(d_d_x, d_xin, d_weight, d_targets, d_weights, n, dim, vocab, grad_scale,
                                            &count, workspace, workspace_bytes);
    int count_forward_only = -1;
    double loss_forward_only = lm_head_cross_entropy_gpu(NULL, d_xin, d_weight, d_targets, d_weights, n, dim, vocab,
                                                         grad_scale, &count_forward_only, workspace, workspace_bytes);
    lm_head_set_chunk_tokens_gpu(0);
    CHECK(gpu_malloc_count() == mallocs);   // everything in the workspace
    gpu_free(workspace);

    // loss: 1e-3 relative (fp32 logits from the same bf16 inputs; the GEMM sums in another order)
    CHECK(count == want_count);
    CHECK(count_forward_only == want_count);
    CHECK(fabs(loss - want_loss) <= 1e-3 * fabs(want_loss));
    CHECK(fabs(loss_forward_only - want_loss) <= 1e-3 * fabs(want_loss));

    // d_x: the increments (got - before) against the CPU's, 1e-2 relative,
    // since the GPU rounds d_logits to bf16 (2^-8 relative) before the backward GEMM
    std::vector<float> got_d_x = download_floats(d_d_x, (size_t)n * dim);
    std::vector<float> got_increment((size_t)n * dim), want_increment((size_t)n * dim);
    for (size_t i = 0; i < got_d_x.size(); i++) {
        got_increment[i] = got_d_x[i] - d_x_before[i];
        want_increment[i] = want_d_x[i] - d_x_before[i];
    }
    CHECK(max_relative_error(got_increment.data(), want_increment.data(), got_increment.size()) <= 1e-2);
    // rows of uncounted tokens keep their values exactly
    size_t changed_uncounted = 0;
    for (int t = 0; t < n; t++) {
        if (targets[t] != IGNORE_TARGET) continue;
        for (size_t i = (size_t)t * dim; i < (size_t)(t + 1) * dim; i++) changed_uncounted += got_d_x[i] != d_x_before[i];
    }
    CHECK(changed_uncounted == 0);

    gpu_free(d_xin);
    gpu_free(d_weight);
    gpu_free(d_targets);
    gpu_free(d_d_x);
    gpu_free(d_weights);
}

TEST_CASE("gpu: lm_head_cross_entropy_gpu matches matmul_cpu + cross_entropy_sum_cpu + backward, chunked") {
    check_lm_head(7, 64, 1001, 0, 0, 0);          // automatic chunk: the 5 counted tokens at once
    check_lm_head(7, 64, 1001, 2, 0, 0);          // chunks of 2, 2, 1
    check_lm_head(130, 576, 49152, 48, 48, 96);   // 55 counted tokens: chunks of 48, 7
}

// --prompt-loss-weight: per-token weights in [0, 1], one of them 0 (counted, no gradient)
TEST_CASE("gpu: lm_head_cross_entropy_gpu with loss weights matches the weighted CPU loss and gradient") {
    check_lm_head(7, 64, 1001, 2, 0, 0, true);
    check_lm_head(130, 576, 49152, 48, 48, 96, true);
}

TEST_CASE("gpu: lm_head_cross_entropy_gpu on a batch with no counted target: loss 0, count 0, d_x unchanged") {
    uint64_t seed = fresh_seed();
    INFO("seed " << seed);
    int n = 9, dim = 64, vocab = 1001;
    std::vector<float> x = random_vector((size_t)n * dim, seed, 1.0f);
    std::vector<float> weight = random_vector((size_t)vocab * dim, seed + 1, 0.3f);
    std::vector<float> d_x_before = random_vector((size_t)n * dim, seed + 2, 1.0f);
    std::vector<int> targets(n, IGNORE_TARGET);
    act16 *d_xin = upload_act16(x, "x");
    act16 *d_weight = upload_act16(weight, "lm_head");
    int *d_targets = upload_ints(targets, "targets");
    float *d_d_x = upload_floats(d_x_before, "d_x");
    int count = -1;
    // no workspace: with no token counted none is needed
    double loss = lm_head_cross_entropy_gpu(d_d_x, d_xin, d_weight, d_targets, NULL, n, dim, vocab, 0.5, &count, NULL,
                                            0);
    CHECK(loss == 0.0);
    CHECK(count == 0);
    std::vector<float> got_d_x = download_floats(d_d_x, (size_t)n * dim);
    size_t changed = 0;
    for (size_t i = 0; i < got_d_x.size(); i++) changed += got_d_x[i] != d_x_before[i];
    CHECK(changed == 0);
    gpu_free(d_xin);
    gpu_free(d_weight);
    gpu_free(d_targets);
    gpu_free(d_d_x);
}
