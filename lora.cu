// lora.cu: LoRA adapters: initialisation, dropout masks, forward and
// backward, on the CPU and (at the bottom) on the GPU. The frozen base
// product x W^T is computed by the caller.
#include "lora.h"
#include "ops/gpu.h"
#include "ops/layers.h"
#include "ops/lora_scratch.h"
#include "ops/random.h"
#include "formats/atomic_file.h"
#include "formats/json.h"
#include "formats/safetensors.h"
#include "formats/tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

float lora_scale(float alpha, int rank, int rslora) {
    // s = alpha / r, or alpha / sqrt(r) with rsLoRA
    return rslora ? alpha / sqrtf((float)rank) : alpha / (float)rank;
}

void lora_init_weights(LoraAdapter *a, uint64_t seed) {
    size_t a_size = (size_t)a->rank * a->in_dim, b_size = (size_t)a->out_dim * a->rank;
    // A ~ U(-1/sqrt(in), 1/sqrt(in))
    float bound = 1.0f / sqrtf((float)a->in_dim);
    uint64_t state = seed;
    for (size_t i = 0; i < a_size; i++) a->A[i] = (2.0f * random_uniform(splitmix64_next(&state)) - 1.0f) * bound;
    memset(a->B, 0, sizeof(float) * b_size);
}

// The value of a kept input: 1 / (1 - p), so that dropout keeps the mean.
static float dropout_kept_value(float p) { return p > 0.0f ? 1.0f / (1.0f - p) : 1.0f; }

// keep[i] of the mask whose stream key is mix64(seed): counter-based, so any
// element can be computed alone (one GPU thread each). The random number is
// the i-th output of splitmix64 started at the key, splitmix64_at(key, i);
// mixing the seed into the key first keeps related seeds (seed ^ k GAMMA, as
// lora_dropout_seed derives them) from giving shifted copies of one stream.
HOST_DEVICE static inline float dropout_keep_value(uint64_t key, size_t i, float p, float kept_value) {
    float u = random_uniform(splitmix64_at(key, (uint64_t)i));
    return (p > 0.0f && u < p) ? 0.0f : kept_value;
}

int lora_group_targets(const int enabled[N_LINEARS], int group, int targets[LINEAR_GROUP_MAX]) {
    int count = 0;
    for (int t = LINEAR_GROUP_FIRST[group]; t < LINEAR_GROUP_FIRST[group + 1]; t++)
        if (enabled[t]) targets[count++] = t;
    return count;
}

uint64_t lora_dropout_seed(uint64_t step_seed, int layer, int target) {
    // step_seed ^ (k + 1) GAMMA, k = layer * N_LINEARS + the first target of target's input group
    int first = LINEAR_GROUP_FIRST[linear_group_of(target)];
    return step_seed ^ ((uint64_t)(layer * N_LINEARS + first + 1) * SPLITMIX64_GAMMA);
}

void lora_dropout_mask(float *keep, size_t count, float p, uint64_t seed) {
    uint64_t key = mix64(seed);
    float kept_value = dropout_kept_value(p);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) keep[i] = dropout_keep_value(key, i, p, kept_value);
}

template <typename Real>
void lora_apply_mask_cpu(Real *out, const Real *x, const float *keep, size_t count) {
    // out[i] = x[i] keep[i]
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) out[i] = keep ? x[i] * keep[i] : x[i];
}

// y[t][o] += sum_k xa[t][k] (s B[o][k]): the rank r terms of each output summed,
// then added. r is too few terms to split into SIMD lanes, so the lanes run
// along o instead: s B^T [r, out] is made once, and each token's out sums are
// built in a row, one k at a time.
template <typename Real>
static void add_scaled_xa_bt(Real *y, const Real *xa, const Real *B, LoraShape s) {
    // scaled_b_t[k][o] = s B[o][k]
    Real *scaled_b_t = (Real *)cpu_malloc(sizeof(Real) * s.rank * s.out_dim, "scaled B^T");
    for (int o = 0; o < s.out_dim; o++)
        for (int k = 0; k < s.rank; k++) scaled_b_t[(size_t)k * s.out_dim + o] = s.scaling * B[(size_t)o * s.rank + k];
    #pragma omp parallel
    {
        Real *sum = (Real *)cpu_malloc(sizeof(Real) * s.out_dim, "LoRA output row");
        #pragma omp for schedule(static)
        for (int t = 0; t < s.n; t++) {
            const Real *xa_t = xa + (size_t)t * s.rank;
            for (int o = 0; o < s.out_dim; o++) sum[o] = 0;
            for (int k = 0; k < s.rank; k++) {
                const Real *b_k = scaled_b_t + (size_t)k * s.out_dim;
                // sum[o] += xa[t][k] (s B[o][k])
                #pragma omp simd
                for (int o = 0; o < s.out_dim; o++) sum[o] += xa_t[k] * b_k[o];
            }
            Real *y_t = y + (size_t)t * s.out_dim;
            for (int o = 0; o < s.out_dim; o++) y_t[o] += sum[o];
        }
        free(sum);
    }
    free(scaled_b_t);
}

template <typename Real>
void lora_forward_cpu(Real *y, const Real *x, const float *keep, const Real *A, const Real *B, LoraShape s, Real *xa,
                      Real *scratch) {
    Real *dropped = scratch;
    lora_apply_mask_cpu(dropped, x, keep, (size_t)s.n * s.in_dim);
    // xa = (x * keep) A^T            [n, r]
    matmul_cpu<Real>(xa, dropped, A, NULL, s.n, s.in_dim, s.rank);
    // y += s xa B^T                  [n, out]
    add_scaled_xa_bt(y, xa, B, s);
}

template <typename Real>
void lora_backward_cpu(Real *dx, Real *dA, Real *dB, const Real *dy, const Real *x, const float *keep, const Real *A,
                       const Real *B, const Real *xa, LoraShape s, Real *scratch) {
    size_t x_count = (size_t)s.n * s.in_dim, y_count = (size_t)s.n * s.out_dim;
    Real *d_xa = scratch;                              // [n, r]
    Real *dropped = d_xa + (size_t)s.n * s.rank;       // [n, in]
    Real *dy_scaled = dropped + x_count;               // [n, out]
    // dy_s = s dy: the scaling applies to every product below
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < y_count; i++) dy_scaled[i] = s.scaling * dy[i];
    // dB += dy_s^T xa
    matmul_backward_weight_cpu<Real>(dB, dy_scaled, xa, s.n, s.rank, s.out_dim);
    // d_xa = dy_s B
    memset(d_xa, 0, sizeof(Real) * s.n * s.rank);
    matmul_backward_input_cpu<Real>(d_xa, dy_scaled, B, s.n, s.rank, s.out_dim);
    // dA += d_xa^T dropout(x)
    lora_apply_mask_cpu(dropped, x, keep, x_count);
    matmul_backward_weight_cpu<Real>(dA, d_xa, dropped, s.n, s.in_dim, s.rank);
    if (!dx) return;
    // dx += (d_xa A) * keep
    Real *d_dropped = dropped;
    memset(d_dropped, 0, sizeof(Real) * x_count);
    matmul_backward_input_cpu<Real>(d_dropped, d_xa, A, s.n, s.in_dim, s.rank);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < x_count; i++) dx[i] += keep ? d_dropped[i] * keep[i] : d_dropped[i];
}

template void lora_apply_mask_cpu(float *, const float *, const float *, size_t);
template void lora_apply_mask_cpu(double *, const double *, const float *, size_t);
template void lora_forward_cpu(float *, const float *, const float *, const float *, const float *, LoraShape, float *,
                               float *);
template void lora_forward_cpu(double *, const double *, const float *, const double *, const double *, LoraShape,
                               double *, double *);
template void lora_backward_cpu(float *, float *, float *, const float *, const float *, const float *, const float *,
                                const float *, const float *, LoraShape, float *);
template void lora_backward_cpu(double *, double *, double *, const double *, const double *, const float *,
                                const double *, const double *, const double *, LoraShape, double *);

// ---- all adapters of a model -----------------------------------------------

int lora_parse_targets(const char *list, int enabled[N_LINEARS], char *err, size_t err_size) {
    for (int t = 0; t < N_LINEARS; t++) enabled[t] = 0;
    const char *p = list;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        int found = -1;
        for (int t = 0; t < N_LINEARS; t++)
            if (strlen(LINEAR_NAMES[t]) == len && strncmp(p, LINEAR_NAMES[t], len) == 0) found = t;
        if (found < 0) {
            snprintf(err, err_size, "unknown LoRA target '%.*s' (choose from q,k,v,o,gate,up,down)", (int)len, p);
            return -1;
        }
        enabled[found] = 1;
        p += len + (end ? 1 : 0);
    }
    int any = 0;
    for (int t = 0; t < N_LINEARS; t++) any |= enabled[t];
    if (!any) { snprintf(err, err_size, "no LoRA targets given"); return -1; }
    return 0;
}

void lora_targets_text(const int enabled[N_LINEARS], char *out, size_t out_size) {
    size_t used = 0;
    out[0] = '\0';
    for (int t = 0; t < N_LINEARS && used < out_size; t++)
        if (enabled[t]) used += snprintf(out + used, out_size - used, "%s%s", used ? "," : "", LINEAR_NAMES[t]);
}

// Floats the set's adapters take together (A and B of every enabled target of
// every layer, and with DoRA each one's magnitude vector m).
static size_t count_params(const Config *c, const int enabled[N_LINEARS], int rank, int dora) {
    size_t total = 0;
    for (int t = 0; t < N_LINEARS; t++) {
        if (!enabled[t]) continue;
        int in_dim, out_dim;
        linear_dims(c, t, &in_dim, &out_dim);
        total += (size_t)c->n_layers * ((size_t)rank * (in_dim + out_dim) + (dora ? out_dim : 0));
    }
    return total;
}

int lora_set_init(LoraSet *set, const Config *c, const int enabled[N_LINEARS], int rank, float alpha, int rslora,
                  float dropout, uint64_t seed, int dora) {
    memset(set, 0, sizeof *set);
    set->n_layers = c->n_layers;
    for (int t = 0; t < N_LINEARS; t++) set->enabled[t] = enabled[t];
    set->rank = rank;
    set->alpha = alpha;
    set->rslora = rslora;
    set->dropout = dropout;
    set->dora = dora;
    set->n_params = count_params(c, enabled, rank, dora);
    size_t n_alloc = set->n_params > 0 ? set->n_params : 1;
    set->params = (float *)calloc(n_alloc, sizeof(float));
    set->grads = (float *)calloc(n_alloc, sizeof(float));
    set->adapters = (LoraAdapter *)calloc((size_t)c->n_layers * N_LINEARS, sizeof(LoraAdapter));
    if (!set->params || !set->grads || !set->adapters) {
        lora_set_free(set);
        return -1;
    }
    // per layer and input group: the group's A's end to end, then each one's B (then m
    // with DoRA); offset is where the next tensor starts
    size_t offset = 0;
    for (int l = 0; l < c->n_layers; l++) {
        for (int group = 0; group < N_LINEAR_GROUPS; group++) {
            int targets[LINEAR_GROUP_MAX];
            int count = lora_group_targets(enabled, group, targets);
            for (int i = 0; i < count; i++) {
                LoraAdapter *a = &set->adapters[l * N_LINEARS + targets[i]];
                linear_dims(c, targets[i], &a->in_dim, &a->out_dim);
                a->rank = rank;
                a->scaling = lora_scale(alpha, rank, rslora);
                a->A = set->params + offset;
                a->dA = set->grads + offset;
                offset += (size_t)rank * a->in_dim;
            }
            for (int i = 0; i < count; i++) {
                LoraAdapter *a = &set->adapters[l * N_LINEARS + targets[i]];
                a->B = set->params + offset;
                a->dB = set->grads + offset;
                offset += (size_t)a->out_dim * rank;
                if (dora) {   // m = 0 until dora_init_magnitudes (dora.h) sets it from the base
                    a->m = set->params + offset;
                    a->dm = set->grads + offset;
                    offset += (size_t)a->out_dim;
                }
                lora_init_weights(a, seed * 1000003ULL + (uint64_t)(l * N_LINEARS + targets[i]));
            }
        }
    }
    return 0;
}

void lora_set_free(LoraSet *set) {
    free(set->params);
    free(set->grads);
    free(set->adapters);
    memset(set, 0, sizeof *set);
}

size_t lora_set_num_params(const LoraSet *set) { return set->n_params; }

void lora_set_zero_grads(LoraSet *set) { memset(set->grads, 0, sizeof(float) * set->n_params); }

int lora_set_find_non_finite(const LoraSet *set, const float *flat, char *name, size_t name_size) {
    snprintf(name, name_size, "none");
    for (int i = 0; i < set->n_layers * N_LINEARS; i++) {
        const LoraAdapter *a = &set->adapters[i];
        if (!a->A) continue;
        static const char *const TENSORS[3] = {"lora_A", "lora_B", "lora_magnitude_vector"};
        for (int which = 0; which < (a->m ? 3 : 2); which++) {
            const float *view = which == 0 ? a->A : which == 1 ? a->B : a->m;
            size_t count = which == 0 ? (size_t)a->rank * a->in_dim
                           : which == 1 ? (size_t)a->rank * a->out_dim : (size_t)a->out_dim;
            if (floats_all_finite(flat + (view - set->params), count)) continue;
            snprintf(name, name_size, "layer %d %s %s", i / N_LINEARS, LINEAR_NAMES[i % N_LINEARS], TENSORS[which]);
            return 1;
        }
    }
    return 0;
}

const char *peft_layers_path(const Config *c) {
    return c->arch == ARCH_EXAONE ? PEFT_WRAPPER "transformer.h." : PEFT_WRAPPER "model.layers.";
}

const char *peft_module_path(const Config *c, int target) {
    static const char *const LLAMA[N_LINEARS] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                  "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                  "mlp.down_proj"};
    static const char *const EXAONE[N_LINEARS] = {"attn.attention.q_proj", "attn.attention.k_proj",
                                                   "attn.attention.v_proj", "attn.attention.out_proj",
                                                   "mlp.c_fc_0", "mlp.c_fc_1", "mlp.c_proj"};
    return c->arch == ARCH_EXAONE ? EXAONE[target] : LLAMA[target];
}

// The module of (layer, target), e.g. base_model.model.model.layers.3.mlp.up_proj
static void peft_module_name(const Config *c, int layer, int target, char *out, size_t size) {
    snprintf(out, size, "%s%d.%s", peft_layers_path(c), layer, peft_module_path(c, target));
}

static const char *peft_target_module(const Config *c, int target) {
    static const char *const LLAMA[N_LINEARS] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                  "down_proj"};
    static const char *const EXAONE[N_LINEARS] = {"q_proj", "k_proj", "v_proj", "out_proj", "c_fc_0", "c_fc_1",
                                                   "c_proj"};
    return c->arch == ARCH_EXAONE ? EXAONE[target] : LLAMA[target];
}

static int write_adapter_config(const LoraSet *set, const Config *c, const char *path, const char *base_model,
                                const LoraBase *base, char *err, size_t err_size) {
    AtomicFile file;
    FILE *f = atomic_file_open(&file, path, err, err_size);
    if (!f) return -1;
    fprintf(f, "{\n  \"peft_type\": \"LORA\",\n  \"task_type\": \"CAUSAL_LM\",\n  \"base_model_name_or_path\": ");
    json_write_string(f, base_model);
    fprintf(f, ",\n  \"r\": %d,\n  \"lora_alpha\": %g,\n  \"lora_dropout\": %g,\n  \"target_modules\": [", set->rank,
            set->alpha, set->dropout);
    int first = 1;
    for (int t = 0; t < N_LINEARS; t++) {
        if (!set->enabled[t]) continue;
        fprintf(f, "%s\"%s\"", first ? "" : ", ", peft_target_module(c, t));
        first = 0;
    }
    fprintf(f, "],\n  \"bias\": \"none\",\n  \"fan_in_fan_out\": false,\n  \"use_rslora\": %s,\n"
               "  \"use_dora\": %s,\n  \"init_lora_weights\": true,\n  \"inference_mode\": true,\n",
            set->rslora ? "true" : "false", set->dora ? "true" : "false");
    lora_write_base_record(f, base);
    fputs("\n}\n", f);
    return atomic_file_commit(&file, err, err_size);
}

void lora_write_base_record(FILE *f, const LoraBase *base) {
    fprintf(f, "  \"%s\": {\"quant\": \"%s\", \"double_quant\": %s, \"model_weights_hash\": \"%016llx\"}",
            LORA_BASE_KEY, base->quant_nf4 ? "nf4" : "none", base->double_quant ? "true" : "false",
            (unsigned long long)base->model_hash);
}

int lora_set_save_peft(const LoraSet *set, const Config *c, const char *dir, const char *base_model,
                       const LoraBase *base, char *err, size_t err_size) {
    int n_tensors = 0, per_adapter = set->dora ? 3 : 2;
    for (int i = 0; i < set->n_layers * N_LINEARS; i++) n_tensors += set->adapters[i].A ? per_adapter : 0;
    TensorInfo *tensors = (TensorInfo *)cpu_calloc((size_t)n_tensors, sizeof(TensorInfo), "adapter tensors");
    char (*names)[160] = (char (*)[160])cpu_calloc((size_t)n_tensors, 160, "adapter tensor names");
    int k = 0;
    for (int l = 0; l < set->n_layers; l++) {
        for (int t = 0; t < N_LINEARS; t++) {
            const LoraAdapter *a = &set->adapters[l * N_LINEARS + t];
            if (!a->A) continue;
            char module[128];
            peft_module_name(c, l, t, module, sizeof module);
            if (a->m) {   // peft's name has no ".weight": base_model.model...q_proj.lora_magnitude_vector
                snprintf(names[k], 160, "%s.lora_magnitude_vector", module);
                tensors[k].name = names[k];
                tensors[k].dtype = DT_F32;
                tensors[k].ndim = 1;
                tensors[k].shape[0] = a->out_dim;
                tensors[k].data = a->m;
                tensors[k].nbytes = sizeof(float) * (size_t)a->out_dim;
                k++;
            }
            for (int which = 0; which < 2; which++, k++) {
                snprintf(names[k], 160, "%s.lora_%s.weight", module, which ? "B" : "A");
                tensors[k].name = names[k];
                tensors[k].dtype = DT_F32;
                tensors[k].ndim = 2;
                tensors[k].shape[0] = which ? a->out_dim : a->rank;
                tensors[k].shape[1] = which ? a->rank : a->in_dim;
                tensors[k].data = which ? a->B : a->A;
                tensors[k].nbytes = sizeof(float) * (size_t)a->rank * (which ? a->out_dim : a->in_dim);
            }
        }
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    int status = safetensors_write(path, tensors, n_tensors, err, err_size);
    free(tensors);
    free(names);
    if (status != 0) return -1;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    return write_adapter_config(set, c, path, base_model, base, err, err_size);
}

// ---- on the GPU ----------------------------------------------------------------
#ifdef __CUDACC__

// keep[i] as lora_dropout_mask: the same function of (key, i), one thread each.
__global__ static void dropout_mask_kernel(float *keep, size_t count, float p, float kept_value, uint64_t key) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) keep[i] = dropout_keep_value(key, i, p, kept_value);
}

void lora_dropout_mask_gpu(float *keep, size_t count, float p, uint64_t seed) {
    if (count == 0) return;
    unsigned blocks = (unsigned)((count + 255) / 256);
    dropout_mask_kernel<<<blocks, 256>>>(keep, count, p, dropout_kept_value(p), mix64(seed));
    CUDA_CHECK_LAUNCH();
}

// out[i] = T(x[i] * keep[i])
template <typename T>
__global__ static void apply_mask_kernel(T *out, const T *x, const float *keep, size_t count) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = from_float<T>(to_float(x[i]) * keep[i]);
}

void lora_apply_mask_gpu(act16 *out, const act16 *x, const float *keep, size_t count) {
    unsigned blocks = (unsigned)((count + 255) / 256);
    if (gpu_act16() == ACT16_FP16) apply_mask_kernel<fp16><<<blocks, 256>>>(as_fp16(out), as_fp16(x), keep, count);
    else apply_mask_kernel<bf16><<<blocks, 256>>>(as_bf16(out), as_bf16(x), keep, count);
    CUDA_CHECK_LAUNCH();
}

// dx[i] += d_dropped[i] * keep[i]
__global__ static void add_masked_kernel(float *dx, const float *d_dropped, const float *keep, size_t count) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) dx[i] += d_dropped[i] * keep[i];
}

void lora_add_masked_gpu(float *dx, const float *d, const float *keep, size_t count) {
    if (count == 0) return;
    add_masked_kernel<<<(unsigned)((count + 255) / 256), 256>>>(dx, d, keep, count);
    CUDA_CHECK_LAUNCH();
}

// Scratch layout (ops/lora_scratch.h): d_xa (act16 [n, count * rank]), then one region
// of n * in fp32 that holds the masked input x * keep (act16 [n, in]) and, once that
// is used up in backward, d(x * keep) (fp32 [n, in]).
static size_t input_offset(LoraGroupShape s) {
    return lora_scratch_input_offset((size_t)s.n, s.count, s.rank, sizeof(act16));
}

size_t lora_group_scratch_bytes_gpu(LoraGroupShape s) {
    return lora_scratch_size((size_t)s.n, s.in_dim, s.count, s.rank, sizeof(act16));
}

// One adapter is a group of one (lora_forward_gpu, lora_backward_gpu).
static LoraGroupShape group_of_one(LoraShape s) {
    LoraGroupShape group = {s.n, s.in_dim, s.rank, 1, {s.out_dim}, s.scaling};
    return group;
}

size_t lora_scratch_bytes_gpu(LoraShape s) { return lora_group_scratch_bytes_gpu(group_of_one(s)); }

void lora_group_forward_gpu(act16 *const y[], act16 *xa, const act16 *x, const float *keep, const act16 *A,
                            const act16 *const B[], LoraGroupShape s, void *scratch) {
    if (s.n == 0) return;
    int xa_width = s.count * s.rank;
    const act16 *dropped = x;
    if (keep) {
        act16 *masked = (act16 *)((char *)scratch + input_offset(s));
        lora_apply_mask_gpu(masked, x, keep, (size_t)s.n * s.in_dim);
        dropped = masked;
    }
    // xa = dropout(x) [A_1; ...; A_count]^T        [n, count r]
    gemm_act16(xa, gpu_act16_cuda_type(), dropped, false, A, true, s.n, xa_width, s.in_dim, 1.0f, 0.0f);
    for (int t = 0; t < s.count; t++) {
        // y_t += s xa_t B_t^T, xa_t = columns t r .. (t + 1) r - 1 of xa      [n, out_t]
        gemm_act16_strided(y[t], gpu_act16_cuda_type(), s.out_dim[t], xa + t * s.rank, false, xa_width, B[t], true,
                           s.rank, s.n, s.out_dim[t], s.rank, s.scaling, 1.0f);
    }
}

void lora_group_backward_gpu(float *dx, float *dA, float *const dB[], const act16 *const dy[], const act16 *x,
                             const float *keep, const act16 *A, const act16 *const B[], const act16 *xa,
                             LoraGroupShape s, void *scratch) {
    if (s.n == 0) return;
    size_t x_count = (size_t)s.n * s.in_dim;
    int xa_width = s.count * s.rank;
    act16 *d_xa = (act16 *)scratch;
    void *x_region = (char *)scratch + input_offset(s);
    for (int t = 0; t < s.count; t++) {
        // dB_t += s dy_t^T xa_t                     [out_t, r]
        gemm_act16_strided(dB[t], CUDA_R_32F, s.rank, dy[t], true, s.out_dim[t], xa + t * s.rank, false, xa_width,
                           s.out_dim[t], s.rank, s.n, s.scaling, 1.0f);
        // d_xa_t = s dy_t B_t, into columns t r .. (t + 1) r - 1 of d_xa     [n, r]
        gemm_act16_strided(d_xa + t * s.rank, gpu_act16_cuda_type(), xa_width, dy[t], false, s.out_dim[t], B[t],
                           false, s.rank, s.n, s.rank, s.out_dim[t], s.scaling, 0.0f);
    }
    // dA_g += d_xa^T dropout(x)                     [count r, in]
    const act16 *dropped = x;
    if (keep) {
        lora_apply_mask_gpu((act16 *)x_region, x, keep, x_count);
        dropped = (const act16 *)x_region;
    }
    gemm_act16(dA, CUDA_R_32F, d_xa, true, dropped, false, xa_width, s.in_dim, s.n, 1.0f, 1.0f);
    if (!dx) return;
    if (!keep) {
        // dx += d_xa A_g                            [n, in]
        gemm_act16(dx, CUDA_R_32F, d_xa, false, A, false, s.n, s.in_dim, xa_width, 1.0f, 1.0f);
        return;
    }
    // dx += (d_xa A_g) * keep: the product goes where the masked x was (its last reader, the dA product, came first)
    float *d_dropped = (float *)x_region;
    gemm_act16(d_dropped, CUDA_R_32F, d_xa, false, A, false, s.n, s.in_dim, xa_width, 1.0f, 0.0f);
    lora_add_masked_gpu(dx, d_dropped, keep, x_count);
}

void lora_forward_gpu(act16 *y, act16 *xa, const act16 *x, const float *keep, const act16 *A, const act16 *B, LoraShape s,
                      void *scratch) {
    lora_group_forward_gpu(&y, xa, x, keep, A, &B, group_of_one(s), scratch);
}

void lora_backward_gpu(float *dx, float *dA, float *dB, const act16 *dy, const act16 *x, const float *keep, const act16 *A,
                       const act16 *B, const act16 *xa, LoraShape s, void *scratch) {
    lora_group_backward_gpu(dx, dA, &dB, &dy, x, keep, A, &B, xa, group_of_one(s), scratch);
}
#endif
