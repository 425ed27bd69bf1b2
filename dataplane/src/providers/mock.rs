//! The `mock` provider: deterministic OpenAI-format answers made in-process,
//! with realistic usage, for the demo config. It is an ordinary adapter: its
//! answers go through the same decoding, metering and relay as an upstream's.

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use http::{HeaderValue, header};

use super::{Operation, UpstreamBody};
use crate::api::{ApiError, RequestBody};

/// Answers one request as an upstream would: a JSON body, an event stream, or
/// an OpenAI-shaped 400.
pub(crate) fn answer(operation: Operation, body: &[u8]) -> http::Response<UpstreamBody> {
    let answered = RequestBody::parse(body).and_then(|request| match operation {
        Operation::Embeddings => Ok(("application/json", embeddings(&request)?)),
        // Messages, token counts and responses reach the mock translated into chat requests.
        Operation::Chat | Operation::Messages | Operation::CountTokens | Operation::Responses => {
            let answer = MockAnswer::for_chat(&request, None)?;
            if request.stream {
                Ok(("text/event-stream", answer.to_events(request.include_usage).concat()))
            } else {
                Ok(("application/json", answer.to_json()))
            }
        }
    });
    let (status, content_type, bytes) = match answered {
        Ok((content_type, bytes)) => (http::StatusCode::OK, content_type, bytes),
        Err(e) => (e.status, "application/json", e.body()),
    };
    let mut response = http::Response::new(UpstreamBody::local(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A chat answer, before it is encoded whole or as a stream.
#[derive(Clone, Debug)]
pub(crate) struct MockAnswer {
    model: String,
    /// One completion token each (with its leading space).
    tokens: Vec<String>,
    prompt_tokens: u64,
    finish_reason: &'static str,
    id: String,
    created: i64,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
}

/// Roughly four characters a token, plus OpenAI's per-message framing.
fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

const FILLER: &[&str] = &["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"];

impl MockAnswer {
    /// Answers a chat request. `length` forces the completion to that many
    /// tokens; otherwise the answer quotes the last message.
    fn for_chat(body: &RequestBody<'_>, length: Option<usize>) -> Result<Self, ApiError> {
        let messages: Vec<Message> = match body.get("messages") {
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|e| ApiError::bad_request("invalid_messages", format!("`messages` is malformed: {e}")))?,
            None => {
                return Err(ApiError::bad_request("missing_messages", "`messages` is required."));
            }
        };
        let texts: Vec<String> = messages
            .iter()
            .map(|m| match &m.content {
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    parts.iter().filter_map(|p| p.text.as_deref()).collect::<Vec<_>>().join(" ")
                }
                None => String::new(),
            })
            .collect();
        let prompt_tokens = 3 + texts.iter().map(|t| 4 + estimate_tokens(t)).sum::<u64>();
        let mut tokens: Vec<String> = match length {
            Some(n) => (0..n).map(|i| format!(" {}", FILLER[i % FILLER.len()])).collect(),
            None => {
                let said: String = texts.last().map(|t| t.chars().take(200).collect()).unwrap_or_default();
                format!("This is LLM Weaver's mock channel. You said: {said}")
                    .split_inclusive(' ')
                    .map(str::to_owned)
                    .collect()
            }
        };
        let limit = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| body.get(k).and_then(|raw| raw.get().parse::<usize>().ok()));
        let mut finish_reason = "stop";
        if let Some(limit) = limit
            && tokens.len() > limit
        {
            tokens.truncate(limit);
            finish_reason = "length";
        }
        let digest = Sha256::digest(body.model.as_bytes());
        Ok(Self {
            model: body.model.to_string(),
            tokens,
            prompt_tokens,
            finish_reason,
            id: format!("chatcmpl-mock{}", hex::encode(&digest[..6])),
            created: crate::clock::unix_seconds(),
        })
    }

    fn usage_json(&self) -> serde_json::Value {
        let completion = self.tokens.len() as u64;
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
        })
    }

    /// The answer as one `chat.completion` object.
    fn to_json(&self) -> Vec<u8> {
        let body = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.tokens.concat(), "refusal": null},
                "logprobs": null,
                "finish_reason": self.finish_reason,
            }],
            "usage": self.usage_json(),
            "system_fingerprint": null,
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }

    fn chunk(&self, delta: serde_json::Value, finish: Option<&str>, include_usage: bool) -> Bytes {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            chunk["usage"] = serde_json::Value::Null;
        }
        sse_event(&chunk)
    }

    /// The answer as Server-Sent Events, one complete event each: a role chunk,
    /// one chunk per token, the finish chunk, the usage chunk (when asked for,
    /// with empty `choices`, as OpenAI sends it) and `[DONE]`.
    fn to_events(&self, include_usage: bool) -> Vec<Bytes> {
        let mut events = Vec::with_capacity(self.tokens.len() + 4);
        events.push(self.chunk(json!({"role": "assistant", "content": ""}), None, include_usage));
        for token in &self.tokens {
            events.push(self.chunk(json!({"content": token}), None, include_usage));
        }
        events.push(self.chunk(json!({}), Some(self.finish_reason), include_usage));
        if include_usage {
            events.push(sse_event(&json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.usage_json(),
            })));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        events
    }
}

fn sse_event(value: &serde_json::Value) -> Bytes {
    let mut out = b"data: ".to_vec();
    out.extend(serde_json::to_vec(value).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

/// Answers an embeddings request: one deterministic unit vector per input
/// (`dimensions` long, default 16), as floats or base64 as asked.
fn embeddings(body: &RequestBody<'_>) -> Result<Vec<u8>, ApiError> {
    let input: Input = body
        .get("input")
        .ok_or_else(|| ApiError::bad_request("missing_input", "`input` is required."))
        .and_then(|raw| {
            serde_json::from_str(raw.get()).map_err(|_| {
                ApiError::bad_request("invalid_input", "`input` must be a string, an array of strings or token arrays.")
            })
        })?;
    let (texts, prompt_tokens): (Vec<String>, u64) = match input {
        Input::One(s) => (vec![s.clone()], estimate_tokens(&s)),
        Input::Many(v) => {
            let n = v.iter().map(|s| estimate_tokens(s)).sum();
            (v, n)
        }
        Input::Tokens(t) => (vec![format!("{t:?}")], t.len() as u64),
        Input::ManyTokens(v) => {
            let n = v.iter().map(|t| t.len() as u64).sum();
            (v.iter().map(|t| format!("{t:?}")).collect(), n)
        }
    };
    let dimensions =
        body.get("dimensions").and_then(|raw| raw.get().parse::<usize>().ok()).unwrap_or(16).clamp(1, 4096);
    let base64 = body.get("encoding_format").is_some_and(|raw| raw.get() == "\"base64\"");
    let data: Vec<serde_json::Value> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = unit_vector(text, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    Ok(serde_json::to_vec(&body).unwrap_or_default())
}

fn unit_vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut raw = Vec::with_capacity(dimensions);
    let mut block = Sha256::digest(text.as_bytes());
    while raw.len() < dimensions {
        raw.extend(block.iter().map(|b| f32::from(*b) - 127.5));
        block = Sha256::digest(block);
    }
    raw.truncate(dimensions);
    let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt().max(f32::EPSILON);
    raw.iter().map(|v| v / norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &[u8]) -> RequestBody<'_> {
        RequestBody::parse(body).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn chat_answers_are_deterministic_and_usage_matches_the_tokens() -> Result<(), ApiError> {
        let raw = br#"{"model":"demo","messages":[{"role":"user","content":"hello there"}]}"#;
        let body = parse(raw);
        let a = MockAnswer::for_chat(&body, None)?;
        let b = MockAnswer::for_chat(&body, None)?;
        assert_eq!(a.tokens.concat(), "This is LLM Weaver's mock channel. You said: hello there");
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.usage_json()["completion_tokens"], a.tokens.len() as u64);
        assert_eq!(a.prompt_tokens, 3 + 4 + 3);
        Ok(())
    }

    #[test]
    fn streams_end_with_usage_then_done() -> Result<(), ApiError> {
        let raw = br#"{"model":"demo","messages":[{"role":"user","content":"x"}],"max_tokens":2}"#;
        let answer = MockAnswer::for_chat(&parse(raw), Some(5))?;
        assert_eq!(answer.finish_reason, "length");
        let events = answer.to_events(true);
        assert_eq!(events.len(), 1 + 2 + 1 + 1 + 1);
        let usage_event = String::from_utf8_lossy(&events[events.len() - 2]).into_owned();
        assert!(usage_event.contains(r#""choices":[]"#) && usage_event.contains(r#""completion_tokens":2"#));
        assert_eq!(&events[events.len() - 1][..], b"data: [DONE]\n\n");
        Ok(())
    }

    #[test]
    fn embeddings_honour_dimensions_and_base64() -> Result<(), ApiError> {
        let raw = br#"{"model":"e","input":["a","b"],"dimensions":8,"encoding_format":"base64"}"#;
        let json = embeddings(&parse(raw))?;
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap_or_default();
        let b64 = value["data"][1]["embedding"].as_str().unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
        assert_eq!(bytes.len(), 8 * 4);
        assert_eq!(value["usage"]["prompt_tokens"], 2);
        Ok(())
    }
}
