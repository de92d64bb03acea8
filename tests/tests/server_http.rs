//! The HTTP layer over raw TCP, as a careless or hostile client drives it: slow heads and
//! bodies time out with a 408, oversized or malformed heads get 400/413/414/431, a full server
//! answers 503, and every one of these answers has an OpenAI error body; the server keeps
//! answering everyone else meanwhile.

mod server_support;

use serde_json::Value;
use server_support::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use unmask_server::http::HttpLimits;

fn short_limits() -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(400),
        max_connections: 4,
        max_body_bytes: 64 << 10,
        ..HttpLimits::default()
    }
}

async fn connect(s: &TestServer) -> TcpStream {
    TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Sends `bytes`, reads until the server closes, and splits status, headers and JSON body.
async fn exchange(s: &TestServer, bytes: &[u8]) -> (u16, String, Value) {
    let mut c = connect(s).await;
    c.write_all(bytes).await.unwrap();
    read_answer(&mut c).await
}

async fn read_answer(c: &mut TcpStream) -> (u16, String, Value) {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, head.to_ascii_lowercase(), v)
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_bodies_get_408_while_others_are_served() {
    let s = start_with(load(ADD_MODEL), 4, cpu(), short_limits()).await;
    // Half a head, then nothing: the connection is answered and closed at the deadline.
    let mut half_head = connect(&s).await;
    half_head
        .write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // Nothing at all (an idle connection).
    let mut idle = connect(&s).await;
    // A whole head and half its body.
    let mut half_body = connect(&s).await;
    let full = post("/v1/completions", r#"{"prompt": "1+1=", "max_tokens": 2}"#);
    half_body
        .write_all(&full.as_bytes()[..full.len() - 10])
        .await
        .unwrap();
    // Meanwhile a normal request is answered.
    let (st, _) = s.get("/health").await;
    assert_eq!(st, 200);
    let t = Instant::now();
    for (what, c) in [
        ("head", &mut half_head),
        ("idle", &mut idle),
        ("body", &mut half_body),
    ] {
        let (st, _, v) = read_answer(c).await;
        assert_eq!(st, 408, "{what}: {v}");
        assert_eq!(v["error"]["code"], "request_timeout", "{what}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("0.4 s"),
            "{v}"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(s.metric("unmask_http_errors_total").await >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_heads_get_openai_errors() {
    let s = start_with(load(ADD_MODEL), 4, cpu(), short_limits()).await;
    let long_target = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(20 << 10));
    let many_headers = format!(
        "GET /health HTTP/1.1\r\n{}\r\n",
        (0..100)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect::<String>()
    );
    let big_header = format!(
        "GET /health HTTP/1.1\r\nx-big: {}\r\n\r\n",
        "v".repeat(40 << 10)
    );
    let declared_too_large = "POST /v1/completions HTTP/1.1\r\ncontent-type: application/json\r\n\
                              content-length: 100000000\r\n\r\n{";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> =
        vec![
        ("long target", long_target.into_bytes(), 414, "uri_too_long"),
        ("many headers", many_headers.into_bytes(), 431, "too_many_headers"),
        ("big header", big_header.into_bytes(), 431, "headers_too_large"),
        (
            "declared body",
            declared_too_large.as_bytes().to_vec(),
            413,
            "body_too_large",
        ),
        (
            "bad length",
            b"POST /v1/completions HTTP/1.1\r\ncontent-length: 1e3\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "two lengths",
            b"POST /v1/completions HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n{}"
                .to_vec(),
            400,
            "malformed_request",
        ),
        (
            "not http",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "bad version",
            b"GET /health HTTP/2.0\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "space in header name",
            b"GET /health HTTP/1.1\r\nbad header: 1\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
    ];
    for (what, bytes, status, code) in cases {
        let (st, head, v) = exchange(&s, &bytes).await;
        assert_eq!(st, status, "{what}: {v}");
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{what}");
        assert!(
            head.contains("content-type: application/json"),
            "{what}: {head}"
        );
    }
    // A body longer than the limit without a declared length (chunked) is cut at the limit.
    let chunk = "a".repeat(70 << 10);
    let chunked = format!(
        "POST /v1/completions HTTP/1.1\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let (st, _, v) = exchange(&s, chunked.as_bytes()).await;
    assert_eq!(st, 413, "{v}");
    assert_eq!(v["error"]["code"], "body_too_large");
    // A good request over raw TCP is answered and the connection closed after it.
    let (st, head, v) = exchange(&s, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));
    assert!(head.contains("connection: close"), "{head}");
    let body = r#"{"prompt": "1+1=", "max_tokens": 2}"#;
    let (st, _, v) = exchange(&s, post("/v1/completions", body).as_bytes()).await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_answers_503_and_recovers() {
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(2),
        ..short_limits()
    };
    let s = start_with(load(ADD_MODEL), 4, cpu(), limits).await;
    // Four connections that send nothing hold all four slots.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(&s).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (st, head, v) = exchange(&s, b"GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error"]["type"], "server_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-connections"),
        "{v}"
    );
    assert!(head.contains("retry-after: 1"), "{head}");
    // Closing them frees the slots.
    drop(held);
    let t = Instant::now();
    loop {
        let (st, _, _) = exchange(&s, b"GET /health HTTP/1.1\r\n\r\n").await;
        if st == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "still {st}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(s.metric("unmask_connections_refused_total").await >= 1.0);
}
