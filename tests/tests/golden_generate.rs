//! Every golden generation case token-exact on every backend: output, the window fed to each
//! forward (`trace`) and the number of forwards.

use unmask_core::{generate, Model};
use unmask_tests::{backends, golden_models, read_json, GenerateGolden, TraceEntry};

#[test]
fn every_golden_case_is_token_exact() {
    for dir in golden_models() {
        let path = dir.join("golden/generate.json");
        if !path.exists() {
            continue;
        }
        let golden: GenerateGolden = read_json(&path);
        let model = Model::open(&dir).unwrap();
        let ids = model.special_ids();
        for be in backends() {
            let mut backend = (be.make)(&model).unwrap();
            for case in &golden.cases {
                assert_eq!(
                    (case.mask_id, case.eos_id),
                    (ids.mask, ids.eos),
                    "{}: special ids",
                    case.name
                );
                let mut trace = Vec::new();
                let gen = generate(
                    backend.as_mut(),
                    &ids,
                    model.config.max_position_embeddings,
                    &case.prompt_ids,
                    &case.params(),
                    &mut |e| {
                        trace.push(TraceEntry {
                            block_start: e.block_start,
                            tokens: e.window.clone(),
                        });
                        true
                    },
                )
                .unwrap();
                println!("{}: {}: {} forwards", be.name, case.name, gen.forwards);
                for (i, (got, want)) in trace.iter().zip(&case.trace).enumerate() {
                    assert_eq!(
                        got, want,
                        "{}: {}: window fed to forward {i}",
                        be.name, case.name
                    );
                }
                assert_eq!(
                    gen.tokens, case.output_ids,
                    "{}: {}: output",
                    be.name, case.name
                );
                assert_eq!(
                    gen.forwards, case.forwards,
                    "{}: {}: forwards",
                    be.name, case.name
                );
                assert_eq!(
                    trace.len(),
                    case.trace.len(),
                    "{}: {}: trace length",
                    be.name,
                    case.name
                );
            }
        }
    }
}
