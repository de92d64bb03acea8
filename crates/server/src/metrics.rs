//! Counters for `GET /metrics`, in the Prometheus text format. Plain atomics: the HTTP side and
//! the worker thread update them without locks.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A histogram's upper bucket bounds (seconds, or a count).
pub trait Buckets {
    const BOUNDS: [f64; 12];
}

/// One decoder step.
#[derive(Default)]
pub struct StepBuckets;
impl Buckets for StepBuckets {
    const BOUNDS: [f64; 12] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
}

/// One request's queue wait, prefill or decode.
#[derive(Default)]
pub struct RequestBuckets;
impl Buckets for RequestBuckets {
    const BOUNDS: [f64; 12] = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
}

/// Sequences in one batched forward.
#[derive(Default)]
pub struct BatchBuckets;
impl Buckets for BatchBuckets {
    const BOUNDS: [f64; 12] = [
        1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0,
    ];
}

/// A Prometheus histogram of durations (or counts) over `B`'s bounds.
#[derive(Default)]
pub struct Histogram<B: Buckets> {
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    /// The sum of the observed values, in billionths.
    nanos: AtomicU64,
    bounds: std::marker::PhantomData<B>,
}

impl<B: Buckets> Histogram<B> {
    pub fn observe(&self, d: Duration) {
        self.record(d.as_secs_f64());
    }

    pub fn record(&self, v: f64) {
        for (b, &le) in self.buckets.iter().zip(&B::BOUNDS) {
            if v <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.nanos.fetch_add((v * 1e9) as u64, Relaxed);
    }

    fn render(&self, o: &mut String, name: &str, help: &str) {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, le) in self.buckets.iter().zip(B::BOUNDS) {
            let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {}", b.load(Relaxed));
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(o, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[derive(Default)]
pub struct Metrics {
    /// Requests received, by endpoint (chat, completions).
    pub chat_requests: AtomicU64,
    pub completion_requests: AtomicU64,
    /// Rejected before reaching the queue (bad input: 4xx).
    pub invalid_requests: AtomicU64,
    /// Refused because the queue was full (429).
    pub rejected_requests: AtomicU64,
    pub completed_requests: AtomicU64,
    /// Ended because the client went away (while queued or while generating).
    pub cancelled_requests: AtomicU64,
    pub failed_requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens whose K/V came from the backend's cache (not recomputed).
    pub cached_prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub forwards: AtomicU64,
    /// Prompt chunks prefilled in forwards shared with running requests.
    pub prefill_chunks: AtomicU64,
    /// Connections answered 503 at once because `--max-connections` were open.
    pub refused_connections: AtomicU64,
    /// Requests refused by the HTTP layer: a head too slow, too large or malformed.
    pub http_errors: AtomicU64,
    /// Requests waiting for the worker.
    pub queue_depth: AtomicU64,
    /// Requests the worker is generating for.
    pub running: AtomicU64,
    /// Requests that may decode together (`--max-batch`, capped by the backend's slots).
    pub max_batch: AtomicU64,
    steps: Histogram<StepBuckets>,
    batch_size: Histogram<BatchBuckets>,
    /// Per request that reached the model: waiting in the queue, then its prefill (to the end
    /// of its first block's first step, chunks of a long prompt included), then the rest of
    /// its forwards.
    pub request_queue: Histogram<RequestBuckets>,
    pub request_prefill: Histogram<RequestBuckets>,
    pub request_decode: Histogram<RequestBuckets>,
}

impl Metrics {
    /// One batched forward of `sequences` requests that took `d`.
    pub fn observe_batch(&self, d: Duration, sequences: usize) {
        self.steps.observe(d);
        self.batch_size.record(sequences as f64);
        self.forwards.fetch_add(1, Relaxed);
    }

    pub fn render(&self, queue_capacity: usize) -> String {
        let mut o = String::new();
        let g = |a: &AtomicU64| a.load(Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(o, "{name}{labels} {v}");
            }
        };
        metric(
            "unmask_requests_total",
            "counter",
            "Generation requests received, by endpoint.",
            &[
                ("{endpoint=\"chat\"}", g(&self.chat_requests)),
                ("{endpoint=\"completions\"}", g(&self.completion_requests)),
            ],
        );
        metric(
            "unmask_requests_finished_total",
            "counter",
            "Generation requests by how they ended.",
            &[
                ("{outcome=\"completed\"}", g(&self.completed_requests)),
                ("{outcome=\"cancelled\"}", g(&self.cancelled_requests)),
                ("{outcome=\"invalid\"}", g(&self.invalid_requests)),
                ("{outcome=\"rejected\"}", g(&self.rejected_requests)),
                ("{outcome=\"failed\"}", g(&self.failed_requests)),
            ],
        );
        metric(
            "unmask_connections_refused_total",
            "counter",
            "Connections answered 503 because the connection limit was reached.",
            &[("", g(&self.refused_connections))],
        );
        metric(
            "unmask_http_errors_total",
            "counter",
            "Requests refused before routing (head timeout, too large, malformed).",
            &[("", g(&self.http_errors))],
        );
        metric(
            "unmask_prompt_tokens_total",
            "counter",
            "Prompt tokens of completed requests.",
            &[("", g(&self.prompt_tokens))],
        );
        metric(
            "unmask_prompt_tokens_cached_total",
            "counter",
            "Prompt tokens of completed requests taken from the K/V cache of the request before.",
            &[("", g(&self.cached_prompt_tokens))],
        );
        metric(
            "unmask_completion_tokens_total",
            "counter",
            "Generated tokens of completed requests.",
            &[("", g(&self.completion_tokens))],
        );
        metric(
            "unmask_forwards_total",
            "counter",
            "Model forward passes (one per batched decoder step).",
            &[("", g(&self.forwards))],
        );
        metric(
            "unmask_prefill_chunks_total",
            "counter",
            "Prompt chunks of requests that joined running ones, each prefilled in a forward shared with them.",
            &[("", g(&self.prefill_chunks))],
        );
        metric(
            "unmask_queue_depth",
            "gauge",
            "Requests waiting for the model.",
            &[("", g(&self.queue_depth))],
        );
        metric(
            "unmask_queue_capacity",
            "gauge",
            "Requests that may wait before the server answers 429.",
            &[("", queue_capacity as u64)],
        );
        metric(
            "unmask_requests_running",
            "gauge",
            "Requests the model is generating for.",
            &[("", g(&self.running))],
        );
        metric(
            "unmask_max_batch",
            "gauge",
            "Requests that may decode together in one forward.",
            &[("", g(&self.max_batch))],
        );
        self.steps.render(
            &mut o,
            "unmask_step_seconds",
            "Latency of one batched decoder step (a forward over every running request).",
        );
        self.batch_size.render(
            &mut o,
            "unmask_batch_size",
            "Requests in one batched forward.",
        );
        self.request_queue.render(
            &mut o,
            "unmask_request_queue_seconds",
            "Time a request waited for the model.",
        );
        self.request_prefill.render(
            &mut o,
            "unmask_request_prefill_seconds",
            "A request's first forward: its prompt's prefill with the first block's first step.",
        );
        self.request_decode.render(
            &mut o,
            "unmask_request_decode_seconds",
            "A completed request's forwards after the first.",
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_batch(Duration::from_millis(3), 1);
        m.observe_batch(Duration::from_millis(300), 3);
        let text = m.render(4);
        assert!(text.contains("unmask_step_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("unmask_step_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("unmask_step_seconds_bucket{le=\"0.5\"} 2\n"));
        assert!(text.contains("unmask_step_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("unmask_step_seconds_count 2\n"));
        assert!(text.contains("unmask_forwards_total 2\n"));
        assert!(text.contains("unmask_queue_capacity 4\n"));
        assert!(text.contains("unmask_batch_size_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("unmask_batch_size_bucket{le=\"2\"} 1\n"));
        assert!(text.contains("unmask_batch_size_bucket{le=\"3\"} 2\n"));
        assert!(text.contains("unmask_batch_size_sum 4\n"));
        m.request_queue.observe(Duration::from_millis(20));
        let text = m.render(4);
        assert!(text.contains("# TYPE unmask_request_queue_seconds histogram\n"));
        assert!(text.contains("unmask_request_queue_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(text.contains("unmask_request_queue_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("unmask_request_queue_seconds_count 1\n"));
        assert!(text.contains("unmask_request_prefill_seconds_count 0\n"));
    }
}
