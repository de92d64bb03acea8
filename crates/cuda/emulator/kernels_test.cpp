// The CUDA kernels run on the CPU (cuda_emu.h) against plain loops written from the layouts that
// kernels/common.cuh documents: each case prints its largest error and the program exits 1 if
// any exceeds its tolerance. Built and run by tests/emulated_kernels.rs, which puts the runtime
// and the program (kernels/*.cu in the backend's order) before this file.
#include <random>
#include <string>

namespace check {
int failures = 0;

void report(const std::string& what, double err, double tol) {
    bool ok = err <= tol;
    std::printf("%-44s max error %.3g (tolerance %.3g)%s\n", what.c_str(), err, tol, ok ? "" : "  FAILED");
    if (!ok) failures++;
}

std::mt19937 rng(7);
float uniform(float a, float b) { return std::uniform_real_distribution<float>(a, b)(rng); }

// Runs a launch; a launch the emulator refuses or that deadlocks counts as a failure.
void run(const char* what, emu::Body b, const uint64_t* args, dim3 grid, dim3 block) {
    if (int e = emu::launch(b, args, grid, block, 0)) {
        std::printf("%s: the emulator stopped it (%d)  FAILED\n", what, e);
        failures++;
    }
}

// A [M, K] matrix in format dt: its device bytes and its values as the kernel must read them.
struct Matrix { std::vector<uint8_t> bytes; std::vector<float> values; };

Matrix make(int dt, unsigned M, unsigned K) {
    Matrix m;
    m.values.resize((size_t)M * K);
    if (dt == DT_F32 || dt == DT_BF16 || dt == DT_F16) {
        size_t elem = dt == DT_F32 ? 4 : 2;
        m.bytes.resize((size_t)M * K * elem);
        for (size_t i = 0; i < m.values.size(); i++) {
            float v = uniform(-1, 1);
            if (dt == DT_F32) { std::memcpy(&m.bytes[i * 4], &v, 4); m.values[i] = v; }
            else if (dt == DT_BF16) { uint16_t h = (uint16_t)f32_to_bf16_bits(v); std::memcpy(&m.bytes[i * 2], &h, 2); m.values[i] = __uint_as_float((unsigned)h << 16); }
            else { uint16_t h = (uint16_t)f32_to_f16_bits(v); std::memcpy(&m.bytes[i * 2], &h, 2); m.values[i] = f16_bits_to_f32(h); }
        }
        return m;
    }
    // q8_0 / q4 (K a multiple of 32): codes plane, then one 16-bit scale or header per block.
    unsigned nb = K / 32;
    size_t blocks = (size_t)M * nb, code_bytes = dt == DT_Q8_0 ? 32 : 16;
    m.bytes.assign(blocks * code_bytes + blocks * 2, 0);
    for (size_t b = 0; b < blocks; b++) {
        size_t r = b / nb, c0 = (b % nb) * 32;
        if (dt == DT_Q8_0) {
            uint16_t hs = (uint16_t)f32_to_f16_bits(uniform(0.001f, 0.02f));
            float d = f16_bits_to_f32(hs);
            std::memcpy(&m.bytes[blocks * 32 + b * 2], &hs, 2);
            for (int i = 0; i < 32; i++) {
                int q = (int)uniform(-127, 127);
                m.bytes[b * 32 + i] = (uint8_t)(int8_t)q;
                m.values[r * K + c0 + i] = d * (float)q;
            }
        } else {
            unsigned k = 128 + (unsigned)uniform(0, 32), c = (unsigned)uniform(0, 255);
            uint16_t header = (uint16_t)(k | (c << 8));
            std::memcpy(&m.bytes[blocks * 16 + b * 2], &header, 2);
            float d = __uint_as_float((((k >> 3) + 107u) << 23) | ((k & 7u) << 20)), off = (float)c / 16.0f;
            for (int i = 0; i < 32; i++) {
                unsigned q = (unsigned)uniform(0, 16) & 15u;
                m.bytes[b * 16 + i / 2] |= (uint8_t)(i % 2 ? q << 4 : q);
                m.values[r * K + c0 + i] = d * ((float)q - off);
            }
        }
    }
    return m;
}

uint64_t ptr(const void* p) { return (uint64_t)(uintptr_t)p; }
}  // namespace check

// The emulator's own rules, with kernels written for them: shuffles read the source lane's
// value of the same shuffle (xor and indexed, in every warp, several in a row, a partial last
// warp), shared memory written before a __syncthreads is seen after it.
__global__ void emu_shuffles(const float* in, float* out, unsigned n) {
    __shared__ float s[1024];
    unsigned t = threadIdx.x, lane = t & 31u;
    float v = in[t];
    float a = __shfl_xor_sync(0xffffffffu, v, 1);
    float b = __shfl_sync(0xffffffffu, v, 31 - lane);
    float c = __shfl_xor_sync(0xffffffffu, a + b, 16);
    s[t] = v;
    __syncthreads();
    out[t] = a + 10.0f * b + 100.0f * c + 1000.0f * s[n - 1 - t];
}
// Lane 0 waits at the block's barrier, its warp at a warp barrier: neither can open.
__global__ void emu_deadlock(int* out) {
    if (threadIdx.x == 0) __syncthreads();
    else __syncwarp();
    out[threadIdx.x] = 1;
}
EMU_KERNEL(emu_shuffles)
EMU_KERNEL(emu_deadlock)

EMU_KERNEL(matmul_f32)
EMU_KERNEL(matmul_bf16)
EMU_KERNEL(matmul_f16)
EMU_KERNEL(matmul_q8_0)
EMU_KERNEL(matmul_q4)
EMU_KERNEL(rms_norm)
EMU_KERNEL(add)
EMU_KERNEL(swiglu)
EMU_KERNEL(kv_store)
EMU_KERNEL(attention)

int main() {
    using namespace check;
    // The emulator: 96 threads (three full warps) and 80 (a partial last warp).
    for (unsigned n : {96u, 80u}) {
        std::vector<float> in(n), out(n, -1.0f);
        for (unsigned t = 0; t < n; t++) in[t] = (float)t;
        uint64_t args[3] = {ptr(in.data()), ptr(out.data()), n};
        run("emulator shuffles", emu_body_emu_shuffles, args, {2, 1, 1}, {n, 1, 1});
        auto at = [&](unsigned t) { return t < n ? in[t] : 0.0f; };
        double err = 0;
        for (unsigned t = 0; t < n; t++) {
            unsigned w = t & ~31u, l = t & 31u;
            if (w + 32 > n) continue;  // lanes of a partial warp read lanes that do not exist
            auto ab = [&](unsigned u) { return at((u ^ 1u)) + at(w + 31 - (u & 31u)); };
            float want = at(t ^ 1u) + 10.0f * at(w + 31 - l) + 100.0f * ab(t ^ 16u) + 1000.0f * in[n - 1 - t];
            err = std::max(err, (double)std::fabs(want - out[t]));
        }
        report("emulator shuffles and barrier, " + std::to_string(n) + " threads", err, 0);
    }
    {
        std::vector<int> out(64, 0);
        uint64_t args[1] = {ptr(out.data())};
        int e = emu::launch(emu_body_emu_deadlock, args, {1, 1, 1}, {64, 1, 1}, 0);
        report("emulator reports a deadlock (3)", e == 3 ? 0 : 1, 0);
    }
    // matmul: out[n, M] = x[n, K] W^T, grid (ceil(n / MM_TOK), ceil(M / 32)), 256 threads.
    emu::Body bodies[5] = {emu_body_matmul_f32, emu_body_matmul_bf16, emu_body_matmul_f16, emu_body_matmul_q8_0, emu_body_matmul_q4};
    const char* names[5] = {"f32", "bf16", "f16", "q8_0", "q4"};
    for (int dt = 0; dt < 5; dt++) {
        for (unsigned K : {96u, 70u}) {
            if (dt >= DT_Q8_0 && K % 32) continue;
            for (unsigned n : {1u, 5u, 19u}) {
                unsigned M = 70;
                Matrix w = make(dt, M, K);
                std::vector<float> x((size_t)n * K), out((size_t)n * M, -1.0f);
                for (auto& v : x) v = uniform(-1, 1);
                uint64_t args[6] = {ptr(x.data()), ptr(w.bytes.data()), ptr(out.data()), n, K, M};
                run(names[dt], bodies[dt], args, {(n + MM_TOK - 1) / MM_TOK, (M + 31) / 32, 1}, {256, 1, 1});
                double err = 0;
                for (unsigned t = 0; t < n; t++)
                    for (unsigned m = 0; m < M; m++) {
                        double s = 0;
                        for (unsigned k = 0; k < K; k++) s += (double)x[t * K + k] * w.values[(size_t)m * K + k];
                        err = std::max(err, std::fabs(s - out[(size_t)t * M + m]));
                    }
                report("matmul_" + std::string(names[dt]) + " n=" + std::to_string(n) + " K=" + std::to_string(K) + " M=70", err, 1e-4);
            }
        }
    }
    // rms_norm: grid (rows), 256 threads.
    for (unsigned d : {64u, 300u}) {
        unsigned rows = 3;
        std::vector<float> x(rows * d), w(d), out(rows * d);
        for (auto& v : x) v = uniform(-2, 2);
        for (auto& v : w) v = uniform(0.5, 1.5);
        float eps = 1e-6f;
        uint64_t args[5] = {ptr(x.data()), ptr(w.data()), ptr(out.data()), d, __float_as_uint(eps)};
        run("rms_norm", emu_body_rms_norm, args, {rows, 1, 1}, {256, 1, 1});
        double err = 0;
        for (unsigned r = 0; r < rows; r++) {
            double ss = 0;
            for (unsigned j = 0; j < d; j++) ss += (double)x[r * d + j] * x[r * d + j];
            double inv = 1.0 / std::sqrt(ss / d + eps);
            for (unsigned j = 0; j < d; j++) err = std::max(err, std::fabs(w[j] * x[r * d + j] * inv - out[r * d + j]));
        }
        report("rms_norm d=" + std::to_string(d), err, 1e-5);
    }
    // add and swiglu: grid1(count), 256 threads.
    {
        unsigned count = 1000;
        std::vector<float> a(count), b(count), o1(count), o2(count);
        for (auto& v : a) v = uniform(-4, 4);
        for (auto& v : b) v = uniform(-4, 4);
        uint64_t args[4] = {ptr(a.data()), ptr(b.data()), ptr(o1.data()), count};
        run("add", emu_body_add, args, {(count + 255) / 256, 1, 1}, {256, 1, 1});
        uint64_t args2[4] = {ptr(a.data()), ptr(b.data()), ptr(o2.data()), count};
        run("swiglu", emu_body_swiglu, args2, {(count + 255) / 256, 1, 1}, {256, 1, 1});
        double e1 = 0, e2 = 0;
        for (unsigned i = 0; i < count; i++) {
            e1 = std::max(e1, (double)std::fabs(a[i] + b[i] - o1[i]));
            double g = a[i];
            e2 = std::max(e2, std::fabs(g / (1 + std::exp(-g)) * b[i] - o2[i]));
        }
        report("add count=1000", e1, 0);
        report("swiglu count=1000", e2, 1e-5);
    }
    // kv_store then attention: a window of n rows at `start` over a cache that holds `start`
    // earlier positions, block-causal with block length B (visible(s) = min(start + n,
    // (s / B + 1) * B)); grids (n) x 256 and (n, nq) x ATT_WARPS * 32.
    for (unsigned d : {40u, 128u}) {
        const unsigned nq = 4, nkv = 2, start = 7, n = 5, B = 4, cap = 16;
        unsigned width = (nq + 2 * nkv) * d, kvw = nkv * d;
        std::vector<float> qkv(n * width), kc(cap * kvw), vc(cap * kvw), out(n * nq * d, -1.0f);
        for (auto& v : qkv) v = uniform(-1, 1);
        for (unsigned i = 0; i < start * kvw; i++) { kc[i] = uniform(-1, 1); vc[i] = uniform(-1, 1); }
        std::vector<uint32_t> params(P_WORDS, 0);
        params[P_START] = start;
        params[P_BLOCK] = B;
        uint64_t store[7] = {ptr(qkv.data()), ptr(kc.data()), ptr(vc.data()), ptr(params.data()), nq, nkv, d};
        run("kv_store", emu_body_kv_store, store, {n, 1, 1}, {256, 1, 1});
        uint64_t att[9] = {ptr(qkv.data()), ptr(kc.data()), ptr(vc.data()), ptr(out.data()), ptr(params.data()), n, nq, nkv, d};
        run("attention", emu_body_attention, att, {n, nq, 1}, {ATT_WARPS * 32, 1, 1});
        double err = 0;
        for (unsigned r = 0; r < n; r++)
            for (unsigned h = 0; h < nq; h++) {
                unsigned s = start + r, visible = std::min(start + n, (s / B + 1) * B), kh = h / (nq / nkv);
                const float* q = &qkv[r * width + h * d];
                // The window's own K/V come from the QKV rows (what kv_store must have written).
                auto key = [&](unsigned t, bool value) -> const float* {
                    if (t >= start) return &qkv[(t - start) * width + nq * d + (value ? kvw : 0) + kh * d];
                    return &(value ? vc : kc)[t * kvw + kh * d];
                };
                std::vector<double> score(visible);
                double mx = -1e300, total = 0;
                for (unsigned t = 0; t < visible; t++) {
                    double dot = 0;
                    for (unsigned j = 0; j < d; j++) dot += (double)q[j] * key(t, false)[j];
                    score[t] = dot / std::sqrt((double)d);
                    mx = std::max(mx, score[t]);
                }
                for (unsigned t = 0; t < visible; t++) total += std::exp(score[t] - mx);
                for (unsigned j = 0; j < d; j++) {
                    double acc = 0;
                    for (unsigned t = 0; t < visible; t++) acc += std::exp(score[t] - mx) / total * key(t, true)[j];
                    err = std::max(err, std::fabs(acc - out[(r * nq + h) * d + j]));
                }
            }
        report("kv_store+attention d=" + std::to_string(d) + " (4 q / 2 kv heads, B=4)", err, 1e-5);
    }
    std::printf("%d failed\n", failures);
    return failures ? 1 : 0;
}
