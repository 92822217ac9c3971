// bench_kernels.cu: each GPU kernel family timed on SmolLM2-135M-sized
// inputs (batch 8 x 512 tokens), reported as GB/s (memory-bound kernels:
// bytes read + written) or TFLOP/s (matrix kernels), next to the device's
// measured ceilings: device-to-device copy bandwidth and cuBLAS's bf16 GEMM
// rate. Like llm.c's dev/cuda benchmarks, but one program for all families.
//   make build/bench_kernels && ./build/bench_kernels
#include "adamw.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/gpu.h"
#include "ops/layers.h"
#include "lora.h"
#include "nf4.h"

#include <stdio.h>
#include <stdlib.h>
#include <vector>

#ifdef __CUDACC__
// Mean milliseconds of one call of fn over `reps` calls, after one warm-up call.
template <typename Fn>
static float time_ms(Fn fn, int reps) {
    fn();
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    CUDA_CHECK(cudaEventRecord(start));
    for (int i = 0; i < reps; i++) fn();
    CUDA_CHECK(cudaEventRecord(stop));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    CUDA_CHECK(cudaEventDestroy(start));
    CUDA_CHECK(cudaEventDestroy(stop));
    return ms / reps;
}

static void *device_random(size_t bytes, const char *what) {
    void *p = gpu_malloc(bytes, what);
    CUDA_CHECK(cudaMemset(p, 0x3C, bytes));   // 0x3C3C as bf16 is 0.0115; as fp32 0.0115 too
    return p;
}

static void report_bandwidth(const char *name, double bytes, float ms, double ceiling) {
    double gbs = bytes / (ms * 1e-3) / 1e9;
    printf("%-40s %9.3f ms %9.1f GB/s     %5.1f%% of copy bandwidth\n", name, ms, gbs, 100.0 * gbs / ceiling);
}

static void report_flops(const char *name, double flops, float ms, double ceiling) {
    double tflops = flops / (ms * 1e-3) / 1e12;
    printf("%-40s %9.3f ms %9.1f TFLOP/s  %5.1f%% of cuBLAS bf16 GEMM\n", name, ms, tflops, 100.0 * tflops / ceiling);
}

// NF4 + double-quant dequantization of a rows x cols matrix, against the copy bandwidth.
static void bench_nf4_dequantize(int rows, int cols, double copy_gbs) {
    std::vector<float> w((size_t)rows * cols);
    for (size_t i = 0; i < w.size(); i++) w[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    NF4Tensor q;
    if (nf4_quantize(&q, w.data(), (int64_t)w.size(), 1) != 0) exit(1);
    NF4TensorGPU qd;
    nf4_upload(&qd, &q, "nf4 weights");
    act16 *wd = (act16 *)gpu_malloc(sizeof(act16) * w.size(), "dequantized");
    float ms = time_ms([&] { nf4_dequantize_gpu(wd, &qd); }, 50);
    char name[64];
    snprintf(name, sizeof name, "nf4_dequantize_gpu (%dx%d)", rows, cols);
    report_bandwidth(name, (double)nf4_bytes(&q) + 2.0 * w.size(), ms, copy_gbs);
    gpu_free(wd);
    nf4_free_gpu(&qd);
    nf4_free(&q);
}

// Causal attention forward and backward of every kind on one shape (no
// packing), as TFLOP/s against the GEMM ceiling: q.k and p.v over half the
// keys on average, 2 FLOPs per multiply-add; the backward counted as twice the
// forward. The tensor-core kind only on sm_80 and newer.
static void bench_attention(int n_seqs, int seq, int heads, int kv_heads, int head_dim, double gemm_tflops) {
    size_t n = (size_t)n_seqs * seq;
    int q_dim = heads * head_dim, kv_dim = kv_heads * head_dim;
    act16 *q = (act16 *)device_random(sizeof(act16) * n * q_dim, "q");
    act16 *k = (act16 *)device_random(sizeof(act16) * n * kv_dim, "k");
    act16 *v = (act16 *)device_random(sizeof(act16) * n * kv_dim, "v");
    act16 *out = (act16 *)gpu_malloc(sizeof(act16) * n * q_dim, "attention out");
    act16 *dq = (act16 *)gpu_malloc(sizeof(act16) * n * q_dim, "dq");
    act16 *dk = (act16 *)gpu_malloc(sizeof(act16) * n * kv_dim, "dk");
    act16 *dv = (act16 *)gpu_malloc(sizeof(act16) * n * kv_dim, "dv");
    float *lse = (float *)gpu_malloc(sizeof(float) * n * heads, "lse");
    double flops = 2.0 * 2.0 * n_seqs * heads * (double)seq * seq / 2.0 * head_dim;
    AttentionKernel kinds[3] = {ATTENTION_SIMPLE, ATTENTION_FLASH, ATTENTION_FLASH_TC};
    const char *names[3] = {"simple", "flash", "flash_tc"};
    for (int i = 0; i < 3; i++) {
        if (kinds[i] == ATTENTION_FLASH_TC && (gpu_compute_capability() < 80 || !flash_attention_tc_handles(head_dim)))
            continue;
        char label[96];
        size_t scratch_bytes = attention_scratch_bytes_gpu(kinds[i], n_seqs, seq, heads, head_dim, (size_t)512 << 20);
        void *scratch = gpu_malloc(scratch_bytes, "attention scratch");
        float ms = time_ms([&] { attention_forward_gpu(kinds[i], out, lse, q, k, v, NULL, n_seqs, seq, heads, kv_heads,
                                                       head_dim, scratch, scratch_bytes); }, 10);
        snprintf(label, sizeof label, "attention fwd %s %dx%d h%d/%d d%d", names[i], n_seqs, seq, heads, kv_heads,
                 head_dim);
        report_flops(label, flops, ms, gemm_tflops);
        ms = time_ms([&] { attention_backward_gpu(kinds[i], dq, dk, dv, out, out, lse, q, k, v, NULL, n_seqs, seq,
                                                  heads, kv_heads, head_dim, scratch, scratch_bytes); }, 10);
        snprintf(label, sizeof label, "attention bwd %s %dx%d h%d/%d d%d", names[i], n_seqs, seq, heads, kv_heads,
                 head_dim);
        report_flops(label, 2.0 * flops, ms, gemm_tflops);
        gpu_free(scratch);
    }
    for (void *p : {(void *)q, (void *)k, (void *)v, (void *)out, (void *)dq, (void *)dk, (void *)dv, (void *)lse})
        gpu_free(p);
}
// The q|k|v input group of one layer (issue 19: the LoRA work of a layer at most
// 10% of its base GEMMs' time): the three base GEMMs forward and backward, then
// the three adapters one at a time (lora_forward_gpu / lora_backward_gpu, as the
// trainer ran them before input groups) and fused (lora_group_*: one A GEMM each
// way, trainer/train_gpu.cu), without dropout and with a dropout mask. Each LoRA
// row's share is of the base GEMMs' time in the same direction.
static void bench_qkv_group(int n, int dim, int q_dim, int kv_dim, int rank, double gemm_tflops) {
    const int outs[LINEAR_GROUP_MAX] = {q_dim, kv_dim, kv_dim};
    LoraGroupShape group = {n, dim, rank, 3, {q_dim, kv_dim, kv_dim}, 2.0f};
    act16 *x = (act16 *)device_random(sizeof(act16) * n * dim, "x");
    float *dx = (float *)device_random(sizeof(float) * n * dim, "dx");
    act16 *A = (act16 *)device_random(sizeof(act16) * 3 * rank * dim, "A (q|k|v)");
    float *dA = (float *)device_random(sizeof(float) * 3 * rank * dim, "dA (q|k|v)");
    act16 *xa = (act16 *)gpu_malloc(sizeof(act16) * n * 3 * rank, "xa (q|k|v)");
    act16 *W[3], *y[3], *dy[3], *B[3];
    float *dB[3];
    for (int t = 0; t < 3; t++) {
        W[t] = (act16 *)device_random(sizeof(act16) * outs[t] * dim, "W");
        y[t] = (act16 *)device_random(sizeof(act16) * n * outs[t], "y");
        dy[t] = (act16 *)device_random(sizeof(act16) * n * outs[t], "dy");
        B[t] = (act16 *)device_random(sizeof(act16) * outs[t] * rank, "B");
        dB[t] = (float *)device_random(sizeof(float) * outs[t] * rank, "dB");
    }
    float *keep = (float *)gpu_malloc(sizeof(float) * n * dim, "dropout mask");
    lora_dropout_mask_gpu(keep, (size_t)n * dim, 0.05f, 1);
    void *scratch = gpu_malloc(lora_group_scratch_bytes_gpu(group), "lora group scratch");
    size_t a_size = (size_t)rank * dim;
    // base: x W_t^T for the three; LoRA: x A_t^T and xa_t B_t^T for the three
    double base_flops = 2.0 * n * dim * (q_dim + 2.0 * kv_dim);
    double lora_flops = 2.0 * n * rank * (3.0 * dim + q_dim + 2.0 * kv_dim);
    float base_fwd = time_ms([&] { for (int t = 0; t < 3; t++) matmul_gpu(y[t], x, W[t], NULL, n, dim, outs[t]); }, 20);
    report_flops("matmul_gpu (q|k|v: 3 GEMMs)", base_flops, base_fwd, gemm_tflops);
    float base_bwd = time_ms([&] {
        for (int t = 0; t < 3; t++) matmul_backward_input_gpu(dx, dy[t], W[t], n, dim, outs[t]);
    }, 20);
    report_flops("matmul_backward_input_gpu (q|k|v)", base_flops, base_bwd, gemm_tflops);
    for (const float *mask : {(const float *)NULL, (const float *)keep}) {
        const char *with = mask ? "dropout" : "no dropout";
        char name[64];
        float ms = time_ms([&] {
            for (int t = 0; t < 3; t++) {
                LoraShape one = {n, dim, outs[t], rank, 2.0f};
                lora_forward_gpu(y[t], xa + t * (size_t)n * rank, x, mask, A + t * a_size, B[t], one, scratch);
            }
        }, 20);
        snprintf(name, sizeof name, "LoRA q|k|v one at a time fwd, %s", with);
        report_flops(name, lora_flops, ms, gemm_tflops);
        printf("%-40s %9.1f%% of the base GEMMs\n", "", 100.0 * ms / base_fwd);
        ms = time_ms([&] { lora_group_forward_gpu(y, xa, x, mask, A, B, group, scratch); }, 20);
        snprintf(name, sizeof name, "LoRA q|k|v fused fwd, %s", with);
        report_flops(name, lora_flops, ms, gemm_tflops);
        printf("%-40s %9.1f%% of the base GEMMs\n", "", 100.0 * ms / base_fwd);
        ms = time_ms([&] {
            for (int t = 0; t < 3; t++) {
                LoraShape one = {n, dim, outs[t], rank, 2.0f};
                lora_backward_gpu(dx, dA + t * a_size, dB[t], dy[t], x, mask, A + t * a_size, B[t],
                                  xa + t * (size_t)n * rank, one, scratch);
            }
        }, 20);
        snprintf(name, sizeof name, "LoRA q|k|v one at a time bwd, %s", with);
        report_flops(name, 2.0 * lora_flops, ms, gemm_tflops);
        printf("%-40s %9.1f%% of the base GEMMs\n", "", 100.0 * ms / base_bwd);
        ms = time_ms([&] { lora_group_backward_gpu(dx, dA, dB, dy, x, mask, A, B, xa, group, scratch); }, 20);
        snprintf(name, sizeof name, "LoRA q|k|v fused bwd, %s", with);
        report_flops(name, 2.0 * lora_flops, ms, gemm_tflops);
        printf("%-40s %9.1f%% of the base GEMMs\n", "", 100.0 * ms / base_bwd);
    }
    for (int t = 0; t < 3; t++) {
        gpu_free(W[t]); gpu_free(y[t]); gpu_free(dy[t]); gpu_free(B[t]); gpu_free(dB[t]);
    }
    gpu_free(x); gpu_free(dx); gpu_free(A); gpu_free(dA); gpu_free(xa); gpu_free(keep); gpu_free(scratch);
}
#endif

int main(void) {
#ifndef __CUDACC__
    fprintf(stderr, "bench_kernels: built without CUDA\n");
    return 1;
#else
    if (!gpu_available()) { fprintf(stderr, "bench_kernels: no CUDA device\n"); return 1; }
    printf("device: %s\n", gpu_device_name());
    const int n = 8 * 512, dim = 576, hidden = 1536, heads = 9, kv_heads = 3, head_dim = 64, vocab = 49152;
    const int n_seqs = 8, seq = 512, rank = 16;

    // ceilings: copy bandwidth and a large bf16 GEMM
    size_t copy_bytes = (size_t)1 << 30;
    void *src = device_random(copy_bytes, "copy source"), *dst = gpu_malloc(copy_bytes, "copy destination");
    float copy_ms = time_ms([&] { CUDA_CHECK(cudaMemcpy(dst, src, copy_bytes, cudaMemcpyDeviceToDevice)); }, 10);
    double copy_gbs = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;
    gpu_free(src);
    gpu_free(dst);
    const int big = 8192;
    act16 *a = (act16 *)device_random(sizeof(act16) * big * big, "gemm a");
    act16 *b = (act16 *)device_random(sizeof(act16) * big * big, "gemm b");
    act16 *c = (act16 *)gpu_malloc(sizeof(act16) * big * big, "gemm c");
    float gemm_ms = time_ms([&] { matmul_gpu(c, a, b, NULL, big, big, big); }, 10);
    double gemm_tflops = 2.0 * big * (double)big * big / (gemm_ms * 1e-3) / 1e12;
    gpu_free(a); gpu_free(b); gpu_free(c);
    printf("ceilings: device-to-device copy %.0f GB/s (read + write), cuBLAS bf16 GEMM %dx%dx%d %.0f TFLOP/s\n\n",
           copy_gbs, big, big, big, gemm_tflops);

    // NF4 dequantization of an MLP gate matrix (codes + DQ constants in, 16-bit out): SmolLM2's,
    // and Llama-3.1-8B's, large enough to fill the GPU
    bench_nf4_dequantize(hidden, dim, copy_gbs);
    bench_nf4_dequantize(14336, 4096, copy_gbs);

    // elementwise and norm kernels on [n, dim] / [n, hidden]
    float *x = (float *)device_random(sizeof(float) * n * dim, "x");
    float *dx = (float *)device_random(sizeof(float) * n * dim, "dx");
    float *norm_w = (float *)device_random(sizeof(float) * dim, "norm weight");
    act16 *xn = (act16 *)gpu_malloc(sizeof(act16) * n * dim, "xn");
    float ms = time_ms([&] { rmsnorm_gpu(xn, x, norm_w, n, dim, 1e-5f); }, 50);
    report_bandwidth("rmsnorm_gpu", (4.0 + 2.0) * n * dim, ms, copy_gbs);
    ms = time_ms([&] { rmsnorm_backward_gpu(dx, x, x, norm_w, n, dim, 1e-5f); }, 50);
    report_bandwidth("rmsnorm_backward_gpu", 4.0 * 4.0 * n * dim, ms, copy_gbs);
    ms = time_ms([&] { residual_add_gpu(x, xn, (size_t)n * dim); }, 50);
    report_bandwidth("residual_add_gpu", (4.0 + 2.0 + 4.0) * n * dim, ms, copy_gbs);
    act16 *gate = (act16 *)device_random(sizeof(act16) * n * hidden, "gate");
    act16 *up = (act16 *)device_random(sizeof(act16) * n * hidden, "up");
    act16 *h = (act16 *)gpu_malloc(sizeof(act16) * n * hidden, "h");
    ms = time_ms([&] { swiglu_gpu(h, gate, up, (size_t)n * hidden); }, 50);
    report_bandwidth("swiglu_gpu", 3.0 * 2.0 * n * hidden, ms, copy_gbs);
    ms = time_ms([&] { swiglu_backward_gpu(h, h, gate, gate, up, (size_t)n * hidden); }, 50);
    report_bandwidth("swiglu_backward_gpu", 5.0 * 2.0 * n * hidden, ms, copy_gbs);

    // RoPE on q, and attention
    int q_dim = heads * head_dim;
    act16 *qb = (act16 *)device_random(sizeof(act16) * n * q_dim, "q");
    int *positions = (int *)gpu_malloc(sizeof(int) * n, "positions");
    std::vector<int> pos(n);
    for (int i = 0; i < n; i++) pos[i] = i % seq;
    gpu_upload(positions, pos.data(), sizeof(int) * n);
    std::vector<float> inv_freq(head_dim / 2, 0.01f);
    float *inv_freq_d = (float *)gpu_malloc(sizeof(float) * inv_freq.size(), "inv_freq");
    gpu_upload(inv_freq_d, inv_freq.data(), sizeof(float) * inv_freq.size());
    ms = time_ms([&] { rope_gpu(qb, positions, inv_freq_d, n, heads, head_dim); }, 50);
    report_bandwidth("rope_gpu (q)", 2.0 * 2.0 * n * q_dim, ms, copy_gbs);
    bench_attention(n_seqs, seq, heads, kv_heads, head_dim, gemm_tflops);
    // issue 19's attention shapes: seq 2048, GQA, head_dim 64 (Llama-3.2-1B) and 128 (Llama-3.1-8B);
    // dev/bench/bench_sdpa.py times PyTorch's SDPA (flash backend) on the same ones
    bench_attention(2, 2048, 32, 8, 64, gemm_tflops);
    bench_attention(2, 2048, 32, 8, 128, gemm_tflops);

    // base GEMMs (the MLP's gate projection) and LoRA on it
    act16 *wd = (act16 *)device_random(sizeof(act16) * (size_t)hidden * dim, "gate weight");
    ms = time_ms([&] { matmul_gpu(h, xn, wd, NULL, n, dim, hidden); }, 20);
    report_flops("matmul_gpu (gate: 4096x576x1536)", 2.0 * n * dim * hidden, ms, gemm_tflops);
    ms = time_ms([&] { matmul_backward_input_gpu(dx, h, wd, n, dim, hidden); }, 20);
    report_flops("matmul_backward_input_gpu (gate)", 2.0 * n * dim * hidden, ms, gemm_tflops);
    LoraShape shape = {n, dim, hidden, rank, 2.0f};
    act16 *lora_a = (act16 *)device_random(sizeof(act16) * rank * dim, "A");
    act16 *lora_b = (act16 *)device_random(sizeof(act16) * hidden * rank, "B");
    float *grad_a = (float *)device_random(sizeof(float) * rank * dim, "dA");
    float *grad_b = (float *)device_random(sizeof(float) * hidden * rank, "dB");
    act16 *xa = (act16 *)gpu_malloc(sizeof(act16) * n * rank, "xa");
    void *scratch = gpu_malloc(lora_scratch_bytes_gpu(shape), "lora scratch");
    double lora_flops = 2.0 * n * rank * (dim + hidden);
    ms = time_ms([&] { lora_forward_gpu(h, xa, xn, NULL, lora_a, lora_b, shape, scratch); }, 20);
    report_flops("lora_forward_gpu (gate, r=16)", lora_flops, ms, gemm_tflops);
    ms = time_ms([&] { lora_backward_gpu(dx, grad_a, grad_b, h, xn, NULL, lora_a, lora_b, xa, shape, scratch); }, 20);
    report_flops("lora_backward_gpu (gate, r=16)", 2.0 * lora_flops, ms, gemm_tflops);
    bench_qkv_group(n, dim, heads * head_dim, kv_heads * head_dim, rank, gemm_tflops);

    // LM head + cross-entropy, forward and backward
    act16 *lm_head = (act16 *)device_random(sizeof(act16) * vocab * dim, "lm head");
    std::vector<int> targets(n);
    for (int i = 0; i < n; i++) targets[i] = (i * 7919) % vocab;
    int *targets_d = (int *)gpu_malloc(sizeof(int) * n, "targets");
    gpu_upload(targets_d, targets.data(), sizeof(int) * n);
    int counted = 0;
    size_t loss_workspace_bytes = lm_head_cross_entropy_workspace_bytes(n, dim, vocab, lm_head_chunk_tokens_gpu(vocab));
    void *loss_workspace = gpu_malloc(loss_workspace_bytes, "LM head + loss workspace");
    ms = time_ms([&] {
        lm_head_cross_entropy_gpu(dx, xn, lm_head, targets_d, NULL, n, dim, vocab, 1e-4, &counted, loss_workspace,
                                  loss_workspace_bytes);
    }, 5);
    report_flops("lm_head_cross_entropy_gpu (fwd+bwd)", 2.0 * 2.0 * n * (double)dim * vocab, ms, gemm_tflops);

    // AdamW over the default run's 4.9M LoRA parameters
    size_t n_params = 4884480;
    float *p = (float *)device_random(sizeof(float) * n_params, "params");
    float *g = (float *)device_random(sizeof(float) * n_params, "grads");
    float *m = (float *)device_random(sizeof(float) * n_params, "m");
    float *v = (float *)device_random(sizeof(float) * n_params, "v");
    AdamWConfig config = adamw_default_config();
    int64_t step = 1;
    ms = time_ms([&] { adamw_step_gpu(p, g, m, v, n_params, step++, &config, 1e-4f); }, 20);
    report_bandwidth("adamw_step_gpu (4.9M params)", 7.0 * 4.0 * n_params, ms, copy_gbs);
    size_t norm_workspace_bytes = sum_squares_workspace_bytes(n_params);
    void *norm_workspace = gpu_malloc(norm_workspace_bytes, "sum of squares workspace");
    ms = time_ms([&] { sum_squares_gpu(g, n_params, norm_workspace, norm_workspace_bytes); }, 20);
    report_bandwidth("sum_squares_gpu (4.9M)", 4.0 * n_params, ms, copy_gbs);
    return 0;
#endif
}
