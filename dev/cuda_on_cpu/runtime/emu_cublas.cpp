// emu_cublas.cpp: cuBLAS's GEMMs on the CPU (dev/cuda_on_cpu; see README.md):
// column-major C = alpha op(A) op(B) + beta C, fp32 products accumulated in
// fp32. Checks the arguments as cuBLAS does (m, n, k, lda, ldb, ldc, types),
// and what cuBLAS cannot: that each operand lies inside one device allocation,
// that C overlaps neither A nor B, that no two batch entries write the same
// element of C. Records the smallest alignment of every operand, printed at exit.
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <map>
#include <unordered_set>
#include <vector>

#include "cublas_v2.h"
#include "emu_internal.h"

struct cublasContext {
    int unused;
};

namespace {
// ---- alignment statistics ----------------------------------------------------
struct AlignStat {
    uintptr_t min_align = (uintptr_t)1 << 30;
    uint64_t calls = 0;
    std::string example;   // a call with the smallest alignment
};
// Never destroyed: the summary prints from an atexit handler.
std::map<std::string, AlignStat> &g_align = *new std::map<std::string, AlignStat>;   // "cublasGemmEx A (bf16)" -> ...
std::map<std::string, uint64_t> &g_calls = *new std::map<std::string, uint64_t>;     // API -> calls

// The largest power of two dividing a (2^30 for 0).
uintptr_t alignment_of(uintptr_t a) { return a ? (a & (~a + 1)) : (uintptr_t)1 << 30; }

// (only f32, bf16 and f16 pass check_args)
size_t type_size(cudaDataType t) { return t == CUDA_R_32F ? 4 : 2; }
const char *type_name(cudaDataType t) {
    return t == CUDA_R_32F ? "f32" : t == CUDA_R_16BF ? "bf16" : t == CUDA_R_16F ? "f16" : "other";
}

void note(const std::string &key, uintptr_t align, const std::string &example) {
    AlignStat &s = g_align[key];
    s.calls++;
    if (align < s.min_align) {
        s.min_align = align;
        s.example = example;
    }
}

// The alignment of an operand's pointer, and of its leading dimension in bytes.
void note_operand(const char *api, const char *operand, cudaDataType t, const void *p, int ld) {
    std::string key = std::string(api) + " " + operand;
    char example[64];
    snprintf(example, sizeof example, "%p, ld %d", p, ld);
    note(key + " (" + type_name(t) + ")", alignment_of((uintptr_t)p), example);
    snprintf(example, sizeof example, "ld %d", ld);
    note(key + " ld*size (" + type_name(t) + ")", alignment_of((size_t)ld * type_size(t)), example);
}

// ---- the product --------------------------------------------------------------
float load(const void *p, cudaDataType t, size_t i) {
    if (t == CUDA_R_32F) return ((const float *)p)[i];
    if (t == CUDA_R_16F) return __half2float(((const __half *)p)[i]);
    return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
}
void store(void *p, cudaDataType t, size_t i, float v) {
    if (t == CUDA_R_32F)
        ((float *)p)[i] = v;
    else if (t == CUDA_R_16F)
        ((__half *)p)[i] = __float2half(v);
    else
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16(v);
}

// The elements a column-major rows x cols matrix with leading dimension ld spans.
size_t extent(int rows, int cols, int ld) { return rows == 0 || cols == 0 ? 0 : (size_t)(cols - 1) * ld + rows; }

// C = alpha op(A) op(B) + beta C for one matrix (the arguments already checked).
// A tensor core does not add in k order either: here 8 partial sums, then the tail.
void gemm_one(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const void *A,
              cudaDataType at, int lda, const void *B, cudaDataType bt, int ldb, float beta, void *C, cudaDataType ct,
              int ldc) {
    if (m == 0 || n == 0) return;
    // op(A) as m rows of k, op(B) as n columns of k
    std::vector<float> a((size_t)m * k), b((size_t)n * k);
    for (int i = 0; i < m; i++)
        for (int p = 0; p < k; p++)
            a[(size_t)i * k + p] = ta == CUBLAS_OP_N ? load(A, at, i + (size_t)p * lda) : load(A, at, p + (size_t)i * lda);
    for (int j = 0; j < n; j++)
        for (int p = 0; p < k; p++)
            b[(size_t)j * k + p] = tb == CUBLAS_OP_N ? load(B, bt, p + (size_t)j * ldb) : load(B, bt, j + (size_t)p * ldb);
#pragma omp parallel for schedule(static) if ((double)m * n * k > 1e6)
    for (int j = 0; j < n; j++) {
        const float *bj = &b[(size_t)j * k];
        for (int i = 0; i < m; i++) {
            const float *ai = &a[(size_t)i * k];
            float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int p = 0;
            for (; p + 8 <= k; p += 8)
                for (int u = 0; u < 8; u++) s[u] = fmaf(ai[p + u], bj[p + u], s[u]);
            float acc = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
            for (; p < k; p++) acc = fmaf(ai[p], bj[p], acc);
            size_t ci = i + (size_t)j * ldc;
            float v = alpha * acc;
            if (beta != 0.0f) v += beta * load(C, ct, ci);   // beta 0: C is not read (a NaN there stays out)
            store(C, ct, ci, v);
        }
    }
}

// ---- checks -------------------------------------------------------------------
// The matrices' shapes as stored: op(A) is m x k, op(B) k x n.
struct Shapes {
    int a_rows, a_cols, b_rows, b_cols;
    Shapes(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k)
        : a_rows(ta == CUBLAS_OP_N ? m : k), a_cols(ta == CUBLAS_OP_N ? k : m), b_rows(tb == CUBLAS_OP_N ? k : n),
          b_cols(tb == CUBLAS_OP_N ? n : k) {}
};

// What cuBLAS itself checks, and that alpha and beta are host pointers.
cublasStatus_t check_args(const char *api, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                          const void *alpha, cudaDataType at, int lda, cudaDataType bt, int ldb, const void *beta,
                          cudaDataType ct, int ldc, cublasComputeType_t comp) {
    g_calls[api]++;
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T)) {
        emu::error("%s: transa %d / transb %d not emulated", api, ta, tb);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    Shapes s(ta, tb, m, n, k);
    if (m < 0 || n < 0 || k < 0 || lda < std::max(1, s.a_rows) || ldb < std::max(1, s.b_rows) || ldc < std::max(1, m)) {
        emu::error("%s: invalid value (cuBLAS returns CUBLAS_STATUS_INVALID_VALUE): m %d n %d k %d, lda %d (needs >= %d), "
                   "ldb %d (needs >= %d), ldc %d (needs >= %d)",
                   api, m, n, k, lda, std::max(1, s.a_rows), ldb, std::max(1, s.b_rows), ldc, std::max(1, m));
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    bool types_ok = comp == CUBLAS_COMPUTE_32F &&
                    ((at == CUDA_R_16BF && bt == CUDA_R_16BF && (ct == CUDA_R_16BF || ct == CUDA_R_32F)) ||
                     (at == CUDA_R_16F && bt == CUDA_R_16F && (ct == CUDA_R_16F || ct == CUDA_R_32F)) ||
                     (at == CUDA_R_32F && bt == CUDA_R_32F && ct == CUDA_R_32F));
    if (!types_ok) {
        emu::error("%s: type combination A %s, B %s, C %s, compute %d is not emulated", api, type_name(at),
                   type_name(bt), type_name(ct), comp);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (!alpha || !beta || emu::device_range_ok(alpha, 4) || emu::device_range_ok(beta, 4)) {
        emu::error("%s: alpha/beta must be host pointers (pointer mode host)", api);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    return CUBLAS_STATUS_SUCCESS;
}

// Whether operand `name` of batch entry `entry` lies inside one device allocation; reports it if not.
bool check_operand(const char *api, const char *name, const void *p, int rows, int cols, int ld, cudaDataType t,
                   int entry) {
    size_t bytes = extent(rows, cols, ld) * type_size(t);
    if (bytes == 0) return true;
    if (!p) {
        emu::error("%s: %s[%d] is NULL", api, name, entry);
        return false;
    }
    if (emu::device_range_ok(p, bytes)) return true;
    uintptr_t start;
    size_t size;
    if (emu::find_allocation(p, &start, &size))
        emu::error("%s: %s[%d] = %p, %dx%d (ld %d, %s) spans %zu bytes, overrunning its allocation %p + %zu by %zu bytes",
                   api, name, entry, p, rows, cols, ld, type_name(t), bytes, (void *)start, size,
                   (size_t)((uintptr_t)p + bytes - (start + size)));
    else
        emu::error("%s: %s[%d] = %p is not device memory", api, name, entry, p);
    return false;
}

bool overlaps(const void *p, size_t p_bytes, const void *q, size_t q_bytes) {
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)q;
    return p_bytes && q_bytes && a < b + q_bytes && b < a + p_bytes;
}

// Checks one entry's three operands (and records their alignments); false if one is outside device memory.
bool check_entry(const char *api, int entry, const Shapes &s, int m, int n, int k, const void *A, cudaDataType at,
                 int lda, const void *B, cudaDataType bt, int ldb, const void *C, cudaDataType ct, int ldc) {
    if (!check_operand(api, "A", A, s.a_rows, s.a_cols, lda, at, entry) ||
        !check_operand(api, "B", B, s.b_rows, s.b_cols, ldb, bt, entry) ||
        !check_operand(api, "C", C, m, n, ldc, ct, entry))
        return false;
    size_t c_bytes = extent(m, n, ldc) * type_size(ct);
    if (overlaps(C, c_bytes, A, extent(s.a_rows, s.a_cols, lda) * type_size(at)))
        emu::error("%s: entry %d: C %p overlaps A %p (cuBLAS does not allow in-place products)", api, entry, C, A);
    if (overlaps(C, c_bytes, B, extent(s.b_rows, s.b_cols, ldb) * type_size(bt)))
        emu::error("%s: entry %d: C %p overlaps B %p (cuBLAS does not allow in-place products)", api, entry, C, B);
    if (k > 0) note_operand(api, "A", at, A, lda);
    if (k > 0) note_operand(api, "B", bt, B, ldb);
    note_operand(api, "C", ct, C, ldc);
    return true;
}

// The batch entries run in parallel on a GPU: two writing one element of C would race.
bool check_outputs_disjoint(const char *api, void *const *Cs, int batch, int m, int n, int ldc, cudaDataType ct) {
    std::unordered_set<uintptr_t> written;
    written.reserve((size_t)batch * m * n);
    for (int e = 0; e < batch; e++)
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                uintptr_t addr = (uintptr_t)Cs[e] + (i + (size_t)j * ldc) * type_size(ct);
                if (!written.insert(addr).second) {
                    emu::error("%s: entry %d writes C element (%d, %d) at %p, which another entry also writes", api, e,
                               i, j, (void *)addr);
                    return false;
                }
            }
    return true;
}

// The pointer arrays of cublasGemmBatchedEx live in device memory, each inside one allocation.
bool check_pointer_arrays(const char *api, const void *const *As, const void *const *Bs, void *const *Cs, int batch) {
    const void *arrays[3] = {As, Bs, Cs};
    const char *names[3] = {"Aarray", "Barray", "Carray"};
    for (int i = 0; i < 3; i++) {
        if (!emu::device_range_ok(arrays[i], sizeof(void *) * (size_t)batch)) {
            emu::error("%s: %s (%p, %d pointers) is not inside one device allocation", api, names[i], arrays[i], batch);
            return false;
        }
        char example[32];
        snprintf(example, sizeof example, "%p", arrays[i]);
        note(std::string(api) + " " + names[i] + " (the array)", alignment_of((uintptr_t)arrays[i]), example);
    }
    return true;
}
}   // namespace

namespace emu {
void print_cublas_summary(void) {
    if (g_calls.empty()) return;
    for (auto &c : g_calls)
        fprintf(stderr, "EMU cuBLAS: %s called %llu times\n", c.first.c_str(), (unsigned long long)c.second);
    for (auto &a : g_align)
        fprintf(stderr, "EMU cuBLAS alignment: %-40s smallest %6llu bytes over %llu operands (e.g. %s)\n",
                a.first.c_str(), (unsigned long long)a.second.min_align, (unsigned long long)a.second.calls,
                a.second.example.c_str());
}
}   // namespace emu

// ---- the API --------------------------------------------------------------------
cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = new cublasContext();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt,
                            int ldb, const void *beta, void *C, cudaDataType ct, int ldc, cublasComputeType_t comp,
                            cublasGemmAlgo_t) {
    const char *api = "cublasGemmEx";
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    cublasStatus_t st = check_args(api, ta, tb, m, n, k, alpha, at, lda, bt, ldb, beta, ct, ldc, comp);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    if (!check_entry(api, 0, Shapes(ta, tb, m, n, k), m, n, k, A, at, lda, B, bt, ldb, C, ct, ldc))
        return CUBLAS_STATUS_EXECUTION_FAILED;
    double t0 = emu::now_seconds();
    gemm_one(ta, tb, m, n, k, *(const float *)alpha, A, at, lda, B, bt, ldb, *(const float *)beta, C, ct, ldc);
    emu::profile_add("cublasGemmEx (m*n*k as threads)", (uint64_t)m * n * k, emu::now_seconds() - t0);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                   const void *alpha, const void *const As[], cudaDataType at, int lda,
                                   const void *const Bs[], cudaDataType bt, int ldb, const void *beta,
                                   void *const Cs[], cudaDataType ct, int ldc, int batch, cublasComputeType_t comp,
                                   cublasGemmAlgo_t) {
    const char *api = "cublasGemmBatchedEx";
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    cublasStatus_t st = check_args(api, ta, tb, m, n, k, alpha, at, lda, bt, ldb, beta, ct, ldc, comp);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    if (batch < 0) {
        emu::error("%s: batchCount %d", api, batch);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (batch == 0 || m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    if (!check_pointer_arrays(api, As, Bs, Cs, batch)) return CUBLAS_STATUS_EXECUTION_FAILED;
    Shapes s(ta, tb, m, n, k);
    for (int e = 0; e < batch; e++)
        if (!check_entry(api, e, s, m, n, k, As[e], at, lda, Bs[e], bt, ldb, Cs[e], ct, ldc))
            return CUBLAS_STATUS_EXECUTION_FAILED;
    if (!check_outputs_disjoint(api, Cs, batch, m, n, ldc, ct)) return CUBLAS_STATUS_EXECUTION_FAILED;
    double t0 = emu::now_seconds();
    for (int e = 0; e < batch; e++)
        gemm_one(ta, tb, m, n, k, *(const float *)alpha, As[e], at, lda, Bs[e], bt, ldb, *(const float *)beta, Cs[e],
                 ct, ldc);
    emu::profile_add("batched GEMMs (m*n*k*batch as threads)", (uint64_t)m * n * k * batch, emu::now_seconds() - t0);
    return CUBLAS_STATUS_SUCCESS;
}
