// emu_threads.cpp: kernels on the CPU (dev/cuda_on_cpu; see README.md). Each
// CUDA thread of a block is a fiber with its own stack; the blocks of a grid
// run one after another on the calling OS thread. __syncthreads and the warp
// shuffles are real barriers, with checks that the threads meeting at one
// could meet there on a GPU.
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "emu_internal.h"

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

using emu::error;

// ---- AddressSanitizer's fiber annotations (no-ops in a plain build) ---------
// ASan must be told about every switch of stacks, or it reports false stack
// errors in the fibers.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
static void asan_start_switch(void **fake_stack_save, const void *bottom, size_t size) {
    __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
}
static void asan_finish_switch(void *fake_stack, const void **bottom_old, size_t *size_old) {
    __sanitizer_finish_switch_fiber(fake_stack, bottom_old, size_old);
}
#else
static void asan_start_switch(void **, const void *, size_t) {}
static void asan_finish_switch(void *, const void **, size_t *) {}
#endif

// ---- fibers -----------------------------------------------------------------
// emu_switch(save, next) saves the callee-saved registers, MXCSR and the x87
// control word on the current stack, stores the stack pointer in *save, and
// resumes the stack whose saved pointer is `next` (x86-64 System V).
extern "C" void emu_switch(void **save, void *next);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size emu_switch, .-emu_switch
.section .note.GNU-stack,"",@progbits
.text
)");

enum FiberState { READY, AT_BARRIER, AT_WARP_OP, DONE };
struct Fiber {
    void *sp;           // the saved stack pointer while it is switched out
    char *stack;        // the lowest usable byte of its stack (a guard page below)
    void *fake_stack;   // AddressSanitizer's, while it is switched out
    FiberState state;
    uint3 idx;          // its threadIdx
    const char *file;   // the call it waits at (AT_BARRIER, AT_WARP_OP)
    int line;
    // the warp operation it waits at: its arguments, its value, what it receives
    unsigned mask;
    emu::WarpOp op;
    int arg, width;
    uint64_t value, result;
    // a warp-wide instruction (WARP_COLLECTIVE): what runs it, and this lane's operands
    void (*collective)(void *const lane_data[32]);
    void *data;
};
static const size_t k_stack_bytes = 256 * 1024;
static std::vector<Fiber> g_fibers;   // one per thread of the largest block so far, reused
static Fiber *g_cur;                  // the running fiber (NULL while the scheduler runs)
static void *g_sched_sp;              // the scheduler's saved stack pointer
static const void *g_sched_stack_bottom;   // the scheduler's stack and fake stack, for ASan
static size_t g_sched_stack_size;
static void *g_sched_fake_stack;
static void (*g_run_thread)(void *call);   // what every fiber of the launch runs
static void *g_call;
static const char *g_kernel = "(none)";    // the kernel running now, for messages

// From the running fiber back to the scheduler (exiting: for good).
static void to_scheduler(bool exiting) {
    Fiber *f = g_cur;
    asan_start_switch(exiting ? NULL : &f->fake_stack, g_sched_stack_bottom, g_sched_stack_size);
    emu_switch(&f->sp, g_sched_sp);
    asan_finish_switch(f->fake_stack, &g_sched_stack_bottom, &g_sched_stack_size);
}

// A fiber's first code: one CUDA thread of the kernel.
static void fiber_main(void) {
    asan_finish_switch(NULL, &g_sched_stack_bottom, &g_sched_stack_size);
    g_run_thread(g_call);
    g_cur->state = DONE;
    to_scheduler(true);
    abort();   // a finished fiber is never resumed
}

// Lays out f's stack as emu_switch leaves one, so that switching to it
// "returns" into fiber_main, with zeroed registers and the scheduler's
// floating-point control words.
static void fiber_start(Fiber *f) {
    char *top = f->stack + k_stack_bytes;
    void **slot = (void **)(((uintptr_t)top - 32) & ~(uintptr_t)15);   // the return address, 16-aligned
    slot[0] = (void *)&fiber_main;
    slot[1] = NULL;                                 // fiber_main's own return address: none
    for (int i = 1; i <= 6; i++) slot[-i] = NULL;   // rbp, rbx, r12..r15
    uint32_t mxcsr;
    uint16_t fcw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fcw));
    uint32_t *control = (uint32_t *)(slot - 7);
    control[0] = mxcsr;
    control[1] = fcw;
    f->sp = (void *)(slot - 7);
    f->state = READY;
    f->fake_stack = NULL;
}

// From the scheduler into fiber f, until it waits or exits.
static void resume(Fiber *f) {
    g_cur = f;
    threadIdx = f->idx;
    asan_start_switch(&g_sched_fake_stack, f->stack, k_stack_bytes);
    emu_switch(&g_sched_sp, f->sp);
    asan_finish_switch(g_sched_fake_stack, NULL, NULL);
    g_cur = NULL;
}

// At least n fibers, each with a 256 KiB stack above a guard page (an overflow faults).
static void ensure_fibers(size_t n) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    while (g_fibers.size() < n) {
        char *m = (char *)mmap(NULL, k_stack_bytes + page, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            perror("mmap fiber stack");
            abort();
        }
        mprotect(m, page, PROT_NONE);
        Fiber f;
        memset(&f, 0, sizeof f);
        f.stack = m + page;
        g_fibers.push_back(f);
    }
}

// ---- barriers and warp operations (called by the running fiber) ------------
namespace emu {
void syncthreads(const char *file, int line) {
    if (!g_cur) {
        error("__syncthreads() outside a kernel (%s:%d)", file, line);
        return;
    }
    g_cur->state = AT_BARRIER;
    g_cur->file = file;
    g_cur->line = line;
    g_stats.barriers++;
    to_scheduler(false);
}

uint64_t warp_op(unsigned mask, uint64_t bits, WarpOp op, int arg, int width, const char *file, int line) {
    if (!g_cur) {
        error("warp operation outside a kernel (%s:%d)", file, line);
        return bits;
    }
    if (width <= 0 || width > 32 || (width & (width - 1)))
        error("%s:%d: shuffle width %d is not a power of two up to 32", file, line, width);
    Fiber *f = g_cur;
    f->state = AT_WARP_OP;
    f->file = file;
    f->line = line;
    f->mask = mask;
    f->op = op;
    f->arg = arg;
    f->width = width;
    f->value = bits;
    g_stats.warp_ops++;
    to_scheduler(false);
    return f->result;
}

void warp_collective(void (*run)(void *const lane_data[32]), void *data, const char *file, int line) {
    if (!g_cur) {
        error("warp-wide instruction outside a kernel (%s:%d)", file, line);
        return;
    }
    g_cur->collective = run;
    g_cur->data = data;
    warp_op(0xffffffffu, 0, WARP_COLLECTIVE, 0, 32, file, line);
}
}   // namespace emu

// ---- releasing a warp operation (the scheduler) -----------------------------
static const char *site(const Fiber &f, char *buf, size_t n) {
    snprintf(buf, n, "%s:%d", f.file ? f.file : "?", f.line);
    return buf;
}

// Every lane of the warp starting at thread `first` waits at a warp operation,
// waits at __syncthreads or has exited. Reports what would hang or read
// garbage on a GPU, comparing each lane with ref, the first lane at a warp
// operation.
static void check_warp_op(int first, int n_threads, const Fiber &ref) {
    int last = std::min(first + 32, n_threads);
    char a[512], b[512];
    for (int lane = 0; lane < 32; lane++) {
        bool in_mask = (ref.mask >> lane) & 1u;
        if (first + lane >= last) {
            if (in_mask && ref.op != emu::SYNCWARP)
                error("kernel %s, block (%u,%u,%u): %s with mask 0x%08x names lane %d, which the block (%d threads) "
                      "does not have",
                      g_kernel, blockIdx.x, blockIdx.y, blockIdx.z, site(ref, a, sizeof a), ref.mask, lane, n_threads);
            continue;
        }
        const Fiber &f = g_fibers[first + lane];
        if (!in_mask) {
            if (f.state == AT_WARP_OP)
                error("kernel %s: lane %d is at a warp operation (%s) but not in the mask 0x%08x", g_kernel, lane,
                      site(f, a, sizeof a), ref.mask);
            continue;
        }
        if (f.state == DONE)
            error("kernel %s, block (%u,%u,%u), warp %d: %s with mask 0x%08x, but lane %d has exited", g_kernel,
                  blockIdx.x, blockIdx.y, blockIdx.z, first / 32, site(ref, a, sizeof a), ref.mask, lane);
        else if (f.state == AT_BARRIER)
            error("kernel %s, block (%u,%u,%u), warp %d: lane %d waits at __syncthreads (%s) while others shuffle "
                  "(%s): deadlock",
                  g_kernel, blockIdx.x, blockIdx.y, blockIdx.z, first / 32, lane, site(f, a, sizeof a),
                  site(ref, b, sizeof b));
        else if (f.state == AT_WARP_OP && (f.line != ref.line || strcmp(f.file, ref.file) != 0 || f.op != ref.op ||
                                           f.mask != ref.mask))
            error("kernel %s, block (%u,%u,%u), warp %d: lanes meet at different warp operations: %s and %s "
                  "(masks 0x%08x, 0x%08x)",
                  g_kernel, blockIdx.x, blockIdx.y, blockIdx.z, first / 32, site(f, a, sizeof a),
                  site(ref, b, sizeof b), f.mask, ref.mask);
    }
}

// The lane whose value `lane` receives from f's shuffle, as PTX's shfl.sync
// modes define it: itself when the source falls outside its width segment.
static int source_lane(const Fiber &f, int lane) {
    int w = f.width, base = lane & ~(w - 1);
    switch (f.op) {
    case emu::SHFL_IDX: return base + (f.arg & (w - 1));
    case emu::SHFL_UP: return lane - base >= f.arg ? lane - f.arg : lane;
    case emu::SHFL_DOWN: return lane - base + f.arg < w ? lane + f.arg : lane;
    case emu::SHFL_XOR: {
        int src = lane ^ f.arg;
        return src < base || src >= base + w ? lane : src;
    }
    default: return lane;
    }
}

// A warp-wide instruction: runs it once over the 32 lanes' operands, when all
// 32 are there (check_warp_op has reported any that is not).
static void run_collective(int first, int last) {
    std::vector<Fiber> &fs = g_fibers;
    void *lane_data[32];
    if (last - first != 32) return;
    for (int lane = 0; lane < 32; lane++) {
        if (fs[first + lane].state != AT_WARP_OP || fs[first + lane].op != emu::WARP_COLLECTIVE) return;
        lane_data[lane] = fs[first + lane].data;
    }
    fs[first].collective(lane_data);
}

// Checks the warp operation the warp starting at thread `first` waits at, hands
// each lane there the value of its source lane (or runs the warp-wide
// instruction), and lets them run on.
static void release_warp_op(int first, int n_threads) {
    std::vector<Fiber> &fs = g_fibers;
    int last = std::min(first + 32, n_threads);
    int ref = first;
    while (fs[ref].state != AT_WARP_OP) ref++;
    check_warp_op(first, n_threads, fs[ref]);
    if (fs[ref].op == emu::WARP_COLLECTIVE) {
        run_collective(first, last);
        for (int t = first; t < last; t++)
            if (fs[t].state == AT_WARP_OP) fs[t].state = READY;
        return;
    }
    char a[512];
    for (int t = first; t < last; t++) {
        Fiber &f = fs[t];
        if (f.state != AT_WARP_OP || f.op == emu::SYNCWARP) continue;
        int lane = t - first, src = source_lane(f, lane);
        if (src < 0 || src >= 32 || first + src >= last || fs[first + src].state != AT_WARP_OP) {
            error("kernel %s: lane %d reads lane %d, which is not taking part (%s)", g_kernel, lane, src,
                  site(f, a, sizeof a));
            f.result = f.value;
        } else {
            f.result = fs[first + src].value;
        }
    }
    for (int t = first; t < last; t++)
        if (fs[t].state == AT_WARP_OP) fs[t].state = READY;
}

// ---- blocks -----------------------------------------------------------------
static void start_fibers(int n_threads) {
    for (int t = 0; t < n_threads; t++) {
        Fiber &f = g_fibers[t];
        f.idx.x = t % blockDim.x;
        f.idx.y = (t / blockDim.x) % blockDim.y;
        f.idx.z = t / (blockDim.x * blockDim.y);
        f.file = NULL;
        f.line = 0;
        fiber_start(&f);
    }
}

// Runs the warp starting at thread `first`, its lanes one after another in
// lane_order, each until it waits or exits, and releases its warp operations
// as they complete, until every lane waits at __syncthreads or has exited.
static void run_warp(int first, int n_threads, const std::vector<int> &lane_order) {
    std::vector<Fiber> &fs = g_fibers;
    int last = std::min(first + 32, n_threads);
    for (;;) {
        for (int lane : lane_order)
            if (first + lane < n_threads && fs[first + lane].state == READY) resume(&fs[first + lane]);
        bool at_warp_op = false;
        for (int t = first; t < last; t++) at_warp_op |= fs[t].state == AT_WARP_OP;
        if (!at_warp_op) return;
        release_warp_op(first, n_threads);
    }
}

// Once every warp has run, each thread waits at __syncthreads or has exited.
// Checks that the waiting ones wait at the same call and lets them run on;
// returns false when none waits (the block has finished).
static bool release_barrier(int n_threads) {
    std::vector<Fiber> &fs = g_fibers;
    int waiting = 0, exited = 0;
    const Fiber *ref = NULL;
    char a[512], b[512];
    for (int t = 0; t < n_threads; t++) {
        if (fs[t].state != AT_BARRIER) {
            exited++;
            continue;
        }
        if (!ref) ref = &fs[t];
        waiting++;
        if (fs[t].line != ref->line || strcmp(fs[t].file, ref->file) != 0)
            error("kernel %s, block (%u,%u,%u): threads %d and %d wait at different __syncthreads: %s and %s",
                  g_kernel, blockIdx.x, blockIdx.y, blockIdx.z, (int)(ref - fs.data()), t, site(*ref, a, sizeof a),
                  site(fs[t], b, sizeof b));
    }
    if (waiting == 0) return false;
    if (exited > 0) {   // the GPU waits for the live threads only; the CUDA spec calls it undefined
        char key[1024];
        snprintf(key, sizeof key, "kernel %s: __syncthreads at %s with exited threads of the block", g_kernel,
                 site(*ref, a, sizeof a));
        emu::warn_once(key, "%s (block (%u,%u,%u): %d exited, %d waiting)", key, blockIdx.x, blockIdx.y, blockIdx.z,
                       exited, waiting);
    }
    for (int t = 0; t < n_threads; t++)
        if (fs[t].state == AT_BARRIER) fs[t].state = READY;
    return true;
}

// Warp by warp: each warp runs until all its lanes wait at __syncthreads or
// have exited, then the next one; then the barrier opens and it starts over.
// So one warp gets as far ahead of the others as the barriers allow (the skew
// that exposes a missing __syncthreads), and the lanes of a warp keep no
// lockstep (as under Volta's independent thread scheduling).
static void run_block(int n_threads, const std::vector<int> &warp_order, const std::vector<int> &lane_order) {
    start_fibers(n_threads);
    do {
        for (int w : warp_order) run_warp(32 * w, n_threads, lane_order);
    } while (release_barrier(n_threads));
}

// ---- grids ------------------------------------------------------------------
// EMU_ORDER: 0 blocks, warps and lanes in order; 1 all reversed; 2 random (EMU_SEED).
static int g_order;
static std::mt19937_64 g_rng;
// The linker's bounds of the section that holds every __shared__ variable.
extern "C" char __start_emu_shared[] __attribute__((weak));
extern "C" char __stop_emu_shared[] __attribute__((weak));

// Fills shared memory with 0xFF bytes (NaN), so that a read of shared memory
// that no thread of the block wrote shows. Volatile 8-byte stores, not memset:
// ASan checks memset's range, and it knows no bounds in a named section.
// Every __shared__ variable transform.py's calls have named (start -> bytes),
// and those of each kernel (by name): the ones outside the section (in
// function templates) are filled before each block of a kernel that uses them.
static std::map<uintptr_t, size_t> &g_shared_vars = *new std::map<uintptr_t, size_t>;
static std::map<std::string, std::map<uintptr_t, size_t>> &g_kernel_shared =
    *new std::map<std::string, std::map<uintptr_t, size_t>>;

static void poison_shared(void) {
    for (auto &var : g_kernel_shared[g_kernel]) memset((void *)var.first, 0xff, var.second);
    if (!__start_emu_shared) return;
    volatile uint64_t *p = (volatile uint64_t *)(((uintptr_t)__start_emu_shared + 7) & ~(uintptr_t)7);
    volatile uint64_t *end = (volatile uint64_t *)((uintptr_t)__stop_emu_shared & ~(uintptr_t)7);
    for (; p < end; p++) *p = ~0ull;
}

namespace emu {
void shared_declared(void *p, size_t bytes) {
    std::map<uintptr_t, size_t> &kernel_vars = g_kernel_shared[g_kernel];
    if (kernel_vars.count((uintptr_t)p)) return;
    // new to this kernel: its first block, nobody of which has written it yet
    kernel_vars[(uintptr_t)p] = bytes;
    g_shared_vars[(uintptr_t)p] = bytes;
    memset(p, 0xff, bytes);
}

bool shared_range_ok(const void *p, size_t bytes) {
    uintptr_t start = (uintptr_t)p;
    if (__start_emu_shared && start >= (uintptr_t)__start_emu_shared && start + bytes <= (uintptr_t)__stop_emu_shared)
        return true;
    auto var = g_shared_vars.upper_bound(start);   // the first variable starting after p
    if (var == g_shared_vars.begin()) return false;
    --var;
    return start + bytes <= var->first + var->second;
}
}   // namespace emu

static void read_settings(void) {
    g_order = emu::env_int("EMU_ORDER", 0);
    if (g_order < 0 || g_order > 2) error("EMU_ORDER=%d: it must be 0, 1 or 2", g_order);
    g_rng.seed((uint64_t)emu::env_int("EMU_SEED", 1));
}

// CUDA's limits (compute capability 9.0): a launch past them fails with
// cudaErrorInvalidConfiguration, as on a GPU.
static bool launch_config_ok(dim3 grid, dim3 block) {
    unsigned long long n_threads = (unsigned long long)block.x * block.y * block.z;
    return block.x && block.y && block.z && grid.x && grid.y && grid.z && n_threads <= 1024 && block.x <= 1024 &&
           block.y <= 1024 && block.z <= 64 && grid.x <= 2147483647u && grid.y <= 65535 && grid.z <= 65535;
}

// Runs every block of the grid, in EMU_ORDER's order of blocks, warps and lanes.
static void run_blocks(dim3 grid, int n_threads) {
    std::vector<int> warp_order((n_threads + 31) / 32), lane_order(32);
    std::iota(warp_order.begin(), warp_order.end(), 0);
    std::iota(lane_order.begin(), lane_order.end(), 0);
    unsigned long long n_blocks = (unsigned long long)grid.x * grid.y * grid.z;
    std::vector<unsigned long long> block_order;
    if (g_order == 2) {
        block_order.resize(n_blocks);
        std::iota(block_order.begin(), block_order.end(), 0ull);
        std::shuffle(block_order.begin(), block_order.end(), g_rng);
    }
    if (g_order == 1) {
        std::reverse(warp_order.begin(), warp_order.end());
        std::reverse(lane_order.begin(), lane_order.end());
    }
    for (unsigned long long i = 0; i < n_blocks; i++) {
        unsigned long long b = g_order == 0 ? i : g_order == 1 ? n_blocks - 1 - i : block_order[i];
        blockIdx.x = (unsigned)(b % grid.x);
        blockIdx.y = (unsigned)((b / grid.x) % grid.y);
        blockIdx.z = (unsigned)(b / ((unsigned long long)grid.x * grid.y));
        if (g_order == 2) {
            std::shuffle(warp_order.begin(), warp_order.end(), g_rng);
            std::shuffle(lane_order.begin(), lane_order.end(), g_rng);
        }
        poison_shared();
        run_block(n_threads, warp_order, lane_order);
        emu::g_stats.blocks++;
        emu::g_stats.threads += n_threads;
    }
}

namespace emu {
void run_grid(const char *kernel, dim3 grid, dim3 block, void (*run_thread)(void *call), void *call) {
    static bool settings_read = false;
    if (!settings_read) {
        settings_read = true;
        read_settings();
    }
    if (g_cur) {
        error("kernel %s launched from inside kernel %s", kernel, g_kernel);
        return;
    }
    if (!launch_config_ok(grid, block)) {
        fprintf(stderr, "EMU: kernel %s: invalid launch configuration grid (%u,%u,%u) block (%u,%u,%u)\n", kernel,
                grid.x, grid.y, grid.z, block.x, block.y, block.z);
        record_error(cudaErrorInvalidConfiguration);
        return;
    }
    g_kernel = kernel;
    g_stats.launches++;
    gridDim = grid;
    blockDim = block;
    g_run_thread = run_thread;
    g_call = call;
    int n_threads = (int)(block.x * block.y * block.z);
    ensure_fibers((size_t)n_threads);
    double t0 = now_seconds();
    run_blocks(grid, n_threads);
    profile_add(kernel, (unsigned long long)grid.x * grid.y * grid.z * n_threads, now_seconds() - t0);
    g_kernel = "(none)";
}
}   // namespace emu
