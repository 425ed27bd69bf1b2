//! OpenAI's Responses API (`POST /v1/responses`), written from its public
//! reference (<https://platform.openai.com/docs/api-reference/responses/create>,
//! <https://platform.openai.com/docs/api-reference/responses/object>,
//! <https://platform.openai.com/docs/api-reference/responses-streaming>) and
//! sharing nothing with the gateway.
//!
//! Requests are checked as OpenAI checks them: `model` and `input` needed,
//! no member the API does not define ("Unknown parameter"), so a gateway
//! that leaks a chat member (`messages`, `stream_options.include_usage`...)
//! fails here as it would against the real API. The mock keeps nothing, so
//! a `previous_response_id` is never found (404, as for an unknown id).
//!
//! The answer quotes the last user text, like the chat side; with function
//! tools and no function call output yet it calls the first tool (the named
//! one, for a named `tool_choice`) with arguments made from its schema;
//! after a function call output it says what the output said. Streams are
//! the typed events (`response.created`, `response.in_progress`, item and
//! content part events, text and argument deltas — arguments split every
//! few bytes — their `.done` events, `response.completed` with usage), each
//! with its `sequence_number` and no `[DONE]`. Magic words anywhere in the
//! input:
//!
//! | word | effect |
//! |---|---|
//! | `mock:cache` | usage reports [`CACHED_TOKENS`] cached input tokens |
//! | `mock:reasoning` | usage reports [`REASONING_TOKENS`] reasoning tokens (part of the output) |
//! | `mock:error-mid-stream` | an `error` event after the first text delta, then the end |
//! | `mock:failed` | `response.failed` (status `failed`, its `error`, usage so far) after the first text delta, then the end |

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::chat::{estimate_tokens, example, fragments};
use crate::error::UpstreamError;

/// Cached input tokens reported under `mock:cache`.
pub const CACHED_TOKENS: u64 = 5;
/// Reasoning tokens reported under `mock:reasoning`.
pub const REASONING_TOKENS: u64 = 4;

/// Top-level members the Responses API defines.
const MEMBERS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "max_tool_calls",
    "temperature",
    "top_p",
    "top_logprobs",
    "reasoning",
    "text",
    "store",
    "stream",
    "stream_options",
    "previous_response_id",
    "conversation",
    "include",
    "metadata",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "service_tier",
    "truncation",
    "background",
    "prompt",
];

/// The answer to one request: a JSON response, or its events.
pub(crate) enum Reply {
    Whole(Vec<u8>),
    Events(Vec<Bytes>),
}

fn bad(param: &'static str, code: &'static str, message: String) -> UpstreamError {
    let mut e = UpstreamError::new(StatusCode::BAD_REQUEST, "invalid_request_error", Some(code), message);
    e.param = Some(param);
    e
}

/// Answers `POST /v1/responses`.
pub(crate) fn answer(body: &[u8], tokens: Option<usize>) -> Result<Reply, UpstreamError> {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return Err(UpstreamError::invalid_json());
    };
    if let Some(unknown) = request.keys().find(|k| !MEMBERS.contains(&k.as_str())) {
        return Err(bad("", "unknown_parameter", format!("Unknown parameter: '{unknown}'.")));
    }
    if let Some(options) = request.get("stream_options").and_then(Value::as_object)
        && let Some(unknown) = options.keys().find(|k| k.as_str() != "include_obfuscation")
    {
        return Err(bad("", "unknown_parameter", format!("Unknown parameter: 'stream_options.{unknown}'.")));
    }
    let model = match request.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(UpstreamError::missing("model")),
    };
    if let Some(Value::String(id)) = request.get("previous_response_id") {
        let mut e = UpstreamError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("previous_response_not_found"),
            format!("Previous response with id '{id}' not found."),
        );
        e.param = Some("previous_response_id");
        return Err(e);
    }
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(UpstreamError::invalid_type("stream", "a boolean")),
    };
    let conversation = Conversation::read(&request)?;
    let answer = Answer::new(&request, &conversation, model, tokens);
    Ok(if stream {
        Reply::Events(answer.events(conversation.says("mock:error-mid-stream"), conversation.says("mock:failed")))
    } else {
        Reply::Whole(answer.response("completed").to_string().into_bytes())
    })
}

/// The texts of the input, in order, and what the last function call output said.
struct Conversation {
    texts: Vec<String>,
    /// The input ends with function call outputs: what they said.
    tool_said: Option<String>,
}

impl Conversation {
    fn read(request: &Map<String, Value>) -> Result<Self, UpstreamError> {
        let mut texts: Vec<String> = Vec::new();
        if let Some(Value::String(i)) = request.get("instructions") {
            texts.push(i.clone());
        }
        let mut tool_said = None;
        match request.get("input") {
            Some(Value::String(text)) => texts.push(text.clone()),
            Some(Value::Array(items)) => {
                for item in items {
                    let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
                    match kind {
                        "message" => {
                            let role = item.get("role").and_then(Value::as_str);
                            if !matches!(role, Some("user" | "assistant" | "system" | "developer")) {
                                return Err(bad("input", "invalid_value", format!("Invalid input role: {role:?}.")));
                            }
                            texts.push(content_text(item.get("content"))?);
                            tool_said = None;
                        }
                        "function_call" => {
                            for member in ["call_id", "name", "arguments"] {
                                if !item.get(member).is_some_and(Value::is_string) {
                                    return Err(bad(
                                        "input",
                                        "missing_required_parameter",
                                        format!("A function_call item needs `{member}`."),
                                    ));
                                }
                            }
                        }
                        "function_call_output" => {
                            if !item.get("call_id").is_some_and(Value::is_string) {
                                return Err(bad(
                                    "input",
                                    "missing_required_parameter",
                                    "A function_call_output item needs `call_id`.".into(),
                                ));
                            }
                            let said = match item.get("output") {
                                Some(Value::String(s)) => s.clone(),
                                other => content_text(other)?,
                            };
                            texts.push(said.clone());
                            tool_said = Some(match tool_said {
                                None => said,
                                Some(before) => format!("{before} | {said}"),
                            });
                        }
                        "reasoning" => {}
                        other => {
                            return Err(bad("input", "invalid_value", format!("Unknown input item type '{other}'.")));
                        }
                    }
                }
            }
            _ => return Err(UpstreamError::missing("input")),
        }
        Ok(Self { texts, tool_said })
    }

    fn says(&self, word: &str) -> bool {
        self.texts.iter().any(|t| t.contains(word))
    }
}

/// A message's content: a string, or parts whose text is read.
fn content_text(content: Option<&Value>) -> Result<String, UpstreamError> {
    match content {
        Some(Value::String(t)) => Ok(t.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text") => {
                        texts.push(part.get("text").and_then(Value::as_str).unwrap_or_default())
                    }
                    Some("input_image" | "input_file" | "refusal") => {}
                    other => {
                        return Err(bad("input", "invalid_value", format!("Unknown content part type {other:?}.")));
                    }
                }
            }
            Ok(texts.join(" "))
        }
        _ => Err(bad("input", "invalid_type", "Message content must be a string or an array of parts.".into())),
    }
}

struct Call {
    call_id: String,
    name: String,
    arguments: String,
}

struct Answer {
    id: String,
    created_at: u64,
    model: String,
    /// The text, one token each (with its leading space).
    tokens: Vec<String>,
    call: Option<Call>,
    incomplete: bool,
    input_tokens: u64,
    cached_tokens: u64,
    reasoning_tokens: u64,
}

impl Answer {
    fn new(request: &Map<String, Value>, conversation: &Conversation, model: String, tokens: Option<usize>) -> Self {
        let digest = Sha256::digest(model.as_bytes());
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        let tools: Vec<&Value> = request
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
            .collect();
        let choice = request.get("tool_choice");
        let named = choice.and_then(|c| c.get("name")).and_then(Value::as_str);
        let call =
            (!tools.is_empty() && conversation.tool_said.is_none() && choice.and_then(Value::as_str) != Some("none"))
                .then(|| {
                    let tool = tools
                        .iter()
                        .find(|t| named.is_none() || t.get("name").and_then(Value::as_str) == named)
                        .unwrap_or(&tools[0]);
                    let schema = tool.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}));
                    Call {
                        call_id: format!("call_mock_{hex}"),
                        name: tool.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                        arguments: example(&schema).to_string(),
                    }
                });
        let mut text: Vec<String> = match (&call, &conversation.tool_said, tokens) {
            (Some(_), _, _) => Vec::new(),
            (None, Some(said), _) => format!("The tool said: {said}").split_inclusive(' ').map(str::to_owned).collect(),
            (None, None, Some(n)) => (0..n).map(|i| format!(" token{i}")).collect(),
            (None, None, None) => {
                let last: String = conversation.texts.last().map(|t| t.chars().take(200).collect()).unwrap_or_default();
                format!("This is LLM Weaver's mock channel. You said: {last}")
                    .split_inclusive(' ')
                    .map(str::to_owned)
                    .collect()
            }
        };
        let mut incomplete = false;
        if let Some(limit) = request.get("max_output_tokens").and_then(Value::as_u64)
            && text.len() as u64 > limit
        {
            text.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            incomplete = true;
        }
        let input_tokens = conversation.texts.iter().map(|t| 4 + estimate_tokens(t)).sum::<u64>() + 3;
        Self {
            id: format!("resp_mock{hex}"),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            model,
            tokens: text,
            call,
            incomplete,
            input_tokens,
            cached_tokens: if conversation.says("mock:cache") { CACHED_TOKENS.min(input_tokens) } else { 0 },
            reasoning_tokens: if conversation.says("mock:reasoning") { REASONING_TOKENS } else { 0 },
        }
    }

    fn message_id(&self) -> String {
        format!("msg_{}", &self.id[5..])
    }

    fn message(&self, status: &str, text: Option<&str>) -> Value {
        let content: Vec<Value> = text.map(|t| self.part(t)).into_iter().collect();
        json!({"id": self.message_id(), "type": "message", "status": status, "role": "assistant", "content": content})
    }

    fn part(&self, text: &str) -> Value {
        json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    }

    fn function_call(&self, call: &Call, status: &str, arguments: &str) -> Value {
        json!({"id": format!("fc_{}", &self.id[5..]), "type": "function_call", "status": status,
               "arguments": arguments, "call_id": call.call_id, "name": call.name})
    }

    fn output(&self) -> Vec<Value> {
        match &self.call {
            Some(call) => vec![self.function_call(call, "completed", &call.arguments)],
            None => vec![self.message("completed", Some(&self.tokens.concat()))],
        }
    }

    fn usage(&self) -> Value {
        let output_tokens = self.tokens.len() as u64
            + self.call.as_ref().map_or(0, |c| estimate_tokens(&c.arguments))
            + self.reasoning_tokens;
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + output_tokens,
        })
    }

    /// The response object, as it stands at `status`.
    fn response(&self, status: &str) -> Value {
        let done = status != "in_progress";
        let status = if done && self.incomplete { "incomplete" } else { status };
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": if done && self.incomplete { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": null,
            "max_output_tokens": null,
            "model": self.model,
            "output": if done { self.output() } else { Vec::new() },
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "store": false,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": if done { self.usage() } else { Value::Null },
            "user": null,
            "metadata": {},
        })
    }

    /// The answer as the typed events of a Responses stream; broken after
    /// the first text delta by an `error` event (`error_mid_stream`) or by
    /// `response.failed` (`failed`).
    fn events(&self, error_mid_stream: bool, failed: bool) -> Vec<Bytes> {
        let mut events = Events::default();
        let mut push = |name: &str, data: Value| events.push(name, data);
        push("response.created", json!({"response": self.response("in_progress")}));
        push("response.in_progress", json!({"response": self.response("in_progress")}));
        match &self.call {
            Some(call) => {
                let item_id = format!("fc_{}", &self.id[5..]);
                push(
                    "response.output_item.added",
                    json!({"output_index": 0, "item": self.function_call(call, "in_progress", "")}),
                );
                for piece in fragments(&call.arguments) {
                    push(
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": 0, "delta": piece}),
                    );
                }
                push(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": 0, "name": call.name, "arguments": call.arguments}),
                );
                push(
                    "response.output_item.done",
                    json!({"output_index": 0, "item": self.function_call(call, "completed", &call.arguments)}),
                );
            }
            None => {
                let item_id = self.message_id();
                let text = self.tokens.concat();
                push(
                    "response.output_item.added",
                    json!({"output_index": 0, "item": self.message("in_progress", None)}),
                );
                push(
                    "response.content_part.added",
                    json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": self.part("")}),
                );
                for (i, token) in self.tokens.iter().enumerate() {
                    push(
                        "response.output_text.delta",
                        json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": token, "logprobs": []}),
                    );
                    if i == 0 && error_mid_stream {
                        push(
                            "error",
                            json!({"code": "server_error", "message": "The model failed mid-stream.", "param": null}),
                        );
                        return events.out;
                    }
                    if i == 0 && failed {
                        let mut response = self.response("completed");
                        response["status"] = json!("failed");
                        response["output"] = json!([]);
                        response["error"] = json!({"code": "server_error", "message": "The model failed."});
                        push("response.failed", json!({"response": response}));
                        return events.out;
                    }
                }
                push(
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
                );
                push(
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": self.part(&text)}),
                );
                push(
                    "response.output_item.done",
                    json!({"output_index": 0, "item": self.message("completed", Some(&text))}),
                );
            }
        }
        let last = if self.incomplete { "response.incomplete" } else { "response.completed" };
        push(last, json!({"response": self.response("completed")}));
        events.out
    }
}

/// Events with their sequence numbers.
#[derive(Default)]
struct Events {
    out: Vec<Bytes>,
    next: u64,
}

impl Events {
    fn push(&mut self, name: &str, mut data: Value) {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.next);
        self.next += 1;
        self.out.push(Bytes::from(format!("event: {name}\ndata: {data}\n\n")));
    }
}
