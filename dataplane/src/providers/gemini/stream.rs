//! Gemini's stream (`streamGenerateContent?alt=sse`: each event's data is a
//! `GenerateContentResponse` holding what was generated since the last one)
//! as OpenAI `chat.completion.chunk` events, one for one as they arrive:
//!
//! | Gemini event | OpenAI chunks |
//! |---|---|
//! | the first one | the role chunk (`"role":"assistant","content":""`) first |
//! | text parts / thought parts | `content` / `reasoning_content` |
//! | a `functionCall` part (Gemini sends calls whole) | one `tool_calls` delta with id, name and all arguments |
//! | `finishReason` | the finish chunk (`tool_calls` when the answer called functions) |
//! | `usageMetadata` | kept; the last report is the usage |
//! | `error` | the stream ends with an error event |
//!
//! Gemini's stream has no end marker: when the upstream closes after the
//! finish reason, the usage chunk (when the client asked) and `[DONE]` go
//! out — so usage that arrives only in the last event, after the finish
//! reason, is still counted. Empty events and parts of other kinds send
//! nothing.

use bytes::Bytes;
use serde_json::value::RawValue;

use super::wire::{GeminiUsage, ResponseView, call_id, finish_reason};
use crate::api::ApiError;
use crate::metering::Usage;
use crate::providers::EventAction;
use crate::providers::anthropic::response::{FunctionOut, ToolCallOut};
use crate::providers::anthropic::stream::{ChunkHead, Delta};
use crate::relay::sse;

/// Translates one stream, event by event.
pub(crate) struct ToChunks {
    head: ChunkHead,
    /// The role chunk went out.
    started: bool,
    tool_calls: u32,
    usage: Option<GeminiUsage>,
    /// A finish reason arrived: the answer is complete.
    pub finished: bool,
    /// `[DONE]` went out.
    done: bool,
}

impl ToChunks {
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            head: ChunkHead::new(model, include_usage),
            started: false,
            tool_calls: 0,
            usage: None,
            finished: false,
            done: false,
        }
    }

    /// The last usage reported, once the answer is complete (a stream cut
    /// earlier is counted by the gateway instead).
    pub fn usage(&self) -> Option<Usage> {
        self.usage.filter(|_| self.finished).map(Usage::from)
    }

    fn chunk(&self, out: &mut Vec<u8>, delta: Delta<'_>, finish_reason: Option<&'static str>) {
        out.extend(self.head.delta(delta, finish_reason));
    }

    pub fn event(&mut self, event: &[u8]) -> EventAction {
        let fields = sse::fields(event);
        let Ok(view) = serde_json::from_slice::<ResponseView<'_>>(&fields.data) else {
            return EventAction::Drop;
        };
        if let Some(error) = view.error {
            return EventAction::Fail(error.api_error());
        }
        if self.done {
            return EventAction::Drop;
        }
        if let Some(usage) = view.usage_metadata {
            self.usage = Some(usage);
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            self.head.id = view.response_id.as_deref().unwrap_or_default().to_owned();
            self.chunk(&mut out, Delta { role: Some("assistant"), content: Some(""), ..Delta::default() }, None);
        }
        let candidate = view.candidates.first();
        if !self.finished {
            for part in candidate.and_then(|c| c.content.as_ref()).map_or(&[][..], |c| &c.parts) {
                if let Some(call) = &part.function_call {
                    let index = self.tool_calls;
                    self.tool_calls += 1;
                    let id = call_id(&self.head.id, index as usize, call, part.thought_signature.as_deref());
                    let delta = Delta {
                        tool_calls: Some([ToolCallOut {
                            index: Some(index),
                            id: Some(&id),
                            kind: Some("function"),
                            function: FunctionOut {
                                name: Some(&call.name),
                                arguments: call.args.map_or("{}", RawValue::get),
                            },
                        }]),
                        ..Delta::default()
                    };
                    self.chunk(&mut out, delta, None);
                } else if let Some(text) = part.text.as_deref().filter(|t| !t.is_empty()) {
                    let delta = if part.thought == Some(true) {
                        Delta { reasoning_content: Some(text), ..Delta::default() }
                    } else {
                        Delta { content: Some(text), ..Delta::default() }
                    };
                    self.chunk(&mut out, delta, None);
                }
            }
            let reason = match (candidate.and_then(|c| c.finish_reason.as_deref()), &view.prompt_feedback) {
                (Some(reason), _) => Some(finish_reason(reason, self.tool_calls > 0)),
                (None, Some(feedback)) if feedback.block_reason.is_some() => Some("content_filter"),
                _ => None,
            };
            if let Some(reason) = reason {
                self.finished = true;
                self.chunk(&mut out, Delta::default(), Some(reason));
            }
        }
        if out.is_empty() { EventAction::Drop } else { EventAction::Replace(Bytes::from(out)) }
    }

    /// The upstream closed: after a finish reason, the usage chunk (when
    /// asked) and `[DONE]`; before one, the stream was cut.
    pub fn end(&mut self) -> EventAction {
        if self.done {
            return EventAction::Drop;
        }
        if !self.finished {
            return EventAction::Fail(ApiError::bad_gateway(
                "upstream_stream_error",
                "The upstream stream ended before the answer was complete.",
            ));
        }
        self.done = true;
        let mut out = Vec::new();
        if self.head.include_usage {
            out.extend(self.head.usage(Usage::from(self.usage.unwrap_or_default())));
        }
        out.extend_from_slice(sse::DONE);
        EventAction::Replace(Bytes::from(out))
    }
}
