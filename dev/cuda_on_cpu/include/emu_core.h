// emu_core.h: the CUDA C++ language for g++ (dev/cuda_on_cpu; see README.md).
// Kernels are ordinary functions. Each CUDA thread of a block runs in its own
// fiber (runtime/emu_threads.cpp), so __syncthreads() and the warp shuffles are
// real barriers: a thread that reaches one waits there for the others.
//
// Only what qlora.c uses is here (plus the rest of the shuffle family): any
// other CUDA feature fails to compile, on purpose, until it is added with its
// checks.
#pragma once
#include <math.h>   // device math (expf, fmaxf, ...) needs no include under nvcc
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- keywords ----
#define __global__
#define __device__
#define __host__
#define __constant__
// Every __shared__ variable lives in one linker section, which the scheduler
// fills with 0xFF bytes (NaN) before each block; blocks run one at a time.
// (g++ ignores the section in function templates: transform.py adds an
// emu::shared_declared call after each __shared__ declaration, and the
// scheduler fills the variables it names too.)
#define __shared__ static __attribute__((section("emu_shared")))
// __shared__ __align__(16) T tile[...]: what ldmatrix's 16-byte rows need.
#define __align__(n) __attribute__((aligned(n)))
// Set here only: ops/mma.h then takes the tensor-core instructions from
// emu_mma.h (warp-wide CPU versions) instead of its inline PTX.
#define CUDA_ON_CPU 1

// ---- built-in variables, set by the scheduler for the running thread ----
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
static const int warpSize = 32;

// ---- barriers and warp shuffles ----
// Each takes its caller's file and line (default arguments), so that the
// scheduler can check that the threads meeting there are at the same call.
namespace emu {
void syncthreads(const char *file, int line);
enum WarpOp { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR, SYNCWARP, WARP_COLLECTIVE };
// Waits until every lane of `mask` is at this call, then returns the `bits`
// of the lane that `op` and `arg` select (as PTX's shfl.sync does).
uint64_t warp_op(unsigned mask, uint64_t bits, WarpOp op, int arg, int width, const char *file, int line);

// A warp-wide instruction (ldmatrix, mma.sync; their .aligned form needs all
// 32 lanes of the warp at the same call): waits until every lane is at this
// call, then calls run(lane_data) once, lane_data[lane] being the `data` that
// lane passed, and lets the lanes go on.
void warp_collective(void (*run)(void *const lane_data[32]), void *data, const char *file, int line);
// A __shared__ variable at p of `bytes` bytes (transform.py's call after its
// declaration): the first time, it is filled with 0xFF bytes, and from then on
// before every block, as the section is; ldmatrix accepts addresses in it.
void shared_declared(void *p, size_t bytes);

template <class T> uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    return b;
}
template <class T> T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof v);
    return v;
}
}   // namespace emu

static inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    emu::syncthreads(file, line);
}
static inline void __syncwarp(unsigned mask = 0xffffffffu, const char *file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    emu::warp_op(mask, 0, emu::SYNCWARP, 0, 32, file, line);
}
template <class T>
static inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32, const char *file = __builtin_FILE(),
                            int line = __builtin_LINE()) {
    return emu::from_bits<T>(emu::warp_op(mask, emu::to_bits(v), emu::SHFL_IDX, src_lane, width, file, line));
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const char *file = __builtin_FILE(),
                               int line = __builtin_LINE()) {
    return emu::from_bits<T>(emu::warp_op(mask, emu::to_bits(v), emu::SHFL_UP, (int)delta, width, file, line));
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                                 const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu::from_bits<T>(emu::warp_op(mask, emu::to_bits(v), emu::SHFL_DOWN, (int)delta, width, file, line));
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char *file = __builtin_FILE(),
                                int line = __builtin_LINE()) {
    return emu::from_bits<T>(emu::warp_op(mask, emu::to_bits(v), emu::SHFL_XOR, lane_mask, width, file, line));
}

// ---- device min and max ----
// CUDA's overloads, all of them, so that a call resolves (or is ambiguous) as
// under nvcc rather than converting its arguments silently.
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }

// ---- kernel launches ----
// transform.py rewrites k<<<grid, block>>>(args) as
// emu::Launcher(grid, block).bind(k, "k")(args). A launch with dynamic shared
// memory or a stream (<<<g, b, s, st>>>) does not compile: none is emulated.
namespace emu {
// Runs run_thread(call) once for every thread of every block of the grid (emu_threads.cpp).
void run_grid(const char *kernel, dim3 grid, dim3 block, void (*run_thread)(void *call), void *call);
// Reports a kernel argument that is a pointer (not NULL) outside every device allocation.
void check_pointer_arg(const char *kernel, int index, const void *p);

template <class... P> struct Bound {
    typedef std::tuple<typename std::decay<P>::type...> Params;
    // A kernel with its arguments converted to its parameter types.
    struct Call {
        void (*kernel)(P...);
        Params params;
        static void run_thread(void *self) {
            Call *call = (Call *)self;
            Params own = call->params;   // each CUDA thread gets its own copy, as on a GPU
            std::apply(call->kernel, own);
        }
    };
    void (*kernel)(P...);
    const char *name;
    dim3 grid, block;

    template <class... A> void operator()(A &&...args) const {
        static_assert(sizeof...(A) == sizeof...(P), "kernel called with the wrong number of arguments");
        Call call{kernel, Params(std::forward<A>(args)...)};
        int index = 0;
        std::apply([&](const auto &...param) { (check_arg(index++, param), ...); }, call.params);
        run_grid(name, grid, block, &Call::run_thread, &call);
    }
    template <class T> void check_arg(int index, const T &param) const {
        if constexpr (std::is_pointer<T>::value) check_pointer_arg(name, index, (const void *)param);
    }
};

struct Launcher {
    dim3 grid, block;
    Launcher(dim3 g, dim3 b) : grid(g), block(b) {}
    template <class... P> Bound<P...> bind(void (*kernel)(P...), const char *name) const {
        return Bound<P...>{kernel, name, grid, block};
    }
};
}   // namespace emu
