//! The reference kernels: plain f32 over slices, one function per graph op. They are the
//! definition other backends are tested against, so they favour clarity over speed.

use super::fast::Kernels;
use super::matrix::Matrix;
use super::parallel::map_chunks;
use crate::error::{Error, Result};
use crate::graph::{BlockRouting, Heads, Routing};

/// Eight partial sums combined as `Lanes::hsum` combines its lanes:
/// `((a0+a4)+(a1+a5)) + ((a2+a6)+(a3+a7))`. The reference's sums all end this way, so that
/// SIMD lanes can hold their partial sums.
#[inline]
pub fn lanes_total<T: Copy + std::ops::Add<Output = T>>(a: [T; 8]) -> T {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight lanes so the compiler vectorises; the order differs from a serial sum only by rounding.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = lanes_total(acc);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `Σ x` in [`dot`]'s order: eight partial sums by index mod 8, [`lanes_total`], then the
/// tail in order.
#[inline]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut s = lanes_total(acc);
    for &v in tail {
        s += v;
    }
    s
}

/// `out[n, w.rows] = x[n, w.cols] @ w^T`.
pub fn matmul(x: &[f32], w: &Matrix, out: &mut [f32]) {
    let (k, m) = (w.cols, w.rows);
    let n = x.len() / k;
    by_output_columns(n, m, n * m * k, 1, out, |rows| {
        let mut row = vec![0f32; k];
        let mut part = vec![0f32; n * rows.len()];
        for (j, r) in rows.clone().enumerate() {
            w.row_into(r, &mut row);
            for t in 0..n {
                part[t * rows.len() + j] = dot(&x[t * k..(t + 1) * k], &row);
            }
        }
        part
    });
}

/// Fills `out[n, m]` by ranges of its columns computed over the pool: `part(cols)` returns the
/// `[n, cols.len()]` values of those columns. Ranges start at multiples of `align` (a kernel's
/// row block); `work` is the cost estimate `map_chunks` takes.
pub fn by_output_columns(
    n: usize,
    m: usize,
    work: usize,
    align: usize,
    out: &mut [f32],
    part: impl Fn(std::ops::Range<usize>) -> Vec<f32> + Sync,
) {
    let parts = map_chunks(m.div_ceil(align), work, |units| {
        let cols = units.start * align..(units.end * align).min(m);
        let values = part(cols.clone());
        (cols, values)
    });
    for (cols, values) in parts {
        let w = cols.len();
        for t in 0..n {
            out[t * m + cols.start..t * m + cols.end].copy_from_slice(&values[t * w..(t + 1) * w]);
        }
    }
}

/// Fills `out[n, width]` by ranges of its rows computed over the pool: `part(rows)` returns
/// those rows' `[rows.len(), width]` values (the row-wise twin of [`by_output_columns`]).
pub fn by_rows(
    n: usize,
    width: usize,
    work: usize,
    out: &mut [f32],
    part: impl Fn(std::ops::Range<usize>) -> Vec<f32> + Sync,
) {
    let parts = map_chunks(n, work, |rows| (rows.clone(), part(rows)));
    for (rows, values) in parts {
        out[rows.start * width..rows.end * width].copy_from_slice(&values);
    }
}

/// RMS norm over consecutive groups of `weight.len()` values.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (xi, oi) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        rms_norm_group(xi, weight, eps, oi);
    }
}

#[inline]
fn rms_norm_group(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * r);
    }
}

/// `theta^(-2j/rd)` computed in f32, as the reference does.
pub fn rope_inv_freq(rot_dim: usize, theta: f32) -> Vec<f32> {
    (0..rot_dim / 2)
        .map(|j| 1.0 / theta.powf((2 * j) as f32 / rot_dim as f32))
        .collect()
}

/// NeoX rotation of the first `inv_freq.len() * 2` dims of one head at `pos`.
pub fn rope_head(head: &mut [f32], inv_freq: &[f32], pos: usize) {
    let half = inv_freq.len();
    for (j, &f) in inv_freq.iter().enumerate() {
        let a = pos as f32 * f;
        let (s, c) = a.sin_cos();
        let (x0, x1) = (head[j], head[j + half]);
        head[j] = x0 * c - x1 * s;
        head[j + half] = x1 * c + x0 * s;
    }
}

/// Per-head QK norm then RoPE on a fused `[n, (q + 2kv) * dim]` buffer, rows at `start + i`.
pub fn qk_norm_rope(
    qkv: &mut [f32],
    heads: Heads,
    q_norm: Option<&[f32]>,
    k_norm: Option<&[f32]>,
    eps: f32,
    inv_freq: &[f32],
    start: usize,
) {
    let d = heads.dim;
    let width = (heads.q + 2 * heads.kv) * d;
    let mut tmp = vec![0f32; d];
    for (i, row) in qkv.chunks_exact_mut(width).enumerate() {
        for h in 0..heads.q + heads.kv {
            let head = &mut row[h * d..(h + 1) * d];
            let norm = if h < heads.q { q_norm } else { k_norm };
            if let Some(w) = norm {
                rms_norm_group(head, w, eps, &mut tmp);
                head.copy_from_slice(&tmp);
            }
            rope_head(head, inv_freq, start + i);
        }
    }
}

/// Block-causal attention for `n` queries at positions `start..start+n` over keys `0..start+n`
/// (key t visible to query s iff t/B <= s/B). `k_cache`/`v_cache` are `[>= start+n, kv*dim]` and
/// already hold the window's keys and values.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    qkv: &[f32],
    heads: Heads,
    k_cache: &[f32],
    v_cache: &[f32],
    start: usize,
    block: usize,
    out: &mut [f32],
) {
    let d = heads.dim;
    let width = (heads.q + 2 * heads.kv) * d;
    let kvw = heads.kv * d;
    let n = qkv.len() / width;
    let group = heads.q / heads.kv;
    let scale = 1.0 / (d as f32).sqrt();
    let end = start + n;
    let work = n * heads.q * end * d;
    by_rows(n, heads.q * d, work, out, |rows| {
        let mut part = vec![0f32; rows.len() * heads.q * d];
        let mut scores = vec![0f32; end];
        for (ri, i) in rows.clone().enumerate() {
            let s = start + i;
            let visible = end.min((s / block + 1) * block);
            for h in 0..heads.q {
                let q = &qkv[i * width + h * d..i * width + (h + 1) * d];
                let kvh = h / group;
                let mut max = f32::NEG_INFINITY;
                for t in 0..visible {
                    let k = &k_cache[t * kvw + kvh * d..t * kvw + (kvh + 1) * d];
                    scores[t] = dot(q, k) * scale;
                    max = max.max(scores[t]);
                }
                for sc in &mut scores[..visible] {
                    *sc = exp(*sc - max);
                }
                let sum = sum(&scores[..visible]);
                let o = &mut part[(ri * heads.q + h) * d..(ri * heads.q + h + 1) * d];
                for t in 0..visible {
                    let p = scores[t] / sum;
                    let v = &v_cache[t * kvw + kvh * d..t * kvw + (kvh + 1) * d];
                    for (oj, &vj) in o.iter_mut().zip(v) {
                        *oj += p * vj;
                    }
                }
            }
        }
        part
    });
}

/// `e^x` for the attention softmax: Cephes' `expf` (range reduction by ln 2 in two parts, a
/// degree-5 polynomial, the power of two built in the exponent bits), within 2 ulp of the
/// exact value; 0 below -87 (the arguments are `score - max <= 0`). Written as plain f32
/// operations, each one IEEE-rounded, so that the SIMD softmax (`fast/attention.rs`, lane by
/// lane the same operations) is bit for bit this function.
#[inline]
pub fn exp(x: f32) -> f32 {
    let x = if x > EXP_HI { EXP_HI } else { x };
    if x < EXP_LO {
        return 0.0;
    }
    // n = round(x / ln 2), to nearest even, by the 1.5 * 2^23 trick.
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = EXP_P[0];
    for &c in &EXP_P[1..] {
        p = p * r + c;
    }
    let e = p * (r * r) + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `Σ e^(v - max)` over a logits row in f64, the sampler's softmax denominator: each term
/// [`exp`] (f32) widened, summed in eight partial sums by index mod 8 (`fast/softmax.rs` holds
/// them in SIMD lanes), [`lanes_total`], then the tail of fewer than eight in order.
pub fn exp_sum(row: &[f32], max: f32) -> f64 {
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    let mut acc = [0f64; 8];
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += exp(v - max) as f64;
        }
    }
    exp_sum_finish(acc, tail, max)
}

/// The end of [`exp_sum`]: its eight partial sums combined, then the tail's terms added.
pub fn exp_sum_finish(acc: [f64; 8], tail: &[f32], max: f32) -> f64 {
    let mut s = lanes_total(acc);
    for &v in tail {
        s += exp(v - max) as f64;
    }
    s
}

/// The range of [`exp`]: above `EXP_HI` it is clamped (2^127 at most, finite), below `EXP_LO` 0.
pub const EXP_HI: f32 = 88.0;
pub const EXP_LO: f32 = -87.0;
pub const ROUND: f32 = 12582912.0;
pub const LN2_HI: f32 = 0.693_359_4;
pub const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' `expf` polynomial, highest power first.
pub const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Group-limited top-k routing of one token (SPEC §2). Returns (expert ids, weights), ids in
/// descending order of biased score.
pub fn route(logits: &[f32], bias: Option<&[f32]>, r: &Routing) -> (Vec<u32>, Vec<f32>) {
    let e = r.num_experts;
    let s: Vec<f32> = logits.iter().map(|&v| sigmoid(v)).collect();
    let sb: Vec<f32> = match bias {
        Some(b) => s.iter().zip(b).map(|(x, y)| x + y).collect(),
        None => s.clone(),
    };
    let gs = e / r.n_group;
    let top_n = 2.min(gs);
    let group_score: Vec<f32> = (0..r.n_group)
        .map(|g| top_values(&sb[g * gs..(g + 1) * gs], top_n).iter().sum())
        .collect();
    let kept = top_indices(&group_score, r.topk_group);
    let mut masked = vec![f32::NEG_INFINITY; e];
    for g in kept {
        masked[g * gs..(g + 1) * gs].copy_from_slice(&sb[g * gs..(g + 1) * gs]);
    }
    let chosen = top_indices(&masked, r.top_k);
    weigh(&s, chosen, r.scaling)
}

/// LLaDA2.2 block routing (SPEC §3c) of `logits` (`[n, num_experts]` rows at absolute positions
/// `start..start + n`): per 32-aligned routing block, the `capacity` experts with the largest
/// block maximum of the biased score; per row, the top-k of those by its own biased score.
/// Weights come from the unbiased scores. A step must start on a routing-block boundary.
pub fn route_blocks(
    logits: &[f32],
    bias: Option<&[f32]>,
    r: &Routing,
    b: BlockRouting,
    start: usize,
) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
    if !start.is_multiple_of(b.size) {
        return Err(Error::Invalid(format!(
            "block routing: a step starts at position {start}, not on a routing block of {}",
            b.size
        )));
    }
    let e = r.num_experts;
    let s: Vec<f32> = logits.iter().map(|&v| sigmoid(v)).collect();
    let biased: Vec<f32> = match bias {
        Some(bias) => s
            .chunks_exact(e)
            .flat_map(|row| row.iter().zip(bias).map(|(x, y)| x + y))
            .collect(),
        None => s.clone(),
    };
    let mut out = Vec::with_capacity(logits.len() / e.max(1));
    for (block_s, block_r) in s.chunks(b.size * e).zip(biased.chunks(b.size * e)) {
        let mut g = vec![f32::NEG_INFINITY; e];
        for row in block_r.chunks_exact(e) {
            for (gj, &v) in g.iter_mut().zip(row) {
                *gj = gj.max(v);
            }
        }
        let mut allowed = vec![false; e];
        for j in top_indices(&g, b.capacity) {
            allowed[j] = true;
        }
        for (row_s, row_r) in block_s.chunks_exact(e).zip(block_r.chunks_exact(e)) {
            let masked: Vec<f32> = row_r
                .iter()
                .zip(&allowed)
                .map(|(&v, &a)| if a { v } else { f32::NEG_INFINITY })
                .collect();
            let chosen = top_indices(&masked, r.top_k);
            out.push(weigh(row_s, chosen, r.scaling));
        }
    }
    Ok(out)
}

/// Expert ids and their weights `s_k / (sum of s + 1e-20) * scaling` (unbiased scores).
fn weigh(s: &[f32], chosen: Vec<usize>, scaling: f32) -> (Vec<u32>, Vec<f32>) {
    let sum: f32 = chosen.iter().map(|&i| s[i]).sum();
    let weights = chosen
        .iter()
        .map(|&i| s[i] / (sum + 1e-20) * scaling)
        .collect();
    (chosen.into_iter().map(|i| i as u32).collect(), weights)
}

/// Indices of the `k` largest values, descending, ties to the lower index.
pub fn top_indices(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

fn top_values(v: &[f32], k: usize) -> Vec<f32> {
    top_indices(v, k).into_iter().map(|i| v[i]).collect()
}

/// The experts of one MoE layer: `[gate, up, down]` per expert.
pub struct Experts<'a> {
    pub gate: Vec<&'a Matrix>,
    pub up: Vec<&'a Matrix>,
    pub down: Vec<&'a Matrix>,
}

/// `out[i] = sum_k w[i,k] * swiglu_{ids[i,k]}(x[i])`, computed per expert over the tokens routed
/// to it (each touched expert's weights are read once), summed per token in expert order.
pub fn moe_experts(
    kernels: Kernels,
    x: &[f32],
    ids: &[u32],
    weights: &[f32],
    top_k: usize,
    ex: &Experts,
    out: &mut [f32],
) {
    let h = ex.down.first().map_or(0, |d| d.rows);
    let n = x.len() / h.max(1);
    let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); ex.gate.len()];
    for t in 0..n {
        for k in 0..top_k {
            routed[ids[t * top_k + k] as usize].push((t, weights[t * top_k + k]));
        }
    }
    let active: Vec<usize> = (0..routed.len())
        .filter(|&e| !routed[e].is_empty())
        .collect();
    let inter = ex.gate.first().map_or(0, |g| g.rows);
    let work = n * top_k * 3 * inter * h;
    let parts = map_chunks(active.len(), work, |range| {
        let mut contrib = Vec::new();
        for &e in &active[range] {
            let toks = &routed[e];
            let xs: Vec<f32> = toks
                .iter()
                .flat_map(|&(t, _)| x[t * h..(t + 1) * h].iter().copied())
                .collect();
            let m = toks.len();
            let (mut g, mut u, mut a) = (
                vec![0f32; m * inter],
                vec![0f32; m * inter],
                vec![0f32; m * inter],
            );
            kernels.matmul(&xs, ex.gate[e], &mut g);
            kernels.matmul(&xs, ex.up[e], &mut u);
            swiglu(&g, &u, &mut a);
            let mut y = vec![0f32; m * h];
            kernels.matmul(&a, ex.down[e], &mut y);
            contrib.push((e, y));
        }
        contrib
    });
    out.fill(0.0);
    for (e, y) in parts.into_iter().flatten() {
        for (j, &(t, w)) in routed[e].iter().enumerate() {
            for (o, &v) in out[t * h..(t + 1) * h]
                .iter_mut()
                .zip(&y[j * h..(j + 1) * h])
            {
                *o += w * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(e: usize, k: usize, g: usize, tg: usize) -> Routing {
        Routing {
            num_experts: e,
            top_k: k,
            n_group: g,
            topk_group: tg,
            scaling: 2.5,
            block: None,
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value() {
        let mut worst = 0u32;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let want = (x as f64).exp() as f32;
            let got = exp(x);
            worst = worst.max(got.to_bits().abs_diff(want.to_bits()));
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(100.0).is_finite());
    }

    #[test]
    fn block_routing_allows_the_block_maxima_then_picks_per_row() {
        // 4 experts, capacity 2, routing blocks of 2 rows, top-1. Block 0: experts 3 and 0 peak
        // on row 0 -> allowed {3, 0}; row 1's own best (expert 1) is not allowed, and its tie
        // between 0 and 3 goes to the lower id.
        let logits = [
            2.8, -1.0, -2.0, 3.0, //
            -3.0, 2.5, -3.0, -3.0, //
            // Block 1: a bias of -1 on expert 2 selects against it, weights stay unbiased.
            1.0, 0.0, 1.5, -1.0, //
            0.0, 0.5, 0.0, 0.0,
        ];
        let bias = [0.0, 0.0, -1.0, 0.0];
        let mut rt = r(4, 1, 1, 1);
        let b = BlockRouting {
            size: 2,
            capacity: 2,
        };
        rt.block = Some(b);
        let out = route_blocks(&logits, Some(&bias), &rt, b, 4).unwrap();
        let ids: Vec<u32> = out.iter().map(|o| o.0[0]).collect();
        assert_eq!(ids, vec![3, 0, 0, 1]);
        assert!((out[1].1[0] - 2.5).abs() < 1e-6, "k = 1: s / s * scaling");
        let e = route_blocks(&logits, None, &rt, b, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("routing block"), "{e}");
    }

    #[test]
    fn routing_is_group_limited_and_uses_bias_only_for_choice() {
        // 8 experts in 4 groups of 2; keep 2 groups, choose 2 experts.
        let logits = [3.0, 2.9, 0.0, 0.1, 2.0, -1.0, 1.0, 1.5];
        let bias = [0.0; 8];
        let (ids, w) = route(&logits, Some(&bias), &r(8, 2, 4, 2));
        assert_eq!(ids, vec![0, 1]);
        let s0 = sigmoid(3.0);
        let s1 = sigmoid(2.9);
        assert!((w[0] - s0 / (s0 + s1) * 2.5).abs() < 1e-6);

        // A strongly negative bias removes expert 1 from the choice, but weights use unbiased s.
        let bias = [0.0, -10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let (ids, w) = route(&logits, Some(&bias), &r(8, 2, 4, 2));
        // Group 0 now scores s0 + (s1 - 10): groups 2 (2.0,-1.0) and 3 (1.0,1.5) win.
        assert_eq!(ids, vec![4, 7]);
        let (s4, s7) = (sigmoid(2.0), sigmoid(1.5));
        assert!((w[1] - s7 / (s4 + s7) * 2.5).abs() < 1e-6);
    }

    #[test]
    fn routing_with_all_negative_biases_still_picks_k_experts() {
        // Negative biases make every kept score negative: masked experts must be -inf, not 0.
        let logits = [0.0; 8];
        let bias = [-5.0, -4.0, -6.0, -7.0, -3.0, -3.5, -8.0, -9.0];
        let (ids, _) = route(&logits, Some(&bias), &r(8, 3, 4, 2));
        assert_eq!(ids, vec![4, 5, 1]);
    }

    #[test]
    fn partial_rope_rotates_only_the_first_dims() {
        let inv = rope_inv_freq(4, 10000.0);
        assert_eq!(inv.len(), 2);
        let mut head = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        rope_head(&mut head, &inv, 3);
        assert_eq!(&head[4..], &[5.0, 6.0]);
        let a0 = 3.0f32 * inv[0];
        assert!((head[0] - (1.0 * a0.cos() - 3.0 * a0.sin())).abs() < 1e-6);
        assert!((head[2] - (3.0 * a0.cos() + 1.0 * a0.sin())).abs() < 1e-6);
        let a1 = 3.0f32 * inv[1];
        assert!((head[1] - (2.0 * a1.cos() - 4.0 * a1.sin())).abs() < 1e-6);
        // Position 0 is the identity.
        let mut h0 = [1.0, 2.0, 3.0, 4.0];
        rope_head(&mut h0, &inv, 0);
        assert_eq!(h0, [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn block_mask_hides_later_blocks_only() {
        // One head of width 1, q = k = 1 everywhere, v = position: the output is the mean of the
        // visible positions, which reveals the mask.
        let heads = Heads {
            q: 1,
            kv: 1,
            dim: 1,
        };
        let n = 6;
        let qkv: Vec<f32> = (0..n).flat_map(|t| [1.0, 1.0, t as f32]).collect();
        let k: Vec<f32> = vec![1.0; n];
        let v: Vec<f32> = (0..n).map(|t| t as f32).collect();
        let mut out = vec![0f32; n];
        attention(&qkv, heads, &k, &v, 0, 4, &mut out);
        // Block 0 = positions 0..4 sees 0..4 (mean 1.5), block 1 sees 0..6 (mean 2.5).
        for (t, o) in out.iter().enumerate() {
            let want = if t < 4 { 1.5 } else { 2.5 };
            assert!((o - want).abs() < 1e-6, "{t}: {o}");
        }
        // B = 1 is causal.
        attention(&qkv, heads, &k, &v, 0, 1, &mut out);
        assert!((out[2] - 1.0).abs() < 1e-6);
    }
}
