//! Bad input through the library: every case is an `Err` with a message naming the problem.

use unmask_core::{generate, DecodeParams, Model};
use unmask_tests::{backends, copy_fixture, fixture};

fn open_err(dir: &std::path::Path) -> String {
    match Model::open(dir) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn damaged_model_directories_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(open_err(&tmp.path().join("missing")).contains("not found"));

    let d = copy_fixture("tiny-llada2", &tmp.path().join("1"));
    std::fs::remove_file(d.join("config.json")).unwrap();
    assert!(open_err(&d).contains("config.json"));

    let d = copy_fixture("tiny-llada2", &tmp.path().join("2"));
    std::fs::write(
        d.join("model.safetensors.index.json"),
        "{\"weight_map\": 3}",
    )
    .unwrap();
    assert!(open_err(&d).contains("weight_map"));

    let d = copy_fixture("tiny-llada2-add", &tmp.path().join("3"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("model.safetensors"))
        .unwrap();
    f.set_len(1000).unwrap();
    assert!(open_err(&d).contains("truncated"));

    let d = copy_fixture("tiny-llada2-add", &tmp.path().join("4"));
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    assert!(open_err(&d).contains("config.json"));
}

#[test]
fn bad_decoding_requests_are_errors() {
    let model = Model::open(&fixture("tiny-llada2")).unwrap();
    let ids = model.special_ids();
    let max = model.config.max_position_embeddings;
    for be in backends() {
        let mut backend = (be.make)(&model).unwrap();
        let mut run = |prompt: &[u32], p: DecodeParams| {
            generate(backend.as_mut(), &ids, max, prompt, &p, &mut |_| true)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let base = DecodeParams {
            gen_length: 8,
            ..Default::default()
        };
        assert!(run(
            &[1, 2],
            DecodeParams {
                block_length: 0,
                ..base.clone()
            }
        )
        .contains("block_length"));
        assert!(run(
            &[1, 2],
            DecodeParams {
                steps: 0,
                ..base.clone()
            }
        )
        .contains("steps"));
        assert!(run(
            &[1, 2],
            DecodeParams {
                threshold: 0.0,
                ..base.clone()
            }
        )
        .contains("threshold"));
        assert!(run(
            &[1, 2],
            DecodeParams {
                top_p: 1.5,
                ..base.clone()
            }
        )
        .contains("top_p"));
        assert!(run(
            &[1, 2],
            DecodeParams {
                temperature: f32::NAN,
                ..base.clone()
            }
        )
        .contains("temperature"));
        assert!(run(&vec![1; max], base.clone()).contains("max_position_embeddings"));
        assert!(run(&[ids.valid_vocab], base.clone()).contains("outside the vocabulary"));
        // Cancellation from the consumer stops decoding with an error, not a panic.
        let e = generate(backend.as_mut(), &ids, max, &[1, 2], &base, &mut |_| false).unwrap_err();
        assert!(e.to_string().contains("cancelled"));
    }
}
