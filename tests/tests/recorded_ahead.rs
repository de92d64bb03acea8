//! A backend that records the next step's commands while the device runs the current one
//! (wgpu) submits them only for a step of the same shape, and they compute what freshly
//! recorded ones do: a window stepped again gives the samples a fresh backend gives it, and a
//! step of another shape (more tokens, the seeded sampler) records anew.

use unmask_core::backend::{Backend, Capture, SampleParams, Step};
use unmask_core::Model;
use unmask_tests::{backends, fixture};

#[test]
fn commands_recorded_ahead_serve_only_the_same_shape() {
    let model = Model::open(&fixture("tiny-llada2")).unwrap();
    let sp = model.special_ids();
    let tokens: Vec<u32> = (0..48u32).map(|i| (i * 97 + 5) % sp.valid_vocab).collect();
    let greedy = SampleParams::greedy(sp.mask, sp.valid_vocab);
    let step = |range: std::ops::Range<usize>, keep, sampling| Step {
        tokens: &tokens[range.clone()],
        start: range.start,
        keep,
        block_length: 8,
        out_rows: 8,
        sampling,
        capture: Capture::Samples,
    };
    let prefill = step(0..32, 32, greedy);
    let window = step(32..40, 0, greedy);
    let seeded = step(
        32..40,
        0,
        SampleParams {
            temperature: 0.7,
            seed: 3,
            ..greedy
        },
    );
    let longer = step(32..48, 0, greedy);
    let mut checked = 0;
    for be in backends() {
        let fresh = |s: &Step| -> Vec<u32> {
            let mut b = (be.make)(&model).unwrap();
            b.step(&prefill).unwrap();
            b.step(s).unwrap().samples.iter().map(|x| x.token).collect()
        };
        let mut b = (be.make)(&model).unwrap();
        b.step(&prefill).unwrap();
        let run = |b: &mut Box<dyn Backend>, s: &Step| {
            let out = b.step(s).unwrap();
            let tokens: Vec<u32> = out.samples.iter().map(|x| x.token).collect();
            (tokens, b.last_stats().recorded_ahead)
        };
        let first = run(&mut b, &window);
        let again = run(&mut b, &window);
        let other = run(&mut b, &seeded);
        let wider = run(&mut b, &longer);
        if !again.1 {
            assert!(!first.1 && !other.1 && !wider.1, "{}", be.name);
            println!("{}: records nothing ahead", be.name);
            continue;
        }
        assert_eq!(again.0, first.0, "{}: the recorded window differs", be.name);
        assert_eq!(again.0, fresh(&window), "{}", be.name);
        assert!(
            !other.1,
            "{}: the seeded sampler ran greedy commands",
            be.name
        );
        assert_eq!(other.0, fresh(&seeded), "{}", be.name);
        assert!(
            !wider.1,
            "{}: a longer step ran a shorter one's commands",
            be.name
        );
        assert_eq!(wider.0, fresh(&longer), "{}", be.name);
        checked += 1;
        println!("{}: recorded ahead and checked", be.name);
    }
    if std::env::var("UNMASK_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
        assert!(checked > 0, "no backend recorded ahead (wgpu does)");
    }
}
