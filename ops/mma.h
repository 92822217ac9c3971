// ops/mma.h: the warp-level tensor-core instructions the tensor-core kernels
// use (ops/flash_attention_tc.cu), as small inline-PTX wrappers: mma.sync
// m16n8k16 (16-bit in, fp32 accumulate) and ldmatrix (8 x 8 tiles of 16-bit
// values from shared memory into registers). On the CPU emulation of CUDA
// (dev/cuda_on_cpu, which defines CUDA_ON_CPU) the same functions come from
// its emu_mma.h, warp-wide CPU versions of the same layouts. Also copy16, the
// 16-byte copy that fills the tiles ldmatrix reads (and makes nf4.cu's wide
// stores), and pack_pair, two values in one register.
//
// Every lane of the warp must make the same call (the instructions are
// .aligned). A 32-bit register holds two 16-bit values, the lower-numbered
// column in the low half. With lane = 4 * group + t (PTX ISA, "Matrix
// fragments for mma.m16n8k16 with floating point type"):
//   A (16 x 16, row-major):  a[0] = A[group][2t, 2t+1]     a[1] = A[group+8][2t, 2t+1]
//                            a[2] = A[group][2t+8, 2t+9]   a[3] = A[group+8][2t+8, 2t+9]
//   B (16 x 8, k down):      b[0] = B[2t, 2t+1][group]     b[1] = B[2t+8, 2t+9][group]
//   C, D (16 x 8, fp32):     d[0], d[1] = D[group][2t, 2t+1]   d[2], d[3] = D[group+8][2t, 2t+1]
// ldmatrix .xN loads N 8 x 8 matrices; lane 8m + i gives the shared-memory
// address of row i of matrix m (16 bytes, 16-byte aligned); register m of
// lane (group, t) receives M_m[group][2t, 2t+1], or with .trans
// M_m[2t][group] and M_m[2t+1][group].
//
// m16n8k16 with bf16 or f16 needs sm_80; ldmatrix sm_75. The kernels that use
// mma_m16n8k16 run on sm_80 and newer only (attention_pick_kind_gpu); compiled
// for sm_75 (the fat build), its body is a trap.
#pragma once
#include <stdint.h>
#include <string.h>
#include "ops/gpu.h"

#ifdef __CUDACC__
#ifdef CUDA_ON_CPU
#include <emu_mma.h>
#else
#include <type_traits>

// d += A B for one 16 x 8 x 16 tile: A and B of type T (bf16 or fp16), d fp32.
template <typename T>
__device__ inline void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();
#else
    if constexpr (std::is_same<T, bf16>::value)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                     "{%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                     "{%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// ldmatrix .x1, .x2, .x4, and the same with .trans; row: this lane's row address (shared memory).
__device__ inline void ldmatrix_x1(uint32_t r[1], const void *row) {
    unsigned address = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(address));
}
__device__ inline void ldmatrix_x2(uint32_t r[2], const void *row) {
    unsigned address = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(address));
}
__device__ inline void ldmatrix_x4(uint32_t r[4], const void *row) {
    unsigned address = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}
__device__ inline void ldmatrix_x1_trans(uint32_t r[1], const void *row) {
    unsigned address = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(address));
}
__device__ inline void ldmatrix_x2_trans(uint32_t r[2], const void *row) {
    unsigned address = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(address));
}
__device__ inline void ldmatrix_x4_trans(uint32_t r[4], const void *row) {
    unsigned address = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

// 16 bytes from src to dst in one load and one store (8 16-bit values: how the
// tensor-core kernels fill their shared-memory tiles); both 16-byte aligned.
__device__ inline void copy16(void *dst, const void *src) { *(uint4 *)dst = *(const uint4 *)src; }
#endif   // CUDA_ON_CPU

// Two values rounded to T and packed in one register, lo in the low half (an A or B fragment's pair).
template <typename T>
__device__ inline uint32_t pack_pair(float lo, float hi) {
    T lo16 = from_float<T>(lo), hi16 = from_float<T>(hi);
    unsigned short lo_bits, hi_bits;
    memcpy(&lo_bits, &lo16, 2);
    memcpy(&hi_bits, &hi16, 2);
    return (uint32_t)lo_bits | (uint32_t)hi_bits << 16;
}
#endif   // __CUDACC__
