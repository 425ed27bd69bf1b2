//! Cohere's v2 chat stream (<https://docs.cohere.com/v2/docs/streaming>)
//! as OpenAI `chat.completion.chunk` events, one for one as they arrive:
//!
//! | Cohere event | OpenAI chunk |
//! |---|---|
//! | `message-start` | the role chunk (`"role":"assistant","content":""`) |
//! | `content-delta` | `content` (text) / `reasoning_content` (thinking) |
//! | `tool-plan-delta` | `reasoning_content` |
//! | `tool-call-start` | a `tool_calls` delta with id, name and the first arguments |
//! | `tool-call-delta` | the call's `arguments` fragment, as split upstream |
//! | `message-end` | the finish chunk, the usage chunk when the client asked, `[DONE]` |
//! | `message-end` with `delta.error`, or `ERROR`/`TIMEOUT` | the stream ends with an error event |
//!
//! `content-start`/`-end`, `tool-call-end`, citation events, empty deltas and
//! event types added later send nothing. Usage arrives only in `message-end`.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use smallvec::SmallVec;

use super::wire::{CohereUsage, ContentView, ToolCallView, finish_reason};
use crate::api::ApiError;
use crate::metering::Usage;
use crate::providers::EventAction;
use crate::providers::anthropic::response::{FunctionOut, ToolCallOut};
use crate::providers::anthropic::stream::{ChunkHead, Delta};
use crate::relay::sse;

type Str<'a> = Cow<'a, str>;

#[derive(Deserialize)]
struct EventView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<DeltaView<'a>>,
}

#[derive(Deserialize)]
struct DeltaView<'a> {
    #[serde(default, borrow)]
    message: Option<MessageDelta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Str<'a>>,
    #[serde(default)]
    usage: Option<CohereUsage>,
    #[serde(default, borrow)]
    error: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct MessageDelta<'a> {
    #[serde(default, borrow)]
    content: Option<ContentView<'a>>,
    #[serde(default, borrow)]
    tool_plan: Option<Str<'a>>,
    #[serde(default, borrow)]
    tool_calls: Option<ToolCallView<'a>>,
}

/// Translates one stream, event by event.
pub(crate) struct ToChunks {
    head: ChunkHead,
    /// Cohere's tool call index -> the call's OpenAI index.
    calls: SmallVec<[(u64, u32); 4]>,
    usage: Option<CohereUsage>,
    /// `message-end` arrived (and `[DONE]` went out).
    pub finished: bool,
}

impl ToChunks {
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self { head: ChunkHead::new(model, include_usage), calls: SmallVec::new(), usage: None, finished: false }
    }

    /// The usage `message-end` reported.
    pub fn usage(&self) -> Option<Usage> {
        self.usage.map(Usage::from)
    }

    fn chunk(&self, out: &mut Vec<u8>, delta: Delta<'_>, finish_reason: Option<&'static str>) {
        out.extend(self.head.delta(delta, finish_reason));
    }

    fn call(&mut self, cohere_index: u64, start: bool) -> u32 {
        if let Some((_, n)) = self.calls.iter().find(|(i, _)| *i == cohere_index).filter(|_| !start) {
            return *n;
        }
        let n = u32::try_from(self.calls.len()).unwrap_or(u32::MAX);
        self.calls.push((cohere_index, n));
        n
    }

    pub fn event(&mut self, event: &[u8]) -> EventAction {
        if self.finished {
            return EventAction::Drop;
        }
        let fields = sse::fields(event);
        let Ok(view) = serde_json::from_slice::<EventView<'_>>(&fields.data) else {
            return EventAction::Drop;
        };
        let message = view.delta.as_ref().and_then(|d| d.message.as_ref());
        let mut out = Vec::new();
        match view.kind.as_ref() {
            "message-start" => {
                self.head.id = view.id.as_deref().unwrap_or_default().to_owned();
                self.chunk(&mut out, Delta { role: Some("assistant"), content: Some(""), ..Delta::default() }, None);
            }
            "content-start" | "content-delta" => {
                let content = message.and_then(|m| m.content.as_ref());
                if let Some(text) = content.and_then(|c| c.text.as_deref()).filter(|t| !t.is_empty()) {
                    self.chunk(&mut out, Delta { content: Some(text), ..Delta::default() }, None);
                }
                if let Some(text) = content.and_then(|c| c.thinking.as_deref()).filter(|t| !t.is_empty()) {
                    self.chunk(&mut out, Delta { reasoning_content: Some(text), ..Delta::default() }, None);
                }
            }
            "tool-plan-delta" => {
                if let Some(plan) = message.and_then(|m| m.tool_plan.as_deref()).filter(|t| !t.is_empty()) {
                    self.chunk(&mut out, Delta { reasoning_content: Some(plan), ..Delta::default() }, None);
                }
            }
            kind @ ("tool-call-start" | "tool-call-delta") => {
                let start = kind == "tool-call-start";
                let call = message.and_then(|m| m.tool_calls.as_ref());
                let function = call.and_then(|c| c.function.as_ref());
                let arguments = function.and_then(|f| f.arguments.as_deref()).unwrap_or_default();
                if !start && arguments.is_empty() {
                    return EventAction::Drop;
                }
                let index = self.call(view.index.unwrap_or(0), start);
                let delta = Delta {
                    tool_calls: Some([ToolCallOut {
                        index: Some(index),
                        id: call.and_then(|c| c.id.as_deref()).filter(|_| start),
                        kind: start.then_some("function"),
                        function: FunctionOut {
                            name: function.and_then(|f| f.name.as_deref()).filter(|_| start),
                            arguments,
                        },
                    }]),
                    ..Delta::default()
                };
                self.chunk(&mut out, delta, None);
            }
            "message-end" => {
                let delta = view.delta.as_ref();
                if let Some(usage) = delta.and_then(|d| d.usage) {
                    self.usage = Some(usage);
                }
                let reason = delta.and_then(|d| d.finish_reason.as_deref()).unwrap_or("COMPLETE");
                let error = delta.and_then(|d| d.error.as_deref());
                let Some(finish) = finish_reason(reason).filter(|_| error.is_none()) else {
                    return EventAction::Fail(ApiError::bad_gateway(
                        "upstream_stream_error",
                        format!("The upstream stream failed: {reason}: {}", error.unwrap_or("no message")),
                    ));
                };
                self.finished = true;
                self.chunk(&mut out, Delta::default(), Some(finish));
                if self.head.include_usage {
                    out.extend(self.head.usage(self.usage().unwrap_or_default()));
                }
                out.extend_from_slice(sse::DONE);
            }
            _ => {}
        }
        if out.is_empty() { EventAction::Drop } else { EventAction::Replace(Bytes::from(out)) }
    }

    /// The upstream closed: a stream without its `message-end` was cut.
    pub fn end(&mut self) -> EventAction {
        if self.finished {
            EventAction::Drop
        } else {
            EventAction::Fail(ApiError::bad_gateway(
                "upstream_stream_error",
                "The upstream stream ended before the answer was complete.",
            ))
        }
    }
}
