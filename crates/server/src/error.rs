//! Errors as OpenAI clients expect them: an HTTP status and
//! `{"error": {"message", "type", "param", "code"}}`. Every rejected request ends here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    /// 400 `invalid_request_error`, naming the offending parameter.
    pub fn invalid(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.into(),
            code: Some("invalid_value"),
        }
    }

    pub fn param(name: &str, message: impl Into<String>) -> Self {
        Self::invalid(Some(name.to_string()), message)
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
        }
    }

    pub fn queue_full(capacity: usize) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "the server is busy: the model is generating and its queue ({capacity} waiting) \
                 is full; retry later"
            ),
            kind: "requests",
            param: None,
            code: Some("rate_limit_exceeded"),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("unavailable"),
        }
    }

    /// The client went away before its request was checked (nobody reads this answer; it
    /// is counted as cancelled, not invalid).
    pub fn cancelled() -> Self {
        ApiError {
            status: StatusCode::from_u16(499).expect("499 is a valid status"),
            message: "the client closed the connection".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("cancelled"),
        }
    }

    /// 408: `what` (the request head, its body) did not arrive within `limit`.
    pub fn request_timeout(what: &str, limit: std::time::Duration) -> Self {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!("{what} did not arrive within {} s", limit.as_secs_f64()),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_timeout"),
        }
    }

    /// 413: a body over `limit` bytes (`declared`: its Content-Length, where it had one).
    pub fn body_too_large(limit: usize, declared: Option<u64>) -> Self {
        let size = declared
            .map(|n| format!(" ({n} bytes)"))
            .unwrap_or_default();
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the body{size} exceeds {limit} bytes (--max-body-bytes)"),
            kind: "invalid_request_error",
            param: None,
            code: Some("body_too_large"),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// A library error met while serving: bad input is the client's, the rest is ours.
    pub fn from_core(e: &unmask_core::Error) -> Self {
        use unmask_core::Error as E;
        match e {
            E::Invalid(m) => Self::invalid(None, m.clone()),
            E::Template(m) => Self::param("messages", format!("chat template: {m}")),
            E::Tokenizer(m) => Self::invalid(None, format!("tokenizer: {m}")),
            other => Self::internal(other.to_string()),
        }
    }

    /// The JSON body alone (also sent inside an event stream when a generation fails midway).
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(Body {
            error: Detail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .expect("plain strings serialize")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}
