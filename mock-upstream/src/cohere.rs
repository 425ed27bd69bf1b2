//! Cohere's v2 API (`POST /v2/chat`, `POST /v2/embed`), written from its
//! public reference (<https://docs.cohere.com/reference/chat>,
//! <https://docs.cohere.com/reference/chat-stream>,
//! <https://docs.cohere.com/v2/docs/streaming>,
//! <https://docs.cohere.com/reference/embed>) and sharing nothing with the
//! gateway.
//!
//! Requests are checked strictly: `Authorization: Bearer`, `model`
//! required, no member v2 does not define, roles `system`, `user`,
//! `assistant` and `tool`, a `tool` message only for a call of the
//! assistant message before, `tool_choice` `REQUIRED` or `NONE`, and for
//! embeddings `input_type` and `embedding_types` (v2 requires both).
//!
//! The answer quotes the last user text, like the OpenAI side; with tools
//! and no tool result yet it plans, then calls the first tool (arguments
//! made from its schema); after tool results it says what they said.
//! Streams have the v2 event sequence: `message-start`, `content-start`, an
//! empty first `content-delta`, a word a delta, `content-end` (or
//! `tool-plan-delta`s, then per call `tool-call-start`, argument fragments
//! split every few bytes, mid-token, and `tool-call-end`), and
//! `message-end` — the only event with usage. Magic words anywhere in the
//! prompt ask for the rest:
//!
//! | word | effect |
//! |---|---|
//! | `mock:parallel` | two tool calls in one turn |
//! | `mock:error-mid-stream` | `message-end` with `finish_reason: ERROR` and an `error` after the first word |
//! | `mock:error-200` | a 200 whose body is an error object (JSON, also for streams) |
//!
//! With `thinking` enabled the answer starts with a thinking item.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::chat::{estimate_tokens, example, fragments};

/// Tokens Cohere's prompt template adds to `tokens.input_tokens` (not billed).
pub const TEMPLATE_TOKENS: u64 = 200;

/// Top-level members of a v2 chat request.
const MEMBERS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "tools",
    "strict_tools",
    "documents",
    "citation_options",
    "response_format",
    "safety_mode",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "k",
    "p",
    "logprobs",
    "tool_choice",
    "thinking",
    "priority",
];

/// Cohere's error object: `{"id","message"}`.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    let body = json!({"id": "mock-error-0001", "message": message});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A 400, until it becomes the response.
struct Refusal(String);

impl Refusal {
    fn response(&self) -> Response {
        error_response(StatusCode::BAD_REQUEST, &self.0)
    }
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal(message.into())
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.get("text").or_else(|| i.get("document").and_then(|d| d.get("data"))))
            .map(|t| t.as_str().map_or_else(|| t.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn unknown(object: &Map<String, Value>, allowed: &[&str], at: &str) -> Option<Refusal> {
    object
        .keys()
        .find(|k| !allowed.contains(&k.as_str()))
        .map(|k| invalid(format!("invalid request: unknown field `{at}{k}`")))
}

/// A checked chat request.
struct Checked {
    texts: Vec<String>,
    last_user_text: String,
    images: usize,
    tool_results: Vec<String>,
    tools: Vec<Value>,
    tool_choice: Option<String>,
    stream: bool,
    max_tokens: Option<u64>,
    thinking: bool,
}

impl Checked {
    fn says(&self, word: &str) -> bool {
        self.texts.iter().any(|t| t.contains(word))
    }
}

fn check(body: &[u8]) -> Result<Checked, Refusal> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Err(invalid("invalid request: body is not valid JSON"));
    };
    if let Some(refusal) = unknown(&body, MEMBERS, "") {
        return Err(refusal);
    }
    if body.get("model").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(invalid("invalid request: model must be specified"));
    }
    let Some(Value::Array(messages)) = body.get("messages") else {
        return Err(invalid("invalid request: messages must be specified"));
    };
    let mut texts = Vec::new();
    let (mut last_user_text, mut images, mut tool_results) = (String::new(), 0, Vec::new());
    let mut calls: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(object) = m.as_object() else { return Err(invalid(format!("invalid request: messages[{i}]"))) };
        let role = object.get("role").and_then(Value::as_str).unwrap_or_default();
        let allowed: &[&str] = match role {
            "system" | "user" => &["role", "content"],
            "assistant" => &["role", "content", "tool_calls", "tool_plan", "citations"],
            "tool" => &["role", "tool_call_id", "content"],
            other => {
                return Err(invalid(format!(
                    "invalid request: messages[{i}].role `{other}` is not one of system, user, assistant, tool"
                )));
            }
        };
        if let Some(refusal) = unknown(object, allowed, &format!("messages[{i}].")) {
            return Err(refusal);
        }
        let content = object.get("content").cloned().unwrap_or(Value::Null);
        if let Value::Array(items) = &content {
            for item in items {
                let kind = item.get("type").and_then(Value::as_str).unwrap_or_default();
                let ok = match (role, kind) {
                    (_, "text") => item.get("text").is_some_and(Value::is_string),
                    ("user", "image_url") => {
                        item.get("image_url").and_then(|u| u.get("url")).is_some_and(Value::is_string)
                    }
                    ("tool", "document") => item.get("document").is_some(),
                    ("assistant", "thinking") => true,
                    _ => false,
                };
                if !ok {
                    return Err(invalid(format!(
                        "invalid request: messages[{i}].content: unexpected item of type `{kind}`"
                    )));
                }
            }
        }
        match role {
            "assistant" => {
                let tool_calls = object.get("tool_calls").and_then(Value::as_array).cloned().unwrap_or_default();
                if tool_calls.is_empty() && content.is_null() {
                    return Err(invalid(format!(
                        "invalid request: messages[{i}]: an assistant message needs content or tool calls"
                    )));
                }
                calls.clear();
                for call in &tool_calls {
                    let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
                    if call.get("id").and_then(Value::as_str).is_none()
                        || serde_json::from_str::<Value>(arguments).ok().filter(Value::is_object).is_none()
                    {
                        return Err(invalid(format!(
                            "invalid request: messages[{i}].tool_calls need ids and JSON object arguments"
                        )));
                    }
                    calls.push(call["id"].as_str().unwrap_or_default().to_owned());
                    texts.push(arguments.to_owned());
                }
            }
            "tool" => {
                let id = object.get("tool_call_id").and_then(Value::as_str).unwrap_or_default();
                if !calls.iter().any(|c| c == id) {
                    return Err(invalid(format!(
                        "invalid request: messages[{i}].tool_call_id `{id}` does not match a tool call of the assistant message before"
                    )));
                }
                tool_results.push(text_of(&content));
            }
            "user" => {
                last_user_text = text_of(&content);
                images = content.as_array().map_or(0, |a| a.iter().filter(|p| p["type"] == "image_url").count());
                tool_results.clear();
            }
            _ => {}
        }
        texts.push(text_of(&content));
    }
    let tools = match body.get("tools") {
        None => Vec::new(),
        Some(Value::Array(tools)) => {
            for (i, t) in tools.iter().enumerate() {
                let ok = t.get("type").and_then(Value::as_str) == Some("function")
                    && t["function"]["name"].as_str().is_some_and(|n| !n.is_empty())
                    && t.as_object().is_some_and(|o| o.keys().all(|k| k == "type" || k == "function"))
                    && t["function"]
                        .as_object()
                        .is_some_and(|f| f.keys().all(|k| ["name", "description", "parameters"].contains(&k.as_str())));
                if !ok {
                    return Err(invalid(format!(
                        "invalid request: tools[{i}] must be {{type: function, function: {{name, description, parameters}}}}"
                    )));
                }
            }
            tools.clone()
        }
        Some(_) => return Err(invalid("invalid request: tools must be a list")),
    };
    let tool_choice = match body.get("tool_choice") {
        None => None,
        Some(Value::String(c)) if c == "REQUIRED" || c == "NONE" => Some(c.clone()),
        Some(other) => {
            return Err(invalid(format!("invalid request: tool_choice must be REQUIRED or NONE, not {other}")));
        }
    };
    if let Some(format) = body.get("response_format")
        && !matches!(format.get("type").and_then(Value::as_str), Some("text" | "json_object"))
    {
        return Err(invalid("invalid request: response_format.type must be text or json_object"));
    }
    let thinking = match body.get("thinking") {
        None => false,
        Some(t) => match t.get("type").and_then(Value::as_str) {
            Some("enabled") => true,
            Some("disabled") => false,
            _ => return Err(invalid("invalid request: thinking.type must be enabled or disabled")),
        },
    };
    Ok(Checked {
        texts,
        last_user_text,
        images,
        tool_results,
        tools,
        tool_choice,
        stream: body.get("stream").and_then(Value::as_bool) == Some(true),
        max_tokens: body.get("max_tokens").and_then(Value::as_u64),
        thinking,
    })
}

struct Call {
    id: String,
    name: String,
    arguments: String,
}

struct Answer {
    thinking: Option<String>,
    plan: Option<String>,
    words: Vec<String>,
    calls: Vec<Call>,
    finish: &'static str,
    input_tokens: u64,
}

impl Answer {
    fn for_request(request: &Checked, tokens: Option<usize>) -> Self {
        let input_tokens = request.texts.iter().map(|t| estimate_tokens(t)).sum::<u64>()
            + request.tools.iter().map(|t| estimate_tokens(&t.to_string())).sum::<u64>();
        let thinking = request.thinking.then(|| "Let me think about that.".to_owned());
        if !request.tools.is_empty()
            && request.tool_results.is_empty()
            && request.tool_choice.as_deref() != Some("NONE")
        {
            let mut called = vec![&request.tools[0]];
            if request.says("mock:parallel") {
                called.push(request.tools.get(1).unwrap_or(&request.tools[0]));
            }
            let calls: Vec<Call> = called
                .into_iter()
                .enumerate()
                .map(|(i, t)| {
                    let name = t["function"]["name"].as_str().unwrap_or_default().to_owned();
                    Call {
                        id: format!("{name}_mock{i}"),
                        arguments: example(&t["function"]["parameters"]).to_string(),
                        name,
                    }
                })
                .collect();
            let plan = format!("I will call {}.", calls[0].name);
            return Self { thinking, plan: Some(plan), words: Vec::new(), calls, finish: "TOOL_CALL", input_tokens };
        }
        let text = if !request.tool_results.is_empty() {
            format!("The tool said: {}", request.tool_results.join(" | "))
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
        let mut words: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
        let mut finish = "COMPLETE";
        if let Some(max) = request.max_tokens
            && words.len() as u64 > max
        {
            words.truncate(usize::try_from(max).unwrap_or(usize::MAX));
            finish = "MAX_TOKENS";
        }
        Self { thinking, plan: None, words, calls: Vec::new(), finish, input_tokens }
    }

    fn output_tokens(&self) -> u64 {
        self.words.len() as u64
            + self.thinking.as_deref().map_or(0, estimate_tokens)
            + self.plan.as_deref().map_or(0, estimate_tokens)
            + self.calls.iter().map(|c| estimate_tokens(&c.arguments)).sum::<u64>()
    }

    fn usage(&self) -> Value {
        let output = self.output_tokens();
        json!({
            "billed_units": {"input_tokens": self.input_tokens, "output_tokens": output},
            "tokens": {"input_tokens": self.input_tokens + TEMPLATE_TOKENS, "output_tokens": output + 2},
        })
    }

    fn call_json(call: &Call) -> Value {
        json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}})
    }

    fn to_json(&self) -> Value {
        let mut content = Vec::new();
        if let Some(t) = &self.thinking {
            content.push(json!({"type": "thinking", "thinking": t}));
        }
        if !self.words.is_empty() {
            content.push(json!({"type": "text", "text": self.words.concat()}));
        }
        let mut message = json!({"role": "assistant", "content": content});
        if let Some(plan) = &self.plan {
            message["tool_plan"] = json!(plan);
            message["tool_calls"] = self.calls.iter().map(Self::call_json).collect();
        }
        json!({"id": "mock-chat-0001", "finish_reason": self.finish, "message": message, "usage": self.usage()})
    }

    fn to_events(&self, error_mid_stream: bool) -> Vec<Bytes> {
        let mut events = vec![event(
            "message-start",
            &json!({"type": "message-start", "id": "mock-chat-0001", "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}),
        )];
        let mut index = 0;
        if let Some(t) = &self.thinking {
            events.push(event("content-start", &json!({"type": "content-start", "index": index, "delta": {"message": {"content": {"type": "thinking", "thinking": ""}}}})));
            events.push(event(
                "content-delta",
                &json!({"type": "content-delta", "index": index, "delta": {"message": {"content": {"thinking": t}}}}),
            ));
            events.push(event("content-end", &json!({"type": "content-end", "index": index})));
            index += 1;
        }
        if let Some(plan) = &self.plan {
            for word in plan.split_inclusive(' ') {
                events.push(event(
                    "tool-plan-delta",
                    &json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": word}}}),
                ));
            }
            for (i, call) in self.calls.iter().enumerate() {
                events.push(event("tool-call-start", &json!({"type": "tool-call-start", "index": i, "delta": {"message": {"tool_calls": {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}}}})));
                for piece in fragments(&call.arguments) {
                    events.push(event("tool-call-delta", &json!({"type": "tool-call-delta", "index": i, "delta": {"message": {"tool_calls": {"function": {"arguments": piece}}}}})));
                }
                events.push(event("tool-call-end", &json!({"type": "tool-call-end", "index": i})));
            }
        } else {
            events.push(event("content-start", &json!({"type": "content-start", "index": index, "delta": {"message": {"content": {"type": "text", "text": ""}}}})));
            events.push(event(
                "content-delta",
                &json!({"type": "content-delta", "index": index, "delta": {"message": {"content": {"text": ""}}}}),
            ));
            for (i, word) in self.words.iter().enumerate() {
                events.push(event("content-delta", &json!({"type": "content-delta", "index": index, "delta": {"message": {"content": {"text": word}}}})));
                if error_mid_stream && i == 0 {
                    events.push(event("message-end", &json!({"type": "message-end", "delta": {"finish_reason": "ERROR", "error": "internal server error, this has been reported to our developers"}})));
                    return events;
                }
            }
            events.push(event("content-end", &json!({"type": "content-end", "index": index})));
        }
        events.push(event(
            "message-end",
            &json!({"type": "message-end", "delta": {"finish_reason": self.finish, "usage": self.usage()}}),
        ));
        events
    }
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// What a Cohere request gets: a whole answer, or the events of a stream
/// (the caller paces and cuts them).
pub(crate) enum Reply {
    Whole(Response),
    Events(Vec<Bytes>),
}

/// Whether a path is Cohere's.
pub(crate) fn is_cohere(path: &str) -> bool {
    path.ends_with("/v2/chat") || path.ends_with("/v2/embed")
}

/// Answers `POST /v2/chat` and `POST /v2/embed`.
pub(crate) fn answer(
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    required_key: Option<&str>,
    tokens: Option<usize>,
) -> Reply {
    if let Some(key) = required_key {
        let presented =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(key) {
            return Reply::Whole(error_response(StatusCode::UNAUTHORIZED, "invalid api token"));
        }
    }
    if path.ends_with("/v2/embed") {
        return Reply::Whole(embed(body));
    }
    let request = match check(body) {
        Ok(r) => r,
        Err(refusal) => return Reply::Whole(refusal.response()),
    };
    if request.says("mock:error-200") {
        return Reply::Whole(error_response(
            StatusCode::OK,
            "You are using a Trial key, which is limited to 1000 API calls / month.",
        ));
    }
    let answer = Answer::for_request(&request, tokens);
    if request.stream {
        Reply::Events(answer.to_events(request.says("mock:error-mid-stream")))
    } else {
        Reply::Whole(([(header::CONTENT_TYPE, "application/json")], answer.to_json().to_string()).into_response())
    }
}

fn embed(body: &[u8]) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return invalid("invalid request: body is not valid JSON").response();
    };
    if let Some(refusal) = unknown(
        &body,
        &[
            "model",
            "texts",
            "images",
            "inputs",
            "input_type",
            "embedding_types",
            "output_dimension",
            "truncate",
            "max_tokens",
        ],
        "",
    ) {
        return refusal.response();
    }
    if body.get("model").and_then(Value::as_str).is_none_or(str::is_empty) {
        return invalid("invalid request: model must be specified").response();
    }
    let Some(input_type) = body.get("input_type").and_then(Value::as_str) else {
        return invalid("invalid request: input_type must be specified for embed models v3 and higher").response();
    };
    if !["search_document", "search_query", "classification", "clustering"].contains(&input_type) {
        return invalid(format!("invalid request: input_type `{input_type}` is not supported")).response();
    }
    if body.get("embedding_types").and_then(Value::as_array).is_none_or(|t| !t.iter().any(|t| t == "float")) {
        return invalid("invalid request: embedding_types must be specified").response();
    }
    let texts: Vec<String> = body
        .get("texts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    if texts.is_empty() {
        return invalid("invalid request: texts must be a non-empty list of strings").response();
    }
    let dimensions = body
        .get("output_dimension")
        .and_then(Value::as_u64)
        .map_or(16, |d| usize::try_from(d).unwrap_or(16))
        .clamp(1, 4096);
    let vectors: Vec<Vec<f32>> = texts.iter().map(|t| crate::embeddings::unit_vector(t, dimensions)).collect();
    let tokens: u64 = texts.iter().map(|t| estimate_tokens(t)).sum();
    let answer = json!({"id": "mock-embed-0001", "embeddings": {"float": vectors}, "texts": texts,
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}}, "response_type": "embeddings_by_type"});
    ([(header::CONTENT_TYPE, "application/json")], answer.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_results_must_answer_the_calls_before_and_members_are_known() {
        let ok = json!({"model": "c", "messages": [{"role": "user", "content": "?"},
            {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "sunny"}]});
        let checked = check(ok.to_string().as_bytes()).ok().map(|c| c.tool_results);
        assert_eq!(checked, Some(vec!["sunny".to_owned()]));
        for bad in [
            json!({"messages": [{"role": "user", "content": "?"}]}),
            json!({"model": "c", "top_p": 1, "messages": [{"role": "user", "content": "?"}]}),
            json!({"model": "c", "messages": [{"role": "tool", "tool_call_id": "t1", "content": "x"}]}),
            json!({"model": "c", "tool_choice": "required", "messages": [{"role": "user", "content": "?"}]}),
        ] {
            assert!(check(bad.to_string().as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn usage_comes_only_in_message_end_and_arguments_in_fragments() {
        let body = json!({"model": "c", "stream": true, "messages": [{"role": "user", "content": "?"}],
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]});
        let request = check(body.to_string().as_bytes()).unwrap_or_else(|_| panic!("a valid request"));
        let events = Answer::for_request(&request, None).to_events(false);
        let texts: Vec<String> = events.iter().map(|e| String::from_utf8_lossy(e).into_owned()).collect();
        assert!(texts[..texts.len() - 1].iter().all(|t| !t.contains("billed_units")));
        assert!(texts.last().is_some_and(|t| t.contains("billed_units")));
        assert!(texts.iter().filter(|t| t.contains("tool-call-delta")).count() > 3);
    }
}
