//! A complete Cohere v2 chat answer as an OpenAI `chat.completion` (text
//! items joined into `content`; thinking items and the tool plan as
//! `reasoning_content`; tool calls as they are, ids kept; the finish reason
//! mapped; billed usage), and a `/v2/embed` answer as OpenAI's embeddings
//! list.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::wire::{CohereUsage, ContentView, Tokens, ToolCallView, finish_reason};
use crate::metering::Usage;
use crate::providers::ErrorFields;
use crate::providers::anthropic::response::{AssistantMessage, FunctionOut, ToolCallOut, chat_completion};
use crate::providers::gemini::response::embedding_list;

type Str<'a> = Cow<'a, str>;

#[derive(Deserialize)]
struct ChatResponse<'a> {
    #[serde(default, borrow)]
    id: Option<Str<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Str<'a>>,
    #[serde(default, borrow)]
    message: Option<MessageView<'a>>,
    #[serde(default)]
    usage: Option<CohereUsage>,
}

#[derive(Deserialize)]
struct MessageView<'a> {
    #[serde(default, borrow)]
    content: Vec<ContentView<'a>>,
    #[serde(default, borrow)]
    tool_plan: Option<Str<'a>>,
    #[serde(default, borrow)]
    tool_calls: Vec<ToolCallView<'a>>,
}

/// The `chat.completion` for a complete Cohere answer, named `model`, and
/// its usage; the error a body describes when it is no answer (an error
/// object with a 200, or an answer that ended in `ERROR`/`TIMEOUT`).
pub(crate) fn completion(body: &[u8], model: &str) -> Result<(Vec<u8>, Usage), ErrorFields> {
    let answer = match serde_json::from_slice::<ChatResponse<'_>>(body) {
        Ok(a) if a.finish_reason.is_some() || a.message.is_some() => a,
        _ => return Err(ErrorFields::parse(body)),
    };
    let finish = match answer.finish_reason.as_deref().map(finish_reason) {
        Some(Some(reason)) => reason,
        None => "stop",
        Some(None) => {
            return Err(ErrorFields {
                message: format!(
                    "The upstream's answer failed: {}",
                    answer.finish_reason.as_deref().unwrap_or_default()
                ),
                ..ErrorFields::default()
            });
        }
    };
    let usage = Usage::from(answer.usage.unwrap_or_default());
    let message = answer.message.as_ref();
    let mut text: Option<String> = None;
    let mut reasoning: Option<String> =
        message.and_then(|m| m.tool_plan.as_deref()).filter(|p| !p.is_empty()).map(str::to_owned);
    for item in message.map_or(&[][..], |m| &m.content) {
        if let Some(t) = &item.text {
            text.get_or_insert_default().push_str(t);
        }
        if let Some(t) = &item.thinking {
            reasoning.get_or_insert_default().push_str(t);
        }
    }
    let calls = message
        .map_or(&[][..], |m| &m.tool_calls)
        .iter()
        .map(|c| ToolCallOut {
            index: None,
            id: c.id.as_deref(),
            kind: Some("function"),
            function: FunctionOut {
                name: c.function.as_ref().and_then(|f| f.name.as_deref()),
                arguments: c.function.as_ref().and_then(|f| f.arguments.as_deref()).unwrap_or("{}"),
            },
        })
        .collect();
    let message = AssistantMessage::new(text, reasoning, calls);
    Ok((chat_completion(answer.id.as_deref().unwrap_or_default(), model, message, finish, usage), usage))
}

/// OpenAI's embeddings list for a `/v2/embed` answer, named `model`, and
/// its usage (`meta.billed_units.input_tokens`).
pub(crate) fn embeddings(body: &[u8], model: &str) -> Result<(Vec<u8>, Option<Usage>), ErrorFields> {
    #[derive(Deserialize)]
    struct Embed<'a> {
        #[serde(borrow)]
        embeddings: ByType<'a>,
        #[serde(default)]
        meta: Option<Meta>,
    }
    #[derive(Deserialize)]
    struct ByType<'a> {
        #[serde(borrow)]
        float: Vec<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Meta {
        #[serde(default)]
        billed_units: Option<Tokens>,
    }
    let embed: Embed<'_> = serde_json::from_slice(body).map_err(|_| ErrorFields::parse(body))?;
    let input = embed.meta.and_then(|m| m.billed_units).and_then(|b| b.input_tokens);
    let list = embedding_list(model, embed.embeddings.float.iter().copied(), input.unwrap_or(0));
    let usage = input.map(|input| Usage { input, ..Usage::default() });
    Ok((list, usage))
}
