//! Every golden generation case of every decoder token-exact on every backend: output, the
//! window fed to each forward (`trace`), what each forward wrote where the golden file says
//! (2.1's edit counts, 2.2's write sets), and the number of forwards.

use unmask_core::decode::family;
use unmask_core::{generate, Model};
use unmask_tests::{backends, generate_goldens, golden_models, TraceEntry};

#[test]
fn every_golden_case_is_token_exact() {
    for dir in golden_models() {
        let model = Model::open(&dir).unwrap();
        let ids = model.special_ids();
        let (detected, _) = family::detect(&dir, &model.config);
        for (path, golden) in generate_goldens(&dir) {
            let file = path.file_name().unwrap().to_string_lossy().to_string();
            for be in backends() {
                let mut backend = (be.make)(&model).unwrap();
                for case in &golden.cases {
                    let decoder = case.decoder.or(golden.decoder).unwrap_or(detected);
                    let what = format!("{}: {file}: {} ({decoder})", be.name, case.name);
                    assert_eq!(
                        (case.mask_id, case.eos_id),
                        (ids.mask, ids.eos),
                        "{what}: special ids"
                    );
                    if let Some(d) = case.delete_token_id {
                        assert_eq!((Some(d), case.split_token_id), (ids.delete, ids.split));
                    }
                    let mut trace = Vec::new();
                    let mut edits = Vec::new();
                    let t = std::time::Instant::now();
                    let gen = generate(
                        backend.as_mut(),
                        &ids,
                        model.config.max_position_embeddings,
                        &case.prompt_ids,
                        &case.params(decoder),
                        &mut |e| {
                            trace.push(TraceEntry::of(e));
                            edits.push(e.edited.len());
                            true
                        },
                    )
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    println!(
                        "{what}: {} forwards, {} tokens, {:.2} tokens/forward, {ms:.0} ms",
                        gen.forwards,
                        gen.tokens.len(),
                        gen.tokens.len() as f64 / gen.forwards as f64
                    );
                    for (i, (got, want)) in trace.iter().zip(&case.trace).enumerate() {
                        assert_eq!(
                            (got.block_start, &got.tokens),
                            (want.block_start, &want.tokens),
                            "{what}: window fed to forward {i}"
                        );
                        if want.writes.is_some() {
                            assert_eq!(got.writes, want.writes, "{what}: writes of forward {i}");
                        }
                    }
                    if let Some(want) = &case.edits_per_forward {
                        for (i, (got, want)) in edits.iter().zip(want).enumerate() {
                            if let Some(want) = want {
                                assert_eq!(got, want, "{what}: edits of forward {i}");
                            }
                        }
                    }
                    assert_eq!(gen.tokens, case.output_ids, "{what}: output");
                    assert_eq!(gen.forwards, case.forwards, "{what}: forwards");
                    assert_eq!(trace.len(), case.trace.len(), "{what}: trace length");
                }
            }
        }
    }
}

/// LLaDA2.2 ends the answer at either eos id of `generation_config.json`: with a second id that
/// the golden `defaults` case writes, the answer is the golden one cut after that id's first
/// occurrence (blocks are block-causal, so the tokens before it do not change).
#[test]
fn llada22_stops_at_the_second_eos_of_generation_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = unmask_tests::copy_fixture("tiny-llada2.2", tmp.path());
    let src = unmask_tests::fixture("tiny-llada2.2");
    let (_, golden) = generate_goldens(&src).into_iter().next().unwrap();
    let case = golden.cases.iter().find(|c| c.name == "defaults").unwrap();
    let alt = case.output_ids[40];
    let first = case.output_ids.iter().position(|&t| t == alt).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        format!("{{\"eos_token_id\": [{}, {alt}]}}", case.eos_id),
    )
    .unwrap();
    let model = Model::open(&dir).unwrap();
    let ids = model.special_ids();
    assert_eq!(ids.eos_alt, Some(alt));
    let mut backend =
        unmask_core::ReferenceBackend::new(model.graph.clone(), &model.weights, &mut |_, _| {})
            .unwrap();
    let gen = generate(
        &mut backend,
        &ids,
        model.context_limit(),
        &case.prompt_ids,
        &case.params(unmask_core::decode::Decoder::Llada22),
        &mut |_| true,
    )
    .unwrap();
    assert_eq!(gen.tokens, case.output_ids[..=first]);
    assert_eq!(gen.finish, unmask_core::decode::Finish::Eos);
}
