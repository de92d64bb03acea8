//! One generation, driven a step at a time by the caller (the worker awaits between steps so
//! that a cancel message gets through and an asynchronous device can answer). Each step yields
//! a [`StepMessage`]: what the page needs to draw the current block as slots filling in, and the
//! text that became readable at the front.

use serde::Serialize;
use unmask_core::decode::stream::PrefixStreamer;
use unmask_core::decode::Decoding;
use unmask_core::decode::Finish;
use unmask_core::{ChatTokenizer, DecodeParams, Result, SpecialIds, Step, StepOutput};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// A prompt token that shares the first window with the generation.
    Prompt,
    /// Committed by an earlier step.
    Done,
    /// Committed by this step.
    New,
    /// Replaced by this step (llada2.1/2.2 editing), or moved by a DELETE/SPLIT.
    Edited,
    /// Still masked: `id`/`text` are this step's provisional guess.
    Masked,
}

/// One position of the window after a step.
#[derive(Debug, Clone, Serialize)]
pub struct Slot {
    pub state: SlotState,
    pub id: u32,
    /// The token's text (special tokens kept).
    pub text: String,
    /// The guess's confidence, for masked slots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepMessage {
    /// Forward number, from 0.
    pub forward: usize,
    /// Absolute position of the window's first token.
    pub block_start: usize,
    /// The window as fed to this forward (the mask id where masked): the golden traces.
    pub window: Vec<u32>,
    /// (absolute position, token) committed by this step.
    pub committed: Vec<(usize, u32)>,
    /// Positions of the window still masked after this step.
    pub masked: Vec<usize>,
    /// (absolute position, token) of written tokens this step replaced (llada2.1/2.2).
    pub edited: Vec<(usize, u32)>,
    /// Positions of the fed window where this step wrote DELETE / SPLIT (llada2.2): the block
    /// closed up there / a mask was inserted before them.
    pub deleted: Vec<usize>,
    pub split: Vec<usize>,
    /// The window after this step, for drawing.
    pub slots: Vec<Slot>,
    /// Text newly readable at the front of the generation (empty if none).
    pub delta: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Done {
    /// Generated ids (cut after the first eos, eos included); for a cancelled run, the
    /// committed prefix.
    pub tokens: Vec<u32>,
    /// The generation's text up to the end of the turn.
    pub text: String,
    /// Text not yet sent in a step's `delta`.
    pub delta: String,
    pub forwards: usize,
    /// "eos", "length" or "cancelled".
    pub finish: &'static str,
    pub prompt_tokens: usize,
}

pub struct Generator<'t> {
    tok: &'t ChatTokenizer,
    decoding: Decoding,
    streamer: PrefixStreamer<'t>,
    prompt: Vec<u32>,
    mask: u32,
    /// Generated positions (relative to the prompt end); `None` while masked.
    generated: Vec<Option<u32>>,
}

impl<'t> Generator<'t> {
    /// `ids` are the model's special ids (capped by its embedding table).
    pub fn new(
        tok: &'t ChatTokenizer,
        ids: &SpecialIds,
        max_positions: usize,
        prompt: Vec<u32>,
        params: &DecodeParams,
    ) -> Result<Self> {
        let decoding = Decoding::new(ids, max_positions, &prompt, params)?;
        Ok(Generator {
            tok,
            streamer: PrefixStreamer::new(tok, prompt.len(), tok.end_of_turn.clone()),
            decoding,
            generated: vec![None; params.gen_length],
            prompt,
            mask: ids.mask,
        })
    }

    /// The next forward to run; `None` when decoding has ended (then [`Self::finish`]).
    /// The caller must reset the backend's KV cache before the first step.
    pub fn next_step(&mut self) -> Option<Step<'_>> {
        self.decoding.next_step()
    }

    /// Applies the samples of the step last handed out.
    pub fn apply(&mut self, out: &StepOutput, backend: &str) -> Result<StepMessage> {
        let e = self.decoding.apply(out, backend)?;
        let plen = self.prompt.len();
        for &(pos, t) in &e.settled {
            if let Some(slot) = pos
                .checked_sub(plen)
                .and_then(|i| self.generated.get_mut(i))
            {
                *slot = Some(t);
            }
        }
        let delta = self.streamer.push(&e)?.unwrap_or_default();
        // The window after this step; under DELETE/SPLIT positions shift, so a token that
        // differs from the fed window at its position counts as edited.
        let shifted = !(e.deleted.is_empty() && e.split.is_empty());
        let mut slots = Vec::with_capacity(e.window_after.len());
        for (i, (&before, &after)) in e.window.iter().zip(&e.window_after).enumerate() {
            let pos = e.block_start + i;
            let slot = if after == self.mask {
                let (_, id, c) = e
                    .proposals
                    .iter()
                    .copied()
                    .find(|p| p.0 == pos && !shifted)
                    .unwrap_or((pos, self.mask, 0.0));
                self.slot(SlotState::Masked, id, Some(c))?
            } else if pos < plen {
                self.slot(SlotState::Prompt, after, None)?
            } else if before == self.mask && !shifted {
                self.slot(SlotState::New, after, None)?
            } else if before != after || e.edited.iter().any(|c| c.0 == pos) {
                self.slot(SlotState::Edited, after, None)?
            } else {
                self.slot(SlotState::Done, after, None)?
            };
            slots.push(slot);
        }
        Ok(StepMessage {
            forward: e.forward,
            block_start: e.block_start,
            window: e.window,
            committed: e.committed,
            masked: e.masked_after,
            edited: e.edited,
            deleted: e.deleted,
            split: e.split,
            slots,
            delta,
        })
    }

    fn slot(&self, state: SlotState, id: u32, confidence: Option<f32>) -> Result<Slot> {
        Ok(Slot {
            state,
            id,
            text: self.tok.decode_raw(&[id])?,
            confidence,
        })
    }

    /// The result once [`Self::next_step`] returned `None`, or the partial result of a run
    /// stopped early (`finish: "cancelled"`).
    pub fn finish(mut self) -> Result<Done> {
        let forwards = self.decoding.forwards();
        let prompt_tokens = self.prompt.len();
        if let Some(e) = self.decoding.take_error() {
            return Err(e);
        }
        let (tokens, finish): (Vec<u32>, &str) = match self.decoding.result() {
            Some(g) => {
                let finish = match g.finish {
                    Finish::Eos => "eos",
                    Finish::Length => "length",
                };
                (g.tokens.clone(), finish)
            }
            // Stopped before the end: the settled prefix.
            None => {
                let prefix = self.generated.iter().map_while(|t| *t).collect();
                (prefix, "cancelled")
            }
        };
        let (delta, text) = self.streamer.finish(&tokens)?;
        Ok(Done {
            tokens,
            text,
            delta,
            forwards,
            finish,
            prompt_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::GenerateRequest;
    use unmask_core::{Backend, Model, ReferenceBackend};
    use unmask_tests::fixture;

    fn run(
        model: &Model,
        backend: &mut dyn Backend,
        request: &str,
        stop_after: Option<usize>,
    ) -> (Vec<StepMessage>, Done) {
        let r = GenerateRequest::from_json(request).unwrap();
        let prompt = r.prompt_ids(&model.tokenizer).unwrap();
        let ids = model.special_ids();
        let mut g = Generator::new(
            &model.tokenizer,
            &ids,
            model.config.max_position_embeddings,
            prompt,
            &r.params(unmask_core::decode::Decoder::Llada20).unwrap(),
        )
        .unwrap();
        backend.reset();
        let mut msgs = Vec::new();
        loop {
            if stop_after == Some(msgs.len()) {
                break;
            }
            let out = match g.next_step() {
                Some(s) => backend.step(&s).unwrap(),
                None => break,
            };
            msgs.push(g.apply(&out, "cpu").unwrap());
        }
        (msgs, g.finish().unwrap())
    }

    #[test]
    fn the_addition_model_answers_and_the_stream_adds_up() {
        let model = Model::open(&fixture("tiny-llada2-add")).unwrap();
        let mut be =
            ReferenceBackend::new(model.graph.clone(), &model.weights, &mut |_, _| {}).unwrap();
        let (msgs, done) = run(
            &model,
            &mut be,
            r#"{"input": "What is 23+45?", "options": {"gen_length": 16}}"#,
            None,
        );
        assert_eq!(done.text, "68");
        assert_eq!(done.finish, "eos");
        assert_eq!(done.forwards, msgs.len());
        let streamed: String = msgs.iter().map(|m| m.delta.as_str()).collect();
        assert_eq!(streamed + &done.delta, done.text);
        // Every committed token shows up as a new slot, and masked slots carry a guess.
        for m in &msgs {
            let new = m.slots.iter().filter(|s| s.state == SlotState::New).count();
            assert_eq!(new, m.committed.len());
            let masked = m
                .slots
                .iter()
                .filter(|s| s.state == SlotState::Masked)
                .count();
            assert_eq!(masked, m.masked.len());
        }
        let last = msgs.last().unwrap();
        assert!(last.slots.iter().any(|s| s.state == SlotState::Prompt));
    }

    #[test]
    fn a_stopped_run_returns_its_committed_prefix() {
        let model = Model::open(&fixture("tiny-llada2")).unwrap();
        let mut be =
            ReferenceBackend::new(model.graph.clone(), &model.weights, &mut |_, _| {}).unwrap();
        let (msgs, done) = run(
            &model,
            &mut be,
            r#"{"input": "Hello", "options": {"gen_length": 64, "threshold": 1.0}}"#,
            Some(3),
        );
        assert_eq!(msgs.len(), 3);
        assert_eq!(done.finish, "cancelled");
        assert_eq!(done.forwards, 3);
        // With threshold 1 a step commits exactly one token: at most 3 are committed.
        assert!(done.tokens.len() <= 3);
    }
}
