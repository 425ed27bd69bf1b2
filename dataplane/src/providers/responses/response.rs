//! Response objects (<https://platform.openai.com/docs/api-reference/responses/object>):
//! written from a chat completion for translated channels, read for usage
//! where an OpenAI channel answered itself.
//!
//! A chat completion becomes one response: a `reasoning` item for reasoning
//! text, a `message` item with one `output_text` part for the content (or
//! the refusal), a `function_call` item per tool call (`call_id` kept), the
//! finish reason as the status (`length` -> `incomplete` with reason
//! `max_output_tokens`, `content_filter` -> `incomplete` with reason
//! `content_filter`, else `completed`), and usage with cached and
//! reasoning tokens in their details. The request's settings are echoed
//! back as the API's object does ([`Echo`]: as the client wrote them, the
//! API's defaults where it left them out); `store` is `false`, since
//! nothing was kept.

use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::api::RequestBody;
use crate::metering::{ResponsesUsage, Usage};
use crate::parts::Parts;
use crate::providers::ErrorFields;
use crate::providers::messages::response::CompletionView;
use crate::providers::openai::{ModelRename, last_usage_member, renamed};

/// One output item as the answer builds it.
pub(super) struct Item {
    pub id: String,
    pub body: ItemBody,
    /// Complete (its `.done` events were written).
    pub done: bool,
}

pub(super) enum ItemBody {
    Reasoning(String),
    Message(String),
    Call { call_id: String, name: String, arguments: String },
}

impl Item {
    pub fn reasoning(response_id: &str, n: usize) -> Self {
        Self { id: format!("rs_{n}_{response_id}"), body: ItemBody::Reasoning(String::new()), done: false }
    }

    pub fn message(response_id: &str, n: usize) -> Self {
        Self { id: format!("msg_{n}_{response_id}"), body: ItemBody::Message(String::new()), done: false }
    }

    pub fn call(call_id: &str, name: &str) -> Self {
        Self {
            id: format!("fc_{call_id}"),
            body: ItemBody::Call { call_id: call_id.to_owned(), name: name.to_owned(), arguments: String::new() },
            done: false,
        }
    }

    /// The item on the wire: whole, or (`empty`) as `output_item.added`
    /// announces it, before any content.
    pub fn out(&self, empty: bool) -> ItemOut<'_> {
        let status = if self.done { "completed" } else { "in_progress" };
        match &self.body {
            ItemBody::Reasoning(text) => ItemOut::Reasoning {
                id: &self.id,
                summary: [],
                content: if empty { Vec::new() } else { vec![PartOut::ReasoningText { text }] },
                status,
            },
            ItemBody::Message(text) => ItemOut::Message {
                id: &self.id,
                status,
                role: "assistant",
                content: if empty { Vec::new() } else { vec![PartOut::text(text)] },
            },
            ItemBody::Call { call_id, name, arguments } => ItemOut::FunctionCall {
                id: &self.id,
                call_id,
                name,
                arguments: if empty { "" } else { arguments },
                status,
            },
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum ItemOut<'a> {
    Reasoning { id: &'a str, summary: [(); 0], content: Vec<PartOut<'a>>, status: &'static str },
    Message { id: &'a str, status: &'static str, role: &'static str, content: Vec<PartOut<'a>> },
    FunctionCall { id: &'a str, call_id: &'a str, name: &'a str, arguments: &'a str, status: &'static str },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum PartOut<'a> {
    OutputText { text: &'a str, annotations: [(); 0], logprobs: [(); 0] },
    ReasoningText { text: &'a str },
}

impl<'a> PartOut<'a> {
    pub fn text(text: &'a str) -> Self {
        PartOut::OutputText { text, annotations: [], logprobs: [] }
    }
}

/// How the answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    InProgress,
    Completed,
    /// Cut short, for the reason given.
    Incomplete(&'static str),
}

impl Status {
    /// The status a chat finish reason means.
    pub fn of_finish(reason: &str) -> Self {
        match reason {
            "length" => Status::Incomplete("max_output_tokens"),
            "content_filter" => Status::Incomplete("content_filter"),
            _ => Status::Completed,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete(_) => "incomplete",
        }
    }
}

/// What a response object says besides its output.
pub(super) struct Head<'a> {
    pub id: &'a str,
    pub created_at: i64,
    pub model: &'a str,
    pub echo: &'a Echo,
}

#[derive(Serialize)]
pub(super) struct ResponseOut<'a> {
    id: &'a str,
    object: &'static str,
    created_at: i64,
    status: &'static str,
    error: Option<()>,
    incomplete_details: Option<IncompleteOut>,
    model: &'a str,
    output: Vec<ItemOut<'a>>,
    previous_response_id: Option<()>,
    store: bool,
    #[serde(flatten)]
    echo: &'a Echo,
    usage: Option<UsageOut>,
}

/// The request's settings that a response object repeats
/// (<https://platform.openai.com/docs/api-reference/responses/object>):
/// each as the client wrote it (raw JSON, copied once per request), or the
/// API's default when it was left out or `null`.
#[derive(Default)]
pub(crate) struct Echo {
    given: Vec<(&'static str, Box<RawValue>)>,
}

/// The members echoed, in the API object's order.
const ECHOED: [&str; 10] = [
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "reasoning",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
];

impl Echo {
    pub fn of(request: &RequestBody<'_>) -> Self {
        let given = ECHOED
            .iter()
            .filter_map(|name| Some((*name, request.get(name).filter(|raw| raw.get() != "null")?.to_owned())))
            .collect();
        Self { given }
    }
}

impl Serialize for Echo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Empty {}
        #[derive(Serialize)]
        struct Reasoning {
            effort: Option<()>,
            summary: Option<()>,
        }
        #[derive(Serialize)]
        struct Format {
            #[serde(rename = "type")]
            kind: &'static str,
        }
        #[derive(Serialize)]
        struct Text {
            format: Format,
        }
        let mut map = serializer.serialize_map(Some(ECHOED.len()))?;
        for name in ECHOED {
            if let Some((_, raw)) = self.given.iter().find(|(n, _)| *n == name) {
                map.serialize_entry(name, raw)?;
                continue;
            }
            match name {
                "metadata" => map.serialize_entry(name, &Empty {})?,
                "parallel_tool_calls" => map.serialize_entry(name, &true)?,
                "reasoning" => map.serialize_entry(name, &Reasoning { effort: None, summary: None })?,
                "temperature" | "top_p" => map.serialize_entry(name, &1.0)?,
                "text" => map.serialize_entry(name, &Text { format: Format { kind: "text" } })?,
                "tool_choice" => map.serialize_entry(name, "auto")?,
                "tools" => map.serialize_entry(name, &[(); 0])?,
                _ => map.serialize_entry(name, &None::<()>)?,
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct IncompleteOut {
    reason: &'static str,
}

impl<'a> ResponseOut<'a> {
    pub fn new(head: &Head<'a>, status: Status, items: &'a [Item], usage: Option<Usage>) -> Self {
        let echo = head.echo;
        Self {
            id: head.id,
            object: "response",
            created_at: head.created_at,
            status: status.name(),
            error: None,
            incomplete_details: match status {
                Status::Incomplete(reason) => Some(IncompleteOut { reason }),
                _ => None,
            },
            model: head.model,
            output: items.iter().map(|i| i.out(false)).collect(),
            previous_response_id: None,
            store: false,
            echo,
            usage: usage.map(UsageOut::from),
        }
    }
}

/// The Responses API's usage object.
#[derive(Serialize)]
struct UsageOut {
    input_tokens: u64,
    input_tokens_details: CachedOut,
    output_tokens: u64,
    output_tokens_details: ReasoningOut,
    total_tokens: u64,
}

#[derive(Serialize)]
struct CachedOut {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningOut {
    reasoning_tokens: u64,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> Self {
        Self {
            input_tokens: u.input,
            input_tokens_details: CachedOut { cached_tokens: u.cached_input },
            output_tokens: u.output,
            output_tokens_details: ReasoningOut { reasoning_tokens: u.reasoning },
            total_tokens: u.input + u.output,
        }
    }
}

/// The response id for a chat completion id.
pub(super) fn response_id(chat_id: &str) -> String {
    format!("resp_{}", chat_id.strip_prefix("chatcmpl-").unwrap_or(chat_id))
}

/// The response for a `chat.completion`, named `model`, repeating the
/// request's settings (`echo`), and its usage; the error a body describes
/// when it is no completion (an error object sent with a 200).
pub(crate) fn from_chat(body: &[u8], model: &str, echo: &Echo) -> Result<(Vec<u8>, Option<Usage>), ErrorFields> {
    let Ok(completion) = serde_json::from_slice::<CompletionView<'_>>(body) else {
        return Err(ErrorFields::parse(body));
    };
    let usage = completion.usage.map(Usage::from);
    let id = response_id(completion.id.as_deref().unwrap_or_default());
    let mut items = Vec::new();
    let mut status = Status::Completed;
    if let Some(choice) = completion.choices.first() {
        let said = &choice.message;
        if let Some(text) = said.reasoning_content.as_deref().or(said.reasoning.as_deref()).filter(|t| !t.is_empty()) {
            let mut item = Item::reasoning(&id, items.len());
            item.body = ItemBody::Reasoning(text.to_owned());
            items.push(item);
        }
        if let Some(text) = said.content.as_deref().or(said.refusal.as_deref()).filter(|t| !t.is_empty()) {
            let mut item = Item::message(&id, items.len());
            item.body = ItemBody::Message(text.to_owned());
            items.push(item);
        }
        for call in said.tool_calls.iter().flatten() {
            let mut item =
                Item::call(call.id.as_deref().unwrap_or_default(), call.function.name.as_deref().unwrap_or_default());
            if let ItemBody::Call { arguments, .. } = &mut item.body {
                arguments.push_str(call.function.arguments.as_deref().unwrap_or_default());
            }
            items.push(item);
        }
        status = Status::of_finish(choice.finish_reason.as_deref().unwrap_or("stop"));
    }
    items.iter_mut().for_each(|i| i.done = true);
    let created_at = completion.created.unwrap_or_else(crate::clock::unix_seconds);
    let head = Head { id: &id, created_at, model, echo };
    let response = ResponseOut::new(&head, status, &items, usage);
    Ok((serde_json::to_vec(&response).unwrap_or_default(), usage))
}

#[derive(Deserialize)]
struct ErrorView {
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

/// A response an OpenAI channel answered, passed through (the model
/// renamed), and its usage; the error it describes when it is one.
pub(crate) fn passthrough_whole(
    body: Bytes,
    rename: Option<&ModelRename>,
) -> Result<(Parts, Option<Usage>), ErrorFields> {
    // A response has `"error": null`; an error object sent with a 200 has
    // its error and no `object`.
    if let Ok(view) = serde_json::from_slice::<ErrorView>(&body)
        && view.error.is_some()
        && view.object.as_deref() != Some("response")
    {
        return Err(ErrorFields::parse(&body));
    }
    let usage = last_usage_member::<ResponsesUsage>(&body).map(Usage::from);
    Ok((renamed(body, rename), usage))
}
