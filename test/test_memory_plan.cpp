// test_memory_plan.cpp: the memory plan (trainer/memory_plan.h) against numbers worked
// out by hand for a tiny config, the NF4 sizes of nf4_bytes_for() for
// SmolLM2-135M, what recompute saves, Llama-3.1-8B on a 24 GB card, and the
// verdict strings.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "ops/cross_entropy.h"
#include "model.h"
#include "trainer/memory_plan.h"
#include "nf4.h"


namespace {

Config tiny_config() {
    Config c = {};
    c.dim = 8;
    c.hidden_dim = 16;
    c.n_layers = 2;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.head_dim = 4;
    c.vocab_size = 32;
    c.tied_embeddings = 1;
    return c;
}

Config smollm2_135m() {
    Config c = {};
    c.dim = 576;
    c.hidden_dim = 1536;
    c.n_layers = 30;
    c.n_heads = 9;
    c.n_kv_heads = 3;
    c.head_dim = 64;
    c.vocab_size = 49152;
    c.tied_embeddings = 1;
    return c;
}

Config llama31_8b() {
    Config c = {};
    c.dim = 4096;
    c.hidden_dim = 14336;
    c.n_layers = 32;
    c.n_heads = 32;
    c.n_kv_heads = 8;
    c.head_dim = 128;
    c.vocab_size = 128256;
    c.tied_embeddings = 0;
    return c;
}

// The GPU path's defaults: NF4 + double quant, bf16 weights and activations,
// all seven targets, logits for every token at once.
PlanInputs gpu_inputs(int batch, int seq_len, int rank, int recompute) {
    PlanInputs in = {};
    in.batch = batch;
    in.seq_len = seq_len;
    in.rank = rank;
    for (int t = 0; t < N_LINEARS; t++) in.enabled[t] = 1;
    in.quant_nf4 = 1;
    in.double_quant = 1;
    in.recompute = recompute;
    in.weight_bytes = 2;
    in.activation_bytes = 2;
    in.loss_chunk = 0;
    return in;
}

// What ./train --plan uses: logits for the GPU's chunk of tokens at a time.
PlanInputs gpu_run(const Config &c, int batch, int seq_len, int rank, int recompute) {
    PlanInputs in = gpu_inputs(batch, seq_len, rank, recompute);
    in.loss_chunk = lm_head_chunk_tokens_default(c.vocab_size);
    return in;
}

const double GIB = 1073741824.0;

std::string verdict_of(const Config &c, const PlanInputs &in, double gpu_gb, int *fits) {
    MemoryPlan p;
    memory_plan_compute(&c, &in, &p);
    char text[512];
    *fits = memory_plan_verdict(&c, &in, &p, gpu_gb, text, sizeof text);
    return text;
}

}  // namespace

TEST_CASE("memory plan: a tiny config, every part by hand") {
    // dim 8, hidden 16, 2 layers, 2 heads / 1 kv head of 4: q_dim 8, kv_dim 4, vocab 32, tied.
    Config c = tiny_config();
    // rank 2 on q and down only; batch 2 x seq 3 = 6 tokens; bf16 weights and activations.
    PlanInputs in = gpu_inputs(2, 3, 2, 0);
    for (int t = 0; t < N_LINEARS; t++) in.enabled[t] = t == LINEAR_Q || t == LINEAR_DOWN;
    MemoryPlan p;
    memory_plan_compute(&c, &in, &p);
    // linear params per layer: q 8*8=64, k 4*8=32, v 32, o 8*8=64, gate 16*8=128, up 128, down 128 = 576;
    // codes = 576 / 2 = 288 bytes per layer, 576 for 2 layers.
    CHECK(p.base_linear == 576);
    // double quant, per matrix: a byte per 64-block + one fp32 absmax2 (one 256-block) + fp32 offset:
    // q, k, v, o: 1 block each -> 1 + 4 + 4 = 9; gate, up, down: 2 blocks -> 2 + 4 + 4 = 10;
    // 4 * 9 + 3 * 10 = 66 per layer, 132 for 2.
    CHECK(p.quant_constants == 132);
    // not linear: embed 32*8 = 256 params * 2 bytes; final norm 8, 2 norms of 8 per layer = 32; 40 fp32.
    CHECK(p.base_other == 256 * 2 + 40 * 4);
    // LoRA: q 2*(8+8) = 32, down 2*(16+8) = 48; 80 per layer, 160 params; 4 bytes each, m and v 8.
    CHECK(p.lora_params == 640);
    CHECK(p.lora_grads == 640);
    CHECK(p.adam_moments == 1280);
    CHECK(p.lora_copy == 160 * 2);
    // per block per token in bf16: xn1, xn2 2*8 + q, att 2*8 + k, v 2*4 + gate, up, h 3*16 + xa 2*2 = 92
    // values, 184 bytes; in fp32: x_mid 8 + the log-sum-exp of 2 heads = 10 values, 40 bytes; 224 bytes,
    // 1344 for 6 tokens. The residual stream is fp32 (as the GPU keeps it): (2 + 1) rows of 8, 96 bytes
    // per token, 576; the final norm's output 8 bf16, 96.
    // Without recompute 576 + 96 + 2 * 1344 = 3360, with it 576 + 96 + 1344 = 2016.
    CHECK(p.activations_no_recompute == 3360);
    CHECK(p.activations_recompute == 2016);
    CHECK(p.activations == 3360);
    CHECK(p.offloaded == 0);
    CHECK(p.paged == 0);
    // backward, widest = hidden 16: fp32 d_x, d_mid, d_normed 3*8 + d_wide, mask 2*16 = 56 values, 224
    // bytes; bf16 dy 16 + d_gate, d_up 2*16 + d_q 8 + d_k, d_v 2*4 + a linear's output 8 = 72 values,
    // 144 bytes; 368 per token, * 6 = 2208.
    CHECK(p.backward_buffers == 2208);
    // token ids, targets, positions, loss weights: 16 bytes per token.
    CHECK(p.batch_inputs == 96);
    // workspaces, each region rounded up to 256 bytes: the LM head + loss's for all 6 tokens at once:
    // ids, targets, weights, losses 6 * 4 = 24 -> 256 each; x's rows 6 * 8 * 2 = 96 -> 256, their
    // gradient 6 * 8 * 4 = 192 -> 256; logits 6 * 32 * 4 = 768, their bf16 gradient 384 -> 512:
    // 6 * 256 + 768 + 512 = 2816. The gradient norm's: one block sum and the total, 2 doubles = 16.
    CHECK(p.workspaces == 2816 + 16);
    // scratch: one layer's 576 linear params in bf16 = 1152.
    CHECK(p.scratch == 1152);
    // LoRA scratch: d_xa 6 * 2 bf16 = 24 -> 256 bytes, then the widest input (down's 16) in fp32, 6 * 16 * 4.
    CHECK(p.adapter_scratch == 256 + 384);
    // attention: head_dim 4 is not a multiple of 8, so the flash kind (the simple kind's
    // cuBLAS pointer arrays want 16-byte-aligned head slices): a float per (sequence,
    // head, token) = 4 * 2 * 2 * 3 = 48. (The simple kind's arithmetic: the 8B case below.)
    CHECK(p.attention == 48);
    // 576 + 132 + 672 + 640 + 640 + 1280 + 320 + 3360 + 2208 + 96 + 2832 + 48 + 1152 + 640
    CHECK(p.total == 14596);

    SUBCASE("fp32 absmax: 10 blocks of 4 bytes per layer") {
        in.double_quant = 0;
        memory_plan_compute(&c, &in, &p);
        CHECK(p.quant_constants == 80);
    }
    SUBCASE("no quantization: fp32 linear weights, no constants, no scratch (CPU path sizes)") {
        in.quant_nf4 = 0;
        in.weight_bytes = 4;
        in.activation_bytes = 4;
        memory_plan_compute(&c, &in, &p);
        CHECK(p.base_linear == 1152 * 4);
        CHECK(p.quant_constants == 0);
        CHECK(p.scratch == 0);
        CHECK(p.base_other == 296 * 4);
        // every value in fp32: (2 * 102 + 24 + 8) values per token * 6 tokens * 4 bytes
        CHECK(p.activations == (2 * 102 + 24 + 8) * 6 * 4);
    }
    SUBCASE("recompute and a loss chunk of 4 tokens") {
        in.recompute = 1;
        in.loss_chunk = 4;
        memory_plan_compute(&c, &in, &p);
        CHECK(p.activations == 2016);
        // logits 4 * 32 * 4 = 512, their gradient 256; the other six regions as above
        CHECK(p.workspaces == 6 * 256 + 512 + 256 + 16);
        CHECK(p.total == 14596 - 3360 + 2016 - 2832 + 2320);
    }
    SUBCASE("recompute and offload: 3 rows of the stream on the GPU, block 0's input on the host") {
        // 2 layers: the GPU's 3 rows are as many as the 2 + 1 without offload; the host holds 1 row,
        // 8 fp32 for each of the 6 tokens
        in.recompute = 1;
        in.offload = 1;
        memory_plan_compute(&c, &in, &p);
        CHECK(p.activations == 2016);
        CHECK(p.offloaded == 192);
        in.recompute = 0;   // offload means nothing without recompute (./train refuses it)
        memory_plan_compute(&c, &in, &p);
        CHECK(p.activations == 3360);
        CHECK(p.offloaded == 0);
    }
    SUBCASE("paged AdamW: m and v counted apart, not in the total") {
        in.paged_optim = 1;
        memory_plan_compute(&c, &in, &p);
        CHECK(p.adam_moments == 1280);
        CHECK(p.paged == 1280);
        CHECK(p.total == 14596 - 1280);
    }
}

TEST_CASE("memory plan: SmolLM2-135M's NF4 base equals nf4_bytes_for over its 7 x 30 matrices") {
    Config c = smollm2_135m();
    // q 576x576, k and v 192x576, o 576x576, gate and up 1536x576, down 576x1536
    const int64_t sizes[7] = {576 * 576, 192 * 576, 192 * 576, 576 * 576, 1536 * 576, 1536 * 576, 576 * 1536};
    for (int double_quant = 0; double_quant <= 1; double_quant++) {
        CAPTURE(double_quant);
        PlanInputs in = gpu_inputs(1, 1024, 16, 0);
        in.double_quant = double_quant;
        MemoryPlan p;
        memory_plan_compute(&c, &in, &p);
        double nf4 = 0, codes = 0, params = 0;
        for (int m = 0; m < 7; m++) {
            nf4 += 30.0 * nf4_bytes_for(sizes[m], double_quant);
            codes += 30.0 * (sizes[m] / 2);
            params += 30.0 * sizes[m];
        }
        CHECK(p.base_linear + p.quant_constants == nf4);
        CHECK(p.base_linear == codes);
        // constants: 0.5 bit per parameter in fp32, about 0.127 with double quant
        double constant_bits = 8 * p.quant_constants / params;
        if (double_quant) CHECK(constant_bits == doctest::Approx(0.127).epsilon(0.01));
        else CHECK(constant_bits == doctest::Approx(0.5).epsilon(0.001));
        // the embedding table in bf16, the 61 norms of 576 in fp32
        CHECK(p.base_other == 2.0 * 49152 * 576 + 4.0 * 61 * 576);
        CHECK(49152.0 * 576 + 61 * 576 + params == (double)model_num_params(&c));
    }
}

TEST_CASE("memory plan: recompute divides the per-block activations by the number of layers") {
    Config c = smollm2_135m();
    PlanInputs in = gpu_inputs(1, 1024, 16, 0);
    MemoryPlan p;
    memory_plan_compute(&c, &in, &p);
    // the residual stream stays: 31 block inputs of 576 values per token, fp32, and the final norm's output, bf16
    double stream = 31.0 * 576 * 1024 * 4 + 576.0 * 1024 * 2;
    CHECK((p.activations_no_recompute - stream) / (p.activations_recompute - stream) == doctest::Approx(30));
    // Overall about 6.5x rather than 30x: per token one block keeps
    // 2*576 + 2*576 + 2*192 + 3*1536 + 7*16 = 7408 bf16 values and 576 + 9 fp32 ones, 17156 bytes,
    // against the stream's 31*576*4 + 576*2 = 72576, so (30*17156 + 72576) / (17156 + 72576) = 6.54.
    CHECK(p.activations_no_recompute / p.activations_recompute == doctest::Approx(6.54).epsilon(0.01));
    in.recompute = 1;
    MemoryPlan with;
    memory_plan_compute(&c, &in, &with);
    CHECK(with.activations == p.activations_recompute);
    CHECK(p.total - with.total == doctest::Approx(p.activations_no_recompute - p.activations_recompute));
}

TEST_CASE("memory plan: Llama-3.1-8B QLoRA, batch 1 x 2048, rank 16, recompute, fits in 24 GB") {
    Config c = llama31_8b();
    PlanInputs in = gpu_run(c, 1, 2048, 16, 1);
    MemoryPlan p;
    memory_plan_compute(&c, &in, &p);
    // Linear params per layer: q, o 4096^2 = 16.78M each; k, v 1024*4096 = 4.19M each; gate, up,
    // down 14336*4096 = 58.72M each; 218.1M per layer, 6.98G in 32 layers. In NF4 + double quant,
    // 4.127 bits each: 3.49e9 bytes of codes + 0.11e9 of constants = 3.60e9 bytes (3.35 GiB).
    CHECK(p.base_linear == 6979321856.0 / 2);
    CHECK(p.base_linear + p.quant_constants == doctest::Approx(3.600e9).epsilon(0.002));
    // The rest, 1.05G params (embeddings and the untied LM head, 128256 x 4096 each, and the norms),
    // stays bf16 as in bitsandbytes / HF QLoRA (nn.Embedding and lm_head are not quantized): 2.10e9.
    // So the frozen base is 5.70e9 bytes, 5.31 GiB: the "about 5.5 GB" quoted for an 8B model in
    // QLoRA. The 4.3-4.6 GB figures are for all 8.03G params at about 4.5 bits (GGUF Q4_0 / Q4_1,
    // or 8.03e9 * 4.5 / 8 = 4.5e9), i.e. with the embeddings and LM head quantized too.
    CHECK(p.base_other == doctest::Approx(2.1019e9).epsilon(0.001));
    double base = p.base_linear + p.quant_constants + p.base_other;
    CHECK(base / GIB == doctest::Approx(5.31).epsilon(0.005));
    // LoRA: 16 * (8192 + 5120 + 5120 + 8192 + 3 * 18432) = 1.31M per layer, 41.9M in all, 16 bytes each.
    CHECK(p.lora_params + p.lora_grads + p.adam_moments == 16.0 * 41943040);
    int fits = 0;
    std::string verdict = verdict_of(c, in, 24, &fits);
    CHECK(fits == 1);
    CHECK(verdict.rfind("fits in 24 GB with ", 0) == 0);
    // Attention scratch: one head's scores 12 * 2048^2 bytes = 50.3 MB, so 10 heads at a time in
    // 512 MiB; plus d_k and d_v per query head, 2 * 4 * 2048 * 4096 bytes.
    CHECK(p.attention == 10.0 * 12 * 2048 * 2048 + 8.0 * 2048 * 4096);
    // Workspaces: logits for the GPU's chunk, 64 MiB / (4 * 128256) = 130 tokens at a time, fp32 + a
    // bf16 gradient (both multiples of 256 bytes); the 2048 tokens' rows of x in bf16 and their fp32
    // gradient, 6 * 2048 * 4096; 4 * 4 bytes per token of ids, targets, weights, losses; and the
    // gradient norm's 1024 block sums and total, 1025 doubles.
    CHECK(p.workspaces == 130.0 * 128256 * 6 + 6.0 * 2048 * 4096 + 16.0 * 2048 + 1025 * 8);
    // The residual stream with recompute: 33 fp32 rows of 2048 x 4096, 1.03 GiB.
    double stream = 33.0 * 2048 * 4096 * 4;
    CHECK(stream / GIB == doctest::Approx(1.03).epsilon(0.01));
    // about 9 GB in all: comfortably inside a 24 GB card even with the CUDA context. (Of it one
    // block's backward buffers, 0.52 GiB: fp32 d_wide and the dropout mask are [2048, 14336].)
    CHECK(p.backward_buffers / GIB == doctest::Approx(0.516).epsilon(0.01));
    CHECK(p.total / GIB == doctest::Approx(9.03).epsilon(0.01));
    // --offload: the GPU keeps 3 of the 33 rows, the host the inputs of blocks 0..30 (0.97 GiB);
    // --paged-optim: AdamW's 0.31 GiB of m and v move out of the total too
    in.offload = 1;
    in.paged_optim = 1;
    MemoryPlan placed;
    memory_plan_compute(&c, &in, &placed);
    CHECK(placed.offloaded == 31.0 * 2048 * 4096 * 4);
    CHECK(placed.paged == 8.0 * 41943040);
    CHECK(p.total - placed.total == 30.0 * 2048 * 4096 * 4 + 8.0 * 41943040);
}

TEST_CASE("memory plan: verdict strings and the remedies they suggest") {
    Config c = llama31_8b();
    int fits = -1;
    SUBCASE("fits: the spare memory") {
        PlanInputs in = gpu_run(c, 1, 2048, 16, 1);
        MemoryPlan p;
        memory_plan_compute(&c, &in, &p);
        char expected[128];
        std::snprintf(expected, sizeof expected, "fits in 24 GB with %.1f GB to spare", 24 - p.total / GIB);
        CHECK(verdict_of(c, in, 24, &fits) == expected);
        CHECK(fits == 1);
    }
    SUBCASE("too many activations: recompute first, as it alone fits and changes no result") {
        PlanInputs in = gpu_run(c, 4, 4096, 16, 0);
        std::string v = verdict_of(c, in, 24, &fits);
        CHECK(fits == 0);
        CHECK(v.rfind("does not fit in 24 GB: needs ", 0) == 0);
        CHECK(v.find("; use --recompute 1 (needs ") != std::string::npos);
        CHECK(v.find(", or lower --seq to ") != std::string::npos);
        CHECK(v.find(", or lower --batch to 1") != std::string::npos);
        CHECK(v.find("--recompute 1") < v.find("--seq"));
    }
    SUBCASE("recompute already on: the largest batch that fits") {
        PlanInputs in = gpu_run(c, 8, 8192, 16, 1);
        std::string v = verdict_of(c, in, 24, &fits);
        CHECK(fits == 0);
        CHECK(v.find("--recompute") == std::string::npos);
        size_t at = v.find("lower --batch to ");
        REQUIRE(at != std::string::npos);
        int batch = atoi(v.c_str() + at + strlen("lower --batch to "));
        CHECK(batch >= 2);
        CHECK(batch < 8);
        // the suggested batch really fits, and one more does not
        PlanInputs suggested = gpu_run(c, batch, 8192, 16, 1), one_more = gpu_run(c, batch + 1, 8192, 16, 1);
        CHECK(verdict_of(c, suggested, 24, &fits).rfind("fits", 0) == 0);
        CHECK(verdict_of(c, one_more, 24, &fits).rfind("does not fit", 0) == 0);
    }
    SUBCASE("the weights alone are too big: no batch or sequence length helps") {
        PlanInputs in = gpu_run(c, 1, 2048, 16, 1);
        in.quant_nf4 = 0;
        std::string v = verdict_of(c, in, 12, &fits);
        CAPTURE(v);
        CHECK(fits == 0);
        CHECK(v.find("the weights and LoRA state alone need ") != std::string::npos);
        CHECK(v.find("; use --quant nf4") != std::string::npos);
        in.quant_nf4 = 1;
        v = verdict_of(c, in, 4, &fits);
        CHECK(v.find("; use a smaller model or a bigger GPU") != std::string::npos);
        CHECK(v.find("--paged-optim") == std::string::npos);
    }
    SUBCASE("the fixed part fits only with AdamW's m and v paged out: --paged-optim") {
        PlanInputs in = gpu_run(c, 1, 2048, 16, 1);
        MemoryPlan p;
        memory_plan_compute(&c, &in, &p);
        double fixed = p.base_linear + p.quant_constants + p.base_other + p.scratch + p.lora_params + p.lora_grads +
                       p.adam_moments + p.lora_copy;
        double gb = (fixed - p.adam_moments / 2) / GIB;   // between the fixed part with and without m and v
        std::string v = verdict_of(c, in, gb, &fits);
        CAPTURE(v);
        CHECK(v.find("the weights and LoRA state alone need ") != std::string::npos);
        CHECK(v.find("; use --paged-optim") != std::string::npos);
        in.paged_optim = 1;
        CHECK(verdict_of(c, in, gb, &fits).find("--paged-optim") == std::string::npos);
    }
    SUBCASE("offload and paged AdamW are suggested with what they leave, and not when already on") {
        PlanInputs in = gpu_run(c, 2, 8192, 16, 1);
        MemoryPlan p, offloaded;
        memory_plan_compute(&c, &in, &p);
        PlanInputs with_offload = in;
        with_offload.offload = 1;
        memory_plan_compute(&c, &with_offload, &offloaded);
        REQUIRE(offloaded.total < p.total);
        double gb = (p.total + offloaded.total) / 2 / GIB;   // fits with offload, not without
        std::string v = verdict_of(c, in, gb, &fits);
        CAPTURE(v);
        CHECK(fits == 0);
        char expected[64];
        std::snprintf(expected, sizeof expected, "; use --offload (needs %.1f GB)", offloaded.total / GIB);
        CHECK(v.find(expected) != std::string::npos);   // first: it fits and changes no result
        CHECK(v.find("use --paged-optim (needs ") != std::string::npos);
        CHECK(verdict_of(c, with_offload, gb, &fits).rfind("fits", 0) == 0);
        in.recompute = 0;
        CHECK(verdict_of(c, in, gb, &fits).find("use --recompute 1 --offload (needs ") != std::string::npos);
        in.recompute = 1;
        in.offload = 1;
        in.paged_optim = 1;
        MemoryPlan all_on;
        memory_plan_compute(&c, &in, &all_on);
        v = verdict_of(c, in, 0.95 * all_on.total / GIB, &fits);
        CHECK(v.rfind("does not fit", 0) == 0);
        CHECK(v.find("--offload") == std::string::npos);
        CHECK(v.find("--paged-optim") == std::string::npos);
    }
}

TEST_CASE("memory plan: the printed table names every part and both activation sizes") {
    Config c = smollm2_135m();
    PlanInputs in = gpu_run(c, 1, 1024, 16, 0);
    MemoryPlan p;
    memory_plan_compute(&c, &in, &p);
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    REQUIRE(out);
    memory_plan_print(&c, &in, &p, 8, out);
    std::fclose(out);
    std::string s(text);
    std::free(text);
    for (const char *part : {"base linear weights (NF4 codes)", "quantization constants (double quant)",
                             "embeddings, LM head (bf16), norms (fp32)", "LoRA parameters (fp32)", "LoRA gradients (fp32)",
                             "AdamW m and v (fp32)", "activations (bf16, recompute off)",
                             "workspaces (LM head + loss, gradient norm)",
                             "one block dequantized (scratch)", "total", "without recompute", "with it",
                             "fits in 8 GB with "})
        CHECK_MESSAGE(s.find(part) != std::string::npos, part);
}

// ./train --plan on a model's config.json alone (dev/bench/shapes/: Llama-3.1-8B,
// not downloaded): the table, and the largest batch that fits --gpu-mem, which
// this file's arithmetic confirms (it fits, twice it does not).
TEST_CASE("memory plan: ./train --plan reads a config.json alone and says which batch fits a 16 GB T4") {
    const char *log = "/tmp/qlora_plan_8b.log";
    std::string command = std::string("./train --plan --model dev/bench/shapes/llama-3.1-8b --gpu-mem 16 --seq 512 "
                                      "--recompute 1 > ") + log + " 2>&1";
    REQUIRE(std::system(command.c_str()) == 0);
    FILE *f = std::fopen(log, "r");
    REQUIRE(f);
    std::string text;
    char line[512];
    while (std::fgets(line, sizeof line, f)) text += line;
    std::fclose(f);
    std::remove(log);
    CHECK_MESSAGE(text.find("config.json only") != std::string::npos, text);
    size_t at = text.find("fits in 16 GB: --batch ");
    REQUIRE_MESSAGE(at != std::string::npos, text);
    int batch = std::atoi(text.c_str() + at + std::strlen("fits in 16 GB: --batch "));
    CHECK(batch >= 1);
    char err[256];
    Config c;
    REQUIRE(model_read_hf_config("dev/bench/shapes/llama-3.1-8b/config.json", &c, err, sizeof err) == 0);
    CHECK(c.n_layers == 32);
    MemoryPlan fits, twice;
    PlanInputs in = gpu_run(c, batch, 512, 16, 1), in2 = gpu_run(c, 2 * batch, 512, 16, 1);
    memory_plan_compute(&c, &in, &fits);
    memory_plan_compute(&c, &in2, &twice);
    CHECK(fits.total <= 16 * GIB);
    CHECK(twice.total > 16 * GIB);
}
