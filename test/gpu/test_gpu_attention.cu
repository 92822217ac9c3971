// test_gpu_attention.cu: the GPU attention kernels (simple, flash, flash on
// tensor cores), forward and backward, against attention_cpu /
// attention_backward_cpu run per sequence on the same bf16-rounded inputs, and
// against each other; plain causal, and with several samples packed in a
// sequence (block-diagonal causal mask).
#include <doctest/doctest.h>
#include <math.h>
#include "ops/attention.h"
#include "gpu_test_util.h"

namespace {

struct AttentionShape {
    int n_seqs, seq_len, n_heads, n_kv_heads, head_dim;
};

// seq_len 37, 200 and 1 are not multiples of the flash tile (32); head_dim 36 is
// not a multiple of its 8 threads per row; groups of 3, 1, 2 and 4 query heads.
// seq_len 300 and 513: rows longer than the simple kind's 256-thread softmax
// blocks, so their loops over a row take a second (and, at 513, a third) pass.
const AttentionShape shapes[] = {
    {2, 37, 9, 3, 64}, {1, 128, 4, 4, 128}, {3, 1, 2, 1, 64}, {1, 200, 8, 2, 64}, {2, 45, 6, 2, 36},
    {1, 300, 4, 2, 64}, {2, 513, 2, 1, 64},
};

// The tensor-core kind's shapes (head_dim 64 or 128): seq_len 80 and 150 are
// not multiples of its 64-row tiles (150: three query tiles, so causal tile
// skipping and, packed, tiles before a sample's start); groups of 2, 1 and 3
// query heads per kv head.
const AttentionShape tc_shapes[] = {
    {2, 80, 2, 1, 64}, {1, 80, 2, 2, 128}, {1, 150, 3, 1, 64},
};

struct AttentionInputs {
    std::vector<float> q, k, v, d_out;
    std::vector<int> positions;   // empty: plain causal; else packed samples, each token's position in its own
};

// Packs random samples of 1 to 40 tokens into every sequence: positions restart
// at 0 with each (boundaries fall inside and on the flash kind's 32-row tiles).
std::vector<int> random_packing(const AttentionShape &a, uint64_t seed) {
    std::vector<int> positions((size_t)a.n_seqs * a.seq_len);
    uint64_t state = seed;
    for (int s = 0; s < a.n_seqs; s++) {
        int left = 0;   // tokens left in the current sample
        int position = 0;
        for (int i = 0; i < a.seq_len; i++) {
            if (left == 0) {
                state = state * 6364136223846793005ULL + 1442695040888963407ULL;
                left = 1 + (int)((state >> 33) % 40);
                position = 0;
            }
            positions[(size_t)s * a.seq_len + i] = position++;
            left--;
        }
    }
    return positions;
}

// The first key query i of sequence s sees.
int first_key(const AttentionShape &a, const AttentionInputs &in, int s, int i) {
    return in.positions.empty() ? 0 : i - in.positions[(size_t)s * a.seq_len + i];
}

// Everything one computation gives: out, lse ([seq][head][token]), d_q, d_k, d_v.
struct AttentionResult {
    std::vector<float> out, lse, d_q, d_k, d_v;
};

size_t q_size(const AttentionShape &a) { return (size_t)a.n_seqs * a.seq_len * a.n_heads * a.head_dim; }
size_t kv_size(const AttentionShape &a) { return (size_t)a.n_seqs * a.seq_len * a.n_kv_heads * a.head_dim; }
size_t lse_size(const AttentionShape &a) { return (size_t)a.n_seqs * a.n_heads * a.seq_len; }

// Random inputs, rounded to bf16 (what the kernels read). q and k span [-2, 2]
// so that the softmax is far from uniform (scores of spread about 1.3).
AttentionInputs random_inputs(const AttentionShape &a, uint64_t seed) {
    AttentionInputs in;
    in.q = random_vector(q_size(a), seed, 2.0f);
    in.k = random_vector(kv_size(a), seed + 1, 2.0f);
    in.v = random_vector(kv_size(a), seed + 2, 1.0f);
    in.d_out = random_vector(q_size(a), seed + 3, 1.0f);
    round_to_act16(in.q);
    round_to_act16(in.k);
    round_to_act16(in.v);
    round_to_act16(in.d_out);
    return in;
}

// lse[s][h][i] = log sum_{first_i<=j<=i} exp(q_i . k_j / sqrt(head_dim)), in double.
std::vector<float> reference_lse(const AttentionShape &a, const AttentionInputs &in) {
    int q_stride = a.n_heads * a.head_dim, kv_stride = a.n_kv_heads * a.head_dim;
    int group = a.n_heads / a.n_kv_heads;
    double scale = 1.0 / sqrt((double)a.head_dim);
    std::vector<float> lse(lse_size(a));
    std::vector<double> scores(a.seq_len);
    for (int s = 0; s < a.n_seqs; s++) {
        for (int h = 0; h < a.n_heads; h++) {
            for (int i = 0; i < a.seq_len; i++) {
                const float *q_vec = in.q.data() + ((size_t)s * a.seq_len + i) * q_stride + (size_t)h * a.head_dim;
                double max_score = -INFINITY;
                int first = first_key(a, in, s, i);
                for (int j = first; j <= i; j++) {
                    const float *k_vec = in.k.data() + ((size_t)s * a.seq_len + j) * kv_stride +
                                         (size_t)(h / group) * a.head_dim;
                    double dot = 0.0;
                    for (int d = 0; d < a.head_dim; d++) dot += (double)q_vec[d] * k_vec[d];
                    scores[j] = dot * scale;
                    max_score = fmax(max_score, scores[j]);
                }
                double sum = 0.0;
                for (int j = first; j <= i; j++) sum += exp(scores[j] - max_score);
                lse[((size_t)s * a.n_heads + h) * a.seq_len + i] = (float)(max_score + log(sum));
            }
        }
    }
    return lse;
}

// The CPU reference, one sequence at a time (its backward accumulates: start from zero).
AttentionResult reference_attention(const AttentionShape &a, const AttentionInputs &in) {
    AttentionResult want;
    want.out.assign(q_size(a), 0.0f);
    want.d_q.assign(q_size(a), 0.0f);
    want.d_k.assign(kv_size(a), 0.0f);
    want.d_v.assign(kv_size(a), 0.0f);
    size_t q_seq = (size_t)a.seq_len * a.n_heads * a.head_dim, kv_seq = (size_t)a.seq_len * a.n_kv_heads * a.head_dim;
    for (int s = 0; s < a.n_seqs; s++) {
        const int *positions = in.positions.empty() ? NULL : in.positions.data() + (size_t)s * a.seq_len;
        attention_cpu<float>(want.out.data() + s * q_seq, in.q.data() + s * q_seq, in.k.data() + s * kv_seq,
                             in.v.data() + s * kv_seq, a.seq_len, 0, a.n_heads, a.n_kv_heads, a.head_dim, positions);
        attention_backward_cpu<float>(want.d_q.data() + s * q_seq, want.d_k.data() + s * kv_seq,
                                      want.d_v.data() + s * kv_seq, in.d_out.data() + s * q_seq,
                                      in.q.data() + s * q_seq, in.k.data() + s * kv_seq, in.v.data() + s * kv_seq,
                                      a.seq_len, a.n_heads, a.n_kv_heads, a.head_dim, positions);
    }
    want.lse = reference_lse(a, in);
    return want;
}

// All heads of these shapes in one pass of the simple kind.
const size_t whole_budget = (size_t)1 << 30;

// Forward, then backward from the forward's own out and lse; every output and the
// scratch poisoned first. score_budget sets the simple kind's heads per pass.
AttentionResult gpu_attention(AttentionKernel kind, const AttentionShape &a, const AttentionInputs &in,
                              size_t score_budget = whole_budget) {
    act16 *q = upload_act16(in.q, "q"), *k = upload_act16(in.k, "k"), *v = upload_act16(in.v, "v");
    act16 *d_out = upload_act16(in.d_out, "d_out");
    int *positions = NULL;
    if (!in.positions.empty()) {
        positions = (int *)gpu_malloc(sizeof(int) * in.positions.size(), "positions");
        gpu_upload(positions, in.positions.data(), sizeof(int) * in.positions.size());
    }
    act16 *out = (act16 *)gpu_malloc(sizeof(act16) * q_size(a), "out");
    float *lse = (float *)gpu_malloc(sizeof(float) * lse_size(a), "lse");
    act16 *d_q = (act16 *)gpu_malloc(sizeof(act16) * q_size(a), "d_q");
    act16 *d_k = (act16 *)gpu_malloc(sizeof(act16) * kv_size(a), "d_k");
    act16 *d_v = (act16 *)gpu_malloc(sizeof(act16) * kv_size(a), "d_v");
    size_t scratch_bytes = attention_scratch_bytes_gpu(kind, a.n_seqs, a.seq_len, a.n_heads, a.head_dim, score_budget);
    void *scratch = gpu_malloc(scratch_bytes, "attention scratch");
    gpu_poison(scratch, scratch_bytes);
    gpu_poison(out, sizeof(act16) * q_size(a));
    gpu_poison(lse, sizeof(float) * lse_size(a));
    attention_forward_gpu(kind, out, lse, q, k, v, positions, a.n_seqs, a.seq_len, a.n_heads, a.n_kv_heads,
                          a.head_dim, scratch, scratch_bytes);
    gpu_poison(scratch, scratch_bytes);
    gpu_poison(d_q, sizeof(act16) * q_size(a));
    gpu_poison(d_k, sizeof(act16) * kv_size(a));
    gpu_poison(d_v, sizeof(act16) * kv_size(a));
    attention_backward_gpu(kind, d_q, d_k, d_v, d_out, out, lse, q, k, v, positions, a.n_seqs, a.seq_len, a.n_heads,
                           a.n_kv_heads, a.head_dim, scratch, scratch_bytes);
    AttentionResult got;
    got.out = download_act16(out, q_size(a));
    got.lse = download_floats(lse, lse_size(a));
    got.d_q = download_act16(d_q, q_size(a));
    got.d_k = download_act16(d_k, kv_size(a));
    got.d_v = download_act16(d_v, kv_size(a));
    for (void *p : {(void *)q, (void *)k, (void *)v, (void *)d_out, (void *)out, (void *)lse, (void *)d_q,
                    (void *)d_k, (void *)d_v, scratch, (void *)positions})
        gpu_free(p);
    return got;
}

// Largest |got - want| (infinity for NaN or Inf in got).
double max_abs_difference(const std::vector<float> &got, const std::vector<float> &want) {
    double worst = 0.0;
    for (size_t i = 0; i < got.size(); i++) {
        if (!isfinite(got[i])) return INFINITY;
        worst = fmax(worst, fabs((double)got[i] - (double)want[i]));
    }
    return worst;
}

double relative_error(const std::vector<float> &got, const std::vector<float> &want) {
    return max_relative_error(got.data(), want.data(), got.size());
}

// Tolerances. out: bf16 output (rounding 2^-9 relative) from an fp32 softmax,
// 1e-2 of the largest |out|. lse: fp32 throughout (bf16 products are exact in
// fp32), values of a few units, 1e-4 absolute. Gradients 2e-2: besides their
// own bf16 rounding they go through bf16 intermediates (O in delta = dO . O,
// and in the simple kind P and dS before their GEMMs), and ds = p (dp - delta)
// loses relative precision to cancellation when dp is close to delta.
void check_close(const AttentionResult &got, const AttentionResult &want) {
    CHECK(relative_error(got.out, want.out) < 1e-2);
    CHECK(max_abs_difference(got.lse, want.lse) < 1e-4);
    CHECK(relative_error(got.d_q, want.d_q) < 2e-2);
    CHECK(relative_error(got.d_k, want.d_k) < 2e-2);
    CHECK(relative_error(got.d_v, want.d_v) < 2e-2);
}

template <size_t n_shapes>
void check_against_cpu(AttentionKernel kind, bool packed, const AttentionShape (&shape_list)[n_shapes]) {
    for (const AttentionShape &a : shape_list) {
        uint64_t seed = fresh_seed();
        INFO("seed " << seed << ", n_seqs " << a.n_seqs << ", seq_len " << a.seq_len << ", heads " << a.n_heads
                     << "/" << a.n_kv_heads << ", head_dim " << a.head_dim << (packed ? ", packed" : ""));
        AttentionInputs in = random_inputs(a, seed);
        if (packed) in.positions = random_packing(a, seed + 4);
        check_close(gpu_attention(kind, a, in), reference_attention(a, in));
    }
}

// mma.sync m16n8k16 with 16-bit inputs: sm_80 and newer.
bool has_tensor_core_attention(void) { return gpu_compute_capability() >= 80; }

}  // namespace

TEST_CASE("gpu: simple attention (materialised scores) matches the CPU reference, forward and backward") {
    check_against_cpu(ATTENTION_SIMPLE, false, shapes);
}

TEST_CASE("gpu: simple attention over packed samples (block-diagonal causal mask) matches the CPU reference") {
    check_against_cpu(ATTENTION_SIMPLE, true, shapes);
}

// Budgets of one and of two heads' scores: passes of 1 or 2 heads, the last pass
// short when the head count is odd (9 heads: four passes of 2, then 1).
TEST_CASE("gpu: simple attention in passes of fewer heads matches the CPU reference") {
    for (const AttentionShape &a : shapes) {
        for (int heads_per_pass = 1; heads_per_pass <= 2; heads_per_pass++) {
            uint64_t seed = fresh_seed();
            INFO("seed " << seed << ", n_seqs " << a.n_seqs << ", seq_len " << a.seq_len << ", heads " << a.n_heads
                         << "/" << a.n_kv_heads << ", head_dim " << a.head_dim << ", heads per pass "
                         << heads_per_pass);
            size_t one_head = (size_t)12 * a.n_seqs * a.seq_len * a.seq_len;
            AttentionInputs in = random_inputs(a, seed);
            check_close(gpu_attention(ATTENTION_SIMPLE, a, in, heads_per_pass * one_head), reference_attention(a, in));
        }
    }
}

TEST_CASE("gpu: flash attention (fused, online softmax) matches the CPU reference, forward and backward") {
    check_against_cpu(ATTENTION_FLASH, false, shapes);
}

TEST_CASE("gpu: flash attention over packed samples (block-diagonal causal mask) matches the CPU reference") {
    check_against_cpu(ATTENTION_FLASH, true, shapes);
}

// Skips one-token sequences: there d_q = d_k = 0 exactly (a softmax over one key
// has no gradient), both kinds give rounding noise of about 1e-7 with no relative
// scale to compare; the checks against the CPU cover them in absolute terms.
TEST_CASE("gpu: simple and flash attention agree") {
    for (const AttentionShape &a : shapes) {
        if (a.seq_len == 1) continue;
        uint64_t seed = fresh_seed();
        INFO("seed " << seed << ", n_seqs " << a.n_seqs << ", seq_len " << a.seq_len << ", heads " << a.n_heads
                     << "/" << a.n_kv_heads << ", head_dim " << a.head_dim);
        AttentionInputs in = random_inputs(a, seed);
        check_close(gpu_attention(ATTENTION_FLASH, a, in), gpu_attention(ATTENTION_SIMPLE, a, in));
    }
}

TEST_CASE("gpu: flash attention on tensor cores matches the CPU reference, forward and backward") {
    if (!has_tensor_core_attention()) {
        MESSAGE("skipped: mma.sync m16n8k16 with 16-bit inputs needs sm_80 or newer");
        return;
    }
    check_against_cpu(ATTENTION_FLASH_TC, false, tc_shapes);
}

TEST_CASE("gpu: flash attention on tensor cores over packed samples matches the CPU reference") {
    if (!has_tensor_core_attention()) {
        MESSAGE("skipped: mma.sync m16n8k16 with 16-bit inputs needs sm_80 or newer");
        return;
    }
    check_against_cpu(ATTENTION_FLASH_TC, true, tc_shapes);
}

// The simple kind as a second reference (its own GEMMs, its own softmax).
TEST_CASE("gpu: flash attention on tensor cores and simple attention agree") {
    if (!has_tensor_core_attention()) {
        MESSAGE("skipped: mma.sync m16n8k16 with 16-bit inputs needs sm_80 or newer");
        return;
    }
    for (const AttentionShape &a : tc_shapes) {
        uint64_t seed = fresh_seed();
        INFO("seed " << seed << ", n_seqs " << a.n_seqs << ", seq_len " << a.seq_len << ", heads " << a.n_heads
                     << "/" << a.n_kv_heads << ", head_dim " << a.head_dim);
        AttentionInputs in = random_inputs(a, seed);
        check_close(gpu_attention(ATTENTION_FLASH_TC, a, in), gpu_attention(ATTENTION_SIMPLE, a, in));
    }
}
