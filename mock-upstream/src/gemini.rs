//! Google's Gemini API (`POST /v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse`, `:batchEmbedContents`, `:embedContent`),
//! written from its public reference (<https://ai.google.dev/api/generate-content>,
//! <https://ai.google.dev/api/embeddings>, <https://ai.google.dev/gemini-api/docs/function-calling>,
//! <https://ai.google.dev/gemini-api/docs/thought-signatures>) and sharing
//! nothing with the gateway.
//!
//! Requests are checked as strictly as Google checks them: the key in
//! `x-goog-api-key` (or `?key=`), no member the API does not define
//! ("Invalid JSON payload received. Unknown name"), roles `user` and `model`
//! only, one kind of data per part, function responses only for the calls
//! of the model turn before (as many as there were calls), and — as
//! Gemini 3 thinking models do — the first function call of a model turn
//! replayed with the `thoughtSignature` it was given.
//!
//! The answer quotes the last user text, like the OpenAI side; with
//! function declarations and no function response yet it calls the first
//! one (arguments made from its schema, the first call signed); after
//! function responses it says what they said. Streams send one word per
//! event, calls whole, `usageMetadata` on every event (the counts so far)
//! and the finish reason on the last word. Magic words anywhere in the
//! prompt ask for the rest:
//!
//! | word | effect |
//! |---|---|
//! | `mock:parallel` | two function calls in one turn |
//! | `mock:cache` | usage reports 11 cached-content tokens |
//! | `mock:usage-late` | no `usageMetadata` but on one last event after the finish reason |
//! | `mock:safety` | `finishReason: SAFETY` and no content |
//! | `mock:error-mid-stream` | an `UNAVAILABLE` error event after the first word, then the end |
//! | `mock:error-200` | a 200 whose body is a `RESOURCE_EXHAUSTED` error (JSON, also for streams) |
//!
//! With `thinkingConfig.includeThoughts` the answer starts with a thought
//! part, and its tokens are reported as `thoughtsTokenCount`.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::chat::{estimate_tokens, example};

/// Cached-content tokens reported under `mock:cache`.
pub const CACHED_TOKENS: u64 = 11;

/// The signature the mock gives the first function call of a turn.
pub const THOUGHT_SIGNATURE: &str = "c2lnbmF0dXJlLW1vY2s=";

/// Top-level members of a `GenerateContentRequest` (the model is in the URL).
const MEMBERS: &[&str] =
    &["contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings", "cachedContent"];

/// Members of `generationConfig`.
const GENERATION_MEMBERS: &[&str] = &[
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "stopSequences",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "thinkingConfig",
    "candidateCount",
    "responseModalities",
    "responseLogprobs",
    "logprobs",
];

/// Google's error object: `{"error":{"code","message","status"}}`.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": status_name(status)}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The `google.rpc.Code` name Google gives an HTTP status.
pub(crate) fn status_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// Why a request is refused, until it becomes the response.
pub(crate) struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    pub(crate) fn response(&self) -> Response {
        error_response(self.status, &self.message)
    }
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal { status: StatusCode::BAD_REQUEST, message: message.into() }
}

fn unknown_name(at: &str, name: &str) -> Refusal {
    invalid(format!("Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."))
}

fn only_members(object: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), Refusal> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(extra) => Err(unknown_name(at, extra)),
        None => Ok(()),
    }
}

/// What a path asks for: `(model, method)` of `.../models/{model}:{method}`.
pub(crate) fn route(path: &str) -> Option<(&str, &str)> {
    let (_, rest) = path.split_once("/models/")?;
    rest.split_once(':')
}

/// Whether the request carries the key (`x-goog-api-key`, or `?key=`).
fn check_key(headers: &HeaderMap, query: Option<&str>, required: Option<&str>) -> Result<(), Refusal> {
    let Some(required) = required else { return Ok(()) };
    let header = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok());
    let param = query.and_then(|q| q.split('&').find_map(|p| p.strip_prefix("key=")));
    match header.or(param) {
        Some(key) if key == required => Ok(()),
        Some(_) => Err(invalid("API key not valid. Please pass a valid API key.")),
        None => Err(Refusal {
            status: StatusCode::FORBIDDEN,
            message: "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.".to_owned(),
        }),
    }
}

/// A checked `generateContent` request.
struct Checked {
    /// Every text of the prompt, in order (for magic words and token counts).
    texts: Vec<String>,
    last_user_text: String,
    /// Images and files in the last user turn.
    media: usize,
    /// `(name, what it said)` of each function response of the last user turn.
    responses: Vec<(String, String)>,
    declarations: Vec<Value>,
    mode: String,
    allowed: Vec<String>,
    max_output_tokens: Option<u64>,
    stop_sequences: Vec<String>,
    include_thoughts: bool,
}

impl Checked {
    fn says(&self, word: &str) -> bool {
        self.texts.iter().any(|t| t.contains(word))
    }

    fn prompt_tokens(&self) -> u64 {
        let tools: u64 = self.declarations.iter().map(|d| estimate_tokens(&d.to_string())).sum();
        self.texts.iter().map(|t| 3 + estimate_tokens(t)).sum::<u64>() + tools
    }
}

/// Checks one part; returns its kind.
fn check_part(part: &Value, at: &str) -> Result<&'static str, Refusal> {
    let Some(object) = part.as_object() else { return Err(invalid(format!("{at}: a part must be an object"))) };
    only_members(
        object,
        &["text", "inlineData", "fileData", "functionCall", "functionResponse", "thought", "thoughtSignature"],
        at,
    )?;
    let data: Vec<&'static str> = ["text", "inlineData", "fileData", "functionCall", "functionResponse"]
        .into_iter()
        .filter(|k| object.contains_key(*k))
        .collect();
    let [kind] = data[..] else {
        return Err(invalid(format!(
            "{at}: a part must hold exactly one of text, inlineData, fileData, functionCall, functionResponse"
        )));
    };
    let member = &object[kind];
    let ok = match kind {
        "text" => member.is_string(),
        "inlineData" => {
            member.get("mimeType").is_some_and(Value::is_string) && member.get("data").is_some_and(Value::is_string)
        }
        "fileData" => member.get("fileUri").and_then(Value::as_str).is_some_and(|u| !u.is_empty()),
        "functionCall" => {
            member.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty())
                && member.get("args").is_none_or(Value::is_object)
        }
        _ => member.get("name").is_some_and(Value::is_string) && member.get("response").is_some_and(Value::is_object),
    };
    if ok { Ok(kind) } else { Err(invalid(format!("{at}.{kind}: malformed"))) }
}

fn text_of(parts: &[Value]) -> String {
    parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
}

/// Checks a request as Google would.
fn check(body: &[u8]) -> Result<Checked, Refusal> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Err(invalid("Invalid JSON payload received."));
    };
    only_members(&body, MEMBERS, "")?;
    let mut texts = Vec::new();
    if let Some(system) = body.get("systemInstruction") {
        let parts = system.get("parts").and_then(Value::as_array).cloned().unwrap_or_default();
        for (i, p) in parts.iter().enumerate() {
            if check_part(p, &format!("system_instruction.parts[{i}]"))? != "text" {
                return Err(invalid("system_instruction: only text parts are allowed"));
            }
        }
        texts.push(text_of(&parts));
    }
    let Some(Value::Array(contents)) = body.get("contents") else {
        return Err(invalid("* GenerateContentRequest.contents: contents is not specified"));
    };
    if contents.is_empty() {
        return Err(invalid("* GenerateContentRequest.contents: contents is not specified"));
    }
    let (mut last_user_text, mut media, mut responses) = (String::new(), 0, Vec::new());
    // The calls of the model turn before, by name.
    let mut calls: Vec<String> = Vec::new();
    for (i, content) in contents.iter().enumerate() {
        let Some(object) = content.as_object() else { return Err(invalid(format!("contents[{i}]: not an object"))) };
        only_members(object, &["role", "parts"], &format!("contents[{i}]"))?;
        let role = object.get("role").and_then(Value::as_str).unwrap_or("user");
        if role != "user" && role != "model" {
            return Err(invalid(format!("Please use a valid role: user, model. (contents[{i}].role: {role})")));
        }
        let parts = object.get("parts").and_then(Value::as_array).cloned().unwrap_or_default();
        if parts.is_empty() {
            return Err(invalid(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            )));
        }
        let mut turn_calls = Vec::new();
        let mut turn_responses = Vec::new();
        let mut turn_media = 0;
        for (j, part) in parts.iter().enumerate() {
            let at = format!("contents[{i}].parts[{j}]");
            match check_part(part, &at)? {
                "functionCall" => {
                    if role != "model" {
                        return Err(invalid(format!("{at}: function calls come from the model")));
                    }
                    if turn_calls.is_empty()
                        && part.get("thoughtSignature").and_then(Value::as_str) != Some(THOUGHT_SIGNATURE)
                    {
                        return Err(invalid(format!(
                            "Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `default_api:{}` , position {}.",
                            part["functionCall"]["name"].as_str().unwrap_or_default(),
                            j + 1
                        )));
                    }
                    let name = part["functionCall"]["name"].as_str().unwrap_or_default().to_owned();
                    texts.push(part["functionCall"].to_string());
                    turn_calls.push(name);
                }
                "functionResponse" => {
                    let name = part["functionResponse"]["name"].as_str().unwrap_or_default().to_owned();
                    if role != "user" || !calls.contains(&name) {
                        return Err(invalid(format!(
                            "{at}: a function response must answer a function call of the model turn before ({name})"
                        )));
                    }
                    let response = &part["functionResponse"]["response"];
                    let said = match response.get("result").or_else(|| response.get("content")) {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => response.to_string(),
                    };
                    texts.push(said.clone());
                    turn_responses.push((name, said));
                }
                "inlineData" | "fileData" => turn_media += 1,
                _ => {}
            }
        }
        if !turn_responses.is_empty() && turn_responses.len() != calls.len() {
            return Err(invalid(
                "Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.",
            ));
        }
        texts.push(text_of(&parts));
        if role == "user" {
            last_user_text = text_of(&parts);
            media = turn_media;
            responses = turn_responses;
        }
        calls = turn_calls;
    }
    let mut declarations = Vec::new();
    if let Some(tools) = body.get("tools") {
        for (i, tool) in tools.as_array().cloned().unwrap_or_default().iter().enumerate() {
            let Some(object) = tool.as_object() else { return Err(invalid(format!("tools[{i}]: not an object"))) };
            only_members(
                object,
                &["functionDeclarations", "googleSearch", "codeExecution", "urlContext"],
                &format!("tools[{i}]"),
            )?;
            for (j, d) in object
                .get("functionDeclarations")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let at = format!("tools[{i}].function_declarations[{j}]");
                let Some(declaration) = d.as_object() else { return Err(invalid(format!("{at}: not an object"))) };
                only_members(
                    declaration,
                    &[
                        "name",
                        "description",
                        "parameters",
                        "parametersJsonSchema",
                        "response",
                        "responseJsonSchema",
                        "behavior",
                    ],
                    &at,
                )?;
                if declaration.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                    return Err(invalid(format!("* GenerateContentRequest.{at}.name: Name cannot be empty.")));
                }
                if declaration.contains_key("parameters") && declaration.contains_key("parametersJsonSchema") {
                    return Err(invalid(format!("{at}: parameters and parametersJsonSchema are mutually exclusive")));
                }
                declarations.push(d.clone());
            }
        }
    }
    let (mut mode, mut allowed) = ("AUTO".to_owned(), Vec::new());
    if let Some(config) = body.get("toolConfig") {
        let calling = config.get("functionCallingConfig").cloned().unwrap_or(Value::Null);
        if let Some(object) = config.as_object() {
            only_members(object, &["functionCallingConfig", "retrievalConfig"], "tool_config")?;
        }
        if let Some(object) = calling.as_object() {
            only_members(object, &["mode", "allowedFunctionNames"], "tool_config.function_calling_config")?;
        }
        mode = calling.get("mode").and_then(Value::as_str).unwrap_or("AUTO").to_owned();
        if !matches!(mode.as_str(), "AUTO" | "ANY" | "NONE" | "VALIDATED") {
            return Err(invalid(format!("Invalid value at 'tool_config.function_calling_config.mode' ({mode})")));
        }
        allowed = calling
            .get("allowedFunctionNames")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        if !allowed.is_empty() && mode != "ANY" {
            return Err(invalid("allowed_function_names may only be set when the mode is ANY"));
        }
    }
    let generation = body.get("generationConfig").and_then(Value::as_object).cloned().unwrap_or_default();
    only_members(&generation, GENERATION_MEMBERS, "generation_config")?;
    if let Some(t) = generation.get("temperature").and_then(Value::as_f64)
        && !(0.0..=2.0).contains(&t)
    {
        return Err(invalid("* GenerateContentRequest.generation_config.temperature: must be in [0.0, 2.0]"));
    }
    let stop_sequences: Vec<String> = match generation.get("stopSequences") {
        None => Vec::new(),
        Some(Value::Array(stops)) if stops.len() <= 5 && stops.iter().all(Value::is_string) => {
            stops.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        Some(_) => return Err(invalid("generation_config.stop_sequences: at most 5 strings")),
    };
    if generation.contains_key("responseSchema") && generation.contains_key("responseJsonSchema") {
        return Err(invalid("responseSchema and responseJsonSchema are mutually exclusive"));
    }
    let thinking = generation.get("thinkingConfig").and_then(Value::as_object).cloned().unwrap_or_default();
    only_members(
        &thinking,
        &["thinkingBudget", "includeThoughts", "thinkingLevel"],
        "generation_config.thinking_config",
    )?;
    Ok(Checked {
        texts,
        last_user_text,
        media,
        responses,
        declarations,
        mode,
        allowed,
        max_output_tokens: generation.get("maxOutputTokens").and_then(Value::as_u64),
        stop_sequences,
        include_thoughts: thinking.get("includeThoughts").and_then(Value::as_bool) == Some(true),
    })
}

/// One part of the answer.
enum Part {
    Thought(String),
    Word(String),
    Call { name: String, args: Value, signed: bool },
}

struct Answer {
    parts: Vec<Part>,
    finish: &'static str,
    prompt_tokens: u64,
    cached: bool,
    usage_late: bool,
}

impl Answer {
    fn for_request(request: &Checked, tokens: Option<usize>) -> Self {
        let mut parts = Vec::new();
        if request.include_thoughts {
            parts.push(Part::Thought("Let me think about that.".to_owned()));
        }
        let mut finish = "STOP";
        let calls = !request.declarations.is_empty() && request.responses.is_empty() && request.mode != "NONE";
        if request.says("mock:safety") {
            finish = "SAFETY";
        } else if calls {
            let first = request
                .declarations
                .iter()
                .find(|d| {
                    request.allowed.is_empty()
                        || request.allowed.iter().any(|a| d.get("name").and_then(Value::as_str) == Some(a))
                })
                .unwrap_or(&request.declarations[0]);
            let mut called = vec![first];
            if request.says("mock:parallel") {
                called.push(request.declarations.get(1).unwrap_or(first));
            }
            for (i, d) in called.into_iter().enumerate() {
                let schema = d.get("parametersJsonSchema").or_else(|| d.get("parameters")).unwrap_or(&Value::Null);
                parts.push(Part::Call {
                    name: d.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    args: example(schema),
                    signed: i == 0,
                });
            }
        } else {
            let mut text = if !request.responses.is_empty() {
                let said: Vec<&str> = request.responses.iter().map(|(_, s)| s.as_str()).collect();
                format!("The tool said: {}", said.join(" | "))
            } else if let Some(n) = tokens {
                (0..n).map(|i| ["the", "quick", "brown", "fox", "jumps"][i % 5]).collect::<Vec<_>>().join(" ")
            } else {
                let said: String = request.last_user_text.chars().take(200).collect();
                let media = match request.media {
                    0 => String::new(),
                    1 => " (and 1 image)".to_owned(),
                    n => format!(" (and {n} images)"),
                };
                format!("This is LLM Weaver's mock channel. You said: {said}{media}")
            };
            if let Some(at) =
                request.stop_sequences.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min()
            {
                text.truncate(at);
            }
            let mut words: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
            if let Some(max) = request.max_output_tokens
                && words.len() as u64 > max
            {
                words.truncate(usize::try_from(max).unwrap_or(usize::MAX));
                finish = "MAX_TOKENS";
            }
            parts.extend(words.into_iter().map(Part::Word));
        }
        Self {
            parts,
            finish,
            prompt_tokens: request.prompt_tokens(),
            cached: request.says("mock:cache"),
            usage_late: request.says("mock:usage-late"),
        }
    }

    fn part_json(part: &Part) -> Value {
        match part {
            Part::Thought(t) => json!({"text": t, "thought": true}),
            Part::Word(w) => json!({"text": w}),
            Part::Call { name, args, signed: true } => {
                json!({"functionCall": {"name": name, "args": args}, "thoughtSignature": THOUGHT_SIGNATURE})
            }
            Part::Call { name, args, signed: false } => json!({"functionCall": {"name": name, "args": args}}),
        }
    }

    /// Output tokens of `parts`: `(candidates, thoughts)`.
    fn tokens(parts: &[Part]) -> (u64, u64) {
        parts.iter().fold((0, 0), |(c, t), p| match p {
            Part::Thought(text) => (c, t + estimate_tokens(text)),
            Part::Word(_) => (c + 1, t),
            Part::Call { args, .. } => (c + estimate_tokens(&args.to_string()), t),
        })
    }

    fn usage(&self, parts: &[Part]) -> Value {
        let (candidates, thoughts) = Self::tokens(parts);
        let mut usage = json!({
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": candidates,
            "totalTokenCount": self.prompt_tokens + candidates + thoughts,
        });
        if thoughts > 0 {
            usage["thoughtsTokenCount"] = json!(thoughts);
        }
        if self.cached {
            usage["cachedContentTokenCount"] = json!(CACHED_TOKENS);
        }
        usage
    }

    fn response(&self, parts: &[Part], finish: Option<&str>, usage: bool) -> Value {
        let mut candidate = json!({"index": 0});
        if !parts.is_empty() {
            candidate["content"] =
                json!({"role": "model", "parts": parts.iter().map(Self::part_json).collect::<Vec<_>>()});
        }
        if let Some(finish) = finish {
            candidate["finishReason"] = json!(finish);
        }
        let mut response =
            json!({"candidates": [candidate], "modelVersion": "gemini-mock-001", "responseId": "mock-response-1"});
        if usage {
            response["usageMetadata"] = self.usage(&self.parts);
        }
        response
    }

    fn to_json(&self) -> Value {
        self.response(&self.parts, Some(self.finish), true)
    }

    /// The answer as Gemini streams it, one event per frame.
    fn to_events(&self, error_mid_stream: bool) -> Vec<Bytes> {
        let mut events = Vec::new();
        let last = self.parts.len().saturating_sub(1);
        let mut groups: Vec<(usize, &[Part])> = Vec::new();
        // Calls come whole, together; thoughts and words one per event.
        let calls_at = self.parts.iter().position(|p| matches!(p, Part::Call { .. }));
        for (i, part) in self.parts.iter().enumerate() {
            match (calls_at, part) {
                (Some(at), Part::Call { .. }) if i == at => groups.push((i, &self.parts[at..])),
                (_, Part::Call { .. }) => {}
                _ => groups.push((i, std::slice::from_ref(part))),
            }
        }
        if groups.is_empty() {
            groups.push((0, &[]));
        }
        for (n, (i, parts)) in groups.iter().enumerate() {
            let is_last = n + 1 == groups.len() || *i + parts.len() > last;
            let finish = is_last.then_some(self.finish);
            let mut response = self.response(parts, finish, false);
            if !self.usage_late {
                response["usageMetadata"] = self.usage(&self.parts[..(*i + parts.len()).min(self.parts.len())]);
            }
            events.push(event(&response));
            if error_mid_stream && n == 0 {
                let error = json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}});
                events.push(event(&error));
                return events;
            }
            if is_last {
                break;
            }
        }
        if self.usage_late {
            events.push(event(&json!({"usageMetadata": self.usage(&self.parts), "modelVersion": "gemini-mock-001", "responseId": "mock-response-1"})));
        }
        events
    }
}

/// `data: <json>` and the blank line (Gemini names no events).
fn event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\r\n\r\n"))
}

/// What a Gemini request gets: a whole answer, or the events of a stream
/// (the caller paces and cuts them).
pub(crate) enum Reply {
    Whole(Response),
    Events(Vec<Bytes>),
}

/// Answers `POST .../models/{model}:{method}`.
pub(crate) fn answer(
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    required_key: Option<&str>,
    tokens: Option<usize>,
) -> Reply {
    let whole = |refusal: Refusal| Reply::Whole(refusal.response());
    if let Err(refusal) = check_key(headers, query, required_key) {
        return whole(refusal);
    }
    let Some((_, method)) = route(path) else {
        return whole(Refusal { status: StatusCode::NOT_FOUND, message: format!("{path} is not found") });
    };
    match method {
        "generateContent" | "streamGenerateContent" => {}
        "batchEmbedContents" | "embedContent" => return Reply::Whole(embeddings(method, body)),
        other => {
            return whole(Refusal { status: StatusCode::NOT_FOUND, message: format!("Method {other} is not found") });
        }
    }
    let request = match check(body) {
        Ok(r) => r,
        Err(refusal) => return whole(refusal),
    };
    if request.says("mock:error-200") {
        let body = json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}});
        return Reply::Whole(([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response());
    }
    let answer = Answer::for_request(&request, tokens);
    if method == "generateContent" {
        return Reply::Whole(
            ([(header::CONTENT_TYPE, "application/json")], answer.to_json().to_string()).into_response(),
        );
    }
    let events = answer.to_events(request.says("mock:error-mid-stream"));
    if query.is_some_and(|q| q.split('&').any(|p| p == "alt=sse")) {
        return Reply::Events(events);
    }
    // Without `alt=sse` the stream is one JSON array.
    let items: Vec<String> =
        events.iter().map(|e| String::from_utf8_lossy(e).trim().trim_start_matches("data: ").to_owned()).collect();
    Reply::Whole(([(header::CONTENT_TYPE, "application/json")], format!("[{}]", items.join(","))).into_response())
}

/// Answers `:batchEmbedContents` (`{"requests":[{model, content, outputDimensionality}]}`)
/// and `:embedContent` (one such request at the top level).
fn embeddings(method: &str, body: &[u8]) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return invalid("Invalid JSON payload received.").response();
    };
    let requests = if method == "embedContent" {
        vec![Value::Object(body)]
    } else {
        if let Err(refusal) = only_members(&body, &["requests"], "") {
            return refusal.response();
        }
        body.get("requests").and_then(Value::as_array).cloned().unwrap_or_default()
    };
    if requests.is_empty() {
        return invalid("* BatchEmbedContentsRequest.requests: requests is not specified").response();
    }
    let mut embeddings = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        let at = format!("requests[{i}]");
        let Some(object) = request.as_object() else { return invalid(format!("{at}: not an object")).response() };
        if let Err(refusal) =
            only_members(object, &["model", "content", "taskType", "title", "outputDimensionality"], &at)
        {
            return refusal.response();
        }
        let parts =
            request.get("content").and_then(|c| c.get("parts")).and_then(Value::as_array).cloned().unwrap_or_default();
        if parts.is_empty()
            || method == "batchEmbedContents"
                && !request.get("model").and_then(Value::as_str).is_some_and(|m| m.starts_with("models/"))
        {
            return invalid(format!("{at}: `model` (models/...) and `content.parts` are required")).response();
        }
        let dimensions = request
            .get("outputDimensionality")
            .and_then(Value::as_u64)
            .map_or(16, |d| usize::try_from(d).unwrap_or(16))
            .clamp(1, 4096);
        embeddings.push(json!({"values": crate::embeddings::unit_vector(&text_of(&parts), dimensions)}));
    }
    let body = if method == "embedContent" {
        json!({"embedding": embeddings.pop().unwrap_or_default()})
    } else {
        json!({"embeddings": embeddings})
    };
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(body: &Value) -> Result<Checked, u16> {
        check(body.to_string().as_bytes()).map_err(|r| r.status.as_u16())
    }

    #[test]
    fn members_roles_signatures_and_responses_are_checked_like_google_does() {
        let ok = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
        assert!(checked(&ok).is_ok());
        for bad in [
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "messages": []}),
            json!({"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]}),
            json!({"contents": [{"role": "user", "parts": []}]}),
            json!({"contents": [{"role": "user", "parts": [{"text": "hi", "inlineData": {"mimeType": "a", "data": ""}}]}]}),
            json!({"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]}),
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"max_tokens": 5}}),
            json!({"contents": [{"role": "user", "parts": [{"text": "?"}]}, {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                   {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"result": "x"}}}]}]}),
        ] {
            assert_eq!(checked(&bad).err(), Some(400), "{bad}");
        }
        let two_turns = json!({"contents": [{"role": "user", "parts": [{"text": "?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": THOUGHT_SIGNATURE}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"result": "sunny"}}}]}]});
        let request = checked(&two_turns).unwrap_or_else(|s| panic!("{s}"));
        assert_eq!(request.responses, [("f".to_owned(), "sunny".to_owned())]);
    }

    #[test]
    fn streams_send_words_then_usage_late_when_asked() {
        let body = json!({"contents": [{"role": "user", "parts": [{"text": "Say hi mock:usage-late"}]}]});
        let request = checked(&body).unwrap_or_else(|s| panic!("{s}"));
        let events = Answer::for_request(&request, None).to_events(false);
        let data: Vec<Value> = events
            .iter()
            .filter_map(|e| serde_json::from_str(String::from_utf8_lossy(e).trim().trim_start_matches("data: ")).ok())
            .collect();
        assert!(data[..data.len() - 1].iter().all(|d| d.get("usageMetadata").is_none()));
        assert_eq!(data[data.len() - 2]["candidates"][0]["finishReason"], "STOP");
        assert!(data[data.len() - 1]["usageMetadata"]["candidatesTokenCount"].as_u64().is_some_and(|n| n > 0));
    }
}
