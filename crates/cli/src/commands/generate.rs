//! `unmask generate`: one prompt (streamed text or one JSON object), or a JSONL batch.

use crate::backends::{self, BackendArgs};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;
use unmask_core::decode::defaults::ModelDefaults;
use unmask_core::decode::overrides::{Mode, Overrides};
use unmask_core::decode::stream::PrefixStreamer;
use unmask_core::decode::Decoder;
use unmask_core::{generate, Backend, DecodeParams, Message, Model};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model directory (Hugging Face layout: config.json, safetensors, tokenizer files), or a
    /// Hugging Face id `ORG/NAME[@REVISION]` (used from the hub cache, fetched when missing).
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

/// Decoding flags; unset ones take the defaults of the chosen decoder for this model.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DecodeArgs {
    /// Decoding rule: llada2.0 (threshold commits), llada2.1 (token editing), llada2.2
    /// (Levenshtein editing with DELETE/SPLIT). Default: detected from the model directory
    /// (expert_capacity > 0 in config.json: llada2.2; a modeling_*.py whose generate() takes
    /// editing_threshold: llada2.1; else llada2.0).
    #[arg(long)]
    pub decoder: Option<Decoder>,
    /// llada2.1 presets: speed = --threshold 0.5 --editing-threshold 0.0, quality =
    /// --threshold 0.7 --editing-threshold 0.5 (explicit flags win).
    #[arg(long)]
    pub mode: Option<Mode>,
    /// Tokens to generate.
    #[arg(long)]
    pub gen_length: Option<usize>,
    /// Tokens per diffusion block (llada2.2: a multiple of the model's block_size).
    #[arg(long)]
    pub block_length: Option<usize>,
    /// Denoising steps per block (llada2.0: capped to gen_length / minimal_topk, as the official
    /// generate(); llada2.2: not capped; unused by llada2.1). Default 32.
    #[arg(long)]
    pub steps: Option<usize>,
    /// llada2.0 step cap divisor: steps = min(steps, gen_length / minimal_topk). Default 1.
    #[arg(long)]
    pub minimal_topk: Option<usize>,
    /// Fill every mask whose confidence is above this (0 < T <= 1). Default 0.95 (llada2.2: 0.5).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// llada2.1/2.2: replace a written token when another is predicted with a confidence above
    /// this (>= 1 never edits). Default 0.9 (llada2.2: 0.0).
    #[arg(long)]
    pub editing_threshold: Option<f32>,
    /// llada2.1/2.2: forwards a block may take once no mask is left. Default 16.
    #[arg(long)]
    pub max_post_steps: Option<usize>,
    /// llada2.1: masks filled per forward when none is above the threshold. Default 1.
    #[arg(long)]
    pub num_to_transfer: Option<usize>,
    /// llada2.2: forwards per block before decoding fails as not converging. Default 1000.
    #[arg(long)]
    pub max_steps_per_block: Option<usize>,
    /// 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// The official eos_early_stop=True: llada2.0 stops as soon as an eos is committed with
    /// nothing masked before it; llada2.1/2.2 stop after the block that holds an eos. Without
    /// either flag, decoding stops after the block that holds the first eos (the official
    /// default's tokens, with fewer forwards under llada2.1/2.2).
    #[arg(long, conflicts_with = "no_eos_early_stop")]
    pub eos_early_stop: bool,
    /// The official eos_early_stop=False: llada2.1/2.2 decode every block up to gen_length (the
    /// reference's forward count); llada2.0 still stops after the block with an eos.
    #[arg(long)]
    pub no_eos_early_stop: bool,
    /// Most positions (prompt + generated, padded to whole blocks) one request may use, below
    /// the model's own limit (max_position_embeddings and half the free memory's KV cache):
    /// bounds the KV cache a request can make the process allocate.
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Recompute the whole prefix every step (for measuring the cache's effect).
    #[arg(long)]
    pub no_cache: bool,
}

impl DecodeArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            decoder: self.decoder,
            mode: self.mode,
            gen_length: self.gen_length,
            block_length: self.block_length,
            steps: self.steps,
            minimal_topk: self.minimal_topk,
            threshold: self.threshold,
            editing_threshold: self.editing_threshold,
            max_post_steps: self.max_post_steps,
            num_to_transfer: self.num_to_transfer,
            max_steps_per_block: self.max_steps_per_block,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            eos_early_stop: match (self.eos_early_stop, self.no_eos_early_stop) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
        }
    }

    /// The model's defaults (decoder detected unless `--decoder` names one), and the parameters
    /// these flags give over them. Says which decoder was chosen and why on stderr.
    /// The model of `dir` with `--max-context` applied.
    pub fn open(&self, dir: &std::path::Path) -> Result<Model> {
        if self.max_context == Some(0) {
            bail!("--max-context must be at least 1");
        }
        let mut model = super::open_model(dir)?;
        model.max_context = self.max_context;
        Ok(model)
    }

    pub fn resolve(&self, model: &Model) -> Result<(ModelDefaults, DecodeParams)> {
        let defaults = ModelDefaults::from_dir(&model.dir, &model.config, self.decoder);
        let mut p = self.overrides().resolve(&defaults);
        p.use_cache &= !self.no_cache;
        p.validate()?;
        eprintln!("decoder: {} ({})", defaults.decoder, defaults.reason);
        Ok((defaults, p))
    }
}

#[derive(Serialize)]
struct Answer {
    decoder: Decoder,
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
    let model = args.decode.open(&args.model)?;
    let (model_defaults, defaults) = args.decode.resolve(&model)?;
    if args.output.is_some() && args.input.is_none() {
        bail!("--output is for the answers of a batch (--input FILE); without --input it would be ignored");
    }
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
            &Batch {
                defaults: &model_defaults,
                flags: args.decode.overrides(),
                use_cache: defaults.use_cache,
            },
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
    let gen = generate(backend, &ids, model.context_limit(), prompt, p, &mut |e| {
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
    });
    if let Some(e) = write_err {
        return Err(e).context("writing output");
    }
    let gen = gen.map_err(|e| model.explain(e))?;
    let elapsed = t0.elapsed().as_secs_f64();
    let (delta, text) = streamer.finish(&gen.tokens)?;
    if let Some(w) = stream {
        w.write_all(delta.as_bytes())?;
        w.flush()?;
    }
    Ok(Answer {
        decoder: gen.decoder,
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

/// One line of a batch file: the prompt and an id echoed back; every other field is a decoding
/// parameter, read as [`Overrides`] (an unknown one is an error).
#[derive(Deserialize)]
struct Request {
    prompt: Option<String>,
    chat: Option<ChatInput>,
    prompt_ids: Option<Vec<u32>>,
    /// OpenAI's name for gen_length.
    max_tokens: Option<usize>,
    /// Free-form tag echoed back.
    id: Option<Value>,
}

impl Request {
    /// Splits a line into the request and its decoding parameters.
    fn parse(line: &str) -> Result<(Request, Overrides)> {
        let mut fields: serde_json::Map<String, Value> =
            serde_json::from_str(line).context("malformed request")?;
        let mut own = serde_json::Map::new();
        for k in ["prompt", "chat", "prompt_ids", "max_tokens", "id"] {
            if let Some(v) = fields.remove(k) {
                own.insert(k.into(), v);
            }
        }
        let r: Request = serde_json::from_value(Value::Object(own)).context("malformed request")?;
        let mut o: Overrides =
            serde_json::from_value(Value::Object(fields)).context("malformed request")?;
        o.gen_length = o.gen_length.or(r.max_tokens);
        Ok((r, o))
    }
}

/// What every line of a batch starts from: the model's defaults and the command's flags.
struct Batch<'a> {
    defaults: &'a ModelDefaults,
    flags: Overrides,
    use_cache: bool,
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
    defaults: &Batch,
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
    if failed > 0 {
        bail!(
            "{failed} of {} requests failed (their lines hold the errors)",
            ok + failed
        );
    }
    Ok(())
}

fn batch_line(
    model: &Model,
    backend: &mut dyn Backend,
    batch: &Batch,
    line: &str,
) -> Result<Value> {
    let (r, overrides) = Request::parse(line)?;
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
    let mut p = overrides.or(&batch.flags).resolve(batch.defaults);
    p.use_cache = batch.use_cache;
    p.validate()?;
    let a = answer(model, backend, &prompt, &p, None)?;
    let mut v = serde_json::json!({
        "tokens": a.tokens, "text": a.text, "forwards": a.forwards, "decoder": a.decoder,
    });
    if let Some(id) = r.id {
        v["id"] = id;
    }
    Ok(v)
}
