//! `Backend::profile_step` (what `unmask bench --profile` reads) on every backend that can time
//! its kernels: the same samples as an untimed step, every op timed at least once in graph
//! order, and times that are real (non-negative, not all zero). A backend without timers says
//! so with `None`.

use unmask_core::backend::{Capture, SampleParams, Step};
use unmask_core::Model;
use unmask_tests::{backends, fixture};

#[test]
fn a_profiled_step_samples_the_same_and_times_every_op() {
    let model = Model::open(&fixture("tiny-llada2")).unwrap();
    let sp = model.special_ids();
    let tokens: Vec<u32> = (0..40u32).map(|i| (i * 131 + 7) % sp.valid_vocab).collect();
    // A prompt of 32 (prefill, keeps it) then a window of 8 over the cache.
    let prefill = Step {
        tokens: &tokens[..32],
        start: 0,
        keep: 32,
        block_length: 8,
        out_rows: 8,
        sampling: SampleParams::greedy(sp.mask, sp.valid_vocab),
        capture: Capture::Samples,
    };
    let window = Step {
        tokens: &tokens[32..],
        start: 32,
        keep: 0,
        ..prefill
    };
    for be in backends() {
        let mut b = (be.make)(&model).unwrap();
        b.step(&prefill).unwrap();
        let plain = b.step(&window).unwrap();
        let Some(profiled) = b.profile_step(&window) else {
            println!("{}: no kernel timers", be.name);
            continue;
        };
        let (out, times) = profiled.unwrap();
        assert_eq!(
            out.samples, plain.samples,
            "{}: profiling changed the samples",
            be.name
        );
        let ops: Vec<usize> = times.iter().map(|t| t.op).collect();
        assert!(ops.windows(2).all(|w| w[0] <= w[1]), "{}: {ops:?}", be.name);
        // Every op in a kernel of its own, or inside another op's (a backend's fusions).
        let fused: Vec<usize> = times.iter().flat_map(|t| t.fused.clone()).collect();
        for i in 0..model.graph.ops.len() {
            assert!(
                ops.contains(&i) || fused.contains(&i),
                "{}: op {i} was not timed",
                be.name
            );
        }
        assert!(times
            .iter()
            .all(|t| t.seconds >= 0.0 && t.seconds.is_finite()));
        let total: f64 = times.iter().map(|t| t.seconds).sum();
        assert!(total > 0.0, "{}: no time at all", be.name);
        assert_eq!(
            b.cached(),
            32,
            "{}: a profiled step keeps what a step keeps",
            be.name
        );
        println!(
            "{}: {} kernels, {:.3} ms",
            be.name,
            times.len(),
            total * 1e3
        );
    }
}
