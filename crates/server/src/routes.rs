//! The HTTP endpoints. Handlers check and tokenize the request, queue it for the worker, and
//! either wait for the answer or stream it.

use crate::error::ApiError;
use crate::params::{self, GenRequest};
use crate::schema::{
    AssistantMessage, ChatChoice, ChatCompletion, ModelCard, ModelList, TextChoice, TextCompletion,
    Usage,
};
use crate::sse::{self, Header, Kind};
use crate::worker::JobEvent;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

type Shared = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn health(State(s): Shared) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "model": s.model_id }))
}

async fn metrics(State(s): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(s.worker.capacity()),
    )
        .into_response()
}

async fn models(State(s): Shared) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![s.card()],
    })
}

async fn model(State(s): Shared, Path(id): Path<String>) -> Result<Json<ModelCard>, ApiError> {
    if id == s.model_id {
        Ok(Json(s.card()))
    } else {
        Err(
            ApiError::not_found(format!("the model `{id}` does not exist here"))
                .with_code("model_not_found"),
        )
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: "this endpoint does not accept that method".into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("method_not_allowed"),
    }
}

async fn chat(State(s): Shared, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    s.metrics.chat_requests.fetch_add(1, Relaxed);
    let req = s.check(body, params::chat_request).await?;
    let stream = req.stream;
    let (rx, h) = s.start(req, Kind::Chat, "chatcmpl")?;
    if stream {
        return Ok(sse::respond(h, rx).into_response());
    }
    let c = wait(rx).await?;
    Ok(Json(ChatCompletion {
        id: h.id,
        object: "chat.completion",
        created: h.created,
        model: h.model,
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: c.text,
            },
            finish_reason: c.finish_reason,
            logprobs: None,
        }],
        usage: Usage::new(c.prompt_tokens, c.completion_tokens),
    })
    .into_response())
}

async fn completions(
    State(s): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    s.metrics.completion_requests.fetch_add(1, Relaxed);
    let req = s.check(body, params::completion_request).await?;
    let stream = req.stream;
    let (rx, h) = s.start(req, Kind::Text, "cmpl")?;
    if stream {
        return Ok(sse::respond(h, rx).into_response());
    }
    let c = wait(rx).await?;
    Ok(Json(TextCompletion {
        id: h.id,
        object: "text_completion",
        created: h.created,
        model: h.model,
        choices: vec![TextChoice {
            index: 0,
            text: c.text,
            finish_reason: Some(c.finish_reason),
            logprobs: None,
        }],
        usage: Usage::new(c.prompt_tokens, c.completion_tokens),
    })
    .into_response())
}

/// The answer of a non-streamed request. If the client goes away, this future is dropped with
/// the receiver, which cancels the generation.
async fn wait(
    mut rx: UnboundedReceiver<JobEvent>,
) -> Result<crate::completion::Completion, ApiError> {
    while let Some(ev) = rx.recv().await {
        match ev {
            JobEvent::Delta { .. } => {}
            JobEvent::Done(c) => return Ok(c),
            JobEvent::Failed(e) => return Err(e),
        }
    }
    Err(ApiError::internal("the model thread dropped the request"))
}

impl AppState {
    fn card(&self) -> ModelCard {
        ModelCard {
            id: self.model_id.clone(),
            object: "model",
            created: self.created,
            owned_by: "unmask",
            max_context: self.model.context_limit(),
        }
    }

    /// Body read and request checked; a failure counts as an invalid request. Parsing renders
    /// the chat template and tokenizes, which can take a while on a hostile or huge request: it
    /// runs on tokio's blocking pool, so the async threads (and `/health`) stay free, and the
    /// template's fuel bounds it.
    async fn check(
        self: &Arc<Self>,
        body: Result<Bytes, BytesRejection>,
        parse: fn(&params::Context, &[u8]) -> Result<GenRequest, ApiError>,
    ) -> Result<GenRequest, ApiError> {
        let state = self.clone();
        let r = match body {
            Err(e) => Err(ApiError {
                status: e.status(),
                message: e.body_text(),
                kind: "invalid_request_error",
                param: None,
                code: None,
            }),
            Ok(b) => tokio::task::spawn_blocking(move || {
                parse(
                    &params::Context {
                        model: &state.model,
                        model_id: &state.model_id,
                        defaults: &state.defaults,
                        per_decoder: &state.per_decoder,
                    },
                    &b,
                )
            })
            .await
            .unwrap_or_else(|e| Err(ApiError::internal(format!("request parsing failed: {e}")))),
        };
        if r.is_err() {
            self.metrics.invalid_requests.fetch_add(1, Relaxed);
        }
        r
    }

    fn start(
        &self,
        req: GenRequest,
        kind: Kind,
        prefix: &str,
    ) -> Result<(UnboundedReceiver<JobEvent>, Header), ApiError> {
        let include_usage = req.include_usage;
        let rx = self.worker.submit(req)?;
        Ok((
            rx,
            Header {
                kind,
                id: new_id(prefix),
                created: unix_now(),
                model: self.model_id.clone(),
                include_usage,
            },
        ))
    }
}

/// Unique within this process and unlikely to repeat across restarts.
fn new_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{prefix}-{t:x}{n:04x}")
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
