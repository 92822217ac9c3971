// trainer/memory_plan.c: the memory arithmetic of a training run (see trainer/memory_plan.h).
#include "trainer/memory_plan.h"
#include "adamw.h"
#include "nf4.h"
#include "ops/cross_entropy.h"
#include "ops/lora_scratch.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

static const double BYTES_PER_GB = 1073741824.0;   // 2^30
static const double BYTES_PER_MIB = 1048576.0;     // 2^20
// The residual stream (the block inputs, x_mid) and attention's log-sum-exp: fp32 on the GPU too.
static const double FP32_BYTES = 4.0;
// With offload the GPU keeps 3 rows of the stream: two taking turns, and recompute's output.
static const double OFFLOAD_STREAM_ROWS = 3.0;

// Input and output widths of each linear layer's matrix W [out, in] (model.h).
static void target_shapes(const Config *c, int64_t in[N_LINEARS], int64_t out[N_LINEARS]) {
    for (int t = 0; t < N_LINEARS; t++) {
        int in_dim, out_dim;
        linear_dims(c, t, &in_dim, &out_dim);
        in[t] = in_dim;
        out[t] = out_dim;
    }
}

// Parameters of one block's seven linear weights.
static double linear_params_per_layer(const Config *c) {
    int64_t in[N_LINEARS], out[N_LINEARS];
    target_shapes(c, in, out);
    double params = 0;
    for (int t = 0; t < N_LINEARS; t++) params += (double)(in[t] * out[t]);
    return params;
}

// The frozen model: linear weights (NF4 codes + constants, or plain), the embedding
// table (and an untied LM head) plain, the norms and biases in fp32.
static void plan_base(const Config *c, const PlanInputs *in, MemoryPlan *p) {
    double linear_params = linear_params_per_layer(c) * c->n_layers;
    double tables = (double)c->vocab_size * c->dim * (c->tied_embeddings ? 1 : 2);
    double norms_and_biases = (double)model_num_params(c) - linear_params - tables;
    p->base_other = tables * in->weight_bytes + norms_and_biases * FP32_BYTES;
    if (!in->quant_nf4) {
        p->base_linear = linear_params * in->weight_bytes;
        return;
    }
    int64_t ins[N_LINEARS], outs[N_LINEARS];
    target_shapes(c, ins, outs);
    for (int t = 0; t < N_LINEARS; t++) {
        int64_t n = ins[t] * outs[t];
        // codes: two 4-bit values per byte
        double codes = (double)((n + 1) / 2);
        p->base_linear += codes * c->n_layers;
        p->quant_constants += ((double)nf4_bytes_for(n, in->double_quant) - codes) * c->n_layers;
    }
    // one block's seven matrices, dequantized when the step needs them
    p->scratch = linear_params_per_layer(c) * in->weight_bytes;
}

// Output rows of the adapted matrices of one block: DoRA keeps a magnitude, a
// norm and a value of w per token for each.
static double adapted_outputs(const Config *c, const PlanInputs *in) {
    int64_t ins[N_LINEARS], outs[N_LINEARS];
    target_shapes(c, ins, outs);
    double total = 0;
    for (int t = 0; t < N_LINEARS; t++)
        if (in->enabled[t]) total += (double)outs[t];
    return total;
}

// The adapters: A [rank, in] and B [out, rank] per enabled target and layer
// (with DoRA also m [out]), fp32 parameters, fp32 gradients, and AdamW's fp32 m and v;
// and the parameters' 16-bit copy that the GEMMs read.
static void plan_lora(const Config *c, const PlanInputs *in, MemoryPlan *p) {
    int64_t ins[N_LINEARS], outs[N_LINEARS];
    target_shapes(c, ins, outs);
    double params = 0;
    for (int t = 0; t < N_LINEARS; t++)
        if (in->enabled[t]) params += (double)in->rank * (double)(ins[t] + outs[t]) * c->n_layers;
    double magnitudes = in->dora ? adapted_outputs(c, in) * c->n_layers : 0.0;
    params += magnitudes;
    p->dora_magnitudes = 4 * magnitudes;
    p->lora_params = 4 * params;
    p->lora_grads = 4 * params;
    p->adam_moments = 8 * params;
    p->lora_copy = in->activation_bytes * params;
}

static int enabled_targets(const PlanInputs *in) {
    int count = 0;
    for (int t = 0; t < N_LINEARS; t++) count += in->enabled[t] != 0;
    return count;
}

// Bytes per token one block keeps for backward: in the activation type xn1, xn2 [dim];
// q, att [q_dim]; k, v [kv_dim]; gate, up, h [hidden]; xa [rank] per adapter (with DoRA
// also w [out] per adapter); in fp32 x_mid [dim] and the log-sum-exp [n_heads].
static double block_bytes_per_token(const Config *c, const PlanInputs *in) {
    double q_dim = (double)c->n_heads * c->head_dim, kv_dim = (double)c->n_kv_heads * c->head_dim;
    double act = 2.0 * c->dim + 2 * q_dim + 2 * kv_dim + 3.0 * c->hidden_dim + (double)in->rank * enabled_targets(in) +
                 (in->dora ? adapted_outputs(c, in) : 0.0);
    double fp32 = (double)c->dim + c->n_heads;
    return act * in->activation_bytes + fp32 * FP32_BYTES;
}

// DoRA's per-block extras that are not per token: its fp32 row norms.
static double dora_block_norm_bytes(const Config *c, const PlanInputs *in) {
    return in->dora ? 4.0 * adapted_outputs(c, in) : 0.0;
}

// The GPU's adapter scratch (ops/lora_scratch.h), as the trainer sizes it: for the
// input group whose enabled adapters need the most together, and with DoRA for
// its widest adapter.
static double adapter_scratch_bytes(const Config *c, const PlanInputs *in) {
    size_t tokens = (size_t)in->batch * in->seq_len, lora = 0, dora = 0;
    for (int group = 0; group < N_LINEAR_GROUPS; group++) {
        int count = 0, in_dim = 0, out_dim = 0;
        for (int t = LINEAR_GROUP_FIRST[group]; t < LINEAR_GROUP_FIRST[group + 1]; t++) {
            if (!in->enabled[t]) continue;
            count++;
            linear_dims(c, t, &in_dim, &out_dim);
            size_t bytes = dora_scratch_size(tokens, in_dim, out_dim, in->activation_bytes);
            if (in->dora && bytes > dora) dora = bytes;
        }
        size_t bytes = count ? lora_scratch_size(tokens, in_dim, count, in->rank, in->activation_bytes) : 0;
        if (bytes > lora) lora = bytes;
    }
    return (double)lora + (double)dora;
}

// Bytes per token of one block's backward buffers (trainer/train_gpu.cu's alloc_buffers), with
// widest = max(dim, hidden, q_dim): in fp32 d_x, d_mid, d_normed [dim], d_wide and the dropout
// mask [widest]; in the activation type dy [widest], d_gate, d_up [hidden], d_q [q_dim],
// d_k, d_v [kv_dim] and a linear's output [dim].
static double backward_bytes_per_token(const Config *c, const PlanInputs *in) {
    double q_dim = (double)c->n_heads * c->head_dim, kv_dim = (double)c->n_kv_heads * c->head_dim;
    double widest = fmax(fmax((double)c->dim, (double)c->hidden_dim), q_dim);
    double fp32 = 3.0 * c->dim + 2 * widest;
    double act = widest + 2.0 * c->hidden_dim + q_dim + 2 * kv_dim + c->dim;
    return fp32 * FP32_BYTES + act * in->activation_bytes;
}

// The token ids, targets, positions and loss weights of a micro-batch: 4 bytes each per token.
static const double BATCH_INPUT_BYTES_PER_TOKEN = 16.0;

static void plan_activations(const Config *c, const PlanInputs *in, MemoryPlan *p) {
    double tokens = (double)in->batch * in->seq_len;
    double bytes_per_value = tokens * in->activation_bytes;
    // one row of the residual stream: a block's input, fp32
    double row = tokens * c->dim * FP32_BYTES;
    double rows = c->n_layers + 1.0;   // every block's input and the last block's output
    double normed = (double)c->dim * bytes_per_value;   // the final norm's output
    double one_block = block_bytes_per_token(c, in) * tokens + dora_block_norm_bytes(c, in);
    p->activations_no_recompute = rows * row + normed + c->n_layers * one_block;
    int offload = in->offload && in->recompute;
    p->activations_recompute = (offload ? OFFLOAD_STREAM_ROWS : rows) * row + normed + one_block;
    p->activations = in->recompute ? p->activations_recompute : p->activations_no_recompute;
    // offload: the inputs of blocks 0 .. L-2 (backward starts with the last one's, on the GPU)
    p->offloaded = offload && c->n_layers > 1 ? (c->n_layers - 1.0) * row : 0.0;
    p->backward_buffers = backward_bytes_per_token(c, in) * tokens;
    p->batch_inputs = BATCH_INPUT_BYTES_PER_TOKEN * tokens;
}

// The GPU step's workspaces, by the functions that size them in the trainer: the LM
// head + loss's for every token of the micro-batch (loss_chunk tokens of logits at a
// time, all when 0), and the gradient norm's for every trainable parameter.
static void plan_workspaces(const Config *c, const PlanInputs *in, MemoryPlan *p) {
    size_t tokens = (size_t)in->batch * in->seq_len, n_params = (size_t)(p->lora_params / 4);
    int chunk_tokens = in->loss_chunk > 0 ? in->loss_chunk : INT_MAX;
    p->workspaces = (double)lm_head_cross_entropy_workspace_bytes(tokens, c->dim, c->vocab_size, chunk_tokens) +
                    (double)sum_squares_workspace_bytes(n_params);
}

// The GPU attention's scratch (ops/attention.cu, trainer/train_gpu.cu): the simple kind keeps
// 12 bytes per score (S and dP fp32, P and dS bf16) for as many heads at a time as
// ATTENTION_SCORE_BUDGET_BYTES holds, plus d_k and d_v per query head, fp32 [tokens, q_dim].
// When not even one head fits (or head_dim is not a multiple of 8), the flash kind
// needs a float per (sequence, head, token). On sm_80 and newer with head_dim 64 or
// 128 the trainer runs the tensor-core flash kind (attention_pick_kind_gpu), which
// needs only that float too: there this is an upper bound (the plan knows no GPU).
static void plan_attention(const Config *c, const PlanInputs *in, MemoryPlan *p) {
    double budget = (double)ATTENTION_SCORE_BUDGET_BYTES;
    double one_head = 12.0 * in->batch * (double)in->seq_len * in->seq_len;
    if (one_head > budget || c->head_dim % 8 != 0) {
        p->attention = 4.0 * in->batch * c->n_heads * in->seq_len;
        return;
    }
    double heads = floor(budget / one_head) < c->n_heads ? floor(budget / one_head) : c->n_heads;
    double tokens = (double)in->batch * in->seq_len, q_dim = (double)c->n_heads * c->head_dim;
    p->attention = heads * one_head + 2 * 4 * tokens * q_dim;
}

void memory_plan_compute(const Config *c, const PlanInputs *in, MemoryPlan *out) {
    memset(out, 0, sizeof *out);
    plan_base(c, in, out);
    plan_lora(c, in, out);
    plan_activations(c, in, out);
    plan_workspaces(c, in, out);
    plan_attention(c, in, out);
    out->adapter_scratch = adapter_scratch_bytes(c, in);
    out->paged = in->paged_optim ? out->adam_moments : 0.0;
    out->total = out->base_linear + out->quant_constants + out->base_other + out->lora_params + out->lora_grads +
                 out->adam_moments - out->paged + out->lora_copy + out->activations + out->backward_buffers +
                 out->batch_inputs + out->workspaces + out->attention + out->scratch +
                 out->adapter_scratch;
}

// ---- the verdict -------------------------------------------------------------

// Appends printf-style text to the string in buf.
static void append(char *buf, size_t size, const char *format, ...) {
    size_t used = strlen(buf);
    if (used + 1 >= size) return;
    va_list args;
    va_start(args, format);
    vsnprintf(buf + used, size - used, format, args);
    va_end(args);
}

// One change of the options that would lower the total.
#define MAX_REMEDIES 6
typedef struct {
    char text[48];     // e.g. "lower --batch to 2"
    double total;      // bytes the run needs with it
    int fits;
} Remedy;

static double total_with(const Config *c, const PlanInputs *in) {
    MemoryPlan p;
    memory_plan_compute(c, in, &p);
    return p.total;
}

static void remedy_set(Remedy *r, const Config *c, const PlanInputs *in, double limit, const char *text) {
    snprintf(r->text, sizeof r->text, "%s", text);
    r->total = total_with(c, in);
    r->fits = r->total <= limit;
}

// The largest batch below the current one that fits, else 1. Memory grows
// with the batch, so a binary search finds it (--batch may be in the billions).
static void remedy_batch(Remedy *r, const Config *c, const PlanInputs *in, double limit) {
    PlanInputs smaller = *in;
    int low = 1, high = in->batch - 1;   // the answer lies in [low, high]; low when none fits
    while (low < high) {
        smaller.batch = low + (high - low + 1) / 2;
        if (total_with(c, &smaller) <= limit) low = smaller.batch;
        else high = smaller.batch - 1;
    }
    smaller.batch = low;
    char text[48];
    snprintf(text, sizeof text, "lower --batch to %d", smaller.batch);
    remedy_set(r, c, &smaller, limit, text);
}

// The longest halving of the sequence length (down to 16 tokens) that fits, else the shortest tried.
static void remedy_seq(Remedy *r, const Config *c, const PlanInputs *in, double limit) {
    PlanInputs shorter = *in;
    shorter.seq_len = in->seq_len / 2;
    while (shorter.seq_len / 2 >= 16 && total_with(c, &shorter) > limit) shorter.seq_len /= 2;
    char text[48];
    snprintf(text, sizeof text, "lower --seq to %d", shorter.seq_len);
    remedy_set(r, c, &shorter, limit, text);
}

// Remedy a goes before b: one that fits before one that does not; among those
// that fit, the order they were collected in; among the others, the smaller total.
static int goes_before(const Remedy *a, const Remedy *b) {
    if (a->fits != b->fits) return a->fits;
    return !a->fits && a->total < b->total;
}

// A remedy that turns on one of the options that move state to host memory:
// offload (it needs recompute) or paged AdamW.
static void remedy_host(Remedy *r, const Config *c, const PlanInputs *in, double limit, int offload) {
    PlanInputs changed = *in;
    if (offload) {
        changed.recompute = 1;
        changed.offload = 1;
    } else {
        changed.paged_optim = 1;
    }
    const char *text = !offload ? "use --paged-optim" : in->recompute ? "use --offload" : "use --recompute 1 --offload";
    remedy_set(r, c, &changed, limit, text);
}

// The changes worth trying, most useful first: the ones that fit, in the order
// recompute, offload, paged AdamW, NF4, batch, sequence (the least change to
// training first); then the others by what they leave.
static int collect_remedies(const Config *c, const PlanInputs *in, double limit, Remedy remedies[MAX_REMEDIES]) {
    int count = 0;
    if (!in->recompute) {
        PlanInputs changed = *in;
        changed.recompute = 1;
        remedy_set(&remedies[count++], c, &changed, limit, "use --recompute 1");
    }
    if (!in->offload) remedy_host(&remedies[count++], c, in, limit, 1);
    if (!in->paged_optim) remedy_host(&remedies[count++], c, in, limit, 0);
    if (!in->quant_nf4) {
        PlanInputs changed = *in;
        changed.quant_nf4 = 1;
        changed.double_quant = 1;
        remedy_set(&remedies[count++], c, &changed, limit, "use --quant nf4 --double-quant 1");
    }
    if (in->batch > 1) remedy_batch(&remedies[count++], c, in, limit);
    if (in->seq_len >= 32) remedy_seq(&remedies[count++], c, in, limit);
    // stable insertion sort
    for (int i = 1; i < count; i++) {
        Remedy r = remedies[i];
        int j = i;
        for (; j > 0 && goes_before(&r, &remedies[j - 1]); j--) remedies[j] = remedies[j - 1];
        remedies[j] = r;
    }
    return count;
}

int memory_plan_verdict(const Config *c, const PlanInputs *in, const MemoryPlan *p, double gpu_mem_gb, char *text,
                        size_t text_size) {
    double limit = gpu_mem_gb * BYTES_PER_GB;
    text[0] = '\0';
    if (p->total <= limit) {
        append(text, text_size, "fits in %g GB with %.1f GB to spare", gpu_mem_gb, (limit - p->total) / BYTES_PER_GB);
        return 1;
    }
    append(text, text_size, "does not fit in %g GB: needs %.1f GB", gpu_mem_gb, p->total / BYTES_PER_GB);
    // what no batch or sequence length changes
    double fixed = p->base_linear + p->quant_constants + p->base_other + p->scratch + p->lora_params +
                   p->lora_grads + p->adam_moments - p->paged + p->lora_copy;
    if (fixed > limit) {
        // paged AdamW takes m and v off the GPU, the one fixed part that can leave
        int paging_helps = !in->paged_optim && fixed - p->adam_moments <= limit;
        append(text, text_size, ", and the weights and LoRA state alone need %.1f GB; %s", fixed / BYTES_PER_GB,
               !in->quant_nf4 ? "use --quant nf4"
               : paging_helps ? "use --paged-optim (AdamW's m and v in host memory), a smaller model or a bigger GPU"
                              : "use a smaller model or a bigger GPU");
        return 0;
    }
    Remedy remedies[MAX_REMEDIES];
    int count = collect_remedies(c, in, limit, remedies);
    for (int i = 0; i < count; i++)
        append(text, text_size, "%s%s (needs %.1f GB)", i == 0 ? "; " : ", or ", remedies[i].text,
               remedies[i].total / BYTES_PER_GB);
    if (count == 0) append(text, text_size, "; use a smaller model or a bigger GPU");
    return 0;
}

// ---- the printed plan ----------------------------------------------------------

static const char *number_type_name(int bytes) { return bytes == 2 ? "bf16" : bytes == 4 ? "fp32" : "?"; }

static void print_row(FILE *out, const char *what, double bytes, double total) {
    // share = bytes / total
    fprintf(out, "  %-44s %11.1f MiB %6.1f%%\n", what, bytes / BYTES_PER_MIB, 100.0 * bytes / total);
}

static void print_header(const Config *c, const PlanInputs *in, const MemoryPlan *p, FILE *out) {
    fprintf(out, "Memory plan: %s, %d layers, dim %d, hidden %d, heads %d/%d x %d, vocab %d, %s embeddings, %.2fM "
                 "parameters\n",
            arch_name(c->arch), c->n_layers, c->dim, c->hidden_dim, c->n_heads, c->n_kv_heads, c->head_dim,
            c->vocab_size, c->tied_embeddings ? "tied" : "untied", model_num_params(c) / 1e6);
    long long tokens = (long long)in->batch * in->seq_len;
    fprintf(out, "  batch %d x seq %d = %lld tokens per micro-batch; LoRA rank %d on", in->batch, in->seq_len, tokens,
            in->rank);
    for (int t = 0, first = 1; t < N_LINEARS; t++) {
        if (!in->enabled[t]) continue;
        fprintf(out, "%s%s", first ? " " : ",", LINEAR_NAMES[t]);
        first = 0;
    }
    fprintf(out, " (%.2fM trainable parameters)\n", p->lora_params / 4 / 1e6);
    long long logit_tokens = in->loss_chunk > 0 && in->loss_chunk < tokens ? in->loss_chunk : tokens;
    fprintf(out, "  base %s; weights %s, activations %s, logits fp32 for %lld tokens at a time; recompute %s%s%s\n\n",
            !in->quant_nf4 ? "not quantized" : in->double_quant ? "NF4 + double quant" : "NF4 (fp32 absmax)",
            number_type_name(in->weight_bytes), number_type_name(in->activation_bytes), logit_tokens,
            in->recompute ? "on" : "off", in->recompute && in->offload ? ", offload" : "",
            in->paged_optim ? ", paged AdamW" : "");
}

void memory_plan_print(const Config *c, const PlanInputs *in, const MemoryPlan *p, double gpu_mem_gb, FILE *out) {
    char label[64];
    print_header(c, in, p, out);
    fprintf(out, "  %-44s %15s %7s\n", "what", "size", "share");
    snprintf(label, sizeof label, "base linear weights (%s)", in->quant_nf4 ? "NF4 codes" : number_type_name(in->weight_bytes));
    print_row(out, label, p->base_linear, p->total);
    if (in->quant_nf4)
        print_row(out, in->double_quant ? "quantization constants (double quant)" : "quantization constants (fp32)",
                  p->quant_constants, p->total);
    snprintf(label, sizeof label, "embeddings, LM head (%s), norms (fp32)", number_type_name(in->weight_bytes));
    print_row(out, label, p->base_other, p->total);
    print_row(out, in->dora ? "LoRA + DoRA parameters (fp32)" : "LoRA parameters (fp32)", p->lora_params, p->total);
    if (in->dora) print_row(out, "  of which DoRA magnitude vectors", p->dora_magnitudes, p->total);
    print_row(out, "LoRA gradients (fp32)", p->lora_grads, p->total);
    snprintf(label, sizeof label, "LoRA parameters' %s copy (the GEMMs')", number_type_name(in->activation_bytes));
    print_row(out, label, p->lora_copy, p->total);
    if (in->paged_optim)
        fprintf(out, "  %-44s %11.1f MiB (paged, not in the total)\n", "AdamW m and v (fp32)",
                p->adam_moments / BYTES_PER_MIB);
    else
        print_row(out, "AdamW m and v (fp32)", p->adam_moments, p->total);
    snprintf(label, sizeof label, "activations (%s, recompute %s%s)", number_type_name(in->activation_bytes),
             in->recompute ? "on" : "off", in->recompute && in->offload ? ", offload" : "");
    print_row(out, label, p->activations, p->total);
    print_row(out, "backward buffers (one block's gradients)", p->backward_buffers, p->total);
    print_row(out, "token ids, targets, positions, loss weights", p->batch_inputs, p->total);
    print_row(out, "workspaces (LM head + loss, gradient norm)", p->workspaces, p->total);
    print_row(out, "attention scratch (scores of several heads)", p->attention, p->total);
    if (in->quant_nf4) print_row(out, "one block dequantized (scratch)", p->scratch, p->total);
    print_row(out, in->dora ? "LoRA + DoRA scratch (the widest linear)" : "LoRA scratch (the widest linear)",
              p->adapter_scratch, p->total);
    fprintf(out, "  %-44s %11.1f MiB (%.2f GB)\n", "total", p->total / BYTES_PER_MIB, p->total / BYTES_PER_GB);
    double base = p->base_linear + p->quant_constants + p->base_other;
    double all_params = (double)model_num_params(c);
    // bits/param = 8 * bytes / params
    fprintf(out, "\n  frozen base model: %.1f MiB (%.2f GB), %.2f bits per parameter\n", base / BYTES_PER_MIB,
            base / BYTES_PER_GB, 8.0 * base / all_params);
    // saving = without - with
    fprintf(out, "  activations: %.1f MiB without recompute, %.1f MiB with it%s (saves %.1f MiB, %.1fx less)\n",
            p->activations_no_recompute / BYTES_PER_MIB, p->activations_recompute / BYTES_PER_MIB,
            in->recompute && in->offload ? " and offload" : "",
            (p->activations_no_recompute - p->activations_recompute) / BYTES_PER_MIB,
            p->activations_no_recompute / p->activations_recompute);
    if (p->offloaded > 0) {
        // saved = the stream rows the GPU no longer holds: L + 1 - 3
        double row = p->offloaded / (c->n_layers - 1);
        fprintf(out, "  offload: the inputs of %d blocks (%.1f MiB) wait in pinned host memory; the GPU holds 3 rows "
                     "of the residual stream instead of %d (%.1f MiB less)\n", c->n_layers - 1,
                p->offloaded / BYTES_PER_MIB, c->n_layers + 1,
                (c->n_layers + 1 - OFFLOAD_STREAM_ROWS) * row / BYTES_PER_MIB);
    }
    if (p->paged > 0)
        fprintf(out, "  paged AdamW: m and v (%.1f MiB) in managed memory, on the GPU while it has room, paged to the "
                     "host under memory pressure (the total assumes paged out)\n", p->paged / BYTES_PER_MIB);
    fprintf(out, "  not counted: the CUDA context and allocator slack (about 0.5 GB)\n");
    if (gpu_mem_gb <= 0) return;
    char verdict[512];
    memory_plan_verdict(c, in, p, gpu_mem_gb, verdict, sizeof verdict);
    fprintf(out, "  %s\n", verdict);
}
