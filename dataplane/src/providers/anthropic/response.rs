//! A complete Anthropic message as an OpenAI `chat.completion`: text blocks
//! joined into `content`, `tool_use` blocks as `tool_calls` (ids kept, the
//! `input` object as the `arguments` string), thinking blocks as
//! `reasoning_content` (the field DeepSeek, vLLM and others use), the stop
//! reason as `finish_reason`, and usage with cache reads as
//! `prompt_tokens_details.cached_tokens`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::wire::{AnthropicUsage, BlockView, finish_reason};
use crate::metering::Usage;
use crate::providers::ErrorFields;

type Str<'a> = Cow<'a, str>;

#[derive(Deserialize)]
struct MessageView<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    content: Vec<BlockView<'a>>,
    #[serde(default, borrow)]
    stop_reason: Option<Str<'a>>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Serialize)]
struct Completion<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: i64,
    pub(crate) model: &'a str,
    pub(crate) choices: [Choice<'a>; 1],
    pub(crate) usage: OpenAiUsageOut,
}

#[derive(Serialize)]
struct Choice<'a> {
    pub(crate) index: u32,
    pub(crate) message: AssistantMessage<'a>,
    pub(crate) logprobs: Option<()>,
    pub(crate) finish_reason: &'static str,
}

#[derive(Serialize)]
pub(crate) struct AssistantMessage<'a> {
    pub(crate) role: &'static str,
    pub(crate) content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) tool_calls: Vec<ToolCallOut<'a>>,
    pub(crate) refusal: Option<()>,
}

#[derive(Serialize)]
pub(crate) struct ToolCallOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    pub(crate) function: FunctionOut<'a>,
}

#[derive(Serialize)]
pub(crate) struct FunctionOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<&'a str>,
    pub(crate) arguments: &'a str,
}

/// OpenAI's `usage` object for a usage record.
#[derive(Serialize)]
pub(crate) struct OpenAiUsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
}

impl From<Usage> for OpenAiUsageOut {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.input,
            completion_tokens: u.output,
            total_tokens: u.input.saturating_add(u.output),
            prompt_tokens_details: PromptDetails { cached_tokens: u.cached_input },
            completion_tokens_details: CompletionDetails { reasoning_tokens: u.reasoning },
        }
    }
}

/// A `{"type":"error",...}` body, or one that is no message at all.
pub(super) fn is_error(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(default, rename = "type", borrow)]
        kind: Option<Str<'a>>,
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Kind<'_>>(body) {
        Ok(k) => k.kind.as_deref() == Some("error") || (k.kind.is_none() && k.error.is_some()),
        Err(_) => true,
    }
}

/// The `chat.completion` for a complete Anthropic message, named `model`,
/// and its usage; the error a body describes when it is not a message (an
/// error object sent with a 200).
pub(crate) fn completion(body: &[u8], model: &str) -> Result<(Vec<u8>, Usage), ErrorFields> {
    let message = match serde_json::from_slice::<MessageView<'_>>(body) {
        Ok(m) if m.kind.as_deref().is_none_or(|k| k == "message") => m,
        _ => return Err(ErrorFields::parse(body)),
    };
    let usage = Usage::from(message.usage.unwrap_or_default());
    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut calls = Vec::new();
    for block in &message.content {
        match block.kind.as_ref() {
            "text" => text.get_or_insert_default().push_str(block.text.as_deref().unwrap_or_default()),
            "thinking" => reasoning.get_or_insert_default().push_str(block.thinking.as_deref().unwrap_or_default()),
            "tool_use" => calls.push(ToolCallOut {
                index: None,
                id: block.id.as_deref(),
                kind: Some("function"),
                function: FunctionOut {
                    name: block.name.as_deref(),
                    arguments: block.input.map_or("{}", RawValue::get),
                },
            }),
            // Server tool blocks, redacted thinking, and blocks added later.
            _ => {}
        }
    }
    let answer = AssistantMessage::new(text, reasoning, calls);
    let finish = finish_reason(message.stop_reason.as_deref().unwrap_or("end_turn"));
    Ok((chat_completion(message.id.as_deref().unwrap_or_default(), model, answer, finish, usage), usage))
}

impl<'a> AssistantMessage<'a> {
    pub fn new(content: Option<String>, reasoning_content: Option<String>, tool_calls: Vec<ToolCallOut<'a>>) -> Self {
        Self { role: "assistant", content, reasoning_content, tool_calls, refusal: None }
    }
}

/// A `chat.completion` of one choice (shared by the translations from other
/// formats).
pub(crate) fn chat_completion(
    id: &str,
    model: &str,
    message: AssistantMessage<'_>,
    finish_reason: &'static str,
    usage: Usage,
) -> Vec<u8> {
    let completion = Completion {
        id,
        object: "chat.completion",
        created: crate::clock::unix_seconds(),
        model,
        choices: [Choice { index: 0, message, logprobs: None, finish_reason }],
        usage: usage.into(),
    };
    serde_json::to_vec(&completion).unwrap_or_default()
}
