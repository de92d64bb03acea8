//! A sequence's tokens do not depend on what it is batched with: every golden case of every
//! golden model (every decoder, block length and parameter set the files hold, plus seeded
//! variants), decoded alone and then in continuous batches where sequences join and leave
//! between steps, gives the same tokens and forward count. Run on the backends that hold
//! several KV-cache slots (reference and cpu); the others run a batch of one.

use unmask_core::decode::{generate_batch, BatchRequest, DecodeParams};
use unmask_core::reference::Kernels;
use unmask_core::{generate, Backend, Model, ReferenceBackend};
use unmask_tests::{generate_goldens, golden_models};

fn backend(model: &Model, kernels: Kernels, slots: usize) -> ReferenceBackend {
    ReferenceBackend::with_kernels(model.graph.clone(), &model.weights, kernels, &mut |_, _| {})
        .unwrap()
        .with_slots(slots)
}

/// Every case of every golden file of `dir`, greedy as written, and a seeded variant of each
/// decoder that samples.
fn cases(model: &Model, dir: &std::path::Path) -> Vec<(String, Vec<u32>, DecodeParams)> {
    let (detected, _) = unmask_core::decode::family::detect(dir, &model.config);
    let mut v = Vec::new();
    for (path, golden) in generate_goldens(dir) {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        for (i, case) in golden.cases.iter().enumerate() {
            let decoder = case.decoder.or(golden.decoder).unwrap_or(detected);
            let p = case.params(decoder);
            v.push((
                format!("{file}: {}", case.name),
                case.prompt_ids.clone(),
                p.clone(),
            ));
            if p.validate().is_ok() && decoder != unmask_core::decode::Decoder::Llada22 {
                let mut seeded = p;
                seeded.temperature = 0.8;
                seeded.top_k = 20;
                seeded.seed = 1000 + i as u64;
                v.push((
                    format!("{file}: {} seeded", case.name),
                    case.prompt_ids.clone(),
                    seeded,
                ));
            }
        }
    }
    v
}

#[test]
fn a_sequence_decodes_the_same_alone_and_in_any_batch() {
    for dir in golden_models() {
        let model = Model::open(&dir).unwrap();
        let ids = model.special_ids();
        let limit = model.config.max_position_embeddings;
        let cases = cases(&model, &dir);
        assert!(
            cases.len() >= 2,
            "{}: too few cases to batch",
            dir.display()
        );
        for (name, kernels) in [("reference", Kernels::Reference), ("cpu", Kernels::Fast)] {
            let mut alone = backend(&model, kernels, 1);
            let want: Vec<_> = cases
                .iter()
                .map(|(_, prompt, p)| {
                    generate(&mut alone, &ids, limit, prompt, p, &mut |_| true)
                        .map_err(|e| e.to_string())
                })
                .collect();
            // Widths 2 and 4; sequences join at staggered steps, so batches form and change
            // as others finish.
            for width in [2, 4] {
                let requests: Vec<BatchRequest> = cases
                    .iter()
                    .enumerate()
                    .map(|(i, (_, prompt, p))| BatchRequest {
                        prompt,
                        params: p.clone(),
                        join_after: (i * 3) % 7,
                    })
                    .collect();
                let mut batched = backend(&model, kernels, width);
                let run = generate_batch(&mut batched, &ids, limit, &requests, width).unwrap();
                assert!(
                    run.batch_sizes.iter().any(|&n| n > 1),
                    "{name}: width {width}: no batch of more than one ({:?})",
                    run.batch_sizes
                );
                assert!(run.batch_sizes.iter().all(|&n| n <= width));
                for ((case, w), g) in cases.iter().zip(&want).zip(run.generations) {
                    let what = format!("{}: {name}: width {width}: {}", dir.display(), case.0);
                    match (w, g.map_err(|e| e.to_string())) {
                        (Ok(w), Ok(g)) => {
                            assert_eq!(g.tokens, w.tokens, "{what}: tokens");
                            assert_eq!(g.forwards, w.forwards, "{what}: forwards");
                        }
                        (Err(w), Err(g)) => assert_eq!(&g, w, "{what}"),
                        (w, g) => panic!("{what}: alone {w:?}, batched {g:?}"),
                    }
                }
            }
        }
    }
}

#[test]
fn a_batch_checks_its_slots() {
    let dir = golden_models().remove(0);
    let model = Model::open(&dir).unwrap();
    let mut b = backend(&model, Kernels::Fast, 2);
    let tokens = [1u32, 2, 3];
    let step = |slot| unmask_core::backend::SlotStep {
        slot,
        step: unmask_core::Step {
            tokens: &tokens,
            start: 0,
            keep: 3,
            block_length: 4,
            out_rows: 3,
            sampling: unmask_core::SampleParams::greedy(0, 4),
            capture: unmask_core::Capture::Samples,
        },
    };
    let e = b.step_batch(&[step(0), step(0)]).unwrap_err().to_string();
    assert!(e.contains("share KV-cache slot 0"), "{e}");
    let e = b.step_batch(&[step(2)]).unwrap_err().to_string();
    assert!(e.contains("slot 2"), "{e}");
    assert!(b.step_batch(&[]).is_err());
    let outs = b.step_batch(&[step(0), step(1)]).unwrap();
    assert_eq!(outs.len(), 2);
    assert_eq!(outs[0].samples, outs[1].samples, "one window, two slots");
    assert_eq!((b.cached_in(0), b.cached_in(1)), (3, 3));
    b.reset_slot(1);
    assert_eq!((b.cached_in(0), b.cached_in(1)), (3, 0));
}
