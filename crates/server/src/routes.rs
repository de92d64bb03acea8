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
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
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
        // `read_body` bounds every body already; the extractor's own limit would be a second one.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_body,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors))
        .with_state(state)
}

/// CORS only for the origin given by `--cors ORIGIN` (`*` for any): without it no browser page
/// of another origin may read answers or send JSON requests (the preflight is not answered).
async fn cors(
    State(s): Shared,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = match (&s.cors, &origin) {
        (Some(a), Some(o)) => a == "*" || o.to_str().is_ok_and(|o| o == a),
        _ => false,
    };
    let Some(origin) = origin.filter(|_| allowed) else {
        return next.run(req).await;
    };
    let mut resp = if req.method() == axum::http::Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::HeaderValue::from_static("content-type, authorization"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            header::HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::VARY, header::HeaderValue::from_static("origin"));
    resp
}

/// Reads the whole body before any handler runs, within `--body-timeout` and `--max-body-bytes`
/// (a client that sends half a body gets a 408 instead of holding its connection).
async fn read_body(
    State(s): Shared,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let limit = s.http.max_body_bytes;
    let read = tokio::time::timeout(s.http.body_timeout, axum::body::to_bytes(body, limit));
    let e = match read.await {
        Ok(Ok(bytes)) => {
            let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
            return next.run(req).await;
        }
        Err(_) => ApiError::request_timeout("the request body", s.http.body_timeout),
        Ok(Err(e)) if too_large(&e) => ApiError::body_too_large(limit, None),
        Ok(Err(e)) => ApiError::invalid(None, format!("the request body could not be read: {e}")),
    };
    s.metrics.http_errors.fetch_add(1, Relaxed);
    e.into_response()
}

fn too_large(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
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

async fn chat(State(s): Shared, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    s.metrics.chat_requests.fetch_add(1, Relaxed);
    let req = s.check(&headers, body, params::chat_request).await?;
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
                // `null` beside calls when the model said nothing else, as OpenAI does.
                content: (c.tool_calls.is_empty() || !c.text.trim().is_empty()).then_some(c.text),
                tool_calls: c.tool_calls,
            },
            finish_reason: c.finish_reason,
            logprobs: None,
        }],
        usage: Usage::new(c.prompt_tokens, c.cached_tokens, c.completion_tokens),
    })
    .into_response())
}

async fn completions(
    State(s): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    s.metrics.completion_requests.fetch_add(1, Relaxed);
    let req = s.check(&headers, body, params::completion_request).await?;
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
        usage: Usage::new(c.prompt_tokens, c.cached_tokens, c.completion_tokens),
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
            JobEvent::Delta { .. } | JobEvent::ToolCall { .. } => {}
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
        headers: &HeaderMap,
        body: Bytes,
        parse: fn(&params::Context, &[u8]) -> Result<GenRequest, ApiError>,
    ) -> Result<GenRequest, ApiError> {
        let state = self.clone();
        // Dropped with this future when the client goes: the render then stops at once instead
        // of running to its fuel limit on a blocking thread.
        let cancel = CancelOnDrop(unmask_core::chat::Cancel::default());
        let flag = cancel.0.clone();
        // The body was read whole (and bounded) by `read_body` before the handler ran.
        let r = match json_content_type(headers) {
            Err(e) => Err(e),
            Ok(()) => tokio::task::spawn_blocking(move || {
                let r = parse(
                    &params::Context {
                        model: &state.model,
                        model_id: &state.model_id,
                        defaults: &state.defaults,
                        per_decoder: &state.per_decoder,
                        cancel: &flag,
                        max_tokens: state.max_tokens,
                    },
                    &body,
                );
                // Counted here: the handler that would count it is gone with its client.
                if matches!(&r, Err(e) if e.code == Some("cancelled")) {
                    state.metrics.cancelled_requests.fetch_add(1, Relaxed);
                }
                r
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

struct CancelOnDrop(unmask_core::chat::Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// Generation requests must say they are JSON: a web page can send a cross-origin `text/plain`
/// POST without asking (no CORS preflight), but not an `application/json` one, so this keeps
/// other sites from starting generations on a server on localhost.
fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: format!(
                "the body must be JSON with `Content-Type: application/json` (got {})",
                if ct.is_empty() { "none" } else { ct }
            ),
            kind: "invalid_request_error",
            param: None,
            code: Some("unsupported_media_type"),
        })
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
