//! unmask-server: an OpenAI-compatible HTTP API over one model (`unmask serve`).
//!
//! - [`routes`]: `GET /health`, `GET /metrics`, `GET /v1/models`, `POST /v1/chat/completions`,
//!   `POST /v1/completions`, with [`params`] checking every request and [`sse`] streaming.
//! - [`worker`]: the one thread that owns the backend, fed by a bounded queue.
//! - [`completion`]: decoder + prefix streamer + stop strings; also used by `unmask chat`.
//!
//! Start it in-process with [`start`] and [`serve`] (tests do), or through the `unmask` binary.

pub mod completion;
pub mod error;
pub mod events;
pub mod http;
pub mod metrics;
pub mod params;
pub mod routes;
pub mod schema;
pub mod sse;
pub mod stop;
pub mod tools;
pub mod worker;

pub use error::ApiError;
pub use routes::router;
pub use worker::BackendFactory;

use metrics::Metrics;
use std::future::Future;
use std::sync::Arc;
use unmask_core::{DecodeParams, Model, Result};
use worker::Worker;

/// How to serve a model.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The name clients use (`model` in requests, `/v1/models`).
    pub model_id: String,
    /// Requests that may wait while `batching.max_batch` run; one more gets 429.
    pub max_queue: usize,
    /// Requests decoded together, and the K/V idle slots keep for reuse.
    pub batching: worker::Batching,
    /// Decoding parameters of a request that sets none (the model's own defaults).
    pub defaults: DecodeParams,
    /// The same for a request that names a decoder (one entry per decoder; a missing one falls
    /// back to that family's built-in defaults).
    pub per_decoder: Vec<DecodeParams>,
    /// The one origin whose pages may call the API from a browser (`*` = any); none by default.
    pub cors: Option<String>,
    /// Timeouts and bounds of the HTTP layer.
    pub http: http::HttpLimits,
    /// Most tokens one request may ask for (`--max-tokens`); a request's default is capped too.
    pub max_tokens: Option<usize>,
}

/// Everything handlers share.
pub struct AppState {
    pub model: Arc<Model>,
    pub model_id: String,
    pub defaults: DecodeParams,
    pub per_decoder: Vec<DecodeParams>,
    pub cors: Option<String>,
    pub http: http::HttpLimits,
    pub max_tokens: Option<usize>,
    pub metrics: Arc<Metrics>,
    pub created: u64,
    worker: Worker,
}

/// Builds the backend on the model thread and returns the state to serve with.
pub fn start(
    model: Arc<Model>,
    make_backend: BackendFactory,
    config: ServerConfig,
) -> Result<Arc<AppState>> {
    config.defaults.validate()?;
    let metrics = Arc::new(Metrics::default());
    let worker = Worker::spawn(
        model.clone(),
        make_backend,
        config.max_queue,
        config.batching,
        metrics.clone(),
    )?;
    Ok(Arc::new(AppState {
        model,
        model_id: config.model_id,
        defaults: config.defaults,
        per_decoder: config.per_decoder,
        cors: config.cors,
        http: config.http,
        max_tokens: config.max_tokens,
        metrics,
        created: routes::unix_now(),
        worker,
    }))
}

impl AppState {
    /// Requests that decode together (`--max-batch`, capped by the backend's KV-cache slots).
    pub fn max_batch(&self) -> u64 {
        self.metrics
            .max_batch
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Serves until `shutdown` resolves, then waits for the requests in flight (see [`http`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    http::serve(listener, state, shutdown).await
}
