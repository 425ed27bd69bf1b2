//! Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`),
//! written from its public reference (<https://docs.anthropic.com/en/api/messages>,
//! <https://docs.anthropic.com/en/api/messages-streaming>, the official SDK's
//! types) and sharing nothing with the gateway.
//!
//! Requests are checked as strictly as Anthropic checks them: `x-api-key`
//! and `anthropic-version` headers, `max_tokens` required, roles `user` and
//! `assistant` only, known block types, a `tool_result` only for a
//! `tool_use` of the turn before, and no member Anthropic does not define
//! ("Extra inputs are not permitted") — so a translator that leaks an
//! OpenAI member fails here as it would against the real API.
//!
//! The answer quotes the last user text, like the OpenAI side; with `tools`
//! and no tool result yet it calls the first tool (input made from its
//! schema); after tool results it says what they said. Streams have the
//! shapes real ones have, including the awkward ones: a `ping` after
//! `message_start` and between blocks, an empty first `text_delta`, an
//! empty first `input_json_delta` and tool arguments split every few bytes,
//! mid-token. Magic words anywhere in the prompt ask for the rest:
//!
//! | word | effect |
//! |---|---|
//! | `mock:thinking` | a thinking block (with its signature) before the answer |
//! | `mock:parallel` | two tool calls in one turn |
//! | `mock:cache` | usage reports 11 cache-read and 7 cache-write input tokens |
//! | `mock:usage-late` | `message_start` reports no usage; all of it comes in `message_delta` |
//! | `mock:refusal` | `stop_reason: refusal` |
//! | `mock:error-mid-stream` | an `overloaded_error` event after the first text delta, then the end |
//! | `mock:error-200` | a 200 whose body is an `overloaded_error` (JSON, also for streams) |

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::chat::{estimate_tokens, example, fragments};

/// Cache tokens reported under `mock:cache`.
pub const CACHE_READ_TOKENS: u64 = 11;
pub const CACHE_WRITE_TOKENS: u64 = 7;

/// Top-level members Anthropic defines for `/v1/messages`.
const MEMBERS: &[&str] = &[
    "model",
    "max_tokens",
    "messages",
    "system",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "stream",
    "metadata",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "inference_geo",
    "cache_control",
];

/// The same for `/v1/messages/count_tokens`.
const COUNT_MEMBERS: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "mcp_servers",
    "context_management",
    "cache_control",
];

/// An error in Anthropic's shape: `{"type":"error","error":{"type","message"},"request_id"}`.
pub(crate) fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_mock"});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The error `type` Anthropic gives a status.
pub(crate) fn error_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Why a request is refused, until it becomes the response.
struct Refusal {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl Refusal {
    fn response(&self) -> Response {
        error_response(self.status, self.kind, &self.message)
    }
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal { status: StatusCode::BAD_REQUEST, kind: "invalid_request_error", message: message.into() }
}

/// A request to the Messages API, checked.
struct Checked {
    body: Map<String, Value>,
    model: String,
    max_tokens: u64,
    stream: bool,
    /// Every text of the prompt (system, messages, tool results), in order.
    texts: Vec<String>,
    /// What the answer quotes: the last user turn's text.
    last_user_text: String,
    /// Images in the last user turn.
    images: usize,
    /// Tool results of the last user turn: (id, content text).
    tool_results: Vec<(String, String)>,
    tools: Vec<Value>,
    tool_choice: Option<String>,
}

impl Checked {
    fn says(&self, word: &str) -> bool {
        self.texts.iter().any(|t| t.contains(word))
    }

    fn input_tokens(&self) -> u64 {
        let tools: u64 = self.tools.iter().map(|t| estimate_tokens(&t.to_string())).sum();
        3 + self.texts.iter().map(|t| 4 + estimate_tokens(t)).sum::<u64>() + tools
    }
}

/// Whether the request carries the headers Anthropic requires.
fn check_headers(headers: &HeaderMap, required_key: Option<&str>) -> Result<(), Refusal> {
    if let Some(key) = required_key
        && headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(key)
    {
        return Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            message: "invalid x-api-key".to_owned(),
        });
    }
    if headers.get("anthropic-version").is_none() {
        return Err(invalid("anthropic-version: header is required"));
    }
    Ok(())
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn only_members(object: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), Refusal> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(extra) => Err(invalid(format!("{at}{extra}: Extra inputs are not permitted"))),
        None => Ok(()),
    }
}

fn check_block(block: &Value, role: &str, at: &str, previous_tool_uses: &[String]) -> Result<(), Refusal> {
    let Some(object) = block.as_object() else { return Err(invalid(format!("{at}: Input should be an object"))) };
    let kind = object.get("type").and_then(Value::as_str).unwrap_or_default();
    let allowed: &[&str] = match kind {
        "text" => &["type", "text", "cache_control", "citations"],
        "image" | "document" => &["type", "source", "cache_control", "title", "context", "citations"],
        "tool_use" => &["type", "id", "name", "input", "cache_control"],
        "tool_result" => &["type", "tool_use_id", "content", "is_error", "cache_control"],
        "thinking" => &["type", "thinking", "signature"],
        "redacted_thinking" => &["type", "data"],
        other => {
            return Err(invalid(format!(
                "{at}.type: Input tag '{other}' found using 'type' does not match any of the expected tags"
            )));
        }
    };
    only_members(object, allowed, &format!("{at}.{kind}."))?;
    match kind {
        "text" if object.get("text").and_then(Value::as_str).is_none_or(str::is_empty) => {
            return Err(invalid(format!("{at}: text content blocks must be non-empty")));
        }
        "image" => {
            let source = object.get("source").cloned().unwrap_or(Value::Null);
            let ok = match source.get("type").and_then(Value::as_str) {
                Some("base64") => {
                    source.get("data").is_some_and(Value::is_string)
                        && matches!(
                            source.get("media_type").and_then(Value::as_str),
                            Some("image/jpeg" | "image/png" | "image/gif" | "image/webp")
                        )
                }
                Some("url") => source.get("url").and_then(Value::as_str).is_some_and(|u| u.starts_with("http")),
                _ => false,
            };
            if !ok {
                return Err(invalid(format!("{at}.source: invalid image source")));
            }
        }
        "tool_use" if role != "assistant" || !object.get("input").is_some_and(Value::is_object) => {
            return Err(invalid(format!("{at}: tool_use blocks need an object `input`, in assistant turns")));
        }
        "tool_result" => {
            let id = object.get("tool_use_id").and_then(Value::as_str).unwrap_or_default();
            if role != "user" || !previous_tool_uses.iter().any(|u| u == id) {
                return Err(invalid(format!(
                    "{at}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                )));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks a request as Anthropic would.
fn check(body: &[u8], count: bool) -> Result<Checked, Refusal> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Err(invalid("The request body is not valid JSON."));
    };
    only_members(&body, if count { COUNT_MEMBERS } else { MEMBERS }, "")?;
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(invalid("model: Field required")),
    };
    let max_tokens = match (count, body.get("max_tokens")) {
        (true, _) => 0,
        (false, Some(v)) => v.as_u64().ok_or_else(|| invalid("max_tokens: Input should be a valid integer"))?,
        (false, None) => return Err(invalid("max_tokens: Field required")),
    };
    let stream = match body.get("stream") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| invalid("stream: Input should be a valid boolean"))?,
    };
    let mut texts = Vec::new();
    match body.get("system") {
        None | Some(Value::String(_)) => texts.extend(body.get("system").and_then(Value::as_str).map(str::to_owned)),
        Some(Value::Array(blocks)) => {
            for (i, b) in blocks.iter().enumerate() {
                check_block(b, "system", &format!("system.{i}"), &[])?;
                texts.push(text_of(&Value::Array(vec![b.clone()])));
            }
        }
        Some(_) => return Err(invalid("system: Input should be a valid string or list")),
    }
    let Some(Value::Array(messages)) = body.get("messages") else {
        return Err(invalid("messages: Field required"));
    };
    if messages.is_empty() {
        return Err(invalid("messages: at least one message is required"));
    }
    let mut previous_tool_uses: Vec<String> = Vec::new();
    let (mut last_user_text, mut images, mut tool_results) = (String::new(), 0, Vec::new());
    for (i, m) in messages.iter().enumerate() {
        let Some(object) = m.as_object() else {
            return Err(invalid(format!("messages.{i}: Input should be an object")));
        };
        only_members(object, &["role", "content"], &format!("messages.{i}."))?;
        let role = object.get("role").and_then(Value::as_str).unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(invalid(format!("messages.{i}.role: Input should be 'user' or 'assistant'")));
        }
        let content = object.get("content").cloned().unwrap_or(Value::Null);
        let mut tool_uses = Vec::new();
        match &content {
            Value::String(s) => texts.push(s.clone()),
            Value::Array(blocks) => {
                for (j, b) in blocks.iter().enumerate() {
                    check_block(b, role, &format!("messages.{i}.content.{j}"), &previous_tool_uses)?;
                    if let Some(id) = b.get("id").and_then(Value::as_str).filter(|_| role == "assistant") {
                        tool_uses.push(id.to_owned());
                        texts.push(b.get("input").map(Value::to_string).unwrap_or_default());
                    }
                    if let Some(content) = b.get("content").filter(|_| b.get("type") == Some(&json!("tool_result"))) {
                        texts.push(text_of(content));
                    }
                }
                texts.push(text_of(&content));
            }
            _ => return Err(invalid(format!("messages.{i}.content: Input should be a valid string or list"))),
        }
        if role == "user" {
            last_user_text = text_of(&content);
            let blocks = content.as_array().cloned().unwrap_or_default();
            images = blocks.iter().filter(|b| b.get("type") == Some(&json!("image"))).count();
            tool_results = blocks
                .iter()
                .filter(|b| b.get("type") == Some(&json!("tool_result")))
                .map(|b| {
                    let id = b.get("tool_use_id").and_then(Value::as_str).unwrap_or_default().to_owned();
                    (id, b.get("content").map(text_of).unwrap_or_default())
                })
                .collect();
        }
        previous_tool_uses = tool_uses;
    }
    if let Some(t) = body.get("temperature").and_then(Value::as_f64)
        && !(0.0..=1.0).contains(&t)
    {
        return Err(invalid("temperature: Input should be less than or equal to 1"));
    }
    if let Some(stop) = body.get("stop_sequences")
        && !stop.as_array().is_some_and(|a| a.iter().all(Value::is_string))
    {
        return Err(invalid("stop_sequences: Input should be a valid list of strings"));
    }
    if let Some(metadata) = body.get("metadata") {
        let ok = metadata.as_object().is_some_and(|m| {
            m.keys().all(|k| k == "user_id") && m.get("user_id").is_none_or(|u| u.is_string() || u.is_null())
        });
        if !ok {
            return Err(invalid("metadata: only `user_id` (a string) is permitted"));
        }
    }
    let tools = match body.get("tools") {
        None => Vec::new(),
        Some(Value::Array(tools)) => {
            for (i, t) in tools.iter().enumerate() {
                let schema_ok =
                    t.get("input_schema").and_then(|s| s.get("type")).and_then(Value::as_str) == Some("object");
                if t.get("name").and_then(Value::as_str).is_none() || !schema_ok {
                    return Err(invalid(format!("tools.{i}: a custom tool needs `name` and an object `input_schema`")));
                }
                if let Some(object) = t.as_object() {
                    only_members(
                        object,
                        &["name", "description", "input_schema", "cache_control", "strict", "type"],
                        &format!("tools.{i}.custom."),
                    )?;
                }
            }
            tools.clone()
        }
        Some(_) => return Err(invalid("tools: Input should be a valid list")),
    };
    let tool_choice = match body.get("tool_choice") {
        None => None,
        Some(choice) => {
            let kind = choice.get("type").and_then(Value::as_str).unwrap_or_default();
            if !matches!(kind, "auto" | "any" | "tool" | "none") {
                return Err(invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"));
            }
            if kind == "tool" {
                let name = choice.get("name").and_then(Value::as_str).unwrap_or_default();
                if !tools.iter().any(|t| t.get("name").and_then(Value::as_str) == Some(name)) {
                    return Err(invalid(format!("tool_choice.name: no tool named {name}")));
                }
            }
            Some(kind.to_owned())
        }
    };
    if let Some(thinking) = body.get("thinking")
        && thinking.get("type").and_then(Value::as_str) == Some("enabled")
    {
        let budget = thinking.get("budget_tokens").and_then(Value::as_u64).unwrap_or_default();
        if budget < 1024 || (!count && budget >= max_tokens) {
            return Err(invalid("thinking.budget_tokens: must be at least 1024 and less than max_tokens"));
        }
    }
    Ok(Checked { body, model, max_tokens, stream, texts, last_user_text, images, tool_results, tools, tool_choice })
}

/// One block of the answer.
#[derive(Clone, Debug)]
enum Block {
    Thinking(String),
    /// The text, one token each.
    Text(Vec<String>),
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

/// A Messages answer, before it is encoded whole or as events.
struct Answer {
    id: String,
    model: String,
    blocks: Vec<Block>,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    cache: bool,
    usage_late: bool,
}

impl Answer {
    fn for_request(request: &Checked, tokens: Option<usize>) -> Self {
        let mut blocks = Vec::new();
        if request.says("mock:thinking") {
            blocks.push(Block::Thinking("Let me think about that.".to_owned()));
        }
        let calls_tools = !request.tools.is_empty()
            && request.tool_results.is_empty()
            && request.tool_choice.as_deref() != Some("none");
        let mut stop_reason = "end_turn";
        let mut stop_sequence = None;
        if calls_tools {
            let forced = request.tool_choice.as_deref() == Some("tool");
            let named = request.body.get("tool_choice").and_then(|c| c.get("name")).and_then(Value::as_str);
            let first = request
                .tools
                .iter()
                .find(|t| !forced || t.get("name").and_then(Value::as_str) == named)
                .unwrap_or(&request.tools[0]);
            let mut called = vec![first];
            if request.says("mock:parallel") {
                called.push(request.tools.get(1).unwrap_or(first));
            }
            for (i, tool) in called.into_iter().enumerate() {
                blocks.push(Block::ToolUse {
                    id: format!("toolu_mock_{i}"),
                    name: tool.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    input: example(tool.get("input_schema").unwrap_or(&Value::Null)),
                });
            }
            stop_reason = "tool_use";
        } else {
            let text = if request.says("mock:refusal") {
                stop_reason = "refusal";
                "I can't help with that.".to_owned()
            } else if !request.tool_results.is_empty() {
                let said: Vec<String> = request.tool_results.iter().map(|(_, t)| t.clone()).collect();
                format!("The tool said: {}", said.join(" | "))
            } else if let Some(n) = tokens {
                (0..n).map(|i| ["the", "quick", "brown", "fox", "jumps"][i % 5]).collect::<Vec<_>>().join(" ")
            } else {
                let said: String = request.last_user_text.chars().take(200).collect();
                let images = match request.images {
                    0 => String::new(),
                    1 => " (and 1 image)".to_owned(),
                    n => format!(" (and {n} images)"),
                };
                format!("This is LLM Weaver's mock channel. You said: {said}{images}")
            };
            let mut text = text;
            let stops = request.body.get("stop_sequences").and_then(Value::as_array).cloned().unwrap_or_default();
            if let Some((at, stop)) = stops
                .iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .filter_map(|s| text.find(s).map(|at| (at, s.to_owned())))
                .min_by_key(|(at, _)| *at)
            {
                text.truncate(at);
                stop_reason = "stop_sequence";
                stop_sequence = Some(stop);
            }
            let mut words: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
            if words.len() as u64 > request.max_tokens {
                words.truncate(usize::try_from(request.max_tokens).unwrap_or(usize::MAX));
                stop_reason = "max_tokens";
                stop_sequence = None;
            }
            blocks.push(Block::Text(words));
        }
        let output_tokens = blocks
            .iter()
            .map(|b| match b {
                Block::Thinking(t) => estimate_tokens(t),
                Block::Text(words) => words.len() as u64,
                Block::ToolUse { input, .. } => estimate_tokens(&input.to_string()),
            })
            .sum::<u64>();
        Self {
            id: "msg_mock0123456789".to_owned(),
            model: request.model.clone(),
            blocks,
            stop_reason,
            stop_sequence,
            input_tokens: request.input_tokens(),
            output_tokens,
            cache: request.says("mock:cache"),
            usage_late: request.says("mock:usage-late"),
        }
    }

    fn usage(&self) -> Value {
        let (read, write) = if self.cache { (CACHE_READ_TOKENS, CACHE_WRITE_TOKENS) } else { (0, 0) };
        json!({
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
            "output_tokens": self.output_tokens,
        })
    }

    fn whole_block(block: &Block) -> Value {
        match block {
            Block::Thinking(t) => json!({"type": "thinking", "thinking": t, "signature": "sig-mock"}),
            Block::Text(words) => json!({"type": "text", "text": words.concat()}),
            Block::ToolUse { id, name, input } => json!({"type": "tool_use", "id": id, "name": name, "input": input}),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.blocks.iter().map(Self::whole_block).collect::<Vec<_>>(),
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self.usage(),
        })
    }

    /// The answer as Anthropic streams it, one event per frame.
    fn to_events(&self, error_mid_stream: bool) -> Vec<Bytes> {
        let mut events = Vec::new();
        let start_usage = if self.usage_late {
            json!({"input_tokens": 0, "output_tokens": 0})
        } else {
            let mut u = self.usage();
            u["output_tokens"] = json!(1);
            u
        };
        events.push(event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": start_usage,
            }}),
        ));
        events.push(event("ping", &json!({"type": "ping"})));
        for (index, block) in self.blocks.iter().enumerate() {
            if index > 0 {
                events.push(event("ping", &json!({"type": "ping"})));
            }
            let delta = |delta: Value| {
                event("content_block_delta", &json!({"type": "content_block_delta", "index": index, "delta": delta}))
            };
            match block {
                Block::Thinking(t) => {
                    events.push(event("content_block_start", &json!({"type": "content_block_start", "index": index, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})));
                    events.push(delta(json!({"type": "thinking_delta", "thinking": t})));
                    events.push(delta(json!({"type": "signature_delta", "signature": "sig-mock"})));
                }
                Block::Text(words) => {
                    events.push(event("content_block_start", &json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})));
                    events.push(delta(json!({"type": "text_delta", "text": ""})));
                    for (i, word) in words.iter().enumerate() {
                        events.push(delta(json!({"type": "text_delta", "text": word})));
                        if error_mid_stream && i == 0 {
                            events.push(event("error", &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})));
                            return events;
                        }
                    }
                }
                Block::ToolUse { id, name, input } => {
                    events.push(event("content_block_start", &json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}})));
                    events.push(delta(json!({"type": "input_json_delta", "partial_json": ""})));
                    for piece in fragments(&input.to_string()) {
                        events.push(delta(json!({"type": "input_json_delta", "partial_json": piece})));
                    }
                }
            }
            events.push(event("content_block_stop", &json!({"type": "content_block_stop", "index": index})));
        }
        let final_usage = if self.usage_late { self.usage() } else { json!({"output_tokens": self.output_tokens}) };
        events.push(event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence}, "usage": final_usage}),
        ));
        events.push(event("message_stop", &json!({"type": "message_stop"})));
        events
    }
}

/// `event: <name>`, `data: <json>` and the blank line.
fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// What a Messages request gets: a whole answer, or the events of a stream
/// (the caller paces and cuts them).
pub(crate) enum Reply {
    Whole(Response),
    Events(Vec<Bytes>),
}

/// Answers `POST /v1/messages`.
pub(crate) fn messages(headers: &HeaderMap, body: &[u8], required_key: Option<&str>, tokens: Option<usize>) -> Reply {
    let request = match check_headers(headers, required_key).and_then(|()| check(body, false)) {
        Ok(r) => r,
        Err(refusal) => return Reply::Whole(refusal.response()),
    };
    if request.says("mock:error-200") {
        return Reply::Whole(error_response(StatusCode::OK, "overloaded_error", "Overloaded"));
    }
    let answer = Answer::for_request(&request, tokens);
    if request.stream {
        Reply::Events(answer.to_events(request.says("mock:error-mid-stream")))
    } else {
        Reply::Whole(([(header::CONTENT_TYPE, "application/json")], answer.to_json().to_string()).into_response())
    }
}

/// Answers `POST /v1/messages/count_tokens`.
pub(crate) fn count_tokens(headers: &HeaderMap, body: &[u8], required_key: Option<&str>) -> Response {
    match check_headers(headers, required_key).and_then(|()| check(body, true)) {
        Ok(request) => {
            let body = json!({"input_tokens": request.input_tokens()});
            ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
        Err(refusal) => refusal.response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(body: &str) -> Result<Checked, u16> {
        check(body.as_bytes(), false).map_err(|r| r.status.as_u16())
    }

    #[test]
    fn members_roles_and_tool_results_are_checked_like_anthropic_does() {
        let ok = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
        assert!(checked(ok).is_ok());
        for bad in [
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","max_tokens":5,"stream_options":{},"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"system","content":"hi"}]}"#,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi","name":"x"}]}"#,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":""}]}]}"#,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1"}]}]}"#,
            r#"{"model":"m","max_tokens":5,"temperature":1.5,"messages":[{"role":"user","content":"hi"}]}"#,
        ] {
            assert_eq!(checked(bad).err(), Some(400), "{bad}");
        }
        let two_turns = r#"{"model":"m","max_tokens":50,"messages":[
            {"role":"user","content":"weather?"},
            {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"w","input":{}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"sunny"}]}]}"#;
        let request = checked(two_turns).unwrap_or_else(|s| panic!("{s}"));
        assert_eq!(request.tool_results, [("t1".to_owned(), "sunny".to_owned())]);
    }

    #[test]
    fn tool_arguments_stream_in_fragments_that_join_to_the_input() {
        let body = r#"{"model":"m","max_tokens":50,"stream":true,"tools":[{"name":"w","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],"messages":[{"role":"user","content":"weather?"}]}"#;
        let request = checked(body).unwrap_or_else(|s| panic!("{s}"));
        let answer = Answer::for_request(&request, None);
        let mut joined = String::new();
        for e in answer.to_events(false) {
            let text = String::from_utf8_lossy(&e).into_owned();
            if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: "))
                && let Ok(v) = serde_json::from_str::<Value>(data)
                && let Some(p) = v["delta"]["partial_json"].as_str()
            {
                joined.push_str(p);
            }
        }
        assert_eq!(serde_json::from_str::<Value>(&joined).ok(), Some(json!({"city": "mock \"value\""})));
        assert_eq!(answer.stop_reason, "tool_use");
    }
}
