//! OpenAI `chat.completion.chunk` events as Anthropic's stream events, as
//! they arrive (<https://docs.anthropic.com/en/api/messages-streaming>): the
//! first chunk opens the message (`message_start`, then a `ping`, as
//! Anthropic sends it); content, reasoning text and each tool call become
//! content blocks (`content_block_start`, deltas, `content_block_stop`; tool
//! arguments as `input_json_delta` fragments as split upstream); the finish
//! reason is kept until the stream ends, since OpenAI's usage chunk follows
//! it: then `message_delta` (stop reason and usage) and `message_stop`.
//! A mid-stream error object ends the stream with an `error` event.

use std::borrow::Cow;
use std::io::Write as _;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::response::{AnthropicUsageOut, Block, Input, Message, MessageId};
use crate::api::ApiError;
use crate::metering::{OpenAiUsage, Said, Usage};
use crate::providers::anthropic::wire::stop_reason;
use crate::providers::{ErrorFields, EventAction};
use crate::relay::sse;

type Str<'a> = Cow<'a, str>;

#[derive(Deserialize)]
struct ChunkView<'a> {
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    choices: Option<Vec<ChoiceView<'a>>>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

/// The first choice of one chunk, as the translations read it.
#[derive(Deserialize)]
pub(crate) struct ChoiceView<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    pub delta: Option<Said<'a>>,
    #[serde(default, borrow)]
    pub finish_reason: Option<Str<'a>>,
}

/// What a translated chat stream comes to when the upstream closes it:
/// nothing once its end was written (`stopped`); its end (`finish`) when
/// the answer `finished` without `[DONE]` (some servers leave it out);
/// else the error of a stream cut short.
pub(crate) fn at_close(stopped: bool, finished: bool, finish: impl FnOnce() -> EventAction) -> EventAction {
    match (stopped, finished) {
        (true, _) => EventAction::Drop,
        (false, true) => finish(),
        (false, false) => EventAction::Fail(ApiError::bad_gateway(
            "upstream_stream_error",
            "The upstream stream ended before the answer was complete.",
        )),
    }
}

/// One event of an OpenAI chat stream, read for a translation.
#[expect(clippy::large_enum_variant, reason = "taken apart where it is read, never stored")]
pub(crate) enum ChatEvent<'a> {
    /// `[DONE]`.
    Done,
    /// A chunk: its id and first choice (usage was taken).
    Chunk { id: Option<Str<'a>>, choice: Option<ChoiceView<'a>> },
}

/// Reads one event's `data`: `[DONE]`, or a chunk, whose usage goes into
/// `usage`; `Err` is what the event comes to instead — a mid-stream error
/// object fails the stream, anything unreadable is dropped.
pub(crate) fn read_chunk<'a>(data: &'a [u8], usage: &mut Option<Usage>) -> Result<ChatEvent<'a>, EventAction> {
    let data = data.trim_ascii();
    if data == b"[DONE]" {
        return Ok(ChatEvent::Done);
    }
    let Ok(chunk) = serde_json::from_slice::<ChunkView<'_>>(data) else {
        return Err(EventAction::Drop);
    };
    if chunk.error.is_some() {
        let error = ErrorFields::parse(data);
        return Err(EventAction::Fail(ApiError::bad_gateway(
            "upstream_stream_error",
            format!("The upstream stream failed: {}", error.message),
        )));
    }
    if let Some(reported) = chunk.usage {
        *usage = Some(reported.into());
    }
    let choice = chunk.choices.into_iter().flatten().find(|c| c.index == 0);
    Ok(ChatEvent::Chunk { id: chunk.id, choice })
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    MessageStart { message: Message<'a> },
    Ping,
    ContentBlockStart { index: u64, content_block: Block<'a> },
    ContentBlockDelta { index: u64, delta: BlockDelta<'a> },
    ContentBlockStop { index: u64 },
    MessageDelta { delta: StopDelta, usage: AnthropicUsageOut },
    MessageStop,
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::MessageStart { .. } => "message_start",
            Event::Ping => "ping",
            Event::ContentBlockStart { .. } => "content_block_start",
            Event::ContentBlockDelta { .. } => "content_block_delta",
            Event::ContentBlockStop { .. } => "content_block_stop",
            Event::MessageDelta { .. } => "message_delta",
            Event::MessageStop => "message_stop",
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[expect(clippy::enum_variant_names, reason = "named as Anthropic's wire format names the delta types")]
enum BlockDelta<'a> {
    TextDelta { text: &'a str },
    ThinkingDelta { thinking: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

/// The kind of the content block being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
    /// A tool call, by its OpenAI index.
    Tool(u32),
}

/// Translates one stream, event by event.
pub(crate) struct ToEvents {
    /// The public model name.
    model: Box<str>,
    started: bool,
    /// The block being written, and its index.
    open: Option<(u64, Open)>,
    next_block: u64,
    /// OpenAI tool call index -> content block index.
    tools: SmallVec<[(u32, u64); 4]>,
    stop_reason: Option<&'static str>,
    usage: Option<Usage>,
    /// The finish reason arrived: only usage and the end can follow.
    pub finished: bool,
    /// `message_stop` was written.
    stopped: bool,
}

impl ToEvents {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.into(),
            started: false,
            open: None,
            next_block: 0,
            tools: SmallVec::new(),
            stop_reason: None,
            usage: None,
            finished: false,
            stopped: false,
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn write(out: &mut Vec<u8>, event: &Event<'_>) {
        let _ = write!(out, "event: {}\ndata: ", event.name());
        if serde_json::to_writer(&mut *out, event).is_err() {
            out.extend_from_slice(b"{}");
        }
        out.extend_from_slice(b"\n\n");
    }

    fn start(&mut self, out: &mut Vec<u8>, id: &str) {
        if self.started {
            return;
        }
        self.started = true;
        // Input is only known when the usage chunk arrives, at the end
        // (the SDKs take it from `message_delta`).
        let message = Message {
            id: MessageId(id),
            kind: "message",
            role: "assistant",
            model: &self.model,
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: Usage::default().into(),
        };
        Self::write(out, &Event::MessageStart { message });
        Self::write(out, &Event::Ping);
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            Self::write(out, &Event::ContentBlockStop { index });
        }
    }

    /// Makes a text or thinking block the open one.
    fn open(&mut self, out: &mut Vec<u8>, kind: Open) -> u64 {
        if let Some((index, open)) = self.open
            && open == kind
        {
            return index;
        }
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        let content_block = match kind {
            Open::Thinking => Block::Thinking { thinking: "", signature: "" },
            _ => Block::Text { text: "" },
        };
        Self::write(out, &Event::ContentBlockStart { index, content_block });
        self.open = Some((index, kind));
        index
    }

    pub fn event(&mut self, event: &[u8]) -> EventAction {
        let fields = sse::fields(event);
        let (id, choice) = match read_chunk(&fields.data, &mut self.usage) {
            Ok(ChatEvent::Done) => return self.finish(),
            Ok(ChatEvent::Chunk { id, choice }) => (id, choice),
            Err(action) => return action,
        };
        let mut out = Vec::new();
        if choice.is_some() {
            self.start(&mut out, id.as_deref().unwrap_or_default());
        }
        if let Some(choice) = choice {
            if let Some(delta) = choice.delta {
                self.delta(&mut out, delta);
            }
            if let Some(reason) = choice.finish_reason {
                self.close(&mut out);
                self.stop_reason = Some(stop_reason(&reason));
                self.finished = true;
            }
        }
        if out.is_empty() { EventAction::Drop } else { EventAction::Replace(Bytes::from(out)) }
    }

    fn delta(&mut self, out: &mut Vec<u8>, delta: Said<'_>) {
        let reasoning = delta.reasoning_content.as_deref().or(delta.reasoning.as_deref());
        if let Some(thinking) = reasoning.filter(|t| !t.is_empty()) {
            let index = self.open(out, Open::Thinking);
            Self::write(out, &Event::ContentBlockDelta { index, delta: BlockDelta::ThinkingDelta { thinking } });
        }
        let text = delta.content.as_deref().or(delta.refusal.as_deref());
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            let index = self.open(out, Open::Text);
            Self::write(out, &Event::ContentBlockDelta { index, delta: BlockDelta::TextDelta { text } });
        }
        for call in delta.tool_calls.into_iter().flatten() {
            let n = call.index.unwrap_or(0);
            let function = &call.function;
            let known = self.tools.iter().find(|(i, _)| *i == n).map(|(_, b)| *b);
            let index = match known {
                Some(index) => index,
                None => {
                    self.close(out);
                    let index = self.next_block;
                    self.next_block += 1;
                    self.tools.push((n, index));
                    let fallback = format!("call_{n}");
                    let content_block = Block::ToolUse {
                        id: call.id.as_deref().unwrap_or(&fallback),
                        name: function.name.as_deref().unwrap_or_default(),
                        input: Input::Empty {},
                    };
                    Self::write(out, &Event::ContentBlockStart { index, content_block });
                    self.open = Some((index, Open::Tool(n)));
                    index
                }
            };
            if let Some(fragment) = function.arguments.as_deref().filter(|a| !a.is_empty()) {
                let delta = BlockDelta::InputJsonDelta { partial_json: fragment };
                Self::write(out, &Event::ContentBlockDelta { index, delta });
            }
        }
    }

    /// `[DONE]`: the message ends with its stop reason and usage.
    fn finish(&mut self) -> EventAction {
        if self.stopped {
            return EventAction::Drop;
        }
        let mut out = Vec::new();
        self.start(&mut out, "");
        self.close(&mut out);
        let stop_reason = self.stop_reason.unwrap_or("end_turn");
        let usage = self.usage.unwrap_or_default().into();
        Self::write(&mut out, &Event::MessageDelta { delta: StopDelta { stop_reason, stop_sequence: None }, usage });
        Self::write(&mut out, &Event::MessageStop);
        self.stopped = true;
        self.finished = true;
        EventAction::Replace(Bytes::from(out))
    }

    /// The upstream closed: see [`at_close`].
    pub fn end(&mut self) -> EventAction {
        at_close(self.stopped, self.finished, || self.finish())
    }
}
