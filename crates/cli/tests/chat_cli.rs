//! `unmask chat` driven through stdin: answers stream to stdout, the history goes through the
//! chat template (seen in the prompt sizes it reports), `/reset` forgets it, `/exit` and EOF end
//! the session cleanly.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use unmask_core::{Message, Model};
use unmask_tests::fixture;

fn chat(input: &str, extra: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_unmask"))
        .args(["chat", "--model"])
        .arg(fixture("tiny-llada2-add"))
        .args(["--backend", "cpu"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run unmask chat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "unmask chat failed: {err}");
    assert!(!err.contains("panicked"), "{err}");
    o
}

/// The prompt sizes of each turn, from the `[N prompt tokens, ...]` lines on stderr.
fn prompt_sizes(o: &Output) -> Vec<usize> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| {
            l.strip_prefix('[')?
                .split(" prompt tokens")
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn msg(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
    }
}

#[test]
fn history_reset_and_eof() {
    let model = Model::open(&fixture("tiny-llada2-add")).unwrap();
    let o = chat(
        "What is 23+45?\n/reset\nWhat is 23+45?\nWhat is 97+70?\n",
        &[],
    );
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    let answers: Vec<&str> = out.lines().collect();
    assert_eq!(answers.len(), 3, "{out}");
    // After /reset the same question gets the same answer as in a fresh session.
    assert_eq!(answers[0], "68");
    assert_eq!(answers[1], "68");
    let t = &model.tokenizer;
    let q1 = [msg("user", "What is 23+45?")];
    let q2 = [
        msg("user", "What is 23+45?"),
        msg("assistant", answers[1]),
        msg("user", "What is 97+70?"),
    ];
    assert_eq!(
        prompt_sizes(&o),
        vec![
            t.encode_chat(&q1).unwrap().len(),
            t.encode_chat(&q1).unwrap().len(),
            t.encode_chat(&q2).unwrap().len(),
        ],
        "turn 3 carries turn 2 (not turn 1) in its prompt"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("(conversation cleared)"));
}

#[test]
fn exit_unknown_commands_and_a_system_message() {
    let model = Model::open(&fixture("tiny-llada2-add")).unwrap();
    let o = chat(
        "\n/what\nWhat is 23+45?\n/exit\nWhat is 97+70?\n",
        &["--system", "You add numbers."],
    );
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert_eq!(out.lines().count(), 1, "nothing after /exit: {out}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown command `/what`"), "{err}");
    let with_system = [
        msg("system", "You add numbers."),
        msg("user", "What is 23+45?"),
    ];
    assert_eq!(
        prompt_sizes(&o),
        vec![model.tokenizer.encode_chat(&with_system).unwrap().len()]
    );
}

#[test]
fn empty_input_exits_cleanly() {
    let o = chat("", &[]);
    assert!(o.stdout.is_empty());
}
