//! The random fixture `tiny-llada2` quantized to q8_0 and q4: it loads from the written
//! directory, every golden generation case runs on every backend, and its logits stay close to
//! the f32 golden ones. The model is random (chaotic), so tokens are not expected to equal the
//! golden output; the test prints top-1 agreement and mean KL of the logits and holds them to
//! bounds that only a broken kernel or layout would miss.

use unmask_core::quant::{quantize_dir, QuantFormat, QuantPlan, DEFAULT_SHARD_BYTES};
use unmask_core::{generate, Capture, Model, SampleParams, Step};
use unmask_tests::{
    backends, fixture, read_golden_tensors, read_json, GenerateGolden, GoldenTensor,
};

/// (top-1 agreement, mean KL(golden || quantized)) over the rows of two `[rows, vocab]` logits.
fn agreement(got: &[f32], want: &[f32], vocab: usize) -> (usize, usize, f64) {
    let (mut same, mut kl) = (0, 0f64);
    let rows = want.len() / vocab;
    let argmax = |r: &[f32]| {
        r.iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &v)| if v > b.1 { (i, v) } else { b },
            )
            .0
    };
    let log_softmax = |r: &[f32]| {
        let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = m + r.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        r.iter().map(|&v| v as f64 - lse).collect::<Vec<f64>>()
    };
    for (g, w) in got.chunks_exact(vocab).zip(want.chunks_exact(vocab)) {
        same += usize::from(argmax(g) == argmax(w));
        let (lg, lw) = (log_softmax(g), log_softmax(w));
        kl += lw
            .iter()
            .zip(&lg)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
    }
    (same, rows, kl / rows as f64)
}

#[test]
fn quantized_random_fixture_loads_generates_and_stays_close() {
    let dir = fixture("tiny-llada2");
    let source = Model::open(&dir).unwrap();
    let golden_gen: GenerateGolden = read_json(&dir.join("golden/generate.json"));
    let golden_fwd = read_golden_tensors(&dir.join("golden/forward.safetensors"));
    let vocab = source.config.vocab_size;
    for format in QuantFormat::ALL {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join(format.name());
        let report = quantize_dir(
            &source,
            &out,
            &QuantPlan::new(format),
            DEFAULT_SHARD_BYTES,
            &mut |_, _| {},
        )
        .unwrap();
        let model = Model::open(&out).unwrap();
        println!(
            "{format}: {:.3} bits/weight, rel_rmse {:.4}",
            report.bits_per_weight, report.rel_rmse
        );
        assert!(
            report.rel_rmse <= format_bound(format),
            "{format}: {}",
            report.rel_rmse
        );
        // The fixture's 48-column expert rows are one block each: no bits go to padding.
        assert!(
            report.bits_per_weight <= format.bits_per_weight(),
            "{format}: {} bits/weight",
            report.bits_per_weight
        );
        let ids = model.special_ids();
        for be in backends() {
            let t0 = std::time::Instant::now();
            let mut backend = (be.make)(&model).unwrap();
            // Logits of the golden forward cases.
            let (mut same, mut rows, mut kl) = (0, 0, 0f64);
            let mut cases = 0;
            for (name, t) in &golden_fwd {
                let (Some(case), GoldenTensor::Ids(tokens)) = (name.strip_suffix(".input_ids"), t)
                else {
                    continue;
                };
                let GoldenTensor::F32 { data: want, .. } = &golden_fwd[&format!("{case}.logits")]
                else {
                    panic!("{case}.logits is not f32")
                };
                backend.reset();
                let o = backend
                    .step(&Step {
                        tokens,
                        start: 0,
                        keep: 0,
                        block_length: 32,
                        out_rows: tokens.len(),
                        sampling: SampleParams::greedy(ids.mask, ids.valid_vocab),
                        capture: Capture::Logits,
                    })
                    .unwrap();
                let (s, r, k) = agreement(o.logits.as_ref().unwrap(), want, vocab);
                same += s;
                rows += r;
                kl += k;
                cases += 1;
            }
            let top1 = same as f64 / rows as f64;
            let kl = kl / cases as f64;
            // Every golden generation case runs; count positions equal to the f32 output.
            let (mut equal, mut total) = (0, 0);
            for case in &golden_gen.cases {
                let g = generate(
                    backend.as_mut(),
                    &ids,
                    model.config.max_position_embeddings,
                    &case.prompt_ids,
                    &case.params(unmask_core::decode::Decoder::Llada20),
                    &mut |_| true,
                )
                .unwrap();
                assert!(
                    g.tokens.len() <= case.gen_length,
                    "{}: {}",
                    be.name,
                    case.name
                );
                assert!(g
                    .tokens
                    .iter()
                    .all(|&t| t < ids.valid_vocab && t != ids.mask));
                equal += g
                    .tokens
                    .iter()
                    .zip(&case.output_ids)
                    .filter(|(a, b)| a == b)
                    .count();
                total += case.output_ids.len();
            }
            println!(
                "{}: {format}: logits top-1 agreement {same}/{rows} ({:.1} %), mean KL {kl:.2e}; \
                 generated tokens equal to f32 golden {equal}/{total} ({:.1} s)",
                be.name,
                100.0 * top1,
                t0.elapsed().as_secs_f64()
            );
            let (min_top1, max_kl) = match format {
                QuantFormat::Q8_0 => (0.9, 0.2),
                QuantFormat::Q4 => (0.3, 5.0),
            };
            assert!(top1 >= min_top1, "{}: {format}: top-1 {top1}", be.name);
            assert!(kl <= max_kl, "{}: {format}: KL {kl}", be.name);
        }
    }
}

/// The bounds on relative RMSE.
fn format_bound(f: QuantFormat) -> f64 {
    match f {
        QuantFormat::Q8_0 => 0.006,
        QuantFormat::Q4 => 0.080,
    }
}
