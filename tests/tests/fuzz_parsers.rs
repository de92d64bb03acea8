//! A fuzz campaign for every parser of untrusted input (see `unmask_tests::fuzz`): the
//! safetensors header and offsets, config.json (through the graph builder), the shard index,
//! tokenizer_config.json with its chat template, generation_config.json, and the server's request
//! bodies. Each starts from valid files and the checked-in corpus (`tests/corpus/<target>/`),
//! whose every file is also a regression test of its own.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use unmask_core::chat::Cancel;
use unmask_core::config::Config;
use unmask_core::decode::defaults::ModelDefaults;
use unmask_core::decode::Decoder;
use unmask_core::weights::{add_shard, load_dir, Storage, WeightStore};
use unmask_core::{ChatTokenizer, Message, Model};
use unmask_tests::fixture;
use unmask_tests::fuzz::{check_corpus, corpus, Campaign};

const MODELS: [&str; 3] = ["tiny-llada2", "tiny-llada2-add", "tiny-llada2.2"];

/// `files` and the corpus of `target`, less the corpus files whose name contains `loop` (their
/// mutants would loop too, each for the template's whole fuel: they run once, as regression
/// tests).
fn seeds(files: Vec<Vec<u8>>, target: &str) -> Vec<Vec<u8>> {
    let corpus = corpus(target)
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().contains("loop"))
        .map(|(_, b)| b);
    files.into_iter().chain(corpus).collect()
}

fn campaign(name: &str, seeds: Vec<Vec<u8>>, iterations: usize) -> Campaign<'_> {
    Campaign {
        name,
        seeds,
        iterations,
        focus: 0,
        json: true,
        time_limit: Duration::from_secs(20),
    }
}

#[test]
fn safetensors_headers_and_offsets() {
    let shard =
        std::fs::read(fixture("tiny-llada2").join("model-00001-of-00002.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(shard[..8].try_into().unwrap()) as usize;
    let mut parse = |b: &[u8]| {
        let mut store = WeightStore::default();
        match add_shard(&mut store, Arc::new(Storage::Owned(b.to_vec())), "fuzz") {
            // Every tensor it accepted can be read whole.
            Ok(()) => {
                let _ = store.first_non_finite();
                for (_, t) in store.iter() {
                    let _ = t.to_f32();
                }
                true
            }
            Err(_) => false,
        }
    };
    let n = check_corpus("safetensors", &mut parse);
    let mut c = campaign("safetensors", seeds(vec![shard], "safetensors"), 400);
    c.focus = header;
    c.json = false;
    let o = c.run(&mut parse);
    assert!(o.accepted > 0 && o.refused > n);
}

#[test]
fn config_json_through_the_graph_builder() {
    for name in MODELS {
        let dir = fixture(name);
        let model = Model::open(&dir).unwrap();
        let shapes = |t: &str| model.weights.get(t).ok().map(|t| t.shape.clone());
        let mut parse = |b: &[u8]| {
            let Ok(text) = std::str::from_utf8(b) else {
                return false;
            };
            match Config::from_json_str(text) {
                Ok(c) => Model::check_parts(&c, &model.tokenizer, &shapes).is_ok(),
                Err(_) => false,
            }
        };
        // The corpus is tiny-llada2's config made bad a field at a time.
        if name == "tiny-llada2" {
            check_corpus("config", &mut parse);
        }
        let own = std::fs::read(dir.join("config.json")).unwrap();
        let label = format!("config ({name})");
        let o = campaign(&label, seeds(vec![own], "config"), 300).run(&mut parse);
        assert!(o.accepted > 0 && o.refused > 0);
    }
}

#[test]
fn shard_index_names_only_files_inside_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    let src = fixture("tiny-llada2");
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    // Things an index may name that must never be opened.
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd-link")).unwrap();
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    std::fs::write(tmp.path().join("outside.safetensors"), b"x").unwrap();
    let index = dir.join("model.safetensors.index.json");
    let mut parse = |b: &[u8]| {
        std::fs::write(&index, b).unwrap();
        load_dir(&dir).is_ok()
    };
    check_corpus("index", &mut parse);
    let own = std::fs::read(src.join("model.safetensors.index.json")).unwrap();
    let o = campaign("index", seeds(vec![own], "index"), 300).run(&mut parse);
    assert!(o.accepted > 0 && o.refused > 0);
}

#[test]
fn tokenizer_config_and_chat_templates() {
    let dir = fixture("tiny-llada2-add");
    let tokenizer = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let messages = [
        Message {
            role: "system".into(),
            content: "be brief".into(),
        },
        Message {
            role: "user".into(),
            content: "What is 23+45?".into(),
        },
    ];
    let mut parse = |b: &[u8]| match ChatTokenizer::from_bytes(&tokenizer, Some(b)) {
        Ok(t) => t
            .render_chat_cancellable(&messages, true, &Cancel::default())
            .and_then(|text| t.encode(&text))
            .is_ok(),
        Err(_) => false,
    };
    check_corpus("tokenizer_config", &mut parse);
    let own: Vec<Vec<u8>> = MODELS
        .iter()
        .map(|m| std::fs::read(fixture(m).join("tokenizer_config.json")).unwrap())
        .collect();
    let o = campaign("tokenizer_config", seeds(own, "tokenizer_config"), 200).run(&mut parse);
    assert!(o.accepted > 0 && o.refused > 0);
}

#[test]
fn generation_config_gives_valid_defaults_or_none() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("tiny-llada2.2");
    let config =
        Config::from_json_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let file = tmp.path().join("generation_config.json");
    let mut parse = |b: &[u8]| {
        std::fs::write(&file, b).unwrap();
        let d = ModelDefaults::from_dir(tmp.path(), &config, None);
        let _ = unmask_core::decode::defaults::extra_eos(tmp.path(), 0);
        // Whatever the file says, the defaults built from it are valid parameters.
        for decoder in Decoder::ALL {
            let p = d.params_for(decoder);
            assert!(p.validate().is_ok(), "{p:?}");
        }
        serde_json::from_slice::<serde_json::Value>(b).is_ok()
    };
    let mut seeds = vec![
        json!({ "eos_token_id": [1, 2], "temperature": 0.0, "top_p": 1.0, "top_k": 5 })
            .to_string()
            .into_bytes(),
    ];
    if let Ok(b) = std::fs::read(src.join("generation_config.json")) {
        seeds.push(b);
    }
    let o = campaign("generation_config", seeds, 300).run(&mut parse);
    assert!(o.accepted > 0);
}

#[test]
fn request_bodies() {
    let model = Model::open(&fixture("tiny-llada2-add")).unwrap();
    let defaults = ModelDefaults::from_dir(&model.dir, &model.config, None);
    let per_decoder: Vec<_> = Decoder::ALL
        .iter()
        .map(|&d| defaults.params_for(d))
        .collect();
    let base = defaults.params();
    let cancel = Cancel::default();
    let cx = unmask_server::params::Context {
        model: &model,
        model_id: "m",
        defaults: &base,
        per_decoder: &per_decoder,
        cancel: &cancel,
        max_tokens: Some(4096),
    };
    let mut parse = |b: &[u8]| {
        let chat = unmask_server::params::chat_request(&cx, b);
        let text = unmask_server::params::completion_request(&cx, b);
        // Whatever was accepted is within the bounds the decoder relies on.
        for r in [&chat, &text].into_iter().flatten() {
            assert!(r.params.validate().is_ok(), "{:?}", r.params);
            assert!(r.prompt.len() + r.params.gen_length <= model.context_limit());
        }
        chat.is_ok() || text.is_ok()
    };
    check_corpus("request", &mut parse);
    let own = [
        json!({ "model": "m", "messages": [{ "role": "user", "content": "What is 23+45?" }],
                "max_tokens": 8, "temperature": 0.7, "seed": 3, "stop": ["\n"], "stream": true }),
        json!({ "prompt": "1+1=", "max_tokens": 4, "block_length": 8, "steps": 4,
                "decoder": "llada2.1", "threshold": 0.9, "editing_threshold": 0.5 }),
        json!({ "prompt": [[1, 2, 3]], "max_completion_tokens": 2, "top_k": 3, "top_p": 0.5,
                "decoder": "llada2.2", "stream_options": { "include_usage": true } }),
    ];
    let own = own.iter().map(|v| v.to_string().into_bytes()).collect();
    let o = campaign("request", seeds(own, "request"), 3000).run(&mut parse);
    assert!(o.accepted > 0 && o.refused > 0);
}
