//! Reading and checking a request head before hyper parses it again: the same parser hyper
//! uses (`httparse`), with this server's bounds, so that every head hyper would refuse is refused
//! here first, with a body a client can show.

use super::HttpLimits;
use crate::error::ApiError;
use axum::http::StatusCode;
use tokio::io::AsyncReadExt;

/// Why a head was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client closed (or reset) the connection before a whole head; nothing to answer.
    Closed,
    Timeout,
    HeadTooLarge,
    TooManyHeaders,
    UriTooLong,
    BodyTooLarge(u64),
    Malformed(String),
}

impl Refusal {
    pub fn api_error(&self, limits: &HttpLimits) -> ApiError {
        let (status, code, message) = match self {
            Refusal::Timeout => {
                return ApiError::request_timeout("the request head", limits.header_timeout)
            }
            Refusal::BodyTooLarge(n) => {
                return ApiError::body_too_large(limits.max_body_bytes, Some(*n))
            }
            // Never sent (the client is gone); listed so every refusal has its error.
            Refusal::Closed => (
                StatusCode::BAD_REQUEST,
                "connection_closed",
                "the connection closed before a whole request head".into(),
            ),
            Refusal::HeadTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!(
                    "the request line and headers exceed {} bytes",
                    limits.max_head_bytes
                ),
            ),
            Refusal::TooManyHeaders => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too_many_headers",
                format!("the request has more than {} headers", limits.max_headers),
            ),
            Refusal::UriTooLong => (
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                format!("the request target exceeds {} bytes", limits.max_uri_bytes),
            ),
            Refusal::Malformed(why) => (
                StatusCode::BAD_REQUEST,
                "malformed_request",
                format!("malformed HTTP request: {why}"),
            ),
        };
        ApiError {
            status,
            message,
            kind: "invalid_request_error",
            param: None,
            code: Some(code),
        }
    }
}

/// Reads from `stream` until a whole head has arrived and returns every byte read (the head and
/// whatever followed it), for hyper to read again. No deadline here: the caller sets it.
pub async fn read(
    stream: &mut (impl AsyncReadExt + Unpin),
    limits: &HttpLimits,
) -> Result<Vec<u8>, Refusal> {
    let mut received = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| Refusal::Closed)?;
        if n == 0 {
            return Err(Refusal::Closed);
        }
        received.extend_from_slice(&chunk[..n]);
        if check(&received, limits)? {
            return Ok(received);
        }
    }
}

/// `Ok(true)`: a whole, acceptable head is at the start of `bytes`; `Ok(false)`: not yet whole.
pub fn check(bytes: &[u8], limits: &HttpLimits) -> Result<bool, Refusal> {
    // The target is known to be too long as soon as the request line is, whole or not.
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or(bytes);
    // "METHOD " + target + " HTTP/1.1\r": 32 bytes cover any method a server handles.
    if line.len() > limits.max_uri_bytes + 32 {
        return Err(Refusal::UriTooLong);
    }
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Partial) => {
            return if bytes.len() >= limits.max_head_bytes {
                Err(Refusal::HeadTooLarge)
            } else {
                Ok(false)
            };
        }
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooManyHeaders),
        Err(e) => return Err(Refusal::Malformed(e.to_string())),
    };
    if len > limits.max_head_bytes {
        return Err(Refusal::HeadTooLarge);
    }
    if req.path.is_some_and(|p| p.len() > limits.max_uri_bytes) {
        return Err(Refusal::UriTooLong);
    }
    framing(req.headers, limits)?;
    Ok(true)
}

/// The body framing hyper would refuse (with an empty 400), refused here instead, and a declared
/// length over the limit refused before the body is sent.
fn framing(headers: &[httparse::Header], limits: &HttpLimits) -> Result<(), Refusal> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| Refusal::Malformed("content-length is not a number".into()))?;
            if length.is_some_and(|l| l != v) {
                return Err(Refusal::Malformed(
                    "conflicting content-length headers".into(),
                ));
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = std::str::from_utf8(h.value)
                .unwrap_or("")
                .rsplit(',')
                .next()
                .unwrap_or("")
                .trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(Refusal::Malformed(
                    "transfer-encoding must end with chunked".into(),
                ));
            }
            chunked = true;
        }
    }
    if chunked && length.is_some() {
        return Err(Refusal::Malformed(
            "both content-length and transfer-encoding".into(),
        ));
    }
    match length {
        Some(n) if n > limits.max_body_bytes as u64 => Err(Refusal::BodyTooLarge(n)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits {
            max_head_bytes: 256,
            max_uri_bytes: 64,
            max_headers: 4,
            max_body_bytes: 100,
            ..HttpLimits::default()
        }
    }

    #[test]
    fn whole_heads_pass_and_partial_ones_wait() {
        let l = limits();
        let ok = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(check(ok, &l), Ok(true));
        assert_eq!(check(&ok[..20], &l), Ok(false));
        assert_eq!(check(b"GET / HTTP/1.1\r\n", &l), Ok(false));
    }

    #[test]
    fn every_bound_has_its_refusal() {
        let l = limits();
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100));
        assert_eq!(check(long.as_bytes(), &l), Err(Refusal::UriTooLong));
        // A target too long is refused before its line ends.
        assert_eq!(check(&long.as_bytes()[..99], &l), Err(Refusal::UriTooLong));
        let many = "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\ne: 5\r\n\r\n";
        assert_eq!(check(many.as_bytes(), &l), Err(Refusal::TooManyHeaders));
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n", "v".repeat(300));
        assert_eq!(check(big.as_bytes(), &l), Err(Refusal::HeadTooLarge));
        let body = "POST / HTTP/1.1\r\ncontent-length: 1000\r\n\r\n";
        assert_eq!(check(body.as_bytes(), &l), Err(Refusal::BodyTooLarge(1000)));
        for bad in [
            "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03\r\n\r\n",
        ] {
            assert!(
                matches!(check(bad.as_bytes(), &l), Err(Refusal::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
