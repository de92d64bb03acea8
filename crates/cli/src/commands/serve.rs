//! `unmask serve`: the OpenAI-compatible HTTP server (see `unmask-server`).

use crate::backends::{self, BackendArgs};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use unmask_core::Error;
use unmask_server::http::HttpLimits;
use unmask_server::ServerConfig;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model directory (Hugging Face layout: config.json, safetensors, tokenizer files), or a
    /// Hugging Face id `ORG/NAME[@REVISION]` (used from the hub cache, fetched when missing).
    #[arg(long)]
    pub model: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests that may wait while the batch is full; one more is answered 429.
    #[arg(long, default_value_t = 32)]
    pub max_queue: usize,
    /// Requests decoded together, one batched forward for all of them (default per backend:
    /// cpu 4, wgpu 8, cuda 16). Printed at start.
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// MiB of K/V that finished requests may leave in idle KV-cache slots for the next request
    /// with the same prefix (a chat's next turn, a shared system prompt); least recently used
    /// first out.
    #[arg(long, default_value_t = 1024)]
    pub prefix_cache_mb: u64,
    /// Prompt positions per forward for a request that joins running ones: its prefill shares
    /// several batched forwards with their windows instead of stalling them (0: never cut).
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// Let pages of this origin call the API from a browser (CORS), e.g.
    /// `http://localhost:3000`, or `*` for any. Off by default.
    #[arg(long)]
    pub cors: Option<String>,
    /// Most tokens one request may generate (max_tokens above it is a 400; a request without
    /// max_tokens gets at most this many).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Connections served at once; one more is answered 503 (each connection carries one
    /// request: the server answers with `Connection: close`).
    #[arg(long, default_value_t = HttpLimits::default().max_connections)]
    pub max_connections: usize,
    /// Seconds a client has to send the request line and headers (also the idle timeout of a
    /// connection that sends nothing).
    #[arg(long, default_value_t = HttpLimits::default().header_timeout.as_secs_f64())]
    pub header_timeout: f64,
    /// Seconds a client has to send the whole body once its headers have arrived.
    #[arg(long, default_value_t = HttpLimits::default().body_timeout.as_secs_f64())]
    pub body_timeout: f64,
    /// Seconds a write of the answer may wait for a client that reads nothing before the
    /// connection (and its generation) is given up.
    #[arg(long, default_value_t = HttpLimits::default().write_timeout.as_secs_f64())]
    pub write_timeout: f64,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = HttpLimits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// The model name clients use (default: the hub id, or the model directory's name).
    #[arg(long)]
    pub model_name: Option<String>,
    #[command(flatten)]
    pub decode: super::generate::DecodeArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn run(args: Args) -> Result<()> {
    if args.max_connections == 0 || args.max_body_bytes == 0 || args.max_tokens == Some(0) {
        anyhow::bail!("--max-connections, --max-body-bytes and --max-tokens must be at least 1");
    }
    let model = Arc::new(args.decode.open(&args.model)?);
    let (model_defaults, defaults) = args.decode.resolve(&model)?;
    let mut flags = args.decode.overrides();
    // A request that names another decoder starts from that family's defaults and these flags.
    flags.decoder = None;
    let per_decoder = unmask_core::decode::Decoder::ALL
        .iter()
        .map(|&d| {
            let mut p = flags.apply(model_defaults.params_for(d));
            p.use_cache = defaults.use_cache;
            p
        })
        .collect();
    let hub_id = crate::hub::hub_id_of(&args.model);
    let model_id = args
        .model_name
        .clone()
        .or(hub_id.map(|id| id.repo))
        .unwrap_or_else(|| {
            args.model
                .canonicalize()
                .unwrap_or_else(|_| args.model.clone())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        });
    if args.max_batch == Some(0) {
        anyhow::bail!("--max-batch must be at least 1");
    }
    let max_batch = args.max_batch.map(|n| n.min(backends::MAX_SLOTS / 2));
    let mut backend_args = args.backend.clone();
    // As many idle slots again as running ones: the finished requests' caches for reuse.
    match max_batch {
        Some(n) => backend_args.slots = 2 * n,
        None => backend_args.default_batch_slots = true,
    }
    let state = unmask_server::start(
        model,
        Box::new(move |m| {
            backends::create(m, &backend_args, false)
                .map_err(|e| Error::backend("startup", format!("{e:#}")))
        }),
        ServerConfig {
            model_id: model_id.clone(),
            max_queue: args.max_queue,
            defaults,
            per_decoder,
            cors: args.cors.clone(),
            max_tokens: args.max_tokens,
            batching: unmask_server::worker::Batching {
                max_batch,
                prefix_cache_bytes: args.prefix_cache_mb.saturating_mul(1 << 20),
                prefill_chunk: args.prefill_chunk,
            },
            http: HttpLimits {
                max_connections: args.max_connections,
                header_timeout: seconds("--header-timeout", args.header_timeout)?,
                body_timeout: seconds("--body-timeout", args.body_timeout)?,
                write_timeout: seconds("--write-timeout", args.write_timeout)?,
                max_body_bytes: args.max_body_bytes,
                ..HttpLimits::default()
            },
        },
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "serving `{model_id}` on http://{addr} (OpenAI API under /v1; Ctrl-C stops); \
             up to {} requests per batched forward",
            state.max_batch()
        );
        unmask_server::serve(listener, state, async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("stopping: finishing the requests in flight (Ctrl-C again quits at once)");
            tokio::spawn(async {
                let _ = tokio::signal::ctrl_c().await;
                std::process::exit(130);
            });
        })
        .await
        .context("serving")
    })
}

/// A timeout flag: positive, finite and at most a day.
fn seconds(flag: &str, s: f64) -> Result<std::time::Duration> {
    if !(s > 0.0 && s <= 86_400.0) {
        anyhow::bail!("{flag} must be between 0 and 86400 seconds (got {s})");
    }
    Ok(std::time::Duration::from_secs_f64(s))
}
