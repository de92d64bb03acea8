//! Golden logits and per-layer hidden states (SPEC §5) on every backend.

use unmask_core::{Capture, Model};
use unmask_tests::{
    backend_wanted, backends, golden_forward, golden_models, max_abs_diff, read_golden_tensors,
    GoldenTensor,
};

/// Each golden model with a `golden/forward.safetensors`, opened, with its tensors.
fn forward_goldens() -> Vec<(
    std::path::PathBuf,
    Model,
    std::collections::BTreeMap<String, GoldenTensor>,
)> {
    golden_models()
        .into_iter()
        .filter_map(|dir| {
            let path = dir.join("golden/forward.safetensors");
            path.exists().then(|| {
                let model = Model::open(&dir).unwrap();
                (dir, model, read_golden_tensors(&path))
            })
        })
        .collect()
}

#[test]
fn logits_and_hidden_states_match_the_reference() {
    for (dir, model, golden) in forward_goldens() {
        let cases: Vec<String> = golden
            .keys()
            .filter_map(|k| k.strip_suffix(".input_ids").map(str::to_string))
            .collect();
        assert!(!cases.is_empty(), "no cases in {}", dir.display());
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

/// The cpu backend's SIMD matmuls are the reference's dot products operation for operation: on
/// every golden input its logits and hidden states are the reference's bit for bit.
#[test]
fn the_cpu_backend_is_the_reference_bit_for_bit() {
    if !(backend_wanted("reference") && backend_wanted("cpu")) {
        return;
    }
    let mut all = backends();
    let (reference, cpu) = (all.remove(0), all.remove(0));
    assert_eq!((reference.name, cpu.name), ("reference", "cpu"));
    for (dir, model, golden) in forward_goldens() {
        let (mut a, mut b) = (
            (reference.make)(&model).unwrap(),
            (cpu.make)(&model).unwrap(),
        );
        for (key, t) in &golden {
            let (Some(case), GoldenTensor::Ids(ids)) = (key.strip_suffix(".input_ids"), t) else {
                continue;
            };
            let want = golden_forward(a.as_mut(), &model, ids, Capture::Hidden);
            let got = golden_forward(b.as_mut(), &model, ids, Capture::Hidden);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(got.logits.as_ref().unwrap()),
                bits(want.logits.as_ref().unwrap()),
                "{}: {case}: logits",
                dir.display()
            );
            for (i, (g, w)) in got.hidden.iter().zip(&want.hidden).enumerate() {
                assert_eq!(bits(g), bits(w), "{}: {case}: hidden.{i}", dir.display());
            }
        }
    }
}
