//! An OpenAI `chat.completion` as an Anthropic message: a `thinking` block
//! for reasoning text, a `text` block for the content, a `tool_use` block
//! per tool call (ids kept, the `arguments` string as the `input` object),
//! the finish reason as `stop_reason`, and usage with cached prompt tokens
//! as `cache_read_input_tokens` (Anthropic's `input_tokens` leaves them out).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::metering::{OpenAiUsage, Said, Usage};
use crate::providers::ErrorFields;
use crate::providers::anthropic::wire::stop_reason;

type Str<'a> = Cow<'a, str>;

/// A `chat.completion`, as the translations read it.
#[derive(Deserialize)]
pub(crate) struct CompletionView<'a> {
    #[serde(default, borrow)]
    pub id: Option<Str<'a>>,
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(borrow)]
    pub choices: Vec<ChoiceView<'a>>,
    #[serde(default)]
    pub usage: Option<OpenAiUsage>,
}

#[derive(Deserialize)]
pub(crate) struct ChoiceView<'a> {
    #[serde(borrow)]
    pub message: Said<'a>,
    #[serde(default, borrow)]
    pub finish_reason: Option<Str<'a>>,
}

/// A message: whole, or as `message_start` opens a stream (no content and
/// no stop reason yet).
#[derive(Serialize)]
pub(super) struct Message<'a> {
    pub id: MessageId<'a>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    pub model: &'a str,
    pub content: Vec<Block<'a>>,
    pub stop_reason: Option<&'static str>,
    pub stop_sequence: Option<()>,
    pub usage: AnthropicUsageOut,
}

/// A message's id made from the chat completion's: Anthropic's ids begin
/// `msg_` (SDKs and logs rely on the form), so `chatcmpl-X` is sent as
/// `msg_X` and any other id `msg_` + it (one already `msg_...` as it is).
/// Written as it is serialised: no string is built for it.
pub(super) struct MessageId<'a>(pub &'a str);

impl Serialize for MessageId<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let id = self.0;
        let rest = id.strip_prefix("chatcmpl-").or_else(|| id.strip_prefix("msg_")).unwrap_or(id);
        serializer.collect_str(&format_args!("msg_{rest}"))
    }
}

/// A content block: whole, or empty as `content_block_start` opens it.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Block<'a> {
    Thinking { thinking: &'a str, signature: &'static str },
    Text { text: &'a str },
    ToolUse { id: &'a str, name: &'a str, input: Input<'a> },
}

/// A tool call's `input`: the `arguments` when they are a JSON object, else
/// the text under `_unparsed_arguments` (Anthropic's `input` is an object).
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum Input<'a> {
    Object(&'a RawValue),
    /// No arguments at all: `{}`.
    Empty {},
    Unparsed {
        #[serde(rename = "_unparsed_arguments")]
        text: &'a str,
    },
}

impl<'a> Input<'a> {
    pub fn of(arguments: &'a str) -> Self {
        match serde_json::from_str::<&RawValue>(arguments) {
            Ok(raw) if raw.get().starts_with('{') => Input::Object(raw),
            _ if arguments.trim().is_empty() => Input::Empty {},
            _ => Input::Unparsed { text: arguments },
        }
    }
}

/// Anthropic's `usage` for a usage record.
#[derive(Serialize)]
pub(super) struct AnthropicUsageOut {
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
}

impl From<Usage> for AnthropicUsageOut {
    fn from(u: Usage) -> Self {
        Self {
            input_tokens: u.input.saturating_sub(u.cached_input).saturating_sub(u.cache_write),
            output_tokens: u.output,
            cache_creation_input_tokens: u.cache_write,
            cache_read_input_tokens: u.cached_input,
        }
    }
}

/// The Anthropic message for a `chat.completion`, named `model`, and its
/// usage; the error a body describes when it is no completion (an error
/// object sent with a 200).
pub(crate) fn message(body: &[u8], model: &str) -> Result<(Vec<u8>, Option<Usage>), ErrorFields> {
    let Ok(completion) = serde_json::from_slice::<CompletionView<'_>>(body) else {
        return Err(ErrorFields::parse(body));
    };
    let usage = completion.usage.map(Usage::from);
    let choice = completion.choices.first();
    let mut content = Vec::new();
    let mut finish = "stop";
    if let Some(choice) = choice {
        let m = &choice.message;
        if let Some(thinking) = m.reasoning_content.as_deref().or(m.reasoning.as_deref()).filter(|t| !t.is_empty()) {
            content.push(Block::Thinking { thinking, signature: "" });
        }
        if let Some(text) = m.content.as_deref().or(m.refusal.as_deref()).filter(|t| !t.is_empty()) {
            content.push(Block::Text { text });
        }
        finish = choice.finish_reason.as_deref().unwrap_or("stop");
    }
    let calls = choice.and_then(|c| c.message.tool_calls.as_ref()).map_or(&[][..], Vec::as_slice);
    for call in calls {
        content.push(Block::ToolUse {
            id: call.id.as_deref().unwrap_or_default(),
            name: call.function.name.as_deref().unwrap_or_default(),
            input: Input::of(call.function.arguments.as_deref().unwrap_or_default()),
        });
    }
    let message = Message {
        id: MessageId(completion.id.as_deref().unwrap_or_default()),
        kind: "message",
        role: "assistant",
        model,
        content,
        stop_reason: Some(stop_reason(finish)),
        stop_sequence: None,
        usage: usage.unwrap_or_default().into(),
    };
    Ok((serde_json::to_vec(&message).unwrap_or_default(), usage))
}
