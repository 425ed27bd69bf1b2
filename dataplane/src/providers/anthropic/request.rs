//! An OpenAI chat completion request as an Anthropic Messages request
//! (<https://platform.openai.com/docs/api-reference/chat/create> ->
//! <https://docs.anthropic.com/en/api/messages>):
//!
//! - `system` and `developer` messages, wherever they stand, become the
//!   top-level `system` text blocks (Messages have no system role);
//! - `user`, `assistant` and `tool` messages become `user`/`assistant` turns
//!   of content blocks; consecutive messages of one role are merged into one
//!   turn, so the `tool_result` blocks of parallel calls share the user turn
//!   that follows the assistant's `tool_use` blocks, ids kept;
//! - image parts: a `data:` URL becomes a base64 source, an `http(s)` URL a
//!   url source; a PDF `file` part becomes a base64 document;
//! - `max_completion_tokens`, else `max_tokens`, else [`DEFAULT_MAX_TOKENS`]
//!   (Messages require it); `temperature` (capped at Anthropic's maximum,
//!   1.0), `top_p`, `stop` -> `stop_sequences`, `user` -> `metadata.user_id`;
//! - `tools` -> `{name, description, input_schema}`, `tool_choice` `auto` /
//!   `none` / `required` (-> `any`) / a named function (-> `tool`),
//!   `parallel_tool_calls: false` -> `disable_parallel_tool_use`;
//! - `reasoning_effort` -> `thinking` with a token budget ([`thinking_budget`]);
//!   `response_format` `json_schema` -> `output_config.format`.
//!
//! What has no Anthropic equivalent is left out: `n` above 1 and audio are
//! refused, `seed`, `logprobs`, `json_object` mode and OpenAI-only members are
//! dropped.

use std::borrow::Cow;
use std::ops::Range;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::{ApiError, RequestBody};

/// `max_tokens` sent when the client gives no output limit (Anthropic
/// requires one; OpenAI's default is the model's maximum). 4,096 is the
/// largest output every current Claude model accepts.
pub(crate) const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Anthropic's smallest thinking budget (`budget_tokens` must be at least
/// 1,024 and below `max_tokens`: `ThinkingConfigEnabledParam` in the official SDK).
const MIN_THINKING_BUDGET: u64 = 1024;

/// Anthropic's largest `temperature` (OpenAI's is 2.0).
const MAX_TEMPERATURE: f64 = 1.0;

type Str<'a> = Cow<'a, str>;

/// Thinking tokens for an OpenAI `reasoning_effort` (`none`: no thinking).
/// OpenAI gives no token figures; these double per step from Anthropic's
/// minimum.
pub(crate) fn thinking_budget(effort: &str) -> Option<u64> {
    match effort {
        "minimal" | "low" => Some(MIN_THINKING_BUDGET),
        "medium" => Some(4 * MIN_THINKING_BUDGET),
        "high" => Some(16 * MIN_THINKING_BUDGET),
        "xhigh" | "max" => Some(32 * MIN_THINKING_BUDGET),
        _ => None,
    }
}

// ------------------------------------------------------------ OpenAI, read
// (shared with the other translators from chat completions)

#[derive(Deserialize)]
pub(crate) struct ChatMessage<'a> {
    #[serde(borrow)]
    pub(crate) role: Str<'a>,
    #[serde(default, borrow)]
    pub(crate) content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub(crate) tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(default, borrow)]
    pub(crate) tool_call_id: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ChatPart<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) kind: Str<'a>,
    #[serde(default, borrow)]
    pub(crate) text: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub(crate) refusal: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub(crate) image_url: Option<ImageUrl<'a>>,
    #[serde(default, borrow)]
    pub(crate) file: Option<FilePart<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum ImageUrl<'a> {
    Object {
        #[serde(borrow)]
        url: Str<'a>,
    },
    Plain(#[serde(borrow)] Str<'a>),
}

#[derive(Deserialize)]
pub(crate) struct FilePart<'a> {
    #[serde(default, borrow)]
    pub(crate) file_data: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ToolCall<'a> {
    #[serde(borrow)]
    pub(crate) id: Str<'a>,
    #[serde(borrow)]
    pub(crate) function: Function<'a>,
}

#[derive(Deserialize)]
pub(crate) struct Function<'a> {
    #[serde(borrow)]
    pub(crate) name: Str<'a>,
    #[serde(default, borrow)]
    pub(crate) arguments: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ChatTool<'a> {
    #[serde(default, rename = "type", borrow)]
    pub(crate) kind: Option<Str<'a>>,
    #[serde(borrow)]
    pub(crate) function: FunctionDefinition<'a>,
}

#[derive(Deserialize)]
pub(crate) struct FunctionDefinition<'a> {
    #[serde(borrow)]
    pub(crate) name: Str<'a>,
    #[serde(default, borrow)]
    pub(crate) description: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub(crate) parameters: Option<&'a RawValue>,
    #[serde(default)]
    pub(crate) strict: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop<'a> {
    One(#[serde(borrow)] Str<'a>),
    Many(#[serde(borrow)] Vec<Str<'a>>),
}

#[derive(Deserialize)]
pub(crate) struct NamedChoice<'a> {
    #[serde(borrow)]
    pub(crate) function: NamedFunction<'a>,
}

#[derive(Deserialize)]
pub(crate) struct NamedFunction<'a> {
    #[serde(borrow)]
    pub(crate) name: Str<'a>,
}

#[derive(Deserialize)]
pub(crate) struct ResponseFormat<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) kind: Str<'a>,
    #[serde(default, borrow)]
    pub(crate) json_schema: Option<JsonSchemaFormat<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct JsonSchemaFormat<'a> {
    #[serde(default, borrow)]
    pub(crate) schema: Option<&'a RawValue>,
}

// -------------------------------------------------------- Anthropic, written

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Block<'a>>,
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<Str<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Thinking<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<OutputConfig<'a>>,
}

#[derive(Serialize)]
struct Turn<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: Str<'a>,
    },
    Image {
        source: Source<'a>,
    },
    Document {
        source: Source<'a>,
    },
    ToolUse {
        id: Str<'a>,
        name: Str<'a>,
        input: Box<RawValue>,
    },
    ToolResult {
        tool_use_id: Str<'a>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        content: Vec<Block<'a>>,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Source<'a> {
    Base64 { media_type: Str<'a>, data: Str<'a> },
    Url { url: Str<'a> },
}

#[derive(Serialize)]
struct Metadata<'a> {
    user_id: Str<'a>,
}

#[derive(Serialize)]
struct Tool<'a> {
    name: Str<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Str<'a>>,
    input_schema: Schema<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToolChoice<'a> {
    Auto {
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        disable_parallel_tool_use: bool,
    },
    Any {
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        disable_parallel_tool_use: bool,
    },
    Tool {
        name: Str<'a>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        disable_parallel_tool_use: bool,
    },
    None,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Thinking<'a> {
    Enabled {
        #[serde(rename = "type")]
        kind: &'static str,
        budget_tokens: u64,
    },
    /// An Anthropic `thinking` object the client sent itself, kept as sent.
    Verbatim(&'a RawValue),
}

#[derive(Serialize)]
struct OutputConfig<'a> {
    format: OutputFormat<'a>,
}

#[derive(Serialize)]
struct OutputFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    schema: &'a RawValue,
}

/// A tool's `input_schema`: the client's `parameters`, or (Anthropic
/// requires one, OpenAI does not) an object schema that accepts anything.
#[derive(Serialize)]
#[serde(untagged)]
enum Schema<'a> {
    Given(&'a RawValue),
    AnyObject {
        #[serde(rename = "type")]
        kind: &'static str,
        properties: Empty,
    },
}

#[derive(Serialize)]
struct Empty {}

pub(crate) fn invalid(code: &'static str, message: impl Into<Cow<'static, str>>) -> ApiError {
    ApiError::bad_request(code, message)
}

/// The Anthropic request for an OpenAI chat `request`, for `model` upstream.
pub(crate) fn translate(request: &RequestBody<'_>, model: &str, stream: bool) -> Result<Vec<u8>, ApiError> {
    let messages: Vec<ChatMessage<'_>> =
        request.member("messages")?.ok_or_else(|| invalid("missing_messages", "`messages` is required."))?;
    if request.member::<u64>("n")?.is_some_and(|n| n > 1) {
        return Err(invalid("unsupported_parameter", "`n` above 1 is not supported by Anthropic channels."));
    }
    let mut out = MessagesRequest {
        model,
        max_tokens: DEFAULT_MAX_TOKENS,
        system: Vec::new(),
        messages: Vec::with_capacity(messages.len()),
        stop_sequences: None,
        temperature: request.member::<f64>("temperature")?.map(|t| t.clamp(0.0, MAX_TEMPERATURE)),
        top_p: request.member("top_p")?,
        metadata: request.member::<Str<'_>>("user")?.map(|user_id| Metadata { user_id }),
        stream,
        tools: Vec::new(),
        tool_choice: None,
        thinking: None,
        output_config: None,
    };
    let client_limit = match request.member::<u64>("max_completion_tokens")? {
        Some(n) => Some(n),
        None => request.member("max_tokens")?,
    };
    out.stop_sequences = request.member::<Stop<'_>>("stop")?.map(|s| match s {
        Stop::One(one) => vec![one],
        Stop::Many(many) => many,
    });
    let mut last_assistant_calls = false;
    for message in messages {
        if let Some(called) = turn(&mut out, message)? {
            last_assistant_calls = called;
        }
    }
    (out.tools, out.tool_choice) = tools(request)?;
    out.max_tokens = client_limit.unwrap_or(DEFAULT_MAX_TOKENS);
    if let Some(thinking) = request.get("thinking").filter(|t| t.get() != "null") {
        out.thinking = Some(Thinking::Verbatim(thinking));
    } else if let Some(budget) = request.member::<Str<'_>>("reasoning_effort")?.and_then(|e| thinking_budget(&e))
        // A turn that continues after tool calls needs the thinking block
        // (with its signature) that preceded them, which OpenAI clients
        // cannot send back: such a turn goes without thinking.
        && !last_assistant_calls
    {
        // OpenAI's output limit includes reasoning tokens, as Anthropic's
        // includes thinking: the budget fits under the client's limit, or
        // is added to the default when the client set none.
        let budget = match client_limit {
            Some(limit) => budget.min(limit.saturating_sub(1)),
            None => {
                out.max_tokens = DEFAULT_MAX_TOKENS + budget;
                budget
            }
        };
        if budget >= MIN_THINKING_BUDGET {
            out.thinking = Some(Thinking::Enabled { kind: "enabled", budget_tokens: budget });
        }
    }
    if let Some(format) = request.member::<ResponseFormat<'_>>("response_format")?
        && format.kind == "json_schema"
        && let Some(schema) = format.json_schema.and_then(|j| j.schema)
    {
        out.output_config = Some(OutputConfig { format: OutputFormat { kind: "json_schema", schema } });
    }
    serde_json::to_vec(&out).map_err(|e| ApiError::internal(format!("the Anthropic request could not be written: {e}")))
}

/// Adds one OpenAI message; for an assistant message, says whether it
/// called tools.
fn turn<'a>(out: &mut MessagesRequest<'a>, message: ChatMessage<'a>) -> Result<Option<bool>, ApiError> {
    let role = match message.role.as_ref() {
        "system" | "developer" => {
            out.system.extend(text_blocks(message.content)?);
            return Ok(None);
        }
        "user" => "user",
        "assistant" => "assistant",
        "tool" => {
            let id = message
                .tool_call_id
                .ok_or_else(|| invalid("invalid_messages", "A `tool` message needs its `tool_call_id`."))?;
            let content = text_blocks(message.content)?;
            push(out, "user", Block::ToolResult { tool_use_id: id, content });
            return Ok(None);
        }
        other => {
            return Err(invalid(
                "invalid_messages",
                format!("Messages with role `{other}` cannot be sent to an Anthropic channel."),
            ));
        }
    };
    let blocks = if role == "user" { user_blocks(message.content)? } else { text_blocks(message.content)? };
    for block in blocks {
        push(out, role, block);
    }
    let calls = message.tool_calls.unwrap_or_default();
    let called = !calls.is_empty();
    for call in calls {
        let input = arguments(call.function.arguments.as_deref().unwrap_or_default())?;
        push(out, "assistant", Block::ToolUse { id: call.id, name: call.function.name, input });
    }
    if role == "assistant" && !called && out.messages.last().is_none_or(|t| t.role != "assistant") {
        // An empty assistant message is still a turn.
        out.messages.push(Turn { role, content: Vec::new() });
    }
    Ok((role == "assistant").then_some(called))
}

/// Appends a block to the last turn when it has `role`, else opens a turn.
fn push<'a>(out: &mut MessagesRequest<'a>, role: &'static str, block: Block<'a>) {
    match out.messages.last_mut() {
        Some(last) if last.role == role => last.content.push(block),
        _ => out.messages.push(Turn { role, content: vec![block] }),
    }
}

/// Tool call arguments (a JSON string) as the `input` object.
pub(crate) fn arguments(text: &str) -> Result<Box<RawValue>, ApiError> {
    let text = text.trim();
    let text = if text.is_empty() { "{}" } else { text };
    match RawValue::from_string(text.to_owned()) {
        Ok(raw) if raw.get().starts_with('{') => Ok(raw),
        _ => Err(invalid("invalid_tool_arguments", "Tool call `arguments` must be a JSON object.")),
    }
}

/// The text of a string or of text (and refusal) parts, as text blocks;
/// empty texts are left out (Anthropic refuses empty text blocks).
fn text_blocks<'a>(content: Option<&'a RawValue>) -> Result<Vec<Block<'a>>, ApiError> {
    Ok(texts(content)?.into_iter().map(|text| Block::Text { text }).collect())
}

/// The non-empty texts of a string or of text (and refusal) parts.
pub(crate) fn texts<'a>(content: Option<&'a RawValue>) -> Result<Vec<Str<'a>>, ApiError> {
    let Some(raw) = content.filter(|c| c.get() != "null") else { return Ok(Vec::new()) };
    if raw.get().starts_with('"') {
        let text: Str<'a> = serde_json::from_str(raw.get())
            .map_err(|e| invalid("invalid_messages", format!("A message `content` is malformed: {e}")))?;
        return Ok(if text.is_empty() { Vec::new() } else { vec![text] });
    }
    let parts: Vec<ChatPart<'a>> = serde_json::from_str(raw.get())
        .map_err(|e| invalid("invalid_messages", format!("A message `content` is malformed: {e}")))?;
    Ok(parts.into_iter().filter_map(|p| p.text.or(p.refusal)).filter(|t| !t.is_empty()).collect())
}

/// A user message's content: text, images and PDF files.
fn user_blocks<'a>(content: Option<&'a RawValue>) -> Result<Vec<Block<'a>>, ApiError> {
    let Some(raw) = content.filter(|c| c.get().starts_with('[')) else { return text_blocks(content) };
    let parts: Vec<ChatPart<'a>> = serde_json::from_str(raw.get())
        .map_err(|e| invalid("invalid_messages", format!("A message `content` is malformed: {e}")))?;
    let mut blocks = Vec::with_capacity(parts.len());
    for part in parts {
        match part.kind.as_ref() {
            "text" => {
                if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                    blocks.push(Block::Text { text });
                }
            }
            "image_url" => {
                let url =
                    part.image_url.ok_or_else(|| invalid("invalid_messages", "An `image_url` part needs a URL."))?;
                blocks.push(Block::Image { source: image_source(url)? });
            }
            "file" => {
                let data = part.file.and_then(|f| f.file_data).ok_or_else(|| {
                    invalid("unsupported_content", "Only `file` parts with `file_data` can go to Anthropic channels.")
                })?;
                blocks.push(Block::Document { source: document_source(data)? });
            }
            other => {
                return Err(invalid(
                    "unsupported_content",
                    format!("Content parts of type `{other}` cannot be sent to an Anthropic channel."),
                ));
            }
        }
    }
    Ok(blocks)
}

/// Where the bytes of an image part live.
fn image_source(url: ImageUrl<'_>) -> Result<Source<'_>, ApiError> {
    let url = match url {
        ImageUrl::Object { url } | ImageUrl::Plain(url) => url,
    };
    if let Some((media_type, data)) = data_url(&url) {
        return Ok(Source::Base64 { media_type: slice(&url, media_type), data: slice(&url, data) });
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(Source::Url { url });
    }
    Err(invalid("invalid_image_url", "An image URL must be a `data:` URL with base64 data or an http(s) URL."))
}

fn document_source(file_data: Str<'_>) -> Result<Source<'_>, ApiError> {
    match data_url(&file_data) {
        Some((media_type, data)) if &file_data[media_type.clone()] == "application/pdf" => {
            Ok(Source::Base64 { media_type: Cow::Borrowed("application/pdf"), data: slice(&file_data, data) })
        }
        _ => Err(invalid(
            "unsupported_content",
            "Only PDF files (`file_data` as a `data:application/pdf;base64,` URL) can go to Anthropic channels.",
        )),
    }
}

/// `data:<media type>;base64,<data>`: where the media type and the data
/// are; `None` for anything else.
pub(crate) fn data_url(url: &str) -> Option<(Range<usize>, Range<usize>)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    // Only a cheap look at the first bytes: Anthropic validates the data.
    base64::engine::general_purpose::STANDARD.decode(data.get(..data.len().min(8) & !3)?).ok()?;
    let start = "data:".len();
    let data_start = start + meta.len() + 1;
    Some((start..start + media_type.len(), data_start..url.len()))
}

/// A piece of a string that may borrow from the client's body.
pub(crate) fn slice<'a>(text: &Str<'a>, range: Range<usize>) -> Str<'a> {
    match text {
        Cow::Borrowed(whole) => Cow::Borrowed(&whole[range]),
        Cow::Owned(whole) => Cow::Owned(whole[range].to_owned()),
    }
}

/// Tools and the tool choice.
fn tools<'a>(request: &RequestBody<'a>) -> Result<(Vec<Tool<'a>>, Option<ToolChoice<'a>>), ApiError> {
    let given: Vec<ChatTool<'a>> = request.member("tools")?.unwrap_or_default();
    let mut tools = Vec::with_capacity(given.len());
    for tool in given {
        if tool.kind.as_deref().is_some_and(|k| k != "function") {
            return Err(invalid("unsupported_tool", "Only `function` tools can be sent to an Anthropic channel."));
        }
        let f = tool.function;
        let input_schema = match f.parameters.filter(|p| p.get() != "null") {
            Some(given) => Schema::Given(given),
            None => Schema::AnyObject { kind: "object", properties: Empty {} },
        };
        tools.push(Tool { name: f.name, description: f.description, input_schema, strict: f.strict.filter(|s| *s) });
    }
    if tools.is_empty() {
        return Ok((tools, None));
    }
    let serial = request.member::<bool>("parallel_tool_calls")? == Some(false);
    let choice = match request.get("tool_choice").map(RawValue::get) {
        None | Some("null") | Some("\"auto\"") => ToolChoice::Auto { disable_parallel_tool_use: serial },
        Some("\"none\"") => ToolChoice::None,
        Some("\"required\"") => ToolChoice::Any { disable_parallel_tool_use: serial },
        Some(other) => {
            let named: NamedChoice<'a> = serde_json::from_str(other)
                .map_err(|_| invalid("invalid_tool_choice", "`tool_choice` is not one OpenAI defines."))?;
            ToolChoice::Tool { name: named.function.name, disable_parallel_tool_use: serial }
        }
    };
    // Anthropic's default is `auto` with parallel calls: say it only when it differs.
    let differs = !matches!(choice, ToolChoice::Auto { disable_parallel_tool_use: false });
    Ok((tools, differs.then_some(choice)))
}
