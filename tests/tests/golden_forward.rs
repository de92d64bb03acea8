//! Golden logits and per-layer hidden states (SPEC §5) on every backend.

use unmask_core::{Capture, Model};
use unmask_tests::{
    backends, golden_forward, golden_models, max_abs_diff, read_golden_tensors, GoldenTensor,
};

#[test]
fn logits_and_hidden_states_match_the_reference() {
    for dir in golden_models() {
        let path = dir.join("golden/forward.safetensors");
        if !path.exists() {
            continue;
        }
        let model = Model::open(&dir).unwrap();
        let golden = read_golden_tensors(&path);
        let cases: Vec<String> = golden
            .keys()
            .filter_map(|k| k.strip_suffix(".input_ids").map(str::to_string))
            .collect();
        assert!(!cases.is_empty(), "no cases in {}", path.display());
        for be in backends() {
            let mut backend = (be.make)(&model).unwrap();
            for case in &cases {
                let GoldenTensor::Ids(ids) = &golden[&format!("{case}.input_ids")] else {
                    panic!()
                };
                let out = golden_forward(backend.as_mut(), &model, ids, Capture::Hidden);
                let GoldenTensor::F32 { data: want, .. } = &golden[&format!("{case}.logits")]
                else {
                    panic!()
                };
                let err = max_abs_diff(out.logits.as_ref().unwrap(), want);
                println!(
                    "{}: {}/{case}: logits max abs error {err:.2e}",
                    be.name,
                    dir.display()
                );
                assert!(
                    err <= 1e-3,
                    "{}: {case}: logits max abs error {err}",
                    be.name
                );
                for (i, got) in out.hidden.iter().enumerate() {
                    let GoldenTensor::F32 { data: want, .. } =
                        &golden[&format!("{case}.hidden.{i}")]
                    else {
                        panic!()
                    };
                    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
                    let err = max_abs_diff(got, want);
                    assert!(
                        err <= 1e-4 * scale.max(1.0) + 1e-4,
                        "{}: {case}: hidden.{i} max abs error {err} (scale {scale})",
                        be.name
                    );
                }
            }
        }
    }
}
