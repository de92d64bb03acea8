//! One completion as a chat or API user sees it: the block-diffusion decoder, the committed
//! prefix turned into text deltas (`PrefixStreamer`), and stop strings. Used by the server's
//! worker and by `unmask chat`, so both stream exactly the text a non-streamed answer has.
//!
//! The text is final as soon as the committed prefix reaches an end-of-turn token (or a stop
//! string): nothing before it can change, so decoding stops there instead of finishing the block.

use crate::stop::StopMatcher;
use unmask_core::decode::stream::PrefixStreamer;
use unmask_core::decode::{generate_reusing, KvPrefix};
use unmask_core::{Backend, DecodeParams, Error, Model, Result, StepEvent};

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

/// Runs one completion. `cache`: what `backend`'s K/V cache holds from the last completion
/// (decode/prefix.rs), reused where the prompt starts with it and updated. `keep`: special
/// tokens written into the text (the tool-call markers of a request with tools). `on_update`
/// returning false cancels it: the result is then `Err(Error::Cancelled)`.
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
    let end_of_turn = model.tokenizer.end_of_turn.clone();
    let mut streamer =
        PrefixStreamer::new(&model.tokenizer, prompt.len(), end_of_turn.clone()).keep(keep);
    let mut prefix = CommittedPrefix::new(prompt.len(), params.gen_length, end_of_turn);
    let mut stop = StopMatcher::new(stops);
    // Everything shown to the consumer: by construction the answer's text.
    let mut released = String::new();
    let mut consumer_quit = false;
    let mut failure = None;
    let mut forwards = 0usize;

    let result = generate_reusing(
        backend,
        cache,
        &model.special_ids(),
        model.context_limit(),
        prompt,
        params,
        &mut |event| {
            forwards += 1;
            // Commits past gen_length (the padding of the last block) are not part of the
            // answer: neither the streamer nor the consumer sees them.
            let e = prefix.clip(event);
            prefix.push(&e);
            let delta = match streamer.push(&e) {
                Ok(d) => stop.push(&d.unwrap_or_default()),
                Err(err) => {
                    failure = Some(err);
                    return false;
                }
            };
            released.push_str(&delta);
            if !on_update(Update::Step {
                event: &e,
                delta: &delta,
            }) {
                consumer_quit = true;
                return false;
            }
            !(stop.matched() || prefix.ended())
        },
    );
    if let Some(err) = failure {
        return Err(err);
    }
    if consumer_quit {
        return Err(Error::Cancelled);
    }
    let tokens = match result {
        Ok(gen) => gen.tokens,
        // We stopped it ourselves: the text is final (see the module comment).
        Err(Error::Cancelled) => prefix.tokens(),
        Err(e) => return Err(model.explain(e)),
    };
    let (completion_tokens, ended) = if stop.matched() {
        (prefix.len(), true)
    } else {
        let (delta, _) = streamer.finish(&tokens)?;
        let mut tail = stop.push(&delta);
        if !stop.matched() {
            tail.push_str(&stop.finish());
        }
        released.push_str(&tail);
        if !tail.is_empty() && !on_update(Update::Tail(&tail)) {
            return Err(Error::Cancelled);
        }
        match tokens.iter().position(|t| prefix.end_of_turn.contains(t)) {
            Some(i) => (i + 1, true),
            None => (tokens.len(), stop.matched()),
        }
    };
    Ok(Completion {
        text: released,
        prompt_tokens: prompt.len(),
        cached_tokens: cache.reused(),
        completion_tokens,
        finish_reason: if ended {
            FinishReason::Stop
        } else {
            FinishReason::Length
        },
        forwards,
        tool_calls: Vec::new(),
    })
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
