// Runs the CUDA kernels of kernels/*.cu on the CPU, for checking their arithmetic and indexing
// where no GPU is (src/emulator.rs puts this before the program). Not a GPU model: each block
// runs alone, its threads as fibers on one OS thread, switched only at barriers
// (__syncthreads, __syncwarp, shuffles), so a kernel sees the semantics CUDA guarantees at
// those points and nothing of real concurrency (races, memory ordering and timing go
// unchecked).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <ucontext.h>
#include <utility>
#include <vector>

struct uint3 { unsigned x, y, z; };
typedef uint3 dim3;
struct float4 { float x, y, z, w; };
struct uint4 { unsigned x, y, z, w; };
struct uint2 { unsigned x, y; };

namespace emu {
enum State : unsigned char { RUN, AT_BLOCK, AT_WARP, DONE };
// A fiber starts on its own stack through ucontext (once per process: between blocks and
// launches it waits as DONE and runs the next body when set to RUN, so a block costs no
// makecontext and no signal-mask system calls) and switches with __builtin_setjmp /
// __builtin_longjmp, which save no signal mask: with swapcontext (a system call per switch)
// the golden forward suite took 250.5 s instead of 22.2 s.
struct Fiber {
    ucontext_t ctx;
    void* jb[5];
    bool started = false;
    std::vector<char> stack;
    uint3 tid;
    // Which of the two shuffle slots this thread writes next (see __shfl_from).
    unsigned shfl = 0;
};
inline void* sched_jb[5];
[[gnu::noinline]] inline void jump(void** jb) { __builtin_longjmp(jb, 1); }
inline std::vector<Fiber> fibers;
// The fibers' states apart from their (large) contexts, so the scheduler's scans stay in cache.
inline std::vector<State> states;
inline unsigned cur = 0;
inline uint3 tid_now, bid_now, bdim, gdim;
inline unsigned char* dyn_shared = nullptr;
// Per slot, warp and lane: 8 bytes for shuffles.
inline uint64_t lanes[2][32][32];

// Threads in the block being run.
inline unsigned threads = 0;

// Continues fiber j: its first start, or where it last waited.
[[noreturn]] inline void switch_to(unsigned j) {
    cur = j;
    if (!fibers[j].started) {
        fibers[j].started = true;
        setcontext(&fibers[j].ctx);
    }
    jump(fibers[j].jb);
    __builtin_unreachable();
}

// Leaves the current fiber (which has saved where it waits) for the next runnable lane of its
// warp; when there is none and the warp's barrier is complete (every live lane waits at it),
// opens it and goes to the warp's first lane: a warp's shuffles switch straight from lane to
// lane. Otherwise back to the scheduler (run_block), which opens the block's barriers.
[[noreturn]] inline void next() {
    unsigned w0 = cur & ~31u, w1 = w0 + 32u < threads ? w0 + 32u : threads;
    for (unsigned j = cur + 1; j < w1; j++)
        if (states[j] == RUN) switch_to(j);
    bool any = false, ready = true;
    for (unsigned j = w0; j < w1; j++) {
        if (states[j] == AT_WARP) any = true;
        else if (states[j] != DONE) ready = false;
    }
    if (ready && any) {
        unsigned first = w1;
        for (unsigned j = w0; j < w1; j++)
            if (states[j] == AT_WARP) {
                states[j] = RUN;
                if (first == w1) first = j;
            }
        switch_to(first);
    }
    jump(sched_jb);
    __builtin_unreachable();
}

inline void yield_as(State s) {
    states[cur] = s;
    if (__builtin_setjmp(fibers[cur].jb) == 0) next();
    tid_now = fibers[cur].tid;
}
inline unsigned lane() { return cur & 31u; }
inline unsigned warp() { return cur >> 5; }
}  // namespace emu

#define threadIdx emu::tid_now
#define blockIdx emu::bid_now
#define blockDim emu::bdim
#define gridDim emu::gdim
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

inline void __syncthreads() { emu::yield_as(emu::AT_BLOCK); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::yield_as(emu::AT_WARP); }

// A lane writes its value to its slot, waits for the warp, reads the source lane's. The slot
// alternates between two per shuffle: a lane writes a slot again only after the next
// shuffle's barrier, which every lane reaches after reading this one, so one barrier a
// shuffle suffices (the kernels' shuffles are full-warp, every lane takes each one).
template <class T>
T __shfl_from(T v, unsigned src) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    unsigned& slot = emu::fibers[emu::cur].shfl;
    uint64_t(&warp)[32] = emu::lanes[slot][emu::warp()];
    slot ^= 1u;
    warp[emu::lane()] = bits;
    __syncwarp();
    bits = warp[src & 31u];
    T r;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask, int = 32) { return __shfl_from(v, emu::lane() ^ (unsigned)mask); }
template <class T>
T __shfl_sync(unsigned, T v, int src, int = 32) { return __shfl_from(v, (unsigned)src); }

// One block at a time and no preemption between barriers: plain read-modify-writes are atomic.
template <class T, class U>
T atomicAdd(T* p, U v) { T old = *p; *p = old + (T)v; return old; }
template <class T, class U>
T atomicMax(T* p, U v) { T old = *p; if ((T)v > old) *p = (T)v; return old; }
template <class T, class U>
T atomicMin(T* p, U v) { T old = *p; if ((T)v < old) *p = (T)v; return old; }

inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline unsigned long long __float2ull_rn(float f) { return (unsigned long long)std::nearbyint(f); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
template <class A, class B>
auto min(A a, B b) { return a < b ? a : b; }
template <class A, class B>
auto max(A a, B b) { return a > b ? a : b; }
using std::exp;
using std::fabs;

// IEEE half <-> float, exact (the GPU's cvt.f32.f16 and cvt.rn.f16.f32).
inline float emu_f16_to_f32(unsigned short h) {
    unsigned s = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) { float v = (float)m * 5.9604644775390625e-8f; return s ? -v : v; }
    if (e == 31) return __uint_as_float(s | 0x7f800000u | (m << 13));
    return __uint_as_float(s | ((e + 112u) << 23) | (m << 13));
}
inline unsigned short emu_f32_to_f16(float f) {
    unsigned x = __float_as_uint(f), sign = (x >> 16) & 0x8000u, mag = x & 0x7fffffffu;
    if (mag >= 0x7f800000u) return sign | 0x7c00u | (mag > 0x7f800000u ? 0x200u : 0u);
    if (mag >= 0x477ff000u) return sign | 0x7c00u;  // 65520 and up round to infinity
    if (mag < 0x38800000u)  // below 2^-14: a subnormal half, m * 2^-24 (scaling is exact)
        return sign | (unsigned short)std::nearbyint(__uint_as_float(mag) * 16777216.0f);
    unsigned r = mag - 0x38000000u;  // the exponent rebiased from 127 to 15
    return sign | (unsigned short)((r + 0xfffu + ((r >> 13) & 1u)) >> 13);
}

namespace emu {
typedef void (*Body)(const uint64_t* args);
inline const uint64_t* body_args;
inline Body body;
// A fiber's life: the body of each block it is given, waiting as DONE in between.
inline void trampoline() {
    for (;;) {
        tid_now = fibers[cur].tid;
        body(body_args);
        yield_as(DONE);
    }
}

// Runs fiber i, and the lanes of its warp it hands on to, until they wait or end.
[[gnu::noinline]] inline void resume(unsigned i) {
    if (__builtin_setjmp(sched_jb) == 0) switch_to(i);
}

// Gives fiber i its own stack and a fresh start at `trampoline` (a fiber stopped inside a
// body, after a deadlock, must not resume it).
inline void make_fiber(unsigned i) {
    Fiber& f = fibers[i];
    if (f.stack.empty()) f.stack.resize(256 << 10);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, trampoline, 0);
    f.started = false;
}

// Runs the block's threads until every one has ended; false on a deadlock (threads left
// waiting at barriers the others never reach). Warp by warp: a warp runs until its lanes wait
// at the block's barrier or end (`next` opens its own barriers); the block's barrier opens
// when no thread runs or waits at a warp barrier.
inline bool run_block(unsigned n) {
    for (;;) {
        for (unsigned i = 0; i < n; i++)
            if (states[i] == RUN) resume(i);
        bool live = false, stuck = false;
        for (unsigned i = 0; i < n; i++) {
            live |= states[i] != DONE;
            stuck |= states[i] == AT_WARP;
        }
        if (!live) return true;
        if (stuck) return false;
        for (unsigned i = 0; i < n; i++)
            if (states[i] == AT_BLOCK) states[i] = RUN;
    }
}

// Runs `body` over the grid, a block at a time.
// Returns 0, or 2 for a block of no or more than 1024 threads, 3 for a deadlock.
inline int launch(Body b, const uint64_t* args, dim3 grid, dim3 block, unsigned shared) {
    unsigned n = block.x * block.y * block.z;
    if (n == 0 || n > 1024) { std::fprintf(stderr, "emu: block of %u threads\n", n); return 2; }
    gdim = grid;
    threads = n;
    bdim = block;
    body = b;
    body_args = args;
    std::vector<unsigned char> dyn(shared + 16);
    dyn_shared = dyn.data();
    if (fibers.size() < n) {
        // Room for the largest block at once: a fiber's context points into itself (glibc's
        // saved FP state), so fibers must never move.
        fibers.reserve(1024);
        unsigned had = (unsigned)fibers.size();
        fibers.resize(n);
        states.resize(n, DONE);
        for (unsigned i = had; i < n; i++) make_fiber(i);
    }
    for (unsigned i = 0; i < n; i++) fibers[i].tid = {i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                bid_now = {x, y, z};
                for (unsigned i = 0; i < n; i++) {
                    states[i] = RUN;
                    fibers[i].shfl = 0;
                }
                if (!run_block(n)) {
                    std::fprintf(stderr, "emu: deadlock in block (%u,%u,%u)\n", x, y, z);
                    for (unsigned i = 0; i < n; i++) {
                        make_fiber(i);
                        states[i] = DONE;
                    }
                    return 3;
                }
            }
    return 0;
}

// `launch` for callers on several threads: the kernels' __shared__ arrays are static, so
// launches run one at a time.
inline int launch_locked(Body b, const uint64_t* args, dim3 grid, dim3 block, unsigned shared) {
    static std::mutex one_at_a_time;
    std::lock_guard<std::mutex> held(one_at_a_time);
    return launch(b, args, grid, block, shared);
}

// The argument words of a launch as the kernel's parameter types (as the driver passes them:
// pointers and u64 whole, 32-bit values in the low half).
template <class T>
T arg(uint64_t w) {
    if constexpr (std::is_pointer_v<T>) return reinterpret_cast<T>(w);
    else if constexpr (std::is_same_v<T, float>) return __uint_as_float((unsigned)w);
    else return (T)w;
}
template <class... P, size_t... I>
void call_with(void (*f)(P...), const uint64_t* a, std::index_sequence<I...>) { f(arg<P>(a[I])...); }
template <class... P>
void call(void (*f)(P...), const uint64_t* a) { call_with(f, a, std::index_sequence_for<P...>{}); }
}  // namespace emu

// A launchable wrapper of kernel `name`: emu_<name>(args) calls it with the argument words.
#define EMU_KERNEL(name) \
    void emu_body_##name(const uint64_t* a) { emu::call(name, a); }
