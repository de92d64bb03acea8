//! The HTTP layer under the router. axum's own `serve` has no header, body or idle timeouts and
//! no connection limit, and hyper answers a malformed head with an empty body; this layer:
//!
//! - refuses connections past [`HttpLimits::max_connections`] with a 503 (OpenAI error shape);
//! - reads each request head itself ([`head`]), with a deadline and bounds on its size, its
//!   target and its header count, and answers every refusal (408, 400, 413, 414, 431) with an
//!   OpenAI-shaped body before hyper sees a byte;
//! - hands the connection to hyper for one request (`Connection: close`): with no keep-alive a
//!   connection is never idle between requests, so the head deadline is the idle timeout, and
//!   every head passes through [`head`];
//! - fails a write that makes no progress for [`HttpLimits::write_timeout`] ([`io`]): a client
//!   that stops reading its answer gives its connection (and generation) up.
//!
//! The body deadline is a middleware of the router (`routes::read_body`), which reads every
//! body whole before a handler runs.

pub mod head;
pub mod io;

use crate::error::ApiError;
use crate::AppState;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Bounds of the HTTP layer (README: Limits). Every one is a `serve` flag.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// The whole request head (request line and headers) must arrive within this.
    pub header_timeout: Duration,
    /// The whole body must arrive within this, counted from the end of the head.
    pub body_timeout: Duration,
    /// A write of the answer that makes no progress for this long ends the connection.
    pub write_timeout: Duration,
    /// Request line and headers together.
    pub max_head_bytes: usize,
    /// The request target (path and query).
    pub max_uri_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
            max_head_bytes: 32 << 10,
            max_uri_bytes: 8 << 10,
            max_headers: 64,
            max_body_bytes: 8 << 20,
        }
    }
}

/// Accepts connections until `shutdown` resolves, then waits for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.http.clone();
    let app = crate::routes::router(state.clone());
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                // Out of file descriptors and the like: wait instead of spinning, as hyper's
                // own server does; the listener itself stays good.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        while tasks.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let limits = limits.clone();
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let app = app.clone();
                let metrics = state.metrics.clone();
                tasks.spawn(async move {
                    connection(stream, app, &limits, &metrics).await;
                    drop(permit);
                });
            }
            Err(_) => {
                state.metrics.refused_connections.fetch_add(1, Relaxed);
                let busy = ApiError::unavailable(format!(
                    "the server has {} connections open, its limit (--max-connections); retry \
                     later",
                    limits.max_connections
                ));
                tasks.spawn(async move { refuse(stream, &busy, &limits).await });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One connection: the head read and checked here, then one request served by hyper.
async fn connection(
    mut stream: TcpStream,
    app: axum::Router,
    limits: &HttpLimits,
    metrics: &crate::metrics::Metrics,
) {
    let read = tokio::time::timeout(limits.header_timeout, head::read(&mut stream, limits)).await;
    let received = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(head::Refusal::Closed)) => return,
        Ok(Err(r)) => {
            metrics.http_errors.fetch_add(1, Relaxed);
            return refuse(stream, &r.api_error(limits), limits).await;
        }
        Err(_) => {
            metrics.http_errors.fetch_add(1, Relaxed);
            let e = head::Refusal::Timeout.api_error(limits);
            return refuse(stream, &e, limits).await;
        }
    };
    let io = io::Guarded::new(io::Prefixed::new(received, stream), limits.write_timeout);
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        // The head was bounded already; hyper's own bounds must not be the tighter ones.
        .max_buf_size((limits.max_head_bytes + (64 << 10)).max(8192))
        .max_headers(limits.max_headers.max(1))
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!("connection ended: {e}");
    }
}

/// Answers a connection that hyper will never see with `e` and closes it. What the client still
/// sends (a refused request's body) is read and dropped for up to 2 s first: closing with unread
/// bytes makes the kernel send a reset, and a client still writing its body would get that
/// reset instead of the answer. The time bound, not a byte count, limits the cost.
async fn refuse(mut stream: TcpStream, e: &ApiError, limits: &HttpLimits) {
    let body = e.body().to_string();
    let status = e.status;
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
        answer.push_str("retry-after: 1\r\n");
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    let write = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(limits.write_timeout, write)
        .await
        .is_err()
    {
        return;
    }
    let mut sink = vec![0u8; 64 << 10];
    let drain = async { while let Ok(1..) = stream.read(&mut sink).await {} };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}
