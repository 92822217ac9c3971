// emu_mma.cpp: mma.sync and ldmatrix on the CPU (dev/cuda_on_cpu; see
// README.md and include/emu_mma.h). Each lane hands its operands to
// emu::warp_collective; once all 32 lanes are there, run_mma or run_ldmatrix
// gathers the whole matrices from the lanes' registers, computes, and
// scatters the results back, per the PTX ISA's fragment layouts:
//
//   lane = 4 * group + t  (group = lane / 4, t = lane % 4); a 32-bit register
//   holds two 16-bit values, the lower-numbered column in the low half.
//   mma.m16n8k16 A (16 x 16, row): a0 = A[group][2t..2t+1]     a1 = A[group+8][2t..2t+1]
//                                  a2 = A[group][2t+8..2t+9]   a3 = A[group+8][2t+8..2t+9]
//                B (16 x 8, col):  b0 = B[2t..2t+1][group]     b1 = B[2t+8..2t+9][group]
//                C, D (16 x 8, f32): c0, c1 = C[group][2t], C[group][2t+1]
//                                    c2, c3 = C[group+8][2t], C[group+8][2t+1]
//   ldmatrix.m8n8: lane 8m + i gives the address of row i of matrix m (16 bytes,
//   16-byte aligned, in shared memory); register m of lane l receives
//   M_m[group][2t..2t+1], or with .trans M_m[2t][group] and M_m[2t+1][group].
#include <stdio.h>

#include "emu_internal.h"
#include "emu_mma.h"

namespace {

struct MmaLane {
    emu::MmaType type;
    float *d;
    const uint32_t *a, *b;
};

// The 16-bit value in the low (half 0) or high (half 1) bits of reg, as a float.
float half_of(uint32_t reg, int half, emu::MmaType type) {
    unsigned short bits = (unsigned short)(reg >> (16 * half));
    if (type == emu::MMA_F16) return __half2float(__half{bits});
    return __bfloat162float(__nv_bfloat16{bits});
}

// D = A B + C over the whole warp. The products of 16-bit values are exact in
// fp32; the 16 of each sum are added in double and rounded once (a tensor
// core's internal order and rounding are not modelled).
void run_mma(void *const lane_data[32]) {
    float a[16][16], b[16][8], c[16][8];
    const MmaLane *lanes[32];
    for (int lane = 0; lane < 32; lane++) lanes[lane] = (const MmaLane *)lane_data[lane];
    emu::MmaType type = lanes[0]->type;
    for (int lane = 0; lane < 32; lane++) {
        const MmaLane &l = *lanes[lane];
        int group = lane / 4, t = lane % 4;
        if (l.type != type) emu::error("mma.sync: lanes of one warp with different types");
        for (int half = 0; half < 2; half++) {
            int col = 2 * t + half;
            a[group][col] = half_of(l.a[0], half, type);
            a[group + 8][col] = half_of(l.a[1], half, type);
            a[group][col + 8] = half_of(l.a[2], half, type);
            a[group + 8][col + 8] = half_of(l.a[3], half, type);
            b[col][group] = half_of(l.b[0], half, type);
            b[col + 8][group] = half_of(l.b[1], half, type);
            c[group][col] = l.d[half];
            c[group + 8][col] = l.d[2 + half];
        }
    }
    for (int lane = 0; lane < 32; lane++) {
        int group = lane / 4, t = lane % 4;
        for (int e = 0; e < 4; e++) {
            int row = group + 8 * (e / 2), col = 2 * t + e % 2;
            // d_rc = c_rc + sum_k a_rk b_kc
            double sum = c[row][col];
            for (int k = 0; k < 16; k++) sum += (double)a[row][k] * b[k][col];
            lanes[lane]->d[e] = (float)sum;
        }
    }
}

struct LdmatrixLane {
    uint32_t *r;
    int count;
    bool trans;
    const void *row;
    const char *file;
    int line;
};

void run_ldmatrix(void *const lane_data[32]) {
    const LdmatrixLane *lanes[32];
    for (int lane = 0; lane < 32; lane++) lanes[lane] = (const LdmatrixLane *)lane_data[lane];
    int count = lanes[0]->count;
    bool trans = lanes[0]->trans;
    unsigned short m[4][8][8];   // [matrix][row][column]
    for (int lane = 0; lane < 8 * count; lane++) {
        const LdmatrixLane &l = *lanes[lane];
        if (l.count != count || l.trans != trans)
            emu::error("%s:%d: ldmatrix: lanes of one warp with different shapes", l.file, l.line);
        if ((uintptr_t)l.row % 16 != 0 || !emu::shared_range_ok(l.row, 16)) {
            emu::error("%s:%d: ldmatrix: lane %d's row address %p is not a 16-byte aligned row of shared memory",
                       l.file, l.line, lane, l.row);
            memset(m[lane / 8][lane % 8], 0xff, sizeof m[0][0]);
            continue;
        }
        memcpy(m[lane / 8][lane % 8], l.row, sizeof m[0][0]);
    }
    for (int lane = 0; lane < 32; lane++) {
        int group = lane / 4, t = lane % 4;
        for (int i = 0; i < count; i++) {
            unsigned short low = trans ? m[i][2 * t][group] : m[i][group][2 * t];
            unsigned short high = trans ? m[i][2 * t + 1][group] : m[i][group][2 * t + 1];
            lanes[lane]->r[i] = (uint32_t)low | (uint32_t)high << 16;
        }
    }
}

}   // namespace

namespace emu {
void mma_m16n8k16(MmaType type, float d[4], const uint32_t a[4], const uint32_t b[2], const char *file, int line) {
    MmaLane lane = {type, d, a, b};
    warp_collective(run_mma, &lane, file, line);
}

void ldmatrix(uint32_t *r, int count, bool trans, const void *row, const char *file, int line) {
    LdmatrixLane lane = {r, count, trans, row, file, line};
    warp_collective(run_ldmatrix, &lane, file, line);
}

// A GPU faults on a misaligned 16-byte access ("misaligned address"); x86 would not.
void copy16(void *dst, const void *src, const char *file, int line) {
    if ((uintptr_t)dst % 16 != 0 || (uintptr_t)src % 16 != 0) {
        error("%s:%d: 16-byte copy from %p to %p: both must be 16-byte aligned", file, line, src, dst);
        return;
    }
    memcpy(dst, src, 16);
}
}   // namespace emu
