//! Turning out-of-order commits into an ordinary text stream: tokens commit anywhere inside a
//! block, but a reader wants text that only grows. The streamer tracks the settled prefix of
//! the generation (`StepEvent::settled`: committed tokens under llada2.0, whole finished blocks
//! under the editing decoders, whose tokens can change until their block ends) and yields the
//! new text of that prefix, stopping at end-of-turn tokens (which never appear in the text).
//! Concatenating every delta gives exactly `finish()`'s text.

use super::StepEvent;
use crate::chat::ChatTokenizer;
use crate::error::Result;

pub struct PrefixStreamer<'t> {
    tokenizer: &'t ChatTokenizer,
    prompt_len: usize,
    /// Generated slots; `None` while masked.
    slots: Vec<Option<u32>>,
    /// Length of the committed prefix that has been turned into text.
    prefix: usize,
    emitted: String,
    stop: Vec<u32>,
    stopped: bool,
    /// Generated positions beyond this are never part of the result (`gen_length`).
    limit: usize,
    /// Special tokens written into the text (`ChatTokenizer::decode_keeping`).
    keep: Vec<u32>,
}

impl<'t> PrefixStreamer<'t> {
    /// `stop`: ids that end the text (eos, end of turn); they are not part of it.
    pub fn new(tokenizer: &'t ChatTokenizer, prompt_len: usize, stop: Vec<u32>) -> Self {
        PrefixStreamer {
            tokenizer,
            prompt_len,
            slots: Vec::new(),
            prefix: 0,
            emitted: String::new(),
            stop,
            stopped: false,
            limit: usize::MAX,
            keep: Vec::new(),
        }
    }

    /// Writes these special tokens into the text instead of dropping them (tool-call markers).
    pub fn keep(mut self, ids: Vec<u32>) -> Self {
        self.keep = ids;
        self
    }

    /// Ignores commits past `gen_length` generated tokens: the decoder's last block may extend
    /// beyond it, and those tokens are cut from the result.
    pub fn limit(mut self, gen_length: usize) -> Self {
        self.limit = gen_length;
        self
    }

    /// Applies a step's settled tokens; returns the text newly readable at the front, if any.
    pub fn push(&mut self, e: &StepEvent) -> Result<Option<String>> {
        for &(pos, tok) in &e.settled {
            if pos < self.prompt_len {
                continue;
            }
            let i = pos - self.prompt_len;
            if i >= self.limit {
                continue;
            }
            if self.slots.len() <= i {
                self.slots.resize(i + 1, None);
            }
            self.slots[i] = Some(tok);
        }
        let mut end = self.prefix;
        while !self.stopped && end < self.slots.len() {
            match self.slots[end] {
                Some(t) if self.stop.contains(&t) => self.stopped = true,
                Some(_) => end += 1,
                None => break,
            }
        }
        if end == self.prefix {
            return Ok(None);
        }
        self.prefix = end;
        self.delta(false)
    }

    /// The text of `tokens` (the final generation) up to the first stop token, emitting whatever
    /// the stream has not shown yet. Returns (delta, full text).
    pub fn finish(&mut self, tokens: &[u32]) -> Result<(String, String)> {
        let cut = tokens
            .iter()
            .position(|t| self.stop.contains(t))
            .unwrap_or(tokens.len());
        self.slots = tokens[..cut].iter().map(|&t| Some(t)).collect();
        self.prefix = cut;
        let delta = self.delta(true)?.unwrap_or_default();
        Ok((delta, self.emitted.clone()))
    }

    fn delta(&mut self, last: bool) -> Result<Option<String>> {
        let ids: Vec<u32> = self.slots[..self.prefix]
            .iter()
            .map(|t| t.unwrap_or(0))
            .collect();
        let text = self.tokenizer.decode_keeping(&ids, &self.keep)?;
        // A multi-byte character split across tokens decodes to U+FFFD until its last byte
        // arrives: hold it back rather than emit something that later changes.
        let stable = if last {
            text.as_str()
        } else {
            text.trim_end_matches('\u{FFFD}')
        };
        if stable.len() > self.emitted.len() && stable.starts_with(self.emitted.as_str()) {
            let d = stable[self.emitted.len()..].to_string();
            self.emitted.push_str(&d);
            Ok(Some(d))
        } else {
            Ok(None)
        }
    }
}
