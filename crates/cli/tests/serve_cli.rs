//! `unmask serve` through the real binary: it prints its address, answers over HTTP on
//! 127.0.0.1 like the library does, and refuses a bad model directory cleanly.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use unmask_tests::fixture;

/// The server process; killed when dropped.
struct Server {
    child: Child,
    addr: String,
    /// The line that gave the address.
    start_line: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_unmask"))
        .args(["serve", "--model"])
        .arg(fixture("tiny-llada2-add"))
        .args(["--port", "0", "--backend", "cpu", "--max-queue", "2"])
        .args(["--max-tokens", "16", "--max-context", "96"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run unmask serve");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let (addr, start_line) = loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("unmask serve exited before serving:\n{seen}");
        }
        seen.push_str(&line);
        if let Some(rest) = line.split("http://").nth(1) {
            break (rest.split_whitespace().next().unwrap().to_string(), line);
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = err.read_to_string(&mut sink);
    });
    Server {
        child,
        addr,
        start_line,
    }
}

/// One HTTP/1.1 exchange over a fresh connection: (status, body).
fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").expect("a full response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

#[test]
fn serves_models_chat_and_streams_through_the_binary() {
    let s = start();
    // No --max-batch: the cpu backend's default width, printed at start and in /metrics.
    assert!(
        s.start_line
            .contains("up to 4 requests per batched forward"),
        "{}",
        s.start_line
    );
    let (st, metrics) = http(&s.addr, "GET", "/metrics", None);
    assert_eq!(st, 200);
    assert!(metrics.contains("\nunmask_max_batch 4\n"), "{metrics}");
    let (st, body) = http(&s.addr, "GET", "/v1/models", None);
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let id = v["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(id, "tiny-llada2-add", "the directory name by default");

    let req = json!({ "model": id, "messages": [{ "role": "user", "content": "What is 23+45?" }] });
    let (st, body) = http(&s.addr, "POST", "/v1/chat/completions", Some(&req));
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "68");

    let mut req = req;
    req["stream"] = json!(true);
    let (st, body) = http(&s.addr, "POST", "/v1/chat/completions", Some(&req));
    assert_eq!(st, 200);
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(text, "68");

    let (st, body) = http(
        &s.addr,
        "POST",
        "/v1/completions",
        Some(&json!({ "prompt": "x", "threshold": 0 })),
    );
    assert_eq!(st, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["param"], "threshold");

    // The operator's bounds: --max-tokens names itself, --max-context caps the context.
    let (st, body) = http(
        &s.addr,
        "POST",
        "/v1/completions",
        Some(&json!({ "prompt": "x", "max_tokens": 17 })),
    );
    assert_eq!(st, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["param"], "max_tokens");
    assert!(body.contains("--max-tokens"), "{body}");
    let (st, body) = http(&s.addr, "GET", "/v1/models", None);
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["max_context"], 96);
    let long = "1+".repeat(100);
    let (st, body) = http(
        &s.addr,
        "POST",
        "/v1/completions",
        Some(&json!({ "prompt": long, "max_tokens": 16 })),
    );
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("context_length_exceeded"), "{body}");

    let (st, body) = http(&s.addr, "GET", "/metrics", None);
    assert_eq!(st, 200);
    assert!(
        body.contains("unmask_requests_total{endpoint=\"chat\"} 2"),
        "{body}"
    );
    assert!(body.contains("unmask_queue_capacity 2"), "{body}");
}

#[test]
fn a_missing_model_is_a_clean_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_unmask"))
        .args(["serve", "--model", "/nonexistent/model", "--port", "0"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("error:") && err.contains("/nonexistent/model"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
