// emu_mma.h: the tensor-core instructions of ops/mma.h (and its copy16) on the CPU
// (dev/cuda_on_cpu; see README.md), with the same names and arguments as the
// inline-PTX versions there (plus the caller's file and line). Each is
// warp-wide, as on a GPU: a lane waits at it until all 32 lanes of its warp
// are there, then one CPU function reads every lane's registers (or shared
// memory rows) and writes every lane's results, following the fragment
// layouts of the PTX ISA (runtime/emu_mma.cpp).
#pragma once
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "emu_core.h"

namespace emu {
enum MmaType { MMA_BF16, MMA_F16 };
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 {d}, {a}, {b}, {d} for the calling lane.
void mma_m16n8k16(MmaType type, float d[4], const uint32_t a[4], const uint32_t b[2], const char *file, int line);
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16: `count` registers into r; row is the
// shared-memory address of the matrix row this lane names (lanes 8m..8m+7 name matrix m's rows).
void ldmatrix(uint32_t *r, int count, bool trans, const void *row, const char *file, int line);
// A 16-byte vector copy (one uint4 load and store on a GPU): both addresses must be 16-byte aligned.
void copy16(void *dst, const void *src, const char *file, int line);
}   // namespace emu

static inline void copy16(void *dst, const void *src, const char *file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
    emu::copy16(dst, src, file, line);
}

template <typename T>
static inline void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    static_assert(std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value, "mma: bf16 or fp16");
    emu::mma_m16n8k16(std::is_same<T, __half>::value ? emu::MMA_F16 : emu::MMA_BF16, d, a, b, file, line);
}

static inline void ldmatrix_x1(uint32_t r[1], const void *row, const char *file = __builtin_FILE(),
                               int line = __builtin_LINE()) {
    emu::ldmatrix(r, 1, false, row, file, line);
}
static inline void ldmatrix_x2(uint32_t r[2], const void *row, const char *file = __builtin_FILE(),
                               int line = __builtin_LINE()) {
    emu::ldmatrix(r, 2, false, row, file, line);
}
static inline void ldmatrix_x4(uint32_t r[4], const void *row, const char *file = __builtin_FILE(),
                               int line = __builtin_LINE()) {
    emu::ldmatrix(r, 4, false, row, file, line);
}
static inline void ldmatrix_x1_trans(uint32_t r[1], const void *row, const char *file = __builtin_FILE(),
                                     int line = __builtin_LINE()) {
    emu::ldmatrix(r, 1, true, row, file, line);
}
static inline void ldmatrix_x2_trans(uint32_t r[2], const void *row, const char *file = __builtin_FILE(),
                                     int line = __builtin_LINE()) {
    emu::ldmatrix(r, 2, true, row, file, line);
}
static inline void ldmatrix_x4_trans(uint32_t r[4], const void *row, const char *file = __builtin_FILE(),
                                     int line = __builtin_LINE()) {
    emu::ldmatrix(r, 4, true, row, file, line);
}
