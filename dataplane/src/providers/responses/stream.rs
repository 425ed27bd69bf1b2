//! Responses API streams (<https://platform.openai.com/docs/api-reference/responses-streaming>):
//! written event by event from OpenAI chat chunks ([`ToResponses`]; from
//! other providers' events through the chat translation,
//! [`crate::providers::via_chat`]), and
//! metered where an OpenAI channel streams them itself ([`Passthrough`]).
//!
//! The translation: the first chunk opens the response (`response.created`,
//! `response.in_progress`); content, reasoning text and each tool call
//! become output items (`response.output_item.added`, for text and
//! reasoning a `response.content_part.added`, then `.delta` events as the
//! chunks arrive, and when the item ends its `.done` events); the finish
//! reason closes every open item; `[DONE]` — after OpenAI's usage chunk —
//! ends the response with `response.completed` (or `response.incomplete`)
//! carrying the whole output and the usage. Every event carries its
//! `sequence_number`. A mid-stream error object ends the stream with an
//! `error` event. Text is kept as it streams, since the `.done` events and
//! the last event repeat it; events still go out as they arrive.

use std::io::Write as _;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::response::{Echo, Head, Item, ItemBody, ItemOut, PartOut, ResponseOut, Status, response_id};
use crate::api::ApiError;
use crate::metering::{ResponsesUsage, Said, Usage};
use crate::providers::EventAction;
use crate::providers::messages::request::Str;
use crate::providers::messages::stream::{ChatEvent, at_close, read_chunk};
use crate::providers::openai::ModelRename;
use crate::relay::sse;

#[derive(Serialize)]
#[serde(tag = "type")]
enum Event<'a> {
    #[serde(rename = "response.created")]
    Created { response: ResponseOut<'a> },
    #[serde(rename = "response.in_progress")]
    InProgress { response: ResponseOut<'a> },
    #[serde(rename = "response.completed")]
    Completed { response: ResponseOut<'a> },
    #[serde(rename = "response.incomplete")]
    Incomplete { response: ResponseOut<'a> },
    #[serde(rename = "response.output_item.added")]
    ItemAdded { output_index: usize, item: ItemOut<'a> },
    #[serde(rename = "response.output_item.done")]
    ItemDone { output_index: usize, item: ItemOut<'a> },
    #[serde(rename = "response.content_part.added")]
    PartAdded { item_id: &'a str, output_index: usize, content_index: u32, part: PartOut<'a> },
    #[serde(rename = "response.content_part.done")]
    PartDone { item_id: &'a str, output_index: usize, content_index: u32, part: PartOut<'a> },
    #[serde(rename = "response.output_text.delta")]
    TextDelta { item_id: &'a str, output_index: usize, content_index: u32, delta: &'a str, logprobs: [(); 0] },
    #[serde(rename = "response.output_text.done")]
    TextDone { item_id: &'a str, output_index: usize, content_index: u32, text: &'a str, logprobs: [(); 0] },
    #[serde(rename = "response.reasoning_text.delta")]
    ReasoningDelta { item_id: &'a str, output_index: usize, content_index: u32, delta: &'a str },
    #[serde(rename = "response.reasoning_text.done")]
    ReasoningDone { item_id: &'a str, output_index: usize, content_index: u32, text: &'a str },
    #[serde(rename = "response.function_call_arguments.delta")]
    ArgumentsDelta { item_id: &'a str, output_index: usize, delta: &'a str },
    #[serde(rename = "response.function_call_arguments.done")]
    ArgumentsDone { item_id: &'a str, output_index: usize, name: &'a str, arguments: &'a str },
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::Created { .. } => "response.created",
            Event::InProgress { .. } => "response.in_progress",
            Event::Completed { .. } => "response.completed",
            Event::Incomplete { .. } => "response.incomplete",
            Event::ItemAdded { .. } => "response.output_item.added",
            Event::ItemDone { .. } => "response.output_item.done",
            Event::PartAdded { .. } => "response.content_part.added",
            Event::PartDone { .. } => "response.content_part.done",
            Event::TextDelta { .. } => "response.output_text.delta",
            Event::TextDone { .. } => "response.output_text.done",
            Event::ReasoningDelta { .. } => "response.reasoning_text.delta",
            Event::ReasoningDone { .. } => "response.reasoning_text.done",
            Event::ArgumentsDelta { .. } => "response.function_call_arguments.delta",
            Event::ArgumentsDone { .. } => "response.function_call_arguments.done",
        }
    }
}

/// An event with its place in the stream.
#[derive(Serialize)]
struct Numbered<'a> {
    #[serde(flatten)]
    event: &'a Event<'a>,
    sequence_number: u64,
}

/// Writes events with their sequence numbers.
#[derive(Default)]
struct Writer {
    next: u64,
}

impl Writer {
    fn write(&mut self, out: &mut Vec<u8>, event: &Event<'_>) {
        let _ = write!(out, "event: {}\ndata: ", event.name());
        let numbered = Numbered { event, sequence_number: self.next };
        self.next += 1;
        if serde_json::to_writer(&mut *out, &numbered).is_err() {
            out.extend_from_slice(b"{}");
        }
        out.extend_from_slice(b"\n\n");
    }
}

/// Translates one stream of chat chunks, event by event.
pub(crate) struct ToResponses {
    /// The public model name.
    model: Box<str>,
    /// The request's settings, which the response object repeats.
    echo: Echo,
    id: String,
    created_at: i64,
    writer: Writer,
    started: bool,
    items: Vec<Item>,
    /// The message or reasoning item being written.
    open: Option<usize>,
    /// Chat tool call index -> output index.
    tools: SmallVec<[(u32, usize); 4]>,
    status: Status,
    usage: Option<Usage>,
    /// The finish reason arrived: only usage and the end can follow.
    pub finished: bool,
    /// The last event was written.
    stopped: bool,
}

impl ToResponses {
    pub fn new(model: &str, echo: Echo) -> Self {
        Self {
            model: model.into(),
            echo,
            id: String::new(),
            created_at: crate::clock::unix_seconds(),
            writer: Writer::default(),
            started: false,
            items: Vec::new(),
            open: None,
            tools: SmallVec::new(),
            status: Status::Completed,
            usage: None,
            finished: false,
            stopped: false,
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn start(&mut self, out: &mut Vec<u8>, chat_id: &str) {
        if self.started {
            return;
        }
        self.started = true;
        self.id = response_id(chat_id);
        let head = Head { id: &self.id, created_at: self.created_at, model: &self.model, echo: &self.echo };
        let created = Event::Created { response: ResponseOut::new(&head, Status::InProgress, &[], None) };
        self.writer.write(out, &created);
        let in_progress = Event::InProgress { response: ResponseOut::new(&head, Status::InProgress, &[], None) };
        self.writer.write(out, &in_progress);
    }

    /// Writes the `.done` events of one item.
    fn close_item(&mut self, out: &mut Vec<u8>, index: usize) {
        let Some(item) = self.items.get_mut(index) else { return };
        if item.done {
            return;
        }
        item.done = true;
        let item = &self.items[index];
        let item_id = item.id.as_str();
        let (output_index, content_index) = (index, 0);
        match &item.body {
            ItemBody::Message(text) => {
                let done = Event::TextDone { item_id, output_index, content_index, text, logprobs: [] };
                self.writer.write(out, &done);
                let part = PartOut::text(text);
                self.writer.write(out, &Event::PartDone { item_id, output_index, content_index, part });
            }
            ItemBody::Reasoning(text) => {
                self.writer.write(out, &Event::ReasoningDone { item_id, output_index, content_index, text });
                let part = PartOut::ReasoningText { text };
                self.writer.write(out, &Event::PartDone { item_id, output_index, content_index, part });
            }
            ItemBody::Call { name, arguments, .. } => {
                self.writer.write(out, &Event::ArgumentsDone { item_id, output_index, name, arguments });
            }
        }
        self.writer.write(out, &Event::ItemDone { output_index, item: item.out(false) });
    }

    fn close_open(&mut self, out: &mut Vec<u8>) {
        if let Some(index) = self.open.take() {
            self.close_item(out, index);
        }
    }

    /// Opens a new item and announces it.
    fn add(&mut self, out: &mut Vec<u8>, item: Item) -> usize {
        let index = self.items.len();
        self.items.push(item);
        let item = &self.items[index];
        self.writer.write(out, &Event::ItemAdded { output_index: index, item: item.out(true) });
        let part = match item.body {
            ItemBody::Message(_) => Some(PartOut::text("")),
            ItemBody::Reasoning(_) => Some(PartOut::ReasoningText { text: "" }),
            ItemBody::Call { .. } => None,
        };
        if let Some(part) = part {
            let added = Event::PartAdded { item_id: &item.id, output_index: index, content_index: 0, part };
            self.writer.write(out, &added);
        }
        index
    }

    /// The open text (`reasoning` false) or reasoning item, opened if need be.
    fn open_text(&mut self, out: &mut Vec<u8>, reasoning: bool) -> usize {
        if let Some(index) = self.open
            && matches!(self.items[index].body, ItemBody::Reasoning(_)) == reasoning
        {
            return index;
        }
        self.close_open(out);
        let n = self.items.len();
        let item = if reasoning { Item::reasoning(&self.id, n) } else { Item::message(&self.id, n) };
        let index = self.add(out, item);
        self.open = Some(index);
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
        if let Some(choice) = choice {
            self.start(&mut out, id.as_deref().unwrap_or_default());
            if let Some(delta) = choice.delta {
                self.delta(&mut out, delta);
            }
            if let Some(reason) = choice.finish_reason {
                self.close_all(&mut out);
                self.status = Status::of_finish(&reason);
                self.finished = true;
            }
        }
        if out.is_empty() { EventAction::Drop } else { EventAction::Replace(Bytes::from(out)) }
    }

    fn delta(&mut self, out: &mut Vec<u8>, delta: Said<'_>) {
        let reasoning = delta.reasoning_content.as_deref().or(delta.reasoning.as_deref());
        for (text, is_reasoning) in [(reasoning, true), (delta.content.as_deref().or(delta.refusal.as_deref()), false)]
        {
            let Some(text) = text.filter(|t| !t.is_empty()) else { continue };
            let index = self.open_text(out, is_reasoning);
            let item = &mut self.items[index];
            match &mut item.body {
                ItemBody::Message(all) | ItemBody::Reasoning(all) => all.push_str(text),
                ItemBody::Call { .. } => {}
            }
            let (item_id, output_index, content_index) = (item.id.as_str(), index, 0);
            let event = if is_reasoning {
                Event::ReasoningDelta { item_id, output_index, content_index, delta: text }
            } else {
                Event::TextDelta { item_id, output_index, content_index, delta: text, logprobs: [] }
            };
            self.writer.write(out, &event);
        }
        for call in delta.tool_calls.into_iter().flatten() {
            let n = call.index.unwrap_or(0);
            let known = self.tools.iter().find(|(i, _)| *i == n).map(|(_, o)| *o);
            let index = match known {
                Some(index) => index,
                None => {
                    self.close_open(out);
                    let fallback = format!("call_{n}");
                    let call_id = call.id.as_deref().unwrap_or(&fallback);
                    let item = Item::call(call_id, call.function.name.as_deref().unwrap_or_default());
                    let index = self.add(out, item);
                    self.tools.push((n, index));
                    index
                }
            };
            let Some(fragment) = call.function.arguments.as_deref().filter(|a| !a.is_empty()) else { continue };
            let item = &mut self.items[index];
            if item.done {
                continue;
            }
            if let ItemBody::Call { arguments, .. } = &mut item.body {
                arguments.push_str(fragment);
            }
            let event = Event::ArgumentsDelta { item_id: &item.id, output_index: index, delta: fragment };
            self.writer.write(out, &event);
        }
    }

    fn close_all(&mut self, out: &mut Vec<u8>) {
        self.open = None;
        for index in 0..self.items.len() {
            self.close_item(out, index);
        }
    }

    /// `[DONE]`: the response ends with its output and usage.
    fn finish(&mut self) -> EventAction {
        if self.stopped {
            return EventAction::Drop;
        }
        let mut out = Vec::new();
        self.start(&mut out, "");
        self.close_all(&mut out);
        let head = Head { id: &self.id, created_at: self.created_at, model: &self.model, echo: &self.echo };
        let response = ResponseOut::new(&head, self.status, &self.items, self.usage);
        let last = match self.status {
            Status::Incomplete(_) => Event::Incomplete { response },
            _ => Event::Completed { response },
        };
        self.writer.write(&mut out, &last);
        self.stopped = true;
        self.finished = true;
        EventAction::Replace(Bytes::from(out))
    }

    /// The upstream closed: see [`at_close`].
    pub fn end(&mut self) -> EventAction {
        at_close(self.stopped, self.finished, || self.finish())
    }
}

#[derive(Deserialize)]
struct TerminalView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(default, borrow)]
    response: Option<ResponseUsageView<'a>>,
    #[serde(default, borrow)]
    message: Option<Str<'a>>,
    #[serde(default, borrow)]
    code: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ResponseUsageView<'a> {
    #[serde(default)]
    usage: Option<ResponsesUsage>,
    #[serde(default, borrow)]
    error: Option<FailureView<'a>>,
}

/// A failed response's `error`.
#[derive(Deserialize)]
struct FailureView<'a> {
    #[serde(default, borrow)]
    code: Option<Str<'a>>,
    #[serde(default, borrow)]
    message: Option<Str<'a>>,
}

/// Meters a Responses stream an OpenAI channel sends itself: usage from the
/// last event (`response.completed`, `.incomplete` or `.failed`), the model
/// renamed in the events that carry the response object, and an `error`
/// event ending the stream as the gateway ends failed streams. A stream
/// ending with `response.failed` reaches the client as it is (the SDKs read
/// its error), but is recorded as the upstream failure it is
/// ([`Passthrough::failure`]). Deltas —
/// nearly every event — pass on the name of their `event:` line alone,
/// unparsed.
pub(crate) struct Passthrough {
    rename: Option<std::sync::Arc<ModelRename>>,
    usage: Option<Usage>,
    /// The last event arrived.
    pub finished: bool,
    /// The last event was `response.failed`: the error it stands for.
    failure: Option<Box<ApiError>>,
}

impl Passthrough {
    pub fn new(rename: Option<std::sync::Arc<ModelRename>>) -> Self {
        Self { rename, usage: None, finished: false, failure: None }
    }

    /// The upstream failure a stream ended with (`response.failed`), once.
    pub fn failure(&mut self) -> Option<ApiError> {
        self.failure.take().map(|e| *e)
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub fn event(&mut self, event: &[u8]) -> EventAction {
        let fields = sse::fields(event);
        let interesting = match fields.name {
            Some(name) => is_lifecycle(name) || name == b"error",
            None => !fields.data.is_empty(),
        };
        if !interesting {
            return EventAction::Pass;
        }
        let Ok(view) = serde_json::from_slice::<TerminalView<'_>>(&fields.data) else {
            return EventAction::Pass;
        };
        match view.kind.as_ref() {
            "response.completed" | "response.incomplete" | "response.failed" => {
                let response = view.response.unwrap_or(ResponseUsageView { usage: None, error: None });
                if let Some(usage) = response.usage {
                    self.usage = Some(usage.into());
                }
                if view.kind.as_ref() == "response.failed" {
                    let error = response.error.unwrap_or(FailureView { code: None, message: None });
                    let code = error.code.as_deref().unwrap_or("error");
                    let message = error.message.as_deref().unwrap_or("The upstream response failed.");
                    self.failure = Some(Box::new(ApiError::bad_gateway(
                        "upstream_stream_error",
                        format!("The upstream response failed ({code}): {message}"),
                    )));
                }
                self.finished = true;
            }
            "error" => {
                let message = view.message.as_deref().unwrap_or("The upstream stream failed.");
                let code = view.code.as_deref().unwrap_or("error");
                return EventAction::Fail(ApiError::bad_gateway(
                    "upstream_stream_error",
                    format!("The upstream stream failed ({code}): {message}"),
                ));
            }
            _ => {}
        }
        if is_lifecycle(view.kind.as_bytes()) {
            return match self.rename.as_ref().and_then(|r| r.apply(event)) {
                Some(renamed) => EventAction::Replace(Bytes::from(renamed)),
                None => EventAction::Pass,
            };
        }
        EventAction::Pass
    }

    /// The upstream closed: a stream without its last event was cut.
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

/// Events that carry the whole response object.
fn is_lifecycle(name: &[u8]) -> bool {
    matches!(
        name,
        b"response.created"
            | b"response.in_progress"
            | b"response.queued"
            | b"response.completed"
            | b"response.incomplete"
            | b"response.failed"
    )
}
