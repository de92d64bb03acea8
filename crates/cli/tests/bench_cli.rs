//! `unmask bench` end to end: the report's fields exist and are consistent. No timing is
//! asserted (timings are what the command measures, not what tests judge).

use serde_json::Value;
use unmask_tests::{fixture, read_json, GenerateGolden};

mod common;
use common::unmask;

/// The mini-shape runs hold 6-9 GB each: one at a time.
static MINI: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn report(args: &[&str]) -> Value {
    let o = unmask(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "unmask {args:?} failed: {err}");
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn num(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("`{path}` is not a number: {cur}"))
}

/// A spread of positive, finite milliseconds in order.
fn check_spread(r: &Value, path: &str, n: usize) {
    let f = |k: &str| num(r, &format!("{path}.{k}"));
    let (min, p10, med, p90, max) = (f("min"), f("p10"), f("median"), f("p90"), f("max"));
    assert!(min > 0.0 && max.is_finite(), "{path}: {min} .. {max}");
    assert!(
        min <= p10 && p10 <= med && med <= p90 && p90 <= max,
        "{path}: out of order"
    );
    assert_eq!(f("n") as usize, n, "{path}: samples");
}

/// What every report must hold, whatever the model and backend. `full`: no part was skipped.
fn check_report(r: &Value, iters: usize, full: bool) {
    check_spread(r, "forward.ms", iters);
    for part in ["ar_baseline", "kv_cache"] {
        assert_eq!(r[part].is_null(), !full, "{part}");
    }
    assert_eq!(r["throughput"]["measured"].is_null(), !full);
    if full {
        check_spread(r, "ar_baseline.ms", iters);
        check_spread(r, "kv_cache.without_cache_ms", iters);
        assert_eq!(r["kv_cache"]["with_cache_ms"], r["forward"]["ms"]);
    }
    let b = &r["forward"]["bytes"];
    let parts = [
        "attention_weights",
        "dense_ffn_weights",
        "router_weights",
        "shared_expert_weights",
        "routed_expert_weights",
        "embedding_rows",
        "lm_head_weights",
        "norm_weights",
        "kv_cache_read",
        "kv_cache_written",
    ];
    let sum: f64 = parts.iter().map(|p| num(b, p)).sum();
    assert_eq!(sum, num(b, "total"));
    assert!(
        num(b, "total")
            <= num(r, "model.weight_bytes") + num(b, "kv_cache_read") + num(b, "kv_cache_written")
    );
    let experts = num(r, "model.num_experts");
    let top_k = num(r, "model.experts_per_token");
    for t in b["experts_touched"].as_array().unwrap() {
        let t = t.as_f64().unwrap();
        assert!(t >= top_k && t <= experts, "{t} experts touched");
    }
    // One token reads exactly top_k experts per MoE layer.
    if full {
        let ar = &r["ar_baseline"]["bytes"]["experts_touched"];
        for t in ar.as_array().unwrap() {
            assert!((t.as_f64().unwrap() - top_k).abs() < 1e-9);
        }
    }
    let bw = num(r, "bandwidth.bytes_per_second");
    assert!(bw > 0.0 && bw.is_finite());
    let floor = num(r, "forward.floor_ms");
    assert!((floor - num(b, "total") / bw * 1e3).abs() <= 1e-9 * floor.max(1.0));
    let ratio = num(r, "forward.ratio_to_floor");
    assert!((ratio - num(r, "forward.ms.median") / floor).abs() < 1e-9 * ratio.max(1.0));
    let t = &r["throughput"];
    let tpf = num(t, "assumed_tokens_per_forward");
    assert!(
        (num(t, "tokens_per_second_assumed") - tpf * 1e3 / num(r, "forward.ms.median")).abs()
            < 1e-6
    );
    if full {
        let real = &t["measured"];
        assert!(num(real, "forwards") >= 1.0 && num(real, "tokens") >= 1.0);
        let tpf = num(real, "tokens") / num(real, "forwards");
        assert!((num(real, "tokens_per_forward") - tpf).abs() < 1e-12);
        assert!(num(real, "time_to_first_token_ms") <= num(real, "elapsed_ms"));
        assert!(num(t, "ar_tokens_per_second") > 0.0);
    } else {
        assert!(t["ar_tokens_per_second"].is_null() && t["speedup_over_ar_assumed"].is_null());
    }
    // Peak host memory includes the weights the process holds.
    assert!(num(r, "memory.peak_host_bytes") > num(r, "model.weight_bytes"));
    for key in [
        "dispatches",
        "submissions",
        "bytes_uploaded",
        "bytes_read_back",
    ] {
        assert!(r["forward"]["per_step"][key].is_u64(), "per_step.{key}");
    }
    assert!(r["forward"]["allocations_after_warmup"].is_u64());
    assert!(r["date"].as_str().unwrap().len() == 10);
}

/// The CI smoke run: the real LLaDA2.0-mini shape, 2 layers, random weights, minimal counts.
#[test]
fn mini_shape_two_layers_reports_sane_json() {
    let _one_at_a_time = MINI.lock().unwrap_or_else(|e| e.into_inner());
    {
        let backend = "cpu";
        let r = report(&[
            "bench",
            "--shape",
            "mini",
            "--layers",
            "2",
            "--json",
            "--backend",
            backend,
            "--prompt-len",
            "32",
            "--warmup",
            "1",
            "--iters",
            "2",
            "--gen-length",
            "32",
            "--steps",
            "2",
        ]);
        check_report(&r, 2, true);
        let m = &r["model"];
        assert_eq!((num(m, "layers"), num(m, "full_layers")), (2.0, 20.0));
        assert_eq!(m["random_weights"], true);
        assert_eq!(m["format"], "bf16");
        let (hidden, vocab) = (num(m, "hidden_size"), num(m, "vocab_size"));
        assert_eq!(
            num(&r["forward"]["bytes"], "lm_head_weights"),
            vocab * hidden * 2.0
        );
        assert_eq!(
            r["forward"]["bytes"]["experts_touched"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // Random weights never pass the threshold: steps 2 commit half the block each.
        let real = &r["throughput"]["measured"];
        assert_eq!((num(real, "tokens"), num(real, "forwards")), (32.0, 2.0));
        assert_eq!(real["random_weights"], true);
    }
}

/// The same shape on wgpu, where an adapter exists (CI: lavapipe, `UNMASK_REQUIRE_WGPU=1`). A
/// window forward takes most of a minute on lavapipe with 2 cores, so this run times one window
/// and skips the optional parts.
#[test]
fn mini_shape_two_layers_on_wgpu() {
    if unmask_wgpu::probe_or_skip().is_none() {
        return;
    }
    let _one_at_a_time = MINI.lock().unwrap_or_else(|e| e.into_inner());
    let r = report(&[
        "bench",
        "--shape",
        "mini",
        "--layers",
        "2",
        "--json",
        "--backend",
        "wgpu",
        "--prompt-len",
        "0",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--skip",
        "ar,no-cache,real-run",
    ]);
    check_report(&r, 1, false);
    assert!(r["backend"]["name"].as_str().unwrap().starts_with("wgpu"));
    // One submission per step, and only (token, confidence, three best ids) per window row
    // comes back.
    let step = &r["forward"]["per_step"];
    assert_eq!(num(step, "submissions"), 1.0);
    let row_bytes = (unmask_core::backend::SAMPLE_WORDS * 4) as f64;
    assert!(num(step, "bytes_read_back") <= 32.0 * row_bytes, "{step}");
    // wgpu does not tell its routing: the reference routed the same step on the host.
    assert!(r["forward"]["routing"].as_str().unwrap().contains("host"));
    assert!(num(&r, "memory.device_bytes") > 0.0);
}

/// A real model directory: the real run is its first golden case, token for token as many
/// forwards as the reference made.
#[test]
fn model_directory_runs_its_first_golden_case() {
    let dir = fixture("tiny-llada2");
    let golden: GenerateGolden = read_json(&dir.join("golden/generate.json"));
    let case = &golden.cases[0];
    let d = dir.display().to_string();
    let r = report(&[
        "bench",
        "--model",
        &d,
        "--json",
        "--backend",
        "cpu",
        "--iters",
        "3",
        "--warmup",
        "1",
    ]);
    check_report(&r, 3, true);
    assert_eq!(r["model"]["random_weights"], false);
    let real = &r["throughput"]["measured"];
    assert_eq!(num(real, "forwards") as usize, case.forwards);
    assert_eq!(num(real, "prompt_tokens") as usize, case.prompt_ids.len());
    assert!(real["prompt_source"].as_str().unwrap().contains(&case.name));
    // The cpu backend tells its routing: whole expert counts.
    assert!(r["forward"]["routing"]
        .as_str()
        .unwrap()
        .contains("backend"));
    for t in r["forward"]["bytes"]["experts_touched"].as_array().unwrap() {
        assert_eq!(t.as_f64().unwrap().fract(), 0.0);
    }
}

#[test]
fn the_table_names_every_figure() {
    let o = unmask(&[
        "bench",
        "--shape",
        "tiny",
        "--backend",
        "cpu",
        "--iters",
        "2",
        "--prompt-len",
        "64",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "median",
        "AR baseline",
        "no KV cache",
        "floor",
        "tokens/s",
        "real run",
        "peak host",
    ] {
        assert!(out.contains(needle), "table lacks {needle:?}:\n{out}");
    }
}

/// A backend whose device is absent is refused before the random weights are made (a minute
/// for the mini shape); skipped where CUDA is present.
#[test]
fn a_missing_device_is_refused_before_the_weights_are_made() {
    if unmask_cuda::probe(0).is_ok() {
        return;
    }
    let o = unmask(&[
        "bench",
        "--shape",
        "mini",
        "--backend",
        "cuda",
        "--format",
        "q4",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("backend cuda: "), "{err}");
    assert!(!err.contains("making random weights"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_arguments_are_clean_errors() {
    let cases: [(&[&str], &str); 5] = [
        (&["bench", "--shape", "tiny", "--layers", "0"], "--layers"),
        (&["bench", "--shape", "huge"], "unknown shape"),
        (&["bench", "--shape", "tiny", "--iters", "0"], "--iters"),
        (
            &["bench", "--shape", "tiny", "--prompt-len", "5000"],
            "positions",
        ),
        (&["bench"], "--model"),
    ];
    for (args, needle) in cases {
        let o = unmask(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(needle),
            "{args:?}: stderr should mention {needle:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
