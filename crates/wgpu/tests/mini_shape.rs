//! A synthetic LLaDA2.0-mini-shaped model (real hidden, head, expert and vocabulary sizes; 2
//! layers: one dense, one with 256 experts; random bf16 weights) under a 128 MiB storage binding
//! limit (lavapipe's; enforced on bigger adapters too): the 644 MB embedding table and lm_head
//! and the 512 MiB expert stacks are split across bindings, and the logits of a few tokens match
//! the reference backend.

use unmask_core::backend::{Backend, Capture, SampleParams, Step};
use unmask_core::model::llada2;
use unmask_core::synthetic::{random_weights, shape_config};
use unmask_core::weights::DType;
use unmask_core::ReferenceBackend;
use unmask_wgpu::{WgpuBackend, WgpuOptions};

const LIMIT: u64 = 128 << 20;

#[test]
fn mini_shaped_logits_match_the_reference_with_split_bindings() {
    let Some(adapter) = unmask_wgpu::probe_or_skip() else {
        return;
    };
    let mut c = shape_config("mini").unwrap();
    c.num_hidden_layers = 2;
    let store = random_weights(&c, DType::BF16, 7).unwrap();
    let graph = llada2::build(&c);
    let tokens: Vec<u32> = vec![1, 157_000, 4242, 99_999];
    let step = Step {
        tokens: &tokens,
        start: 0,
        keep: tokens.len(),
        block_length: 32,
        out_rows: tokens.len(),
        sampling: SampleParams::greedy(156_895, 157_153),
        capture: Capture::Logits,
    };
    // The reference first, dropped before the device copy exists (memory).
    let want = {
        let mut r = ReferenceBackend::new(graph.clone(), &store, &mut |_, _| {}).unwrap();
        r.step(&step).unwrap()
    };
    let mut b = WgpuBackend::new(
        graph,
        &store,
        &WgpuOptions {
            weight_binding_limit: Some(LIMIT),
            ..Default::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    for name in ["lm_head.weight", "model.word_embeddings.weight"] {
        let parts = b.weight_bindings(name).unwrap();
        assert!(parts >= 5, "{name}: {parts} bindings");
    }
    let got = b.step(&step).unwrap();
    let (g, w) = (got.logits.unwrap(), want.logits.unwrap());
    let vocab = c.vocab_size;
    assert_eq!(g.len(), tokens.len() * vocab);
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "{}: mini-shaped logits: max abs error {err:.2e} (largest logit {scale:.3})",
        adapter.name
    );
    assert!(
        err <= 1e-4 * scale.max(1.0),
        "max abs error {err}, scale {scale}"
    );
    // Same predictions, and the rows far apart in the vocabulary (other bindings) agree too.
    for (a, b) in got.samples.iter().zip(&want.samples) {
        assert_eq!(a.token, b.token);
        assert!((a.confidence - b.confidence).abs() <= 1e-5);
    }
    for r in 0..tokens.len() {
        let row = |v: &[f32]| v[r * vocab..(r + 1) * vocab].to_vec();
        let (gr, wr) = (row(&g), row(&w));
        for col in [0, vocab / 2, vocab - 1] {
            assert!((gr[col] - wr[col]).abs() <= 1e-4 * scale.max(1.0));
        }
    }
}
