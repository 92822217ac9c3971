// trainer/train_gpu.cu: forward and backward of the adapted model on one GPU, the
// same lines as trainer/train_step.cpp (read that first: it is the reference), with
// each CPU call replaced by its kernel:
//   xn1 = rmsnorm(x_in);  q, k, v = lin_q(xn1), lin_k(xn1), lin_v(xn1);  rope(q, k)
//   att = causal attention;  x_mid = x_in + lin_o(att)
//   xn2 = rmsnorm(x_mid); gate, up = lin_gate(xn2), lin_up(xn2);  h = silu(gate) * up
//   x_out = x_mid + lin_down(h)
// lin_t(x) = x W_t^T (+ bias) + s (dropout(x) A_t^T) B_t^T, W_t dequantized from NF4 to 16-bit per block,
// or DoRA's layer (dora.h) when the adapters have magnitude vectors. The linears that read
// one input (an input group, lora.h: q|k|v, o, gate|up, down) run together: one dropout
// mask, and without DoRA their adapters' A products as one GEMM, xa = dropout(x) [A_q; A_k; A_v]^T,
// then y_t += s xa_t B_t^T into each base GEMM's output (lora_group_forward_gpu).
#include "trainer/train_gpu.h"

#ifdef __CUDACC__
#include "dora.h"
#include "ops/cross_entropy.h"
#include "ops/layers.h"
#include "trainer/memory_plan.h"

#include <stdlib.h>
#include <string.h>

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

static size_t linear_numel(const Config *c, int target) {
    int in_dim, out_dim;
    linear_dims(c, target, &in_dim, &out_dim);
    return (size_t)in_dim * out_dim;
}

// A device copy of n host floats (NULL stays NULL), counted in *counter.
static float *upload_floats(const float *host, size_t n, const char *what, size_t *counter) {
    if (!host) return NULL;
    float *d = (float *)gpu_malloc(sizeof(float) * n, what);
    gpu_upload(d, host, sizeof(float) * n);
    *counter += sizeof(float) * n;
    return d;
}

static void *alloc_counted(size_t bytes, const char *what, size_t *counter) {
    *counter += bytes;
    return gpu_malloc(bytes, what);
}

// ---- set-up -------------------------------------------------------------------

static void upload_base(GpuTrainer *g, const Model *model, int double_quant) {
    const Config *c = &g->c;
    GpuMemoryUse *mem = &g->memory;
    size_t largest = 0, block_numel = 0;
    for (int t = 0; t < N_LINEARS; t++) {
        largest = max_size(largest, linear_numel(c, t));
        block_numel += linear_numel(c, t);
    }
    // each fp32 matrix goes up once, through this staging buffer, and is quantized there
    float *staging = (float *)gpu_malloc(sizeof(float) * largest, "fp32 staging for quantization");
    g->blocks = (GpuBlock *)cpu_calloc((size_t)c->n_layers, sizeof(GpuBlock), "GPU blocks");
    for (int l = 0; l < c->n_layers; l++) {
        const LayerWeights *lw = &model->layers[l];
        GpuBlock *b = &g->blocks[l];
        b->attn_norm = upload_floats(lw->attn_norm, c->dim, "attention norm", &mem->embeddings);
        b->mlp_norm = upload_floats(lw->mlp_norm, c->dim, "MLP norm", &mem->embeddings);
        b->bq = upload_floats(lw->bq, (size_t)c->n_heads * c->head_dim, "q bias", &mem->embeddings);
        b->bk = upload_floats(lw->bk, (size_t)c->n_kv_heads * c->head_dim, "k bias", &mem->embeddings);
        b->bv = upload_floats(lw->bv, (size_t)c->n_kv_heads * c->head_dim, "v bias", &mem->embeddings);
        for (int t = 0; t < N_LINEARS; t++) {
            size_t n = linear_numel(c, t);
            if (g->quant == QUANT_NONE) {
                b->dense[t] = gpu_upload_as_act16(linear_weight(lw, t), n, "16-bit base weights");
                mem->base_codes += sizeof(act16) * n;
                continue;
            }
            gpu_upload(staging, linear_weight(lw, t), sizeof(float) * n);
            nf4_quantize_gpu(&b->nf4[t], staging, (int64_t)n, double_quant, "NF4 base weights");
            size_t total = nf4_bytes_for((int64_t)n, double_quant), codes = ((size_t)n + 1) / 2;
            mem->base_codes += codes;
            mem->base_constants += total - codes;
        }
    }
    gpu_free(staging);
    if (g->quant == QUANT_NF4)
        g->dequant_scratch = (act16 *)alloc_counted(sizeof(act16) * block_numel, "one block's dequantized weights",
                                                   &mem->scratch);
    size_t table = (size_t)c->vocab_size * c->dim;
    g->embed = gpu_upload_as_act16(model->embed, table, "embedding (16-bit)");
    mem->embeddings += sizeof(act16) * table;
    if (c->tied_embeddings || model->lm_head == model->embed) {
        g->lm_head = g->embed;
    } else {
        g->lm_head = gpu_upload_as_act16(model->lm_head, table, "LM head (16-bit)");
        mem->embeddings += sizeof(act16) * table;
    }
    g->final_norm = upload_floats(model->final_norm, c->dim, "final norm", &mem->embeddings);
    float inv_freq[MAX_HEAD_DIM / 2];
    rope_inv_freq(c, inv_freq);
    g->inv_freq = upload_floats(inv_freq, (size_t)c->head_dim / 2, "RoPE frequencies", &mem->scratch);
}

// The device copies of the trainable state, in the host's flat layout (lora.h):
// each adapter sits at the same offset on both sides.
static void alloc_lora(GpuTrainer *g, const LoraSet *lora) {
    int n_adapters = g->c.n_layers * N_LINEARS;
    g->offset_A = (size_t *)cpu_malloc(sizeof(size_t) * n_adapters, "adapter offsets");
    g->offset_B = (size_t *)cpu_malloc(sizeof(size_t) * n_adapters, "adapter offsets");
    g->offset_m = (size_t *)cpu_malloc(sizeof(size_t) * n_adapters, "adapter offsets");
    for (int i = 0; i < n_adapters; i++) {
        const LoraAdapter *a = &lora->adapters[i];
        g->offset_A[i] = a->A ? (size_t)(a->A - lora->params) : (size_t)-1;
        g->offset_B[i] = a->A ? (size_t)(a->B - lora->params) : (size_t)-1;
        g->offset_m[i] = a->m ? (size_t)(a->m - lora->params) : (size_t)-1;
    }
    g->n_params = lora->n_params;
    size_t bytes = sizeof(float) * (g->n_params ? g->n_params : 1);
    g->params = (float *)alloc_counted(bytes, "LoRA parameters", &g->memory.lora_and_adam);
    g->grads = (float *)alloc_counted(bytes, "LoRA gradients", &g->memory.lora_and_adam);
    if (g->placement.paged_optim) {
        g->m = (float *)gpu_malloc_managed(bytes, "AdamW first moments (paged)");
        g->v = (float *)gpu_malloc_managed(bytes, "AdamW second moments (paged)");
        g->memory.paged += 2 * bytes;
    } else {
        g->m = (float *)alloc_counted(bytes, "AdamW first moments", &g->memory.lora_and_adam);
        g->v = (float *)alloc_counted(bytes, "AdamW second moments", &g->memory.lora_and_adam);
    }
    g->params_act16 = (act16 *)alloc_counted(bytes / 2, "LoRA parameters (16-bit copy)", &g->memory.lora_and_adam);
    CUDA_CHECK(cudaMemset(g->m, 0, bytes));
    CUDA_CHECK(cudaMemset(g->v, 0, bytes));
    CUDA_CHECK(cudaMemset(g->grads, 0, bytes));
    g->adam_step = 0;
    gpu_upload_lora(g, lora, NULL);
}

static int has_adapter(const GpuTrainer *g, int layer, int target) {
    return g->offset_A[layer * N_LINEARS + target] != (size_t)-1;
}

// The adapted targets of an input group (model.h) in a layer, in Linear order; returns how many.
static int group_adapters(const GpuTrainer *g, int layer, int group, int targets[LINEAR_GROUP_MAX]) {
    int adapted[N_LINEARS];
    for (int t = 0; t < N_LINEARS; t++) adapted[t] = has_adapter(g, layer, t);
    return lora_group_targets(adapted, group, targets);
}

// The shape of the adapter of one target on n tokens.
static LoraShape lora_shape(const GpuTrainer *g, int n, int target) {
    int in_dim, out_dim;
    linear_dims(&g->c, target, &in_dim, &out_dim);
    LoraShape s = {n, in_dim, out_dim, g->rank, g->scaling};
    return s;
}

// The shape of the adapters of targets[0 .. count - 1], one input group, on n tokens.
static LoraGroupShape group_shape(const GpuTrainer *g, int n, const int targets[], int count) {
    LoraGroupShape s = {n, 0, g->rank, count, {0}, g->scaling};
    for (int i = 0; i < count; i++) linear_dims(&g->c, targets[i], &s.in_dim, &s.out_dim[i]);
    return s;
}

static void alloc_activations(GpuTrainer *g, GpuActivations *a) {
    const Config *c = &g->c;
    size_t n = (size_t)g->max_tokens, q_dim = (size_t)c->n_heads * c->head_dim;
    size_t kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    size_t *counter = &g->memory.activations;
    a->xn1 = (act16 *)alloc_counted(sizeof(act16) * n * c->dim, "activations (attention norm)", counter);
    a->q = (act16 *)alloc_counted(sizeof(act16) * n * q_dim, "activations (q)", counter);
    a->k = (act16 *)alloc_counted(sizeof(act16) * n * kv_dim, "activations (k)", counter);
    a->v = (act16 *)alloc_counted(sizeof(act16) * n * kv_dim, "activations (v)", counter);
    a->att = (act16 *)alloc_counted(sizeof(act16) * n * q_dim, "activations (attention output)", counter);
    a->lse = (float *)alloc_counted(sizeof(float) * n * c->n_heads, "activations (attention lse)", counter);
    a->x_mid = (float *)alloc_counted(sizeof(float) * n * c->dim, "activations (mid residual)", counter);
    a->xn2 = (act16 *)alloc_counted(sizeof(act16) * n * c->dim, "activations (MLP norm)", counter);
    a->gate = (act16 *)alloc_counted(sizeof(act16) * n * c->hidden_dim, "activations (gate)", counter);
    a->up = (act16 *)alloc_counted(sizeof(act16) * n * c->hidden_dim, "activations (up)", counter);
    a->h = (act16 *)alloc_counted(sizeof(act16) * n * c->hidden_dim, "activations (SwiGLU)", counter);
    for (int group = 0; group < N_LINEAR_GROUPS && !g->dora; group++) {
        int targets[LINEAR_GROUP_MAX];
        int count = group_adapters(g, 0, group, targets);
        if (count > 0)
            a->xa_group[group] =
                (act16 *)alloc_counted(sizeof(act16) * n * count * g->rank, "activations (LoRA xa)", counter);
    }
    for (int t = 0; t < N_LINEARS && g->dora; t++) {
        if (!has_adapter(g, 0, t)) continue;   // a target is adapted in every layer or in none
        a->xa[t] = (act16 *)alloc_counted(sizeof(act16) * n * g->rank, "activations (DoRA xa)", counter);
        int in_dim, out_dim;
        linear_dims(c, t, &in_dim, &out_dim);
        a->dora_w[t] = (act16 *)alloc_counted(sizeof(act16) * n * out_dim, "activations (DoRA w)", counter);
        a->dora_norm[t] = (float *)alloc_counted(sizeof(float) * out_dim, "DoRA weight norms", counter);
    }
}

static void free_activations(GpuActivations *a) {
    gpu_free(a->xn1); gpu_free(a->q); gpu_free(a->k); gpu_free(a->v); gpu_free(a->att); gpu_free(a->lse);
    gpu_free(a->x_mid); gpu_free(a->xn2); gpu_free(a->gate); gpu_free(a->up); gpu_free(a->h);
    for (int group = 0; group < N_LINEAR_GROUPS; group++) gpu_free(a->xa_group[group]);
    for (int t = 0; t < N_LINEARS; t++) {
        gpu_free(a->xa[t]);
        gpu_free(a->dora_w[t]);
        gpu_free(a->dora_norm[t]);
    }
}

static void alloc_buffers(GpuTrainer *g) {
    const Config *c = &g->c;
    size_t n = (size_t)g->max_tokens, q_dim = (size_t)c->n_heads * c->head_dim;
    size_t kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    size_t widest = max_size(max_size((size_t)c->dim, (size_t)c->hidden_dim), q_dim);
    size_t *act = &g->memory.activations, *scratch = &g->memory.scratch;
    g->tokens = (int *)alloc_counted(sizeof(int) * n, "token ids", scratch);
    g->targets = (int *)alloc_counted(sizeof(int) * n, "targets", scratch);
    g->positions = (int *)alloc_counted(sizeof(int) * n, "positions", scratch);
    g->loss_weights = (float *)alloc_counted(sizeof(float) * n, "loss weights", scratch);
    // with offload: two rows taking turns (trainer/offload.h) and the recompute's output
    size_t stream_rows = g->placement.offload ? 3 : (size_t)c->n_layers + 1;
    g->stream = (float *)alloc_counted(sizeof(float) * stream_rows * n * c->dim, "residual stream", act);
    if (g->placement.offload)
        g->memory.offloaded = offload_init(&g->offload, c->n_layers, n * c->dim, g->stream, g->stream + n * c->dim);
    int n_acts = g->recompute ? 1 : c->n_layers;
    g->acts = (GpuActivations *)cpu_calloc((size_t)n_acts, sizeof(GpuActivations), "GPU activations");
    for (int l = 0; l < n_acts; l++) alloc_activations(g, &g->acts[l]);
    g->normed = (act16 *)alloc_counted(sizeof(act16) * n * c->dim, "final norm output", act);
    g->d_x = (float *)alloc_counted(sizeof(float) * n * c->dim, "gradient (residual)", scratch);
    g->d_mid = (float *)alloc_counted(sizeof(float) * n * c->dim, "gradient (mid residual)", scratch);
    g->d_normed = (float *)alloc_counted(sizeof(float) * n * c->dim, "gradient (normed)", scratch);
    g->d_wide = (float *)alloc_counted(sizeof(float) * n * widest, "gradient (wide)", scratch);
    g->dy = (act16 *)alloc_counted(sizeof(act16) * n * widest, "gradient (16-bit copy)", scratch);
    g->d_gate = (act16 *)alloc_counted(sizeof(act16) * n * c->hidden_dim, "gradient (gate)", scratch);
    g->d_up = (act16 *)alloc_counted(sizeof(act16) * n * c->hidden_dim, "gradient (up)", scratch);
    g->d_q = (act16 *)alloc_counted(sizeof(act16) * n * q_dim, "gradient (q)", scratch);
    g->d_k = (act16 *)alloc_counted(sizeof(act16) * n * kv_dim, "gradient (k)", scratch);
    g->d_v = (act16 *)alloc_counted(sizeof(act16) * n * kv_dim, "gradient (v)", scratch);
    g->tmp = (act16 *)alloc_counted(sizeof(act16) * n * c->dim, "linear output", scratch);
    g->keep = (float *)alloc_counted(sizeof(float) * n * widest, "dropout mask", scratch);
    // the adapter scratch for the largest call: a group's adapters together (one adapter
    // alone, as DoRA calls them, needs no more), and with DoRA its widest adapter
    size_t lora_bytes = 0, dora_bytes = 0;
    for (int layer = 0; layer < c->n_layers; layer++)
        for (int group = 0; group < N_LINEAR_GROUPS; group++) {
            int targets[LINEAR_GROUP_MAX];
            int count = group_adapters(g, layer, group, targets);
            if (count == 0) continue;
            lora_bytes = max_size(lora_bytes, lora_group_scratch_bytes_gpu(group_shape(g, (int)n, targets, count)));
            for (int k = 0; g->dora && k < count; k++)
                dora_bytes = max_size(dora_bytes, dora_scratch_bytes_gpu(lora_shape(g, (int)n, targets[k])));
        }
    g->lora_scratch = alloc_counted(lora_bytes, "LoRA scratch", scratch);
    if (g->dora) g->dora_scratch = alloc_counted(dora_bytes, "DoRA scratch", scratch);
    // the simple attention (cuBLAS) when one head of scores fits the budget and head_dim % 8 == 0, else flash
    size_t budget = ATTENTION_SCORE_BUDGET_BYTES;
    gpu_trainer_set_attention(g, attention_pick_kind_gpu(g->max_seqs, g->max_seq_len, c->head_dim, budget));
}

void gpu_trainer_set_attention(GpuTrainer *g, AttentionKernel kind) {
    gpu_free(g->attention_scratch);
    g->memory.scratch -= g->attention_scratch_bytes;
    g->attention = kind;
    g->attention_scratch_bytes = attention_scratch_bytes_gpu(kind, g->max_seqs, g->max_seq_len, g->c.n_heads,
                                                             g->c.head_dim, ATTENTION_SCORE_BUDGET_BYTES);
    g->attention_scratch = alloc_counted(g->attention_scratch_bytes, "attention scratch", &g->memory.scratch);
}

// The workspaces of the loss and the gradient norm, for the largest micro-batch and every parameter.
static void alloc_workspaces(GpuTrainer *g) {
    const Config *c = &g->c;
    size_t *counter = &g->memory.workspace;
    g->loss_workspace_bytes = lm_head_cross_entropy_workspace_bytes(g->max_tokens, c->dim, c->vocab_size,
                                                                    lm_head_chunk_tokens_gpu(c->vocab_size));
    g->loss_workspace = alloc_counted(g->loss_workspace_bytes, "LM head + loss workspace", counter);
    g->norm_workspace_bytes = sum_squares_workspace_bytes(g->n_params);
    g->norm_workspace = alloc_counted(g->norm_workspace_bytes, "gradient norm workspace", counter);
}

void gpu_trainer_init(GpuTrainer *g, const Model *model, QuantMode quant, int double_quant, const LoraSet *lora,
                      const StepOptions *opt, int max_seqs, int max_seq_len, const GpuPlacement *placement) {
    memset(g, 0, sizeof *g);
    g->c = model->config;
    g->quant = quant;
    g->recompute = opt->recompute;
    g->rank = opt->rank;
    g->scaling = opt->scaling;
    g->dropout = opt->dropout;
    g->dora = lora->dora;
    g->max_seqs = max_seqs;
    g->max_seq_len = max_seq_len;
    g->max_tokens = max_seqs * max_seq_len;
    if (placement) g->placement = *placement;
    if (g->placement.offload && !g->recompute) {
        fprintf(stderr, "gpu: activation offload keeps the block inputs of recompute: it needs recompute\n");
        exit(2);
    }
    upload_base(g, model, double_quant);
    alloc_lora(g, lora);
    alloc_buffers(g);
    alloc_workspaces(g);
}

void gpu_trainer_free(GpuTrainer *g) {
    const Config *c = &g->c;
    for (int l = 0; l < c->n_layers; l++) {
        GpuBlock *b = &g->blocks[l];
        gpu_free(b->attn_norm); gpu_free(b->mlp_norm); gpu_free(b->bq); gpu_free(b->bk); gpu_free(b->bv);
        for (int t = 0; t < N_LINEARS; t++) {
            if (g->quant == QUANT_NF4) nf4_free_gpu(&b->nf4[t]);
            else gpu_free(b->dense[t]);
        }
    }
    free(g->blocks);
    if (g->lm_head != g->embed) gpu_free(g->lm_head);
    gpu_free(g->embed); gpu_free(g->final_norm); gpu_free(g->inv_freq); gpu_free(g->dequant_scratch);
    gpu_free(g->params); gpu_free(g->grads); gpu_free(g->m); gpu_free(g->v); gpu_free(g->params_act16);
    free(g->offset_A); free(g->offset_B); free(g->offset_m);
    gpu_free(g->tokens); gpu_free(g->targets); gpu_free(g->positions); gpu_free(g->loss_weights);
    offload_free(&g->offload);
    gpu_free(g->stream);
    int n_acts = g->recompute ? 1 : c->n_layers;
    for (int l = 0; l < n_acts; l++) free_activations(&g->acts[l]);
    free(g->acts);
    gpu_free(g->normed); gpu_free(g->d_x); gpu_free(g->d_mid); gpu_free(g->d_normed); gpu_free(g->d_wide);
    gpu_free(g->dy); gpu_free(g->d_gate); gpu_free(g->d_up); gpu_free(g->d_q); gpu_free(g->d_k); gpu_free(g->d_v);
    gpu_free(g->tmp); gpu_free(g->keep); gpu_free(g->lora_scratch); gpu_free(g->dora_scratch);
    gpu_free(g->attention_scratch); gpu_free(g->loss_workspace); gpu_free(g->norm_workspace);
    memset(g, 0, sizeof *g);
}

void gpu_trainer_print_memory(const GpuTrainer *g, FILE *out) {
    const GpuMemoryUse *m = &g->memory;
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    double mib = 1048576.0;
    fprintf(out, "gpu memory on %s: %.1f MiB held by us (peak %.1f MiB); device %.1f of %.1f MiB in use\n",
            gpu_device_name(), gpu_bytes_in_use() / mib, gpu_peak_bytes() / mib, (total_bytes - free_bytes) / mib,
            total_bytes / mib);
    fprintf(out, "  base %s %.1f MiB + constants %.1f MiB | embeddings, norms %.1f MiB | LoRA + AdamW %.1f MiB | "
                 "activations %.1f MiB | scratch %.1f MiB (attention: %s) | workspace %.1f MiB (LM head + loss, "
                 "gradient norm)\n",
            g->quant == QUANT_NF4 ? "NF4 codes" : "16-bit weights", m->base_codes / mib, m->base_constants / mib,
            m->embeddings / mib, m->lora_and_adam / mib, m->activations / mib, m->scratch / mib,
            attention_kind_name(g->attention), m->workspace / mib);
    if (g->placement.paged_optim)
        fprintf(out, "  paged AdamW: m and v (%.1f MiB) in managed memory, prefetched to the GPU for each update; "
                     "under memory pressure the driver pages them to the host (not in the figures above)\n",
                m->paged / mib);
    if (g->placement.offload) {
        // saved = the stream rows the GPU no longer holds: n_layers + 1 without offload, 3 with it
        double row = sizeof(float) * (double)g->max_tokens * g->c.dim;
        fprintf(out, "  offload: the inputs of %d blocks (%.1f MiB) in pinned host memory between forward and "
                     "backward; the GPU holds 3 rows of the residual stream instead of %d (%.1f MiB less)\n",
                g->offload.n_saved, m->offloaded / mib, g->c.n_layers + 1, (g->c.n_layers + 1 - 3) * row / mib);
    }
}

// ---- one block -----------------------------------------------------------------

// g->weights[t] = block l's linear weights in 16-bit (dequantized NF4, or the dense copy).
static void load_block_weights(GpuTrainer *g, int layer) {
    GpuBlock *b = &g->blocks[layer];
    act16 *next = g->dequant_scratch;
    for (int t = 0; t < N_LINEARS; t++) {
        if (g->quant == QUANT_NONE) {
            g->weights[t] = b->dense[t];
            continue;
        }
        nf4_dequantize_gpu(next, &b->nf4[t]);
        g->weights[t] = next;
        next += linear_numel(&g->c, t);
    }
}

// One micro-batch's shapes and dropout, and which of the batch's optional arrays it has.
typedef struct {
    int n, n_seqs, seq_len;
    uint64_t dropout_seed;
    float dropout;
    int packed;     // samples packed in a sequence: attention masks by g->positions
    int weighted;   // g->loss_weights holds the loss weights
} StepShape;

// The dropout mask of an input group's shared input in a layer for this micro-batch
// (lora_dropout_seed, as on the CPU), or NULL without dropout or without an adapter there.
static const float *group_mask(GpuTrainer *g, const StepShape *s, int layer, int group) {
    int targets[LINEAR_GROUP_MAX];
    if (s->dropout <= 0.0f || group_adapters(g, layer, group, targets) == 0) return NULL;
    int in_dim, out_dim;
    linear_dims(&g->c, targets[0], &in_dim, &out_dim);
    uint64_t seed = lora_dropout_seed(s->dropout_seed, layer, targets[0]);
    lora_dropout_mask_gpu(g->keep, (size_t)s->n * in_dim, s->dropout, seed);
    return g->keep;
}

// The biases of a group whose linears have none.
static const float *const NO_BIAS[LINEAR_GROUP_MAX] = {NULL, NULL, NULL};

// y_t += s (dropout(x) A_t^T) B_t^T for the group's LoRA adapters at once
// (lora_group_forward_gpu): their stacked A_g starts at the first one's A, as a
// group's A's lie end to end in the flat layout (lora.h). y: one per target of the group.
static void group_lora_forward(GpuTrainer *g, const StepShape *s, int layer, int group, const act16 *x,
                               const float *keep, act16 *const y[], GpuActivations *a) {
    int targets[LINEAR_GROUP_MAX];
    int count = group_adapters(g, layer, group, targets);
    if (count == 0) return;
    act16 *adapter_y[LINEAR_GROUP_MAX];
    const act16 *B[LINEAR_GROUP_MAX];
    for (int k = 0; k < count; k++) {
        adapter_y[k] = y[targets[k] - LINEAR_GROUP_FIRST[group]];
        B[k] = g->params_act16 + g->offset_B[layer * N_LINEARS + targets[k]];
    }
    const act16 *A = g->params_act16 + g->offset_A[layer * N_LINEARS + targets[0]];
    lora_group_forward_gpu(adapter_y, a->xa_group[group], x, keep, A, B, group_shape(g, s->n, targets, count),
                           g->lora_scratch);
}

// Their backward (lora_group_backward_gpu): dB_t, the stacked dA_g (one matrix in
// the flat layout, as A_g) and dx accumulate. dy: one per target of the group.
static void group_lora_backward(GpuTrainer *g, const StepShape *s, int layer, int group, float *dx,
                                const act16 *const dy[], const act16 *x, const float *keep, const GpuActivations *a) {
    int targets[LINEAR_GROUP_MAX];
    int count = group_adapters(g, layer, group, targets);
    if (count == 0) return;
    const act16 *adapter_dy[LINEAR_GROUP_MAX], *B[LINEAR_GROUP_MAX];
    float *dB[LINEAR_GROUP_MAX];
    for (int k = 0; k < count; k++) {
        int i = layer * N_LINEARS + targets[k];
        adapter_dy[k] = dy[targets[k] - LINEAR_GROUP_FIRST[group]];
        B[k] = g->params_act16 + g->offset_B[i];
        dB[k] = g->grads + g->offset_B[i];
    }
    size_t first_A = g->offset_A[layer * N_LINEARS + targets[0]];
    lora_group_backward_gpu(dx, g->grads + first_A, dB, adapter_dy, x, keep, g->params_act16 + first_A, B,
                            a->xa_group[group], group_shape(g, s->n, targets, count), g->lora_scratch);
}

// The linears of one input group in a layer (q|k|v, o, gate|up or down) on their
// shared input x: y_t = x W_t^T + bias_t + s (dropout(x) A_t^T) B_t^T, one dropout
// mask for the group; the adapters' part for all of them at once (group_lora_forward),
// or with DoRA its layer (dora.h) one linear at a time. y and bias: one per target
// of the group, in Linear order. What backward needs goes into a.
static void group_forward(GpuTrainer *g, const StepShape *s, int layer, int group, const act16 *x, act16 *const y[],
                          const float *const bias[], GpuActivations *a) {
    int first = LINEAR_GROUP_FIRST[group];
    const float *keep = group_mask(g, s, layer, group);
    for (int t = first; t < LINEAR_GROUP_FIRST[group + 1]; t++) {
        LoraShape shape = lora_shape(g, s->n, t);
        int i = layer * N_LINEARS + t;
        if (g->dora && has_adapter(g, layer, t)) {
            dora_forward_gpu(y[t - first], a->dora_w[t], a->xa[t], a->dora_norm[t], x, keep, g->weights[t],
                             bias[t - first], g->params_act16 + g->offset_A[i], g->params_act16 + g->offset_B[i],
                             g->params + g->offset_A[i], g->params + g->offset_B[i], g->params + g->offset_m[i], shape,
                             g->lora_scratch, g->dora_scratch);
            continue;
        }
        matmul_gpu(y[t - first], x, g->weights[t], bias[t - first], s->n, shape.in_dim, shape.out_dim);
    }
    if (!g->dora) group_lora_forward(g, s, layer, group, x, keep, y, a);
}

// The group's backward: dx += dy_t W_t (+ the adapters' part) for each target; the
// adapters' dA, dB (and DoRA's dm) accumulate. dy: one per target, in Linear order.
static void group_backward(GpuTrainer *g, const StepShape *s, int layer, int group, float *dx, const act16 *const dy[],
                           const act16 *x, const GpuActivations *a) {
    int first = LINEAR_GROUP_FIRST[group];
    const float *keep = group_mask(g, s, layer, group);
    for (int t = first; t < LINEAR_GROUP_FIRST[group + 1]; t++) {
        LoraShape shape = lora_shape(g, s->n, t);
        int i = layer * N_LINEARS + t;
        if (g->dora && has_adapter(g, layer, t)) {
            dora_backward_gpu(dx, g->grads + g->offset_A[i], g->grads + g->offset_B[i], g->grads + g->offset_m[i],
                              dy[t - first], x, keep, g->weights[t], g->params_act16 + g->offset_A[i],
                              g->params_act16 + g->offset_B[i], g->params + g->offset_m[i], a->dora_norm[t], a->xa[t],
                              a->dora_w[t], shape, g->lora_scratch, g->dora_scratch);
            continue;
        }
        matmul_backward_input_gpu(dx, dy[t - first], g->weights[t], s->n, shape.in_dim, shape.out_dim);
    }
    if (!g->dora) group_lora_backward(g, s, layer, group, dx, dy, x, keep, a);
}

// Block `layer` on x_in (weights already loaded): activations into a, output into x_out.
static void block_forward(GpuTrainer *g, const StepShape *s, int layer, const float *x_in, float *x_out,
                          GpuActivations *a) {
    const Config *c = &g->c;
    const GpuBlock *b = &g->blocks[layer];
    size_t n_dim = (size_t)s->n * c->dim;
    rmsnorm_gpu(a->xn1, x_in, b->attn_norm, s->n, c->dim, c->norm_eps);
    act16 *const qkv[LINEAR_GROUP_MAX] = {a->q, a->k, a->v};
    const float *const qkv_bias[LINEAR_GROUP_MAX] = {b->bq, b->bk, b->bv};
    group_forward(g, s, layer, LINEAR_GROUP_QKV, a->xn1, qkv, qkv_bias, a);
    rope_gpu(a->q, g->positions, g->inv_freq, s->n, c->n_heads, c->head_dim);
    rope_gpu(a->k, g->positions, g->inv_freq, s->n, c->n_kv_heads, c->head_dim);
    attention_forward_gpu(g->attention, a->att, a->lse, a->q, a->k, a->v, s->packed ? g->positions : NULL, s->n_seqs,
                          s->seq_len, c->n_heads, c->n_kv_heads, c->head_dim, g->attention_scratch,
                          g->attention_scratch_bytes);
    // x_mid = x_in + lin_o(att)
    group_forward(g, s, layer, LINEAR_GROUP_O, a->att, &g->tmp, NO_BIAS, a);
    CUDA_CHECK(cudaMemcpy(a->x_mid, x_in, sizeof(float) * n_dim, cudaMemcpyDeviceToDevice));
    residual_add_gpu(a->x_mid, g->tmp, n_dim);
    rmsnorm_gpu(a->xn2, a->x_mid, b->mlp_norm, s->n, c->dim, c->norm_eps);
    act16 *const gate_up[LINEAR_GROUP_MAX] = {a->gate, a->up};
    group_forward(g, s, layer, LINEAR_GROUP_GATE_UP, a->xn2, gate_up, NO_BIAS, a);
    swiglu_gpu(a->h, a->gate, a->up, (size_t)s->n * c->hidden_dim);
    // x_out = x_mid + lin_down(h)
    group_forward(g, s, layer, LINEAR_GROUP_DOWN, a->h, &g->tmp, NO_BIAS, a);
    CUDA_CHECK(cudaMemcpy(x_out, a->x_mid, sizeof(float) * n_dim, cudaMemcpyDeviceToDevice));
    residual_add_gpu(x_out, g->tmp, n_dim);
}

// g->d_x holds d loss / d x_out on entry and d loss / d x_in on return.
static void block_backward(GpuTrainer *g, const StepShape *s, int layer, const float *x_in, const GpuActivations *a) {
    const Config *c = &g->c;
    const GpuBlock *b = &g->blocks[layer];
    size_t n = (size_t)s->n, n_dim = n * c->dim, n_hidden = n * c->hidden_dim;
    size_t q_dim = (size_t)c->n_heads * c->head_dim;
    // MLP: x_out = x_mid + lin_down(h)  =>  d_mid = d_x + (through the MLP)
    CUDA_CHECK(cudaMemcpy(g->d_mid, g->d_x, sizeof(float) * n_dim, cudaMemcpyDeviceToDevice));
    float_to_act16_gpu(g->dy, g->d_x, n_dim);
    CUDA_CHECK(cudaMemset(g->d_wide, 0, sizeof(float) * n_hidden));
    group_backward(g, s, layer, LINEAR_GROUP_DOWN, g->d_wide, &g->dy, a->h, a);
    float_to_act16_gpu(g->dy, g->d_wide, n_hidden);
    swiglu_backward_gpu(g->d_gate, g->d_up, g->dy, a->gate, a->up, n_hidden);
    CUDA_CHECK(cudaMemset(g->d_normed, 0, sizeof(float) * n_dim));
    const act16 *const d_gate_up[LINEAR_GROUP_MAX] = {g->d_gate, g->d_up};
    group_backward(g, s, layer, LINEAR_GROUP_GATE_UP, g->d_normed, d_gate_up, a->xn2, a);
    rmsnorm_backward_gpu(g->d_mid, g->d_normed, a->x_mid, b->mlp_norm, s->n, c->dim, c->norm_eps);
    // attention: x_mid = x_in + lin_o(att)  =>  d_x_in = d_mid + (through attention)
    CUDA_CHECK(cudaMemcpy(g->d_x, g->d_mid, sizeof(float) * n_dim, cudaMemcpyDeviceToDevice));
    float_to_act16_gpu(g->dy, g->d_mid, n_dim);
    CUDA_CHECK(cudaMemset(g->d_wide, 0, sizeof(float) * n * q_dim));
    group_backward(g, s, layer, LINEAR_GROUP_O, g->d_wide, &g->dy, a->att, a);
    float_to_act16_gpu(g->dy, g->d_wide, n * q_dim);
    attention_backward_gpu(g->attention, g->d_q, g->d_k, g->d_v, g->dy, a->att, a->lse, a->q, a->k, a->v,
                           s->packed ? g->positions : NULL, s->n_seqs, s->seq_len, c->n_heads, c->n_kv_heads,
                           c->head_dim, g->attention_scratch, g->attention_scratch_bytes);
    rope_backward_gpu(g->d_q, g->positions, g->inv_freq, s->n, c->n_heads, c->head_dim);
    rope_backward_gpu(g->d_k, g->positions, g->inv_freq, s->n, c->n_kv_heads, c->head_dim);
    CUDA_CHECK(cudaMemset(g->d_normed, 0, sizeof(float) * n_dim));
    const act16 *const d_qkv[LINEAR_GROUP_MAX] = {g->d_q, g->d_k, g->d_v};
    group_backward(g, s, layer, LINEAR_GROUP_QKV, g->d_normed, d_qkv, a->xn1, a);
    rmsnorm_backward_gpu(g->d_x, g->d_normed, x_in, b->attn_norm, s->n, c->dim, c->norm_eps);
}

// ---- the whole model -------------------------------------------------------------

// Copies the batch to the device and checks it fits the buffers.
static StepShape begin_batch(GpuTrainer *g, const Batch *batch, uint64_t dropout_seed, float dropout) {
    StepShape s = {batch->n_seqs * batch->seq_len, batch->n_seqs, batch->seq_len, dropout_seed, dropout,
                   batch->positions != NULL, batch->weights != NULL};
    if (s.n > g->max_tokens || s.n_seqs > g->max_seqs || s.seq_len > g->max_seq_len) {
        fprintf(stderr, "gpu: a batch of %d x %d tokens is larger than the %d x %d tokens the buffers were made for\n",
                batch->n_seqs, batch->seq_len, g->max_seqs, g->max_seq_len);
        exit(1);
    }
    if (batch->positions) {
        gpu_upload(g->positions, batch->positions, sizeof(int) * s.n);
    } else {
        int *positions = (int *)cpu_malloc(sizeof(int) * s.n, "positions");
        for (int i = 0; i < s.n; i++) positions[i] = i % batch->seq_len;
        gpu_upload(g->positions, positions, sizeof(int) * s.n);
        free(positions);
    }
    gpu_upload(g->tokens, batch->tokens, sizeof(int) * s.n);
    gpu_upload(g->targets, batch->targets, sizeof(int) * s.n);
    if (batch->weights) gpu_upload(g->loss_weights, batch->weights, sizeof(float) * s.n);
    return s;
}

// Block l's input on the GPU (l = n_layers: the last block's output).
static float *stream_row(GpuTrainer *g, int layer, size_t n_dim) {
    return g->placement.offload ? offload_slot(&g->offload, layer) : g->stream + layer * n_dim;
}

// Where recompute writes a block's output again (backward needs only its activations):
// a row of the stream already used (the last block's output), or offload's third row.
static float *recompute_output(GpuTrainer *g, size_t n_dim) {
    return g->placement.offload ? g->stream + 2 * (size_t)g->max_tokens * g->c.dim : g->stream + g->c.n_layers * n_dim;
}

// Embedding and every block; activations kept per block unless recomputing.
// With offload and for_backward, each block input but the last goes to the host.
static void model_forward(GpuTrainer *g, const StepShape *s, int for_backward) {
    const Config *c = &g->c;
    size_t n_dim = (size_t)s->n * c->dim;
    int offload = g->placement.offload;
    embedding_gpu(stream_row(g, 0, n_dim), g->embed, g->tokens, s->n, c->dim);
    for (int l = 0; l < c->n_layers; l++) {
        if (offload && for_backward && l < c->n_layers - 1) offload_save(&g->offload, l, n_dim);
        load_block_weights(g, l);
        if (offload) offload_before_overwrite(&g->offload, l + 1);
        block_forward(g, s, l, stream_row(g, l, n_dim), stream_row(g, l + 1, n_dim), &g->acts[g->recompute ? 0 : l]);
    }
    rmsnorm_gpu(g->normed, stream_row(g, c->n_layers, n_dim), g->final_norm, s->n, c->dim, c->norm_eps);
}

double gpu_train_micro_batch(GpuTrainer *g, const Batch *batch, uint64_t dropout_seed, double grad_scale,
                             int *n_counted) {
    const Config *c = &g->c;
    StepShape s = begin_batch(g, batch, dropout_seed, g->dropout);
    size_t n_dim = (size_t)s.n * c->dim;
    model_forward(g, &s, 1);
    // loss, and d normed = grad_scale w (softmax - onehot) W_lm
    CUDA_CHECK(cudaMemset(g->d_normed, 0, sizeof(float) * n_dim));
    double loss_sum = lm_head_cross_entropy_gpu(g->d_normed, g->normed, g->lm_head, g->targets,
                                                s.weighted ? g->loss_weights : NULL, s.n, c->dim, c->vocab_size,
                                                grad_scale, n_counted, g->loss_workspace, g->loss_workspace_bytes);
    CUDA_CHECK(cudaMemset(g->d_x, 0, sizeof(float) * n_dim));
    rmsnorm_backward_gpu(g->d_x, g->d_normed, stream_row(g, c->n_layers, n_dim), g->final_norm, s.n, c->dim,
                         c->norm_eps);
    for (int l = c->n_layers - 1; l >= 0; l--) {
        load_block_weights(g, l);
        GpuActivations *a = &g->acts[g->recompute ? 0 : l];
        if (g->placement.offload) {
            // block l's input is back (the last block's never left); block l - 1's comes while l is computed
            offload_wait_fetched(&g->offload, l);
            if (l > 0) offload_fetch(&g->offload, l - 1, n_dim);
        }
        if (g->recompute) block_forward(g, &s, l, stream_row(g, l, n_dim), recompute_output(g, n_dim), a);
        block_backward(g, &s, l, stream_row(g, l, n_dim), a);
    }
    return loss_sum;
}

double gpu_loss(GpuTrainer *g, const Batch *batch, int *n_counted) {
    const Config *c = &g->c;
    StepShape s = begin_batch(g, batch, 0, 0.0f);
    model_forward(g, &s, 0);
    const float *weights = s.weighted ? g->loss_weights : NULL;
    return lm_head_cross_entropy_gpu(NULL, g->normed, g->lm_head, g->targets, weights, s.n, c->dim, c->vocab_size,
                                     0.0, n_counted, g->loss_workspace, g->loss_workspace_bytes);
}

// ---- optimizer side ------------------------------------------------------------------

void gpu_zero_grads(GpuTrainer *g) { CUDA_CHECK(cudaMemset(g->grads, 0, sizeof(float) * g->n_params)); }

double gpu_grad_norm(GpuTrainer *g) {
    return sqrt(sum_squares_gpu(g->grads, g->n_params, g->norm_workspace, g->norm_workspace_bytes));
}

void gpu_scale_grads(GpuTrainer *g, float scale) { scale_gpu(g->grads, g->n_params, scale); }

void gpu_adamw_step(GpuTrainer *g, const AdamWConfig *config, float lr) {
    g->adam_step++;
    if (g->placement.paged_optim) {
        // on the default stream, before the update's kernel: the pages move in bulk, not fault by fault
        gpu_prefetch_to_device(g->m, sizeof(float) * g->n_params);
        gpu_prefetch_to_device(g->v, sizeof(float) * g->n_params);
    }
    adamw_step_gpu(g->params, g->grads, g->m, g->v, g->n_params, g->adam_step, config, lr);
    float_to_act16_gpu(g->params_act16, g->params, g->n_params);
}

// The flat arrays are laid out alike on both sides: one copy each.
void gpu_download_lora(const GpuTrainer *g, LoraSet *lora, AdamWState *adam) {
    size_t bytes = sizeof(float) * g->n_params;
    gpu_download(lora->params, g->params, bytes);
    gpu_download(lora->grads, g->grads, bytes);
    if (!adam) return;
    gpu_download(adam->m, g->m, bytes);
    gpu_download(adam->v, g->v, bytes);
    adam->step = g->adam_step;
}

void gpu_upload_lora(GpuTrainer *g, const LoraSet *lora, const AdamWState *adam) {
    size_t bytes = sizeof(float) * g->n_params;
    gpu_upload(g->params, lora->params, bytes);
    if (adam) {
        gpu_upload(g->m, adam->m, bytes);
        gpu_upload(g->v, adam->v, bytes);
        g->adam_step = adam->step;
    }
    float_to_act16_gpu(g->params_act16, g->params, g->n_params);
}

double gpu_flops_per_token(const Config *c, int seq_len, int recompute) {
    double q_dim = (double)c->n_heads * c->head_dim, kv_dim = (double)c->n_kv_heads * c->head_dim;
    // weights one token meets: the seven linears of every block, and the LM head
    double per_block = (double)c->dim * (q_dim + 2 * kv_dim) + q_dim * c->dim + 3.0 * c->dim * c->hidden_dim;
    double weights = c->n_layers * per_block + (double)c->vocab_size * c->dim;
    // scores q.k and the weighted sum of v, over seq_len / 2 keys on average (causal)
    double attention_forward = c->n_layers * 2.0 * 2.0 * q_dim * (seq_len / 2.0);
    double forward = 2.0 * weights + attention_forward;
    // backward: input gradients of the linears (2 per weight), attention's backward is twice its forward
    double backward = 2.0 * weights + 2.0 * attention_forward;
    return forward + backward + (recompute ? forward - 2.0 * (double)c->vocab_size * c->dim : 0.0);
}
#endif
