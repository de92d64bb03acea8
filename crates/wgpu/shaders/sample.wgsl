// One logits row to one (token, confidence, three best ids) on the device, the definition being
// `unmask_core::decode::sampler` (SPEC §3): one workgroup per predicted row. Every row also
// gets `ranked` (`sampler::ranked`): the three allowed ids with the largest logits, which the
// editing decoders need (the best id other than DELETE/SPLIT, or other than the current one).
// - `greedy`: argmax over the allowed ids (ties to the lower id); confidence = its probability
//   under the softmax of the whole row.
// - `seeded`: temperature, top-k (keep values >= the k-th largest), top-p (the most likely ids
//   until their mass reaches p, ties at the cut kept), then an inverse-CDF draw in id order with
//   the counter-based uniform of `decode::rng`. Sorting is replaced by bisection over the
//   order-preserving integer image of the values, so the kept sets are the reference's.

struct SampleParams {
    vocab: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> p: SampleParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
// [row] -> (token, bits of the confidence, ranked[0], ranked[1], ranked[2]): SAMPLE_WORDS.
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
const SAMPLE_WORDS: u32 = 5u;
const NONE: u32 = 0xffffffffu;
var<workgroup> rf: array<f32, WG>;
var<workgroup> ru: array<u32, WG>;

fn neg_inf() -> f32 {
    // Through a variable: Chrome's WGSL compiler (Tint) rejects -inf as a constant expression.
    var bits = 0xff800000u;
    return bitcast<f32>(bits);
}

// `q`: the row's sequence (its mask id and vocabulary).
fn allowed(q: Seq, i: u32) -> bool {
    return i != q.mask_id && i < q.valid_vocab;
}

fn is_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// Order-preserving map of f32 to u32 (the order of `f32::total_cmp`) and back.
fn key_of(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b ^ 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn value_of(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k ^ 0x80000000u, (k & 0x80000000u) != 0u));
}

// Workgroup reductions: every invocation passes its value and gets the result (uniformly).
fn sum_f(li: u32, v: f32) -> f32 {
    rf[li] = v;
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (li < h) {
            rf[li] += rf[li + h];
        }
    }
    let r = workgroupUniformLoad(&rf[0]);
    workgroupBarrier();
    return r;
}

fn max_f(li: u32, v: f32) -> f32 {
    rf[li] = v;
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (li < h) {
            rf[li] = max(rf[li], rf[li + h]);
        }
    }
    let r = workgroupUniformLoad(&rf[0]);
    workgroupBarrier();
    return r;
}

fn sum_u(li: u32, v: u32) -> u32 {
    ru[li] = v;
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (li < h) {
            ru[li] += ru[li + h];
        }
    }
    let r = workgroupUniformLoad(&ru[0]);
    workgroupBarrier();
    return r;
}

fn min_u(li: u32, v: u32) -> u32 {
    ru[li] = v;
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (li < h) {
            ru[li] = min(ru[li], ru[li + h]);
        }
    }
    let r = workgroupUniformLoad(&ru[0]);
    workgroupBarrier();
    return r;
}

fn max_u(li: u32, v: u32) -> u32 {
    ru[li] = v;
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (li < h) {
            ru[li] = max(ru[li], ru[li + h]);
        }
    }
    let r = workgroupUniformLoad(&ru[0]);
    workgroupBarrier();
    return r;
}

// Argmax over allowed ids other than `ex0` and `ex1`: the best (value, id) pair, ties to the
// lower id; NONE if there is none.
fn argmax_except(li: u32, q: Seq, base: u32, ex0: u32, ex1: u32) -> u32 {
    var bv = neg_inf();
    var bi = NONE;
    for (var i = li; i < p.vocab; i += WG) {
        let v = logits[base + i];
        if (allowed(q, i) && i != ex0 && i != ex1 && (bi == NONE || v > bv)) {
            bv = v;
            bi = i;
        }
    }
    rf[li] = bv;
    ru[li] = bi;
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (li < h) {
            let ov = rf[li + h];
            let oi = ru[li + h];
            if (pair_wins(ov, oi, rf[li], ru[li])) {
                rf[li] = ov;
                ru[li] = oi;
            }
        }
    }
    let r = workgroupUniformLoad(&ru[0]);
    workgroupBarrier();
    return r;
}

fn argmax_allowed(li: u32, q: Seq, base: u32) -> u32 {
    return argmax_except(li, q, base, NONE, NONE);
}

// The token, its confidence, and the row's three best allowed ids (`best` is the first).
fn write(li: u32, q: Seq, row: u32, token: u32, confidence: f32, best: u32) {
    let base = row * p.vocab;
    var second = NONE;
    var third = NONE;
    if (best != NONE) {
        second = argmax_except(li, q, base, best, NONE);
    }
    if (second != NONE) {
        third = argmax_except(li, q, base, best, second);
    }
    if (li == 0u) {
        let o = SAMPLE_WORDS * row;
        out[o] = token;
        out[o + 1u] = bitcast<u32>(confidence);
        out[o + 2u] = best;
        out[o + 3u] = second;
        out[o + 4u] = third;
    }
}

fn greedy_row(li: u32, row: u32) {
    let q = st.seq[seq_of_out(row)];
    let base = row * p.vocab;
    var mx = neg_inf();
    for (var i = li; i < p.vocab; i += WG) {
        mx = max(mx, logits[base + i]);
    }
    let max_all = max_f(li, mx);
    let best = argmax_allowed(li, q, base);
    var s = 0.0;
    for (var i = li; i < p.vocab; i += WG) {
        s += exp(logits[base + i] - max_all);
    }
    let total = sum_f(li, s);
    if (best == NONE) {
        write(li, q, row, 0u, 0.0, best);
    } else {
        write(li, q, row, best, exp(logits[base + best] - max_all) / total, best);
    }
}

@compute @workgroup_size(256)
fn sample(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    greedy_row(li, wg.x);
}

// The counter-based uniform of `decode::rng` (32-bit integer operations only).
fn mix32(x0: u32) -> u32 {
    var x = x0;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

fn uniform01(q: Seq, position: u32) -> f32 {
    var h = mix32(q.rng_step ^ 0x9e3779b9u);
    h = mix32(position ^ h);
    h = mix32(q.seed_hi ^ h);
    h = mix32(q.seed_lo ^ h);
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

// Per-row state of the seeded sampler, uniform across the workgroup.
struct Filter {
    // The row's sequence (its sampling parameters).
    q: Seq,
    base: u32,
    // Keep scaled values >= kth (top-k) ...
    kth: f32,
    // ... then probabilities >= last (top-p).
    last: f32,
    max: f32,
    total: f32,
    // Mass kept by top-p (1 when off).
    total2: f32,
}

fn scaled(f: Filter, i: u32) -> f32 {
    return logits[f.base + i] * f.q.inv_temp;
}

fn is_candidate(f: Filter, i: u32) -> bool {
    return allowed(f.q, i) && is_finite(logits[f.base + i]);
}

fn kept_k(f: Filter, i: u32) -> bool {
    return is_candidate(f, i) && scaled(f, i) >= f.kth;
}

// Probability after top-k (before top-p renormalisation).
fn prob(f: Filter, i: u32) -> f32 {
    return exp(scaled(f, i) - f.max) / f.total;
}

fn kept(f: Filter, i: u32) -> bool {
    return kept_k(f, i) && prob(f, i) >= f.last;
}

fn seeded_row(li: u32, row: u32) {
    var f: Filter;
    f.q = st.seq[seq_of_out(row)];
    f.base = row * p.vocab;
    f.kth = neg_inf();
    f.last = 0.0;
    f.total2 = 1.0;
    var c = 0u;
    for (var i = li; i < p.vocab; i += WG) {
        c += select(0u, 1u, is_candidate(f, i));
    }
    let count = sum_u(li, c);
    if (count == 0u) {
        greedy_row(li, row);
        return;
    }
    // top-k: the k-th largest key is the largest threshold with at least k keys at or above it.
    if (f.q.top_k > 0u && f.q.top_k < count) {
        var lo = 0u;
        var hi = NONE;
        for (var it = 0u; it < 32u; it++) {
            if (lo < hi) {
                let mid = lo + (hi - lo) / 2u + 1u;
                var n = 0u;
                for (var i = li; i < p.vocab; i += WG) {
                    n += select(0u, 1u, is_candidate(f, i) && key_of(scaled(f, i)) >= mid);
                }
                if (sum_u(li, n) >= f.q.top_k) {
                    lo = mid;
                } else {
                    hi = mid - 1u;
                }
            }
        }
        f.kth = value_of(lo);
    }
    var mx = neg_inf();
    for (var i = li; i < p.vocab; i += WG) {
        if (kept_k(f, i)) {
            mx = max(mx, scaled(f, i));
        }
    }
    f.max = max_f(li, mx);
    var s = 0.0;
    for (var i = li; i < p.vocab; i += WG) {
        if (kept_k(f, i)) {
            s += exp(scaled(f, i) - f.max);
        }
    }
    f.total = sum_f(li, s);
    // top-p: the cut is the largest key whose mass at or above it reaches p; ties at the cut
    // (equal probabilities) are kept. If the whole mass stays below p, everything is kept.
    if (f.q.top_p < 1.0) {
        var lo = 0u;
        var hi = NONE;
        var m0 = 0.0;
        for (var i = li; i < p.vocab; i += WG) {
            if (kept_k(f, i)) {
                m0 += prob(f, i);
            }
        }
        if (sum_f(li, m0) >= f.q.top_p) {
            for (var it = 0u; it < 32u; it++) {
                if (lo < hi) {
                    let mid = lo + (hi - lo) / 2u + 1u;
                    var m = 0.0;
                    for (var i = li; i < p.vocab; i += WG) {
                        if (kept_k(f, i) && key_of(scaled(f, i)) >= mid) {
                            m += prob(f, i);
                        }
                    }
                    if (sum_f(li, m) >= f.q.top_p) {
                        lo = mid;
                    } else {
                        hi = mid - 1u;
                    }
                }
            }
            f.last = exp(value_of(lo) - f.max) / f.total;
            var s2 = 0.0;
            for (var i = li; i < p.vocab; i += WG) {
                if (kept(f, i)) {
                    s2 += prob(f, i);
                }
            }
            f.total2 = sum_f(li, s2);
        }
    }
    // Inverse CDF in id order: invocation li owns ids li*span .. (li+1)*span.
    let span = (p.vocab + WG - 1u) / WG;
    let lo_id = li * span;
    let hi_id = min(p.vocab, lo_id + span);
    var local = 0.0;
    for (var i = lo_id; i < hi_id; i++) {
        if (kept(f, i)) {
            local += prob(f, i) / f.total2;
        }
    }
    rf[li] = local;
    workgroupBarrier();
    var before = 0.0;
    for (var j = 0u; j < li; j++) {
        before += rf[j];
    }
    workgroupBarrier();
    // The row's position: its sequence's predicted rows are the last of its rows.
    let u = uniform01(f.q, f.q.start + f.q.rows - f.q.out_rows + row - f.q.out0);
    var found = NONE;
    var last_id = 0u;
    var cum = before;
    for (var i = lo_id; i < hi_id; i++) {
        if (kept(f, i)) {
            last_id = i;
            cum += prob(f, i) / f.total2;
            if (found == NONE && u < cum) {
                found = i;
            }
        }
    }
    var pick = min_u(li, found);
    if (pick == NONE) {
        pick = max_u(li, last_id);
    }
    write(li, f.q, row, pick, prob(f, pick) / f.total2, argmax_allowed(li, f.q, f.base));
}

@compute @workgroup_size(256)
fn sample_seeded(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    // A pass samples with this kernel when any of its sequences has a temperature; the
    // greedy ones among them are sampled as `sample` does.
    if (st.seq[seq_of_out(wg.x)].temperature > 0.0) {
        seeded_row(li, wg.x);
    } else {
        greedy_row(li, wg.x);
    }
}
