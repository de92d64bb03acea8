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
enum State { RUN, AT_BLOCK, AT_WARP, DONE };
// A fiber starts on its own stack through ucontext (once per block) and then switches with
// __builtin_setjmp/__builtin_longjmp, which save no signal mask: with swapcontext (a system
// call per switch) the golden forward suite took 250.5 s instead of 22.2 s.
struct Fiber {
    ucontext_t ctx;
    void* jb[5];
    bool started = false;
    std::vector<char> stack;
    State state = DONE;
    uint3 tid;
};
inline void* sched_jb[5];
[[gnu::noinline]] inline void jump(void** jb) { __builtin_longjmp(jb, 1); }
inline std::vector<Fiber> fibers;
inline unsigned cur = 0;
inline uint3 tid_now, bid_now, bdim, gdim;
inline unsigned char* dyn_shared = nullptr;
// Per warp: one 8-byte slot per lane for shuffles.
inline uint64_t lanes[32][32];

inline void yield_as(State s) {
    fibers[cur].state = s;
    if (__builtin_setjmp(fibers[cur].jb) == 0) jump(sched_jb);
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

template <class T>
T __shfl_from(T v, unsigned src) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    emu::lanes[emu::warp()][emu::lane()] = bits;
    __syncwarp();
    bits = emu::lanes[emu::warp()][src & 31u];
    __syncwarp();
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
inline void trampoline() {
    tid_now = fibers[cur].tid;
    body(body_args);
    fibers[cur].state = DONE;
    jump(sched_jb);
}

// Runs fiber i until it next waits or ends.
[[gnu::noinline]] inline void resume(unsigned i) {
    cur = i;
    if (__builtin_setjmp(sched_jb) == 0) {
        if (!fibers[i].started) {
            fibers[i].started = true;
            setcontext(&fibers[i].ctx);
        }
        jump(fibers[i].jb);
    }
}

// Runs `body` over the grid: each block's threads as fibers until all are done; a barrier
// opens when every live thread of the block (or of the warp) waits at it.
// Returns 0, or 2 for a block of no or more than 1024 threads, 3 for a deadlock (threads left
// waiting at barriers the others never reach).
inline int launch(Body b, const uint64_t* args, dim3 grid, dim3 block, unsigned shared) {
    unsigned n = block.x * block.y * block.z;
    if (n == 0 || n > 1024) { std::fprintf(stderr, "emu: block of %u threads\n", n); return 2; }
    gdim = grid;
    bdim = block;
    body = b;
    body_args = args;
    std::vector<unsigned char> dyn(shared + 16);
    dyn_shared = dyn.data();
    fibers.resize(n);
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                bid_now = {x, y, z};
                for (unsigned i = 0; i < n; i++) {
                    Fiber& f = fibers[i];
                    if (f.stack.empty()) f.stack.resize(256 << 10);
                    f.tid = {i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack.data();
                    f.ctx.uc_stack.ss_size = f.stack.size();
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, trampoline, 0);
                    f.started = false;
                    f.state = RUN;
                }
                for (;;) {
                    bool ran = false;
                    for (unsigned i = 0; i < n; i++) {
                        if (fibers[i].state != RUN) continue;
                        resume(i);
                        ran = true;
                    }
                    if (ran) continue;
                    // Nobody runnable: open the barriers whose threads have all arrived.
                    bool live = false, opened = false;
                    for (unsigned i = 0; i < n; i++) live |= fibers[i].state != DONE;
                    if (!live) break;
                    bool block_ready = true;
                    for (unsigned i = 0; i < n; i++)
                        if (fibers[i].state == RUN || fibers[i].state == AT_WARP) block_ready = false;
                    for (unsigned w = 0; w * 32 < n; w++) {
                        bool ready = true, any = false;
                        for (unsigned i = w * 32; i < n && i < w * 32 + 32; i++) {
                            if (fibers[i].state == AT_WARP) any = true;
                            else if (fibers[i].state != DONE) ready = false;
                        }
                        if (ready && any) {
                            for (unsigned i = w * 32; i < n && i < w * 32 + 32; i++)
                                if (fibers[i].state == AT_WARP) fibers[i].state = RUN;
                            opened = true;
                        }
                    }
                    if (!opened && block_ready) {
                        for (unsigned i = 0; i < n; i++)
                            if (fibers[i].state == AT_BLOCK) fibers[i].state = RUN;
                        opened = true;
                    }
                    if (!opened) {
                        std::fprintf(stderr, "emu: deadlock in block (%u,%u,%u)\n", x, y, z);
                        return 3;
                    }
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
