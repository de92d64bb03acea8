//! `unmask quantize`, `--quantize` and `inspect`'s memory per format, through the binary.

use serde_json::Value;
use std::path::Path;
use std::process::Output;
use unmask_tests::fixture;

mod common;
use common::{assert_clean_error, generate_on, stdout_json, unmask};

/// The bounds on `unmask quantize --json`: bits per weight and relative RMSE.
const BOUNDS: [(&str, f64, f64); 2] = [("q8_0", 8.5, 0.006), ("q4", 4.6, 0.080)];

/// `unmask quantize --model src --out out --format format [extra...]`.
fn quantize(src: &Path, out: &Path, format: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        format,
    ];
    args.extend_from_slice(extra);
    unmask(&args)
}

/// `unmask generate --model src --chat "What is 23+45?" [extra...]`.
fn ask(src: &Path, extra: &[&str]) -> Output {
    generate_on(src, &[&["--chat", "What is 23+45?"], extra].concat())
}

/// Runs `unmask quantize --json` of `src` into `out` and checks the report against `BOUNDS`.
fn quantize_json(src: &Path, out: &Path, (format, max_bits, max_rmse): (&str, f64, f64)) -> Value {
    let v = stdout_json(&quantize(src, out, format, &["--json"]));
    let bits = v["bits_per_weight"].as_f64().unwrap();
    let rmse = v["rel_rmse"].as_f64().unwrap();
    println!(
        "{}: {format}: {bits} bits/weight, rel_rmse {rmse}",
        src.display()
    );
    assert!(
        bits <= max_bits && rmse <= max_rmse,
        "{format}: {bits} {rmse}"
    );
    v
}

/// The bounds hold on the random fixture too, whose 48-column expert rows are not whole blocks
/// (the last block of a row absorbs the leftover columns instead of padding).
#[test]
fn quantize_json_meets_the_size_and_error_bounds_on_the_random_fixture() {
    let src = fixture("tiny-llada2");
    let tmp = tempfile::tempdir().unwrap();
    for b in BOUNDS {
        quantize_json(&src, &tmp.path().join(b.0), b);
    }
}

#[test]
fn quantize_writes_a_directory_that_loads_and_answers() {
    let src = fixture("tiny-llada2-add");
    let tmp = tempfile::tempdir().unwrap();
    for b in BOUNDS {
        let format = b.0;
        let out = tmp.path().join(format);
        let v = quantize_json(&src, &out, b);
        assert_eq!(v["format"], format);
        let tensors = v["tensors"].as_array().unwrap();
        assert_eq!(
            tensors.len(),
            v["quantized_tensors"].as_u64().unwrap() as usize
        );
        let names: Vec<&str> = tensors
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"lm_head.weight"));
        assert!(names.contains(&"model.word_embeddings.weight"));
        assert!(!names
            .iter()
            .any(|n| n.contains("norm") || n.ends_with("mlp.gate.weight")));
        for t in tensors {
            assert!(t["rel_rmse"].as_f64().unwrap() > 0.0, "{t}");
        }
        // Config and tokenizer files are copied; the checksums of the originals are not.
        for f in [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "model.safetensors",
        ] {
            assert!(out.join(f).is_file(), "{format}: {f}");
        }
        assert!(!out.join("SHA256SUMS").exists());

        // The directory loads like any model and answers.
        let g = stdout_json(&unmask(&[
            "generate",
            "--model",
            out.to_str().unwrap(),
            "--chat",
            "What is 97+70?",
            "--backend",
            "cpu",
            "--json",
        ]));
        assert_eq!(g["text"].as_str().unwrap().trim(), "167", "{format}: {g}");
        let i = stdout_json(&unmask(&[
            "inspect",
            "--model",
            out.to_str().unwrap(),
            "--json",
        ]));
        assert!(
            i["summary"]["bytes_by_dtype"][format].as_u64().unwrap() > 0,
            "{i}"
        );

        // A non-empty output directory is refused; quantizing a quantized model too.
        let again = quantize(&src, &out, format, &[]);
        assert_clean_error(&again, "not empty");
        let twice = quantize(
            &out,
            &tmp.path().join(format!("{format}-again")),
            format,
            &[],
        );
        assert_clean_error(&twice, "already quantized");
        assert!(!tmp.path().join(format!("{format}-again")).exists());
    }
}

#[test]
fn quantize_on_the_fly_and_memory_per_format() {
    let src = fixture("tiny-llada2-add");
    for format in ["q8_0", "q4"] {
        let g = stdout_json(&ask(
            &src,
            &["--backend", "cpu", "--quantize", format, "--json"],
        ));
        assert_eq!(g["text"].as_str().unwrap().trim(), "68", "{format}: {g}");
    }
    let v = stdout_json(&unmask(&["inspect", "--shape", "mini", "--json"]));
    let m = v["memory_by_format"].as_array().unwrap();
    let per = |f: &str| {
        m.iter().find(|x| x["format"] == f).unwrap()["bytes_per_parameter"]
            .as_f64()
            .unwrap()
    };
    assert!(per("q4") <= 0.6, "{v}");
    assert!(per("q8_0") < per("bf16"));
    let text = unmask(&["inspect", "--model", src.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    for f in ["bf16", "q8_0", "q4"] {
        assert!(text.contains(&format!("as {f}")), "{text}");
    }
    assert_clean_error(
        &unmask(&[
            "quantize",
            "--model",
            "/nonexistent",
            "--out",
            "/tmp/x",
            "--format",
            "q4",
        ]),
        "/nonexistent",
    );
}

/// `--int8-dots` answers on cpu and on wgpu (where an adapter is here), and a backend without
/// integer products refuses it by name.
#[test]
fn int8_dots_answer_where_a_backend_has_them() {
    let src = fixture("tiny-llada2-add");
    let mut backends = vec!["cpu"];
    if unmask_tests::wgpu_or_skip() {
        backends.push("wgpu");
    }
    for backend in backends {
        for format in ["q8_0", "q4"] {
            let args = [
                "--backend",
                backend,
                "--quantize",
                format,
                "--int8-dots",
                "--json",
            ];
            let g = stdout_json(&ask(&src, &args));
            assert_eq!(
                g["text"].as_str().unwrap().trim(),
                "68",
                "{backend} {format}: {g}"
            );
        }
    }
    let cuda = ask(&src, &["--backend", "cuda", "--int8-dots"]);
    assert_clean_error(
        &cuda,
        "--int8-dots is a choice of the cpu and wgpu backends",
    );
}
