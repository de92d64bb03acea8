//! End to end through the `unmask` binary: golden cases, batch files, inspect, and bad input.

use serde_json::Value;
use std::path::Path;
use std::process::Output;
use unmask_tests::{fixture, generate_goldens, golden_models};

mod common;
use common::{assert_clean_error, generate_on, stdout_json, unmask};

#[test]
fn json_generation_reproduces_every_golden_case() {
    for dir in golden_models() {
        for (path, golden) in generate_goldens(&dir) {
            for case in &golden.cases {
                let ids: Vec<String> = case.prompt_ids.iter().map(u32::to_string).collect();
                let mut args = vec![
                    "generate".to_string(),
                    "--model".into(),
                    dir.display().to_string(),
                    "--prompt-ids".into(),
                    ids.join(","),
                    "--gen-length".into(),
                    case.gen_length.to_string(),
                    "--block-length".into(),
                    case.block_length.to_string(),
                    "--threshold".into(),
                    case.threshold.to_string(),
                    "--backend".into(),
                    "cpu".into(),
                    "--json".into(),
                ];
                let decoder = case.decoder.or(golden.decoder);
                if let Some(d) = decoder {
                    args.extend(["--decoder".into(), d.to_string()]);
                }
                let optional = [
                    ("--steps", case.steps.map(|v| v.to_string())),
                    (
                        "--editing-threshold",
                        case.editing_threshold.map(|v| v.to_string()),
                    ),
                    (
                        "--max-post-steps",
                        case.max_post_steps.map(|v| v.to_string()),
                    ),
                    (
                        "--num-to-transfer",
                        case.num_to_transfer.map(|v| v.to_string()),
                    ),
                    ("--minimal-topk", case.minimal_topk.map(|v| v.to_string())),
                    (
                        "--max-steps-per-block",
                        case.max_steps_per_block.map(|v| v.to_string()),
                    ),
                ];
                for (flag, v) in optional {
                    if let Some(v) = v {
                        args.extend([flag.to_string(), v]);
                    }
                }
                // The golden files write the official flag (false is its default).
                args.push(if case.eos_early_stop {
                    "--eos-early-stop".into()
                } else {
                    "--no-eos-early-stop".into()
                });
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let o = unmask(&refs);
                let what = format!("{}: {}", path.display(), case.name);
                let v = stdout_json(&o);
                let tokens: Vec<u32> = serde_json::from_value(v["tokens"].clone()).unwrap();
                assert_eq!(tokens, case.output_ids, "{what}");
                assert_eq!(
                    v["forwards"].as_u64().unwrap() as usize,
                    case.forwards,
                    "{what}"
                );
                // Which decoder ran, and why (detected from the model when not named).
                let want = decoder.map_or(
                    if dir.ends_with("tiny-llada2.2") {
                        "llada2.2"
                    } else {
                        "llada2.0"
                    },
                    |d| d.name(),
                );
                assert_eq!(v["decoder"], want, "{what}");
                let stderr = String::from_utf8_lossy(&o.stderr);
                assert!(stderr.contains(&format!("decoder: {want}")), "{stderr}");
                assert!(v["elapsed_ms"].as_f64().unwrap() >= 0.0);
                assert!(v["text"].is_string());
            }
        }
    }
}

#[test]
fn decoder_flags_and_bad_llada22_requests_are_clear() {
    let dir = fixture("tiny-llada2.2");
    let d = dir.to_str().unwrap();
    // A block length that is not a multiple of the routing block.
    assert_clean_error(
        &unmask(&[
            "generate",
            "--model",
            d,
            "--prompt-ids",
            "5,6",
            "--block-length",
            "16",
        ]),
        "multiple of the model's routing block",
    );
    assert_clean_error(
        &unmask(&[
            "generate",
            "--model",
            d,
            "--prompt-ids",
            "5",
            "--decoder",
            "llada3",
        ]),
        "llada3",
    );
    // The presets are printed by --help.
    let o = unmask(&["generate", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for s in [
        "speed",
        "--threshold 0.5 --editing-threshold 0.0",
        "--no-eos-early-stop",
    ] {
        assert!(help.contains(s), "--help lacks {s:?}");
    }
    // A 2.0 model decoded with 2.1 editing, by flag.
    let o = unmask(&[
        "generate",
        "--model",
        fixture("tiny-llada2").to_str().unwrap(),
        "--prompt-ids",
        "5,6,7",
        "--gen-length",
        "8",
        "--decoder",
        "llada2.1",
        "--mode",
        "speed",
        "--backend",
        "cpu",
        "--json",
    ]);
    let v = stdout_json(&o);
    assert_eq!(v["decoder"], "llada2.1");
}

#[test]
fn chat_on_the_addition_model_answers() {
    let dir = fixture("tiny-llada2-add");
    let o = unmask(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--chat",
        "What is 23+45?",
        "--backend",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "68");
}

#[test]
fn batch_file_answers_each_line_in_order_and_reports_bad_lines() {
    let dir = fixture("tiny-llada2-add");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    let output = tmp.path().join("out.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"chat\": \"What is 23+45?\"}\n",
            "{\"prompt\": \"What\", \"block_length\": 0}\n",
            "not json\n",
            "\n",
            "{\"chat\": [{\"role\": \"user\", \"content\": \"What is 10+12?\"}], \"gen_length\": 16, \"id\": 7}\n",
            "{\"prompt_ids\": [1, 2], \"chat\": \"both\"}\n",
        ),
    )
    .unwrap();
    let o = unmask(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    // Every line is answered, and the failures make the exit status non-zero.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("2 answered, 3 failed") && !err.contains("panicked"),
        "{err}"
    );
    let lines: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["text"], "68");
    assert!(lines[0]["forwards"].as_u64().unwrap() >= 1);
    assert!(lines[1]["error"].as_str().unwrap().contains("block_length"));
    assert!(lines[2]["error"].as_str().unwrap().contains("malformed"));
    assert_eq!(lines[3]["text"], "22");
    assert_eq!(lines[3]["id"], 7);
    assert!(lines[4]["error"].as_str().unwrap().contains("exactly one"));
}

#[test]
fn inspect_reports_parameters_and_memory() {
    let dir = fixture("tiny-llada2");
    let v = stdout_json(&unmask(&[
        "inspect",
        "--model",
        dir.to_str().unwrap(),
        "--json",
    ]));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(v["config"]["hidden_size"], config["hidden_size"]);
    let s = &v["summary"];
    assert!(s["parameters"].as_u64().unwrap() > s["active_parameters"].as_u64().unwrap());
    assert!(s["memory_full_context"].as_u64().unwrap() > s["weight_bytes"].as_u64().unwrap());
    let o = unmask(&["inspect", "--model", dir.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("parameters"));
}

/// Copies a fixture so that a test may damage its copy.
fn damaged_copy(name: &str, tmp: &Path) -> std::path::PathBuf {
    let src = fixture(name);
    let dst = tmp.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    dst
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut Value)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn gen_on(dir: &Path, extra: &[&str]) -> Output {
    generate_on(dir, &[&["--backend", "cpu"], extra].concat())
}

#[test]
fn bad_input_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();

    // Missing model directory and missing files.
    assert_clean_error(
        &gen_on(&tmp.path().join("nope"), &["--prompt", "x"]),
        "not found",
    );
    let d = damaged_copy("tiny-llada2", &tmp.path().join("a"));
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    assert_clean_error(&gen_on(&d, &["--prompt", "x"]), "tokenizer.json");
    let d = damaged_copy("tiny-llada2", &tmp.path().join("b"));
    std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap();
    assert_clean_error(
        &gen_on(&d, &["--prompt", "x"]),
        "model-00002-of-00002.safetensors",
    );

    // A truncated shard.
    let d = damaged_copy("tiny-llada2", &tmp.path().join("c"));
    let shard = d.join("model-00001-of-00002.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    f.set_len(len / 2).unwrap();
    assert_clean_error(&gen_on(&d, &["--prompt", "x"]), "truncated");
    // Truncated inside the header.
    f.set_len(20).unwrap();
    assert_clean_error(
        &gen_on(&d, &["--prompt", "x"]),
        "model-00001-of-00002.safetensors",
    );

    // A shape that disagrees with the config.
    let d = damaged_copy("tiny-llada2", &tmp.path().join("d"));
    edit_config(&d, |v| {
        let i = v["intermediate_size"].as_u64().unwrap();
        v["intermediate_size"] = (i + 8).into();
    });
    assert_clean_error(&gen_on(&d, &["--prompt", "x"]), "the config implies");

    // Unknown model type; a missing config field.
    let d = damaged_copy("tiny-llada2", &tmp.path().join("e"));
    edit_config(&d, |v| v["model_type"] = "llama".into());
    assert_clean_error(&gen_on(&d, &["--prompt", "x"]), "llama");
    edit_config(&d, |v| {
        v["model_type"] = "llada2_moe".into();
        v.as_object_mut().unwrap().remove("num_experts");
    });
    assert_clean_error(&gen_on(&d, &["--prompt", "x"]), "num_experts");

    // Bad decoding parameters and a prompt beyond the context.
    let ok = fixture("tiny-llada2");
    assert_clean_error(
        &gen_on(&ok, &["--prompt", "x", "--block-length", "0"]),
        "block_length",
    );
    assert_clean_error(
        &gen_on(&ok, &["--prompt", "x", "--threshold", "1.5"]),
        "threshold",
    );
    assert_clean_error(&gen_on(&ok, &["--prompt", "x", "--steps", "0"]), "steps");
    // Sizes that once made the process allocate itself to death are refused up front.
    assert_clean_error(
        &gen_on(&ok, &["--prompt", "x", "--steps", "10000000000"]),
        "steps (10000000000) is larger than 65536",
    );
    assert_clean_error(
        &gen_on(&ok, &["--prompt", "x", "--gen-length", "1000000000"]),
        "gen_length must be in 1..=1048576",
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(ok.join("config.json")).unwrap()).unwrap();
    let max = config["max_position_embeddings"].as_u64().unwrap() as usize;
    let long: Vec<String> = std::iter::repeat_n("1".to_string(), max + 1).collect();
    assert_clean_error(
        &gen_on(&ok, &["--prompt-ids", &long.join(","), "--gen-length", "8"]),
        "max_position_embeddings",
    );
    assert_clean_error(
        &gen_on(
            &ok,
            &["--prompt", "x", "--gen-length", "64", "--max-context", "32"],
        ),
        "--max-context",
    );
    assert_clean_error(
        &gen_on(&ok, &["--prompt", "x", "--max-context", "0"]),
        "--max-context must be at least 1",
    );
    assert_clean_error(
        &gen_on(&ok, &["--prompt-ids", "1,99999999"]),
        "outside the vocabulary",
    );
    assert_clean_error(&gen_on(&ok, &[]), "--prompt");
    assert_clean_error(
        &gen_on(
            &ok,
            &["--prompt", "x", "--output", "/tmp/never-written.jsonl"],
        ),
        "--output is for the answers of a batch",
    );
    // Errors say each thing once, and a file given as the model says so.
    let o = unmask(&["generate", "--model", "/nonexistent-model", "--prompt", "x"]);
    assert_clean_error(&o, "model directory not found");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("not found").count(), 1, "{err}");
    assert_eq!(err.matches("/nonexistent-model").count(), 1, "{err}");
    let readme = ok.join("config.json");
    assert_clean_error(
        &unmask(&[
            "generate",
            "--model",
            readme.to_str().unwrap(),
            "--prompt",
            "x",
        ]),
        "not a directory",
    );
    let empty = tempfile::tempdir().unwrap();
    let o = unmask(&[
        "generate",
        "--model",
        empty.path().to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    assert_clean_error(&o, "config.json");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}

#[test]
fn streamed_text_equals_the_json_text_even_when_the_block_runs_past_gen_length() {
    let dir = fixture("tiny-llada2-add");
    let d = dir.to_str().unwrap();
    for gen in ["1", "2", "16"] {
        let base = [
            "generate",
            "--model",
            d,
            "--chat",
            "What is 97+70?",
            "--backend",
            "cpu",
            "--gen-length",
            gen,
        ];
        let streamed = unmask(&base);
        assert!(streamed.status.success());
        let mut with_json = base.to_vec();
        with_json.push("--json");
        let v = stdout_json(&unmask(&with_json));
        assert_eq!(
            String::from_utf8_lossy(&streamed.stdout).trim_end_matches('\n'),
            v["text"].as_str().unwrap(),
            "gen_length {gen}"
        );
    }
}
