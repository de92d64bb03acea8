//! `unmask chat`: an interactive conversation in the terminal. Every turn goes through the
//! model's chat template with the whole history; answers stream as their committed prefix
//! grows. Reads lines from stdin, so it works piped too (EOF ends it cleanly).

use crate::backends::{self, BackendArgs};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;
use unmask_core::decode::KvPrefix;
use unmask_core::{Backend, DecodeParams, Error, Message, Model};
use unmask_server::completion::{complete, Update};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model directory (Hugging Face layout: config.json, safetensors, tokenizer files), or a
    /// Hugging Face id `ORG/NAME[@REVISION]` (used from the hub cache, fetched when missing).
    #[arg(long)]
    pub model: PathBuf,
    /// A system message at the start of the conversation (kept across /reset).
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub decode: super::generate::DecodeArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
}

const HELP: &str = "/reset forgets the conversation, /exit quits (so does Ctrl-D)";

pub fn run(args: Args) -> Result<()> {
    let model = args.decode.open(&args.model)?;
    if !model.tokenizer.has_chat_template() {
        bail!(
            "{} has no chat template (tokenizer_config.json `chat_template`); use `unmask generate --prompt`",
            args.model.display()
        );
    }
    let (_, params) = args.decode.resolve(&model)?;
    let mut backend = backends::create(&model, &args.backend, false)?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("{HELP}");
    }
    let base: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message {
            role: "system".into(),
            content: s.clone(),
        })
        .collect();
    let mut history = base.clone();
    // The next turn re-sends the history: its K/V stay in the backend's cache.
    let mut cache = KvPrefix::default();
    let mut out = std::io::stdout().lock();
    let mut lines = std::io::stdin().lock().lines();
    loop {
        if interactive {
            write!(out, "> ")?;
            out.flush()?;
        }
        let line = match lines.next() {
            None => break,
            Some(Ok(l)) => l,
            Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                eprintln!("error: that line is not valid UTF-8; try again");
                continue;
            }
            Some(Err(e)) => return Err(e).context("reading stdin"),
        };
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = base.clone();
                eprintln!("(conversation cleared)");
                continue;
            }
            "/help" => {
                eprintln!("{HELP}");
                continue;
            }
            cmd if cmd.starts_with('/') => {
                eprintln!("unknown command `{cmd}`: {HELP}");
                continue;
            }
            _ => {}
        }
        history.push(Message {
            role: "user".into(),
            content: text.to_string(),
        });
        match turn(
            &model,
            backend.as_mut(),
            &mut cache,
            &mut history,
            &params,
            &mut out,
        ) {
            Ok(answer) => history.push(Message {
                role: "assistant".into(),
                content: answer,
            }),
            Err(e) => {
                if e.downcast_ref::<std::io::Error>().is_some() {
                    // stdout is gone (a closed pipe): nobody is listening any more.
                    return Ok(());
                }
                eprintln!("error: {e:#}");
                history.pop();
            }
        }
    }
    Ok(())
}

/// Answers the last message of `history`, streaming to `out`; returns the answer's text.
fn turn(
    model: &Model,
    backend: &mut dyn Backend,
    cache: &mut KvPrefix,
    history: &mut Vec<Message>,
    params: &DecodeParams,
    out: &mut dyn Write,
) -> Result<String> {
    let prompt = fit_context(model, history, params)?;
    let t0 = Instant::now();
    let mut write_err = None;
    let c = complete(
        model,
        backend,
        cache,
        &prompt,
        params,
        Vec::new(),
        Vec::new(),
        &mut |u| {
            let d = match u {
                Update::Step { delta, .. } => delta,
                Update::Tail(d) => d,
            };
            if d.is_empty() {
                return true;
            }
            match out.write_all(d.as_bytes()).and_then(|_| out.flush()) {
                Ok(()) => true,
                Err(e) => {
                    write_err = Some(e);
                    false
                }
            }
        },
    );
    if let Some(e) = write_err {
        return Err(e.into());
    }
    let c = c?;
    writeln!(out)?;
    out.flush()?;
    eprintln!(
        "[{} prompt tokens ({} from the cache), {} tokens, {} forwards, {:.2}s]",
        c.prompt_tokens,
        c.cached_tokens,
        c.completion_tokens,
        c.forwards,
        t0.elapsed().as_secs_f64()
    );
    Ok(c.text)
}

/// The prompt for `history`, dropping the oldest exchanges while it does not fit the context.
fn fit_context(model: &Model, history: &mut Vec<Message>, p: &DecodeParams) -> Result<Vec<u32>> {
    let max = model.context_limit();
    let first = usize::from(history.first().is_some_and(|m| m.role == "system"));
    loop {
        let prompt = model.tokenizer.encode_chat(history)?;
        let total = (prompt.len() + p.gen_length).div_ceil(p.block_length) * p.block_length;
        if total <= max {
            return Ok(prompt);
        }
        if history.len() - first <= 1 {
            return Err(Error::Invalid(format!(
                "this message ({} tokens with the template) and {} generated tokens do not fit the \
                 context of {max} positions",
                prompt.len(),
                p.gen_length
            ))
            .into());
        }
        // The oldest user message and the answer to it.
        history.remove(first);
        if history.get(first).is_some_and(|m| m.role == "assistant") && history.len() - first > 1 {
            history.remove(first);
        }
        eprintln!("(dropped the oldest exchange to fit the context)");
    }
}
