//! Tokenizer and chat-template goldens (`golden/tokenizer.json`), for every golden model.

use serde::Deserialize;
use unmask_core::{ChatTokenizer, Message};
use unmask_tests::{golden_models, read_json};

#[derive(Deserialize)]
struct TokGolden {
    cases: Vec<TokCase>,
    chat: Vec<ChatCase>,
}

#[derive(Deserialize)]
struct TokCase {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct ChatCase {
    messages: Vec<Message>,
    add_generation_prompt: bool,
    rendered: String,
}

#[test]
fn tokenizer_and_chat_template_match_the_goldens() {
    let mut checked = 0;
    for dir in golden_models() {
        let path = dir.join("golden/tokenizer.json");
        if !path.exists() {
            continue;
        }
        let g: TokGolden = read_json(&path);
        let tok = ChatTokenizer::from_dir(&dir).unwrap();
        for c in &g.cases {
            assert_eq!(tok.encode(&c.text).unwrap(), c.ids, "encoding {:?}", c.text);
            // Decoding gives the text back (special tokens kept).
            assert_eq!(
                tok.decode_raw(&c.ids).unwrap(),
                c.text,
                "decoding {:?}",
                c.ids
            );
            checked += 1;
        }
        for c in &g.chat {
            let r = tok
                .render_chat(&c.messages, c.add_generation_prompt)
                .unwrap();
            assert_eq!(r, c.rendered);
            checked += 1;
        }
    }
    assert!(checked > 0, "no tokenizer goldens found");
}

#[test]
fn special_ids_are_resolved_by_token_string() {
    for dir in golden_models() {
        let tok = ChatTokenizer::from_dir(&dir).unwrap();
        assert_eq!(
            tok.id_to_token(tok.ids.eos).as_deref(),
            Some("<|endoftext|>")
        );
        assert_eq!(tok.id_to_token(tok.ids.mask).as_deref(), Some("<|mask|>"));
        assert!(tok.ids.valid_vocab as usize <= tok.vocab_size());
    }
}

#[test]
fn a_template_error_is_an_error_not_a_panic() {
    let dir = unmask_tests::fixture("tiny-llada2");
    let tok_json = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let cfg = br#"{"eos_token": "<|endoftext|>", "mask_token": "<|mask|>",
                   "chat_template": "{{ raise_exception('no system role') }}"}"#;
    let tok = ChatTokenizer::from_bytes(&tok_json, Some(cfg)).unwrap();
    let e = tok
        .render_chat(
            &[Message {
                role: "user".into(),
                content: "x".into(),
            }],
            true,
        )
        .unwrap_err();
    assert!(e.to_string().contains("no system role"), "{e}");
    let cfg = br#"{"eos_token": "<|nope|>"}"#;
    let e = ChatTokenizer::from_bytes(&tok_json, Some(cfg))
        .err()
        .unwrap();
    assert!(e.to_string().contains("<|nope|>"), "{e}");
}
