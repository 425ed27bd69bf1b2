//! An OpenAI chat completion request as a Gemini `generateContent` request
//! (<https://platform.openai.com/docs/api-reference/chat/create> ->
//! <https://ai.google.dev/api/generate-content#request-body>):
//!
//! - `system` and `developer` messages, wherever they stand, become
//!   `systemInstruction` (Gemini has no system role);
//! - `user` turns stay `user`, `assistant` turns become `model`; `tool`
//!   messages become `functionResponse` parts of the user turn after the
//!   calls (named after the call their `tool_call_id` answers, the content
//!   as `{"result": ...}`); consecutive messages of one role are one turn,
//!   so the responses to parallel calls share a turn;
//! - image parts: a `data:` URL becomes `inlineData`, an `http(s)` URL
//!   `fileData` (its media type guessed from the extension); a PDF `file`
//!   part `inlineData`;
//! - `generationConfig`: `max_completion_tokens` (else `max_tokens`) ->
//!   `maxOutputTokens`, `temperature`, `top_p` -> `topP`, `stop` ->
//!   `stopSequences`, `seed`, `presence_penalty`, `frequency_penalty`,
//!   `response_format` `json_object` -> `responseMimeType:
//!   application/json`, `json_schema` -> that plus `responseJsonSchema`;
//!   `reasoning_effort` -> `thinkingConfig` (a token budget, thoughts
//!   included in the answer; `none` turns thinking off);
//! - `tools` -> one `functionDeclarations` tool (`parameters` as
//!   `parametersJsonSchema`, JSON Schema as OpenAI clients write it),
//!   `tool_choice` -> `toolConfig.functionCallingConfig` (`auto` -> `AUTO`,
//!   `none` -> `NONE`, `required` -> `ANY`, a function -> `ANY` with
//!   `allowedFunctionNames`).
//!
//! `n` above 1 is refused; `user`, `logprobs`, `parallel_tool_calls` and
//! other OpenAI-only members are dropped.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;

use super::wire::SIGNATURE_MARK;
use crate::api::{ApiError, RequestBody};
use crate::providers::anthropic::request::{
    ChatMessage, ChatPart, ChatTool, ImageUrl, NamedChoice, ResponseFormat, Stop, data_url, invalid, slice, texts,
    thinking_budget,
};

type Str<'a> = Cow<'a, str>;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContent<'a> {
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Content<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    generation_config: GenerationConfig<'a>,
}

#[derive(Serialize)]
struct Content<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    parts: Vec<Signed<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Part<'a> {
    Text(Str<'a>),
    InlineData {
        #[serde(rename = "mimeType")]
        mime_type: Str<'a>,
        data: Str<'a>,
    },
    FileData {
        #[serde(rename = "mimeType", skip_serializing_if = "Option::is_none")]
        mime_type: Option<&'static str>,
        #[serde(rename = "fileUri")]
        file_uri: Str<'a>,
    },
    FunctionCall {
        name: Str<'a>,
        args: Box<RawValue>,
    },
    FunctionResponse {
        name: Str<'a>,
        response: FunctionResult,
    },
}

/// A part, with the thought signature Gemini gave it (a function call of a
/// thinking model) beside it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Signed<'a> {
    #[serde(flatten)]
    part: Part<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought_signature: Option<Str<'a>>,
}

#[derive(Serialize)]
struct FunctionResult {
    /// The tool's output: its JSON when it is JSON, else its text.
    result: Box<RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Tool<'a> {
    function_declarations: Vec<FunctionDeclaration<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclaration<'a> {
    name: Str<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Str<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    function_calling_config: FunctionCallingConfig<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig<'a> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_function_names: Vec<Str<'a>>,
}

#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<Str<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
}

impl GenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.max_output_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.stop_sequences.is_none()
            && self.seed.is_none()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
            && self.response_mime_type.is_none()
            && self.thinking_config.is_none()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    thinking_budget: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    include_thoughts: bool,
}

/// The Gemini request for an OpenAI chat `request` (the model goes in the URL).
pub(crate) fn translate(request: &RequestBody<'_>) -> Result<Vec<u8>, ApiError> {
    let messages: Vec<ChatMessage<'_>> =
        request.member("messages")?.ok_or_else(|| invalid("missing_messages", "`messages` is required."))?;
    if request.member::<u64>("n")?.is_some_and(|n| n > 1) {
        return Err(invalid("unsupported_parameter", "`n` above 1 is not supported by Gemini channels."));
    }
    let mut system = Vec::new();
    let mut contents: Vec<Content<'_>> = Vec::with_capacity(messages.len());
    // The name of each call so far, by id: a function response names its function.
    let mut calls: Vec<(Str<'_>, Str<'_>)> = Vec::new();
    for message in messages {
        match message.role.as_ref() {
            "system" | "developer" => {
                system.extend(texts(message.content)?.into_iter().map(|t| unsigned(Part::Text(t))))
            }
            "user" => {
                for part in user_parts(message.content)? {
                    push(&mut contents, "user", unsigned(part));
                }
            }
            "assistant" => {
                let mut parts: Vec<Signed<'_>> =
                    texts(message.content)?.into_iter().map(|t| unsigned(Part::Text(t))).collect();
                for call in message.tool_calls.unwrap_or_default() {
                    let args = crate::providers::anthropic::request::arguments(
                        call.function.arguments.as_deref().unwrap_or_default(),
                    )?;
                    let id = call.id;
                    let signature = id.find(SIGNATURE_MARK).map(|at| slice(&id, at + SIGNATURE_MARK.len()..id.len()));
                    parts.push(Signed {
                        part: Part::FunctionCall { name: call.function.name.clone(), args },
                        thought_signature: signature,
                    });
                    calls.push((id, call.function.name));
                }
                // An empty assistant message still takes its turn.
                if parts.is_empty() {
                    parts.push(unsigned(Part::Text(Cow::Borrowed(""))));
                }
                for part in parts {
                    push(&mut contents, "model", part);
                }
            }
            "tool" => {
                let id = message
                    .tool_call_id
                    .ok_or_else(|| invalid("invalid_messages", "A `tool` message needs its `tool_call_id`."))?;
                let name = calls.iter().rev().find(|(call, _)| *call == id).map(|(_, name)| name.clone()).ok_or_else(
                    || {
                        invalid(
                            "invalid_messages",
                            format!("The `tool` message for `{id}` answers no tool call of an earlier message."),
                        )
                    },
                )?;
                let text = texts(message.content)?.concat();
                let result = match serde_json::from_str::<&RawValue>(&text) {
                    Ok(json) => json.to_owned(),
                    Err(_) => serde_json::value::to_raw_value(&text)
                        .map_err(|e| ApiError::internal(format!("a tool result could not be written: {e}")))?,
                };
                push(
                    &mut contents,
                    "user",
                    unsigned(Part::FunctionResponse { name, response: FunctionResult { result } }),
                );
            }
            other => {
                return Err(invalid(
                    "invalid_messages",
                    format!("Messages with role `{other}` cannot be sent to a Gemini channel."),
                ));
            }
        }
    }
    let (tools, tool_config) = tools(request)?;
    let mut config = GenerationConfig {
        max_output_tokens: match request.member::<u64>("max_completion_tokens")? {
            Some(n) => Some(n),
            None => request.member("max_tokens")?,
        },
        temperature: request.member("temperature")?,
        top_p: request.member("top_p")?,
        stop_sequences: request.member::<Stop<'_>>("stop")?.map(|s| match s {
            Stop::One(one) => vec![one],
            Stop::Many(many) => many,
        }),
        seed: request.member("seed")?,
        presence_penalty: request.member("presence_penalty")?,
        frequency_penalty: request.member("frequency_penalty")?,
        ..GenerationConfig::default()
    };
    if let Some(format) = request.member::<ResponseFormat<'_>>("response_format")? {
        match format.kind.as_ref() {
            "json_object" => config.response_mime_type = Some("application/json"),
            "json_schema" => {
                config.response_mime_type = Some("application/json");
                config.response_json_schema = format.json_schema.and_then(|j| j.schema);
            }
            _ => {}
        }
    }
    if let Some(effort) = request.member::<Str<'_>>("reasoning_effort")? {
        config.thinking_config = match (effort.as_ref(), thinking_budget(&effort)) {
            ("none", _) => Some(ThinkingConfig { thinking_budget: 0, include_thoughts: false }),
            (_, Some(budget)) => Some(ThinkingConfig { thinking_budget: budget, include_thoughts: true }),
            _ => None,
        };
    }
    let out = GenerateContent {
        contents,
        system_instruction: (!system.is_empty()).then_some(Content { role: None, parts: system }),
        tools,
        tool_config,
        generation_config: config,
    };
    serde_json::to_vec(&out).map_err(|e| ApiError::internal(format!("the Gemini request could not be written: {e}")))
}

fn unsigned(part: Part<'_>) -> Signed<'_> {
    Signed { part, thought_signature: None }
}

/// Appends a part to the last turn when it has `role`, else opens a turn.
fn push<'a>(contents: &mut Vec<Content<'a>>, role: &'static str, part: Signed<'a>) {
    match contents.last_mut() {
        Some(last) if last.role == Some(role) => last.parts.push(part),
        _ => contents.push(Content { role: Some(role), parts: vec![part] }),
    }
}

/// A user message's content: text, images and PDF files.
fn user_parts(content: Option<&RawValue>) -> Result<Vec<Part<'_>>, ApiError> {
    let Some(raw) = content.filter(|c| c.get().starts_with('[')) else {
        return Ok(texts(content)?.into_iter().map(Part::Text).collect());
    };
    let parts: Vec<ChatPart<'_>> = serde_json::from_str(raw.get())
        .map_err(|e| invalid("invalid_messages", format!("A message `content` is malformed: {e}")))?;
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        match part.kind.as_ref() {
            "text" => out.extend(part.text.filter(|t| !t.is_empty()).map(Part::Text)),
            "image_url" => {
                let url = match part.image_url {
                    Some(ImageUrl::Object { url } | ImageUrl::Plain(url)) => url,
                    None => return Err(invalid("invalid_messages", "An `image_url` part needs a URL.")),
                };
                out.push(media(url)?);
            }
            "file" => {
                let data = part.file.and_then(|f| f.file_data).ok_or_else(|| {
                    invalid("unsupported_content", "Only `file` parts with `file_data` can go to Gemini channels.")
                })?;
                out.push(media(data)?);
            }
            other => {
                return Err(invalid(
                    "unsupported_content",
                    format!("Content parts of type `{other}` cannot be sent to a Gemini channel."),
                ));
            }
        }
    }
    Ok(out)
}

/// A `data:` URL as inline data, an `http(s)` URL as file data.
fn media(url: Str<'_>) -> Result<Part<'_>, ApiError> {
    if let Some((media_type, data)) = data_url(&url) {
        return Ok(Part::InlineData { mime_type: slice(&url, media_type), data: slice(&url, data) });
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(Part::FileData { mime_type: media_type_of(&url), file_uri: url });
    }
    Err(invalid("invalid_image_url", "An image URL must be a `data:` URL with base64 data or an http(s) URL."))
}

/// The media type a URL's extension names, for the common image and
/// document types (Gemini asks for one with file data).
fn media_type_of(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let extension = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
    Some(match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "pdf" => "application/pdf",
        _ => return None,
    })
}

/// Tools and the tool choice.
fn tools<'a>(request: &RequestBody<'a>) -> Result<(Vec<Tool<'a>>, Option<ToolConfig<'a>>), ApiError> {
    let given: Vec<ChatTool<'a>> = request.member("tools")?.unwrap_or_default();
    let mut declarations = Vec::with_capacity(given.len());
    for tool in given {
        if tool.kind.as_deref().is_some_and(|k| k != "function") {
            return Err(invalid("unsupported_tool", "Only `function` tools can be sent to a Gemini channel."));
        }
        let f = tool.function;
        declarations.push(FunctionDeclaration {
            name: f.name,
            description: f.description,
            parameters_json_schema: f.parameters.filter(|p| p.get() != "null"),
        });
    }
    if declarations.is_empty() {
        return Ok((Vec::new(), None));
    }
    let (mode, allowed) = match request.get("tool_choice").map(RawValue::get) {
        // Gemini's default.
        None | Some("null") | Some("\"auto\"") => {
            return Ok((vec![Tool { function_declarations: declarations }], None));
        }
        Some("\"none\"") => ("NONE", Vec::new()),
        Some("\"required\"") => ("ANY", Vec::new()),
        Some(other) => {
            let named: NamedChoice<'a> = serde_json::from_str(other)
                .map_err(|_| invalid("invalid_tool_choice", "`tool_choice` is not one OpenAI defines."))?;
            ("ANY", vec![named.function.name])
        }
    };
    let config =
        ToolConfig { function_calling_config: FunctionCallingConfig { mode, allowed_function_names: allowed } };
    Ok((vec![Tool { function_declarations: declarations }], Some(config)))
}

/// The Gemini `batchEmbedContents` request for an OpenAI embeddings
/// request, for `model` (`models/...`): one request per input text,
/// `dimensions` as `outputDimensionality`. Token-id inputs are refused:
/// Gemini embeds text.
pub(crate) fn embeddings(request: &RequestBody<'_>, model: &str) -> Result<Vec<u8>, ApiError> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Embed<'a> {
        model: &'a str,
        content: Text<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        output_dimensionality: Option<u64>,
    }
    #[derive(Serialize)]
    struct Text<'a> {
        parts: [TextPart<'a>; 1],
    }
    #[derive(Serialize)]
    struct TextPart<'a> {
        text: Str<'a>,
    }
    #[derive(Serialize)]
    struct Batch<'a> {
        requests: Vec<Embed<'a>>,
    }
    let inputs = embedding_texts(request, "Gemini")?;
    let dimensions = request.member::<u64>("dimensions")?;
    let batch = Batch {
        requests: inputs
            .into_iter()
            .map(|text| Embed {
                model,
                content: Text { parts: [TextPart { text }] },
                output_dimensionality: dimensions,
            })
            .collect(),
    };
    serde_json::to_vec(&batch).map_err(|e| ApiError::internal(format!("the Gemini request could not be written: {e}")))
}

/// The texts of an OpenAI embeddings request's `input` (a string or
/// strings; token ids are refused, for providers that embed text only).
pub(crate) fn embedding_texts<'a>(request: &RequestBody<'a>, provider: &str) -> Result<Vec<Str<'a>>, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Input<'a> {
        One(#[serde(borrow)] Str<'a>),
        Many(#[serde(borrow)] Vec<Str<'a>>),
    }
    match request.get("input").map(|raw| serde_json::from_str::<Input<'a>>(raw.get())) {
        Some(Ok(Input::One(one))) => Ok(vec![one]),
        Some(Ok(Input::Many(many))) if !many.is_empty() => Ok(many),
        Some(_) => Err(invalid(
            "invalid_input",
            format!("`input` must be a string or a non-empty list of strings for {provider} channels."),
        )),
        None => Err(invalid("missing_input", "`input` is required.")),
    }
}
