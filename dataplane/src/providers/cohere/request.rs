//! An OpenAI chat completion request as a Cohere v2 chat request
//! (<https://platform.openai.com/docs/api-reference/chat/create> ->
//! <https://docs.cohere.com/reference/chat>). The two are close: messages
//! keep their roles (`developer` becomes `system`), user content keeps its
//! text and `image_url` parts, assistant tool calls and `tool` results keep
//! their ids; tools keep their shape. What differs:
//!
//! - `max_completion_tokens` (else `max_tokens`) -> `max_tokens`, `top_p` ->
//!   `p`, `stop` -> `stop_sequences`; `temperature`, `seed`,
//!   `frequency_penalty`, `presence_penalty` as they are;
//! - `tool_choice`: `required` -> `REQUIRED`, `none` -> `NONE`, a named
//!   function -> `REQUIRED` with only that tool (Cohere cannot name one);
//! - `response_format` `json_object` -> `{"type":"json_object"}`,
//!   `json_schema` -> the same with its `json_schema`;
//! - `reasoning_effort` -> `thinking` with a token budget (`none`: disabled).
//!
//! `n` above 1, file and audio parts are refused; `user`, `logprobs`,
//! `stream_options` and other OpenAI-only members are dropped.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::api::{ApiError, RequestBody};
use crate::providers::anthropic::request::{
    ChatMessage, ChatPart, ChatTool, ImageUrl, NamedChoice, ResponseFormat, Stop, invalid, texts, thinking_budget,
};

type Str<'a> = Cow<'a, str>;

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<Str<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Format<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Thinking>,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
enum Message<'a> {
    System {
        content: String,
    },
    User {
        content: UserContent<'a>,
    },
    Assistant {
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall<'a>>,
    },
    Tool {
        tool_call_id: Str<'a>,
        content: String,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum UserContent<'a> {
    Text(String),
    Parts(Vec<Part<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part<'a> {
    Text { text: Str<'a> },
    ImageUrl { image_url: Url<'a> },
}

#[derive(Serialize)]
struct Url<'a> {
    url: Str<'a>,
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: Str<'a>,
    #[serde(rename = "type")]
    kind: &'static str,
    function: CallFunction<'a>,
}

#[derive(Serialize)]
struct CallFunction<'a> {
    name: Str<'a>,
    arguments: Str<'a>,
}

#[derive(Serialize)]
struct Tool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: ToolFunction<'a>,
}

#[derive(Serialize)]
struct ToolFunction<'a> {
    name: Str<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Str<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Format<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_schema: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Thinking {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_budget: Option<u64>,
}

/// The Cohere request for an OpenAI chat `request`, for `model` upstream.
pub(crate) fn translate(request: &RequestBody<'_>, model: &str, stream: bool) -> Result<Vec<u8>, ApiError> {
    let given: Vec<ChatMessage<'_>> =
        request.member("messages")?.ok_or_else(|| invalid("missing_messages", "`messages` is required."))?;
    if request.member::<u64>("n")?.is_some_and(|n| n > 1) {
        return Err(invalid("unsupported_parameter", "`n` above 1 is not supported by Cohere channels."));
    }
    let joined = |content| -> Result<String, ApiError> { Ok(texts(content)?.concat()) };
    let mut messages = Vec::with_capacity(given.len());
    for message in given {
        messages.push(match message.role.as_ref() {
            "system" | "developer" => Message::System { content: joined(message.content)? },
            "user" => Message::User { content: user_content(message.content)? },
            "assistant" => {
                let text = joined(message.content)?;
                let tool_calls = message
                    .tool_calls
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| ToolCall {
                        id: c.id,
                        kind: "function",
                        function: CallFunction {
                            name: c.function.name,
                            arguments: c
                                .function
                                .arguments
                                .filter(|a| !a.trim().is_empty())
                                .unwrap_or(Cow::Borrowed("{}")),
                        },
                    })
                    .collect();
                Message::Assistant { content: (!text.is_empty()).then_some(text), tool_calls }
            }
            "tool" => Message::Tool {
                tool_call_id: message
                    .tool_call_id
                    .ok_or_else(|| invalid("invalid_messages", "A `tool` message needs its `tool_call_id`."))?,
                content: joined(message.content)?,
            },
            other => {
                return Err(invalid(
                    "invalid_messages",
                    format!("Messages with role `{other}` cannot be sent to a Cohere channel."),
                ));
            }
        });
    }
    let (tools, tool_choice) = tools(request)?;
    let response_format = match request.member::<ResponseFormat<'_>>("response_format")? {
        Some(f) if f.kind == "json_object" => Some(Format { kind: "json_object", json_schema: None }),
        Some(f) if f.kind == "json_schema" => {
            Some(Format { kind: "json_object", json_schema: f.json_schema.and_then(|j| j.schema) })
        }
        _ => None,
    };
    let thinking = match request.member::<Str<'_>>("reasoning_effort")? {
        Some(effort) if effort == "none" => Some(Thinking { kind: "disabled", token_budget: None }),
        Some(effort) => thinking_budget(&effort).map(|b| Thinking { kind: "enabled", token_budget: Some(b) }),
        None => None,
    };
    let out = ChatRequest {
        model,
        messages,
        stream,
        tools,
        tool_choice,
        max_tokens: match request.member::<u64>("max_completion_tokens")? {
            Some(n) => Some(n),
            None => request.member("max_tokens")?,
        },
        temperature: request.member("temperature")?,
        p: request.member("top_p")?,
        stop_sequences: request.member::<Stop<'_>>("stop")?.map(|s| match s {
            Stop::One(one) => vec![one],
            Stop::Many(many) => many,
        }),
        seed: request.member("seed")?,
        frequency_penalty: request.member("frequency_penalty")?,
        presence_penalty: request.member("presence_penalty")?,
        response_format,
        thinking,
    };
    serde_json::to_vec(&out).map_err(|e| ApiError::internal(format!("the Cohere request could not be written: {e}")))
}

/// A user message's content: its text, or its text and image parts.
fn user_content(content: Option<&RawValue>) -> Result<UserContent<'_>, ApiError> {
    let Some(raw) = content.filter(|c| c.get().starts_with('[')) else {
        return Ok(UserContent::Text(texts(content)?.concat()));
    };
    let parts: Vec<ChatPart<'_>> = serde_json::from_str(raw.get())
        .map_err(|e| invalid("invalid_messages", format!("A message `content` is malformed: {e}")))?;
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        match part.kind.as_ref() {
            "text" => out.extend(part.text.filter(|t| !t.is_empty()).map(|text| Part::Text { text })),
            "image_url" => {
                let url = match part.image_url {
                    Some(ImageUrl::Object { url } | ImageUrl::Plain(url)) => url,
                    None => return Err(invalid("invalid_messages", "An `image_url` part needs a URL.")),
                };
                out.push(Part::ImageUrl { image_url: Url { url } });
            }
            other => {
                return Err(invalid(
                    "unsupported_content",
                    format!("Content parts of type `{other}` cannot be sent to a Cohere channel."),
                ));
            }
        }
    }
    Ok(UserContent::Parts(out))
}

/// Tools and the tool choice.
fn tools<'a>(request: &RequestBody<'a>) -> Result<(Vec<Tool<'a>>, Option<&'static str>), ApiError> {
    let given: Vec<ChatTool<'a>> = request.member("tools")?.unwrap_or_default();
    let mut tools = Vec::with_capacity(given.len());
    for tool in given {
        if tool.kind.as_deref().is_some_and(|k| k != "function") {
            return Err(invalid("unsupported_tool", "Only `function` tools can be sent to a Cohere channel."));
        }
        let f = tool.function;
        tools.push(Tool {
            kind: "function",
            function: ToolFunction {
                name: f.name,
                description: f.description,
                parameters: f.parameters.filter(|p| p.get() != "null"),
            },
        });
    }
    if tools.is_empty() {
        return Ok((tools, None));
    }
    let choice = match request.get("tool_choice").map(RawValue::get) {
        None | Some("null") | Some("\"auto\"") => None,
        Some("\"none\"") => Some("NONE"),
        Some("\"required\"") => Some("REQUIRED"),
        Some(other) => {
            let named: NamedChoice<'a> = serde_json::from_str(other)
                .map_err(|_| invalid("invalid_tool_choice", "`tool_choice` is not one OpenAI defines."))?;
            tools.retain(|t| t.function.name == named.function.name);
            if tools.is_empty() {
                return Err(invalid("invalid_tool_choice", "`tool_choice` names a function that is not in `tools`."));
            }
            Some("REQUIRED")
        }
    };
    Ok((tools, choice))
}

/// The Cohere `/v2/embed` request for an OpenAI embeddings request, for
/// `model`: the texts as `texts`, `input_type` `search_document` and
/// `embedding_types: ["float"]` (v2 requires both; an OpenAI request names
/// neither), `dimensions` as `output_dimension`. Token-id inputs are refused.
pub(crate) fn embeddings(request: &RequestBody<'_>, model: &str) -> Result<Vec<u8>, ApiError> {
    #[derive(Serialize)]
    struct Embed<'a> {
        model: &'a str,
        texts: Vec<Str<'a>>,
        input_type: &'static str,
        embedding_types: [&'static str; 1],
        #[serde(skip_serializing_if = "Option::is_none")]
        output_dimension: Option<u64>,
    }
    let embed = Embed {
        model,
        texts: crate::providers::gemini::request::embedding_texts(request, "Cohere")?,
        input_type: "search_document",
        embedding_types: ["float"],
        output_dimension: request.member("dimensions")?,
    };
    serde_json::to_vec(&embed).map_err(|e| ApiError::internal(format!("the Cohere request could not be written: {e}")))
}
