//! An Anthropic Messages request as an OpenAI chat completion request, for
//! channels that speak OpenAI's wire format
//! (<https://docs.anthropic.com/en/api/messages> ->
//! <https://platform.openai.com/docs/api-reference/chat/create>):
//!
//! - `system` (a string or text blocks) becomes the first, `system`, message;
//! - each turn's text blocks become its content (a string when it is text
//!   only), images become `image_url` parts (base64 sources as `data:` URLs),
//!   base64 PDF documents `file` parts;
//! - an assistant turn's `tool_use` blocks become its `tool_calls` (ids kept,
//!   `input` as the `arguments` string); a user turn's `tool_result` blocks
//!   become `tool` messages (their text; images in results are left out),
//!   ahead of the rest of that turn (an error result is marked `Error: `);
//!   thinking blocks are left out;
//! - `max_tokens` -> `max_completion_tokens` (OpenAI, Azure) or `max_tokens`
//!   (the rest of the family), `stop_sequences` -> `stop`, `temperature`,
//!   `top_p`, `metadata.user_id` -> `user`;
//! - `tools` -> function tools, `tool_choice` `auto`/`any`/`tool`/`none` ->
//!   `auto`/`required`/a named function/`none`, `disable_parallel_tool_use`
//!   -> `parallel_tool_calls: false`; `output_config.format` -> a
//!   `json_schema` `response_format`;
//! - a stream asks for `stream_options.include_usage`, so Anthropic's
//!   `message_delta` can carry usage.
//!
//! `thinking` and `top_k` have no portable OpenAI equivalent and are left
//! out; server tools (web search and the like) are refused.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::{ApiError, RequestBody};
use crate::providers::anthropic::wire::{BlockView, SourceView};

pub(crate) type Str<'a> = Cow<'a, str>;

/// Which member carries the output limit upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LimitMember {
    /// OpenAI and Azure OpenAI: `max_tokens` is deprecated there and
    /// refused by reasoning models.
    MaxCompletionTokens,
    /// The rest of the OpenAI-compatible family, which knows `max_tokens`.
    MaxTokens,
}

// ----------------------------------------------------------- Anthropic, read

#[derive(Deserialize)]
struct TurnView<'a> {
    #[serde(borrow)]
    role: Str<'a>,
    #[serde(borrow)]
    content: &'a RawValue,
}

#[derive(Deserialize)]
struct ToolView<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    name: Str<'a>,
    #[serde(default, borrow)]
    description: Option<Str<'a>>,
    #[serde(default, borrow)]
    input_schema: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Deserialize)]
struct ToolChoiceView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default)]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
struct MetadataView<'a> {
    #[serde(default, borrow)]
    user_id: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct OutputConfigView<'a> {
    #[serde(default, borrow)]
    format: Option<FormatView<'a>>,
}

#[derive(Deserialize)]
struct FormatView<'a> {
    #[serde(borrow)]
    schema: &'a RawValue,
}

// ----------------------------------------------------------- OpenAI, written
// (also what the Responses translation writes: `providers::responses`)

#[derive(Serialize)]
pub(crate) struct ChatRequest<'a> {
    pub(crate) model: &'a str,
    pub(crate) messages: Vec<ChatMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stop: Option<Vec<Str<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<Str<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) tools: Vec<ChatTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_choice: Option<ChatToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response_format: Option<ResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reasoning_effort: Option<Str<'a>>,
}

#[derive(Serialize)]
pub(crate) struct StreamOptions {
    pub(crate) include_usage: bool,
}

#[derive(Serialize)]
pub(crate) struct ChatMessage<'a> {
    pub(crate) role: &'static str,
    pub(crate) content: Option<Content<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) tool_calls: Vec<ToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_call_id: Option<Str<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Content<'a> {
    Text(Str<'a>),
    Parts(Vec<Part<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Part<'a> {
    Text { text: Str<'a> },
    ImageUrl { image_url: Url<'a> },
    File { file: File<'a> },
}

#[derive(Serialize)]
pub(crate) struct Url<'a> {
    pub(crate) url: Str<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<Str<'a>>,
}

#[derive(Serialize)]
pub(crate) struct File<'a> {
    pub(crate) filename: Str<'a>,
    pub(crate) file_data: Str<'a>,
}

#[derive(Serialize)]
pub(crate) struct ToolCall<'a> {
    pub(crate) id: Str<'a>,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) function: Function<'a>,
}

#[derive(Serialize)]
pub(crate) struct Function<'a> {
    pub(crate) name: Str<'a>,
    pub(crate) arguments: Str<'a>,
}

#[derive(Serialize)]
pub(crate) struct ChatTool<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) function: FunctionDefinition<'a>,
}

#[derive(Serialize)]
pub(crate) struct FunctionDefinition<'a> {
    pub(crate) name: Str<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<Str<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) parameters: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) strict: Option<bool>,
}

#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum ChatToolChoice<'a> {
    Mode(&'static str),
    Named {
        #[serde(rename = "type")]
        kind: &'static str,
        function: Named<'a>,
    },
}

#[derive(Serialize)]
pub(crate) struct Named<'a> {
    pub(crate) name: Str<'a>,
}

#[derive(Serialize)]
pub(crate) struct ResponseFormat<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) json_schema: Option<JsonSchema<'a>>,
}

#[derive(Serialize)]
pub(crate) struct JsonSchema<'a> {
    pub(crate) name: Str<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<Str<'a>>,
    pub(crate) schema: &'a RawValue,
    pub(crate) strict: bool,
}

fn invalid(code: &'static str, message: impl Into<Cow<'static, str>>) -> ApiError {
    ApiError::bad_request(code, message)
}

/// What the translation needs besides the client's body.
pub(crate) struct Target<'a> {
    /// The model name upstream.
    pub model: &'a str,
    pub limit: LimitMember,
    pub stream: bool,
    /// Ask for the stream's usage chunk.
    pub include_usage: bool,
}

/// The OpenAI chat request for an Anthropic Messages `request`.
pub(crate) fn translate(request: &RequestBody<'_>, target: &Target<'_>) -> Result<Vec<u8>, ApiError> {
    let turns: Vec<TurnView<'_>> =
        request.member("messages")?.ok_or_else(|| invalid("missing_messages", "`messages` is required."))?;
    let mut out = ChatRequest {
        model: target.model,
        messages: Vec::with_capacity(turns.len() + 1),
        max_completion_tokens: None,
        max_tokens: None,
        stop: request.member("stop_sequences")?,
        temperature: request.member("temperature")?,
        top_p: request.member("top_p")?,
        user: request.member::<MetadataView<'_>>("metadata")?.and_then(|m| m.user_id),
        stream: target.stream,
        stream_options: (target.stream && target.include_usage).then_some(StreamOptions { include_usage: true }),
        tools: Vec::new(),
        tool_choice: None,
        parallel_tool_calls: None,
        response_format: None,
        reasoning_effort: None,
    };
    let limit = request.member::<u64>("max_tokens")?;
    match target.limit {
        LimitMember::MaxCompletionTokens => out.max_completion_tokens = limit,
        LimitMember::MaxTokens => out.max_tokens = limit,
    }
    if let Some(system) = request.get("system").filter(|s| s.get() != "null") {
        let text = joined_text(system)?;
        if !text.is_empty() {
            out.messages.push(ChatMessage { role: "system", content: Some(Content::Text(text)), ..message() });
        }
    }
    for turn in turns {
        match turn.role.as_ref() {
            "user" => user_turn(&mut out.messages, turn.content)?,
            "assistant" => out.messages.push(assistant_turn(turn.content)?),
            other => {
                return Err(invalid(
                    "invalid_messages",
                    format!("`messages` roles are `user` and `assistant`, not `{other}`."),
                ));
            }
        }
    }
    for tool in request.member::<Vec<ToolView<'_>>>("tools")?.unwrap_or_default() {
        if tool.kind.as_deref().is_some_and(|k| k != "custom") {
            return Err(invalid(
                "unsupported_tool",
                format!("The server tool `{}` is only available on Anthropic channels.", tool.name),
            ));
        }
        out.tools.push(ChatTool {
            kind: "function",
            function: FunctionDefinition {
                name: tool.name,
                description: tool.description,
                parameters: tool.input_schema,
                strict: tool.strict.filter(|s| *s),
            },
        });
    }
    if let Some(choice) = request.member::<ToolChoiceView<'_>>("tool_choice")? {
        out.tool_choice = Some(match choice.kind.as_ref() {
            "any" => ChatToolChoice::Mode("required"),
            "none" => ChatToolChoice::Mode("none"),
            "tool" => ChatToolChoice::Named {
                kind: "function",
                function: Named {
                    name: choice
                        .name
                        .ok_or_else(|| invalid("invalid_tool_choice", "`tool_choice.name` is required."))?,
                },
            },
            _ => ChatToolChoice::Mode("auto"),
        });
        if choice.disable_parallel_tool_use == Some(true) && !out.tools.is_empty() {
            out.parallel_tool_calls = Some(false);
        }
    }
    if let Some(schema) = request.member::<OutputConfigView<'_>>("output_config")?.and_then(|c| c.format) {
        out.response_format = Some(ResponseFormat {
            kind: "json_schema",
            json_schema: Some(JsonSchema {
                name: Cow::Borrowed("output"),
                description: None,
                schema: schema.schema,
                strict: true,
            }),
        });
    }
    serde_json::to_vec(&out).map_err(|e| ApiError::internal(format!("the chat request could not be written: {e}")))
}

pub(crate) fn message<'a>() -> ChatMessage<'a> {
    ChatMessage { role: "user", content: None, tool_calls: Vec::new(), tool_call_id: None }
}

/// Content that is a string or blocks, as blocks.
fn blocks(content: &RawValue) -> Result<Vec<BlockView<'_>>, ApiError> {
    let malformed =
        |e: serde_json::Error| invalid("invalid_messages", format!("A message `content` is malformed: {e}"));
    if content.get().starts_with('"') {
        let text: Str<'_> = serde_json::from_str(content.get()).map_err(malformed)?;
        return Ok(vec![BlockView { kind: Cow::Borrowed("text"), text: Some(text), ..BlockView::default() }]);
    }
    serde_json::from_str(content.get()).map_err(malformed)
}

/// The text of a string or of text blocks, joined.
fn joined_text(content: &RawValue) -> Result<Str<'_>, ApiError> {
    let mut texts = blocks(content)?.into_iter().filter(|b| b.kind == "text").filter_map(|b| b.text);
    let Some(first) = texts.next() else { return Ok(Cow::Borrowed("")) };
    match texts.next() {
        None => Ok(first),
        Some(second) => {
            let mut all = first.into_owned();
            for text in std::iter::once(second).chain(texts) {
                all.push_str("\n\n");
                all.push_str(&text);
            }
            Ok(Cow::Owned(all))
        }
    }
}

/// A user turn: its tool results as `tool` messages, then the rest.
fn user_turn<'a>(messages: &mut Vec<ChatMessage<'a>>, content: &'a RawValue) -> Result<(), ApiError> {
    let mut parts = Vec::new();
    for block in blocks(content)? {
        match block.kind.as_ref() {
            "text" => {
                if let Some(text) = block.text {
                    parts.push(Part::Text { text });
                }
            }
            "image" => parts.push(Part::ImageUrl { image_url: Url { url: image_url(block.source)?, detail: None } }),
            "document" => parts.push(Part::File { file: pdf(block.source)? }),
            "tool_result" => {
                let id = block
                    .tool_use_id
                    .ok_or_else(|| invalid("invalid_messages", "A `tool_result` needs its `tool_use_id`."))?;
                let mut text = match block.content {
                    Some(content) if content.get() != "null" => joined_text(content)?,
                    _ => Cow::Borrowed(""),
                };
                if block.is_error == Some(true) {
                    text = Cow::Owned(format!("Error: {text}"));
                }
                messages.push(ChatMessage {
                    role: "tool",
                    content: Some(Content::Text(text)),
                    tool_call_id: Some(id),
                    ..message()
                });
            }
            // Thinking blocks, and blocks OpenAI has no place for.
            _ => {}
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let content = match parts.as_slice() {
        [Part::Text { .. }] => match parts.pop() {
            Some(Part::Text { text }) => Content::Text(text),
            _ => Content::Parts(parts),
        },
        _ => Content::Parts(parts),
    };
    messages.push(ChatMessage { role: "user", content: Some(content), ..message() });
    Ok(())
}

/// An assistant turn: its text as content, its tool uses as tool calls.
fn assistant_turn(content: &RawValue) -> Result<ChatMessage<'_>, ApiError> {
    let mut text: Option<Str<'_>> = None;
    let mut calls = Vec::new();
    for block in blocks(content)? {
        match block.kind.as_ref() {
            "text" => {
                let piece = block.text.unwrap_or_default();
                text = Some(match text.take() {
                    None => piece,
                    Some(before) => Cow::Owned(before.into_owned() + &piece),
                });
            }
            "tool_use" => calls.push(ToolCall {
                id: block.id.unwrap_or_default(),
                kind: "function",
                function: Function {
                    name: block.name.unwrap_or_default(),
                    arguments: Cow::Borrowed(block.input.map_or("{}", RawValue::get)),
                },
            }),
            _ => {}
        }
    }
    Ok(ChatMessage { role: "assistant", content: text.map(Content::Text), tool_calls: calls, ..message() })
}

fn image_url(source: Option<SourceView<'_>>) -> Result<Str<'_>, ApiError> {
    let source = source.ok_or_else(|| invalid("invalid_messages", "An `image` block needs its `source`."))?;
    match (source.kind.as_ref(), source.media_type, source.data, source.url) {
        ("base64", Some(media_type), Some(data), _) => Ok(Cow::Owned(format!("data:{media_type};base64,{data}"))),
        ("url", _, _, Some(url)) => Ok(url),
        _ => Err(invalid("unsupported_content", "Image sources must be `base64` or `url`.")),
    }
}

fn pdf(source: Option<SourceView<'_>>) -> Result<File<'static>, ApiError> {
    match source {
        Some(SourceView { kind, media_type: Some(media_type), data: Some(data), .. }) if kind == "base64" => Ok(File {
            filename: Cow::Borrowed("document.pdf"),
            file_data: Cow::Owned(format!("data:{media_type};base64,{data}")),
        }),
        _ => Err(invalid("unsupported_content", "Only base64 documents can go to this channel.")),
    }
}
