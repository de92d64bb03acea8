//! `unmask generate`: one prompt (streamed text or one JSON object), or a JSONL batch.

use crate::backends::{self, BackendArgs};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;
use unmask_core::decode::defaults::model_defaults;
use unmask_core::decode::stream::PrefixStreamer;
use unmask_core::{generate, Backend, DecodeParams, Message, Model};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model directory (Hugging Face layout: config.json, safetensors, tokenizer files).
    #[arg(long)]
    pub model: PathBuf,
    /// Raw prompt text (no chat template).
    #[arg(long, group = "input_kind")]
    pub prompt: Option<String>,
    /// A user message, rendered through the model's chat template.
    #[arg(long, group = "input_kind")]
    pub chat: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long, group = "input_kind", value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// JSONL file of requests (`prompt`, `chat` or `prompt_ids`, plus any decoding parameter).
    #[arg(long, group = "input_kind")]
    pub input: Option<PathBuf>,
    /// Where batch answers go (default: stdout).
    #[arg(long, requires = "input")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub decode: DecodeArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

/// Decoding flags; unset ones take the model's defaults.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DecodeArgs {
    /// Tokens to generate.
    #[arg(long)]
    pub gen_length: Option<usize>,
    /// Tokens per diffusion block.
    #[arg(long)]
    pub block_length: Option<usize>,
    /// Denoising steps per block (at most).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Commit every token whose confidence is above this (0 < T <= 1).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop as soon as an eos is committed with nothing masked before it.
    #[arg(long)]
    pub eos_early_stop: bool,
    /// Recompute the whole prefix every step (for measuring the cache's effect).
    #[arg(long)]
    pub no_cache: bool,
}

impl DecodeArgs {
    pub fn apply(&self, mut p: DecodeParams) -> DecodeParams {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { p.$f = v; } )* };
        }
        set!(
            gen_length,
            block_length,
            steps,
            threshold,
            temperature,
            top_k,
            top_p,
            seed
        );
        p.eos_early_stop |= self.eos_early_stop;
        p.use_cache &= !self.no_cache;
        p
    }
}

#[derive(Serialize)]
struct Answer {
    tokens: Vec<u32>,
    text: String,
    forwards: usize,
    elapsed_ms: f64,
    prompt_tokens: usize,
    finish: unmask_core::decode::Finish,
    tokens_per_second: f64,
    tokens_per_forward: f64,
}

pub fn run(args: Args) -> Result<()> {
    let model = super::open_model(&args.model)?;
    let defaults = args.decode.apply(model_defaults(&args.model));
    defaults.validate()?;
    if args.prompt.is_none()
        && args.chat.is_none()
        && args.prompt_ids.is_none()
        && args.input.is_none()
    {
        bail!("give one of --prompt, --chat, --prompt-ids or --input");
    }
    let mut backend = backends::create(&model, &args.backend, false)?;
    if let Some(input) = &args.input {
        return run_batch(
            &model,
            backend.as_mut(),
            &defaults,
            input,
            args.output.as_ref(),
        );
    }
    let prompt = if let Some(ids) = &args.prompt_ids {
        ids.clone()
    } else if let Some(text) = &args.prompt {
        model.tokenizer.encode(text)?
    } else {
        let chat = args.chat.as_deref().unwrap_or_default();
        model.tokenizer.encode_chat(&[Message {
            role: "user".into(),
            content: chat.to_string(),
        }])?
    };
    if args.json {
        let a = answer(&model, backend.as_mut(), &prompt, &defaults, None)?;
        println!("{}", serde_json::to_string(&a)?);
    } else {
        let mut out = std::io::stdout().lock();
        let a = answer(&model, backend.as_mut(), &prompt, &defaults, Some(&mut out))?;
        writeln!(out)?;
        eprintln!(
            "{} tokens, {} forwards, {:.1} ms ({:.1} tokens/s, {:.2} tokens/forward)",
            a.tokens.len(),
            a.forwards,
            a.elapsed_ms,
            a.tokens_per_second,
            a.tokens_per_forward
        );
    }
    Ok(())
}

/// Generates for one prompt, streaming text to `stream` when given.
fn answer(
    model: &Model,
    backend: &mut dyn Backend,
    prompt: &[u32],
    p: &DecodeParams,
    mut stream: Option<&mut dyn Write>,
) -> Result<Answer> {
    let ids = model.special_ids();
    let mut streamer = PrefixStreamer::new(
        &model.tokenizer,
        prompt.len(),
        model.tokenizer.end_of_turn.clone(),
    )
    .limit(p.gen_length);
    let mut write_err = None;
    let t0 = Instant::now();
    let gen = generate(
        backend,
        &ids,
        model.config.max_position_embeddings,
        prompt,
        p,
        &mut |e| {
            if let Some(w) = stream.as_deref_mut() {
                match streamer.push(e) {
                    Ok(Some(d)) => {
                        if let Err(err) = w.write_all(d.as_bytes()).and_then(|_| w.flush()) {
                            write_err = Some(err);
                            return false;
                        }
                    }
                    Ok(None) => {}
                    Err(err) => {
                        write_err = Some(std::io::Error::other(err.to_string()));
                        return false;
                    }
                }
            }
            true
        },
    );
    if let Some(e) = write_err {
        return Err(e).context("writing output");
    }
    let gen = gen?;
    let elapsed = t0.elapsed().as_secs_f64();
    let (delta, text) = streamer.finish(&gen.tokens)?;
    if let Some(w) = stream {
        w.write_all(delta.as_bytes())?;
        w.flush()?;
    }
    Ok(Answer {
        tokens_per_second: gen.tokens.len() as f64 / elapsed.max(1e-9),
        tokens_per_forward: gen.tokens.len() as f64 / gen.forwards.max(1) as f64,
        tokens: gen.tokens,
        text,
        forwards: gen.forwards,
        elapsed_ms: elapsed * 1e3,
        prompt_tokens: prompt.len(),
        finish: gen.finish,
    })
}

/// One line of a batch file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    prompt: Option<String>,
    chat: Option<ChatInput>,
    prompt_ids: Option<Vec<u32>>,
    gen_length: Option<usize>,
    max_tokens: Option<usize>,
    block_length: Option<usize>,
    steps: Option<usize>,
    threshold: Option<f32>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    seed: Option<u64>,
    eos_early_stop: Option<bool>,
    /// Free-form tag echoed back.
    id: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChatInput {
    Text(String),
    Messages(Vec<Message>),
}

fn run_batch(
    model: &Model,
    backend: &mut dyn Backend,
    defaults: &DecodeParams,
    input: &PathBuf,
    output: Option<&PathBuf>,
) -> Result<()> {
    let file =
        std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let (mut ok, mut failed) = (0, 0);
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", input.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = match batch_line(model, backend, defaults, &line) {
            Ok(v) => {
                ok += 1;
                v
            }
            Err(e) => {
                failed += 1;
                serde_json::json!({ "line": n + 1, "error": format!("{e:#}") })
            }
        };
        writeln!(out, "{reply}")?;
        // Each answer is on disk before the next request runs: nothing is lost on interruption.
        out.flush()?;
    }
    eprintln!("{ok} answered, {failed} failed");
    Ok(())
}

fn batch_line(
    model: &Model,
    backend: &mut dyn Backend,
    defaults: &DecodeParams,
    line: &str,
) -> Result<Value> {
    let r: Request = serde_json::from_str(line).context("malformed request")?;
    let given = [r.prompt.is_some(), r.chat.is_some(), r.prompt_ids.is_some()];
    if given.iter().filter(|&&g| g).count() != 1 {
        bail!("a request needs exactly one of `prompt`, `chat`, `prompt_ids`");
    }
    let prompt = if let Some(ids) = r.prompt_ids {
        ids
    } else if let Some(text) = r.prompt {
        model.tokenizer.encode(&text)?
    } else {
        let messages = match r.chat.expect("checked above") {
            ChatInput::Text(t) => vec![Message {
                role: "user".into(),
                content: t,
            }],
            ChatInput::Messages(m) => m,
        };
        model.tokenizer.encode_chat(&messages)?
    };
    let mut p = defaults.clone();
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = r.$f { p.$f = v; } )* };
    }
    set!(
        gen_length,
        block_length,
        steps,
        threshold,
        temperature,
        top_k,
        top_p,
        seed,
        eos_early_stop
    );
    if let Some(m) = r.max_tokens {
        p.gen_length = m;
    }
    let a = answer(model, backend, &prompt, &p, None)?;
    let mut v = serde_json::json!({ "tokens": a.tokens, "text": a.text, "forwards": a.forwards });
    if let Some(id) = r.id {
        v["id"] = id;
    }
    Ok(v)
}
