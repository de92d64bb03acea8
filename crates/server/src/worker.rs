//! The model's one thread. Backends need not be `Send`, so the backend is built inside the
//! thread and never leaves it; requests reach it through a bounded queue and answer through a
//! per-request channel. A closed channel means the client went away: the job is skipped if it
//! is still queued and cancelled at the next decoder step if it is running.

use crate::completion::{complete, Completion, FinishReason, Update};
use crate::error::ApiError;
use crate::events::StepView;
use crate::metrics::Metrics;
use crate::params::GenRequest;
use crate::tools::{Piece, ToolCall, ToolStream};
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use unmask_core::decode::KvPrefix;
use unmask_core::{Backend, Error, Model, Result};

/// Builds the backend on the worker thread.
pub type BackendFactory = Box<dyn FnOnce(&Model) -> Result<Box<dyn Backend>> + Send>;

/// What a request hears back, in order: deltas, then one `Done` or `Failed`.
#[derive(Debug)]
pub enum JobEvent {
    /// New text (possibly empty when only `step` is set).
    Delta {
        text: String,
        step: Option<Value>,
    },
    /// A tool call the answer made (requests with tools), the `index`-th of the answer.
    ToolCall {
        index: usize,
        call: ToolCall,
    },
    Done(Completion),
    Failed(ApiError),
}

struct Job {
    req: GenRequest,
    tx: UnboundedSender<JobEvent>,
    queued: Instant,
}

pub struct Worker {
    queue: SyncSender<Job>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// Starts the thread and waits until its backend is built (its error is returned).
    /// `capacity` requests may wait while one runs; 0 admits a request only when idle.
    pub fn spawn(
        model: Arc<Model>,
        make_backend: BackendFactory,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Worker> {
        let (queue, jobs) = sync_channel::<Job>(capacity);
        let (ready_tx, ready) = sync_channel::<Result<()>>(1);
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("unmask-model".into())
            .spawn(move || {
                let backend = match make_backend(&model) {
                    Ok(b) => {
                        let _ = ready_tx.send(Ok(()));
                        b
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                serve_jobs(&model, backend, jobs, &m);
            })
            .map_err(|e| Error::backend("worker", format!("cannot start the model thread: {e}")))?;
        ready.recv().map_err(|_| {
            Error::backend(
                "worker",
                "the model thread stopped while building the backend",
            )
        })??;
        Ok(Worker {
            queue,
            capacity,
            metrics,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request.
    pub fn submit(&self, req: GenRequest) -> Result<UnboundedReceiver<JobEvent>, ApiError> {
        let (tx, rx) = unbounded_channel();
        self.metrics.queue_depth.fetch_add(1, Relaxed);
        let job = Job {
            req,
            tx,
            queued: Instant::now(),
        };
        match self.queue.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Relaxed);
                match e {
                    TrySendError::Full(_) => {
                        self.metrics.rejected_requests.fetch_add(1, Relaxed);
                        Err(ApiError::queue_full(self.capacity))
                    }
                    TrySendError::Disconnected(_) => {
                        self.metrics.failed_requests.fetch_add(1, Relaxed);
                        Err(ApiError::unavailable("the model thread has stopped"))
                    }
                }
            }
        }
    }
}

fn serve_jobs(model: &Model, mut backend: Box<dyn Backend>, jobs: Receiver<Job>, m: &Metrics) {
    // What the backend's K/V cache holds from the last request: the next one that starts
    // with the same tokens (a chat's next turn, a shared system prompt) skips them.
    let mut cache = KvPrefix::default();
    while let Ok(job) = jobs.recv() {
        m.queue_depth.fetch_sub(1, Relaxed);
        if job.tx.is_closed() {
            m.cancelled_requests.fetch_add(1, Relaxed);
            continue;
        }
        m.running.store(1, Relaxed);
        m.request_queue.observe(job.queued.elapsed());
        // A panic is a bug, but it must cost one request, not the server.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            run(model, backend.as_mut(), &mut cache, &job, m)
        }));
        m.running.store(0, Relaxed);
        let ev = match outcome {
            Ok(Ok(c)) => {
                m.completed_requests.fetch_add(1, Relaxed);
                m.prompt_tokens.fetch_add(c.prompt_tokens as u64, Relaxed);
                m.cached_prompt_tokens
                    .fetch_add(c.cached_tokens as u64, Relaxed);
                m.completion_tokens
                    .fetch_add(c.completion_tokens as u64, Relaxed);
                JobEvent::Done(c)
            }
            Ok(Err(Error::Cancelled)) => {
                m.cancelled_requests.fetch_add(1, Relaxed);
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!("generation failed: {e}");
                m.failed_requests.fetch_add(1, Relaxed);
                JobEvent::Failed(ApiError::from_core(&e))
            }
            Err(_) => {
                m.failed_requests.fetch_add(1, Relaxed);
                JobEvent::Failed(ApiError::internal("the model thread hit an internal error"))
            }
        };
        let _ = job.tx.send(ev);
    }
}

fn run(
    model: &Model,
    backend: &mut dyn Backend,
    cache: &mut KvPrefix,
    job: &Job,
    m: &Metrics,
) -> Result<Completion> {
    let r = &job.req;
    let started = Instant::now();
    let mut last = started;
    // When the first forward ended: prefill before it, decode after.
    let mut first_forward: Option<Instant> = None;
    // With tools, text passes through the tool-call splitter: spans become calls, the rest
    // stays text; what the answer says in the end is what the stream said.
    let mut tools = r.tools.clone().map(ToolStream::new);
    let mut content = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    let keep = if r.tools.is_some() {
        model.tokenizer.tool_markers()
    } else {
        Vec::new()
    };
    let mut send = |text: &str, step: Option<Value>, final_: bool| -> bool {
        let pieces = match tools.as_mut() {
            None => vec![Piece::Text(text.to_string())],
            Some(t) => {
                let mut p = t.push(text);
                if final_ {
                    p.extend(t.finish());
                }
                p
            }
        };
        let mut step = step;
        let mut ok = true;
        for p in pieces {
            match p {
                Piece::Text(t) => {
                    content.push_str(&t);
                    if !t.is_empty() || step.is_some() {
                        ok &= job
                            .tx
                            .send(JobEvent::Delta {
                                text: t,
                                step: step.take(),
                            })
                            .is_ok();
                    }
                }
                Piece::Call(call) => {
                    calls.push(call.clone());
                    let index = calls.len() - 1;
                    ok &= job.tx.send(JobEvent::ToolCall { index, call }).is_ok();
                }
            }
        }
        if let Some(step) = step {
            ok &= job
                .tx
                .send(JobEvent::Delta {
                    text: String::new(),
                    step: Some(step),
                })
                .is_ok();
        }
        ok && !job.tx.is_closed()
    };
    let mut c = complete(
        model,
        backend,
        cache,
        &r.prompt,
        &r.params,
        r.stop.clone(),
        keep,
        &mut |u| match u {
            Update::Step { event, delta } => {
                m.observe_step(last.elapsed());
                last = Instant::now();
                if first_forward.is_none() {
                    first_forward = Some(last);
                    m.request_prefill.observe(last - started);
                }
                let step = r.step_events.then(|| {
                    serde_json::to_value(StepView::new(event, &model.tokenizer, r.prompt.len()))
                        .unwrap_or(Value::Null)
                });
                if delta.is_empty() && step.is_none() {
                    return !job.tx.is_closed();
                }
                send(delta, step, false)
            }
            Update::Tail(text) => send(text, None, false),
        },
    )?;
    if r.tools.is_some() {
        if !send("", None, true) {
            return Err(Error::Cancelled);
        }
        c.text = content;
        if !calls.is_empty() {
            c.finish_reason = FinishReason::ToolCalls;
        }
        c.tool_calls = calls;
    }
    if let Some(t) = first_forward {
        m.request_decode.observe(t.elapsed());
    }
    Ok(c)
}
