//! Model directories built to hurt: names that escape the directory, a FIFO, sizes that would
//! make the graph builder crawl, NaN weights, and LLaDA2.2 fields that do not fit. Each is a
//! prompt, clear error (never a hang, a panic or silent garbage).

use std::path::Path;
use std::time::{Duration, Instant};
use unmask_core::{generate, DecodeParams, Error, Model};
use unmask_tests::{copy_fixture, fixture};

fn open_err(dir: &Path) -> String {
    match Model::open(dir) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// Points the index's first shard at `target`.
fn redirect_first_shard(dir: &Path, target: &str) {
    edit_json(&dir.join("model.safetensors.index.json"), |v| {
        let map = v["weight_map"].as_object_mut().unwrap();
        let first = map.keys().next().unwrap().clone();
        map.insert(first, target.into());
    });
}

#[test]
fn an_index_cannot_name_files_outside_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = copy_fixture("tiny-llada2", &tmp.path().join("other"));
    for (i, target) in [
        "../../other/tiny-llada2/model-00001-of-00002.safetensors".to_string(),
        outside
            .join("model-00001-of-00002.safetensors")
            .display()
            .to_string(),
        "/etc/passwd".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let d = copy_fixture("tiny-llada2", &tmp.path().join(format!("m{i}")));
        redirect_first_shard(&d, target);
        let e = open_err(&d);
        assert!(
            e.contains("not a file name inside the model directory")
                || e.contains("outside the model directory"),
            "{target}: {e}"
        );
    }
    // A symlinked shard that leaves the directory is refused as well.
    let d = copy_fixture("tiny-llada2", &tmp.path().join("link"));
    let shard = d.join("model-00001-of-00002.safetensors");
    std::fs::remove_file(&shard).unwrap();
    std::os::unix::fs::symlink(outside.join("model-00001-of-00002.safetensors"), &shard).unwrap();
    assert!(open_err(&d).contains("outside the model directory"));
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let d = copy_fixture("tiny-llada2", &tmp.path().join("fifo"));
    let fifo = d.join("fifo.safetensors");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    redirect_first_shard(&d, "fifo.safetensors");
    let t = Instant::now();
    let e = open_err(&d);
    assert!(e.contains("not a regular file"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // A FIFO config.json likewise.
    let d = copy_fixture("tiny-llada2", &tmp.path().join("fifo2"));
    std::fs::remove_file(d.join("config.json")).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(d.join("config.json"))
        .status()
        .unwrap()
        .success());
    assert!(open_err(&d).contains("not a regular file"));
}

#[test]
fn huge_sizes_are_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = copy_fixture("tiny-llada2", &tmp.path().join("layers"));
    edit_json(&d.join("config.json"), |v| {
        v["num_hidden_layers"] = 100_000.into()
    });
    let t = Instant::now();
    let e = open_err(&d);
    assert!(e.contains("num_hidden_layers") && e.contains("1024"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // Within the bounds the graph builder is linear: 1024 layers of 256 experts (790k tensors)
    // are described quickly (the shapes then fail against the file).
    let mut c = unmask_core::Config::from_json_str(
        &std::fs::read_to_string(fixture("tiny-llada2").join("config.json")).unwrap(),
    )
    .unwrap();
    c.num_hidden_layers = 1024;
    c.num_experts = 256;
    c.n_group = 8;
    let t = Instant::now();
    let g = unmask_core::model::llada2::build(&c);
    assert!(g.weights.len() > 700_000);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

/// Overwrites every value of tensor `name` in a single-file model with a bf16 NaN.
fn poison(dir: &Path, name: &str) {
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header[name];
    assert_eq!(t["dtype"], "BF16");
    let (a, b) = (
        t["data_offsets"][0].as_u64().unwrap() as usize,
        t["data_offsets"][1].as_u64().unwrap() as usize,
    );
    for c in bytes[8 + n + a..8 + n + b].chunks_exact_mut(2) {
        c.copy_from_slice(&0x7fc0u16.to_le_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn a_nan_weight_is_an_error_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let d = copy_fixture("tiny-llada2-add", tmp.path());
    let tensor = "model.layers.0.post_attention_layernorm.weight";
    poison(&d, tensor);
    let model = Model::open(&d).unwrap();
    let mut backend =
        unmask_core::ReferenceBackend::new(model.graph.clone(), &model.weights, &mut |_, _| {})
            .unwrap();
    let prompt = model.tokenizer.encode("What is 1+1?").unwrap();
    let e = generate(
        &mut backend,
        &model.special_ids(),
        model.config.max_position_embeddings,
        &prompt,
        &DecodeParams {
            gen_length: 8,
            ..Default::default()
        },
        &mut |_| true,
    )
    .unwrap_err();
    assert!(matches!(e, Error::NonFinite { forward: 0, .. }), "{e}");
    let e = model.explain(e).to_string();
    assert!(e.contains(tensor) && e.contains("NaN"), "{e}");
}

#[test]
fn llada22_fields_that_do_not_fit_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = copy_fixture("tiny-llada2.2", &tmp.path().join("cap"));
    edit_json(&d.join("config.json"), |v| v["expert_capacity"] = 17.into());
    let e = open_err(&d);
    assert!(
        e.contains("expert_capacity") && e.contains("num_experts"),
        "{e}"
    );
    let d = copy_fixture("tiny-llada2.2", &tmp.path().join("ids"));
    edit_json(&d.join("config.json"), |v| {
        v["split_token_id"] = 3840.into()
    });
    let e = open_err(&d);
    assert!(e.contains("split_token_id") && e.contains("3840"), "{e}");
    let d = copy_fixture("tiny-llada2.2", &tmp.path().join("rope"));
    edit_json(&d.join("config.json"), |v| {
        v["rope_parameters"]["rope_theta"] = 10000.into()
    });
    assert!(open_err(&d).contains("disagree"));

    // A decode block that is not a multiple of the routing block, and a prompt with an edit
    // token, under every decoder.
    let model = Model::open(&fixture("tiny-llada2.2")).unwrap();
    let ids = model.special_ids();
    let mut backend =
        unmask_core::ReferenceBackend::new(model.graph.clone(), &model.weights, &mut |_, _| {})
            .unwrap();
    for decoder in unmask_core::decode::Decoder::ALL {
        let p = DecodeParams {
            block_length: 16,
            ..DecodeParams::for_decoder(decoder)
        };
        let e = generate(&mut backend, &ids, 4096, &[5, 6], &p, &mut |_| true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("multiple of the model's routing block"),
            "{decoder}: {e}"
        );
    }
    let p = DecodeParams::for_decoder(unmask_core::decode::Decoder::Llada22);
    let e = generate(
        &mut backend,
        &ids,
        4096,
        &[5, ids.delete.unwrap()],
        &p,
        &mut |_| true,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("DELETE"), "{e}");
    // The llada2.2 decoder on a model without edit tokens.
    let plain = Model::open(&fixture("tiny-llada2")).unwrap();
    let mut backend =
        unmask_core::ReferenceBackend::new(plain.graph.clone(), &plain.weights, &mut |_, _| {})
            .unwrap();
    let e = generate(
        &mut backend,
        &plain.special_ids(),
        4096,
        &[5],
        &p,
        &mut |_| true,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("delete_token_id"), "{e}");
}

/// The fixture's tokenizer with `chat_template` set to `template` (a JSON value).
fn tokenizer_with(template: serde_json::Value) -> unmask_core::Result<unmask_core::ChatTokenizer> {
    let dir = fixture("tiny-llada2");
    let tok = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    cfg["chat_template"] = template;
    unmask_core::ChatTokenizer::from_bytes(&tok, Some(cfg.to_string().as_bytes()))
}

#[test]
fn templates_that_loop_or_explode_are_errors_in_bounded_time() {
    let msg = [unmask_core::Message {
        role: "user".into(),
        content: "hi".into(),
    }];
    let doubled = format!(
        "{{% set a = 'ab' %}}{}{{{{ a | length }}}}",
        "{% set a = a ~ a %}".repeat(36)
    );
    let cases = [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "template instructions",
        ),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxxxxxxxx{% endfor %}{% endfor %}",
            "longer than",
        ),
        // Memory built up in variables, never written: only the render's process limit stops it.
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
            "MiB of memory",
        ),
        (
            doubled.as_str(),
            "MiB of memory",
        ),
    ];
    for (template, needle) in cases {
        let t = Instant::now();
        let e = tokenizer_with(template.into())
            .unwrap()
            .render_chat(&msg, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{template}: {e}");
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    }
    // A template of the wrong type is named as such, not reported missing.
    let e = tokenizer_with(12345.into()).err().unwrap().to_string();
    assert!(e.contains("must be a string") && e.contains("12345"), "{e}");
}

/// A render whose request is cancelled stops at the next turn of a loop, long before its fuel
/// would run out.
#[test]
fn a_cancelled_render_stops_at_once() {
    let msg = [unmask_core::Message {
        role: "user".into(),
        content: "hi".into(),
    }];
    let tok = tokenizer_with(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}".into(),
    )
    .unwrap();
    let t = Instant::now();
    assert!(tok.render_chat(&msg, true).is_err());
    let full = t.elapsed();
    let cancel = unmask_core::chat::Cancel::default();
    let setter = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(full / 10);
            cancel.set();
        })
    };
    let t = Instant::now();
    let e = tok
        .render_chat_cancellable(&msg, true, &cancel)
        .unwrap_err();
    let cancelled = t.elapsed();
    setter.join().unwrap();
    eprintln!(
        "render to the fuel limit: {full:?}; cancelled after {:?}: {cancelled:?}",
        full / 10
    );
    assert!(matches!(e, unmask_core::Error::Cancelled), "{e}");
    assert!(cancelled < full / 2, "{cancelled:?} of {full:?}");
}

#[test]
fn quantize_follows_hub_symlinks_keeps_permissions_and_cleans_up_when_cancelled() {
    use std::os::unix::fs::PermissionsExt;
    use unmask_core::quant::{quantize_dir, quantize_dir_cancellable, QuantFormat, QuantPlan};
    let tmp = tempfile::tempdir().unwrap();
    // A Hugging Face cache entry: every snapshot file is a symlink into blobs/.
    let entry = tmp.path().join("models--org--tiny");
    let snap = entry.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(entry.join("blobs")).unwrap();
    for e in std::fs::read_dir(fixture("tiny-llada2-add")).unwrap() {
        let e = e.unwrap();
        if !e.file_type().unwrap().is_file() {
            continue;
        }
        let blob = entry
            .join("blobs")
            .join(format!("blob-{}", e.file_name().to_string_lossy()));
        std::fs::copy(e.path(), &blob).unwrap();
        std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o444)).unwrap();
        std::os::unix::fs::symlink(&blob, snap.join(e.file_name())).unwrap();
    }
    let model = Model::open(&snap).unwrap();
    let plan = QuantPlan {
        format: QuantFormat::Q8_0,
        embedding: true,
    };
    let out = tmp.path().join("q8");
    quantize_dir(&model, &out, &plan, usize::MAX, &mut |_, _| {}).unwrap();
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        let m = std::fs::metadata(out.join(name)).unwrap();
        assert!(m.is_file(), "{name} copied");
        let mode = m.permissions().mode() & 0o777;
        assert_eq!(
            mode & 0o022,
            0,
            "{name}: mode {mode:o} is writable by others"
        );
        assert_ne!(mode & 0o200, 0, "{name}: mode {mode:o}");
    }
    assert!(Model::open(&out).is_ok());

    // Cancelled after the third tensor: nothing is left.
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let out = tmp.path().join("cancelled");
    let e = quantize_dir_cancellable(
        &model,
        &out,
        &plan,
        usize::MAX,
        &mut |done, _| {
            if done == 3 {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        },
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");
    assert!(!out.exists());
}
