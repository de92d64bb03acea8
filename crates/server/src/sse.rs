//! `stream: true`: a request's events as server-sent events in OpenAI's chunk format, ending
//! with `data: [DONE]`. The stream owns the request's receiver: when the client goes away the
//! body is dropped, the receiver with it, and the worker cancels the generation.

use crate::completion::FinishReason;
use crate::error::ApiError;
use crate::schema::{ChatChunk, ChunkChoice, Delta, TextChoice, TextChunk, ToolCallDelta, Usage};
use crate::tools::ToolCall;
use crate::worker::JobEvent;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::Value;
use std::convert::Infallible;
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `chat.completion.chunk` with `delta`s.
    Chat,
    /// `text_completion` with `text`.
    Text,
}

/// What every chunk of one response repeats.
pub struct Header {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
}

enum Phase {
    Start,
    Running,
    End,
}

pub fn respond(
    h: Header,
    rx: UnboundedReceiver<JobEvent>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let s = stream::unfold((h, rx, Phase::Start), |(h, mut rx, phase)| async move {
        let (events, next) = match phase {
            Phase::Start if h.kind == Kind::Chat => {
                // OpenAI opens a chat stream with the role, before any text.
                let role = Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    ..Default::default()
                };
                (vec![h.chat(role, None, None, None)], Phase::Running)
            }
            Phase::Start | Phase::Running => match rx.recv().await {
                Some(JobEvent::Delta { text, step }) => {
                    (vec![h.delta(text, step.as_ref())], Phase::Running)
                }
                Some(JobEvent::ToolCall { index, call }) => {
                    (vec![h.tool_call(index, call)], Phase::Running)
                }
                Some(JobEvent::Done(c)) => {
                    let mut v = vec![h.finish(c.finish_reason)];
                    if h.include_usage {
                        v.push(h.usage(Usage::new(
                            c.prompt_tokens,
                            c.cached_tokens,
                            c.completion_tokens,
                        )));
                    }
                    v.push(done());
                    (v, Phase::End)
                }
                Some(JobEvent::Failed(e)) => (vec![error(&e), done()], Phase::End),
                None => (
                    vec![
                        error(&ApiError::internal("the model thread dropped the request")),
                        done(),
                    ],
                    Phase::End,
                ),
            },
            Phase::End => return None,
        };
        Some((stream::iter(events.into_iter().map(Ok)), (h, rx, next)))
    })
    .flatten();
    Sse::new(s).keep_alive(KeepAlive::default())
}

fn done() -> Event {
    Event::default().data("[DONE]")
}

fn error(e: &ApiError) -> Event {
    Event::default().data(e.body().to_string())
}

fn json<T: serde::Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).expect("chunks serialize"))
}

impl Header {
    fn chat(
        &self,
        delta: Delta,
        finish_reason: Option<FinishReason>,
        usage: Option<Usage>,
        unmask: Option<&Value>,
    ) -> Event {
        json(&ChatChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: if usage.is_some() {
                Vec::new()
            } else {
                vec![ChunkChoice {
                    index: 0,
                    delta,
                    finish_reason,
                    logprobs: None,
                }]
            },
            usage,
            unmask,
        })
    }

    fn text(
        &self,
        text: String,
        finish_reason: Option<FinishReason>,
        usage: Option<Usage>,
        unmask: Option<&Value>,
    ) -> Event {
        json(&TextChunk {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            choices: if usage.is_some() {
                Vec::new()
            } else {
                vec![TextChoice {
                    index: 0,
                    text,
                    finish_reason,
                    logprobs: None,
                }]
            },
            usage,
            unmask,
        })
    }

    fn delta(&self, text: String, step: Option<&Value>) -> Event {
        match self.kind {
            Kind::Chat => {
                let content = (!text.is_empty()).then_some(text);
                self.chat(
                    Delta {
                        content,
                        ..Default::default()
                    },
                    None,
                    None,
                    step,
                )
            }
            Kind::Text => self.text(text, None, None, step),
        }
    }

    /// One whole call (chat streams only: text completions never have tools).
    fn tool_call(&self, index: usize, call: ToolCall) -> Event {
        let delta = Delta {
            tool_calls: vec![ToolCallDelta { index, call }],
            ..Default::default()
        };
        self.chat(delta, None, None, None)
    }

    fn finish(&self, reason: FinishReason) -> Event {
        match self.kind {
            Kind::Chat => self.chat(Delta::default(), Some(reason), None, None),
            Kind::Text => self.text(String::new(), Some(reason), None, None),
        }
    }

    fn usage(&self, usage: Usage) -> Event {
        match self.kind {
            Kind::Chat => self.chat(Delta::default(), None, Some(usage), None),
            Kind::Text => self.text(String::new(), None, Some(usage), None),
        }
    }
}
