//! Anthropic's stream events as OpenAI `chat.completion.chunk` events, one
//! for one as they arrive (<https://docs.anthropic.com/en/api/messages-streaming>):
//!
//! | Anthropic event | OpenAI chunk |
//! |---|---|
//! | `message_start` | the role chunk (`"role":"assistant","content":""`) |
//! | `content_block_start` of `tool_use` | a `tool_calls` delta with id, name and `""` arguments |
//! | `text_delta` / `thinking_delta` | `content` / `reasoning_content` |
//! | `input_json_delta` | the call's `arguments` fragment, as split upstream |
//! | `message_delta` | the finish chunk, then the usage chunk when the client asked |
//! | `message_stop` | `data: [DONE]` |
//! | `error` | the stream ends with an error event |
//!
//! `ping`, empty deltas, signatures, block starts and stops of other kinds
//! and unknown events (Anthropic may add some within a version) send nothing.
//! Usage is the `message_start` usage updated by each `message_delta`
//! (whose counts are cumulative).

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::response::{FunctionOut, OpenAiUsageOut, ToolCallOut};
use super::wire::{AnthropicUsage, BlockView, finish_reason};
use crate::api::ApiError;
use crate::metering::Usage;
use crate::providers::EventAction;
use crate::relay::sse;

type Str<'a> = Cow<'a, str>;

/// One event's data; each event type fills some members.
#[derive(Deserialize)]
pub(super) struct EventView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Str<'a>,
    #[serde(default, borrow)]
    pub message: Option<MessageStart<'a>>,
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(default, borrow)]
    pub content_block: Option<BlockView<'a>>,
    #[serde(default, borrow)]
    pub delta: Option<DeltaView<'a>>,
    #[serde(default)]
    pub usage: Option<AnthropicUsage>,
    #[serde(default, borrow)]
    pub error: Option<ErrorView<'a>>,
}

#[derive(Deserialize)]
pub(super) struct MessageStart<'a> {
    #[serde(default, borrow)]
    pub id: Option<Str<'a>>,
    #[serde(default)]
    pub usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
pub(super) struct DeltaView<'a> {
    #[serde(default, rename = "type", borrow)]
    pub kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub text: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub partial_json: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub thinking: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub stop_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(super) struct ErrorView<'a> {
    #[serde(default, rename = "type", borrow)]
    pub kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub message: Option<Str<'a>>,
}

impl ErrorView<'_> {
    /// The error the client gets for an `error` event in a stream that
    /// already began: an overloaded upstream is 503-class, anything else
    /// a failed upstream (502).
    pub fn api_error(&self) -> ApiError {
        let kind = self.kind.as_deref().unwrap_or("api_error");
        let message =
            format!("The upstream stream failed: {kind}: {}", self.message.as_deref().unwrap_or("no message"));
        if kind == "overloaded_error" {
            ApiError::unavailable("upstream_overloaded", message)
        } else {
            ApiError::bad_gateway("upstream_stream_error", message)
        }
    }
}

/// What a content block of the stream is, by its Anthropic index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Thinking,
    /// A tool call: its index among the answer's OpenAI `tool_calls`.
    Tool(u32),
    Other,
}

/// What every chunk of one translated stream repeats, and the chunks made
/// of it (shared by the translations from other formats).
pub(crate) struct ChunkHead {
    pub id: String,
    pub created: i64,
    /// The public model name.
    pub model: Box<str>,
    /// The client asked for the usage chunk.
    pub include_usage: bool,
}

impl ChunkHead {
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self { id: String::new(), created: crate::clock::unix_seconds(), model: model.into(), include_usage }
    }

    /// A chunk of one choice's `delta` (and finish reason).
    pub fn delta(&self, delta: Delta<'_>, finish_reason: Option<&'static str>) -> Vec<u8> {
        self.event(&[ChunkChoice { index: 0, delta, logprobs: None, finish_reason }], None)
    }

    /// The usage chunk: no choices, the usage.
    pub fn usage(&self, usage: Usage) -> Vec<u8> {
        self.event(&[], Some(usage.into()))
    }

    fn event(&self, choices: &[ChunkChoice<'_>], usage: Option<OpenAiUsageOut>) -> Vec<u8> {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage: match usage {
                Some(usage) => Some(Some(usage)),
                None => self.include_usage.then_some(None),
            },
        };
        sse::data_event(&chunk)
    }
}

/// Translates one stream, event by event.
pub(crate) struct ToChunks {
    head: ChunkHead,
    blocks: SmallVec<[(u64, Kind); 4]>,
    tool_calls: u32,
    usage: AnthropicUsage,
    /// `message_delta` arrived: usage is complete, the answer finished.
    pub finished: bool,
    /// `message_stop` arrived (`[DONE]` was sent).
    done: bool,
}

#[derive(Serialize)]
struct Chunk<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: i64,
    pub(crate) model: &'a str,
    pub(crate) choices: &'a [ChunkChoice<'a>],
    /// Left out unless the client asked for usage; then `null` but on the
    /// usage chunk, as OpenAI sends it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Option<OpenAiUsageOut>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    pub(crate) index: u32,
    pub(crate) delta: Delta<'a>,
    pub(crate) logprobs: Option<()>,
    pub(crate) finish_reason: Option<&'static str>,
}

#[derive(Default, Serialize)]
pub(crate) struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_calls: Option<[ToolCallOut<'a>; 1]>,
}

impl ToChunks {
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            head: ChunkHead::new(model, include_usage),
            blocks: SmallVec::new(),
            tool_calls: 0,
            usage: AnthropicUsage::default(),
            finished: false,
            done: false,
        }
    }

    /// The usage reported so far, once the answer is complete (a stream cut
    /// earlier is counted by the gateway instead).
    pub fn usage(&self) -> Option<Usage> {
        self.finished.then(|| self.usage.into())
    }

    fn kind(&self, index: u64) -> Kind {
        self.blocks.iter().find(|(i, _)| *i == index).map_or(Kind::Other, |(_, k)| *k)
    }

    fn chunk(&self, delta: Delta<'_>, finish_reason: Option<&'static str>) -> Vec<u8> {
        self.head.delta(delta, finish_reason)
    }

    pub fn event(&mut self, event: &[u8]) -> EventAction {
        let fields = sse::fields(event);
        let Ok(view) = serde_json::from_slice::<EventView<'_>>(&fields.data) else {
            return EventAction::Drop;
        };
        let out = match view.kind.as_ref() {
            "message_start" => {
                if let Some(message) = view.message {
                    self.head.id = message.id.map(Cow::into_owned).unwrap_or_default();
                    if let Some(usage) = message.usage {
                        self.usage = usage;
                    }
                }
                self.chunk(Delta { role: Some("assistant"), content: Some(""), ..Delta::default() }, None)
            }
            "content_block_start" => {
                let (Some(index), Some(block)) = (view.index, view.content_block) else {
                    return EventAction::Drop;
                };
                let kind = match block.kind.as_ref() {
                    "text" => Kind::Text,
                    "thinking" => Kind::Thinking,
                    "tool_use" => {
                        self.tool_calls += 1;
                        Kind::Tool(self.tool_calls - 1)
                    }
                    _ => Kind::Other,
                };
                self.blocks.push((index, kind));
                match kind {
                    Kind::Tool(n) => self.chunk(
                        Delta {
                            tool_calls: Some([ToolCallOut {
                                index: Some(n),
                                id: block.id.as_deref(),
                                kind: Some("function"),
                                function: FunctionOut { name: block.name.as_deref(), arguments: "" },
                            }]),
                            ..Delta::default()
                        },
                        None,
                    ),
                    Kind::Text if block.text.as_deref().is_some_and(|t| !t.is_empty()) => {
                        self.chunk(Delta { content: block.text.as_deref(), ..Delta::default() }, None)
                    }
                    _ => return EventAction::Drop,
                }
            }
            "content_block_delta" => {
                let (Some(index), Some(delta)) = (view.index, view.delta) else { return EventAction::Drop };
                match (self.kind(index), delta.kind.as_deref()) {
                    (Kind::Text, Some("text_delta")) => match delta.text.as_deref().filter(|t| !t.is_empty()) {
                        Some(text) => self.chunk(Delta { content: Some(text), ..Delta::default() }, None),
                        None => return EventAction::Drop,
                    },
                    (Kind::Thinking, Some("thinking_delta")) => {
                        match delta.thinking.as_deref().filter(|t| !t.is_empty()) {
                            Some(text) => self.chunk(Delta { reasoning_content: Some(text), ..Delta::default() }, None),
                            None => return EventAction::Drop,
                        }
                    }
                    (Kind::Tool(n), Some("input_json_delta")) => {
                        match delta.partial_json.as_deref().filter(|t| !t.is_empty()) {
                            Some(fragment) => self.chunk(
                                Delta {
                                    tool_calls: Some([ToolCallOut {
                                        index: Some(n),
                                        id: None,
                                        kind: None,
                                        function: FunctionOut { name: None, arguments: fragment },
                                    }]),
                                    ..Delta::default()
                                },
                                None,
                            ),
                            None => return EventAction::Drop,
                        }
                    }
                    _ => return EventAction::Drop,
                }
            }
            "message_delta" => {
                if let Some(usage) = view.usage {
                    self.usage.update(usage);
                }
                let Some(reason) = view.delta.and_then(|d| d.stop_reason) else {
                    return EventAction::Drop;
                };
                if self.finished {
                    return EventAction::Drop;
                }
                self.finished = true;
                let mut out = self.chunk(Delta::default(), Some(finish_reason(&reason)));
                if self.head.include_usage {
                    out.extend(self.head.usage(Usage::from(self.usage)));
                }
                out
            }
            "message_stop" => {
                if self.done {
                    return EventAction::Drop;
                }
                self.done = true;
                let mut out = Vec::new();
                if !self.finished {
                    // No `message_delta` said why: the answer ended normally.
                    self.finished = true;
                    out = self.chunk(Delta::default(), Some("stop"));
                }
                out.extend_from_slice(sse::DONE);
                out
            }
            "error" => {
                let error = view.error.map_or_else(
                    || ApiError::bad_gateway("upstream_stream_error", "The upstream stream failed."),
                    |e| e.api_error(),
                );
                return EventAction::Fail(error);
            }
            // ping, content_block_stop, and event types added later.
            _ => return EventAction::Drop,
        };
        EventAction::Replace(Bytes::from(out))
    }

    /// The upstream closed: a stream that never said why it stopped was cut.
    pub fn end(&mut self) -> EventAction {
        if self.finished || self.done {
            if self.done { EventAction::Drop } else { self.finish_done() }
        } else {
            EventAction::Fail(ApiError::bad_gateway(
                "upstream_stream_error",
                "The upstream stream ended before the answer was complete.",
            ))
        }
    }

    fn finish_done(&mut self) -> EventAction {
        self.done = true;
        EventAction::Replace(Bytes::from_static(sse::DONE))
    }
}
