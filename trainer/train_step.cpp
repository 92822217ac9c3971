// trainer/train_step.cpp: forward and backward of the adapted model on the CPU.
//
// Forward of block l (N = n_seqs * seq_len tokens, row-major [N, width]):
//   xn1 = rmsnorm(x_in);  q, k, v = lin_q(xn1), lin_k(xn1), lin_v(xn1);  rope(q, k)
//   att = causal attention per sequence;  x_mid = x_in + lin_o(att)
//   xn2 = rmsnorm(x_mid); gate, up = lin_gate(xn2), lin_up(xn2);  h = silu(gate) * up
//   x_out = x_mid + lin_down(h)
// where lin_t(x) = x W_t^T (+ bias) + s (dropout(x) A_t^T) B_t^T when target t has an adapter,
// or DoRA's layer (dora.h) when the adapter has a magnitude vector m; the linears that
// read one input (q|k|v, gate|up) share its dropout mask (lora.h's input groups).
// After the last block: normed = rmsnorm(x), then the LM head and the loss on
// the tokens whose target counts only (CountedTokens).
// Backward walks the same lines in reverse. With recompute, only x_in of
// every block is kept and the block's forward is run again before its backward.
#include "trainer/train_step.h"
#include "dora.h"
#include "ops/layers.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"

#include <stdlib.h>
#include <string.h>

// What backward needs from one block's forward.
template <typename Real>
struct BlockActivations {
    Real *xn1;              // [N, dim] normalised input of attention
    Real *q, *k, *v;        // [N, q_dim], [N, kv_dim], [N, kv_dim]; q and k after RoPE
    Real *att;              // [N, q_dim] attention output, input of Wo
    Real *x_mid;            // [N, dim] residual stream between attention and MLP
    Real *xn2;              // [N, dim] normalised input of the MLP
    Real *gate, *up;        // [N, hidden] before the activation
    Real *h;                // [N, hidden] silu(gate) * up, input of Wdown
    Real *xa[N_LINEARS];    // [N, rank] each adapter's (dropout(x) A^T)
    Real *dora_w[N_LINEARS];     // [N, out] with DoRA: x_d W^T + s xa B^T (dora.h), else NULL
    Real *dora_norm[N_LINEARS];  // [out] with DoRA: ||W + s B A|| per row, else NULL
};

// Sizes and scratch shared by forward and backward.
template <typename Real>
struct StepContext {
    const Config *c;
    const StepOptions *opt;
    const Batch *batch;
    int dora;                    // the adapters have magnitude vectors (DoRA)
    int n;                       // tokens in the batch
    int q_dim, kv_dim;
    int *positions;              // [N] position of each token in its sequence
    float *keep;                 // [N * max(dim, hidden)] dropout mask of the current adapter
    Real *scratch;               // [N * (rank + dim + hidden + max(dim, hidden))] for the adapters: at
                                 // least lora_backward_cpu's N * (rank + in + out) for any target;
                                 // with DoRA [N * (rank + 4 max(dim, hidden, q_dim))], dora_scratch_count's
    Real *tmp;                   // [N * max(dim, hidden)] a linear layer's output
};

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

template <typename Real>
static void alloc_activations(BlockActivations<Real> *a, const Config *c, int n, int rank, int dora) {
    size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    a->xn1 = (Real *)cpu_malloc(sizeof(Real) * n * c->dim, "activations (attention norm output)");
    a->q = (Real *)cpu_malloc(sizeof(Real) * n * q_dim, "activations (queries)");
    a->k = (Real *)cpu_malloc(sizeof(Real) * n * kv_dim, "activations (keys)");
    a->v = (Real *)cpu_malloc(sizeof(Real) * n * kv_dim, "activations (values)");
    a->att = (Real *)cpu_malloc(sizeof(Real) * n * q_dim, "activations (attention output)");
    a->x_mid = (Real *)cpu_malloc(sizeof(Real) * n * c->dim, "activations (residual stream after attention)");
    a->xn2 = (Real *)cpu_malloc(sizeof(Real) * n * c->dim, "activations (MLP norm output)");
    a->gate = (Real *)cpu_malloc(sizeof(Real) * n * c->hidden_dim, "activations (MLP gate)");
    a->up = (Real *)cpu_malloc(sizeof(Real) * n * c->hidden_dim, "activations (MLP up)");
    a->h = (Real *)cpu_malloc(sizeof(Real) * n * c->hidden_dim, "activations (MLP hidden)");
    for (int t = 0; t < N_LINEARS; t++) {
        a->xa[t] = (Real *)cpu_malloc(sizeof(Real) * n * (rank > 0 ? rank : 1), "activations (x A^T)");
        int in_dim, out_dim;
        linear_dims(c, t, &in_dim, &out_dim);
        a->dora_w[t] = dora ? (Real *)cpu_malloc(sizeof(Real) * n * out_dim, "activations (DoRA's x W^T + s xa B^T)") : NULL;
        a->dora_norm[t] = dora ? (Real *)cpu_malloc(sizeof(Real) * out_dim, "DoRA's weight norms") : NULL;
    }
}

template <typename Real>
static void free_activations(BlockActivations<Real> *a) {
    free(a->xn1); free(a->q); free(a->k); free(a->v); free(a->att); free(a->x_mid);
    free(a->xn2); free(a->gate); free(a->up); free(a->h);
    for (int t = 0; t < N_LINEARS; t++) {
        free(a->xa[t]);
        free(a->dora_w[t]);
        free(a->dora_norm[t]);
    }
}

// The dropout mask of the input that (layer, target) reads, for this batch, or NULL
// without dropout: one per input group (lora_dropout_seed), so q, k and v (and gate
// and up) see the same dropped-out input, regenerated here for each of them.
template <typename Real>
static const float *adapter_mask(StepContext<Real> *ctx, int layer, int target, int in_dim) {
    if (ctx->opt->dropout <= 0.0f) return NULL;
    uint64_t seed = lora_dropout_seed(ctx->opt->dropout_seed, layer, target);
    lora_dropout_mask(ctx->keep, (size_t)ctx->n * in_dim, ctx->opt->dropout, seed);
    return ctx->keep;
}

// The positions of the sequence starting at token first when samples are
// packed (attention then keeps each sample to itself), else NULL (plain causal).
template <typename Real>
static const int *packed_positions(const StepContext<Real> *ctx, size_t first) {
    return ctx->batch->positions ? ctx->positions + first : NULL;
}

// y = x W^T + bias + adapter(x): LoRA's, or DoRA's layer when the adapter has m.
// What backward needs goes into a (xa; with DoRA also w and the norm).
template <typename Real>
static void linear_forward(StepContext<Real> *ctx, Real *y, const Real *x, const Real *weight, const Real *bias,
                           int in_dim, int out_dim, const AdapterParams<Real> *adapter, int layer, int target,
                           BlockActivations<Real> *a) {
    LoraShape shape = {ctx->n, in_dim, out_dim, ctx->opt->rank, ctx->opt->scaling};
    if (adapter->m) {
        dora_forward_cpu<Real>(y, a->dora_w[target], a->xa[target], a->dora_norm[target], x,
                               adapter_mask(ctx, layer, target, in_dim), weight, bias, adapter->A, adapter->B,
                               adapter->m, shape, ctx->scratch);
        return;
    }
    matmul_cpu<Real>(y, x, weight, bias, ctx->n, in_dim, out_dim);
    if (!adapter->A) return;
    lora_forward_cpu<Real>(y, x, adapter_mask(ctx, layer, target, in_dim), adapter->A, adapter->B, shape,
                           a->xa[target], ctx->scratch);
}

// dx += dy W (+ the adapter's part); the adapter's dA, dB (and dm) accumulate.
template <typename Real>
static void linear_backward(StepContext<Real> *ctx, Real *dx, const Real *dy, const Real *x, const Real *weight,
                            int in_dim, int out_dim, AdapterParams<Real> *adapter, int layer, int target,
                            const BlockActivations<Real> *a) {
    LoraShape shape = {ctx->n, in_dim, out_dim, ctx->opt->rank, ctx->opt->scaling};
    if (adapter->m) {
        dora_backward_cpu<Real>(dx, adapter->dA, adapter->dB, adapter->dm, dy, x,
                                adapter_mask(ctx, layer, target, in_dim), weight, adapter->A, adapter->B, adapter->m,
                                a->dora_norm[target], a->xa[target], a->dora_w[target], shape, ctx->scratch);
        return;
    }
    matmul_backward_input_cpu<Real>(dx, dy, weight, ctx->n, in_dim, out_dim);
    if (!adapter->A) return;
    lora_backward_cpu<Real>(dx, adapter->dA, adapter->dB, dy, x, adapter_mask(ctx, layer, target, in_dim),
                            adapter->A, adapter->B, a->xa[target], shape, ctx->scratch);
}

template <typename Real>
static void block_forward(StepContext<Real> *ctx, const BlockWeights<Real> *w, const AdapterParams<Real> *ad,
                          int layer, const Real *x_in, Real *x_out, BlockActivations<Real> *a) {
    const Config *c = ctx->c;
    int n = ctx->n, seq_len = ctx->batch->seq_len, q_dim = ctx->q_dim, kv_dim = ctx->kv_dim;
    float inv_freq[MAX_HEAD_DIM / 2];
    rope_inv_freq(c, inv_freq);
    rmsnorm_cpu<Real>(a->xn1, x_in, w->attn_norm, n, c->dim, c->norm_eps);
    linear_forward(ctx, a->q, a->xn1, w->wq, w->bq, c->dim, q_dim, &ad[LINEAR_Q], layer, LINEAR_Q, a);
    linear_forward(ctx, a->k, a->xn1, w->wk, w->bk, c->dim, kv_dim, &ad[LINEAR_K], layer, LINEAR_K, a);
    linear_forward(ctx, a->v, a->xn1, w->wv, w->bv, c->dim, kv_dim, &ad[LINEAR_V], layer, LINEAR_V, a);
    rope_cpu<Real>(a->q, ctx->positions, inv_freq, n, c->n_heads, c->head_dim);
    rope_cpu<Real>(a->k, ctx->positions, inv_freq, n, c->n_kv_heads, c->head_dim);
    for (int s = 0; s < ctx->batch->n_seqs; s++) {
        size_t first = (size_t)s * seq_len;
        attention_cpu<Real>(a->att + first * q_dim, a->q + first * q_dim, a->k + first * kv_dim,
                            a->v + first * kv_dim, seq_len, 0, c->n_heads, c->n_kv_heads, c->head_dim,
                            packed_positions(ctx, first));
    }
    // x_mid = x_in + lin_o(att)
    linear_forward(ctx, ctx->tmp, a->att, w->wo, (const Real *)NULL, q_dim, c->dim, &ad[LINEAR_O], layer, LINEAR_O,
                   a);
    memcpy(a->x_mid, x_in, sizeof(Real) * n * c->dim);
    residual_add_cpu<Real>(a->x_mid, ctx->tmp, (size_t)n * c->dim);
    rmsnorm_cpu<Real>(a->xn2, a->x_mid, w->mlp_norm, n, c->dim, c->norm_eps);
    linear_forward(ctx, a->gate, a->xn2, w->w_gate, (const Real *)NULL, c->dim, c->hidden_dim, &ad[LINEAR_GATE],
                   layer, LINEAR_GATE, a);
    linear_forward(ctx, a->up, a->xn2, w->w_up, (const Real *)NULL, c->dim, c->hidden_dim, &ad[LINEAR_UP], layer,
                   LINEAR_UP, a);
    swiglu_cpu<Real>(a->h, a->gate, a->up, (size_t)n * c->hidden_dim);
    // x_out = x_mid + lin_down(h)
    linear_forward(ctx, ctx->tmp, a->h, w->w_down, (const Real *)NULL, c->hidden_dim, c->dim, &ad[LINEAR_DOWN], layer,
                   LINEAR_DOWN, a);
    memcpy(x_out, a->x_mid, sizeof(Real) * n * c->dim);
    residual_add_cpu<Real>(x_out, ctx->tmp, (size_t)n * c->dim);
}

// Gradients of one block's backward, reused across blocks.
template <typename Real>
struct BlockGradients {
    Real *d_mid;      // [N, dim] d loss / d x_mid
    Real *d_norm;     // [N, dim] d loss / d xn1 or xn2
    Real *d_h, *d_gate, *d_up;   // [N, hidden]
    Real *d_att, *d_q;           // [N, q_dim]
    Real *d_k, *d_v;             // [N, kv_dim]
};

// d_x holds d loss / d x_out on entry and d loss / d x_in on return.
template <typename Real>
static void block_backward(StepContext<Real> *ctx, const BlockWeights<Real> *w, AdapterParams<Real> *ad, int layer,
                           const Real *x_in, const BlockActivations<Real> *a, BlockGradients<Real> *g, Real *d_x) {
    const Config *c = ctx->c;
    int n = ctx->n, seq_len = ctx->batch->seq_len, q_dim = ctx->q_dim, kv_dim = ctx->kv_dim;
    size_t n_dim = (size_t)n * c->dim, n_hidden = (size_t)n * c->hidden_dim;
    float inv_freq[MAX_HEAD_DIM / 2];
    rope_inv_freq(c, inv_freq);
    // MLP: x_out = x_mid + lin_down(h)  =>  d_mid = d_x + (through the MLP)
    memcpy(g->d_mid, d_x, sizeof(Real) * n_dim);
    memset(g->d_h, 0, sizeof(Real) * n_hidden);
    linear_backward(ctx, g->d_h, d_x, a->h, w->w_down, c->hidden_dim, c->dim, &ad[LINEAR_DOWN], layer, LINEAR_DOWN,
                    a);
    memset(g->d_gate, 0, sizeof(Real) * n_hidden);
    memset(g->d_up, 0, sizeof(Real) * n_hidden);
    swiglu_backward_cpu<Real>(g->d_gate, g->d_up, g->d_h, a->gate, a->up, n_hidden);
    memset(g->d_norm, 0, sizeof(Real) * n_dim);
    linear_backward(ctx, g->d_norm, g->d_gate, a->xn2, w->w_gate, c->dim, c->hidden_dim, &ad[LINEAR_GATE], layer,
                    LINEAR_GATE, a);
    linear_backward(ctx, g->d_norm, g->d_up, a->xn2, w->w_up, c->dim, c->hidden_dim, &ad[LINEAR_UP], layer,
                    LINEAR_UP, a);
    rmsnorm_backward_cpu<Real>(g->d_mid, g->d_norm, a->x_mid, w->mlp_norm, n, c->dim, c->norm_eps);
    // attention: x_mid = x_in + lin_o(att)  =>  d_x_in = d_mid + (through attention)
    memcpy(d_x, g->d_mid, sizeof(Real) * n_dim);
    memset(g->d_att, 0, sizeof(Real) * n * q_dim);
    linear_backward(ctx, g->d_att, g->d_mid, a->att, w->wo, q_dim, c->dim, &ad[LINEAR_O], layer, LINEAR_O,
                    a);
    memset(g->d_q, 0, sizeof(Real) * n * q_dim);
    memset(g->d_k, 0, sizeof(Real) * n * kv_dim);
    memset(g->d_v, 0, sizeof(Real) * n * kv_dim);
    for (int s = 0; s < ctx->batch->n_seqs; s++) {
        size_t first = (size_t)s * seq_len;
        attention_backward_cpu<Real>(g->d_q + first * q_dim, g->d_k + first * kv_dim, g->d_v + first * kv_dim,
                                     g->d_att + first * q_dim, a->q + first * q_dim, a->k + first * kv_dim,
                                     a->v + first * kv_dim, seq_len, c->n_heads, c->n_kv_heads, c->head_dim,
                                     packed_positions(ctx, first));
    }
    rope_backward_cpu<Real>(g->d_q, ctx->positions, inv_freq, n, c->n_heads, c->head_dim);
    rope_backward_cpu<Real>(g->d_k, ctx->positions, inv_freq, n, c->n_kv_heads, c->head_dim);
    memset(g->d_norm, 0, sizeof(Real) * n_dim);
    linear_backward(ctx, g->d_norm, g->d_q, a->xn1, w->wq, c->dim, q_dim, &ad[LINEAR_Q], layer, LINEAR_Q,
                    a);
    linear_backward(ctx, g->d_norm, g->d_k, a->xn1, w->wk, c->dim, kv_dim, &ad[LINEAR_K], layer, LINEAR_K,
                    a);
    linear_backward(ctx, g->d_norm, g->d_v, a->xn1, w->wv, c->dim, kv_dim, &ad[LINEAR_V], layer, LINEAR_V,
                    a);
    rmsnorm_backward_cpu<Real>(d_x, g->d_norm, x_in, w->attn_norm, n, c->dim, c->norm_eps);
}

// Whether the adapters are DoRA's: the enabled ones all have m, or none does.
template <typename Real>
static int uses_dora(const Config *c, const AdapterParams<Real> *adapters) {
    for (int i = 0; i < c->n_layers * N_LINEARS; i++)
        if (adapters[i].m) return 1;
    return 0;
}

template <typename Real>
static void context_init(StepContext<Real> *ctx, const Config *c, const StepOptions *opt, const Batch *batch,
                         int dora) {
    ctx->c = c;
    ctx->dora = dora;
    ctx->opt = opt;
    ctx->batch = batch;
    ctx->n = batch->n_seqs * batch->seq_len;
    ctx->q_dim = c->n_heads * c->head_dim;
    ctx->kv_dim = c->n_kv_heads * c->head_dim;
    size_t widest = max_size((size_t)c->dim, (size_t)c->hidden_dim);
    ctx->positions = (int *)cpu_malloc(sizeof(int) * ctx->n, "positions");
    // each token's position: in its sequence, or in its own sample when samples are packed
    for (int i = 0; i < ctx->n; i++) ctx->positions[i] = batch->positions ? batch->positions[i] : i % batch->seq_len;
    ctx->keep = (float *)cpu_malloc(sizeof(float) * ctx->n * widest, "dropout mask");
    size_t widest_linear = max_size(widest, (size_t)ctx->q_dim);
    size_t scratch_width = dora ? (size_t)opt->rank + 4 * widest_linear : (size_t)opt->rank + c->dim + c->hidden_dim + widest;
    ctx->scratch = (Real *)cpu_malloc(sizeof(Real) * ctx->n * scratch_width, "adapter scratch");
    ctx->tmp = (Real *)cpu_malloc(sizeof(Real) * ctx->n * widest, "linear layer output");
}

template <typename Real>
static void context_free(StepContext<Real> *ctx) {
    free(ctx->positions);
    free(ctx->keep);
    free(ctx->scratch);
    free(ctx->tmp);
}

// Embedding, every block (activations into acts[l] when kept) and the final
// norm. stream[l] is block l's input; stream[L] the last block's output.
template <typename Real>
static void model_forward(StepContext<Real> *ctx, const WeightSource<Real> *weights, const AdapterParams<Real> *ad,
                          Real *stream, BlockActivations<Real> *acts, int keep_all, Real *normed) {
    const Config *c = ctx->c;
    size_t n_dim = (size_t)ctx->n * c->dim;
    // x[i] = embed[tokens[i]]
    for (int i = 0; i < ctx->n; i++)
        for (int j = 0; j < c->dim; j++)
            stream[(size_t)i * c->dim + j] = weights->embed[(size_t)ctx->batch->tokens[i] * c->dim + j];
    for (int l = 0; l < c->n_layers; l++) {
        BlockWeights<Real> w;
        weights->load_block(weights->context, l, &w);
        block_forward(ctx, &w, ad + l * N_LINEARS, l, stream + l * n_dim, stream + (l + 1) * n_dim,
                      &acts[keep_all ? l : 0]);
    }
    rmsnorm_cpu<Real>(normed, stream + c->n_layers * n_dim, weights->final_norm, ctx->n, c->dim, c->norm_eps);
}

// The LM head and the loss need only the tokens whose target counts (not
// IGNORE_TARGET): with answer-only labels, a few dozen of a sample's hundreds. Their
// rows of the final norm's output, gathered, and their logits.
template <typename Real>
struct CountedTokens {
    int n;            // tokens whose target counts
    int *rows;        // [n] their positions in the batch
    int *targets;     // [n] their targets
    float *weights;   // [n] their loss weights, or NULL (all 1)
    Real *normed;     // [n, dim] their rows of the final norm's output
    Real *logits;     // [n, vocab]
};

// Fills ct (allocating; counted_free releases it): the counted tokens' rows and
// targets, their rows of normed [N, dim] gathered, and their logits.
template <typename Real>
static void counted_logits(CountedTokens<Real> *ct, const StepContext<Real> *ctx, const WeightSource<Real> *weights,
                           const Real *normed) {
    const Config *c = ctx->c;
    ct->n = 0;
    ct->rows = (int *)cpu_malloc(sizeof(int) * ctx->n, "counted rows");
    ct->targets = (int *)cpu_malloc(sizeof(int) * ctx->n, "counted targets");
    const float *loss_weights = ctx->batch->weights;
    ct->weights = loss_weights ? (float *)cpu_malloc(sizeof(float) * ctx->n, "counted loss weights") : NULL;
    for (int t = 0; t < ctx->n; t++) {
        if (ctx->batch->targets[t] == IGNORE_TARGET) continue;
        ct->rows[ct->n] = t;
        ct->targets[ct->n] = ctx->batch->targets[t];
        if (loss_weights) ct->weights[ct->n] = loss_weights[t];
        ct->n++;
    }
    ct->normed = (Real *)cpu_malloc(sizeof(Real) * ct->n * c->dim, "counted rows of the final norm");
    gather_rows_cpu(ct->normed, normed, ct->rows, ct->n, c->dim);
    // logits = normed W_lm^T, counted rows only
    ct->logits = (Real *)cpu_malloc(sizeof(Real) * ct->n * c->vocab_size, "logits");
    matmul_cpu<Real>(ct->logits, ct->normed, weights->lm_head, (const Real *)NULL, ct->n, c->dim, c->vocab_size);
}

template <typename Real>
static void counted_free(CountedTokens<Real> *ct) {
    free(ct->rows);
    free(ct->targets);
    free(ct->weights);
    free(ct->normed);
    free(ct->logits);
}

template <typename Real>
double train_step_cpu(const Config *c, const WeightSource<Real> *weights, AdapterParams<Real> *adapters,
                      const StepOptions *opt, const Batch *batch, double grad_scale, int *n_counted) {
    StepContext<Real> ctx;
    context_init(&ctx, c, opt, batch, uses_dora(c, adapters));
    size_t n = (size_t)ctx.n, n_dim = n * c->dim;
    int n_acts = opt->recompute ? 1 : c->n_layers;
    Real *stream = (Real *)cpu_malloc(sizeof(Real) * (c->n_layers + 1) * n_dim, "residual stream");
    BlockActivations<Real> *acts =
        (BlockActivations<Real> *)cpu_malloc(sizeof(BlockActivations<Real>) * n_acts, "activations");
    for (int l = 0; l < n_acts; l++) alloc_activations(&acts[l], c, ctx.n, opt->rank, ctx.dora);
    Real *normed = (Real *)cpu_malloc(sizeof(Real) * n_dim, "final norm output");

    model_forward(&ctx, weights, adapters, stream, acts, !opt->recompute, normed);
    CountedTokens<Real> ct;
    counted_logits(&ct, &ctx, weights, normed);
    double loss_sum = cross_entropy_sum_cpu<Real>(ct.logits, ct.targets, ct.weights, ct.n, c->vocab_size, n_counted);

    // d logits = grad_scale w (softmax - onehot) on the counted rows; d normed is zero on the others
    Real *d_logits = (Real *)cpu_calloc((size_t)ct.n * c->vocab_size, sizeof(Real), "d logits");
    cross_entropy_backward_cpu<Real>(d_logits, ct.logits, ct.targets, ct.weights, ct.n, c->vocab_size, grad_scale);
    // d normed[rows[r]] = (d_logits W_lm)[r], scattered back to the counted tokens' rows
    Real *d_counted = (Real *)cpu_calloc((size_t)ct.n * c->dim, sizeof(Real), "d counted rows");
    matmul_backward_input_cpu<Real>(d_counted, d_logits, weights->lm_head, ct.n, c->dim, c->vocab_size);
    Real *d_normed = (Real *)cpu_calloc(n_dim, sizeof(Real), "d final norm output");
    scatter_add_rows_cpu(d_normed, d_counted, ct.rows, ct.n, c->dim);
    free(d_logits);
    free(d_counted);
    counted_free(&ct);
    Real *d_x = (Real *)cpu_calloc(n_dim, sizeof(Real), "d residual stream");
    rmsnorm_backward_cpu<Real>(d_x, d_normed, stream + c->n_layers * n_dim, weights->final_norm, ctx.n, c->dim,
                               c->norm_eps);

    BlockGradients<Real> g;
    size_t n_hidden = n * c->hidden_dim;
    g.d_mid = (Real *)cpu_malloc(sizeof(Real) * n_dim, "gradients (d_mid)");
    g.d_norm = (Real *)cpu_malloc(sizeof(Real) * n_dim, "gradients (d_norm)");
    g.d_h = (Real *)cpu_malloc(sizeof(Real) * n_hidden, "gradients (d_h)");
    g.d_gate = (Real *)cpu_malloc(sizeof(Real) * n_hidden, "gradients (d_gate)");
    g.d_up = (Real *)cpu_malloc(sizeof(Real) * n_hidden, "gradients (d_up)");
    g.d_att = (Real *)cpu_malloc(sizeof(Real) * n * ctx.q_dim, "gradients (d_att)");
    g.d_q = (Real *)cpu_malloc(sizeof(Real) * n * ctx.q_dim, "gradients (d_q)");
    g.d_k = (Real *)cpu_malloc(sizeof(Real) * n * ctx.kv_dim, "gradients (d_k)");
    g.d_v = (Real *)cpu_malloc(sizeof(Real) * n * ctx.kv_dim, "gradients (d_v)");
    for (int l = c->n_layers - 1; l >= 0; l--) {
        BlockWeights<Real> w;
        weights->load_block(weights->context, l, &w);
        BlockActivations<Real> *a = &acts[opt->recompute ? 0 : l];
        // recompute: the block's activations again; its output x_out is not needed, so
        // d_normed, no longer used, takes it
        if (opt->recompute) block_forward(&ctx, &w, adapters + l * N_LINEARS, l, stream + l * n_dim, d_normed, a);
        block_backward(&ctx, &w, adapters + l * N_LINEARS, l, stream + l * n_dim, a, &g, d_x);
    }
    free(g.d_mid); free(g.d_norm); free(g.d_h); free(g.d_gate); free(g.d_up);
    free(g.d_att); free(g.d_q); free(g.d_k); free(g.d_v);
    free(d_x);
    free(d_normed);
    free(normed);
    for (int l = 0; l < n_acts; l++) free_activations(&acts[l]);
    free(acts);
    free(stream);
    context_free(&ctx);
    return loss_sum;
}

template <typename Real>
double loss_cpu(const Config *c, const WeightSource<Real> *weights, const AdapterParams<Real> *adapters,
                const StepOptions *opt, const Batch *batch, int *n_counted) {
    StepContext<Real> ctx;
    context_init(&ctx, c, opt, batch, uses_dora(c, adapters));
    size_t n = (size_t)ctx.n, n_dim = n * c->dim;
    Real *stream = (Real *)cpu_malloc(sizeof(Real) * (c->n_layers + 1) * n_dim, "residual stream");
    BlockActivations<Real> acts;
    alloc_activations(&acts, c, ctx.n, opt->rank, ctx.dora);
    Real *normed = (Real *)cpu_malloc(sizeof(Real) * n_dim, "final norm output");
    model_forward(&ctx, weights, adapters, stream, &acts, 0, normed);
    CountedTokens<Real> ct;
    counted_logits(&ct, &ctx, weights, normed);
    double loss_sum = cross_entropy_sum_cpu<Real>(ct.logits, ct.targets, ct.weights, ct.n, c->vocab_size, n_counted);
    counted_free(&ct);
    free(normed);
    free_activations(&acts);
    free(stream);
    context_free(&ctx);
    return loss_sum;
}

template double train_step_cpu(const Config *, const WeightSource<float> *, AdapterParams<float> *,
                               const StepOptions *, const Batch *, double, int *);
template double train_step_cpu(const Config *, const WeightSource<double> *, AdapterParams<double> *,
                               const StepOptions *, const Batch *, double, int *);
template double loss_cpu(const Config *, const WeightSource<float> *, const AdapterParams<float> *,
                         const StepOptions *, const Batch *, int *);
template double loss_cpu(const Config *, const WeightSource<double> *, const AdapterParams<double> *,
                         const StepOptions *, const Batch *, int *);
