//! The opt-in `unmask_events` extension: every decoder step's provisional state, for UIs that
//! draw the denoising. It rides in an extra `unmask` field of ordinary stream chunks, which
//! standard clients ignore. Token texts are included so a UI needs no tokenizer.

use serde::Serialize;
use unmask_core::{ChatTokenizer, StepEvent};

#[derive(Debug, Serialize)]
pub struct StepView {
    /// Forward number within this request, from 0.
    pub forward: usize,
    /// Absolute position of the window's first token; the answer starts at `answer_start`.
    pub block_start: usize,
    pub answer_start: usize,
    /// The window as this step saw it: token ids, `null` where still masked.
    pub window: Vec<Option<u32>>,
    /// What this step committed (final from now on under llada2.0; under editing, final when
    /// its block ends).
    pub committed: Vec<Token>,
    /// The model's current guess for every position that was masked before this step.
    pub proposals: Vec<Proposal>,
    /// Positions still masked after this step.
    pub masked_after: Vec<usize>,
    /// Written tokens this step replaced (llada2.1/2.2 editing; provisional until the block ends).
    pub edited: Vec<Token>,
    /// Positions where this step wrote DELETE (the position goes) / SPLIT (a mask is inserted
    /// before it): llada2.2.
    pub deleted: Vec<usize>,
    pub split: Vec<usize>,
    /// The window after this step (`null` where masked).
    pub window_after: Vec<Option<u32>>,
}

#[derive(Debug, Serialize)]
pub struct Token {
    pub position: usize,
    pub token: u32,
    pub text: String,
}

#[derive(Debug, Serialize)]
pub struct Proposal {
    pub position: usize,
    pub token: u32,
    pub text: String,
    pub confidence: f32,
}

impl StepView {
    pub fn new(e: &StepEvent, tok: &ChatTokenizer, answer_start: usize) -> Self {
        let text = |t: u32| tok.decode_raw(&[t]).unwrap_or_default();
        let tokens = |list: &[(usize, u32)]| -> Vec<Token> {
            list.iter()
                .map(|&(position, token)| Token {
                    position,
                    token,
                    text: text(token),
                })
                .collect()
        };
        let masked = |window: &[u32]| -> Vec<Option<u32>> {
            window
                .iter()
                .map(|&t| (t != tok.ids.mask).then_some(t))
                .collect()
        };
        StepView {
            forward: e.forward,
            block_start: e.block_start,
            answer_start,
            window: masked(&e.window),
            committed: tokens(&e.committed),
            proposals: e
                .proposals
                .iter()
                .map(|&(position, token, confidence)| Proposal {
                    position,
                    token,
                    text: text(token),
                    confidence,
                })
                .collect(),
            masked_after: e.masked_after.clone(),
            edited: tokens(&e.edited),
            deleted: e.deleted.clone(),
            split: e.split.clone(),
            window_after: masked(&e.window_after),
        }
    }
}
