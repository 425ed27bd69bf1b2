//! Deterministic chat answers, encoded as OpenAI encodes them: one
//! `chat.completion`, or `chat.completion.chunk` Server-Sent Events.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::UpstreamError;
use crate::request::Request;

/// Words of the `tokens` filler answers.
const FILLER: &[&str] = &["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"];

/// The `[DONE]` sentinel that ends every OpenAI stream.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

/// A chat answer, before it is encoded whole or as a stream.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    id: String,
    created: u64,
    model: String,
    /// The completion, one token each (with its leading space).
    tokens: Vec<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
    finish_reason: &'static str,
    null_usage_details: bool,
    /// Whole answers carry no `usage` member.
    omit_usage: bool,
    /// Prompt tokens served from the (simulated) prompt cache.
    cached_tokens: u64,
    /// Tool calls instead of text (finish reason `tool_calls`).
    calls: Vec<Call>,
}

/// One tool call of an answer.
#[derive(Clone, Debug)]
struct Call {
    id: String,
    name: String,
    /// The arguments, a JSON object as text.
    arguments: String,
}

/// Bytes per streamed arguments fragment: small enough to split keys,
/// values and escapes, as models' tokens do.
const FRAGMENT: usize = 5;

/// `text` in pieces of about [`FRAGMENT`] bytes (cut on characters).
pub(crate) fn fragments(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = rest.len().min(FRAGMENT);
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        let (piece, after) = rest.split_at(cut);
        rest = after;
        Some(piece)
    })
}

/// A value a JSON schema accepts, made up from its `type`.
pub(crate) fn example(schema: &Value) -> Value {
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => Value::from("mock \"value\""),
        Some("integer" | "number") => Value::from(42),
        Some("boolean") => Value::from(true),
        Some("array") => Value::Array(Vec::new()),
        Some("object") => Value::Object(
            schema
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(name, property)| (name.clone(), example(property)))
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// The calls a request gets: with `tools`, unless tool results came back
/// (the last message is a `tool` one) or `tool_choice` is `none`, the
/// first tool (the named one, for a named `tool_choice`) is called with
/// arguments made from its schema; `mock:parallel` in the prompt calls a
/// second tool (or the first again) in the same turn.
fn calls_for(request: &Request, texts: &[String]) -> Vec<Call> {
    let tools = request.get("tools").and_then(Value::as_array).cloned().unwrap_or_default();
    let last_role = request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str);
    let choice = request.get("tool_choice");
    if tools.is_empty() || last_role == Some("tool") || choice.and_then(Value::as_str) == Some("none") {
        return Vec::new();
    }
    let named = choice.and_then(|c| c.get("function")).and_then(|f| f.get("name")).and_then(Value::as_str);
    let function = |t: &Value| t.get("function").cloned().unwrap_or(Value::Null);
    let first = tools
        .iter()
        .map(function)
        .find(|f| named.is_none() || f.get("name").and_then(Value::as_str) == named)
        .unwrap_or_else(|| function(&tools[0]));
    let mut called = vec![first.clone()];
    if texts.iter().any(|t| t.contains("mock:parallel")) {
        called.push(tools.get(1).map(function).unwrap_or(first));
    }
    called
        .iter()
        .enumerate()
        .map(|(i, f)| Call {
            id: format!("call_mock_{i}"),
            name: f.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
            arguments: example(f.get("parameters").unwrap_or(&serde_json::json!({"type": "object"}))).to_string(),
        })
        .collect()
}

/// What the trailing `tool` messages said, joined.
fn tool_results(request: &Request) -> Option<String> {
    let messages = request.get("messages").and_then(Value::as_array)?;
    let results: Vec<String> = messages
        .iter()
        .rev()
        .take_while(|m| m.get("role").and_then(Value::as_str) == Some("tool"))
        .map(|m| match m.get("content") {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Array(parts)) => {
                parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
            }
            _ => String::new(),
        })
        .collect();
    (!results.is_empty()).then(|| results.into_iter().rev().collect::<Vec<_>>().join(" | "))
}

/// Image parts of the last message.
fn images(request: &Request) -> usize {
    let last = request.get("messages").and_then(Value::as_array).and_then(|m| m.last());
    let parts = last.and_then(|m| m.get("content")).and_then(Value::as_array);
    parts.into_iter().flatten().filter(|p| p.get("type").and_then(Value::as_str) == Some("image_url")).count()
}

/// Roughly four characters a token.
pub(crate) fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// The prompt prefix a provider's cache would key on: the leading system
/// (and developer) messages and the first other message, as `(key, tokens)`
/// with tokens counted as [`Answer::for_chat`] counts the prompt's; `None`
/// without messages.
pub(crate) fn cache_prefix(request: &Request) -> Option<(Vec<u8>, u64)> {
    let messages = request.get("messages")?.as_array()?;
    let texts = message_texts(request).ok()?;
    let system = |m: &Value| matches!(m.get("role").and_then(Value::as_str), Some("system" | "developer"));
    let end = messages.iter().position(|m| !system(m)).map_or(messages.len(), |i| i + 1);
    let key = serde_json::to_vec(&messages[..end]).ok()?;
    let tokens = 3 + texts[..end].iter().map(|t| 4 + estimate_tokens(t)).sum::<u64>();
    (end > 0).then_some((key, tokens))
}

/// The text of each message: a string `content`, or the `text` of its parts.
fn message_texts(request: &Request) -> Result<Vec<String>, UpstreamError> {
    let messages = match request.get("messages") {
        Some(Value::Array(m)) => m,
        None | Some(Value::Null) => return Err(UpstreamError::missing("messages")),
        Some(_) => return Err(UpstreamError::invalid_type("messages", "an array of objects")),
    };
    Ok(messages
        .iter()
        .map(|m| match m.get("content") {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Array(parts)) => {
                parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
            }
            _ => String::new(),
        })
        .collect())
}

impl Answer {
    /// Answers a chat request: `tokens` filler tokens, or else a quote of the
    /// last message; cut to `max_completion_tokens`/`max_tokens` (finish reason
    /// `length`). Prompt tokens are estimated at four characters a token plus
    /// OpenAI's framing (3 a request, 4 a message).
    pub fn for_chat(request: &Request, tokens: Option<usize>, null_usage_details: bool) -> Result<Self, UpstreamError> {
        let texts = message_texts(request)?;
        let prompt_tokens = 3 + texts.iter().map(|t| 4 + estimate_tokens(t)).sum::<u64>();
        let calls = calls_for(request, &texts);
        let mut completion: Vec<String> = match (tokens, tool_results(request)) {
            _ if !calls.is_empty() => Vec::new(),
            (_, Some(said)) => format!("The tool said: {said}").split_inclusive(' ').map(str::to_owned).collect(),
            (Some(n), None) => (0..n).map(|i| format!(" {}", FILLER[i % FILLER.len()])).collect(),
            (None, None) => {
                let said: String = texts.last().map(|t| t.chars().take(200).collect()).unwrap_or_default();
                let images = match images(request) {
                    0 => String::new(),
                    1 => " (and 1 image)".to_owned(),
                    n => format!(" (and {n} images)"),
                };
                format!("This is LLM Weaver's mock channel. You said: {said}{images}")
                    .split_inclusive(' ')
                    .map(str::to_owned)
                    .collect()
            }
        };
        let mut finish_reason = "stop";
        if let Some(limit) = request.max_tokens()
            && completion.len() > limit
        {
            completion.truncate(limit);
            finish_reason = "length";
        }
        if !calls.is_empty() {
            finish_reason = "tool_calls";
        }
        let digest = Sha256::digest(request.model.as_bytes());
        Ok(Self {
            id: format!("chatcmpl-mock{}", digest[..6].iter().map(|b| format!("{b:02x}")).collect::<String>()),
            created: unix_seconds(),
            model: request.model.clone(),
            completion_tokens: completion.len() as u64
                + calls.iter().map(|c| estimate_tokens(&c.arguments)).sum::<u64>(),
            tokens: completion,
            prompt_tokens,
            finish_reason,
            null_usage_details,
            omit_usage: false,
            cached_tokens: 0,
            calls,
        })
    }

    /// Reports `n` of the prompt tokens as read from the prompt cache.
    pub fn with_cached_tokens(mut self, n: u64) -> Self {
        self.cached_tokens = n.min(self.prompt_tokens);
        self
    }

    /// Replaces the completion with one token of filler text, sized so that its
    /// content event (in a stream with or without `include_usage`) is
    /// `event_bytes` long, or as short as it can be.
    pub fn with_one_big_token(mut self, event_bytes: usize, include_usage: bool) -> Self {
        let overhead = self.chunk(Delta::content(""), None, include_usage).len();
        let want = event_bytes.saturating_sub(overhead);
        let mut text = String::with_capacity(want + 64);
        while text.len() < want {
            for word in FILLER {
                text.push_str(word);
                text.push(' ');
            }
        }
        text.truncate(want);
        self.completion_tokens = estimate_tokens(&text);
        self.tokens = vec![text];
        self.finish_reason = "stop";
        self
    }

    /// Leaves `usage` out of whole answers.
    pub fn without_usage(mut self) -> Self {
        self.omit_usage = true;
        self
    }

    fn usage(&self) -> Usage {
        let (prompt_tokens_details, completion_tokens_details) = if self.null_usage_details {
            (PromptDetails { cached_tokens: None, audio_tokens: None }, None)
        } else {
            (
                PromptDetails { cached_tokens: Some(self.cached_tokens), audio_tokens: Some(0) },
                Some(CompletionDetails::default()),
            )
        };
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.prompt_tokens + self.completion_tokens,
            prompt_tokens_details,
            completion_tokens_details,
        }
    }

    /// The answer as one `chat.completion` object.
    pub fn to_json(&self) -> Vec<u8> {
        let content = self.tokens.concat();
        let tool_calls: Vec<ToolCall<'_>> = self
            .calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                ToolCall {
                    index: None,
                    id: Some(&c.id),
                    kind: Some("function"),
                    function: FunctionCall { name: Some(&c.name), arguments: &c.arguments },
                }
                .at(i, false)
            })
            .collect();
        let body = Completion {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            choices: [CompletionChoice {
                index: 0,
                message: Message {
                    role: "assistant",
                    content: (tool_calls.is_empty() || !content.is_empty()).then_some(content.as_str()),
                    refusal: None,
                    tool_calls,
                },
                logprobs: None,
                finish_reason: self.finish_reason,
            }],
            usage: (!self.omit_usage).then(|| self.usage()),
            system_fingerprint: None,
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// One `chat.completion.chunk` event with one choice. With `include_usage`
    /// it carries `"usage":null`, as OpenAI's do when usage was asked for.
    fn chunk(&self, delta: Delta<'_>, finish_reason: Option<&str>, include_usage: bool) -> Bytes {
        sse_event(&Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: &[ChunkChoice { index: 0, delta, logprobs: None, finish_reason }],
            usage: include_usage.then_some(None),
        })
    }

    /// The answer as Server-Sent Events, one complete event each, as OpenAI
    /// sends them: a role chunk, one chunk per token, the finish chunk, the
    /// usage chunk (only with `include_usage`: empty `choices`, and
    /// `"usage":null` on every other chunk) and `[DONE]`.
    pub fn to_events(&self, include_usage: bool) -> Vec<Bytes> {
        let mut events = Vec::with_capacity(self.tokens.len() + 4);
        events.push(self.chunk(
            Delta { role: Some("assistant"), content: Some(""), tool_calls: None },
            None,
            include_usage,
        ));
        for token in &self.tokens {
            events.push(self.chunk(Delta::content(token), None, include_usage));
        }
        for (i, call) in self.calls.iter().enumerate() {
            let start = ToolCall {
                index: None,
                id: Some(&call.id),
                kind: Some("function"),
                function: FunctionCall { name: Some(&call.name), arguments: "" },
            };
            events.push(self.chunk(Delta::call(start.at(i, true)), None, include_usage));
            for piece in fragments(&call.arguments) {
                let fragment = ToolCall {
                    index: None,
                    id: None,
                    kind: None,
                    function: FunctionCall { name: None, arguments: piece },
                };
                events.push(self.chunk(Delta::call(fragment.at(i, true)), None, include_usage));
            }
        }
        events.push(self.chunk(Delta::default(), Some(self.finish_reason), include_usage));
        if include_usage {
            events.push(sse_event(&Chunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: &[],
                usage: Some(Some(self.usage())),
            }));
        }
        events.push(Bytes::from_static(DONE));
        events
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// `data: <json>` and the blank line that ends the event.
fn sse_event(value: &impl Serialize) -> Bytes {
    let mut out = b"data: ".to_vec();
    if serde_json::to_writer(&mut out, value).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

// OpenAI's wire types, with members in OpenAI's order (structs, not
// `serde_json::Value`, whose maps sort their keys).

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audio_tokens: Option<u64>,
}

#[derive(Default, Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    system_fingerprint: Option<&'a str>,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall<'a>>,
}

#[derive(Serialize)]
struct ToolCall<'a> {
    /// Streamed deltas say which call they continue.
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionCall<'a>,
}

impl ToolCall<'_> {
    fn at(mut self, index: usize, streamed: bool) -> Self {
        self.index = streamed.then_some(index);
        self
    }
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    /// Left out unless usage was asked for; then `null`, or the usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Default, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCall<'a>; 1]>,
}

impl<'a> Delta<'a> {
    fn content(text: &'a str) -> Self {
        Self { role: None, content: Some(text), tool_calls: None }
    }

    fn call(call: ToolCall<'a>) -> Self {
        Self { role: None, content: None, tool_calls: Some([call]) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str) -> Request {
        Request::parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn answer(body: &str, tokens: Option<usize>) -> Answer {
        Answer::for_chat(&request(body), tokens, false).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn quotes_the_last_message_with_realistic_usage() {
        let a = answer(r#"{"model":"demo","messages":[{"role":"user","content":"hello there"}]}"#, None);
        assert_eq!(a.tokens.concat(), "This is LLM Weaver's mock channel. You said: hello there");
        assert_eq!((a.prompt_tokens, a.completion_tokens), (3 + 4 + 3, a.tokens.len() as u64));
        let parts = answer(
            r#"{"model":"demo","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
            None,
        );
        assert!(parts.tokens.concat().ends_with("You said: a b"));
    }

    #[test]
    fn max_tokens_cut_the_answer_with_finish_reason_length() {
        let a = answer(r#"{"model":"m","messages":[],"max_tokens":2}"#, Some(5));
        assert_eq!((a.tokens.concat().as_str(), a.finish_reason), (" the quick", "length"));
        let a = answer(r#"{"model":"m","messages":[],"max_completion_tokens":9}"#, Some(5));
        assert_eq!((a.tokens.len(), a.finish_reason), (5, "stop"));
    }

    #[test]
    fn messages_are_required() {
        for body in [r#"{"model":"m"}"#, r#"{"model":"m","messages":"hi"}"#] {
            let e = Answer::for_chat(&request(body), None, false).err();
            assert_eq!(e.map(|e| (e.status.as_u16(), e.param)), Some((400, Some("messages"))));
        }
    }

    #[test]
    fn one_big_token_makes_an_event_of_exactly_the_size() {
        for include_usage in [false, true] {
            let a = answer(r#"{"model":"m","messages":[]}"#, None).with_one_big_token(100_000, include_usage);
            let events = a.to_events(include_usage);
            assert_eq!(events.len(), 4 + usize::from(include_usage));
            assert_eq!(events[1].len(), 100_000);
        }
        let a = answer(r#"{"model":"m","messages":[]}"#, None).with_one_big_token(10, false);
        assert_eq!(a.tokens, [""], "smaller than the framing: empty content");
    }
}
