//! The model's one thread. Backends need not be `Send`, so the backend is built inside the
//! thread and never leaves it; requests reach it through a bounded queue and answer through a
//! per-request channel. A closed channel means the client went away: the job is skipped if it
//! is still queued and cancelled at the next decoder step if it is running.
//!
//! Continuous batching: before each forward the thread admits queued requests while fewer than
//! `max_batch` run, each into the KV-cache slot that holds the most of its prompt
//! (`SlotPool`), then runs the next step of every running request as one batched forward
//! (`Backend::step_batch`); a request leaves as soon as its answer is complete. A request that
//! joins running ones has its prompt prefilled `prefill_chunk` positions a forward
//! (`Decoding::chunk_prefill`), beside their windows, so that a long prompt does not stall
//! them for one long forward.

use crate::completion::{Completion, FinishReason, Run, Update};
use crate::error::ApiError;
use crate::events::StepView;
use crate::metrics::Metrics;
use crate::params::GenRequest;
use crate::tools::{Piece, ToolCall, ToolStream};
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use unmask_core::backend::SlotStep;
use unmask_core::decode::SlotPool;
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
    /// `None` once dropping: the model thread sees the queue close and ends.
    queue: Option<SyncSender<Job>>,
    capacity: usize,
    metrics: Arc<Metrics>,
    /// The model thread, joined when the worker is dropped: it drops the backend, and a device
    /// torn down while the process exits crashed it (lavapipe: SIGSEGV in an exit handler,
    /// about one run in twelve of server_load.rs before this join).
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Worker {
    /// Closes the queue and waits for the model thread, which ends once its running requests
    /// have finished or seen their clients gone (at most one forward after the server stops).
    fn drop(&mut self) {
        self.queue = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Worker {
    /// Starts the thread and waits until its backend is built (its error is returned).
    /// `capacity` requests may wait while `batching.max_batch` run; 0 admits a request only
    /// while the worker is idle, waiting for work.
    pub fn spawn(
        model: Arc<Model>,
        make_backend: BackendFactory,
        capacity: usize,
        batching: Batching,
        metrics: Arc<Metrics>,
    ) -> Result<Worker> {
        let (queue, jobs) = sync_channel::<Job>(capacity);
        let (ready_tx, ready) = sync_channel::<Result<()>>(1);
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("unmask-model".into())
            .spawn(move || {
                let backend = match make_backend(&model) {
                    Ok(b) => {
                        // The width in use is known before `start` returns (the start line
                        // prints it).
                        m.max_batch.store(batching.width(b.slots()) as u64, Relaxed);
                        let _ = ready_tx.send(Ok(()));
                        b
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                serve_jobs(&model, backend, jobs, &m, batching);
            })
            .map_err(|e| Error::backend("worker", format!("cannot start the model thread: {e}")))?;
        ready.recv().map_err(|_| {
            Error::backend(
                "worker",
                "the model thread stopped while building the backend",
            )
        })??;
        Ok(Worker {
            queue: Some(queue),
            capacity,
            metrics,
            thread: Some(thread),
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
        let sent = match &self.queue {
            Some(q) => q.try_send(job),
            None => Err(TrySendError::Disconnected(job)),
        };
        match sent {
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

/// How the worker batches and what idle KV-cache slots may keep.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Requests decoded together (capped by the backend's slots); `None`: half its slots, the
    /// other half keeping finished requests' K/V (the CLI's per-backend default gives each
    /// backend twice its batch in slots).
    pub max_batch: Option<usize>,
    /// Bytes of K/V that idle slots may keep for later requests to reuse.
    pub prefix_cache_bytes: u64,
    /// Prompt positions per forward for a request that joins running ones
    /// (`Decoding::chunk_prefill`): its prefill shares several batched forwards with their
    /// windows instead of stalling them for one long one. 0: never chunked.
    pub prefill_chunk: usize,
}

impl Batching {
    /// Requests that decode together on a backend of `slots` KV-cache slots.
    pub fn width(&self, slots: usize) -> usize {
        self.max_batch.unwrap_or(slots / 2).clamp(1, slots.max(1))
    }
}

impl Default for Batching {
    /// One request at a time; idle slots keep up to 1 GiB of K/V; prefills of 256 positions
    /// a forward beside running requests.
    fn default() -> Self {
        Batching {
            max_batch: Some(1),
            prefix_cache_bytes: 1 << 30,
            prefill_chunk: 256,
        }
    }
}

/// A request the worker is generating for: its completion state machine, its KV-cache slot,
/// and what its client has been sent.
struct Running<'m> {
    run: Run<'m>,
    slot: usize,
    reply: Reply,
}

/// What a request's client has been sent so far, and its timings.
struct Reply {
    tx: UnboundedSender<JobEvent>,
    /// With tools, text passes through the tool-call splitter: spans become calls, the rest
    /// stays text; what the answer says in the end is what the stream said.
    tools: Option<ToolStream>,
    step_events: bool,
    prompt_len: usize,
    content: String,
    calls: Vec<ToolCall>,
    started: Instant,
    /// When the first forward ended: prefill before it, decode after.
    first_forward: Option<Instant>,
}

impl Reply {
    /// Sends text (through the tool-call splitter where the request has tools) and a step's
    /// event; `final_` flushes the splitter. False once the client has gone.
    fn send(&mut self, text: &str, step: Option<Value>, final_: bool) -> bool {
        let pieces = match self.tools.as_mut() {
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
                    self.content.push_str(&t);
                    if !t.is_empty() || step.is_some() {
                        ok &= self
                            .tx
                            .send(JobEvent::Delta {
                                text: t,
                                step: step.take(),
                            })
                            .is_ok();
                    }
                }
                Piece::Call(call) => {
                    self.calls.push(call.clone());
                    let index = self.calls.len() - 1;
                    ok &= self.tx.send(JobEvent::ToolCall { index, call }).is_ok();
                }
            }
        }
        if let Some(step) = step {
            ok &= self
                .tx
                .send(JobEvent::Delta {
                    text: String::new(),
                    step: Some(step),
                })
                .is_ok();
        }
        ok && !self.tx.is_closed()
    }

    fn update(&mut self, u: Update, model: &Model, m: &Metrics) -> bool {
        match u {
            Update::Step { event, delta } => {
                if self.first_forward.is_none() {
                    let now = Instant::now();
                    self.first_forward = Some(now);
                    m.request_prefill.observe(now - self.started);
                }
                let step = self.step_events.then(|| {
                    serde_json::to_value(StepView::new(event, &model.tokenizer, self.prompt_len))
                        .unwrap_or(Value::Null)
                });
                if delta.is_empty() && step.is_none() {
                    return !self.tx.is_closed();
                }
                self.send(delta, step, false)
            }
            Update::Tail(text) => self.send(text, None, false),
        }
    }
}

/// The worker's loop: admit waiting requests while fewer than `max_batch` run, run one
/// batched forward over every running request's next step, let finished ones leave.
fn serve_jobs(
    model: &Model,
    mut backend: Box<dyn Backend>,
    jobs: Receiver<Job>,
    m: &Metrics,
    batching: Batching,
) {
    let backend = backend.as_mut();
    // Already in the metrics (stored before `start` returned).
    let width = batching.width(backend.slots());
    let per_position = model.summary().kv_bytes_per_position.max(1);
    let keep = usize::try_from(batching.prefix_cache_bytes / per_position).unwrap_or(usize::MAX);
    // What each KV-cache slot holds from the request it last served: a request that starts
    // with the same tokens (a chat's next turn, a shared system prompt) skips them.
    let mut pool = SlotPool::new(backend.slots(), keep);
    let mut running: Vec<Running> = Vec::new();
    let mut open = true;
    loop {
        while open && running.len() < width {
            // Wait for work only when there is nothing to step.
            let job = if running.is_empty() {
                jobs.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                jobs.try_recv()
            };
            let job = match job {
                Ok(job) => job,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            };
            m.queue_depth.fetch_sub(1, Relaxed);
            if job.tx.is_closed() {
                m.cancelled_requests.fetch_add(1, Relaxed);
                continue;
            }
            m.request_queue.observe(job.queued.elapsed());
            // A panic is a bug, but it must cost one request, not the server.
            // A prompt that joins running requests is prefilled in chunks; alone, at once.
            let chunk = if running.is_empty() {
                0
            } else {
                batching.prefill_chunk
            };
            let started = catch_unwind(AssertUnwindSafe(|| {
                admit(model, backend, &mut pool, &job, chunk)
            }));
            match started {
                Ok(Ok(r)) => running.push(r),
                Ok(Err(e)) => fail(m, &job.tx, &e),
                Err(_) => panicked(m, &job.tx),
            }
        }
        if running.is_empty() {
            if open {
                continue;
            }
            return;
        }
        m.running.store(running.len() as u64, Relaxed);
        let stepped = catch_unwind(AssertUnwindSafe(|| {
            step_all(model, backend, &mut pool, &mut running, m)
        }));
        if stepped.is_err() {
            // The forward's K/V may be half written: every slot in it is forgotten.
            for r in running.drain(..) {
                pool.end(backend, r.slot, None);
                panicked(m, &r.reply.tx);
            }
        }
        m.running.store(running.len() as u64, Relaxed);
    }
}

/// Starts `job`'s completion in the KV-cache slot that holds the most of its prompt.
fn admit<'m>(
    model: &'m Model,
    backend: &mut dyn Backend,
    pool: &mut SlotPool,
    job: &Job,
    prefill_chunk: usize,
) -> Result<Running<'m>> {
    let r = &job.req;
    let keep = if r.tools.is_some() {
        model.tokenizer.tool_markers()
    } else {
        Vec::new()
    };
    let mut run = Run::new(model, &r.prompt, &r.params, r.stop.clone(), keep)?;
    let slot = pool
        .choose(&r.prompt, &r.params)
        .ok_or_else(|| Error::backend("worker", "no free KV-cache slot"))?;
    let reused = pool.begin(backend, slot, run.decoding(), &r.prompt, &r.params)?;
    run.set_cached(reused);
    if prefill_chunk > 0 && r.params.use_cache {
        run.decoding().chunk_prefill(prefill_chunk)?;
    }
    Ok(Running {
        run,
        slot,
        reply: Reply {
            tx: job.tx.clone(),
            tools: r.tools.clone().map(ToolStream::new),
            step_events: r.step_events,
            prompt_len: r.prompt.len(),
            content: String::new(),
            calls: Vec::new(),
            started: Instant::now(),
            first_forward: None,
        },
    })
}

/// One batched forward over the next step of every running request; requests whose answer is
/// complete, whose client left or that failed leave the batch.
fn step_all(
    model: &Model,
    backend: &mut dyn Backend,
    pool: &mut SlotPool,
    running: &mut Vec<Running>,
    m: &Metrics,
) {
    let name = backend.name();
    // (index, how it ended): None = its answer is complete.
    let mut leaving: Vec<(usize, Option<Error>)> = Vec::new();
    // A request's K/V are kept for reuse unless a backend error may have half written them.
    let mut broken = vec![false; running.len()];
    let mut steps = Vec::with_capacity(running.len());
    let mut stepping = Vec::with_capacity(running.len());
    for (i, r) in running.iter_mut().enumerate() {
        if r.reply.tx.is_closed() {
            leaving.push((i, Some(Error::Cancelled)));
            continue;
        }
        match r.run.next_step() {
            Some(step) => {
                steps.push(SlotStep { slot: r.slot, step });
                stepping.push(i);
            }
            None => leaving.push((i, None)),
        }
    }
    if !steps.is_empty() {
        let t = Instant::now();
        let result = backend.step_batch(&steps);
        m.observe_batch(t.elapsed(), steps.len());
        drop(steps);
        match result {
            Ok(outs) => {
                for (&i, out) in stepping.iter().zip(&outs) {
                    let Running { run, reply, .. } = &mut running[i];
                    let chunk = run.decoded().pending_prefill();
                    match run.apply(out, &name, &mut |u| reply.update(u, model, m)) {
                        Ok(()) if chunk => {
                            m.prefill_chunks.fetch_add(1, Relaxed);
                        }
                        Ok(()) => {}
                        Err(e) => leaving.push((i, Some(e))),
                    }
                }
            }
            Err(e) => {
                let e = model.explain(e);
                for &i in &stepping {
                    broken[i] = true;
                    leaving.push((i, Some(Error::backend(&name, e.to_string()))));
                }
            }
        }
    }
    leaving.sort_unstable_by_key(|(i, _)| std::cmp::Reverse(*i));
    let left: Vec<(Running, Option<Error>)> = leaving
        .into_iter()
        .map(|(i, ended)| {
            let r = running.remove(i);
            let kept = (!broken[i] && matches!(ended, None | Some(Error::Cancelled)))
                .then(|| r.run.decoded());
            pool.end(backend, r.slot, kept);
            (r, ended)
        })
        .collect();
    // Counted out before their answers go, so that a client that has its answer never sees
    // itself still running.
    m.running.store(running.len() as u64, Relaxed);
    for (r, ended) in left.into_iter().rev() {
        match ended {
            None => finish(model, r, m),
            Some(Error::Cancelled) => {
                m.cancelled_requests.fetch_add(1, Relaxed);
            }
            Some(e) => fail(m, &r.reply.tx, &e),
        }
    }
}

/// The answer of a request whose decoding is over, sent with its usage.
fn finish(model: &Model, r: Running, m: &Metrics) {
    let Running { run, mut reply, .. } = r;
    let result = run.finish(&mut |u| reply.update(u, model, m));
    let mut c = match result {
        Ok(c) => c,
        Err(Error::Cancelled) => {
            m.cancelled_requests.fetch_add(1, Relaxed);
            return;
        }
        Err(e) => return fail(m, &reply.tx, &e),
    };
    if reply.tools.is_some() {
        if !reply.send("", None, true) {
            m.cancelled_requests.fetch_add(1, Relaxed);
            return;
        }
        c.text = std::mem::take(&mut reply.content);
        if !reply.calls.is_empty() {
            c.finish_reason = FinishReason::ToolCalls;
        }
        c.tool_calls = std::mem::take(&mut reply.calls);
    }
    if let Some(t) = reply.first_forward {
        m.request_decode.observe(t.elapsed());
    }
    m.completed_requests.fetch_add(1, Relaxed);
    m.prompt_tokens.fetch_add(c.prompt_tokens as u64, Relaxed);
    m.cached_prompt_tokens
        .fetch_add(c.cached_tokens as u64, Relaxed);
    m.completion_tokens
        .fetch_add(c.completion_tokens as u64, Relaxed);
    let _ = reply.tx.send(JobEvent::Done(c));
}

fn fail(m: &Metrics, tx: &UnboundedSender<JobEvent>, e: &Error) {
    tracing::warn!("generation failed: {e}");
    m.failed_requests.fetch_add(1, Relaxed);
    let _ = tx.send(JobEvent::Failed(ApiError::from_core(e)));
}

fn panicked(m: &Metrics, tx: &UnboundedSender<JobEvent>) {
    m.failed_requests.fetch_add(1, Relaxed);
    let _ = tx.send(JobEvent::Failed(ApiError::internal(
        "the model thread hit an internal error",
    )));
}

#[cfg(test)]
mod tests {
    use super::Batching;

    #[test]
    fn the_width_is_the_asked_batch_or_half_the_slots_within_the_slots() {
        let b = |max_batch| Batching {
            max_batch,
            ..Batching::default()
        };
        assert_eq!(b(Some(8)).width(16), 8);
        assert_eq!(b(Some(100)).width(16), 16);
        assert_eq!(b(None).width(8), 4);
        assert_eq!(b(None).width(32), 16);
        assert_eq!(b(None).width(1), 1);
        assert_eq!(b(Some(4)).width(0), 1);
    }
}
