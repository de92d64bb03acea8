//! The trained addition model quantized to q8_0 and q4 (written to a directory by
//! `quant::quantize_dir` and loaded back like any model) still answers the 300 held-out
//! problems of `golden/eval.json` on every backend, and on cpu and wgpu with the activations
//! quantized too (`--int8-dots`): q8_0 at least 295 and q4 at least 294 right (f32 gets 297).
//! And on wgpu, the rows quantized by the kernels that write them give the same logits as the
//! quantize dispatches they replace.

use serde::Deserialize;
use std::time::Instant;
use unmask_core::backend::{Capture, SampleParams, Step};
use unmask_core::quant::{quantize_dir, QuantFormat, QuantPlan, DEFAULT_SHARD_BYTES};
use unmask_core::reference::Kernels;
use unmask_core::{generate, Backend, DecodeParams, Model, ReferenceBackend};
use unmask_tests::{backend_wanted, backends, fixture, read_json, wgpu_or_skip, wgpu_with};

type MakeBackend = Box<dyn Fn(&Model) -> Box<dyn Backend>>;

#[derive(Deserialize)]
struct Eval {
    cases: Vec<EvalCase>,
}

#[derive(Deserialize)]
struct EvalCase {
    answer: String,
    prompt_ids: Vec<u32>,
}

#[test]
fn quantized_addition_model_keeps_its_accuracy() {
    let dir = fixture("tiny-llada2-add");
    let eval: Eval = read_json(&dir.join("golden/eval.json"));
    let source = Model::open(&dir).unwrap();
    // The reference settings of the file: block 32, steps 32, threshold 0.95, gen_length 16.
    let params = DecodeParams {
        gen_length: 16,
        block_length: 32,
        steps: 32,
        threshold: 0.95,
        ..Default::default()
    };
    for (format, required) in [(QuantFormat::Q8_0, 295), (QuantFormat::Q4, 294)] {
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
        println!(
            "{format}: {:.3} bits/weight, rel_rmse {:.4} over {} tensors",
            report.bits_per_weight, report.rel_rmse, report.quantized_tensors
        );
        let model = Model::open(&out).unwrap();
        let ids = model.special_ids();
        let mut cases: Vec<(&str, MakeBackend)> = backends()
            .into_iter()
            .map(|be| {
                let make = be.make;
                (
                    be.name,
                    Box::new(move |m: &Model| make(m).unwrap()) as MakeBackend,
                )
            })
            .collect();
        // `--int8-dots`: the activations quantized to 8 bits per block too.
        if backend_wanted("cpu") {
            cases.push((
                "cpu --int8-dots",
                Box::new(|m: &Model| {
                    Box::new(
                        ReferenceBackend::with_kernels(
                            m.graph.clone(),
                            &m.weights,
                            Kernels::Int8,
                            &mut |_, _| {},
                        )
                        .unwrap(),
                    ) as Box<dyn Backend>
                }),
            ));
        }
        // wgpu's integer window products (`--int8-dots` there too).
        if cases.iter().any(|(name, _)| *name == "wgpu") {
            cases.push((
                "wgpu --int8-dots",
                Box::new(|m: &Model| {
                    let opts = unmask_wgpu::WgpuOptions {
                        int8_dots: true,
                        ..Default::default()
                    };
                    Box::new(wgpu_with(m, &opts).unwrap()) as Box<dyn Backend>
                }),
            ));
        }
        for (name, make) in &cases {
            let t0 = Instant::now();
            let mut backend = make(&model);
            let (mut correct, mut forwards, mut tokens) = (0, 0, 0);
            for c in &eval.cases {
                let g = generate(
                    backend.as_mut(),
                    &ids,
                    model.config.max_position_embeddings,
                    &c.prompt_ids,
                    &params,
                    &mut |_| true,
                )
                .unwrap();
                let text = model.tokenizer.decode(&g.tokens).unwrap();
                correct += usize::from(text.trim() == c.answer);
                forwards += g.forwards;
                tokens += g.tokens.len();
            }
            println!(
                "{name}: {format}: {correct}/{} correct, {:.2} tokens per forward ({:.1} s)",
                eval.cases.len(),
                tokens as f64 / forwards as f64,
                t0.elapsed().as_secs_f64()
            );
            assert!(
                correct >= required,
                "{name}: {format}: {correct} correct, at least {required} required"
            );
        }
    }
}

/// wgpu `--int8-dots`: a norm, attention and the MoE combine quantize the rows they write for
/// the integer product after them (`WgpuOptions::int8_folds`) to the bits the quantize
/// dispatches they replace write: the same logits, for a prompt and for a window over it, with
/// only the quantize dispatches gone (the QKV, output and experts' gate/up products of every
/// MoE layer, and more in the dense one, whose up product reads the rows quantized for its gate
/// product).
#[test]
fn wgpu_writers_quantize_to_the_same_bits() {
    if !wgpu_or_skip() {
        return;
    }
    let dir = fixture("tiny-llada2-add");
    let eval: Eval = read_json(&dir.join("golden/eval.json"));
    let source = Model::open(&dir).unwrap();
    for format in [QuantFormat::Q8_0, QuantFormat::Q4] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join(format.name());
        let plan = QuantPlan::new(format);
        quantize_dir(&source, &out, &plan, DEFAULT_SHARD_BYTES, &mut |_, _| {}).unwrap();
        let model = Model::open(&out).unwrap();
        let sp = model.special_ids();
        // An addition prompt, and 600 positions (past SPLIT_KEYS: split-KV attention, whose
        // combine quantizes then), each then a window of 32 masks over it.
        let long: Vec<u32> = (0..600u32)
            .map(|i| (i * 131 + 7) % sp.valid_vocab)
            .collect();
        let prompts = [eval.cases[0].prompt_ids.clone(), long];
        let mut runs = Vec::new();
        for folds in [false, true] {
            let opts = unmask_wgpu::WgpuOptions {
                int8_dots: true,
                int8_folds: folds,
                ..Default::default()
            };
            let mut b = wgpu_with(&model, &opts).unwrap();
            let mut logits = Vec::new();
            let mut kernels = Vec::new();
            for prompt in &prompts {
                let masks = vec![sp.mask; 32];
                let prefill = Step {
                    tokens: prompt,
                    start: 0,
                    keep: prompt.len(),
                    block_length: 32,
                    out_rows: 32,
                    sampling: SampleParams::greedy(sp.mask, sp.valid_vocab),
                    capture: Capture::Logits,
                };
                let window = Step {
                    tokens: &masks,
                    start: prompt.len(),
                    keep: 0,
                    ..prefill.clone()
                };
                logits.push(b.step(&prefill).unwrap().logits.unwrap());
                let (out, times) = b
                    .profile_step(&window)
                    .expect("lavapipe has timers")
                    .unwrap();
                logits.push(out.logits.unwrap());
                if kernels.is_empty() {
                    kernels = times.into_iter().map(|t| t.kernel).collect();
                }
            }
            runs.push((logits, kernels));
        }
        let [(plain_logits, plain), (folded_logits, folded)] = &runs[..] else {
            unreachable!()
        };
        for (i, (a, b)) in plain_logits.iter().zip(folded_logits).enumerate() {
            assert_eq!(a.len(), b.len());
            let differ = a
                .iter()
                .zip(b)
                .position(|(x, y)| x.to_bits() != y.to_bits());
            assert_eq!(
                differ, None,
                "{format}: step {i}'s logits differ (first index)"
            );
        }
        let quantizes = |k: &[String]| k.iter().filter(|n| n.contains("quantize_rows")).count();
        let moe_layers = model.config.num_hidden_layers - model.config.first_k_dense_replace;
        println!(
            "{format}: {} kernels, {} quantize dispatches; folded {} and {}",
            plain.len(),
            quantizes(plain),
            folded.len(),
            quantizes(folded)
        );
        assert!(quantizes(plain) >= quantizes(folded) + 3 * moe_layers);
        // Each layer keeps one: its down product's (the SwiGLU's output, the experts').
        assert_eq!(quantizes(folded), model.config.num_hidden_layers);
        assert_eq!(
            plain.len() - folded.len(),
            quantizes(plain) - quantizes(folded)
        );
    }
}
