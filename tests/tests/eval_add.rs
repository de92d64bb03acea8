//! The trained addition model: all held-out problems of `golden/eval.json` reproduce the
//! reference outputs token for token on every backend (and so its accuracy).

use serde::Deserialize;
use unmask_core::{generate, DecodeParams, Model};
use unmask_tests::{backends, fixture, read_json};

#[derive(Deserialize)]
struct Eval {
    accuracy: f64,
    cases: Vec<EvalCase>,
}

#[derive(Deserialize)]
struct EvalCase {
    answer: String,
    prompt_ids: Vec<u32>,
    reference_output_ids: Vec<u32>,
    reference_correct: bool,
}

#[test]
fn every_held_out_problem_matches_the_reference() {
    let dir = fixture("tiny-llada2-add");
    let eval: Eval = read_json(&dir.join("golden/eval.json"));
    let model = Model::open(&dir).unwrap();
    let ids = model.special_ids();
    // The reference settings recorded in the file's note: block 32, steps 32, threshold 0.95,
    // gen_length 16, greedy.
    let params = DecodeParams {
        gen_length: 16,
        block_length: 32,
        steps: 32,
        threshold: 0.95,
        ..Default::default()
    };
    for be in backends() {
        let mut backend = (be.make)(&model).unwrap();
        let (mut exact, mut correct, mut forwards, mut tokens) = (0, 0, 0, 0);
        for (i, c) in eval.cases.iter().enumerate() {
            let g = generate(
                backend.as_mut(),
                &ids,
                model.config.max_position_embeddings,
                &c.prompt_ids,
                &params,
                &mut |_| true,
            )
            .unwrap();
            assert_eq!(g.tokens, c.reference_output_ids, "{}: problem {i}", be.name);
            exact += 1;
            let text = model.tokenizer.decode(&g.tokens).unwrap();
            let is_correct = text.trim() == c.answer;
            assert_eq!(
                is_correct, c.reference_correct,
                "{}: problem {i}: {text:?}",
                be.name
            );
            correct += usize::from(is_correct);
            forwards += g.forwards;
            tokens += g.tokens.len();
        }
        let acc = correct as f64 / eval.cases.len() as f64;
        println!(
            "{}: {exact}/{} token-exact, {correct} correct ({:.1} %), {:.2} tokens per forward",
            be.name,
            eval.cases.len(),
            acc * 100.0,
            tokens as f64 / forwards as f64
        );
        assert!((acc - eval.accuracy).abs() < 1e-9);
    }
}
