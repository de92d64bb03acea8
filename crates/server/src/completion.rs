//! One completion as a chat or API user sees it: the block-diffusion decoder, the committed
//! prefix turned into text deltas (`PrefixStreamer`), and stop strings. Used by the server's
//! worker and by `unmask chat`, so both stream exactly the text a non-streamed answer has.
//!
//! The text is final as soon as the committed prefix reaches an end-of-turn token (or a stop
//! string): nothing before it can change, so decoding stops there instead of finishing the block.

use crate::stop::StopMatcher;
use unmask_core::decode::stream::PrefixStreamer;
use unmask_core::decode::{Decoding, KvPrefix};
use unmask_core::{Backend, DecodeParams, Error, Model, Result, Step, StepEvent, StepOutput};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `gen_length` tokens without either.
    Length,
    /// The answer called tools (`tools` in the request and a `<tool_call>` span in the text).
    ToolCalls,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: usize,
    /// Prompt positions whose K/V came from the backend's cache (the last request's prefix).
    pub cached_tokens: usize,
    /// Generated tokens the text stands for, the end-of-turn token included.
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    pub forwards: usize,
    /// The calls taken out of `text` (requests with tools; the worker fills it).
    pub tool_calls: Vec<crate::tools::ToolCall>,
}

/// What the consumer sees as decoding goes.
pub enum Update<'a> {
    /// A forward finished; `delta` is the text it made readable (often empty).
    Step {
        event: &'a StepEvent,
        delta: &'a str,
    },
    /// Text released once decoding is over (held-back bytes, the end of the text).
    Tail(&'a str),
}

/// One completion as a state machine: [`Run::next_step`] hands out its next forward,
/// [`Run::apply`] takes that forward's samples, [`Run::finish`] gives the answer. The worker
/// drives several at once through one batched forward; [`complete`] drives one.
pub struct Run<'m> {
    model: &'m Model,
    decoding: Decoding,
    streamer: PrefixStreamer<'m>,
    prefix: CommittedPrefix,
    stop: StopMatcher,
    /// Everything shown to the consumer: by construction the answer's text.
    released: String,
    forwards: usize,
    /// The committed text reached an end-of-turn token or a stop string: the text is final
    /// (see the module comment), decoding goes no further.
    stopped: bool,
    prompt_len: usize,
    cached_tokens: usize,
}

impl<'m> Run<'m> {
    /// Checks the request. `keep`: special tokens written into the text (the tool-call markers
    /// of a request with tools). The caller starts the decoding in its KV-cache slot
    /// ([`Run::decoding`], `KvPrefix::begin`) and reports reuse with [`Run::set_cached`].
    pub fn new(
        model: &'m Model,
        prompt: &[u32],
        params: &DecodeParams,
        stops: Vec<String>,
        keep: Vec<u32>,
    ) -> Result<Self> {
        let decoding = Decoding::new(&model.special_ids(), model.context_limit(), prompt, params)?;
        let end_of_turn = model.tokenizer.end_of_turn.clone();
        Ok(Run {
            model,
            decoding,
            streamer: PrefixStreamer::new(&model.tokenizer, prompt.len(), end_of_turn.clone())
                .keep(keep),
            prefix: CommittedPrefix::new(prompt.len(), params.gen_length, end_of_turn),
            stop: StopMatcher::new(stops),
            released: String::new(),
            forwards: 0,
            stopped: false,
            prompt_len: prompt.len(),
            cached_tokens: 0,
        })
    }

    pub fn decoding(&mut self) -> &mut Decoding {
        &mut self.decoding
    }

    /// Prompt positions whose K/V came from a cache (reported in the usage).
    pub fn set_cached(&mut self, positions: usize) {
        self.cached_tokens = positions;
    }

    /// The next forward, `None` once the answer is complete (then [`Run::finish`]).
    pub fn next_step(&mut self) -> Option<Step<'_>> {
        if self.stopped {
            return None;
        }
        self.decoding.next_step()
    }

    /// Applies the samples of the forward [`Run::next_step`] handed out; `backend` names the
    /// device in errors. `on_update` returning false cancels: `Err(Error::Cancelled)`.
    pub fn apply(
        &mut self,
        out: &StepOutput,
        backend: &str,
        on_update: &mut dyn FnMut(Update) -> bool,
    ) -> Result<()> {
        // A prefill chunk writes K/V only: nothing for the consumer.
        if self.decoding.pending_prefill() {
            return self.decoding.apply_prefill(out, backend);
        }
        let event = self.decoding.apply(out, backend)?;
        self.forwards += 1;
        // Commits past gen_length (the padding of the last block) are not part of the answer:
        // neither the streamer nor the consumer sees them.
        let e = self.prefix.clip(&event);
        self.prefix.push(&e);
        let delta = self.stop.push(&self.streamer.push(&e)?.unwrap_or_default());
        self.released.push_str(&delta);
        if !on_update(Update::Step {
            event: &e,
            delta: &delta,
        }) {
            return Err(Error::Cancelled);
        }
        self.stopped = self.stop.matched() || self.prefix.ended();
        Ok(())
    }

    /// The decoding, for what `KvPrefix::end` keeps of it.
    pub fn decoded(&self) -> &Decoding {
        &self.decoding
    }

    /// The answer, once [`Run::next_step`] has returned `None`: the text's tail goes to
    /// `on_update`.
    pub fn finish(mut self, on_update: &mut dyn FnMut(Update) -> bool) -> Result<Completion> {
        let tokens = if self.stopped {
            self.prefix.tokens()
        } else {
            if let Some(e) = self.decoding.take_error() {
                return Err(self.model.explain(e));
            }
            match self.decoding.result() {
                Some(g) => g.tokens.clone(),
                None => return Err(Error::Invalid("decoder ended without a result".into())),
            }
        };
        let (completion_tokens, ended) = if self.stop.matched() {
            (self.prefix.len(), true)
        } else {
            let (delta, _) = self.streamer.finish(&tokens)?;
            let mut tail = self.stop.push(&delta);
            if !self.stop.matched() {
                tail.push_str(&self.stop.finish());
            }
            self.released.push_str(&tail);
            if !tail.is_empty() && !on_update(Update::Tail(&tail)) {
                return Err(Error::Cancelled);
            }
            match tokens
                .iter()
                .position(|t| self.prefix.end_of_turn.contains(t))
            {
                Some(i) => (i + 1, true),
                None => (tokens.len(), self.stop.matched()),
            }
        };
        Ok(Completion {
            text: self.released,
            prompt_tokens: self.prompt_len,
            cached_tokens: self.cached_tokens,
            completion_tokens,
            finish_reason: if ended {
                FinishReason::Stop
            } else {
                FinishReason::Length
            },
            forwards: self.forwards,
            tool_calls: Vec::new(),
        })
    }
}

/// Runs one completion on `backend` alone. `cache`: what `backend`'s K/V cache holds from the
/// last completion (decode/prefix.rs), reused where the prompt starts with it and updated.
/// `keep` and `on_update` as in [`Run`].
#[allow(clippy::too_many_arguments)]
pub fn complete(
    model: &Model,
    backend: &mut dyn Backend,
    cache: &mut KvPrefix,
    prompt: &[u32],
    params: &DecodeParams,
    stops: Vec<String>,
    keep: Vec<u32>,
    on_update: &mut dyn FnMut(Update) -> bool,
) -> Result<Completion> {
    let mut run = Run::new(model, prompt, params, stops, keep)?;
    let reused = cache.begin(backend, 0, run.decoding(), prompt, params)?;
    run.set_cached(reused);
    let name = backend.name();
    let result = loop {
        let Some(step) = run.next_step() else {
            break Ok(());
        };
        let out = match backend.step(&step) {
            Ok(out) => out,
            Err(e) => break Err(model.explain(e)),
        };
        if let Err(e) = run.apply(&out, &name, on_update) {
            break Err(e);
        }
    };
    // Steps that completed left final K/V, also when the consumer stopped; after any other
    // error the cache may be half written.
    cache.end(matches!(result, Ok(()) | Err(Error::Cancelled)).then(|| run.decoded()));
    result?;
    run.finish(on_update)
}

/// The generated slots as tokens settle (`StepEvent::settled`: commits under llada2.0, finished
/// blocks under the editing decoders), and how far the settled text reaches.
struct CommittedPrefix {
    prompt_len: usize,
    gen_length: usize,
    end_of_turn: Vec<u32>,
    slots: Vec<Option<u32>>,
    /// Committed tokens at the front, not counting an end-of-turn token.
    front: usize,
    ended: bool,
}

impl CommittedPrefix {
    fn new(prompt_len: usize, gen_length: usize, end_of_turn: Vec<u32>) -> Self {
        CommittedPrefix {
            prompt_len,
            gen_length,
            end_of_turn,
            slots: vec![None; gen_length],
            front: 0,
            ended: false,
        }
    }

    /// The event without commits or settled tokens outside the answer's positions.
    fn clip(&self, e: &StepEvent) -> StepEvent {
        let end = self.prompt_len + self.gen_length;
        let inside = |&(p, _): &(usize, u32)| p >= self.prompt_len && p < end;
        let mut e = e.clone();
        e.committed.retain(inside);
        e.settled.retain(inside);
        e
    }

    fn push(&mut self, e: &StepEvent) {
        for &(p, t) in &e.settled {
            self.slots[p - self.prompt_len] = Some(t);
        }
        while !self.ended && self.front < self.slots.len() {
            match self.slots[self.front] {
                Some(t) if self.end_of_turn.contains(&t) => self.ended = true,
                Some(_) => self.front += 1,
                None => break,
            }
        }
    }

    fn ended(&self) -> bool {
        self.ended
    }

    fn len(&self) -> usize {
        self.front
    }

    /// The committed front, with its end-of-turn token when it has one.
    fn tokens(&self) -> Vec<u32> {
        let n = self.front + usize::from(self.ended);
        self.slots[..n]
            .iter()
            .map(|t| t.expect("committed"))
            .collect()
    }
}
