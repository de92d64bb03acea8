//! The whole backend on a GPU: steps over a KV cache against the reference backend (logits and
//! greedy samples), through arena and cache growth and CUDA-graph replays of one shape with other
//! start positions; graphs on and off give identical bits; random weights made on the device run
//! in every format. Without a device each test prints `cuda: SKIPPED (why)`.

use std::io::Write;
use unmask_core::model::llada2;
use unmask_core::synthetic::{random_weights, shape_config};
use unmask_core::weights::DType;
use unmask_core::{Backend, Capture, ReferenceBackend, SampleParams, Step};
use unmask_cuda::{CudaBackend, CudaOptions, RandomFormat, WeightFormat};

fn device_or_skip() -> bool {
    match unmask_cuda::probe(0) {
        Ok(_) => true,
        Err(e) => {
            let why = e.to_string();
            let why = why
                .strip_prefix("backend cuda: ")
                .unwrap_or(&why)
                .to_string();
            assert!(
                std::env::var_os("UNMASK_REQUIRE_CUDA").is_none(),
                "UNMASK_REQUIRE_CUDA is set but: {why}"
            );
            let _ = std::io::stderr().write_all(format!("cuda: SKIPPED ({why})\n").as_bytes());
            false
        }
    }
}

/// (start, tokens, keep, out_rows) of each step: a prompt, window steps replaying one shape at
/// two starts, then a step larger than the initial arena.
const STEPS: [(usize, usize, usize, usize); 5] = [
    (0, 40, 32, 8),
    (32, 32, 0, 32),
    (32, 32, 32, 32),
    (64, 32, 0, 32),
    (64, 100, 100, 4),
];

fn run(b: &mut dyn Backend, vocab: usize, mask: u32) -> Vec<(Vec<f32>, Vec<u32>)> {
    let mut out = Vec::new();
    for (i, &(start, n, keep, rows)) in STEPS.iter().enumerate() {
        let tokens: Vec<u32> = (0..n)
            .map(|j| ((start + j) * 31 + i) as u32 % vocab as u32)
            .collect();
        let r = b
            .step(&Step {
                tokens: &tokens,
                start,
                keep,
                block_length: 32,
                out_rows: rows,
                sampling: SampleParams::greedy(mask, vocab as u32),
                capture: Capture::Logits,
            })
            .unwrap();
        assert_eq!(b.cached(), start + keep);
        out.push((
            r.logits.unwrap(),
            r.samples.iter().map(|s| s.token).collect(),
        ));
    }
    out
}

#[test]
fn steps_match_the_reference_through_growth_and_replays() {
    if !device_or_skip() {
        return;
    }
    let c = shape_config("tiny").unwrap();
    let store = random_weights(&c, DType::BF16, 3).unwrap();
    let vocab = c.vocab_size;
    let mask = vocab as u32 - 1;
    let mut reference = ReferenceBackend::new(llada2::build(&c), &store, &mut |_, _| {}).unwrap();
    let want = run(&mut reference, vocab, mask);
    for graphs in [true, false] {
        let opts = CudaOptions {
            max_positions: c.max_position_embeddings,
            graphs,
            initial_tokens: 16,
            ..Default::default()
        };
        let mut cuda = CudaBackend::new(llada2::build(&c), &store, opts, &mut |_, _| {}).unwrap();
        let got = run(&mut cuda, vocab, mask);
        for (i, ((gl, gt), (wl, wt))) in got.iter().zip(&want).enumerate() {
            let err = gl
                .iter()
                .zip(wl)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                err <= 1e-3,
                "graphs {graphs}: step {i}: logits max abs error {err}"
            );
            assert_eq!(gt, wt, "graphs {graphs}: step {i}: greedy tokens");
        }
        let stats = cuda.last_stats();
        assert!(stats.dispatches > 0);
        assert_eq!(stats.submissions == 1, graphs, "{stats:?}");
    }
}

#[test]
fn graph_replays_are_bit_identical_to_launches() {
    if !device_or_skip() {
        return;
    }
    let c = shape_config("tiny").unwrap();
    let store = random_weights(&c, DType::BF16, 4).unwrap();
    let vocab = c.vocab_size;
    let results: Vec<_> = [true, false]
        .into_iter()
        .map(|graphs| {
            let opts = CudaOptions {
                max_positions: c.max_position_embeddings,
                graphs,
                ..Default::default()
            };
            let mut b = CudaBackend::new(llada2::build(&c), &store, opts, &mut |_, _| {}).unwrap();
            run(&mut b, vocab, vocab as u32 - 1)
        })
        .collect();
    assert_eq!(results[0], results[1]);
}

#[test]
fn random_device_weights_run_in_every_format() {
    if !device_or_skip() {
        return;
    }
    let c = shape_config("tiny").unwrap();
    for format in [
        WeightFormat::F32,
        WeightFormat::Bf16,
        WeightFormat::F16,
        WeightFormat::Q8_0,
        WeightFormat::Q4,
    ] {
        let mut b = CudaBackend::with_random_weights(
            llada2::build(&c),
            RandomFormat { format, seed: 9 },
            CudaOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        let tokens: Vec<u32> = (0..33).map(|i| i * 17 % 1000).collect();
        let r = b
            .step(&Step {
                tokens: &tokens,
                start: 0,
                keep: 0,
                block_length: 32,
                out_rows: 33,
                sampling: SampleParams::greedy(c.vocab_size as u32 - 1, c.vocab_size as u32),
                capture: Capture::Logits,
            })
            .unwrap();
        assert!(
            r.logits.unwrap().iter().all(|v| v.is_finite()),
            "{format:?}"
        );
        for s in &r.samples {
            assert!(
                (0.0..=1.0).contains(&s.confidence) && s.confidence > 0.0,
                "{format:?}: {s:?}"
            );
        }
        let routing = b.last_routing().unwrap();
        assert_eq!(routing.len(), c.num_hidden_layers - c.first_k_dense_replace);
        for ids in &routing {
            assert_eq!(ids.len(), 33 * c.num_experts_per_tok);
            assert!(ids.iter().all(|&e| (e as usize) < c.num_experts));
        }
        assert!(b.device_memory().unwrap() > 0);
    }
    let mut b = CudaBackend::with_random_weights(
        llada2::build(&c),
        RandomFormat {
            format: WeightFormat::Bf16,
            seed: 1,
        },
        CudaOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let bw = b.measure_bandwidth().unwrap().unwrap();
    println!("cuda: device copy bandwidth {:.0} GB/s", bw / 1e9);
    assert!(bw > 1e9);
}
