//! A stateless Responses API request as an OpenAI chat completion request
//! (<https://platform.openai.com/docs/api-reference/responses/create> ->
//! <https://platform.openai.com/docs/api-reference/chat/create>):
//!
//! - `instructions` becomes the first, `system`, message;
//! - `input` as a string is one user message; as items: messages (with or
//!   without `type: "message"`) keep their role, `input_text` /
//!   `output_text` / `refusal` parts become text, `input_image` an
//!   `image_url` part (detail kept), `input_file` with `file_data` a `file`
//!   part; `function_call` items become the assistant's `tool_calls`
//!   (merged into the assistant message before them, ids kept), and
//!   `function_call_output` items `tool` messages; `reasoning` items are
//!   left out (their encrypted content only means something to OpenAI);
//! - `tools` (function tools) -> chat function tools, `tool_choice`
//!   `auto`/`none`/`required`/`{type: function, name}` as they are,
//!   `parallel_tool_calls`, `max_output_tokens` -> `max_completion_tokens`
//!   (OpenAI, Azure) or `max_tokens` (the rest), `temperature`, `top_p`,
//!   `user`, `reasoning.effort` -> `reasoning_effort`, `text.format`
//!   `json_schema` / `json_object` -> `response_format`;
//! - a stream asks for `stream_options.include_usage`, so
//!   `response.completed` can carry usage.
//!
//! What needs state kept by OpenAI is refused with a 400 that says so
//! ([`stateless`]): `previous_response_id`, `conversation`, `store: true`,
//! `background`, stored prompts, `item_reference` items and `file_id`s;
//! so are built-in tools (web search, file search, computer use...), which
//! only OpenAI runs. An unset `store` is taken as `false` here: see
//! [`stateless`].

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::{ApiError, RequestBody};
use crate::providers::messages::request::{
    ChatMessage, ChatRequest, ChatTool, ChatToolChoice, Content, File, Function, FunctionDefinition, JsonSchema,
    LimitMember, Named, Part, ResponseFormat, Str, StreamOptions, Target, ToolCall, Url, message,
};

// ------------------------------------------------------------ Responses, read

/// One `input` item. Items are told apart by `type`; an easy input message
/// may leave it out.
#[derive(Deserialize)]
struct ItemView<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    role: Option<Str<'a>>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    call_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    arguments: Option<Str<'a>>,
    #[serde(default, borrow)]
    output: Option<&'a RawValue>,
}

/// One content part of an input message (or of a function call's output).
#[derive(Deserialize)]
struct PartView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    #[serde(default, borrow)]
    refusal: Option<Str<'a>>,
    #[serde(default, borrow)]
    image_url: Option<Str<'a>>,
    #[serde(default, borrow)]
    detail: Option<Str<'a>>,
    #[serde(default, borrow)]
    file_data: Option<Str<'a>>,
    #[serde(default, borrow)]
    filename: Option<Str<'a>>,
    #[serde(default, borrow)]
    file_id: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ToolView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    description: Option<Str<'a>>,
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ToolChoiceView<'a> {
    Mode(#[serde(borrow)] Str<'a>),
    Object {
        #[serde(rename = "type", borrow)]
        kind: Str<'a>,
        #[serde(default, borrow)]
        name: Option<Str<'a>>,
    },
}

#[derive(Deserialize)]
struct ReasoningView<'a> {
    #[serde(default, borrow)]
    effort: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct TextView<'a> {
    #[serde(default, borrow)]
    format: Option<FormatView<'a>>,
}

#[derive(Deserialize)]
struct FormatView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    description: Option<Str<'a>>,
    #[serde(default, borrow)]
    schema: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
}

fn invalid(code: &'static str, message: impl Into<Cow<'static, str>>) -> ApiError {
    ApiError::bad_request(code, message)
}

/// The 400 for a request that needs what only OpenAI keeps.
fn needs_state(what: &str) -> ApiError {
    invalid(
        "stateful_request_unsupported",
        format!(
            "{what} needs state that only OpenAI and Azure OpenAI channels keep; this model's channel serves stateless \
             requests only: send the whole conversation in `input` and set `store: false`."
        ),
    )
}

/// Refuses what a channel without OpenAI's stored state cannot serve:
/// `previous_response_id`, `conversation`, `store: true`, `background`
/// and stored prompts.
///
/// `store` is unset in most requests and OpenAI then stores the response.
/// Here unset counts as `false`: the answer is complete without storing it,
/// clients that chain turns by id (`previous_response_id`) are refused
/// clearly when they try, and clients that carry the conversation
/// themselves (the Codex CLI sends `store: false`; the SDKs' defaults send
/// nothing) would otherwise be refused for a flag they never set. The
/// answer says `"store": false`, so a client can see nothing was kept.
pub(crate) fn stateless(request: &RequestBody<'_>) -> Result<(), ApiError> {
    if request.member::<Str<'_>>("previous_response_id")?.is_some() {
        return Err(needs_state("`previous_response_id`"));
    }
    if request.get("conversation").is_some_and(|c| c.get() != "null") {
        return Err(needs_state("`conversation`"));
    }
    if request.member::<bool>("store")? == Some(true) {
        return Err(needs_state("`store: true`"));
    }
    if request.member::<bool>("background")? == Some(true) {
        return Err(needs_state("`background: true`"));
    }
    if request.get("prompt").is_some_and(|p| p.get() != "null") {
        return Err(needs_state("A stored `prompt`"));
    }
    Ok(())
}

/// The OpenAI chat request for a Responses `request`.
pub(crate) fn translate(request: &RequestBody<'_>, target: &Target<'_>) -> Result<Vec<u8>, ApiError> {
    stateless(request)?;
    let input = request.get("input").filter(|i| i.get() != "null");
    let mut out = ChatRequest {
        model: target.model,
        messages: Vec::new(),
        max_completion_tokens: None,
        max_tokens: None,
        stop: None,
        temperature: request.member("temperature")?,
        top_p: request.member("top_p")?,
        user: request.member("user")?,
        stream: target.stream,
        stream_options: (target.stream && target.include_usage).then_some(StreamOptions { include_usage: true }),
        tools: Vec::new(),
        tool_choice: None,
        parallel_tool_calls: request.member("parallel_tool_calls")?,
        response_format: None,
        reasoning_effort: request.member::<ReasoningView<'_>>("reasoning")?.and_then(|r| r.effort),
    };
    let limit = request.member::<u64>("max_output_tokens")?;
    match target.limit {
        LimitMember::MaxCompletionTokens => out.max_completion_tokens = limit,
        LimitMember::MaxTokens => out.max_tokens = limit,
    }
    if let Some(instructions) = request.member::<Str<'_>>("instructions")?.filter(|i| !i.is_empty()) {
        out.messages.push(ChatMessage { role: "system", content: Some(Content::Text(instructions)), ..message() });
    }
    match input {
        None => return Err(invalid("missing_input", "`input` is required.")),
        Some(raw) if raw.get().starts_with('"') => {
            let text: Str<'_> = request.member("input")?.unwrap_or_default();
            out.messages.push(ChatMessage { role: "user", content: Some(Content::Text(text)), ..message() });
        }
        Some(_) => {
            let items: Vec<ItemView<'_>> = request.member("input")?.unwrap_or_default();
            for item in items {
                push_item(&mut out.messages, item)?;
            }
        }
    }
    for tool in request.member::<Vec<ToolView<'_>>>("tools")?.unwrap_or_default() {
        if tool.kind != "function" {
            return Err(invalid(
                "unsupported_tool",
                format!(
                    "The built-in tool `{}` runs only on OpenAI and Azure OpenAI channels; this model's channel takes \
                     function tools only.",
                    tool.kind
                ),
            ));
        }
        let name = tool.name.ok_or_else(|| invalid("invalid_tools", "A function tool needs its `name`."))?;
        out.tools.push(ChatTool {
            kind: "function",
            function: FunctionDefinition {
                name,
                description: tool.description,
                parameters: tool.parameters,
                strict: tool.strict.filter(|s| *s),
            },
        });
    }
    out.tool_choice = match request.member::<ToolChoiceView<'_>>("tool_choice")? {
        None => None,
        Some(ToolChoiceView::Mode(mode)) => Some(ChatToolChoice::Mode(match mode.as_ref() {
            "none" => "none",
            "required" => "required",
            "auto" => "auto",
            other => return Err(invalid("invalid_tool_choice", format!("Unknown `tool_choice` `{other}`."))),
        })),
        Some(ToolChoiceView::Object { kind, name }) if kind == "function" => Some(ChatToolChoice::Named {
            kind: "function",
            function: Named {
                name: name.ok_or_else(|| invalid("invalid_tool_choice", "`tool_choice.name` is required."))?,
            },
        }),
        Some(ToolChoiceView::Object { kind, .. }) => {
            return Err(invalid(
                "unsupported_tool_choice",
                format!("`tool_choice` of type `{kind}` runs only on OpenAI and Azure OpenAI channels."),
            ));
        }
    };
    if let Some(format) = request.member::<TextView<'_>>("text")?.and_then(|t| t.format) {
        out.response_format = match format.kind.as_ref() {
            "json_schema" => Some(ResponseFormat {
                kind: "json_schema",
                json_schema: Some(JsonSchema {
                    name: format.name.unwrap_or(Cow::Borrowed("output")),
                    description: format.description,
                    schema: format
                        .schema
                        .ok_or_else(|| invalid("invalid_text_format", "`text.format.schema` is required."))?,
                    strict: format.strict.unwrap_or(false),
                }),
            }),
            "json_object" => Some(ResponseFormat { kind: "json_object", json_schema: None }),
            _ => None,
        };
    }
    serde_json::to_vec(&out).map_err(|e| ApiError::internal(format!("the chat request could not be written: {e}")))
}

/// One `input` item as chat messages.
fn push_item<'a>(messages: &mut Vec<ChatMessage<'a>>, item: ItemView<'a>) -> Result<(), ApiError> {
    match item.kind.as_deref().unwrap_or("message") {
        "message" => {
            let role = match item.role.as_deref() {
                Some("user") => "user",
                Some("assistant") => "assistant",
                Some("system") => "system",
                Some("developer") => "developer",
                other => {
                    return Err(invalid(
                        "invalid_input",
                        format!(
                            "Input message roles are `user`, `assistant`, `system` and `developer`, not {other:?}."
                        ),
                    ));
                }
            };
            let content = item.content.ok_or_else(|| invalid("invalid_input", "An input message needs `content`."))?;
            let content = contents(content, role == "user")?;
            messages.push(ChatMessage { role, content: Some(content), ..message() });
        }
        "function_call" => {
            let call = ToolCall {
                id: item.call_id.ok_or_else(|| invalid("invalid_input", "A `function_call` needs its `call_id`."))?,
                kind: "function",
                function: Function {
                    name: item.name.unwrap_or_default(),
                    arguments: item.arguments.unwrap_or(Cow::Borrowed("{}")),
                },
            };
            // Calls of one turn go on the assistant message before them.
            match messages.last_mut() {
                Some(last) if last.role == "assistant" => last.tool_calls.push(call),
                _ => messages.push(ChatMessage { role: "assistant", tool_calls: vec![call], ..message() }),
            }
        }
        "function_call_output" => {
            let id = item
                .call_id
                .ok_or_else(|| invalid("invalid_input", "A `function_call_output` needs its `call_id`."))?;
            let output = match item.output {
                Some(raw) => text_of(contents(raw, false)?),
                None => Cow::Borrowed(""),
            };
            messages.push(ChatMessage {
                role: "tool",
                content: Some(Content::Text(output)),
                tool_call_id: Some(id),
                ..message()
            });
        }
        // Reasoning a model did before: only OpenAI can read it back.
        "reasoning" => {}
        "item_reference" => return Err(needs_state("An `item_reference` input item")),
        other => {
            return Err(invalid(
                "unsupported_input",
                format!("Input items of type `{other}` can only go to OpenAI and Azure OpenAI channels."),
            ));
        }
    }
    Ok(())
}

/// A message's `content` (a string or parts) as chat content; parts other
/// than text are kept only where chat takes them (`parts` true: user turns).
fn contents(raw: &RawValue, parts: bool) -> Result<Content<'_>, ApiError> {
    let malformed = |e: serde_json::Error| invalid("invalid_input", format!("An input `content` is malformed: {e}"));
    if raw.get().starts_with('"') {
        return serde_json::from_str::<Str<'_>>(raw.get()).map(Content::Text).map_err(malformed);
    }
    let views: Vec<PartView<'_>> = serde_json::from_str(raw.get()).map_err(malformed)?;
    let mut out = Vec::with_capacity(views.len());
    for part in views {
        match part.kind.as_ref() {
            "input_text" | "output_text" | "text" | "summary_text" | "reasoning_text" => {
                out.push(Part::Text { text: part.text.unwrap_or_default() });
            }
            "refusal" => out.push(Part::Text { text: part.refusal.or(part.text).unwrap_or_default() }),
            "input_image" if parts => match (part.image_url, part.file_id) {
                (Some(url), _) => out.push(Part::ImageUrl { image_url: Url { url, detail: part.detail } }),
                (None, _) => return Err(needs_state("An image by `file_id`")),
            },
            "input_file" if parts => match (part.file_data, part.file_id) {
                (Some(data), _) => out.push(Part::File {
                    file: File { filename: part.filename.unwrap_or(Cow::Borrowed("file")), file_data: data },
                }),
                (None, _) => return Err(needs_state("A file by `file_id` or `file_url`")),
            },
            other => {
                return Err(invalid(
                    "unsupported_content",
                    format!("Content parts of type `{other}` cannot go to this model's channel here."),
                ));
            }
        }
    }
    if !parts || matches!(out.as_slice(), [Part::Text { .. }]) {
        Ok(Content::Text(text_of(Content::Parts(out))))
    } else {
        Ok(Content::Parts(out))
    }
}

/// The text of content, parts joined.
fn text_of(content: Content<'_>) -> Str<'_> {
    match content {
        Content::Text(text) => text,
        Content::Parts(parts) => {
            let mut texts = parts.into_iter().filter_map(|p| match p {
                Part::Text { text } => Some(text),
                _ => None,
            });
            let Some(first) = texts.next() else { return Cow::Borrowed("") };
            texts.fold(first, |all, next| Cow::Owned(all.into_owned() + &next))
        }
    }
}
